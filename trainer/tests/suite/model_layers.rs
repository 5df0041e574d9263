//! Finite-difference checks of every layer's backward pass in the CPU reference backend, plus the
//! RoPE pairing convention. Each check differentiates `Σ w ⊙ layer(x)` for random `w`.

use super::model_support;

use model_support::{check_gradient, probe_indices, randn, weighted_sum};
use redpack_trainer::backend::cpu::attention::{attention_backward, attention_forward, AttnShape};
use redpack_trainer::backend::cpu::layers::{
    attention_block_backward, attention_block_forward, ffn_block_backward, ffn_block_forward,
    AttnGrads, AttnSpec, AttnWeights, BlockDims, FfnGrads, FfnWeights,
};
use redpack_trainer::backend::cpu::loss::{fast_exp, logits_loss, LossGrads};
use redpack_trainer::backend::cpu::ops::{
    group_rmsnorm_backward, group_rmsnorm_forward, rmsnorm_backward, rmsnorm_forward,
    swiglu_backward, swiglu_forward, Dropout,
};
use redpack_trainer::model::attention::AttnRow;
use redpack_trainer::model::rope::Rope;
use redpack_trainer::model::stream::{Scored, Stream};
use redpack_trainer::rng::SplitMix64;

const H: f32 = 1e-2;
const TOL: f64 = 1e-2;
const ABS: f64 = 1e-4;
/// Step for whole blocks, whose per-head norms curve more.
const HB: f32 = 2e-3;

#[test]
fn rmsnorm_with_gain_backward_matches_finite_differences() {
    let mut rng = SplitMix64::new(1);
    let (n, d) = (5, 8);
    let x = randn(&mut rng, n * d, 1.5);
    let gain = randn(&mut rng, d, 1.0);
    let w = randn(&mut rng, n * d, 1.0);
    let (_, xhat, inv) = rmsnorm_forward(&x, &gain, 1e-6);
    let mut dgain = vec![0.0; d];
    let mut dx = vec![0.0; n * d];
    rmsnorm_backward(&w, &xhat, &inv, &gain, &mut dgain, &mut dx);
    check_gradient("rmsnorm dx", &x, &dx, None, H, TOL, ABS, |x| {
        weighted_sum(&w, &rmsnorm_forward(x, &gain, 1e-6).0)
    });
    check_gradient("rmsnorm dgain", &gain, &dgain, None, H, TOL, ABS, |g| {
        weighted_sum(&w, &rmsnorm_forward(&x, g, 1e-6).0)
    });
}

#[test]
fn per_head_qkv_norm_backward_matches_finite_differences() {
    let mut rng = SplitMix64::new(2);
    let (tokens, heads, hd) = (3, 3, 4);
    let x = randn(&mut rng, tokens * heads * hd, 2.0);
    let w = randn(&mut rng, x.len(), 1.0);
    let (xhat, inv) = group_rmsnorm_forward(&x, hd, 1e-6);
    // Each head of each token has RMS 1 after the norm.
    for head in xhat.chunks(hd) {
        let rms = (head.iter().map(|v| v * v).sum::<f32>() / hd as f32).sqrt();
        assert!((rms - 1.0).abs() < 1e-4, "rms {rms}");
    }
    let mut dx = w.clone();
    group_rmsnorm_backward(&mut dx, &xhat, &inv, hd);
    check_gradient("head norm dx", &x, &dx, None, H, TOL, ABS, |x| {
        weighted_sum(&w, &group_rmsnorm_forward(x, hd, 1e-6).0)
    });
}

