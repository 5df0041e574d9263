//! Using a trained checkpoint: incremental decoding with a key/value cache, sampling, and the
//! `crate::lm::LanguageModel` interface downstream evaluation runs on.
//!
//! - `decoder`: the `Decoder` trait a device implements (start rows from prompts, append tokens,
//!   return next-token logits) and what a row's cache means for each architecture;
//! - `cpu`: the CPU decoder (f32, the CPU backend's blocks); the CUDA decoder is
//!   `crate::backend::cuda::decode::CudaDecoder`;
//! - `sample`: greedy, temperature and top-p choice of the next token, seeded;
//! - `model`: a checkpoint opened for decoding (`open`, `open_model`), its generation loop
//!   (stops at EOD, a stop sequence or the length limit) and log-likelihoods.

pub mod cpu;
pub mod decoder;
mod model;
pub mod sample;

pub use decoder::{DecodeMode, Decoder};
pub use model::{open, open_model, CheckpointModel, Generated, OpenOptions, StopReason};
pub use sample::Sampling;

use crate::checkpoint::CheckpointError;
use crate::lm::LmError;

/// Errors opening a checkpoint for decoding or decoding with it.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The model or the device failed.
    #[error("{0}")]
    Model(String),
    #[error("token id {token} is outside the model's vocabulary of {vocab}")]
    Token { token: u64, vocab: usize },
    #[error("position {position} is beyond the model's context of {limit} tokens")]
    TooLong { position: usize, limit: usize },
    #[error("prompt {index} is empty")]
    EmptyPrompt { index: usize },
    /// A request the model cannot serve, by its index in the request list.
    #[error("request {index}: {reason}")]
    BadRequest { index: usize, reason: String },
    #[error("request {index}: the model's logits hold NaN at output token {step}")]
    NotFinite { index: usize, step: usize },
}

impl From<GenerateError> for LmError {
    fn from(e: GenerateError) -> LmError {
        match e {
            GenerateError::BadRequest { index, reason } => LmError::BadRequest { index, reason },
            other => LmError::Model(other.to_string()),
        }
    }
}
