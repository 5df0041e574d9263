//! Scaled dot-product attention over packed rows: forward one task per (row, head, block of
//! `QUERY_BLOCK` queries), backward one task per (row, head).
//!
//! Q, K and V arrive already projected, normalized per head and rotated: `tokens x (heads ·
//! head_dim)`, rows of a batch packed one after another (see `AttnRow`). The forward pass holds
//! the probabilities of one block of queries at a time, `QUERY_BLOCK x k_len` per task, so its
//! memory grows linearly with the sequence length (evaluation at long contexts). Blocking changes
//! no arithmetic: each query's scores, softmax and output are computed by the same operations in
//! the same order as over the whole row (every product element is one `sgemm` dot product over
//! the same inner dimension), so the results are bitwise those of an unblocked pass. The
//! probabilities are not stored: the backward pass recomputes them per (row, head) from Q and K
//! (one extra `QKᵀ` product).
//!
//! A query with no visible key (possible only in cross-attention with document resets) outputs
//! zeros and gets zero gradient.

use rayon::prelude::*;

use super::matmul::{gemm, MatRef};
use crate::model::attention::{AttnRow, DocIds};

/// Shapes shared by all rows: the stream width `heads · head_dim` and `head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn width(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// One head's slice of a stream, rows `start..start + len`.
pub(super) fn head_view(
    data: &[f32],
    shape: AttnShape,
    head: usize,
    start: usize,
    len: usize,
) -> MatRef<'_> {
    MatRef::new(data, data.len() / shape.width(), shape.width())
        .row_range(start, len)
        .col_range(head * shape.head_dim, shape.head_dim)
}

/// Queries per forward task: the forward pass holds `QUERY_BLOCK x k_len` probabilities per
/// task.
pub const QUERY_BLOCK: usize = 128;

/// The attention probabilities of one (row, head), `q_len x k_len`, masked entries 0.
fn probabilities(
    q: &[f32],
    k: &[f32],
    shape: AttnShape,
    row: &AttnRow,
    head: usize,
    docs: DocIds,
) -> Vec<f32> {
    block_probabilities(q, k, shape, row, head, docs, 0, row.q_len)
}

/// The probabilities of queries `first..first + n` of one (row, head), `n x k_len`: masked
/// entries 0, a query with no visible key all 0. The training forward and the attention probe
/// (`probe`) both take them from here.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_probabilities(
    q: &[f32],
    k: &[f32],
    shape: AttnShape,
    row: &AttnRow,
    head: usize,
    docs: DocIds,
    first: usize,
    n: usize,
) -> Vec<f32> {
    let lk = row.k_len;
    let mut p = vec![0.0f32; n * lk];
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let qv = head_view(q, shape, head, row.q_start + first, n);
    let kv = head_view(k, shape, head, row.k_start, lk);
    gemm(scale, qv, kv.t(), 0.0, &mut p, lk);
    for (b, scores) in p.chunks_mut(lk.max(1)).take(n).enumerate() {
        let i = first + b;
        let mut max = f32::NEG_INFINITY;
        let mut nan = false;
        for (j, s) in scores.iter().enumerate() {
            if row.allowed(i, j, docs) {
                nan |= s.is_nan();
                if *s > max {
                    max = *s;
                }
            }
        }
        // A row whose visible scores are all NaN stays NaN (zeros would look like a masked row).
        if max == f32::NEG_INFINITY && !nan {
            scores.fill(0.0);
            continue;
        }
        let mut sum = 0.0f32;
        for (j, s) in scores.iter_mut().enumerate() {
            *s = if row.allowed(i, j, docs) {
                (*s - max).exp()
            } else {
                0.0
            };
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in scores.iter_mut() {
            *s *= inv;
        }
    }
    p
}

/// Adds a `len x head_dim` block into a head's columns of a stream.
fn scatter_add(dst: &mut [f32], src: &[f32], shape: AttnShape, head: usize, start: usize) {
    let (w, hd) = (shape.width(), shape.head_dim);
    for (t, block) in src.chunks(hd).enumerate() {
        let at = (start + t) * w + head * hd;
        for (d, s) in dst[at..at + hd].iter_mut().zip(block) {
            *d += s;
        }
    }
}

/// `out = softmax(Q Kᵀ / sqrt(head_dim) + mask) V` for every row and head; `out` is overwritten
/// (query tokens outside every row are left at zero).
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    rows: &[AttnRow],
    docs: DocIds,
    out: &mut [f32],
) {
    let tasks: Vec<(usize, usize, usize)> = (0..rows.len())
        .flat_map(|r| {
            let blocks = rows[r].q_len.div_ceil(QUERY_BLOCK);
            (0..shape.n_heads).flat_map(move |h| (0..blocks).map(move |b| (r, h, b * QUERY_BLOCK)))
        })
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(r, h, first)| {
            let row = &rows[r];
            let n = QUERY_BLOCK.min(row.q_len - first);
            let p = block_probabilities(q, k, shape, row, h, docs, first, n);
            let mut o = vec![0.0; n * shape.head_dim];
            let pm = MatRef::new(&p, n, row.k_len);
            gemm(
                1.0,
                pm,
                head_view(v, shape, h, row.k_start, row.k_len),
                0.0,
                &mut o,
                shape.head_dim,
            );
            o
        })
        .collect();
    out.fill(0.0);
    for (&(r, h, first), o) in tasks.iter().zip(&results) {
        scatter_add(out, o, shape, h, rows[r].q_start + first);
    }
}

