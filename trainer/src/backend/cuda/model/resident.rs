//! `ResidentTraining` for `CudaBackend`: parameters, gradients and Adafactor state stay on the GPU
//! for the whole run. A step is the host loop's step on the device: the summed-loss gradients of
//! every micro-batch, scaled by 1 / scored tokens, the global norm (per-tensor f64 sums, added on
//! the host in tensor order, as `optim::global_norm`), optional clipping, and the Adafactor update
//! of every tensor (`kernels::MultiTensorAdafactor`, T5X's rule, all tensors in each launch) with
//! the update norm summed likewise. Only the norms come back each step; the parameters and state
//! cross to the host for checkpoints alone. In a data-parallel job (`collective.rs`) a rank keeps
//! and updates only the tensors it owns: the per-tensor sums of squares are placed at their
//! tensors' indices and summed over the ranks before the host adds them in tensor order (so the
//! norms are those of one process), and the owners broadcast the updated parameters.

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::backend::CudaBackend;
use super::device::Buf;
use super::optimizer::{DeviceOptimizer, Moment};
use super::staging::StagedInputs;
use crate::backend::cuda::kernels::{
    AdafactorStep, AdafactorTensor, DeviceMoment, MomentShape, MultiTensorAdafactor,
};
use crate::backend::{BackendError, MicroBatch, ResidentTraining, Stager};
use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::ModelConfig;
use crate::optim::adafactor::{beta2, state_name, Adafactor, UpdateStats};
use crate::params::{ParamStore, Tensor};

fn missing(name: &str) -> BackendError {
    BackendError::BadModel(format!("optimizer state {name} is missing"))
}

