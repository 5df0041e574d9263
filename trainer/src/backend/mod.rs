//! The seam between the model math and a device.
//!
//! A backend computes, for one batch, the loss and (for training) the gradient of the summed loss
//! with respect to every parameter. The optimizer, data loading and checkpoints sit above it and
//! never see the device. `cpu` is the f32 reference every other backend is checked against.

use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::ModelConfig;
use crate::params::ParamStore;

pub mod cpu;
pub mod cuda;
pub mod select;

pub use select::{open_backend, OpenError, Opened};

/// Errors a backend reports.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("batch does not fit the model: {0}")]
    BadBatch(String),
    /// The config is invalid or the parameters (or gradient buffers) do not match it.
    #[error("model does not match: {0}")]
    BadModel(String),
    #[error("device error: {0}")]
    Device(String),
}

/// What a device implements.
pub trait Backend {
    /// A short name for logs (`cpu`, `cuda:0 (NVIDIA H100)`).
    fn name(&self) -> String;

    /// Forward and backward over `batch`. Adds the gradient of `loss_sum + z_loss_sum` (a sum
    /// over scored tokens, not a mean) to `grads`, which has the shapes of `params`; the caller
    /// divides by the token count of the whole (accumulated) batch.
    fn forward_backward(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
        grads: &mut ParamStore,
    ) -> Result<LossStats, BackendError>;

    /// `forward_backward` over the micro-batches of one optimizer step, all with the same
    /// parameters: adds every micro-batch's gradient into `grads` and returns their stats in
    /// order. A device backend overrides it to move the parameters and gradients once per step
    /// instead of once per micro-batch; the default runs `forward_backward` on each in turn.
    fn forward_backward_many(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        micro_batches: &[(&Batch, StepOptions)],
        grads: &mut ParamStore,
    ) -> Result<Vec<LossStats>, BackendError> {
        micro_batches
            .iter()
            .map(|(batch, options)| self.forward_backward(config, params, batch, options, grads))
            .collect()
    }

    /// Forward only (evaluation): the losses, no gradients. Dropout is off.
    fn forward_loss(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError>;
}
