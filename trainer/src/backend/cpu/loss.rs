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
use crate::batch::LossStats;
use crate::model::stream::Scored;

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

/// What one vocabulary block reports to the log-partition merge.
struct BlockStats {
    /// Per token (column): the largest logit in the block.
    max: Vec<f32>,
    /// Per token: Σ exp(logit − max) over the block.
    sum: Vec<f32>,
    /// `(token, raw logit)` for the tokens whose target lies in the block.
    targets: Vec<(usize, f32)>,
}

/// Replaces a block of transposed logits (`rows x c`, vocabulary ids from `first`) by
/// `exp(logit − column max)` and returns the column statistics.
fn block_softmax_stats(block: &mut [f32], c: usize, first: usize, targets: &[usize]) -> BlockStats {
    let rows = block.len() / c;
    let found = targets
        .iter()
        .enumerate()
        .filter(|(_, &t)| (first..first + rows).contains(&t))
        .map(|(j, &t)| (j, block[(t - first) * c + j]))
        .collect();
    let mut max = vec![f32::NEG_INFINITY; c];
    for row in block.chunks(c) {
        for (m, l) in max.iter_mut().zip(row) {
            *m = m.max(*l);
        }
    }
    let mut sum = vec![0.0f32; c];
    for row in block.chunks_mut(c) {
        for ((s, l), m) in sum.iter_mut().zip(row.iter_mut()).zip(&max) {
            *l = fast_exp(*l - m);
            *s += *l;
        }
    }
    BlockStats {
        max,
        sum,
        targets: found,
    }
}

/// `exp(x)` for `x <= 0` to about 2 ulp (Cephes' `expf` polynomial after a range reduction by
/// powers of two), in plain arithmetic so the compiler can vectorize the loops that call it:
/// the library `exp` is a call per element and dominated the step time at small `d_model`.
/// Inputs below −87 return about 1e-38 instead of 0, which no sum here can notice.
#[inline]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let f = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * f + 1.398_199_9e-3) * f + 8.333_452e-3) * f + 4.166_579_6e-2) * f
        + 0.166_666_65)
        * f
        + 0.5;
    let y = p * f * f + f + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
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
        row_token_loss: vec![Vec::new(); rows],
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
        // Logits, transposed; each block keeps exp(l − block max) in place and returns its
        // column max, column sum and the raw logits of the targets it holds.
        let targets: Vec<usize> = chunk.iter().map(|s| s.target as usize).collect();
        let mut exps_t = vec![0.0f32; vocab * c];
        let partial: Vec<BlockStats> = exps_t
            .par_chunks_mut(VOCAB_TASK * c)
            .enumerate()
            .map(|(task, block)| {
                let first = task * VOCAB_TASK;
                let rows = block.len() / c;
                let e = MatRef::new(embed, vocab, d).row_range(first, rows);
                gemm(scale, e, h_t, 0.0, block, c);
                block_softmax_stats(block, c, first, &targets)
            })
            .collect();
        let mut log_z = vec![0.0f64; c];
        let mut target_logit = vec![0.0f64; c];
        for (j, lz) in log_z.iter_mut().enumerate() {
            let max = partial
                .iter()
                .map(|b| b.max[j])
                .fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = partial
                .iter()
                .map(|b| b.sum[j] as f64 * ((b.max[j] - max) as f64).exp())
                .sum();
            *lz = max as f64 + total.ln();
        }
        for b in &partial {
            for &(j, logit) in &b.targets {
                target_logit[j] = logit as f64;
            }
        }
        for (j, s) in chunk.iter().enumerate() {
            let ce = log_z[j] - target_logit[j];
            let z = z_loss as f64 * log_z[j] * log_z[j];
            stats.loss_sum += ce;
            stats.z_loss_sum += z;
            stats.tokens += 1;
            stats.row_loss[s.row] += ce;
            stats.row_tokens[s.row] += 1;
            stats.row_token_loss[s.row].push(ce);
            token_ce.push(ce);
        }
        let Some(g) = grads.as_mut() else { continue };
        // d(loss)/d(h·Eᵀ) = softmax · (1 + 2·z_loss·logZ) − onehot, times the logit scale:
        // each block's stored exponentials times one factor per column.
        let factor: Vec<f64> = log_z
            .iter()
            .map(|&v| (1.0 + 2.0 * z_loss as f64 * v) * scale as f64)
            .collect();
        exps_t
            .par_chunks_mut(VOCAB_TASK * c)
            .zip(partial.par_iter())
            .for_each(|(block, stats)| {
                let col: Vec<f32> = (0..c)
                    .map(|j| ((stats.max[j] as f64 - log_z[j]).exp() * factor[j]) as f32)
                    .collect();
                for row in block.chunks_mut(c) {
                    for (l, f) in row.iter_mut().zip(&col) {
                        *l *= f;
                    }
                }
            });
        for (j, &t) in targets.iter().enumerate() {
            exps_t[t * c + j] -= scale;
        }
        let logits_t = exps_t;
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
