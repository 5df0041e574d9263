//! Training data: examples from a corpus, in a seeded order, assembled into padded batches on a
//! background thread.
//!
//! `ExampleSource` is the one seam: the loader reads examples through it, so the corpus reader
//! (`redpack_schemas::Corpus`) and an in-memory list (for tests and small experiments) are
//! interchangeable. The position in the data is a [`Cursor`], saved in every checkpoint: the
//! order is a pure function of the seed, the epoch and the position, so a resumed run continues
//! with exactly the batches an uninterrupted run would have seen. With a mixture
//! ([`MixturePlan`]) the same cursor counts draws from the mixture's seeded stream instead.

mod checked;
mod loader;
mod mixture;
mod permutation;

use std::path::{Path, PathBuf};

use redpack_schemas::{Corpus, Kind, Layout, TokenizerInfo};
use serde::{Deserialize, Serialize};

pub use checked::CheckedCorpus;
pub use loader::{assemble, LoadedBatch, Loader, LoaderOptions, Order};
pub use mixture::{Mixture, MixtureGroup, MixturePlan, MixtureState, DEFAULT_KEY};
pub use permutation::Permutation;

/// Errors reading training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Corpus(#[from] redpack_schemas::SchemaError),
    #[error("{place}: example {index}: {problem}")]
    BadExample {
        place: String,
        index: u64,
        problem: String,
    },
    #[error("{place}: the corpus holds no examples")]
    Empty { place: String },
    #[error("{place}: {problem}")]
    Mixture { place: String, problem: String },
    #[error("the batch loader thread stopped unexpectedly")]
    LoaderGone,
    #[error("the batch loader thread failed: {0}")]
    LoaderPanicked(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: sha256 {got} does not match the manifest's {want}: the file changed or is damaged (--no-verify skips this check)", path.display())]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
}

/// One example, copied out of its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedExample {
    pub tokens: Vec<u32>,
    /// Input (prefix) length: RedLLM's encoder part, DecLLM's prompt.
    pub prefix_len: usize,
    pub source: String,
    /// Positions other than 0 where a new document starts.
    pub doc_starts: Vec<u32>,
}

/// Where the loader reads examples from. `Send` because batches are built on their own thread.
pub trait ExampleSource: Send {
    /// A name for error messages (the corpus directory).
    fn place(&self) -> String;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Example `index` (`< len()`).
    fn example(&self, index: u64) -> Result<OwnedExample, DataError>;
    /// The source name of example `index`, for mixture sampling.
    fn source_name(&self, index: u64) -> Result<String, DataError> {
        Ok(self.example(index)?.source)
    }
}

impl ExampleSource for Corpus {
    fn place(&self) -> String {
        self.dir().display().to_string()
    }

    fn len(&self) -> u64 {
        Corpus::len(self)
    }

    fn example(&self, index: u64) -> Result<OwnedExample, DataError> {
        let ex = Corpus::example(self, index)?;
        Ok(OwnedExample {
            tokens: ex.tokens.to_vec(),
            prefix_len: ex.prefix_len as usize,
            source: ex.source.to_string(),
            doc_starts: ex.doc_starts.to_vec(),
        })
    }

    fn source_name(&self, index: u64) -> Result<String, DataError> {
        Ok(Corpus::example(self, index)?.source.to_string())
    }
}

/// Examples held in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySource {
    pub examples: Vec<OwnedExample>,
}

impl ExampleSource for MemorySource {
    fn place(&self) -> String {
        "in-memory examples".to_string()
    }

    fn len(&self) -> u64 {
        self.examples.len() as u64
    }

    fn example(&self, index: u64) -> Result<OwnedExample, DataError> {
        self.examples
            .get(index as usize)
            .cloned()
            .ok_or_else(|| DataError::BadExample {
                place: self.place(),
                index,
                problem: format!("out of range (len {})", self.examples.len()),
            })
    }
}

/// Position in the data: `position` examples of epoch `epoch` have been consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub position: u64,
}

/// What the trainer needs to know about a corpus before reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusSummary {
    pub dir: PathBuf,
    pub kind: Kind,
    pub layout: Layout,
    pub tokenizer: TokenizerInfo,
    pub examples: u64,
    /// sha256 of `manifest.json`: the corpus's identity.
    pub manifest_sha256: String,
}

impl CorpusSummary {
    /// The longest row the corpus can produce (`seq_len`, or max input + max target).
    pub fn max_row_len(&self) -> usize {
        self.layout.max_len() as usize
    }
}

/// Opens a corpus directory and summarizes it; fails on a missing or unfinished corpus and on an
/// empty one.
pub fn open_corpus(dir: &Path) -> Result<(Corpus, CorpusSummary), DataError> {
    let corpus = Corpus::open(dir)?;
    let manifest = corpus.manifest();
    let manifest_path = dir.join(redpack_schemas::MANIFEST_FILE);
    let bytes = std::fs::read(&manifest_path).map_err(|source| DataError::Io {
        path: manifest_path,
        source,
    })?;
    let manifest_sha256 = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let summary = CorpusSummary {
        manifest_sha256,
        dir: dir.to_path_buf(),
        kind: manifest.kind,
        layout: manifest.layout,
        tokenizer: manifest.tokenizer.clone(),
        examples: corpus.len(),
    };
    if summary.examples == 0 {
        return Err(DataError::Empty {
            place: dir.display().to_string(),
        });
    }
    Ok((corpus, summary))
}
