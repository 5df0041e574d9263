//! `redpack fetch`: download the files a data manifest lists, in parallel, resumably, verified.
//!
//! The folder follows the work:
//! - [`plan`] turns a [`DataManifest`](crate::input::datamanifest::DataManifest) into
//!   [`FetchItem`]s (URL, local path, size, sha256, subset);
//! - `download` fetches one item: skip it when already present and verified, else
//!   download into `NAME.part` with Range requests to resume, verify, fsync, rename;
//! - `retry` decides which failures are worth another request and how long to wait;
//! - [`report`] holds each file's outcome and the run's totals.
//!
//! [`fetch`] runs the items on `jobs` threads and reports through an [`Observer`] (the
//! command's progress bar). Nothing here panics on what the network or the disk does: every
//! failure becomes a [`FetchError`] naming the file and its URL in that file's report, and the
//! other files carry on.

mod download;
pub mod plan;
pub mod report;
mod retry;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use download::partial_path;
pub use plan::{plan, FetchItem, PlanError};
pub use report::{FetchError, FetchReport, FileReport, Problem, Status};
pub use retry::Backoff;

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Files downloaded at once.
    pub jobs: usize,
    /// Failed requests in a row after which a file is given up (a request that added bytes
    /// before the connection dropped starts the count again). A download that does not verify
    /// counts as a failure.
    pub retries: u32,
    pub backoff: Backoff,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response head, and for each read of the body.
    pub read_timeout: Duration,
    /// Use `http_proxy` / `https_proxy` / `NO_PROXY` from the environment.
    pub env_proxy: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            jobs: 4,
            retries: 5,
            backoff: Backoff {
                first: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            env_proxy: true,
        }
    }
}

/// Hears about progress while [`fetch`] runs; called from the worker threads.
pub trait Observer: Sync {
    /// `bytes` more of the files are on disk (received, or found in a partial or finished file).
    fn bytes(&self, _bytes: u64) {}
    /// `bytes` counted before were thrown away (a download that restarts from zero).
    fn discarded(&self, _bytes: u64) {}
    /// One file is finished, whatever the outcome.
    fn finished(&self, _file: &FileReport) {}
    /// Something worth telling the user: a retry, a present file that is downloaded again.
    fn note(&self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {}

/// Fetches `items` into `dir` (`jobs` at a time) and reports on each, in the order given. A file
/// that fails does not stop the others: its report says why.
pub fn fetch(
    items: &[FetchItem],
    dir: &Path,
    options: &FetchOptions,
    observer: &dyn Observer,
) -> FetchReport {
    let agent = agent(options);
    let fetcher = download::Fetcher {
        agent: &agent,
        options,
        dir,
        observer,
    };
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<FileReport>>> = Mutex::new(items.iter().map(|_| None).collect());
    let worker = || loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(index) else {
            return;
        };
        let report = fetcher.fetch(item);
        observer.finished(&report);
        // A poisoned lock only means another worker panicked; the slots are still sound.
        let mut slots = slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots[index] = Some(report);
    };
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.clamp(1, items.len().max(1)) {
            scope.spawn(worker);
        }
    });
    let slots = slots
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    FetchReport::new(slots.into_iter().flatten().collect())
}

fn agent(options: &FetchOptions) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("redpack/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(options.connect_timeout))
        .timeout_recv_response(Some(options.read_timeout))
        .timeout_per_read(Some(options.read_timeout));
    if !options.env_proxy {
        config = config.proxy(None);
    }
    ureq::Agent::new_with_config(config.build())
}
