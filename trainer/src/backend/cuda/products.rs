//! Every matrix product the GPU model runs, as data: the row-major shape (`GemmSpec`) and the
//! two operand layouts. Keeping them here, apart from the launches, lets the unit tests below
//! run each one through a host emulation of cuBLAS's column-major `gemm` (fed the arguments
//! `blas::column_major` derives, as the device call is) and compare it with the CPU reference's
//! meaning of the product, with no GPU.
//!
//! Notation: weights are `[out, in]` row-major; streams are `tokens x width`; attention operands
//! are padded per (row, head): `batch x len x head_dim`, scores `batch x max_q x max_k`.

use super::blas::{GemmSpec, Layout};

/// A product's shape and its A and B layouts.
pub type Product = (GemmSpec, Layout, Layout);

/// `out (m x n) (+)= x (m x k) · wᵀ`, `w` `[n, k]`.
pub fn linear_forward(m: usize, k: usize, n: usize, accumulate: bool) -> Product {
    let beta = if accumulate { 1.0 } else { 0.0 };
    (
        GemmSpec::new(m, n, k, 1.0, beta),
        Layout::new(k),
        Layout::new(k).t(),
    )
}

/// `dx (m x k) (+)= dy (m x n) · w`, `w` `[n, k]`.
pub fn linear_backward_input(m: usize, k: usize, n: usize, accumulate: bool) -> Product {
    let beta = if accumulate { 1.0 } else { 0.0 };
    (
        GemmSpec::new(m, k, n, 1.0, beta),
        Layout::new(n),
        Layout::new(k),
    )
}

/// `dw (n x k) += dyᵀ · x`, `dy` `m x n`, `x` `m x k`.
pub fn linear_backward_weight(m: usize, k: usize, n: usize) -> Product {
    (
        GemmSpec::new(n, k, m, 1.0, 1.0),
        Layout::new(n).t(),
        Layout::new(k),
    )
}

/// Padded attention sizes: `batch = rows · heads` entries of `max_q` queries and `max_k` keys.
#[derive(Debug, Clone, Copy)]
pub struct AttnSizes {
    pub batch: usize,
    pub max_q: usize,
    pub max_k: usize,
    pub head_dim: usize,
}

impl AttnSizes {
    fn q(&self) -> Layout {
        Layout::new(self.head_dim).batched(self.max_q * self.head_dim)
    }

    fn k(&self) -> Layout {
        Layout::new(self.head_dim).batched(self.max_k * self.head_dim)
    }

    fn s(&self) -> Layout {
        Layout::new(self.max_k).batched(self.max_q * self.max_k)
    }

    fn spec(&self, m: usize, n: usize, k: usize) -> GemmSpec {
        GemmSpec::new(m, n, k, 1.0, 0.0).batched(self.batch, m * n)
    }

    /// `S = Q Kᵀ` (unscaled): A = Q, B = K.
    pub fn scores(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, mk, hd), self.q(), self.k().t())
    }

    /// `O = P V`: A = P, B = V.
    pub fn output(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, hd, mk), self.s(), self.k())
    }

    /// `dP = dO Vᵀ`: A = dO, B = V.
    pub fn d_probs(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, mk, hd), self.q(), self.k().t())
    }

    /// `dV = Pᵀ dO`: A = P, B = dO.
    pub fn d_values(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mk, hd, mq), self.s().t(), self.q())
    }

    /// `dQ = dS K`: A = dS, B = K.
    pub fn d_queries(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, hd, mk), self.s(), self.k())
    }

    /// `dK = dSᵀ Q`: A = dS, B = Q.
    pub fn d_keys(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mk, hd, mq), self.s().t(), self.q())
    }
}

/// `logits (c x vocab) = scale · h (c x d) · Eᵀ`, `E` `vocab x d`: A = h, B = E.
pub fn logits(c: usize, vocab: usize, d: usize, scale: f32) -> Product {
    (
        GemmSpec::new(c, vocab, d, scale, 0.0),
        Layout::new(d),
        Layout::new(d).t(),
    )
}

/// `dh (c x d) = G (c x vocab) · E`: A = G, B = E.
pub fn logits_d_hidden(c: usize, vocab: usize, d: usize) -> Product {
    (
        GemmSpec::new(c, d, vocab, 1.0, 0.0),
        Layout::new(vocab),
        Layout::new(d),
    )
}