impl CudaBackend {
    fn optimizer_mut(&mut self) -> Result<&mut DeviceOptimizer, BackendError> {
        self.optimizer.as_mut().ok_or_else(|| {
            BackendError::BadModel("resident training was not loaded (load_training)".into())
        })
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
        let (rank, world_size) = self.place();
        let sizes: Vec<usize> = params.tensors.iter().map(|t| t.len()).collect();
        let owners = super::collective::owners(&sizes, world_size);
        let mut moments = Vec::with_capacity(params.len());
        let mut momentum = Vec::with_capacity(params.len());
        for ((name, t), &owner) in params.iter().zip(&owners) {
            if owner != rank {
                moments.push(None);
                momentum.push(None);
                continue;
            }
            moments.push(Some(if oconfig.factors(&t.shape) {
                Moment::Factored {
                    v_row: take(name, "v_row")?,
                    v_col: take(name, "v_col")?,
                }
            } else {
                Moment::Full(take(name, "v")?)
            }));
            momentum.push(match oconfig.beta1 {
                Some(_) => Some(take(name, "m")?),
                None => None,
            });
        }
        let shapes: Vec<MomentShape> = moments
            .iter()
            .zip(&params.tensors)
            .filter_map(|(m, t)| match m.as_ref()? {
                Moment::Full(_) => Some(MomentShape::Full { n: t.len() }),
                Moment::Factored { .. } => Some(MomentShape::Factored {
                    rows: t.shape[0],
                    cols: t.shape[1],
                }),
            })
            .collect();
        let update = MultiTensorAdafactor::new(&self.stream, &shapes)?;
        self.optimizer = Some(DeviceOptimizer {
            config: oconfig,
            step: optimizer.step(),
            names: params.names.clone(),
            shapes: params.tensors.iter().map(|t| t.shape.clone()).collect(),
            moments,
            momentum,
            owners,
            update,
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

    fn join_group(
        &mut self,
        id: &[u8; crate::dist::nccl::ID_BYTES],
        rank: usize,
        world_size: usize,
    ) -> Result<Arc<crate::dist::Communicator>, BackendError> {
        self.join_nccl(id, rank, world_size)
    }

    fn all_reduce_sums(&mut self, values: &mut [f64]) -> Result<(), BackendError> {
        self.reduce_sums(values)
    }

    fn all_reduce_gradients(&mut self) -> Result<(), BackendError> {
        self.reduce_grads()
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
        // Every tensor's state from its owner (every rank of a job takes part, in tensor order).
        let mut state = std::collections::HashMap::new();
        for (i, (name, shape)) in opt.names.iter().zip(&opt.shapes).enumerate() {
            let owner = opt.owners[i];
            let moment = opt.moments[i].as_ref();
            if oconfig_factors(&opt.config, shape) {
                let (v_row, v_col) = match moment {
                    Some(Moment::Factored { v_row, v_col }) => (Some(v_row), Some(v_col)),
                    _ => (None, None),
                };
                let rows = self.gather_f32(v_row, shape[0], owner)?;
                let cols = self.gather_f32(v_col, shape[1], owner)?;
                state.insert(state_name(name, "v_row"), (vec![shape[0]], rows));
                state.insert(state_name(name, "v_col"), (vec![shape[1]], cols));
            } else {
                let v = match moment {
                    Some(Moment::Full(v)) => Some(v),
                    _ => None,
                };
                let n = shape.iter().product();
                state.insert(
                    state_name(name, "v"),
                    (shape.clone(), self.gather_f32(v, n, owner)?),
                );
            }
            if opt.config.beta1.is_some() {
                let n = shape.iter().product();
                let m = self.gather_f32(opt.momentum[i].as_ref(), n, owner)?;
                state.insert(state_name(name, "m"), (shape.clone(), m));
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
        // The tensors this rank owns (all of them outside a job), by index.
        let mine: Vec<usize> = (0..opt.moments.len())
            .filter(|&i| opt.moments[i].is_some())
            .collect();
        let count = self.params.len();
        let mut tensors = owned_tensors(
            &mut self.params,
            &mut self.grads,
            &mut opt.moments,
            &mut opt.momentum,
        );
        let kernels = &self.kernels;
        opt.update.gradient_squares(kernels, &mut tensors, scale)?;
        let mut squares = spread(&self.stream, &opt.update.grad_sq, &mine, count)?;
        drop(tensors);
        self.reduce_sums(&mut squares)?;
        let norm = squares.iter().sum::<f64>().sqrt();
        if !norm.is_finite() {
            return Ok((norm, None));
        }
        let factor = match clip {
            Some(max) if norm > max && norm > 0.0 => (max / norm) as f32,
            _ => 1.0,
        };
        let b2 = beta2(opt.config.decay_rate, opt.step);
        let step = AdafactorStep {
            config: &opt.config,
            beta2: b2,
            lr,
        };
        let mut tensors = owned_tensors(
            &mut self.params,
            &mut self.grads,
            &mut opt.moments,
            &mut opt.momentum,
        );
        opt.update
            .update(&self.kernels, step, &mut tensors, factor)?;
        drop(tensors);
        let mut squares = spread(&self.stream, &opt.update.update_sq, &mine, count)?;
        self.reduce_sums(&mut squares)?;
        let update_norm = squares.iter().sum::<f64>().sqrt();
        if self.place().1 > 1 {
            self.broadcast_params(&opt.owners)?;
        }
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

/// The per-tensor sums of squares in `sums` (one for each tensor of `mine`, in order), read back
/// and placed at their tensors' indices among `count` (zeros elsewhere): summed over the ranks,
/// each tensor's value comes from its owner alone, so the sum in tensor order is the same on any
/// number of ranks.
fn spread(
    stream: &Arc<cudarc::driver::CudaStream>,
    sums: &CudaSlice<f64>,
    mine: &[usize],
    count: usize,
) -> Result<Vec<f64>, BackendError> {
    let host = stream.clone_dtoh(sums)?;
    let mut out = vec![0.0; count];
    for (k, &i) in mine.iter().enumerate() {
        out[i] = host[k];
    }
    Ok(out)
}

fn oconfig_factors(config: &crate::optim::adafactor::AdafactorConfig, shape: &[usize]) -> bool {
    config.factors(shape)
}

/// The Adafactor view of the tensors whose state this rank holds (every tensor outside a job).
fn owned_tensors<'a>(
    params: &'a mut [Buf],
    grads: &'a mut [Buf],
    moments: &'a mut [Option<Moment>],
    momentum: &'a mut [Option<Buf>],
) -> Vec<AdafactorTensor<'a>> {
    params
        .iter_mut()
        .zip(grads)
        .zip(moments.iter_mut().zip(momentum))
        .filter_map(|((param, grad), (moment, momentum))| {
            Some(AdafactorTensor {
                param,
                grad,
                moment: match moment.as_mut()? {
                    Moment::Full(v) => DeviceMoment::Full(v),
                    Moment::Factored { v_row, v_col } => DeviceMoment::Factored { v_row, v_col },
                },
                momentum: momentum.as_mut(),
            })
        })
        .collect()
}
