//! What fetching one file came to, why a file failed, and the run's totals (`--json`).

use std::path::PathBuf;

use serde::Serialize;

use super::plan::FetchItem;

/// Why one request or one download failed. Wrapped in a [`FetchError`] that names the file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("size mismatch: the manifest says {expected} bytes, the download has {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("sha256 mismatch: the manifest says {expected}, the download hashes to {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("the server answered a request from byte {offset} with Content-Range {header:?}")]
    ContentRange { offset: u64, header: String },
}

/// A file that could not be fetched: which one, from where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path} from {url}: {problem} (after {requests} request{})", if *.requests == 1 { "" } else { "s" })]
pub struct FetchError {
    pub path: String,
    pub url: String,
    pub requests: u32,
    #[source]
    pub problem: Problem,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fetched and verified (size, and sha256 when listed) in this run.
    Downloaded,
    /// Already present and verified, or present with nothing listed to verify.
    Skipped,
    Failed,
}

/// One file's outcome, in the order of the plan.
#[derive(Debug, Serialize)]
pub struct FileReport {
    pub path: String,
    pub url: String,
    pub subset: Option<String>,
    pub status: Status,
    /// Size on disk (when it is there), else the listed size.
    pub size: Option<u64>,
    /// sha256 of the file as written (downloaded files, and skipped ones that were hashed).
    pub sha256: Option<String>,
    /// False for a skipped file whose manifest entry lists neither size nor sha256.
    pub verified: bool,
    /// Body bytes received in this run.
    pub bytes_received: u64,
    /// Bytes already in the partial file when the first request of this run was sent.
    pub resumed_from: u64,
    /// HTTP requests sent for it.
    pub requests: u32,
    /// Why a file that was already present was downloaded again.
    pub replaced: Option<String>,
    /// Why it failed (the [`FetchError`] as text).
    pub error: Option<String>,
    #[serde(skip)]
    pub failure: Option<FetchError>,
}

impl FileReport {
    pub(crate) fn new(item: &FetchItem, status: Status) -> Self {
        FileReport {
            path: item.path.clone(),
            url: item.url.clone(),
            subset: item.subset.clone(),
            status,
            size: item.size,
            sha256: None,
            verified: false,
            bytes_received: 0,
            resumed_from: 0,
            requests: 0,
            replaced: None,
            error: None,
            failure: None,
        }
    }

    pub(crate) fn failed(mut self, failure: FetchError) -> Self {
        self.status = Status::Failed;
        self.requests = failure.requests;
        self.error = Some(failure.to_string());
        self.failure = Some(failure);
        self
    }
}

/// Everything one `fetch` run did.
#[derive(Debug, Serialize)]
pub struct FetchReport {
    pub downloaded: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Body bytes received over all files.
    pub bytes_received: u64,
    pub files: Vec<FileReport>,
}

impl FetchReport {
    pub fn new(files: Vec<FileReport>) -> Self {
        let count = |status| files.iter().filter(|f| f.status == status).count();
        FetchReport {
            downloaded: count(Status::Downloaded),
            skipped: count(Status::Skipped),
            failed: count(Status::Failed),
            bytes_received: files.iter().map(|f| f.bytes_received).sum(),
            files,
        }
    }

    pub fn failures(&self) -> impl Iterator<Item = &FileReport> {
        self.files.iter().filter(|f| f.status == Status::Failed)
    }
}
