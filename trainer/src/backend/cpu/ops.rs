//! Element-wise and per-token layers, each as a forward/backward pair (llm.c style): RMSNorm
//! with a gain, parameter-free RMSNorm over groups (the per-head Q/K/V/output norms), RoPE,
//! SwiGLU and dropout.
//!
//! Per-token work is split into fixed chunks of tokens and run with rayon; reductions over tokens
//! (norm gains) run sequentially in token order. Either way the result does not depend on the
//! thread count. Backward functions take the upstream gradient and *add* into the input gradient
//! only where the doc says so.

use rayon::prelude::*;

use crate::model::rope::Rope;
use crate::rng::{counter_hash, unit_f32};

/// Tokens per parallel task for per-token ops.
const CHUNK: usize = 64;

/// The normalized input `x̂ = x / rms(x)` of each group of `width` values, and `1 / rms(x)` per
/// group (`rms` includes `eps`).
pub fn group_rmsnorm_forward(x: &[f32], width: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let groups = x.len() / width;
    let mut xhat = vec![0.0; x.len()];
    let mut inv = vec![0.0; groups];
    xhat.par_chunks_mut(CHUNK * width)
        .zip(inv.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(chunk, (xhat, inv))| {
            let x = &x[chunk * CHUNK * width..];
            for (g, (out, r)) in xhat.chunks_mut(width).zip(inv.iter_mut()).enumerate() {
                let xs = &x[g * width..(g + 1) * width];
                let mean_sq = xs.iter().map(|v| v * v).sum::<f32>() / width as f32;
                *r = inv_rms(mean_sq, eps);
                for (o, v) in out.iter_mut().zip(xs) {
                    *o = v * *r;
                }
            }
        });
    (xhat, inv)
}

/// `1 / sqrt(mean_sq + eps)`, except that a mean square that overflowed f32 (finite values too
/// large to square) gives NaN: `1 / sqrt(inf) = 0` would turn an exploded activation into a
/// zero output that looks healthy and has a zero gradient.
#[inline]
pub fn inv_rms(mean_sq: f32, eps: f32) -> f32 {
    if mean_sq == f32::INFINITY {
        f32::NAN
    } else {
        1.0 / (mean_sq + eps).sqrt()
    }
}

/// Backward of `group_rmsnorm_forward`: turns the gradient w.r.t. `x̂` (in `grad`) into the
/// gradient w.r.t. `x`, in place: `dx = r · (dx̂ − x̂ · mean(dx̂ ⊙ x̂))`.
pub fn group_rmsnorm_backward(grad: &mut [f32], xhat: &[f32], inv: &[f32], width: usize) {
    grad.par_chunks_mut(CHUNK * width)
        .enumerate()
        .for_each(|(chunk, grad)| {
            let base = chunk * CHUNK * width;
            for (g, dy) in grad.chunks_mut(width).enumerate() {
                let start = base + g * width;
                let xh = &xhat[start..start + width];
                let r = inv[start / width];
                let dot = dy.iter().zip(xh).map(|(a, b)| a * b).sum::<f32>() / width as f32;
                for (d, x) in dy.iter_mut().zip(xh) {
                    *d = r * (*d - x * dot);
                }
            }
        });
}

/// RMSNorm with a learnable gain over rows of `gain.len()`: returns `(y, x̂, 1/rms)` with
/// `y = gain ⊙ x̂`.
pub fn rmsnorm_forward(x: &[f32], gain: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = gain.len();
    let (xhat, inv) = group_rmsnorm_forward(x, width, eps);
    let mut y = xhat.clone();
    y.par_chunks_mut(CHUNK * width).for_each(|y| {
        for row in y.chunks_mut(width) {
            for (v, g) in row.iter_mut().zip(gain) {
                *v *= g;
            }
        }
    });
    (y, xhat, inv)
}

/// Backward of `rmsnorm_forward`: adds to `dgain` (summed over tokens in order) and *adds* the
/// input gradient into `dx`.
pub fn rmsnorm_backward(
    dy: &[f32],
    xhat: &[f32],
    inv: &[f32],
    gain: &[f32],
    dgain: &mut [f32],
    dx: &mut [f32],
) {
    let width = gain.len();
    for (dy_row, xh_row) in dy.chunks(width).zip(xhat.chunks(width)) {
        for ((dg, d), x) in dgain.iter_mut().zip(dy_row).zip(xh_row) {
            *dg += d * x;
        }
    }
    let mut dxhat: Vec<f32> = dy.to_vec();
    dxhat.par_chunks_mut(CHUNK * width).for_each(|rows| {
        for row in rows.chunks_mut(width) {
            for (v, g) in row.iter_mut().zip(gain) {
                *v *= g;
            }
        }
    });
    group_rmsnorm_backward(&mut dxhat, xhat, inv, width);
    dx.par_chunks_mut(CHUNK * width)
        .zip(dxhat.par_chunks(CHUNK * width))
        .for_each(|(dx, g)| {
            for (a, b) in dx.iter_mut().zip(g) {
                *a += b;
            }
        });
}