/// `dE (vocab x d) += Gᵀ · h`: A = G, B = h.
pub fn logits_d_embed(c: usize, vocab: usize, d: usize) -> Product {
    (
        GemmSpec::new(vocab, d, c, 1.0, 1.0),
        Layout::new(vocab).t(),
        Layout::new(d),
    )
}

#[cfg(test)]
pub(crate) mod host {
    //! A host stand-in for cuBLAS: column-major `C = alpha op(A) op(B) + beta C` (strided
    //! batched), driven through `blas::column_major` exactly like the device call.

    use super::super::blas::{check_bounds, column_major, GemmSpec, Layout};

    /// cuBLAS `gemmStridedBatched` semantics on host slices (column-major, `T` = transpose).
    #[allow(clippy::too_many_arguments)]
    fn cublas_gemm(
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        sa: usize,
        b: &[f32],
        ldb: usize,
        sb: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
        sc: usize,
        batch: usize,
    ) {
        for e in 0..batch {
            for j in 0..n {
                for i in 0..m {
                    let mut acc = 0.0f64;
                    for p in 0..k {
                        let av = if ta {
                            a[e * sa + p + i * lda]
                        } else {
                            a[e * sa + i + p * lda]
                        };
                        let bv = if tb {
                            b[e * sb + j + p * ldb]
                        } else {
                            b[e * sb + p + j * ldb]
                        };
                        acc += av as f64 * bv as f64;
                    }
                    let at = e * sc + i + j * ldc;
                    let old = if beta == 0.0 { 0.0 } else { beta * c[at] };
                    c[at] = (alpha as f64 * acc) as f32 + old;
                }
            }
        }
    }

