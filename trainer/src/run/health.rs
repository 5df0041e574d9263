//! The run's health policy: when a step's numbers mean the run has failed, so that a diverging
//! run stops with an error instead of training on as if nothing happened.
//!
//! Checked on every step, before its update is kept:
//!
//! - a non-finite loss, z-loss, gradient norm or update norm always stops the run;
//! - a **loss spike** stops it: a loss above `spike_factor` times the baseline, where the
//!   baseline is the larger of `ln(vocab)` (a uniform prediction's loss) and an exponential
//!   moving average of the earlier steps' losses (decay [`BASELINE_DECAY`]); `spike_factor = 0`
//!   turns this check off;
//! - a **collapsed gradient** stops it (unless `stop_on_zero_grad = false`): a gradient norm of
//!   at most [`COLLAPSED_GRAD_NORM`] while the loss is above [`COLLAPSE_MIN_LOSS`], which is
//!   what a network whose activations overflowed and were zeroed out looks like.
//!
//! A step's loss and gradient are computed from the weights the previous step wrote, so a failed
//! check condemns the previous step's checkpoint as well (see `run::TrainRun::run`).

use serde::{Deserialize, Serialize};

/// Weight of the previous baseline in the moving average of the loss.
pub const BASELINE_DECAY: f64 = 0.9;
/// A gradient norm at or below this counts as zero.
pub const COLLAPSED_GRAD_NORM: f64 = 1e-12;
/// A loss at or below this is "about zero": a vanishing gradient is then expected.
pub const COLLAPSE_MIN_LOSS: f64 = 1e-3;
/// The spike factor when the recipe sets none.
pub const DEFAULT_SPIKE_FACTOR: f64 = 3.0;

/// The recipe's `[health]` table (`--spike-factor`, `--allow-zero-grad` on the command line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRecipe {
    /// Stop when the loss exceeds this multiple of its baseline (0: never).
    pub spike_factor: Option<f64>,
    /// Stop when the gradient norm collapses to zero while the loss is not about zero.
    pub stop_on_zero_grad: Option<bool>,
}

impl HealthRecipe {
    pub fn overlay(self, top: HealthRecipe) -> HealthRecipe {
        HealthRecipe {
            spike_factor: top.spike_factor.or(self.spike_factor),
            stop_on_zero_grad: top.stop_on_zero_grad.or(self.stop_on_zero_grad),
        }
    }

    pub fn resolve(&self) -> HealthPolicy {
        HealthPolicy {
            spike_factor: self.spike_factor.unwrap_or(DEFAULT_SPIKE_FACTOR),
            stop_on_zero_grad: self.stop_on_zero_grad.unwrap_or(true),
        }
    }
}

/// The resolved policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HealthPolicy {
    /// 0 turns the spike check off.
    pub spike_factor: f64,
    pub stop_on_zero_grad: bool,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthRecipe::default().resolve()
    }
}

impl HealthPolicy {
    /// Checks the values; the error says which and why.
    pub fn validate(&self) -> Result<(), String> {
        let f = self.spike_factor;
        if !(f == 0.0 || (f.is_finite() && f > 1.0)) {
            return Err(format!(
                "spike_factor (--spike-factor) must be above 1, or 0 to turn the check off; got {f}"
            ));
        }
        Ok(())
    }
}

/// Why a step failed its checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    NonFinite {
        what: String,
        value: f64,
    },
    Spike {
        loss: f64,
        baseline: f64,
        factor: f64,
    },
    Collapse {
        grad_norm: f64,
        loss: f64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NonFinite { what, value } => write!(f, "{what} is not finite ({value})"),
            Problem::Spike {
                loss,
                baseline,
                factor,
            } => write!(
                f,
                "the loss {loss:.6} is more than {factor} times its baseline {baseline:.4} (a loss spike; the limit is --spike-factor, [health] spike_factor)"
            ),
            Problem::Collapse { grad_norm, loss } => write!(
                f,
                "the gradient norm collapsed to {grad_norm:e} while the loss is {loss:.4} (the network no longer learns; [health] stop_on_zero_grad = false, --allow-zero-grad, lets it go on)"
            ),
        }
    }
}

/// The running state of the checks.
#[derive(Debug, Clone)]
pub struct HealthMonitor {
    policy: HealthPolicy,
    /// `ln(vocab)`: the least baseline.
    floor: f64,
    /// The moving average of the accepted losses; `None` before the first.
    average: Option<f64>,
}

