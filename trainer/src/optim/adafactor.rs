//! Adafactor (Shazeer & Stern, 2018) following T5X's `adafactor.py` step by step, so that a run
//! here behaves like the paper's T5X runs.
//!
//! For a parameter `p` with gradient `g`, at update number `t` (0 for the first update):
//!
//! ```text
//! beta2  = 1 - (t + 1)^-decay_rate            (T5X's convention: the first update has beta2 = 0)
//! g2     = g * g + epsilon1
//! v      = beta2 * v + (1 - beta2) * g2        (unfactored)
//! y      = g / sqrt(v)
//! factored [r, c]: v_row = beta2 * v_row + (1 - beta2) * mean_j g2[i, j]     (shape [r])
//!                  v_col = beta2 * v_col + (1 - beta2) * mean_i g2[i, j]     (shape [c])
//!                  y[i, j] = g[i, j] / sqrt(v_row[i] / mean(v_row) * v_col[j])
//! y      = y / max(1, RMS(y) / clipping_threshold)                    (update clipping)
//! scale  = lr * max(epsilon2, RMS(p))          (parameter scaling; lr alone when switched off)
//! u      = scale * y;  with momentum: m = beta1 * m + (1 - beta1) * u;  u = m
//! p      = p - u
//! ```
//!
//! T5X reduces the factored second moment over the largest dimension and normalizes by the mean
//! of that reduction; for a 2-D tensor both reductions have the same mean (they are averages of
//! the same `g2`, decayed alike), so normalizing by `mean(v_row)` is the same update. Only 2-D
//! tensors whose smaller side is at least `min_dim_size_to_factor` are factored; vectors (norm
//! gains) always keep a full second moment, as in T5X. Means and RMS values are accumulated in
//! f64 and applied in f32; the state is f32.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::OptimError;
use crate::params::{ParamStore, Tensor};

/// Adafactor hyper-parameters. The defaults are the paper's: unfactored, decay rate 0.8, update
/// clipping 1.0, no momentum, epsilon1 1e-30, epsilon2 1e-3, parameter scaling on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdafactorConfig {
    /// Keep row and column statistics instead of a full second moment for large matrices.
    pub factored: bool,
    /// A matrix is factored only when both sides are at least this long (T5X: 128).
    pub min_dim_size_to_factor: usize,
    /// Exponent of the second-moment decay: `beta2_t = 1 - (t + 1)^-decay_rate`.
    pub decay_rate: f32,
    /// First-moment (momentum) coefficient; `None` keeps no momentum.
    pub beta1: Option<f32>,
    /// Update clipping: the update is divided by `max(1, RMS(update) / threshold)`.
    pub clipping_threshold: Option<f32>,
    /// Added to squared gradients.
    pub epsilon1: f32,
    /// Floor of the parameter RMS used for step scaling.
    pub epsilon2: f32,
    /// Scale the step by `max(epsilon2, RMS(param))`.
    pub multiply_by_parameter_scale: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig {
            factored: false,
            min_dim_size_to_factor: 128,
            decay_rate: 0.8,
            beta1: None,
            clipping_threshold: Some(1.0),
            epsilon1: 1e-30,
            epsilon2: 1e-3,
            multiply_by_parameter_scale: true,
        }
    }
}

impl AdafactorConfig {
    /// Rejects settings that would make every update NaN or meaningless.
    pub fn validate(&self) -> Result<(), OptimError> {
        if !(self.decay_rate > 0.0 && self.decay_rate.is_finite()) {
            return Err(OptimError::Config(format!(
                "decay_rate must be > 0, got {}",
                self.decay_rate
            )));
        }
        if let Some(beta1) = self.beta1 {
            if !(0.0..1.0).contains(&beta1) {
                return Err(OptimError::Config(format!(
                    "beta1 must be in [0, 1), got {beta1}"
                )));
            }
        }
        if let Some(threshold) = self.clipping_threshold {
            if threshold.is_nan() || threshold <= 0.0 {
                return Err(OptimError::Config(format!(
                    "clipping_threshold must be > 0, got {threshold}"
                )));
            }
        }
        if self.epsilon1.is_nan()
            || self.epsilon1 <= 0.0
            || self.epsilon2.is_nan()
            || self.epsilon2 < 0.0
        {
            return Err(OptimError::Config(format!(
                "epsilon1 must be > 0 and epsilon2 >= 0, got {} and {}",
                self.epsilon1, self.epsilon2
            )));
        }
        Ok(())
    }

    /// Whether a tensor of this shape gets factored statistics.
    pub fn factors(&self, shape: &[usize]) -> bool {
        self.factored && shape.len() == 2 && shape[0].min(shape[1]) >= self.min_dim_size_to_factor
    }
}

/// Second-moment statistics of one parameter.
#[derive(Debug, Clone, PartialEq)]
enum SecondMoment {
    Full { v: Vec<f32> },
    Factored { v_row: Vec<f32>, v_col: Vec<f32> },
}

