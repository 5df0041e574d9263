//! The one error type of the format crate. Every variant names the file it is about.

use std::path::PathBuf;

/// What can go wrong reading or writing a corpus.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its content breaks the format: truncated, wrong magic or version,
    /// checksum mismatch, an index entry out of bounds, a disagreement with the manifest.
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// `manifest.json` is missing: the directory is not a corpus, or its build did not finish.
    #[error(
        "{}: not a finished redpack corpus (manifest.json is missing; an interrupted build leaves none)",
        dir.display()
    )]
    NotACorpus { dir: PathBuf },
    /// A written format version this build cannot read.
    #[error("{}: format version {found} is not supported (this redpack reads version {supported}); rebuild the corpus or upgrade redpack", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A caller passed something the writer cannot store.
    #[error("invalid example: {0}")]
    InvalidExample(String),
    /// An example index past the end of the corpus.
    #[error("example {index} is out of range: the corpus has {len} examples")]
    OutOfRange { index: u64, len: u64 },
}

impl SchemaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SchemaError {
        SchemaError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> SchemaError {
        SchemaError::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}

pub type Result<T, E = SchemaError> = std::result::Result<T, E>;
