//! Input side of `build-corpus`: find the input files, tell their layout, and stream each one as
//! [`Item`](crate::record::Item)s in file order.
//!
//! The folder follows the reading path:
//! - [`discover`] turns paths, directories and globs into an ordered list of [`InputFile`]s, each
//!   with a source name (`arxiv`, `common_crawl`, `cot_zsopt`, ...) and an [`InputFormat`]
//!   (`names` reads the source and corpus from the path, `detect` sniffs compression and
//!   RedPajama vs FLAN);
//! - [`datamanifest`] resolves a data manifest (file list with sizes and sha256) instead;
//! - [`open`] streams one file: `lines` splits a plain/zstd/gzip stream into bounded lines,
//!   `fields` pulls the configured string fields out of a JSON line, `redpajama` and `flan` turn
//!   them into records, `parquet` reads FLAN Parquet exports row group by row group.
//!
//! Memory is bounded per open file: one line (at most [`MAX_LINE_BYTES`]) or one Parquet batch.

mod cells;
pub mod datamanifest;
mod detect;
mod discover;
mod fields;
mod flan;
mod jsonl;
mod lines;
mod names;
mod parquet;
mod redpajama;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::record::{FileFault, Item};

pub use detect::detect_format;
pub use discover::discover;
pub use jsonl::JsonlStream;
pub use names::{classify_path, source_from_path, Family, REDPAJAMA_SUBSETS};
pub use parquet::ParquetStream;

/// Longest JSONL line read into memory. Longer lines are skipped to their end and rejected, so a
/// file without newlines cannot make the reader grow without bound. RedPajama's longest records
/// (book, github) are a few tens of MB.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Bytes of an offending line kept in a reject's `snippet`.
pub const SNIPPET_BYTES: usize = 200;

/// One input file, ready to [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    /// The name used in provenance ([`Place::file`](crate::record::Place)): the path relative to
    /// the directory it was found under, or the path as given. Stable across machines so that
    /// outputs do not depend on where the data lives.
    pub display: Arc<str>,
    /// Source name for per-source counts; see [`source_from_path`]. Callers may overwrite it
    /// (pipeline config) before opening.
    pub source: Arc<str>,
    pub format: InputFormat,
    /// The file's sha256 (lowercase hex) when a data manifest listed it and the build verified
    /// it; recorded in the corpus manifest's `inputs`.
    pub sha256: Option<Arc<str>>,
}

/// How a file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// RedPajama JSONL: a `text` field (name configurable) and anything else.
    RedPajamaJsonl(Compression),
    /// FLAN JSONL export: input, target and optional task fields.
    FlanJsonl(Compression),
    /// FLAN Parquet export: input, target and optional task columns.
    FlanParquet,
}

impl InputFormat {
    /// True for FLAN (input/target pair) layouts.
    pub fn is_flan(self) -> bool {
        !matches!(self, InputFormat::RedPajamaJsonl(_))
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputFormat::RedPajamaJsonl(c) => write!(f, "redpajama jsonl{}", c.suffix()),
            InputFormat::FlanJsonl(c) => write!(f, "flan jsonl{}", c.suffix()),
            InputFormat::FlanParquet => f.write_str("flan parquet"),
        }
    }
}

/// Compression of a JSONL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Zstd,
    Gzip,
}

impl Compression {
    fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd => " (zstd)",
            Compression::Gzip => " (gzip)",
        }
    }
}

/// What the caller knows about the layout (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatHint {
    /// Decide per file from its path and, if needed, the keys of its first records.
    #[default]
    Auto,
    RedPajama,
    Flan,
}

/// Field (JSON key / Parquet column) names to read. `text` is used for RedPajama layouts;
/// `input`, `target` and `task` for FLAN layouts. A missing `task` field is not an error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    #[serde(default = "default_text")]
    pub text: String,
    #[serde(default = "default_input")]
    pub input: String,
    #[serde(default = "default_target")]
    pub target: String,
    #[serde(default = "default_task")]
    pub task: Option<String>,
}

fn default_text() -> String {
    "text".to_owned()
}
fn default_input() -> String {
    "inputs".to_owned()
}
fn default_target() -> String {
    "targets".to_owned()
}
fn default_task() -> Option<String> {
    Some("_task_name".to_owned())
}

impl FieldMap {
    fn preset(input: &str, target: &str, task: &str) -> Self {
        FieldMap {
            text: default_text(),
            input: input.to_owned(),
            target: target.to_owned(),
            task: Some(task.to_owned()),
        }
    }

    /// FLAN Parquet exports (`inputs`, `targets`, `_task_name`). The default.
    pub fn flan_parquet() -> Self {
        Self::preset("inputs", "targets", "_task_name")
    }

    /// FLAN gzipped-JSONL exports (`inputs`, `targets`, `task`).
    pub fn flan_jsonl() -> Self {
        Self::preset("inputs", "targets", "task")
    }

    /// Exports that use `source`, `target`, `task_name`.
    pub fn source_target() -> Self {
        Self::preset("source", "target", "task_name")
    }