/// Optimizer state of one parameter.
#[derive(Debug, Clone, PartialEq)]
struct ParamState {
    second: SecondMoment,
    momentum: Option<Vec<f32>>,
}

/// What one update did, for logging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    /// L2 norm over all parameters of the update `u` subtracted from them.
    pub update_norm: f64,
    /// The `beta2` this update used.
    pub beta2: f32,
}

/// Adafactor over a fixed set of named parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Adafactor {
    config: AdafactorConfig,
    /// Number of updates applied so far (T5X's `step`).
    step: u64,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    states: Vec<ParamState>,
}

impl Adafactor {
    /// Fresh (zero) state for `params`.
    pub fn new(config: AdafactorConfig, params: &ParamStore) -> Result<Self, OptimError> {
        config.validate()?;
        let states = params
            .tensors
            .iter()
            .map(|t| fresh_state(&config, &t.shape))
            .collect();
        Ok(Adafactor {
            step: 0,
            names: params.names.clone(),
            shapes: params.tensors.iter().map(|t| t.shape.clone()).collect(),
            states,
            config,
        })
    }

    pub fn config(&self) -> &AdafactorConfig {
        &self.config
    }

    /// Number of updates applied so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// `beta2` of the next update.
    pub fn next_beta2(&self) -> f32 {
        beta2(self.config.decay_rate, self.step)
    }

    /// Applies one update with learning rate `lr`; `grads` must have the shapes of `params`.
    pub fn update(
        &mut self,
        params: &mut ParamStore,
        grads: &ParamStore,
        lr: f32,
    ) -> Result<UpdateStats, OptimError> {
        self.check_shapes(params, grads)?;
        let beta2 = self.next_beta2();
        let config = &self.config;
        let squares: Vec<f64> = params
            .tensors
            .par_iter_mut()
            .zip(grads.tensors.par_iter())
            .zip(self.states.par_iter_mut())
            .map(|((param, grad), state)| update_one(config, beta2, lr, param, grad, state))
            .collect();
        self.step += 1;
        Ok(UpdateStats {
            update_norm: squares.iter().sum::<f64>().sqrt(),
            beta2,
        })
    }

