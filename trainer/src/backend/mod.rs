//! The seam between the model math and a device.
//!
//! A backend computes, for one batch, the loss and (for training) the gradient of the summed loss
//! with respect to every parameter. The optimizer, data loading and checkpoints sit above it and
//! never see the device. `cpu` is the f32 reference every other backend is checked against.
//!
//! - `options`: what a run asks for (`DeviceChoice`, `Precision`);
//! - `select`: `open_backend`, which resolves those into a backend;
//! - `cpu`: the f32 reference backend;
//! - `cuda`: the CUDA backend (its switches are `cuda::CudaOptions`).
//!
//! Both backends build their work from the device-independent plan in `crate::model`.

use std::any::Any;
use std::sync::Arc;

use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::ModelConfig;
use crate::model::validate::BatchError;
use crate::optim::adafactor::{Adafactor, UpdateStats};
use crate::params::ParamStore;

pub mod cpu;
pub mod cuda;
pub mod options;
#[cfg(test)]
mod parity;
pub mod select;

pub use cuda::runtime::probe::CudaAvailability;
pub use options::{DeviceChoice, Precision};
pub use select::{open_backend, open_backend_on, probe_cuda, OpenError, Opened, CUDA_ENVIRONMENT};

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

impl From<BatchError> for BackendError {
    fn from(e: BatchError) -> Self {
        BackendError::BadBatch(e.0)
    }
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

    /// The backend's resident training, if it keeps parameters and optimizer state on its device
    /// (CUDA); `None` (the default) leaves the optimizer step to the host.
    fn resident(&mut self) -> Option<&mut dyn ResidentTraining> {
        None
    }

    /// Bytes of device memory still free, for a device with its own memory (CUDA); `None`
    /// (the default) means the host's memory, or unknown.
    fn free_device_memory(&self) -> Option<u64> {
        None
    }
}

/// Training with the parameters, gradients and Adafactor state resident on a device: the run
/// loop hands over the micro-batches and the step's constants, and moves the parameters back
/// only for checkpoints. Each step does what the host loop does, in the same order: gradients of
/// the summed loss, scaled to the mean, optional global-norm clipping, then the Adafactor update.
pub trait ResidentTraining {
    /// Copies the parameters and the optimizer (state and update count) onto the device.
    fn load_training(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        optimizer: &Adafactor,
    ) -> Result<(), BackendError>;

    /// A stager for the batches of a run with `config` and `options` (dropout seeds aside), to
    /// run on the data loader's thread; `None` (the default) stages nothing.
    fn stager(&self, config: &ModelConfig, options: &StepOptions) -> Option<Arc<dyn Stager>> {
        let _ = (config, options);
        None
    }

    /// Forward and backward over one step's micro-batches with the resident parameters; the
    /// gradients of the summed loss replace the previous step's.
    fn accumulate(
        &mut self,
        config: &ModelConfig,
        micro_batches: &[MicroBatch<'_>],
    ) -> Result<Vec<LossStats>, BackendError>;

    /// Multiplies the gradients by `scale` (1 / scored tokens), clips them to the global norm
    /// `clip` if given, and applies one Adafactor update with `lr`. Returns the gradient norm
    /// before clipping and the update's stats; a non-finite norm applies no update (`None`).
    fn apply_update(
        &mut self,
        scale: f32,
        clip: Option<f64>,
        lr: f32,
    ) -> Result<(f64, Option<UpdateStats>), BackendError>;

    /// Copies the parameters onto the device for `forward_loss_loaded` (evaluation: no
    /// optimizer state, no gradients needed).
    fn load_params(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
    ) -> Result<(), BackendError>;

    /// Forward only (dropout off) with the parameters `load_params` or `load_training` put on
    /// the device, so an evaluation moves them once, not once per batch.
    fn forward_loss_loaded(
        &mut self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError>;

    /// Joins a data-parallel job: this rank's NCCL communicator for the unique id `id`, on the
    /// backend's device (blocks until every rank has joined). The default refuses: only a
    /// device with collectives trains data-parallel.
    fn join_group(
        &mut self,
        id: &[u8; crate::dist::nccl::ID_BYTES],
        rank: usize,
        world_size: usize,
    ) -> Result<Arc<crate::dist::Communicator>, BackendError> {
        let _ = (id, rank, world_size);
        Err(BackendError::Device(
            "data-parallel training needs the CUDA backend".into(),
        ))
    }

    /// Sums `values` over the ranks of the joined job (in rank order); nothing without one.
    fn all_reduce_sums(&mut self, values: &mut [f64]) -> Result<(), BackendError> {
        let _ = values;
        Ok(())
    }

    /// Sums the step's gradients over the ranks of the joined job; nothing without one.
    fn all_reduce_gradients(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Copies the parameters and the optimizer state back into the host copies.
    fn store_training(
        &mut self,
        params: &mut ParamStore,
        optimizer: &mut Adafactor,
    ) -> Result<(), BackendError>;
}

/// What a stager made of a batch, opaque to everything but the backend that made it.
pub type Staged = Box<dyn Any + Send>;

/// Prepares batches for a device ahead of their step, on the data loader's thread: the CUDA
/// backend builds a batch's model inputs there and writes them into pinned host memory, so the
/// step only starts one asynchronous copy. Staging never fails: a batch it cannot prepare is
/// prepared again (and its error reported) by the step.
pub trait Stager: Send + Sync {
    fn stage(&self, batch: &Batch) -> Staged;
}

/// One micro-batch of a resident step: the batch, its options, and what the backend's stager
/// made of it, if it ran.
#[derive(Clone, Copy)]
pub struct MicroBatch<'a> {
    pub batch: &'a Batch,
    pub options: StepOptions,
    pub staged: Option<&'a Staged>,
}

impl<'a> MicroBatch<'a> {
    pub fn new(batch: &'a Batch, options: StepOptions) -> MicroBatch<'a> {
        MicroBatch {
            batch,
            options,
            staged: None,
        }
    }
}
