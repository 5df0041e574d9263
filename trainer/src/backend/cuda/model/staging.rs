//! The CUDA backend's `Stager`: on the data loader's thread, each batch is validated, its model
//! inputs are built (`inputs::BatchInputs`) and written into a pinned (page-locked,
//! write-combined) host buffer. The step then starts one asynchronous copy from that buffer
//! (`device::DevInputs::upload`) instead of building the inputs and making a dozen pageable
//! copies on the training thread, where each pageable copy may wait for the stream.
//!
//! Pinned buffers come from a pool and go back to it when the staged batch is dropped, so a run
//! allocates a handful (the loader's prefetch depth plus the micro-batches of a step) and then
//! reuses them. A buffer must not be written while the copy out of it is in flight: the step
//! that uses a staged batch returns only once the device is past that copy (it reads the losses
//! back, or on an error synchronizes the stream: `CudaBackend::forward_backward_staged`), and
//! the batch is dropped after that. (cudarc's own per-buffer event is not recorded, as the
//! backend turns cudarc's event tracking off.) When pinned memory cannot be had, the staged
//! batch keeps its words in an ordinary vector and the step copies from there.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, PinnedHostSlice};

use super::device::Words;
use super::inputs::{BatchInputs, InputOptions};
use crate::backend::{BackendError, Staged, Stager};
use crate::batch::{Batch, StepOptions};
use crate::config::ModelConfig;
use crate::model::validate::validate_batch;

/// Free pinned buffers of one context.
struct Pool {
    context: Arc<CudaContext>,
    free: Mutex<Vec<PinnedHostSlice<u32>>>,
}

impl Pool {
    /// A pinned buffer holding `words` (followed by zeros up to its length), or `None` when
    /// pinned memory cannot be allocated.
    fn fill(&self, words: &[u32]) -> Option<PinnedHostSlice<u32>> {
        self.context.bind_to_thread().ok()?;
        let reused = {
            let mut free = self.free.lock().ok()?;
            // The smallest free buffer that fits.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= words.len())
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let mut buffer = match reused {
            Some(b) => b,
            None => {
                // Room to grow: later batches of a run are about the same size.
                let len = (words.len() + words.len() / 8).max(1024);
                // SAFETY: zeroed through the raw pointer before any slice of it is formed.
                let mut b = unsafe { self.context.alloc_pinned::<u32>(len) }.ok()?;
                let ptr = b.as_mut_ptr().ok()?;
                // SAFETY: `ptr` points to `len` u32 values the allocation owns.
                unsafe { std::ptr::write_bytes(ptr, 0, len) };
                b
            }
        };
        // No copy out of a pooled buffer is in flight (see the module docs).
        let slice = buffer.as_mut_slice().ok()?;
        slice[..words.len()].copy_from_slice(words);
        Some(buffer)
    }

    fn give_back(&self, buffer: PinnedHostSlice<u32>) {
        if let Ok(mut free) = self.free.lock() {
            free.push(buffer);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Freeing pinned memory needs the context current on this thread.
        let _ = self.context.bind_to_thread();
        if let Ok(free) = self.free.get_mut() {
            free.clear();
        }
    }
}

/// A batch as the stager left it: its inputs (or the reason they could not be built, which the
/// step reports by building them again) and the pinned buffer holding their words.
pub(super) struct StagedInputs {
    inputs: Result<BatchInputs, BackendError>,
    pinned: Option<PinnedHostSlice<u32>>,
    pool: Arc<Pool>,
}

impl StagedInputs {
    /// The inputs and their words, if they were built for a step with `options`.
    pub(super) fn for_step(&self, options: &StepOptions) -> Option<(&BatchInputs, Words<'_>)> {
        let inputs = self.inputs.as_ref().ok()?;
        if inputs.options != InputOptions::from(options) {
            return None;
        }
        let words = match &self.pinned {
            Some(p) => Words::Pinned(p),
            None => Words::Host(&inputs.words),
        };
        Some((inputs, words))
    }
}

impl Drop for StagedInputs {
    fn drop(&mut self) {
        if let Some(buffer) = self.pinned.take() {
            self.pool.give_back(buffer);
        }
    }
}

/// Stages batches of one model and one set of options for a CUDA backend.
pub(super) struct CudaStager {
    config: ModelConfig,
    options: InputOptions,
    pool: Arc<Pool>,
}

impl CudaStager {
    pub(super) fn new(
        context: Arc<CudaContext>,
        config: &ModelConfig,
        options: &StepOptions,
    ) -> CudaStager {
        CudaStager {
            config: config.clone(),
            options: options.into(),
            pool: Arc::new(Pool {
                context,
                free: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl Stager for CudaStager {
    fn stage(&self, batch: &Batch) -> Staged {
        let inputs = validate_batch(&self.config, batch)
            .map_err(BackendError::from)
            .and_then(|()| BatchInputs::build(&self.config, batch, self.options));
        let pinned = match &inputs {
            Ok(i) if !i.words.is_empty() => self.pool.fill(&i.words),
            _ => None,
        };
        Box::new(StagedInputs {
            inputs,
            pinned,
            pool: self.pool.clone(),
        })
    }
}
