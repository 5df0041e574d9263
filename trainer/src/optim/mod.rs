//! Optimization: Adafactor (the paper's optimizer, as T5X implements it) and global
//! gradient-norm clipping.
//!
//! The optimizer sees only named f32 tensors (`ParamStore`): parameters, their gradients (already
//! divided by the scored-token count of the whole accumulated batch) and its own state, which it
//! can hand out and take back as named tensors for checkpoints.

pub mod adafactor;
pub mod clip;

pub use adafactor::{Adafactor, AdafactorConfig, UpdateStats};
pub use clip::{clip_global_norm, global_norm, scale_grads};

/// Errors the optimizer reports.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("gradient `{name}` has shape {got:?}, parameter has {want:?}")]
    GradShape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("gradients hold {got} tensors, parameters {want}")]
    GradCount { got: usize, want: usize },
    #[error("optimizer state `{name}`: {problem}")]
    State { name: String, problem: String },
    #[error("invalid Adafactor setting: {0}")]
    Config(String),
}
