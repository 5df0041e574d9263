//! The attention kernels on the GPU: the f32 mode's masked softmax and its packing into the
//! padded batched layout, and the bf16 mode's fused ("flash") attention in both of its builds,
//! each against the CPU reference for every mask. Without a GPU they run on the CPU
//! emulation of one (`cuda_support::emulation`; the fused attention once per build and head
//! dim there); the kernels' compilation is checked in `cuda_kernels.rs`.

use super::cuda_support;

use cuda_support::{assert_close, gpu, randn, reference_probs};
use cudarc::driver::CudaSlice;
use redpack_trainer::backend::cuda::kernels::ScoresShape;
use redpack_trainer::model::attention::AttnRow;
use redpack_trainer::rng::SplitMix64;

/// One batch row: its query and key ranges, whether it is causal, and its bidirectional prefix.
fn row(
    q_start: usize,
    q_len: usize,
    k_start: usize,
    k_len: usize,
    causal: bool,
    prefix: usize,
) -> AttnRow {
    AttnRow {
        q_start,
        q_len,
        k_start,
        k_len,
        causal,
        bidirectional_prefix: prefix,
    }
}

#[test]
fn masked_softmax_matches_cpu_for_every_mask() {
    let g = gpu("masked_softmax_matches_cpu_for_every_mask");
    let (heads, max_q, max_k, scale) = (2, 12, 12, 0.25);
    // Causal; bidirectional (encoder, cross); prefix-bidirectional; shorter rows (per-row
    // lengths), each with and without document resets.
    let rows = [
        row(0, 12, 0, 12, true, 0),
        row(12, 9, 12, 9, false, 0),
        row(21, 10, 21, 10, true, 4),
        row(31, 5, 31, 12, false, 0),
    ];
    let tokens = 43;
    let mut rng = SplitMix64::new(6);
    let q_doc: Vec<u32> = (0..tokens).map(|t| (t / 5) as u32).collect();
    let k_doc = q_doc.clone();
    let shape = ScoresShape {
        rows: rows.len(),
        heads,
        max_q,
        max_k,
    };
    let scores = randn(&mut rng, shape.lines() * max_k, 2.0);
    let dprobs = randn(&mut rng, shape.lines() * max_k, 1.0);
    let desc: Vec<i32> = rows
        .iter()
        .flat_map(AttnRow::fields)
        .map(|v| v as i32)
        .collect();
    for docs in [None, Some((&q_doc[..], &k_doc[..]))] {
        let (mut want_p, mut want_ds) = (vec![0.0f32; scores.len()], vec![0.0f32; scores.len()]);
        for (r, attn_row) in rows.iter().enumerate() {
            for h in 0..heads {
                let base = (r * heads + h) * max_q * max_k;
                let (lq, lk) = (attn_row.q_len, attn_row.k_len);
                let block: Vec<f32> = (0..lq * lk)
                    .map(|e| scores[base + (e / lk) * max_k + e % lk])
                    .collect();
                let p = reference_probs(&block, attn_row, docs, scale);
                for i in 0..lq {
                    let at = base + i * max_k;
                    let dot: f32 = (0..lk).map(|j| p[i * lk + j] * dprobs[at + j]).sum();
                    for j in 0..lk {
                        want_p[at + j] = p[i * lk + j];
                        want_ds[at + j] = p[i * lk + j] * (dprobs[at + j] - dot) * scale;
                    }
                }
            }
        }
        let (sd, dpd, descd) = (g.upload(&scores), g.upload(&dprobs), g.upload(&desc));
        let doc_d = docs.map(|(q, k)| (g.upload(q), g.upload(k)));
        let (mut pd, mut dsd) = (g.zeros(scores.len()), g.zeros(scores.len()));
        let k = &g.kernels;
        let docs_arg = doc_d.as_ref().map(|(q, k)| (q, k));
        k.masked_softmax_forward(&sd, &mut pd, &descd, docs_arg, shape, scale)
            .unwrap();
        k.masked_softmax_backward(&pd, &dpd, &mut dsd, shape, scale)
            .unwrap();
        let label = if docs.is_some() { "with documents" } else { "" };
        assert_close(
            &format!("softmax P {label}"),
            &g.download(&pd),
            &want_p,
            1e-5,
        );
        assert_close(
            &format!("softmax dS {label}"),
            &g.download(&dsd),
            &want_ds,
            1e-5,
        );
    }
}

