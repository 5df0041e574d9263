//! The f32 CPU reference backend.
//!
//! Written llm.c style: every layer is an explicit forward/backward pair (`ops`, `attention`,
//! `layers`, `loss`), composed per architecture in `model`. Matrix products go through
//! `matrixmultiply::sgemm` (`matmul`). Parallelism is rayon on a pool owned by the backend, and
//! every split is by fixed-size chunks of *outputs*, so results are bitwise identical whatever
//! the thread count (see `matmul` and `ops`). Every other backend is checked against this one.

pub mod attention;
pub mod layers;
pub mod loss;
pub mod matmul;
mod model;
pub mod ops;
pub(crate) mod stack;
pub mod stream;

use crate::backend::{Backend, BackendError};
use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::{Arch, ModelConfig};
use crate::params::ParamStore;

/// The CPU backend: a rayon pool and nothing else (no state survives between calls).
pub struct CpuBackend {
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    /// A backend on `threads` threads (`None` = one per core, or `RAYON_NUM_THREADS`).
    pub fn new(threads: Option<usize>) -> Result<CpuBackend, BackendError> {
        let mut builder =
            rayon::ThreadPoolBuilder::new().thread_name(|i| format!("redpack-cpu-{i}"));
        if let Some(n) = threads {
            builder = builder.num_threads(n.max(1));
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

/// Checks everything about a batch the model math relies on.
pub fn validate_batch(config: &ModelConfig, batch: &Batch) -> Result<(), BackendError> {
    let bad = |msg: String| Err(BackendError::BadBatch(msg));
    if batch.tokens.len() != batch.rows * batch.seq {
        return bad(format!(
            "{} token ids for {} rows of {}",
            batch.tokens.len(),
            batch.rows,
            batch.seq
        ));
    }
    if batch.prefix_len.len() != batch.rows || batch.length.len() != batch.rows {
        return bad(format!(
            "{} rows but {} prefix lengths and {} lengths",
            batch.rows,
            batch.prefix_len.len(),
            batch.length.len()
        ));
    }
    if !batch.doc_starts.is_empty() && batch.doc_starts.len() != batch.rows {
        return bad(format!(
            "{} rows but {} document-start lists",
            batch.rows,
            batch.doc_starts.len()
        ));
    }
    for r in 0..batch.rows {
        let (k, n) = (batch.prefix_len[r], batch.length[r]);
        if n > batch.seq {
            return bad(format!(
                "row {r}: length {n} exceeds the row size {}",
                batch.seq
            ));
        }
        if k > n {
            return bad(format!("row {r}: prefix_len {k} exceeds length {n}"));
        }
        if config.arch == Arch::Red && n > 0 && k == 0 {
            return bad(format!(
                "row {r}: RedLLM needs prefix_len >= 1 (the encoder input)"
            ));
        }
        if let Some((i, &t)) = batch
            .row(r)
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= config.vocab_size)
        {
            return bad(format!(
                "row {r}, token {i}: id {t} is outside the vocabulary of {}",
                config.vocab_size
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_options(
    config: &ModelConfig,
    options: &StepOptions,
) -> Result<(), BackendError> {
    let bad = |msg: String| Err(BackendError::BadBatch(msg));
    if !(0.0..1.0).contains(&options.dropout) {
        return bad(format!(
            "dropout must be in [0, 1), got {}",
            options.dropout
        ));
    }
    if !(options.z_loss.is_finite() && options.z_loss >= 0.0) {
        return bad(format!("z_loss must be >= 0, got {}", options.z_loss));
    }
    if config.arch == Arch::Dec && options.bidirectional_prefix && options.loss_on_prefix {
        return bad(
            "bidirectional_prefix with loss_on_prefix would score prefix tokens the model can already see"
                .into(),
        );
    }
    Ok(())
}