#[test]
fn rope_uses_half_split_pairing_and_backward_is_its_transpose() {
    let hd = 8;
    let rope = Rope::new(hd, 10000.0, 16);
    // Element i pairs with i + hd/2: a unit vector on element 1 rotates into element 5.
    let mut x = vec![0.0f32; hd];
    x[1] = 1.0;
    rope.apply(&mut x, &[3], hd, false);
    let theta = 3.0f64 * 10000f64.powf(-1.0 / 4.0);
    assert!((x[1] as f64 - theta.cos()).abs() < 1e-6);
    assert!((x[5] as f64 - theta.sin()).abs() < 1e-6);
    assert!(x
        .iter()
        .enumerate()
        .all(|(i, v)| i == 1 || i == 5 || *v == 0.0));
    // Scores depend only on the position difference.
    let mut rng = SplitMix64::new(3);
    let q = randn(&mut rng, hd, 1.0);
    let k = randn(&mut rng, hd, 1.0);
    let score = |pq: u32, pk: u32| {
        let (mut a, mut b) = (q.clone(), k.clone());
        rope.apply(&mut a, &[pq], hd, false);
        rope.apply(&mut b, &[pk], hd, false);
        weighted_sum(&a, &b)
    };
    assert!((score(7, 4) - score(3, 0)).abs() < 1e-5);
    // Backward (inverse rotation) against finite differences, two heads, several positions.
    let positions = [0u32, 5, 2, 11];
    let x = randn(&mut rng, positions.len() * 2 * hd, 1.0);
    let w = randn(&mut rng, x.len(), 1.0);
    let mut dx = w.clone();
    rope.apply(&mut dx, &positions, hd, true);
    check_gradient("rope dx", &x, &dx, None, H, TOL, ABS, |x| {
        let mut y = x.to_vec();
        rope.apply(&mut y, &positions, hd, false);
        weighted_sum(&w, &y)
    });
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let mut rng = SplitMix64::new(4);
    let gate = randn(&mut rng, 40, 2.0);
    let up = randn(&mut rng, 40, 1.0);
    let w = randn(&mut rng, 40, 1.0);
    let (dgate, dup) = swiglu_backward(&w, &gate, &up);
    check_gradient("swiglu dgate", &gate, &dgate, None, H, TOL, ABS, |g| {
        weighted_sum(&w, &swiglu_forward(g, &up))
    });
    check_gradient("swiglu dup", &up, &dup, None, H, TOL, ABS, |u| {
        weighted_sum(&w, &swiglu_forward(&gate, u))
    });
}

/// Checks attention's backward for `rows` over query/key streams of `nq`/`nk` tokens.
fn check_attention(
    name: &str,
    rows: &[AttnRow],
    nq: usize,
    nk: usize,
    docs: Option<(&[u32], &[u32])>,
) {
    let shape = AttnShape {
        n_heads: 2,
        head_dim: 4,
    };
    let width = 8;
    let mut rng = SplitMix64::new(5);
    let q = randn(&mut rng, nq * width, 1.0);
    let k = randn(&mut rng, nk * width, 1.0);
    let v = randn(&mut rng, nk * width, 1.0);
    let w = randn(&mut rng, nq * width, 1.0);
    let forward = |q: &[f32], k: &[f32], v: &[f32]| {
        let mut out = vec![0.0; nq * width];
        attention_forward(q, k, v, shape, rows, docs, &mut out);
        weighted_sum(&w, &out)
    };
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(&q, &k, &v, &w, shape, rows, docs, &mut dq, &mut dk, &mut dv);
    check_gradient(&format!("{name} dq"), &q, &dq, None, H, TOL, ABS, |x| {
        forward(x, &k, &v)
    });
    check_gradient(&format!("{name} dk"), &k, &dk, None, H, TOL, ABS, |x| {
        forward(&q, x, &v)
    });
    check_gradient(&format!("{name} dv"), &v, &dv, None, H, TOL, ABS, |x| {
        forward(&q, &k, x)
    });
}

fn self_rows(lengths: &[usize], causal: bool, prefix: &[usize]) -> Vec<AttnRow> {
    let mut start = 0;
    lengths
        .iter()
        .zip(prefix)
        .map(|(&len, &p)| {
            let row = AttnRow {
                q_start: start,
                q_len: len,
                k_start: start,
                k_len: len,
                causal,
                bidirectional_prefix: p,
            };
            start += len;
            row
        })
        .collect()
}

#[test]
fn attention_backward_full_mask() {
    check_attention("full", &self_rows(&[5, 3], false, &[0, 0]), 8, 8, None);
}

#[test]
fn attention_backward_causal_mask() {
    check_attention("causal", &self_rows(&[6, 2], true, &[0, 0]), 8, 8, None);
}

#[test]
fn attention_backward_causal_with_bidirectional_prefix() {
    check_attention("prefix", &self_rows(&[6, 4], true, &[3, 2]), 10, 10, None);
}

#[test]
fn attention_backward_with_document_resets() {
    let docs = [0u32, 0, 1, 1, 1, 2, 0, 0, 1];
    let rows = self_rows(&[6, 3], true, &[0, 0]);
    check_attention("doc reset", &rows, 9, 9, Some((&docs, &docs)));
}

#[test]
fn cross_attention_backward_with_different_lengths() {
    // Row 0: 3 queries over 5 keys; row 1: 4 queries over 2 keys.
    let rows = [
        AttnRow {
            q_start: 0,
            q_len: 3,
            k_start: 0,
            k_len: 5,
            causal: false,
            bidirectional_prefix: 0,
        },
        AttnRow {
            q_start: 3,
            q_len: 4,
            k_start: 5,
            k_len: 2,
            causal: false,
            bidirectional_prefix: 0,
        },
    ];
    check_attention("cross", &rows, 7, 7, None);
    // With resets a query whose document has no key gets zeros and no gradient.
    let q_docs = [0u32, 1, 2, 0, 0, 1, 1];
    let k_docs = [0u32, 0, 1, 1, 1, 0, 1];
    check_attention("cross reset", &rows, 7, 7, Some((&q_docs, &k_docs)));
}

