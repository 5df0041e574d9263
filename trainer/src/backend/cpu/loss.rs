//! Output logits with the tied embedding, cross-entropy and z-loss, forward and backward.
//!
//! `logits = h · Eᵀ · d_model^-0.5` where `h` is the final-normed hidden state of a scored
//! token. Per scored token: `ce = logZ − logit[target]` and `z = z_loss · logZ²`, with
//! `logZ = logsumexp(logits)`. The gradient of `ce + z` w.r.t. the logits is
//! `softmax · (1 + 2 · z_loss · logZ) − onehot(target)`.
//!
//! Only scored tokens get logits, in chunks of `CHUNK` tokens so the `tokens x vocab` matrix is
//! never materialized whole. Within a chunk the logits are held transposed (`vocab x tokens`) so
//! that every product splits along the vocabulary into contiguous blocks: each task packs only
//! its slice of the embedding, instead of every task packing the whole embedding (which costs
//! as much as the product itself at small `d_model`). The log-partition is merged from per-block
//! (max, sum) pairs in block order. Chunks and merges run in a fixed order, so the result does
//! not depend on the thread count.

use rayon::prelude::*;

use super::matmul::{gemm, MatRef};
use super::stream::Scored;
use crate::batch::LossStats;

/// Scored tokens per sequential chunk.
const CHUNK: usize = 256;
/// Vocabulary rows per parallel task.
const VOCAB_TASK: usize = 512;
/// Tokens per parallel task for the hidden-state gradient.
const TOKEN_TASK: usize = 64;

/// Gradient outputs of `logits_loss`.
pub struct LossGrads<'a> {
    /// `vocab x d_model`: the output side of the tied embedding's gradient (added into).
    pub embed: &'a mut [f32],
    /// `tokens x d_model`: gradient w.r.t. the final-normed hidden states (added into).
    pub hidden: &'a mut [f32],
}

/// Scores `scored` tokens of `hidden` (`tokens x d_model`, already final-normed) against the
/// tied embedding `embed` (`vocab x d_model`); `rows` sizes the per-row sums. With `grads`, adds
/// the gradient of `Σ ce + z` to both. Also returns each scored token's cross-entropy, in the
/// order of `scored`.
pub fn logits_loss(
    hidden: &[f32],
    embed: &[f32],
    d_model: usize,
    scored: &[Scored],
    rows: usize,
    z_loss: f32,
    mut grads: Option<LossGrads>,
) -> (LossStats, Vec<f64>) {
    let vocab = embed.len() / d_model;
    let scale = 1.0 / (d_model as f32).sqrt();
    let mut stats = LossStats {
        row_loss: vec![0.0; rows],
        row_tokens: vec![0; rows],
        ..LossStats::default()
    };
    let d = d_model;
    let mut token_ce = Vec::with_capacity(scored.len());
    for chunk in scored.chunks(CHUNK) {
        let c = chunk.len();
        let mut h = vec![0.0f32; c * d];
        for (dst, s) in h.chunks_mut(d).zip(chunk) {
            dst.copy_from_slice(&hidden[s.index * d..(s.index + 1) * d]);
        }
        let h_t = MatRef::new(&h, c, d).t();
        // Logits, transposed, and per block the column max and Σ exp(l − max).
        let mut logits_t = vec![0.0f32; vocab * c];
        let partial: Vec<(Vec<f32>, Vec<f32>)> = logits_t
            .par_chunks_mut(VOCAB_TASK * c)
            .enumerate()
            .map(|(task, block)| {
                let rows = block.len() / c;
                let e = MatRef::new(embed, vocab, d).row_range(task * VOCAB_TASK, rows);
                gemm(scale, e, h_t, 0.0, block, c);
                let mut max = vec![f32::NEG_INFINITY; c];
                for row in block.chunks(c) {
                    for (m, l) in max.iter_mut().zip(row) {
                        *m = m.max(*l);
                    }
                }
                let mut sum = vec![0.0f32; c];
                for row in block.chunks(c) {
                    for ((s, l), m) in sum.iter_mut().zip(row).zip(&max) {
                        *s += (l - m).exp();
                    }
                }
                (max, sum)
            })
            .collect();
        let mut log_z = vec![0.0f64; c];
        for (j, lz) in log_z.iter_mut().enumerate() {
            let max = partial
                .iter()
                .map(|(m, _)| m[j])
                .fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = partial
                .iter()
                .map(|(m, s)| s[j] as f64 * ((m[j] - max) as f64).exp())
                .sum();
            *lz = max as f64 + total.ln();
        }
        for (j, s) in chunk.iter().enumerate() {
            let ce = log_z[j] - logits_t[s.target as usize * c + j] as f64;
            let z = z_loss as f64 * log_z[j] * log_z[j];
            stats.loss_sum += ce;
            stats.z_loss_sum += z;
            stats.tokens += 1;
            stats.row_loss[s.row] += ce;
            stats.row_tokens[s.row] += 1;
            token_ce.push(ce);
        }
        let Some(g) = grads.as_mut() else { continue };
        // d(loss)/d(h·Eᵀ) in place, the 1/sqrt(d) scale folded in.
        let lz32: Vec<f32> = log_z.iter().map(|&v| v as f32).collect();
        let factor: Vec<f32> = log_z
            .iter()
            .map(|&v| ((1.0 + 2.0 * z_loss as f64 * v) * scale as f64) as f32)
            .collect();
        logits_t.par_chunks_mut(VOCAB_TASK * c).for_each(|block| {
            for row in block.chunks_mut(c) {
                for ((l, lz), f) in row.iter_mut().zip(&lz32).zip(&factor) {
                    *l = (*l - lz).exp() * f;
                }
            }
        });
        for (j, s) in chunk.iter().enumerate() {
            logits_t[s.target as usize * c + j] -= scale;
        }
        let grad_t = MatRef::new(&logits_t, vocab, c);
        // d h = gradᵀ · E, split over tokens.
        let mut dh = vec![0.0f32; c * d];
        dh.par_chunks_mut(TOKEN_TASK * d)
            .enumerate()
            .for_each(|(task, out)| {
                let rows = out.len() / d;
                let a = grad_t.t().row_range(task * TOKEN_TASK, rows);
                gemm(1.0, a, MatRef::new(embed, vocab, d), 0.0, out, d);
            });
        for (src, s) in dh.chunks(d).zip(chunk) {
            for (a, b) in g.hidden[s.index * d..(s.index + 1) * d].iter_mut().zip(src) {
                *a += b;
            }
        }
        // d E += grad · h, split over vocabulary rows.
        g.embed
            .par_chunks_mut(VOCAB_TASK * d)
            .enumerate()
            .for_each(|(task, out)| {
                let rows = out.len() / d;
                gemm(
                    1.0,
                    grad_t.row_range(task * VOCAB_TASK, rows),
                    MatRef::new(&h, c, d),
                    1.0,
                    out,
                    d,
                );
            });
    }
    (stats, token_ce)
}
