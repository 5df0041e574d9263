//! The CUDA backend's matrix products (`cuda::blas::products`) checked against the CPU
//! reference with no GPU: each product runs through the host emulation of cuBLAS's column-major
//! `gemm` (`products::host`, fed the arguments the device call derives) and is compared with
//! the CPU's meaning of it. Here, at the seam, because it needs both backends.

use super::cpu::matmul;
use super::cuda::blas::products::host;
use super::cuda::blas::products::*;
use crate::model::attention::{AttnRow, DocIds};
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
            want[t * vocab + v] = scale * (0..d).map(|i| h[t * d + i] * e[v * d + i]).sum::<f32>();
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
    use super::cpu::attention::{attention_backward, attention_forward, AttnShape};
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