/// Backward of `attention_forward`: *adds* the gradients w.r.t. Q, K and V into `dq`, `dk`,
/// `dv` given the output gradient `dout`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    shape: AttnShape,
    rows: &[AttnRow],
    docs: DocIds,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let hd = shape.head_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    let tasks: Vec<(usize, usize)> = (0..rows.len())
        .flat_map(|r| (0..shape.n_heads).map(move |h| (r, h)))
        .collect();
    let results: Vec<[Vec<f32>; 3]> = tasks
        .par_iter()
        .map(|&(r, h)| {
            let row = &rows[r];
            let (lq, lk) = (row.q_len, row.k_len);
            let p = probabilities(q, k, shape, row, h, docs);
            let pm = MatRef::new(&p, lq, lk);
            let dov = head_view(dout, shape, h, row.q_start, lq);
            let mut dvh = vec![0.0; lk * hd];
            gemm(1.0, pm.t(), dov, 0.0, &mut dvh, hd);
            // dP = dO Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, in place.
            let mut ds = vec![0.0; lq * lk];
            gemm(
                1.0,
                dov,
                head_view(v, shape, h, row.k_start, lk).t(),
                0.0,
                &mut ds,
                lk,
            );
            for (ds_row, p_row) in ds.chunks_mut(lk.max(1)).zip(p.chunks(lk.max(1))) {
                let dot: f32 = ds_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                for (d, pv) in ds_row.iter_mut().zip(p_row) {
                    *d = pv * (*d - dot) * scale;
                }
            }
            let dsm = MatRef::new(&ds, lq, lk);
            let mut dqh = vec![0.0; lq * hd];
            gemm(
                1.0,
                dsm,
                head_view(k, shape, h, row.k_start, lk),
                0.0,
                &mut dqh,
                hd,
            );
            let mut dkh = vec![0.0; lk * hd];
            gemm(
                1.0,
                dsm.t(),
                head_view(q, shape, h, row.q_start, lq),
                0.0,
                &mut dkh,
                hd,
            );
            [dqh, dkh, dvh]
        })
        .collect();
    for (&(r, h), [dqh, dkh, dvh]) in tasks.iter().zip(&results) {
        let row = &rows[r];
        scatter_add(dq, dqh, shape, h, row.q_start);
        scatter_add(dk, dkh, shape, h, row.k_start);
        scatter_add(dv, dvh, shape, h, row.k_start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The unblocked forward pass: one `q_len x k_len` probability matrix per (row, head).
    fn whole_rows(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: AttnShape,
        rows: &[AttnRow],
        docs: DocIds,
        out: &mut [f32],
    ) {
        out.fill(0.0);
        for row in rows {
            for h in 0..shape.n_heads {
                let p = probabilities(q, k, shape, row, h, docs);
                let mut o = vec![0.0; row.q_len * shape.head_dim];
                gemm(
                    1.0,
                    MatRef::new(&p, row.q_len, row.k_len),
                    head_view(v, shape, h, row.k_start, row.k_len),
                    0.0,
                    &mut o,
                    shape.head_dim,
                );
                scatter_add(out, &o, shape, h, row.q_start);
            }
        }
    }

    #[test]
    fn query_blocks_give_the_whole_rows_bits() {
        let shape = AttnShape {
            n_heads: 2,
            head_dim: 8,
        };
        let w = shape.width();
        let mut rng = SplitMix64::new(3);
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_normal() as f32).collect() };
        // Rows below, at and across block boundaries; causal, with a bidirectional prefix,
        // cross-attention with document resets.
        let lens = [1, QUERY_BLOCK - 1, QUERY_BLOCK, 2 * QUERY_BLOCK + 37, 300];
        let total: usize = lens.iter().sum();
        let (q, k, v) = (random(total * w), random(total * w), random(total * w));
        let mut self_rows = Vec::new();
        let mut start = 0;
        for (i, &len) in lens.iter().enumerate() {
            self_rows.push(AttnRow {
                q_start: start,
                q_len: len,
                k_start: start,
                k_len: len,
                causal: i != 4,
                bidirectional_prefix: if i == 3 { 150 } else { 0 },
            });
            start += len;
        }
        let docs: Vec<u32> = (0..total as u32).map(|t| t / 97).collect();
        let cross_rows = vec![AttnRow {
            q_start: 0,
            q_len: 2 * QUERY_BLOCK + 37,
            k_start: 40,
            k_len: 500,
            causal: false,
            bidirectional_prefix: 0,
        }];
        for (rows, docs) in [
            (&self_rows, None),
            (&self_rows, Some((&docs[..], &docs[..]))),
            (&cross_rows, Some((&docs[..], &docs[..]))),
        ] {
            let mut blocked = vec![1.0; total * w];
            let mut whole = vec![2.0; total * w];
            attention_forward(&q, &k, &v, shape, rows, docs, &mut blocked);
            whole_rows(&q, &k, &v, shape, rows, docs, &mut whole);
            let same = blocked
                .iter()
                .zip(&whole)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "blocked forward differs from the whole-row pass");
        }
    }
}
