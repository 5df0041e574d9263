//! `ResidentTraining` for `CudaBackend`: parameters, gradients and Adafactor state stay on the
//! GPU for the whole run. A step is the host loop's step on the device: the summed-loss
//! gradients of every micro-batch, scaled by 1 / scored tokens (`scale_inplace`), the global
//! norm (per-tensor f64 sums in tensor order, summed on the host, as `optim::global_norm`),
//! optional clipping, and the Adafactor update of every tensor (`launch_adafactor`, T5X's rule)
//! with the update norm summed likewise. Only the norms come back each step; the parameters and
//! state cross to the host for checkpoints alone.

use cudarc::driver::CudaSlice;

use super::backend::CudaBackend;
use super::device::Buf;
use super::launch_adafactor::{AdafactorScratch, AdafactorStep, DeviceMoment};
use std::sync::Arc;

use super::staging::StagedInputs;
use crate::backend::{BackendError, MicroBatch, ResidentTraining, Stager};
use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::ModelConfig;
use crate::optim::adafactor::{beta2, state_name, Adafactor, AdafactorConfig, UpdateStats};
use crate::params::{ParamStore, Tensor};

/// The second moment of one parameter on the device.
enum Moment {
    Full(Buf),
    Factored { v_row: Buf, v_col: Buf },
}

/// Adafactor's state on the device, in the parameters' order.
pub(super) struct DeviceOptimizer {
    config: AdafactorConfig,
    /// Updates applied so far.
    step: u64,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    moments: Vec<Moment>,
    momentum: Vec<Option<Buf>>,
    scratch: AdafactorScratch,
    /// One f64 per tensor: squared gradient, then squared update sums.
    sums: CudaSlice<f64>,
    partial: CudaSlice<f64>,
}

fn missing(name: &str) -> BackendError {
    BackendError::BadModel(format!("optimizer state {name} is missing"))
}

impl CudaBackend {
    fn optimizer_mut(&mut self) -> Result<&mut DeviceOptimizer, BackendError> {
        self.optimizer.as_mut().ok_or_else(|| {
            BackendError::BadModel("resident training was not loaded (load_training)".into())
        })
    }

    /// The f64 sums of squares per tensor in `sums`, read back and added in tensor order.
    fn read_sum(&self, sums: &CudaSlice<f64>, n: usize) -> Result<f64, BackendError> {
        let host = self.stream.clone_dtoh(sums)?;
        Ok(host[..n].iter().sum())
    }
}

impl ResidentTraining for CudaBackend {
    fn load_training(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        optimizer: &Adafactor,
    ) -> Result<(), BackendError> {
        params
            .check_matches(config)
            .map_err(|e| BackendError::BadModel(format!("parameters: {e}")))?;
        self.upload_params(params)?;
        // Freed buffers stay in the allocator's pool between steps (as PyTorch's caching
        // allocator keeps them) instead of going back to the driver at every synchronization.
        self.keep_pool_and_reset_peak()?;
        let state: std::collections::HashMap<String, Tensor> =
            optimizer.state_tensors().into_iter().collect();
        let oconfig = optimizer.config().clone();
        let dev = self.dev();
        let take = |name: &str, suffix: &str| -> Result<Buf, BackendError> {
            let key = state_name(name, suffix);
            let t = state.get(&key).ok_or_else(|| missing(&key))?;
            dev.upload(&t.data)
        };
        let mut moments = Vec::with_capacity(params.len());
        let mut momentum = Vec::with_capacity(params.len());
        for (name, t) in params.iter() {
            moments.push(if oconfig.factors(&t.shape) {
                Moment::Factored {
                    v_row: take(name, "v_row")?,
                    v_col: take(name, "v_col")?,
                }
            } else {
                Moment::Full(take(name, "v")?)
            });
            momentum.push(match oconfig.beta1 {
                Some(_) => Some(take(name, "m")?),
                None => None,
            });
        }
        let largest = params.tensors.iter().map(Tensor::len).max().unwrap_or(1);
        let scratch = AdafactorScratch::new(&self.stream, largest.max(1))?;
        let sums = dev.zeros_of::<f64>(params.len().max(1))?;
        let partial = dev.zeros_of::<f64>(super::launch::REDUCE_BLOCKS as usize)?;
        self.optimizer = Some(DeviceOptimizer {
            config: oconfig,
            step: optimizer.step(),
            names: params.names.clone(),
            shapes: params.tensors.iter().map(|t| t.shape.clone()).collect(),
            moments,
            momentum,
            scratch,
            sums,
            partial,
        });
        Ok(())
    }

    fn load_params(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
    ) -> Result<(), BackendError> {
        params
            .check_matches(config)
            .map_err(|e| BackendError::BadModel(format!("parameters: {e}")))?;
        self.upload_params(params)
    }

    fn forward_loss_loaded(
        &mut self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        self.forward_loss_resident(config, batch, options)
    }

