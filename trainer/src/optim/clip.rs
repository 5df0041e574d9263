//! Global gradient-norm clipping (optional; the paper relies on Adafactor's update clipping).
//!
//! Norms are accumulated in f64, per tensor in order and then summed in tensor order, so the value
//! does not depend on the number of threads.

use rayon::prelude::*;

use crate::params::ParamStore;

/// L2 norm over every element of every tensor.
pub fn global_norm(grads: &ParamStore) -> f64 {
    let squares: Vec<f64> = grads
        .tensors
        .par_iter()
        .map(|t| t.data.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    squares.iter().sum::<f64>().sqrt()
}

/// Multiplies every gradient element by `factor`.
pub fn scale_grads(grads: &mut ParamStore, factor: f32) {
    grads
        .tensors
        .par_iter_mut()
        .for_each(|t| t.data.iter_mut().for_each(|x| *x *= factor));
}

/// Rescales `grads` so that their global norm is at most `max_norm`. Returns the norm before
/// clipping. A non-finite norm is left alone (the caller stops the run on it).
pub fn clip_global_norm(grads: &mut ParamStore, max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if norm.is_finite() && norm > max_norm && norm > 0.0 {
        scale_grads(grads, (max_norm / norm) as f32);
    }
    norm
}