impl HealthMonitor {
    /// `average` continues a resumed run's moving average.
    pub fn new(policy: HealthPolicy, vocab_size: usize, average: Option<f64>) -> HealthMonitor {
        HealthMonitor {
            policy,
            floor: (vocab_size.max(2) as f64).ln(),
            average: average.filter(|a| a.is_finite()),
        }
    }

    /// The baseline a spike is measured against.
    pub fn baseline(&self) -> f64 {
        self.average.map_or(self.floor, |a| a.max(self.floor))
    }

    /// The moving average of the accepted losses (saved in checkpoints).
    pub fn average(&self) -> Option<f64> {
        self.average
    }

    /// Checks a step's loss and z-loss (known before its update).
    pub fn check_loss(&self, loss: f64, z_loss: f64) -> Result<(), Problem> {
        if !loss.is_finite() {
            return Err(Problem::NonFinite {
                what: "the loss".into(),
                value: loss,
            });
        }
        if !z_loss.is_finite() {
            return Err(Problem::NonFinite {
                what: "the z-loss".into(),
                value: z_loss,
            });
        }
        let factor = self.policy.spike_factor;
        let baseline = self.baseline();
        if factor > 0.0 && loss > factor * baseline {
            return Err(Problem::Spike {
                loss,
                baseline,
                factor,
            });
        }
        Ok(())
    }

    /// Checks a step's gradient norm (before clipping) against its loss.
    pub fn check_grad(&self, loss: f64, grad_norm: f64) -> Result<(), Problem> {
        if !grad_norm.is_finite() {
            return Err(Problem::NonFinite {
                what: "the gradient norm".into(),
                value: grad_norm,
            });
        }
        if self.policy.stop_on_zero_grad
            && grad_norm <= COLLAPSED_GRAD_NORM
            && loss > COLLAPSE_MIN_LOSS
        {
            return Err(Problem::Collapse { grad_norm, loss });
        }
        Ok(())
    }

    /// Takes a step that passed every check into the baseline.
    pub fn accept(&mut self, loss: f64) {
        self.average = Some(match self.average {
            Some(a) => BASELINE_DECAY * a + (1.0 - BASELINE_DECAY) * loss,
            None => loss,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_is_measured_against_the_average_or_ln_vocab() {
        let policy = HealthPolicy::default();
        let mut m = HealthMonitor::new(policy, 1000, None);
        let floor = 1000f64.ln();
        assert_eq!(m.baseline(), floor);
        assert!(m.check_loss(floor * 2.9, 0.0).is_ok());
        assert!(matches!(
            m.check_loss(floor * 3.1, 0.0),
            Err(Problem::Spike { .. })
        ));
        m.accept(20.0);
        m.accept(30.0);
        assert!((m.baseline() - 21.0).abs() < 1e-12);
        assert!(m.check_loss(62.0, 0.0).is_ok());
        assert!(m.check_loss(64.0, 0.0).is_err());
        let off = HealthMonitor::new(
            HealthPolicy {
                spike_factor: 0.0,
                ..policy
            },
            1000,
            None,
        );
        assert!(off.check_loss(1e30, 0.0).is_ok());
        assert!(off.check_loss(f64::NAN, 0.0).is_err());
        assert!(off.check_loss(1.0, f64::INFINITY).is_err());
    }

    #[test]
    fn a_zero_gradient_with_a_real_loss_is_a_collapse() {
        let m = HealthMonitor::new(HealthPolicy::default(), 100, None);
        assert!(matches!(
            m.check_grad(4.6, 0.0),
            Err(Problem::Collapse { .. })
        ));
        assert!(m.check_grad(1e-4, 0.0).is_ok());
        assert!(m.check_grad(4.6, 1e-3).is_ok());
        assert!(m.check_grad(4.6, f64::NAN).is_err());
        let lenient = HealthMonitor::new(
            HealthPolicy {
                stop_on_zero_grad: false,
                ..HealthPolicy::default()
            },
            100,
            None,
        );
        assert!(lenient.check_grad(4.6, 0.0).is_ok());
    }

    #[test]
    fn factors_at_or_below_one_are_refused() {
        for bad in [1.0, 0.5, -2.0, f64::NAN, f64::INFINITY] {
            let p = HealthPolicy {
                spike_factor: bad,
                stop_on_zero_grad: true,
            };
            assert!(p.validate().is_err(), "{bad}");
        }
        assert!(HealthPolicy::default().validate().is_ok());
    }
}
