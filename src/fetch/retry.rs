//! When to try again: which failures are worth another request, and how long to wait first.

use std::time::Duration;

use super::report::Problem;

/// How a failed request ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A dropped connection, a timeout, 408, 429 or 5xx: try again after a pause, resuming from
    /// what the partial file holds. `progressed` says whether bytes were added before it failed.
    Transient { progressed: bool },
    /// The finished download does not verify, or the server's answer cannot be trusted: the
    /// partial file is deleted and the next try starts from zero.
    Restart,
    /// 4xx other than 408/429, a bad URL, a local disk error: no point in trying again.
    Permanent,
}

/// A failed request: what went wrong and what to do about it.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub problem: Problem,
}

impl Failure {
    pub fn transient(problem: Problem, progressed: bool) -> Self {
        Failure {
            kind: Kind::Transient { progressed },
            problem,
        }
    }

    pub fn restart(problem: Problem) -> Self {
        Failure {
            kind: Kind::Restart,
            problem,
        }
    }

    pub fn permanent(problem: Problem) -> Self {
        Failure {
            kind: Kind::Permanent,
            problem,
        }
    }

    /// An unusable HTTP status: 408, 429 and 5xx are worth retrying, the rest is final.
    pub fn status(code: u16) -> Self {
        let problem = Problem::Status(code);
        if code == 408 || code == 429 || (500..600).contains(&code) {
            Failure::transient(problem, false)
        } else {
            Failure::permanent(problem)
        }
    }

    /// An error from sending the request or reading the response head.
    pub fn transport(error: ureq::Error) -> Self {
        let transient = matches!(
            error,
            ureq::Error::Io(_)
                | ureq::Error::Timeout(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::HostNotFound
                | ureq::Error::Protocol(_)
        );
        let problem = Problem::Transport(error.to_string());
        if transient {
            Failure::transient(problem, false)
        } else {
            Failure::permanent(problem)
        }
    }
}

/// Exponential backoff: `first`, then doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The pause before the next request after `failures` failures in a row (1 or more).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.max.max(self.first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX).as_millis(), 1000);
    }

    #[test]
    fn only_timeouts_throttling_and_server_errors_are_retried() {
        for code in [408, 429, 500, 503, 599] {
            assert!(
                matches!(Failure::status(code).kind, Kind::Transient { .. }),
                "{code}"
            );
        }
        for code in [301, 400, 401, 403, 404, 410] {
            assert_eq!(Failure::status(code).kind, Kind::Permanent, "{code}");
        }
    }
}