    /// What `Blas::gemm` asks cuBLAS for, run on the host.
    pub fn gemm(spec: GemmSpec, a: &[f32], la: Layout, b: &[f32], lb: Layout, c: &mut [f32]) {
        if spec.m == 0 || spec.n == 0 || spec.batch == 0 {
            return;
        }
        check_bounds(&spec, la, a.len(), lb, b.len(), c.len()).unwrap();
        let cm = column_major(&spec, la, lb);
        cublas_gemm(
            cm.trans_first,
            cm.trans_second,
            cm.m,
            cm.n,
            cm.k,
            spec.alpha,
            b,
            cm.ld_first,
            cm.stride_first,
            a,
            cm.ld_second,
            cm.stride_second,
            spec.beta,
            c,
            cm.ldc,
            cm.stride_c,
            spec.batch,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::attention::{AttnRow, DocIds};
    use crate::backend::cpu::matmul;
    use crate::rng::SplitMix64;

    fn randn(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.next_normal() as f32).collect()
    }

    fn close(name: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{name}: lengths");
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * scale,
                "{name}: element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn linear_products_match_the_cpu_reference() {
        let mut rng = SplitMix64::new(3);
        let (m, k, n) = (7, 5, 3);
        let x = randn(&mut rng, m * k);
        let w = randn(&mut rng, n * k);
        let dy = randn(&mut rng, m * n);
        let base_out = randn(&mut rng, m * n);
        for acc in [false, true] {
            let mut want = base_out.clone();
            matmul::linear_forward(&mut want, &x, &w, m, k, n, acc);
            let mut got = base_out.clone();
            let (spec, la, lb) = linear_forward(m, k, n, acc);
            host::gemm(spec, &x, la, &w, lb, &mut got);
            close("linear_forward", &got, &want);

            let base = randn(&mut rng, m * k);
            let mut want = base.clone();
            matmul::linear_backward_input(&mut want, &dy, &w, m, k, n, acc);
            let mut got = base.clone();
            let (spec, la, lb) = linear_backward_input(m, k, n, acc);
            host::gemm(spec, &dy, la, &w, lb, &mut got);
            close("linear_backward_input", &got, &want);
        }
        let base = randn(&mut rng, n * k);
        let mut want = base.clone();
        matmul::linear_backward_weight(&mut want, &dy, &x, m, k, n);
        let mut got = base.clone();
        let (spec, la, lb) = linear_backward_weight(m, k, n);
        host::gemm(spec, &dy, la, &x, lb, &mut got);
        close("linear_backward_weight", &got, &want);
    }

    #[test]
    fn logits_products_match_their_definitions() {
        let mut rng = SplitMix64::new(4);
        let (c, vocab, d, scale) = (3, 11, 4, 0.5f32);
        let h = randn(&mut rng, c * d);
        let e = randn(&mut rng, vocab * d);
        let g = randn(&mut rng, c * vocab);
        let mut want = vec![0.0; c * vocab];
        for t in 0..c {
            for v in 0..vocab {
                want[t * vocab + v] =
                    scale * (0..d).map(|i| h[t * d + i] * e[v * d + i]).sum::<f32>();
            }
        }
        let mut got = vec![0.0; c * vocab];
        let (spec, la, lb) = logits(c, vocab, d, scale);
        host::gemm(spec, &h, la, &e, lb, &mut got);
        close("logits", &got, &want);

        let mut want = vec![0.0; c * d];
        for t in 0..c {
            for i in 0..d {
                want[t * d + i] = (0..vocab).map(|v| g[t * vocab + v] * e[v * d + i]).sum();
            }
        }
        let mut got = vec![0.0; c * d];
        let (spec, la, lb) = logits_d_hidden(c, vocab, d);
        host::gemm(spec, &g, la, &e, lb, &mut got);
        close("logits_d_hidden", &got, &want);

        let base = randn(&mut rng, vocab * d);
        let mut want = base.clone();
        for v in 0..vocab {
            for i in 0..d {
                want[v * d + i] += (0..c).map(|t| g[t * vocab + v] * h[t * d + i]).sum::<f32>();
            }
        }
        let mut got = base;
        let (spec, la, lb) = logits_d_embed(c, vocab, d);
        host::gemm(spec, &g, la, &h, lb, &mut got);
        close("logits_d_embed", &got, &want);
    }

    /// attention.cu's `attn_pack` / `attn_unpack` index math on the host.
    #[allow(clippy::too_many_arguments)]
    fn pack(
        src: &[f32],
        desc: &[[usize; 6]],
        heads: usize,
        hd: usize,
        max_len: usize,
        keys: bool,
        dst: &mut [f32],
        unpack: bool,
    ) {
        for (r, fields) in desc.iter().enumerate() {
            let (start, len) = if keys {
                (fields[2], fields[3])
            } else {
                (fields[0], fields[1])
            };
            for h in 0..heads {
                for i in 0..max_len {
                    for c in 0..hd {
                        let at = ((r * heads + h) * max_len + i) * hd + c;
                        let stream_at = ((start + i) * heads + h) * hd + c;
                        match (unpack, i < len) {
                            (false, true) => dst[at] = src[stream_at],
                            (false, false) => dst[at] = 0.0,
                            (true, true) => dst[stream_at] = src[at],
                            (true, false) => {}
                        }
                    }
                }
            }
        }
    }

    /// softmax.cu's forward on the host (same line indexing and masking).
    #[allow(clippy::too_many_arguments)]
    fn softmax(
        s: &[f32],
        desc: &[[usize; 6]],
        rows: &[AttnRow],
        docs: DocIds,
        heads: usize,
        mq: usize,
        mk: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut p = vec![0.0; s.len()];
        for line in 0..desc.len() * heads * mq {
            let i = line % mq;
            let r = line / mq / heads;
            let row = &rows[r];
            let live = i < row.q_len;
            let on = |j: usize| live && j < row.k_len && row.allowed(i, j, docs);
            let max = (0..mk)
                .filter(|&j| on(j))
                .map(|j| scale * s[line * mk + j])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for j in 0..mk {
                let e = if max != f32::NEG_INFINITY && on(j) {
                    (scale * s[line * mk + j] - max).exp()
                } else {
                    0.0
                };
                p[line * mk + j] = e;
                sum += e;
            }
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            for j in 0..mk {
                p[line * mk + j] *= inv;
            }
        }
        p
    }

    #[test]
    fn padded_batched_attention_matches_the_cpu_reference() {
        use crate::backend::cpu::attention::{attention_backward, attention_forward, AttnShape};
        let mut rng = SplitMix64::new(5);
        let (heads, hd) = (2, 4);
        let shape = AttnShape {
            n_heads: heads,
            head_dim: hd,
        };
        let width = heads * hd;
        // Self-attention rows (causal, one with a bidirectional prefix, one empty) and
        // cross-attention rows (queries and keys of different lengths).
        let row = |q_start, q_len, k_start, k_len, causal, bidirectional_prefix| AttnRow {
            q_start,
            q_len,
            k_start,
            k_len,
            causal,
            bidirectional_prefix,
        };
        let self_rows = vec![
            row(0, 5, 0, 5, true, 0),
            row(5, 0, 5, 0, true, 0),
            row(5, 7, 5, 7, true, 3),
        ];
        let cross_rows = vec![row(0, 5, 0, 3, false, 0), row(5, 2, 3, 6, false, 0)];
        for (rows, nq, nk) in [(self_rows, 12, 12), (cross_rows, 7, 9)] {
            let q_docs: Vec<u32> = (0..nq).map(|t| (t % 4 / 2) as u32).collect();
            let k_docs: Vec<u32> = (0..nk).map(|t| (t % 3 / 2) as u32).collect();
            for docs in [None, Some((q_docs.as_slice(), k_docs.as_slice()))] {
                let q = randn(&mut rng, nq * width);
                let k = randn(&mut rng, nk * width);
                let v = randn(&mut rng, nk * width);
                let d_o = randn(&mut rng, nq * width);
                let mut want_o = vec![0.0; nq * width];
                attention_forward(&q, &k, &v, shape, &rows, docs, &mut want_o);
                let (mut want_dq, mut want_dk, mut want_dv) = (
                    vec![0.0; nq * width],
                    vec![0.0; nk * width],
                    vec![0.0; nk * width],
                );
                attention_backward(
                    &q,
                    &k,
                    &v,
                    &d_o,
                    shape,
                    &rows,
                    docs,
                    &mut want_dq,
                    &mut want_dk,
                    &mut want_dv,
                );

                let desc: Vec<[usize; 6]> = rows.iter().map(AttnRow::fields).collect();
                let mq = rows.iter().map(|r| r.q_len).max().unwrap();
                let mk = rows.iter().map(|r| r.k_len).max().unwrap();
                let sizes = AttnSizes {
                    batch: rows.len() * heads,
                    max_q: mq,
                    max_k: mk,
                    head_dim: hd,
                };
                let (qn, kn, sn) = (
                    sizes.batch * mq * hd,
                    sizes.batch * mk * hd,
                    sizes.batch * mq * mk,
                );
                let (mut qp, mut kp, mut vp, mut dop) =
                    (vec![0.0; qn], vec![0.0; kn], vec![0.0; kn], vec![0.0; qn]);
                pack(&q, &desc, heads, hd, mq, false, &mut qp, false);
                pack(&k, &desc, heads, hd, mk, true, &mut kp, false);
                pack(&v, &desc, heads, hd, mk, true, &mut vp, false);
                pack(&d_o, &desc, heads, hd, mq, false, &mut dop, false);
                let scale = 1.0 / (hd as f32).sqrt();
                let run = |(spec, la, lb): Product, a: &[f32], b: &[f32], n: usize| {
                    let mut c = vec![0.0; n];
                    host::gemm(spec, a, la, b, lb, &mut c);
                    c
                };
                let s = run(sizes.scores(), &qp, &kp, sn);
                let p = softmax(&s, &desc, &rows, docs, heads, mq, mk, scale);
                let op = run(sizes.output(), &p, &vp, qn);
                let mut o = vec![0.0; nq * width];
                pack(&op, &desc, heads, hd, mq, false, &mut o, true);
                close("attention output", &o, &want_o);

                let dp = run(sizes.d_probs(), &dop, &vp, sn);
                let dvp = run(sizes.d_values(), &p, &dop, kn);
                // softmax.cu's backward.
                let mut ds = vec![0.0; sn];
                for line in 0..sn / mk {
                    let dot: f32 = (0..mk).map(|j| p[line * mk + j] * dp[line * mk + j]).sum();
                    for j in 0..mk {
                        ds[line * mk + j] = p[line * mk + j] * (dp[line * mk + j] - dot) * scale;
                    }
                }
                let dqp = run(sizes.d_queries(), &ds, &kp, qn);
                let dkp = run(sizes.d_keys(), &ds, &qp, kn);
                let (mut dq, mut dk, mut dv) = (
                    vec![0.0; nq * width],
                    vec![0.0; nk * width],
                    vec![0.0; nk * width],
                );
                pack(&dqp, &desc, heads, hd, mq, false, &mut dq, true);
                pack(&dkp, &desc, heads, hd, mk, true, &mut dk, true);
                pack(&dvp, &desc, heads, hd, mk, true, &mut dv, true);
                close("dq", &dq, &want_dq);
                close("dk", &dk, &want_dk);
                close("dv", &dv, &want_dv);
            }
        }
    }
}