    /// Looks a preset up by name (`flan-parquet`, `flan-jsonl`, `source-target`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "flan-parquet" => Some(Self::flan_parquet()),
            "flan-jsonl" => Some(Self::flan_jsonl()),
            "source-target" => Some(Self::source_target()),
            _ => None,
        }
    }

    /// The task field to use for a file: the configured one, or the other usual FLAN task names
    /// when the configured one is absent, so that the default map reads both FLAN exports.
    fn task_candidates(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.task.iter().map(String::as_str).collect();
        if self.task.as_deref() == Some("_task_name") {
            names.extend(["task", "task_name"]);
        }
        names
    }
}

impl Default for FieldMap {
    fn default() -> Self {
        Self::flan_parquet()
    }
}

/// Errors that stop discovery or opening before any record is read. Faults inside a file are
/// not errors: they end its stream and show up in [`RecordStream::fault`].
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input path {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("invalid glob pattern {pattern:?}: {message}")]
    BadGlob { pattern: String, message: String },
    #[error("glob pattern {pattern:?} matched no files")]
    EmptyGlob { pattern: String },
    #[error("directory {path} holds no data files (.jsonl, .jsonl.zst, .jsonl.gz, .parquet)")]
    EmptyDirectory { path: PathBuf },
    #[error(
        "{path}: cannot tell whether this is RedPajama or FLAN ({why}); pass --format redpajama \
         or --format flan"
    )]
    UnknownFormat { path: PathBuf, why: String },
    #[error("{path}: a Parquet file can only be read as FLAN, but --format redpajama was given")]
    ParquetNotRedPajama { path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] datamanifest::ManifestError),
}

/// Streams one file's items in order; see [`open`].
pub enum RecordStream {
    Jsonl(Box<JsonlStream>),
    Parquet(Box<ParquetStream>),
}

impl RecordStream {
    /// The fault that ended the file early, once the stream has returned `None`.
    pub fn fault(&self) -> Option<&FileFault> {
        match self {
            RecordStream::Jsonl(s) => s.fault(),
            RecordStream::Parquet(s) => s.fault(),
        }
    }

    /// Bytes of the file consumed so far (compressed bytes for zstd/gzip), for progress.
    pub fn bytes_read(&self) -> u64 {
        match self {
            RecordStream::Jsonl(s) => s.bytes_read(),
            RecordStream::Parquet(s) => s.bytes_read(),
        }
    }

    /// For JSONL inputs, the raw bytes read so far and their xxh3-128 state (see
    /// [`JsonlStream::raw_hash`]); Parquet is read out of order, so `None`.
    pub fn raw_hash(&self) -> Option<(u64, xxhash_rust::xxh3::Xxh3Default)> {
        match self {
            RecordStream::Jsonl(s) => Some(s.raw_hash()),
            RecordStream::Parquet(_) => None,
        }
    }

    /// Items (lines or rows, records and rejects together) yielded so far.
    pub fn records(&self) -> u64 {
        match self {
            RecordStream::Jsonl(s) => s.items(),
            RecordStream::Parquet(s) => s.items(),
        }
    }
}

impl Iterator for RecordStream {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        match self {
            RecordStream::Jsonl(s) => s.next(),
            RecordStream::Parquet(s) => s.next(),
        }
    }
}

/// Opens one file and streams its items. Fails only when the file cannot be opened at all;
/// every later problem becomes a reject or the stream's [`fault`](RecordStream::fault).
pub fn open(file: &InputFile, fields: &FieldMap) -> Result<RecordStream, InputError> {
    open_with_line_cap(file, fields, MAX_LINE_BYTES)
}

/// [`open`] with a different JSONL line cap (for memory-tight settings and tests).
pub fn open_with_line_cap(
    file: &InputFile,
    fields: &FieldMap,
    max_line: usize,
) -> Result<RecordStream, InputError> {
    Ok(match file.format {
        InputFormat::RedPajamaJsonl(c) => RecordStream::Jsonl(Box::new(JsonlStream::open(
            file, c, false, fields, max_line,
        )?)),
        InputFormat::FlanJsonl(c) => RecordStream::Jsonl(Box::new(JsonlStream::open(
            file, c, true, fields, max_line,
        )?)),
        InputFormat::FlanParquet => {
            RecordStream::Parquet(Box::new(ParquetStream::open(file, fields)?))
        }
    })
}

/// The first [`SNIPPET_BYTES`] of a line, lossily decoded, for rejects.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    let end = bytes.len().min(SNIPPET_BYTES);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipeline moves streams and files across rayon threads.
    #[test]
    fn streams_and_files_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<RecordStream>();
        assert_send::<InputFile>();
        assert_send::<InputError>();
    }

    #[test]
    fn field_map_presets_and_config() {
        assert_eq!(
            FieldMap::named("source-target"),
            Some(FieldMap::source_target())
        );
        assert_eq!(FieldMap::named("nope"), None);
        let map: FieldMap = toml::from_str("input = \"prompt\"\ntarget = \"completion\"").unwrap();
        assert_eq!(
            (map.input.as_str(), map.target.as_str(), map.text.as_str()),
            ("prompt", "completion", "text")
        );
        assert!(
            toml::from_str::<FieldMap>("inputs = \"x\"").is_err(),
            "typos are errors"
        );
    }
}