#[test]
fn cross_entropy_with_z_loss_matches_reference_and_finite_differences() {
    // One vocabulary block, and several (the log-partition is merged across blocks).
    check_cross_entropy(7);
    check_cross_entropy(1100);
}

fn check_cross_entropy(vocab: usize) {
    let mut rng = SplitMix64::new(6);
    let (n, d) = (5, 8);
    let hidden = randn(&mut rng, n * d, 1.0);
    let embed = randn(&mut rng, vocab * d, 1.0);
    let scored = [
        Scored {
            index: 0,
            row: 0,
            target: 3,
        },
        Scored {
            index: 2,
            row: 0,
            target: 6,
        },
        Scored {
            index: 3,
            row: 1,
            target: 0,
        },
        Scored {
            index: 4,
            row: 1,
            target: 3,
        },
    ];
    let z = 0.05;
    let loss = |h: &[f32], e: &[f32]| {
        let (stats, _) = logits_loss(h, e, d, &scored, 2, z, None);
        stats.loss_sum + stats.z_loss_sum
    };
    // Reference in f64.
    let mut ce_ref = 0.0;
    let mut z_ref = 0.0;
    for s in &scored {
        let logits: Vec<f64> = (0..vocab)
            .map(|v| {
                (0..d)
                    .map(|j| hidden[s.index * d + j] as f64 * embed[v * d + j] as f64)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let log_z = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        ce_ref += log_z - logits[s.target as usize];
        z_ref += z as f64 * log_z * log_z;
    }
    let (stats, token_ce) = logits_loss(&hidden, &embed, d, &scored, 2, z, None);
    assert!(
        (stats.loss_sum - ce_ref).abs() < 1e-5,
        "{} vs {ce_ref}",
        stats.loss_sum
    );
    assert!((stats.z_loss_sum - z_ref).abs() < 1e-5);
    assert_eq!(stats.tokens, 4);
    assert_eq!(stats.row_tokens, vec![2, 2]);
    assert!((stats.row_loss[0] - token_ce[0] - token_ce[1]).abs() < 1e-12);

    let mut d_hidden = vec![0.0; n * d];
    let mut d_embed = vec![0.0; vocab * d];
    logits_loss(
        &hidden,
        &embed,
        d,
        &scored,
        2,
        z,
        Some(LossGrads {
            embed: &mut d_embed,
            hidden: &mut d_hidden,
        }),
    );
    // Unscored token 1 gets no gradient.
    assert!(d_hidden[d..2 * d].iter().all(|&g| g == 0.0));
    check_gradient("ce d_hidden", &hidden, &d_hidden, None, H, TOL, ABS, |h| {
        loss(h, &embed)
    });
    let probes = probe_indices(&d_embed, 20, &mut rng);
    check_gradient(
        "ce d_embed",
        &embed,
        &d_embed,
        Some(&probes),
        H,
        TOL,
        ABS,
        |e| loss(&hidden, e),
    );
}

#[test]
fn fast_exp_is_accurate_to_a_few_ulp() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0f32 * i as f32 / 200_000.0;
        let exact = (x as f64).exp();
        let rel = (fast_exp(x) as f64 - exact).abs() / exact;
        worst = worst.max(rel);
    }
    assert!(worst < 4e-7, "worst relative error {worst:e}");
    assert_eq!(fast_exp(0.0), 1.0);
}

/// A one-row stream of `n` tokens at positions `first..first + n`.
fn stream(n: usize, first: u32) -> Stream {
    Stream {
        tokens: vec![0; n],
        rows: vec![0; n],
        positions: (first..first + n as u32).collect(),
        docs: vec![0; n],
        ranges: vec![(0, n)],
    }
}

