//! What input readers emit: records with their provenance, and rejects with their reason.
//!
//! Every line (JSONL) or row (Parquet) an input reader sees becomes exactly one [`Item`]: a
//! [`Record`] that later stages keep, drop as a duplicate or filter, or a [`Reject`] that says why
//! it could not be read. A fault that ends a file early (truncated zstd frame, corrupt Parquet
//! page) is a [`FileFault`]: what was read before it stays.

use std::fmt;
use std::sync::Arc;

/// Where a record came from: the input file (as given / relative to the input root) and the
/// 1-based line (JSONL) or 0-based row (Parquet) in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: Arc<str>,
    /// Line of a JSONL input or row of a Parquet input, both counted from 1.
    pub line: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The payload of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A pretraining document (RedPajama `text`).
    Text(String),
    /// An instruction-tuning example (FLAN `inputs` / `targets`).
    Pair {
        input: String,
        target: String,
        /// The task name (`_task_name` / `task` / `task_name`), when the input has one.
        task: Option<String>,
    },
}

impl Content {
    /// Total length in bytes of the text(s).
    pub fn len_bytes(&self) -> usize {
        match self {
            Content::Text(text) => text.len(),
            Content::Pair { input, target, .. } => input.len() + target.len(),
        }
    }
}

/// One readable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Source name (`arxiv`, `common_crawl`, `flan`, ...), used for per-source counts.
    pub source: Arc<str>,
    pub place: Place,
    pub content: Content,
}

/// Why a record was rejected. The string form (`as_str`) is the key in the manifest's
/// `rejected_by_reason` and in `rejects.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    InvalidJson,
    InvalidUtf8,
    /// The text field (`text`, `inputs`, `targets`, ... as configured) is absent or null.
    MissingField,
    /// The text field is present but not a string.
    NonStringField,
    /// The record is not a JSON object.
    NotAnObject,
    /// A record cut off by a truncated or corrupt compressed stream.
    TruncatedFile,
    /// A Parquet row group or page that could not be decoded; each row in it is rejected.
    UnreadableParquet,
    /// A JSONL line longer than the reader's cap (64 MiB by default); skipped, not loaded.
    LineTooLong,
    /// A file, or the rest of one, that could not be read at all (cannot be opened, not a
    /// Parquet file, a compressed stream that fails between lines): one reject for the part
    /// that was lost, so the file counts in the rejected fraction.
    UnreadableFile,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MissingField => "missing_field",
            RejectReason::NonStringField => "non_string_field",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::TruncatedFile => "truncated_file",
            RejectReason::UnreadableParquet => "unreadable_parquet",
            RejectReason::LineTooLong => "line_too_long",
            RejectReason::UnreadableFile => "unreadable_file",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that could not be read, with enough context to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub source: Arc<str>,
    pub place: Place,
    pub reason: RejectReason,
    /// Human-readable detail (the parser's message).
    pub detail: String,
    /// The first bytes of the offending line, lossily decoded, for `rejects.jsonl`.
    pub snippet: String,
}

/// A fault that stopped reading a file before its end (truncated or corrupt compressed stream,
/// unreadable Parquet footer, I/O error). Records read before it are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFault {
    pub file: Arc<str>,
    /// How far the file was read: records (lines/rows) seen before the fault.
    pub records_before: u64,
    /// Decompressed bytes consumed before the fault (0 when unknown).
    pub bytes_before: u64,
    pub message: String,
}

impl fmt::Display for FileFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: read stopped after {} records ({} bytes): {}",
            self.file, self.records_before, self.bytes_before, self.message
        )
    }
}

/// What a reader emits for each line or row, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Record(Record),
    Reject(Reject),
}