#[test]
fn attention_packing_round_trips() {
    use redpack_trainer::backend::cuda::kernels::{PackShape, PackSide};
    let g = gpu("attention_packing_round_trips");
    let (heads, head_dim) = (3, 8);
    // Rows with queries and keys at different offsets; one empty.
    let rows = [(0, 5, 0, 2), (5, 0, 2, 4), (5, 7, 6, 3)];
    let desc: Vec<i32> = rows
        .iter()
        .flat_map(|&(qs, ql, ks, kl)| [qs, ql, ks, kl, 0, 0])
        .collect();
    let descd = g.upload(&desc);
    let width = heads * head_dim;
    for (side, tokens, max_len) in [(PackSide::Queries, 12, 7), (PackSide::Keys, 9, 4)] {
        let span = |r: &(i32, i32, i32, i32)| match side {
            PackSide::Queries => (r.0, r.1),
            PackSide::Keys => (r.2, r.3),
        };
        let x: Vec<f32> = (0..tokens * width).map(|v| v as f32 + 1.0).collect();
        let shape = PackShape {
            rows: rows.len(),
            heads,
            head_dim,
            max_len,
            side,
        };
        let mut packed = g.zeros(shape.len());
        g.kernels
            .attn_pack(&g.upload(&x), &mut packed, &descd, shape)
            .unwrap();
        let p = g.download(&packed);
        for (r, row) in rows.iter().enumerate() {
            let (start, len) = span(row);
            for h in 0..heads {
                for i in 0..max_len {
                    for c in 0..head_dim {
                        let at = ((r * heads + h) * max_len + i) * head_dim + c;
                        let want = if (i as i32) < len {
                            x[(start as usize + i) * width + h * head_dim + c]
                        } else {
                            0.0
                        };
                        assert_eq!(p[at], want, "{side:?} row {r} head {h} item {i} col {c}");
                    }
                }
            }
        }
        let mut back = g.zeros(tokens * width);
        g.kernels
            .attn_unpack(&packed, &mut back, &descd, shape)
            .unwrap();
        assert_eq!(g.download(&back), x, "{side:?}: unpack(pack(x)) != x");
    }
}