#[test]
fn attention_and_ffn_blocks_with_dropout_match_finite_differences() {
    let dims = BlockDims {
        d_model: 8,
        d_ffn: 12,
        attn: AttnShape {
            n_heads: 2,
            head_dim: 4,
        },
        eps: 1e-6,
    };
    let mut rng = SplitMix64::new(8);
    let (n, nk) = (5, 4);
    let queries = stream(n, 4);
    let keys = stream(nk, 0);
    let rope = Rope::new(4, 10000.0, 16);
    let dropout = Some(Dropout {
        p: 0.2,
        seed: 5,
        site: 1,
    });
    let x = randn(&mut rng, n * 8, 1.0);
    let kv = randn(&mut rng, nk * 8, 1.0);
    let w_out = randn(&mut rng, n * 8, 1.0);
    // Cross-attention block with the per-head output norm (a RedLLM decoder's).
    let cross_rows = queries.cross_rows(&keys);
    let spec = AttnSpec {
        queries: &queries,
        keys: &keys,
        rows: &cross_rows,
        docs: None,
        rope: &rope,
        out_norm: true,
    };
    // Gains near 1 as in a trained model: random gains near 0 make the per-head norms so
    // curved that central differences stop being accurate.
    let gain = |rng: &mut SplitMix64| -> Vec<f32> {
        randn(rng, 8, 0.1).into_iter().map(|g| 1.0 + g).collect()
    };
    let mut tensors: Vec<Vec<f32>> = vec![gain(&mut rng)];
    for _ in 0..4 {
        tensors.push(randn(&mut rng, 64, 0.35));
    }
    let run = |t: &[Vec<f32>], x: &[f32], kv: &[f32]| {
        let w = AttnWeights {
            norm: &t[0],
            q: &t[1],
            k: &t[2],
            v: &t[3],
            o: &t[4],
        };
        let mut out = x.to_vec();
        let cache = attention_block_forward(&dims, &w, &mut out, Some(kv), &spec, dropout);
        (out, cache)
    };
    let (_, cache) = run(&tensors, &x, &kv);
    let mut g: Vec<Vec<f32>> = tensors.iter().map(|t| vec![0.0; t.len()]).collect();
    let mut dx = w_out.clone();
    let mut d_kv = vec![0.0; kv.len()];
    {
        let w = AttnWeights {
            norm: &tensors[0],
            q: &tensors[1],
            k: &tensors[2],
            v: &tensors[3],
            o: &tensors[4],
        };
        let [gn, gq, gk, gv, go] = &mut g[..] else {
            unreachable!()
        };
        let mut grads = AttnGrads {
            norm: gn,
            q: gq,
            k: gk,
            v: gv,
            o: go,
        };
        attention_block_backward(
            &dims,
            &w,
            &mut grads,
            &cache,
            &mut dx,
            Some((&kv, &mut d_kv)),
            &spec,
            dropout,
        );
    }
    check_gradient("cross block dx", &x, &dx, None, HB, TOL, ABS, |x| {
        weighted_sum(&w_out, &run(&tensors, x, &kv).0)
    });
    check_gradient("cross block d_kv", &kv, &d_kv, None, HB, TOL, ABS, |kv| {
        weighted_sum(&w_out, &run(&tensors, &x, kv).0)
    });
    for (i, name) in ["norm", "q", "k", "v", "o"].iter().enumerate() {
        check_gradient(
            &format!("cross block d{name}"),
            &tensors[i],
            &g[i],
            None,
            H,
            TOL,
            ABS,
            |p| {
                let mut t = tensors.clone();
                t[i].copy_from_slice(p);
                weighted_sum(&w_out, &run(&t, &x, &kv).0)
            },
        );
    }

    // FFN block.
    let mut ffn: Vec<Vec<f32>> = vec![gain(&mut rng)];
    for _ in 0..3 {
        ffn.push(randn(&mut rng, 96, 0.3));
    }
    let run_ffn = |t: &[Vec<f32>], x: &[f32]| {
        let w = FfnWeights {
            norm: &t[0],
            gate: &t[1],
            up: &t[2],
            down: &t[3],
        };
        let mut out = x.to_vec();
        let cache = ffn_block_forward(&dims, &w, &mut out, &queries, dropout);
        (out, cache)
    };
    let (_, cache) = run_ffn(&ffn, &x);
    let mut g: Vec<Vec<f32>> = ffn.iter().map(|t| vec![0.0; t.len()]).collect();
    let mut dx = w_out.clone();
    {
        let w = FfnWeights {
            norm: &ffn[0],
            gate: &ffn[1],
            up: &ffn[2],
            down: &ffn[3],
        };
        let [gn, gg, gu, gd] = &mut g[..] else {
            unreachable!()
        };
        let mut grads = FfnGrads {
            norm: gn,
            gate: gg,
            up: gu,
            down: gd,
        };
        ffn_block_backward(&dims, &w, &mut grads, &cache, &mut dx, &queries, dropout);
    }
    check_gradient("ffn block dx", &x, &dx, None, HB, TOL, ABS, |x| {
        weighted_sum(&w_out, &run_ffn(&ffn, x).0)
    });
    for (i, name) in ["norm", "gate", "up", "down"].iter().enumerate() {
        check_gradient(
            &format!("ffn block d{name}"),
            &ffn[i],
            &g[i],
            None,
            H,
            TOL,
            ABS,
            |p| {
                let mut t = ffn.clone();
                t[i].copy_from_slice(p);
                weighted_sum(&w_out, &run_ffn(&t, &x).0)
            },
        );
    }
}
