//! Taking models and corpora to other tools.
//!
//! - `hf`: a checkpoint as a Hugging Face `transformers` model directory (config, weights under
//!   the names the bundled modeling file defines, tokenizer files, the modeling file itself),
//!   loaded with `trust_remote_code=True`;
//! - `reference`: the CPU backend's log-probabilities on a fixed probe batch, the numbers an
//!   exported model must reproduce;
//! - `megatron`: a corpus as a Megatron-LM indexed dataset (`PREFIX.bin` + `PREFIX.idx`).

pub mod hf;
pub mod megatron;
pub mod reference;

use std::path::PathBuf;

/// What can go wrong exporting. File errors name their path.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Corpus(#[from] redpack_schemas::SchemaError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("{0}")]
    Invalid(String),
    #[error("the reference forward pass failed: {0}")]
    Backend(String),
}