    fn check_shapes(&self, params: &ParamStore, grads: &ParamStore) -> Result<(), OptimError> {
        for store in [params, grads] {
            if store.tensors.len() != self.shapes.len() {
                return Err(OptimError::GradCount {
                    got: store.tensors.len(),
                    want: self.shapes.len(),
                });
            }
            for ((name, tensor), shape) in self.names.iter().zip(&store.tensors).zip(&self.shapes) {
                if &tensor.shape != shape {
                    return Err(OptimError::GradShape {
                        name: name.clone(),
                        got: tensor.shape.clone(),
                        want: shape.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors for a checkpoint: `optimizer.<param>.v` (or `.v_row` and
    /// `.v_col` when factored) and `optimizer.<param>.m` with momentum.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((name, state), shape) in self.names.iter().zip(&self.states).zip(&self.shapes) {
            match &state.second {
                SecondMoment::Full { v } => {
                    out.push((state_name(name, "v"), tensor(shape.clone(), v)));
                }
                SecondMoment::Factored { v_row, v_col } => {
                    out.push((state_name(name, "v_row"), tensor(vec![shape[0]], v_row)));
                    out.push((state_name(name, "v_col"), tensor(vec![shape[1]], v_col)));
                }
            }
            if let Some(m) = &state.momentum {
                out.push((state_name(name, "m"), tensor(shape.clone(), m)));
            }
        }
        out
    }

    /// Rebuilds the optimizer from checkpointed state: `lookup` returns the tensor stored under a
    /// name (as written by [`Adafactor::state_tensors`]), `step` the number of updates applied.
    pub fn from_state(
        config: AdafactorConfig,
        params: &ParamStore,
        step: u64,
        mut lookup: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<Self, OptimError> {
        let mut optimizer = Adafactor::new(config, params)?;
        optimizer.step = step;
        for (i, name) in optimizer.names.iter().enumerate() {
            let shape = &optimizer.shapes[i];
            let mut take = |suffix: &str, want: &[usize]| -> Result<Vec<f32>, OptimError> {
                let key = state_name(name, suffix);
                let t = lookup(&key).ok_or_else(|| OptimError::State {
                    name: key.clone(),
                    problem: "missing from the checkpoint".to_string(),
                })?;
                if t.shape != want {
                    return Err(OptimError::State {
                        name: key,
                        problem: format!("shape {:?}, expected {:?}", t.shape, want),
                    });
                }
                Ok(t.data)
            };
            let second = match &optimizer.states[i].second {
                SecondMoment::Full { .. } => SecondMoment::Full {
                    v: take("v", shape)?,
                },
                SecondMoment::Factored { .. } => SecondMoment::Factored {
                    v_row: take("v_row", &[shape[0]])?,
                    v_col: take("v_col", &[shape[1]])?,
                },
            };
            let momentum = match optimizer.states[i].momentum {
                Some(_) => Some(take("m", shape)?),
                None => None,
            };
            optimizer.states[i] = ParamState { second, momentum };
        }
        Ok(optimizer)
    }
}

/// Checkpoint name of one piece of optimizer state.
pub fn state_name(param: &str, suffix: &str) -> String {
    format!("optimizer.{param}.{suffix}")
}

/// T5X's decay schedule: `1 - (t + 1)^-exponent` for update number `t` (0-based).
pub fn beta2(exponent: f32, t: u64) -> f32 {
    (1.0 - ((t as f64) + 1.0).powf(-(exponent as f64))) as f32
}

fn tensor(shape: Vec<usize>, data: &[f32]) -> Tensor {
    Tensor {
        shape,
        data: data.to_vec(),
    }
}

fn fresh_state(config: &AdafactorConfig, shape: &[usize]) -> ParamState {
    let numel: usize = shape.iter().product();
    let second = if config.factors(shape) {
        SecondMoment::Factored {
            v_row: vec![0.0; shape[0]],
            v_col: vec![0.0; shape[1]],
        }
    } else {
        SecondMoment::Full {
            v: vec![0.0; numel],
        }
    };
    ParamState {
        second,
        momentum: config.beta1.map(|_| vec![0.0; numel]),
    }
}

/// `a.max(b)`, but NaN when `a` is NaN (`f64::max` would return `b`, hiding a NaN gradient or
/// parameter behind a plausible scale).
fn max_or_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() {
        a
    } else {
        a.max(b)
    }
}

/// RMS of a slice, accumulated in f64.
fn rms(values: &[f32]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let sum: f64 = values.iter().map(|&x| (x as f64) * (x as f64)).sum();
    (sum / values.len() as f64).sqrt()
}

/// Updates one parameter in place; returns the squared norm of the applied change.
fn update_one(
    config: &AdafactorConfig,
    beta2: f32,
    lr: f32,
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut ParamState,
) -> f64 {
    let mix = 1.0 - beta2;
    let eps1 = config.epsilon1;
    let g = &grad.data;
    let mut y: Vec<f32> = match &mut state.second {
        SecondMoment::Full { v } => v
            .iter_mut()
            .zip(g)
            .map(|(v, &g)| {
                *v = beta2 * *v + mix * (g * g + eps1);
                g / v.sqrt()
            })
            .collect(),
        SecondMoment::Factored { v_row, v_col } => {
            let (rows, cols) = (v_row.len(), v_col.len());
            let mut col_sum = vec![0f64; cols];
            for (i, vr) in v_row.iter_mut().enumerate() {
                let row = &g[i * cols..(i + 1) * cols];
                let mut row_sum = 0f64;
                for (j, &x) in row.iter().enumerate() {
                    let sq = (x * x + eps1) as f64;
                    row_sum += sq;
                    col_sum[j] += sq;
                }
                *vr = beta2 * *vr + mix * (row_sum / cols as f64) as f32;
            }
            for (vc, sum) in v_col.iter_mut().zip(&col_sum) {
                *vc = beta2 * *vc + mix * (sum / rows as f64) as f32;
            }
            let row_mean = (v_row.iter().map(|&x| x as f64).sum::<f64>() / rows as f64) as f32;
            let mut y = Vec::with_capacity(g.len());
            for (i, &vr) in v_row.iter().enumerate() {
                let row_factor = (vr / row_mean).sqrt().recip();
                for (j, &vc) in v_col.iter().enumerate() {
                    y.push(g[i * cols + j] * row_factor * vc.sqrt().recip());
                }
            }
            y
        }
    };
    if let Some(threshold) = config.clipping_threshold {
        let denom = max_or_nan(rms(&y) / threshold as f64, 1.0) as f32;
        if denom > 1.0 {
            y.iter_mut().for_each(|x| *x /= denom);
        }
    }
    let scale = if config.multiply_by_parameter_scale {
        let rms = rms(&param.data) as f32;
        lr * if rms.is_nan() {
            rms
        } else {
            rms.max(config.epsilon2)
        }
    } else {
        lr
    };
    let mut squares = 0f64;
    match (&mut state.momentum, config.beta1) {
        (Some(m), Some(beta1)) => {
            for ((p, m), &y) in param.data.iter_mut().zip(m.iter_mut()).zip(&y) {
                *m = beta1 * *m + (1.0 - beta1) * (scale * y);
                *p -= *m;
                squares += (*m as f64).powi(2);
            }
        }
        _ => {
            for (p, &y) in param.data.iter_mut().zip(&y) {
                let u = scale * y;
                *p -= u;
                squares += (u as f64).powi(2);
            }
        }
    }
    squares
}
