//! Shared helpers for the model tests: random data, tiny configs and batches, and a central
//! finite-difference checker.
#![allow(dead_code)]

use redpack_trainer::batch::Batch;
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::rng::SplitMix64;

/// `n` values from N(0, scale²).
pub fn randn(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.next_normal() as f32 * scale).collect()
}

/// `Σ w ⊙ y` in f64: the scalar whose gradient w.r.t. `y` is `w`.
pub fn weighted_sum(w: &[f32], y: &[f32]) -> f64 {
    w.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Compares an analytic gradient with central differences of `f` around `x` on the entries
/// `indices` (all entries when `None`). Fails when `|numeric − analytic|` exceeds
/// `tol · max|analytic| + abs_tol`, which catches any indexing bug (those are off by the order
/// of the gradient itself) while allowing f32 rounding.
#[allow(clippy::too_many_arguments)]
pub fn check_gradient(
    name: &str,
    x: &[f32],
    analytic: &[f32],
    indices: Option<&[usize]>,
    h: f32,
    tol: f64,
    abs_tol: f64,
    mut f: impl FnMut(&[f32]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{name}: shapes differ");
    let all: Vec<usize> = (0..x.len()).collect();
    let indices = indices.unwrap_or(&all);
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
    let mut probe = x.to_vec();
    for &i in indices {
        probe[i] = x[i] + h;
        let plus = f(&probe);
        probe[i] = x[i] - h;
        let minus = f(&probe);
        probe[i] = x[i];
        let numeric = (plus - minus) / (2.0 * (h as f64));
        let err = (numeric - analytic[i] as f64).abs();
        if err > worst.0 {
            worst = (err, i, numeric, analytic[i] as f64);
        }
    }
    let limit = tol * scale + abs_tol;
    assert!(
        worst.0 <= limit,
        "{name}: worst mismatch at {}: numeric {} vs analytic {} (|err| {:.3e} > {:.3e}, max|grad| {:.3e})",
        worst.1,
        worst.2,
        worst.3,
        worst.0,
        limit,
        scale
    );
}

/// The `count` entries with the largest |gradient| plus `count` random ones: enough to catch a
/// wrong index without differentiating every parameter.
pub fn probe_indices(grad: &[f32], count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
    let mut out: Vec<usize> = order.into_iter().take(count).collect();
    for _ in 0..count {
        out.push(rng.below(grad.len() as u64) as usize);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A model small enough for finite differences.
pub fn micro_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 13,
        d_model: 16,
        d_ffn: 24,
        // d_attn = 12 differs from d_model, so a mixed-up dimension cannot go unnoticed.
        n_heads: 3,
        head_dim: 4,
        layers: if arch == Arch::Dec { 2 } else { 0 },
        encoder_layers: if arch == Arch::Red { 2 } else { 0 },
        decoder_layers: if arch == Arch::Red { 2 } else { 0 },
        rope_base: 10000.0,
        norm_eps: 1e-6,
    }
}

/// A batch of rows with the given `(length, prefix_len)`, padded to `seq` with `pad`, tokens
/// drawn from `rng`.
pub fn make_batch(
    rng: &mut SplitMix64,
    vocab: usize,
    seq: usize,
    rows: &[(usize, usize)],
    pad: u32,
) -> Batch {
    let mut tokens = vec![pad; rows.len() * seq];
    for (r, &(n, _)) in rows.iter().enumerate() {
        for t in 0..n {
            tokens[r * seq + t] = rng.below(vocab as u64) as u32;
        }
    }
    Batch {
        rows: rows.len(),
        seq,
        tokens,
        prefix_len: rows.iter().map(|&(_, k)| k).collect(),
        length: rows.iter().map(|&(n, _)| n).collect(),
        doc_starts: vec![Vec::new(); rows.len()],
        source: vec!["test".to_string(); rows.len()],
    }
}