    fn stager(&self, config: &ModelConfig, options: &StepOptions) -> Option<Arc<dyn Stager>> {
        Some(Arc::new(self.make_stager(config, options)))
    }

    fn accumulate(
        &mut self,
        config: &ModelConfig,
        micro_batches: &[MicroBatch<'_>],
    ) -> Result<Vec<LossStats>, BackendError> {
        self.optimizer_mut()?;
        self.zero_grads()?;
        micro_batches
            .iter()
            .map(|mb| {
                let staged = mb.staged.and_then(|s| s.downcast_ref::<StagedInputs>());
                self.forward_backward_staged(config, mb.batch, &mb.options, staged)
            })
            .collect()
    }

    fn apply_update(
        &mut self,
        scale: f32,
        clip: Option<f64>,
        lr: f32,
    ) -> Result<(f64, Option<UpdateStats>), BackendError> {
        let mut opt = self.optimizer.take().ok_or_else(|| {
            BackendError::BadModel("resident training was not loaded (load_training)".into())
        })?;
        let result = self.update_with(&mut opt, scale, clip, lr);
        self.optimizer = Some(opt);
        let out = result?;
        self.check_async_errors()?;
        Ok(out)
    }

    fn store_training(
        &mut self,
        params: &mut ParamStore,
        optimizer: &mut Adafactor,
    ) -> Result<(), BackendError> {
        let opt = self.optimizer.as_ref().ok_or_else(|| {
            BackendError::BadModel("resident training was not loaded (load_training)".into())
        })?;
        if params.len() != self.params.len() {
            return Err(BackendError::BadModel(format!(
                "{} parameters on the host, {} on the device",
                params.len(),
                self.params.len()
            )));
        }
        let dev = self.dev();
        for (t, p) in params.tensors.iter_mut().zip(&self.params) {
            t.data = dev.download(p)?;
        }
        let mut state = std::collections::HashMap::new();
        for (i, (name, shape)) in opt.names.iter().zip(&opt.shapes).enumerate() {
            match &opt.moments[i] {
                Moment::Full(v) => {
                    state.insert(state_name(name, "v"), (shape.clone(), dev.download(v)?));
                }
                Moment::Factored { v_row, v_col } => {
                    state.insert(
                        state_name(name, "v_row"),
                        (vec![shape[0]], dev.download(v_row)?),
                    );
                    state.insert(
                        state_name(name, "v_col"),
                        (vec![shape[1]], dev.download(v_col)?),
                    );
                }
            }
            if let Some(m) = &opt.momentum[i] {
                state.insert(state_name(name, "m"), (shape.clone(), dev.download(m)?));
            }
        }
        *optimizer = Adafactor::from_state(opt.config.clone(), params, opt.step, |key| {
            state
                .remove(key)
                .map(|(shape, data)| Tensor { shape, data })
        })
        .map_err(|e| BackendError::BadModel(format!("optimizer state from the device: {e}")))?;
        Ok(())
    }
}

impl CudaBackend {
    fn update_with(
        &mut self,
        opt: &mut DeviceOptimizer,
        scale: f32,
        clip: Option<f64>,
        lr: f32,
    ) -> Result<(f64, Option<UpdateStats>), BackendError> {
        let n = self.grads.len();
        for g in &mut self.grads {
            self.kernels.scale_inplace(g, scale)?;
        }
        for (i, g) in self.grads.iter().enumerate() {
            self.kernels
                .sum_f64(g, g.len(), true, &mut opt.partial, (&mut opt.sums, i))?;
        }
        let norm = self.read_sum(&opt.sums, n)?.sqrt();
        if !norm.is_finite() {
            return Ok((norm, None));
        }
        if let Some(max) = clip {
            if norm > max && norm > 0.0 {
                let factor = (max / norm) as f32;
                for g in &mut self.grads {
                    self.kernels.scale_inplace(g, factor)?;
                }
            }
        }
        let b2 = beta2(opt.config.decay_rate, opt.step);
        let step = AdafactorStep {
            config: &opt.config,
            beta2: b2,
            lr,
        };
        for (i, (p, g)) in self.params.iter_mut().zip(&self.grads).enumerate() {
            let moment = match &mut opt.moments[i] {
                Moment::Full(v) => DeviceMoment::Full(v),
                Moment::Factored { v_row, v_col } => DeviceMoment::Factored { v_row, v_col },
            };
            self.kernels.adafactor_update(
                step,
                p,
                g,
                moment,
                opt.momentum[i].as_mut(),
                &mut opt.scratch,
                Some((&mut opt.sums, i)),
            )?;
        }
        let update_norm = self.read_sum(&opt.sums, n)?.sqrt();
        opt.step += 1;
        Ok((
            norm,
            Some(UpdateStats {
                update_norm,
                beta2: b2,
            }),
        ))
    }
}
