//! The f32 CPU reference backend.
//!
//! Written llm.c style: every layer is an explicit forward/backward pair (`ops`, `attention`,
//! `layers`, `loss`), run per stack in `stack` and composed per architecture in `model`, both
//! walking the device-independent plan of `crate::model`. Matrix products go through
//! `matrixmultiply::sgemm` (`matmul`). Parallelism is rayon on a pool owned by the backend, and
//! every split is by fixed-size chunks of *outputs*, so results are bitwise identical whatever
//! the thread count (see `matmul` and `ops`). Every other backend is checked against this one.

pub mod attention;
pub mod layers;
pub mod loss;
pub mod matmul;
mod model;
pub mod ops;
pub mod probe;
pub(crate) mod stack;

use crate::backend::{Backend, BackendError};
use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::ModelConfig;
use crate::model::validate::{validate_batch, validate_options};
use crate::params::ParamStore;

/// The CPU backend: a rayon pool and nothing else (no state survives between calls).
pub struct CpuBackend {
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    /// A backend on `threads` threads (`None` or 0 = one per core, or `RAYON_NUM_THREADS`).
    pub fn new(threads: Option<usize>) -> Result<CpuBackend, BackendError> {
        let mut builder =
            rayon::ThreadPoolBuilder::new().thread_name(|i| format!("redpack-cpu-{i}"));
        if let Some(n) = threads {
            // rayon reads 0 as "one per core", the meaning 0 has in every redpack command.
            builder = builder.num_threads(n);
        }
        let pool = builder
            .build()
            .map_err(|e| BackendError::Device(format!("cannot start CPU threads: {e}")))?;
        Ok(CpuBackend { pool })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    fn run(
        &self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
        grads: Option<&mut ParamStore>,
    ) -> Result<model::ModelOutput, BackendError> {
        config
            .validate()
            .map_err(|e| BackendError::BadModel(e.to_string()))?;
        params
            .check_matches(config)
            .map_err(|e| BackendError::BadModel(format!("parameters: {e}")))?;
        if let Some(g) = grads.as_deref() {
            g.check_matches(config)
                .map_err(|e| BackendError::BadModel(format!("gradient buffers: {e}")))?;
        }
        validate_batch(config, batch)?;
        validate_options(config, options)?;
        Ok(self
            .pool
            .install(|| model::run_model(config, params, batch, options, grads)))
    }

    /// Forward only, returning each scored token's cross-entropy: per row, in target order
    /// (DecLLM: targets `[1, n)` or `[k, n)` as `loss_on_prefix` says; RedLLM: `[k, n)`). For
    /// per-position evaluation (length extrapolation) and for the mask tests.
    pub fn token_losses(
        &self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<Vec<Vec<f64>>, BackendError> {
        let options = StepOptions {
            dropout: 0.0,
            ..*options
        };
        Ok(self
            .run(config, params, batch, &options, None)?
            .token_losses)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }

    fn forward_backward(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
        grads: &mut ParamStore,
    ) -> Result<LossStats, BackendError> {
        Ok(self.run(config, params, batch, options, Some(grads))?.stats)
    }

    fn forward_loss(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        let options = StepOptions {
            dropout: 0.0,
            ..*options
        };
        Ok(self.run(config, params, batch, &options, None)?.stats)
    }
}