/// The fused bf16 attention (flash.cu) against the CPU's f32 attention, forward and backward:
/// causal rows over several key tiles with a ragged last tile, a bidirectional row, a causal row
/// with a bidirectional prefix, a row shorter than one tile, and cross-attention with unequal
/// query and key lengths; each with and without document resets (which leave some cross-attention
/// queries seeing no key: zeros), for every head dimension that has a kernel. Operands are
/// rounded to bf16, so the tolerance is bf16's (a few 1e-3 of the largest value) rather than
/// f32's. The backward pass, which sums in a fixed order without atomics, must also give the
/// same bits twice.
#[test]
fn flash_attention_matches_cpu_for_every_mask_and_head_dim() {
    use redpack_trainer::backend::cpu::attention::{
        attention_backward, attention_forward, AttnShape,
    };
    use redpack_trainer::backend::cuda::kernels::{FlashShape, FlashVariant, FLASH_HEAD_DIMS};
    let g = gpu("flash_attention_matches_cpu_for_every_mask_and_head_dim");
    let self_rows = vec![
        row(0, 150, 0, 150, true, 0),
        row(150, 70, 150, 70, false, 0),
        row(220, 100, 220, 100, true, 40),
        row(320, 5, 320, 5, true, 0),
    ];
    let cross_rows = vec![row(0, 90, 0, 130, false, 0), row(90, 33, 130, 7, false, 0)];
    let cases = [
        ("self", self_rows, 325, 325, 23),
        ("cross", cross_rows, 123, 137, 41),
    ];
    let emulated = cuda_support::emulation::active();
    let mut rng = SplitMix64::new(12);
    for hd in FLASH_HEAD_DIMS {
        let heads = 2;
        let da = heads * hd;
        let shape = AttnShape {
            n_heads: heads,
            head_dim: hd,
        };
        for (label, rows, q_tokens, k_tokens, doc_len) in &cases {
            let (q_tokens, k_tokens) = (*q_tokens, *k_tokens);
            let q = randn(&mut rng, q_tokens * da, 1.0);
            let k = randn(&mut rng, k_tokens * da, 1.0);
            let v = randn(&mut rng, k_tokens * da, 1.0);
            let d_out = randn(&mut rng, q_tokens * da, 1.0);
            let q_doc: Vec<u32> = (0..q_tokens).map(|t| (t / doc_len) as u32).collect();
            let k_doc: Vec<u32> = (0..k_tokens).map(|t| (t / 29) as u32).collect();
            let k_doc = if *label == "self" {
                q_doc.clone()
            } else {
                k_doc
            };
            let desc: Vec<i32> = rows
                .iter()
                .flat_map(AttnRow::fields)
                .map(|v| v as i32)
                .collect();
            let basic = FlashShape {
                rows: rows.len(),
                heads,
                head_dim: hd,
                max_q: rows.iter().map(|r| r.q_len).max().unwrap(),
                max_k: rows.iter().map(|r| r.k_len).max().unwrap(),
                variant: FlashVariant::Basic,
                tune: false,
            };
            let mut basic_bits = None;
            for (docs, fshape) in
                [None, Some((&q_doc[..], &k_doc[..]))]
                    .into_iter()
                    .flat_map(|docs| {
                        // Every build, then the builds picked by timing (`auto`).
                        let builds =
                            FlashVariant::ALL.map(|variant| FlashShape { variant, ..basic });
                        let tuned = FlashShape {
                            tune: true,
                            ..basic
                        };
                        builds.into_iter().chain([tuned]).map(move |s| (docs, s))
                    })
            {
                // On the CPU emulation of a GPU (slow), each build runs once per head dimension:
                // on the self-attention case with documents, the cross case with the basic build,
                // and `auto` at head dim 32. The kernels' numerics are checked in full by the
                // emulator's own program (tests/cuda_emulated.rs); here it is the launches.
                if emulated {
                    let wanted = docs.is_some()
                        && match *label {
                            "self" => !fshape.tune || hd == 32,
                            _ => fshape.variant == FlashVariant::Basic && !fshape.tune,
                        };
                    if !wanted {
                        continue;
                    }
                }
                let mut out = vec![0.0f32; q_tokens * da];
                attention_forward(&q, &k, &v, shape, rows, docs, &mut out);
                let (mut dq, mut dk, mut dv) = (
                    vec![0.0f32; q_tokens * da],
                    vec![0.0f32; k_tokens * da],
                    vec![0.0f32; k_tokens * da],
                );
                attention_backward(
                    &q, &k, &v, &d_out, shape, rows, docs, &mut dq, &mut dk, &mut dv,
                );

                // The kernels read bf16 copies (rounded on the device, as the model does).
                let bf16 = |x: &[f32]| g.bf16(&g.upload(x));
                let (qd, kd, vd, dod) = (bf16(&q), bf16(&k), bf16(&v), bf16(&d_out));
                let descd = g.upload(&desc);
                // The kernels' outputs are bf16: widened to f32 on the host.
                let widen = |x: &CudaSlice<u16>| -> Vec<f32> {
                    let bits: Vec<u16> = g.stream.clone_dtoh(x).unwrap();
                    bits.iter()
                        .map(|&b| f32::from_bits(u32::from(b) << 16))
                        .collect()
                };
                let doc_d = docs.map(|(a, b)| (g.upload(a), g.upload(b)));
                let docs_arg = doc_d.as_ref().map(|(a, b)| (a, b));
                let mut od = g.stream.alloc_zeros::<u16>(q_tokens * da).unwrap();
                let mut lse = g.zeros(fshape.lines());
                let k_ = &g.kernels;
                k_.flash_forward(&qd, &kd, &vd, &descd, docs_arg, fshape, &mut od, &mut lse)
                    .unwrap();
                let mut delta = g.zeros(fshape.lines());
                k_.flash_delta(&dod, &od, &descd, fshape, &mut delta)
                    .unwrap();
                let backward = || {
                    // The gradients come back in bf16.
                    let bf16_zeros = |n| g.stream.alloc_zeros::<u16>(n).unwrap();
                    let (mut dqd, mut dkd, mut dvd) = (
                        bf16_zeros(q_tokens * da),
                        bf16_zeros(k_tokens * da),
                        bf16_zeros(k_tokens * da),
                    );
                    k_.flash_backward(
                        &qd,
                        &kd,
                        &vd,
                        &dod,
                        &lse,
                        &delta,
                        &descd,
                        docs_arg,
                        fshape,
                        (&mut dqd, &mut dkd, &mut dvd),
                    )
                    .unwrap();
                    (widen(&dqd), widen(&dkd), widen(&dvd))
                };
                let (gdq, gdk, gdv) = backward();
                let name = format!(
                    "flash {} {label} head_dim {hd}{}",
                    if fshape.tune {
                        "auto"
                    } else {
                        fshape.variant.name()
                    },
                    if docs.is_some() {
                        " with documents"
                    } else {
                        ""
                    }
                );
                assert_close(&format!("{name} out"), &widen(&od), &out, 1e-2);
                assert_close(&format!("{name} dq"), &gdq, &dq, 2e-2);
                assert_close(&format!("{name} dk"), &gdk, &dk, 2e-2);
                assert_close(&format!("{name} dv"), &gdv, &dv, 1e-2);
                let again = backward();
                let got = (widen(&od), gdq, gdk, gdv);
                assert!(
                    (&again.0, &again.1, &again.2) == (&got.1, &got.2, &got.3),
                    "{name}: the backward pass is not deterministic"
                );
                // The variants sum in the same order: the same bits.
                match (fshape.variant, fshape.tune) {
                    (FlashVariant::Basic, false) => basic_bits = Some(got),
                    _ => assert!(
                        basic_bits.as_ref() == Some(&got),
                        "{name}: differs from the basic variant"
                    ),
                }
            }
        }
    }
}