/// RoPE on the CPU: rotation by the shared tables of `crate::model::rope::Rope`.
impl Rope {
    /// Rotates every head of every token in place; `x` is `tokens x (heads · head_dim)` and
    /// `positions[t]` is token t's position. `inverse` rotates backwards, which is the backward
    /// pass (the rotation is orthogonal).
    pub fn apply(&self, x: &mut [f32], positions: &[u32], head_dim: usize, inverse: bool) {
        if x.is_empty() || positions.is_empty() {
            return;
        }
        let half = self.half();
        let (cos_table, sin_table) = self.tables();
        let width = x.len() / positions.len();
        x.par_chunks_mut(CHUNK * width)
            .enumerate()
            .for_each(|(chunk, x)| {
                for (t, row) in x.chunks_mut(width).enumerate() {
                    let pos = positions[chunk * CHUNK + t] as usize;
                    let cos = &cos_table[pos * half..(pos + 1) * half];
                    let sin = &sin_table[pos * half..(pos + 1) * half];
                    for head in row.chunks_mut(head_dim) {
                        let (a, b) = head.split_at_mut(half);
                        for i in 0..half {
                            let s = if inverse { -sin[i] } else { sin[i] };
                            let (x1, x2) = (a[i], b[i]);
                            a[i] = x1 * cos[i] - x2 * s;
                            b[i] = x2 * cos[i] + x1 * s;
                        }
                    }
                }
            });
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// SwiGLU: `h = silu(gate) ⊙ up`.
pub fn swiglu_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut h = vec![0.0; gate.len()];
    h.par_chunks_mut(CHUNK * 256)
        .enumerate()
        .for_each(|(chunk, h)| {
            let start = chunk * CHUNK * 256;
            for (i, v) in h.iter_mut().enumerate() {
                let (g, u) = (gate[start + i], up[start + i]);
                *v = g * sigmoid(g) * u;
            }
        });
    h
}

/// Backward of `swiglu_forward`: returns `(d gate, d up)`.
pub fn swiglu_backward(dh: &[f32], gate: &[f32], up: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dgate = vec![0.0; dh.len()];
    let mut dup = vec![0.0; dh.len()];
    dgate
        .par_chunks_mut(CHUNK * 256)
        .zip(dup.par_chunks_mut(CHUNK * 256))
        .enumerate()
        .for_each(|(chunk, (dg, du))| {
            let start = chunk * CHUNK * 256;
            for i in 0..dg.len() {
                let (g, u, d) = (gate[start + i], up[start + i], dh[start + i]);
                let s = sigmoid(g);
                du[i] = d * g * s;
                dg[i] = d * u * s * (1.0 + g * (1.0 - s));
            }
        });
    (dgate, dup)
}

/// Where a dropout mask applies: the hash of `(seed, site, row, position, channel)` decides each
/// element, so a mask depends only on what it covers, never on scheduling.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
    /// Which residual branch (stack, layer, block), unique within a model.
    pub site: u64,
}

impl Dropout {
    /// Multiplies `x` (`tokens x width`) by the mask scaled by `1/(1-p)`; the same call on the
    /// output gradient is the backward pass.
    pub fn apply(&self, x: &mut [f32], rows: &[u32], positions: &[u32]) {
        if self.p <= 0.0 || x.is_empty() || rows.is_empty() {
            return;
        }
        let width = x.len() / rows.len();
        let keep_scale = 1.0 / (1.0 - self.p);
        x.par_chunks_mut(CHUNK * width)
            .enumerate()
            .for_each(|(chunk, x)| {
                for (t, row) in x.chunks_mut(width).enumerate() {
                    let token = chunk * CHUNK + t;
                    let (r, pos) = (rows[token] as u64, positions[token] as u64);
                    for (c, v) in row.iter_mut().enumerate() {
                        let u = unit_f32(counter_hash(self.seed, &[self.site, r, pos, c as u64]));
                        *v = if u < self.p { 0.0 } else { *v * keep_scale };
                    }
                }
            });
    }
}
