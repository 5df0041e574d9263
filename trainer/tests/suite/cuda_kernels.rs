//! The CUDA kernels: every source compiles with NVRTC (here and on CI, no GPU needed), the PTX
//! cache works, and each kernel matches the CPU reference's math on random inputs (forward and
//! backward, f32, within about 1e-5 of the tensor's largest value). Without a GPU the parity
//! tests run on the CPU emulation of one (`cuda_support::emulation`). The attention kernels' tests are
//! in `cuda_attention.rs`.

use super::cuda_support;

use cuda_support::{assert_close, gpu, product, randn, require_nvrtc, say, Gpu};
use cudarc::driver::CudaSlice;
use redpack_trainer::backend::cpu::ops;
use redpack_trainer::backend::cuda::kernels::TokenChains;
use redpack_trainer::backend::cuda::kernels::KERNELS;
use redpack_trainer::backend::cuda::runtime::nvrtc::{self, KernelCache};
use redpack_trainer::model::rope::Rope;
use redpack_trainer::rng::SplitMix64;

#[test]
fn every_kernel_compiles_for_sm90_and_sm80() {
    require_nvrtc();
    let version = nvrtc::nvrtc_version().unwrap();
    eprintln!("NVRTC {}.{}", version.0, version.1);
    let mut failures = Vec::new();
    for arch in ["sm_90", "sm_80"] {
        for kernel in KERNELS {
            match nvrtc::compile(kernel.name, &kernel.full_source(), arch) {
                Err(e) => failures.push(e.to_string()),
                // NVRTC says nothing for a clean compile: any log line is a warning.
                Ok(c) if !c.log.is_empty() => {
                    failures.push(format!("{}.cu for {arch} warns:\n{}", kernel.name, c.log))
                }
                Ok(c) => {
                    for entry in kernel.entries {
                        if !c.ptx.contains(&format!(".entry {entry}(")) {
                            failures
                                .push(format!("{}.cu for {arch}: no entry {entry}", kernel.name));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_compile_error_comes_back_with_the_log() {
    require_nvrtc();
    let err = nvrtc::compile("broken", "extern \"C\" __global__ void k( {", "sm_90").unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("broken does not compile for sm_90"),
        "{message}"
    );
    assert!(
        message.contains("broken.cu"),
        "the log names the file: {message}"
    );
}

#[test]
fn the_kernel_cache_compiles_once_then_reads_the_file() {
    require_nvrtc();
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::new(dir.path().join("kernels"));
    let kernel = &KERNELS[0];
    let source = kernel.full_source();
    let ptx = cache.ptx(kernel.name, &source, "sm_90").unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), ptx);
    // A second call is served from the file (marked here so the test can tell).
    std::fs::write(&files[0], "// cached\n").unwrap();
    assert_eq!(
        cache.ptx(kernel.name, &source, "sm_90").unwrap(),
        "// cached\n"
    );
    // A corrupt entry (a NUL byte would make cudarc's loader panic) is compiled anew.
    std::fs::write(&files[0], "bad\0ptx").unwrap();
    assert_eq!(cache.ptx(kernel.name, &source, "sm_90").unwrap(), ptx);
    // Another architecture is another entry.
    cache.ptx(kernel.name, &source, "sm_80").unwrap();
    assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 2);
}

#[test]
fn rmsnorm_with_gain_matches_cpu() {
    let g = gpu("rmsnorm_with_gain_matches_cpu");
    // 37 rows fit one partial sum of the gain's gradient; 1000 take 16, the last one short.
    for (rows, width, eps) in [(37, 96, 1e-6), (1000, 96, 1e-6)] {
        rmsnorm_with_gain_case(&g, rows, width, eps);
    }
}

fn rmsnorm_with_gain_case(g: &Gpu, rows: usize, width: usize, eps: f32) {
    let mut rng = SplitMix64::new(1);
    let x = randn(&mut rng, rows * width, 1.0);
    let gain = randn(&mut rng, width, 1.0);
    let dy = randn(&mut rng, rows * width, 1.0);
    let (dgain0, dx0) = (
        randn(&mut rng, width, 1.0),
        randn(&mut rng, rows * width, 1.0),
    );
    let (y, xhat, inv) = ops::rmsnorm_forward(&x, &gain, eps);
    let (mut dgain, mut dx) = (dgain0.clone(), dx0.clone());
    ops::rmsnorm_backward(&dy, &xhat, &inv, &gain, &mut dgain, &mut dx);

    let (xd, gd, dyd) = (g.upload(&x), g.upload(&gain), g.upload(&dy));
    let (mut yd, mut invd) = (g.zeros(rows * width), g.zeros(rows));
    let k = &g.kernels;
    k.rmsnorm_forward(&xd, Some(&gd), &mut yd, &mut invd, rows, width, eps, None)
        .unwrap();
    let (mut dgd, mut dxd) = (g.upload(&dgain0), g.upload(&dx0));
    // The backward also leaves the updated dx rounded to bf16 (what the next block reads).
    let mut dx_copy = g.stream.alloc_zeros::<u16>(rows * width).unwrap();
    k.rmsnorm_backward(
        &dyd,
        &xd,
        &invd,
        Some(&gd),
        &mut dxd,
        rows,
        width,
        Some(&mut dx_copy),
    )
    .unwrap();
    assert_eq!(
        g.download(&dx_copy),
        g.download(&g.bf16(&dxd)),
        "rmsnorm backward's bf16 copy of dx"
    );
    k.rmsnorm_gain_backward(&dyd, &xd, &invd, &mut dgd, rows)
        .unwrap();
    assert_close("rmsnorm y", &g.download(&yd), &y, 1e-5);
    assert_close("rmsnorm inv", &g.download(&invd), &inv, 1e-5);
    // The bf16 build writes the f32 build's values rounded, bit for bit; here it also keeps a
    // copy of its input, as a residual block's norm does (and refuses a copy too short).
    let mut yb = g.stream.alloc_zeros::<u16>(rows * width).unwrap();
    let mut invb = g.zeros(rows);
    let mut kept = g.zeros(rows * width);
    k.rmsnorm_forward(
        &xd,
        Some(&gd),
        &mut yb,
        &mut invb,
        rows,
        width,
        eps,
        Some(&mut kept),
    )
    .unwrap();
    assert_eq!(g.download(&kept), x, "rmsnorm's kept input");
    let mut short = g.zeros(rows * width - 1);
    assert!(k
        .rmsnorm_forward(
            &xd,
            None,
            &mut yb,
            &mut invb,
            rows,
            width,
            eps,
            Some(&mut short)
        )
        .is_err());
    assert_eq!(
        g.download(&yb),
        g.download(&g.bf16(&yd)),
        "rmsnorm bf16 output"
    );
    assert_eq!(
        g.download(&invb),
        g.download(&invd),
        "rmsnorm bf16 build's inv"
    );
    assert_close("rmsnorm dx", &g.download(&dxd), &dx, 1e-5);
    assert_close("rmsnorm dgain", &g.download(&dgd), &dgain, 1e-5);
}

#[test]
fn per_head_rmsnorm_matches_cpu() {
    let g = gpu("per_head_rmsnorm_matches_cpu");
    let (groups, width, eps) = (53 * 4, 32, 1e-6);
    let mut rng = SplitMix64::new(2);
    let x = randn(&mut rng, groups * width, 2.0);
    let dy = randn(&mut rng, groups * width, 1.0);
    let (xhat, inv) = ops::group_rmsnorm_forward(&x, width, eps);
    let mut dx = dy.clone();
    ops::group_rmsnorm_backward(&mut dx, &xhat, &inv, width);

    let (xd, dyd) = (g.upload(&x), g.upload(&dy));
    let (mut yd, mut invd, mut dxd) = (g.zeros(x.len()), g.zeros(groups), g.zeros(x.len()));
    let k = &g.kernels;
    k.rmsnorm_forward(&xd, None, &mut yd, &mut invd, groups, width, eps, None)
        .unwrap();
    k.rmsnorm_backward(&dyd, &xd, &invd, None, &mut dxd, groups, width, None)
        .unwrap();
    assert_close("head norm y", &g.download(&yd), &xhat, 1e-5);
    assert_close("head norm dx", &g.download(&dxd), &dx, 1e-5);
}

/// The fused attention's input kernel (per-head norm, RoPE, bf16 in one pass) and its backward
/// against the separate kernels they replace: `inv` bit for bit, the outputs within one bf16
/// step (a fused rotation may round its two products differently), most of them identical.
#[test]
fn head_norm_rope_bf16_and_its_backward_match_the_separate_kernels() {
    let g = gpu("head_norm_rope_bf16_and_its_backward_match_the_separate_kernels");
    for (tokens, heads, head_dim) in [(41, 3, 64), (17, 2, 128), (9, 4, 32)] {
        let rope = Rope::new(head_dim, 10_000.0, 64);
        let mut rng = SplitMix64::new(12);
        let n = tokens * heads * head_dim;
        let x = randn(&mut rng, n, 2.0);
        let positions: Vec<u32> = (0..tokens).map(|_| rng.below(64) as u32).collect();
        let (cos, sin) = rope.tables();
        let (cosd, sind, posd) = (g.upload(cos), g.upload(sin), g.upload(&positions));
        // The fused kernels read the projection in bf16 (as the product writes it); the
        // separate kernels get the same values widened to f32.
        let xb = g.bf16(&g.upload(&x));
        let xd = g.upload(&widen(&g, &xb));
        let k = &g.kernels;
        let groups = tokens * heads;
        for rotate in [true, false] {
            let (mut hat, mut inv) = (g.zeros(n), g.zeros(groups));
            k.rmsnorm_forward(&xd, None, &mut hat, &mut inv, groups, head_dim, 1e-6, None)
                .unwrap();
            if rotate {
                k.rope_apply(&mut hat, &posd, &cosd, &sind, heads, head_dim, false)
                    .unwrap();
            }
            let want = g.download(&g.bf16(&hat));
            let mut out = g.stream.alloc_zeros::<u16>(n).unwrap();
            let mut inv_fused = g.zeros(groups);
            let tables = rotate.then_some((&posd, &cosd, &sind));
            k.head_norm_rope_bf16(&xb, &mut out, &mut inv_fused, tables, heads, head_dim, 1e-6)
                .unwrap();
            let name = format!("head_norm_rope_bf16 ({tokens}x{heads}x{head_dim}, rope {rotate})");
            assert_eq!(g.download(&inv_fused), g.download(&inv), "{name}: inv");
            let got = g.download(&out);
            let steps: Vec<i32> = got
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as i16 as i32 - b as i16 as i32).abs())
                .collect();
            let differ = steps.iter().filter(|&&s| s != 0).count();
            say(&format!(
                "{name}: {differ} of {n} values one bf16 step apart"
            ));
            assert!(
                steps.iter().all(|&s| s <= 1),
                "{name}: more than one bf16 step"
            );
            assert!(differ * 100 <= n, "{name}: {differ} of {n} values differ");
            if !rotate {
                assert_eq!(
                    differ, 0,
                    "{name}: the norm alone rounds as the separate kernel"
                );
            }

            // The backward: RoPE inverse then the norm's backward (into zeros), rounded.
            // `dy` arrives in bf16, as the attention's backward writes it.
            let dyb = g.bf16(&g.upload(&randn(&mut rng, n, 1.0)));
            let mut rotated = g.upload(&widen(&g, &dyb));
            if rotate {
                k.rope_apply(&mut rotated, &posd, &cosd, &sind, heads, head_dim, true)
                    .unwrap();
            }
            let mut dx = g.zeros(n);
            k.rmsnorm_backward(&rotated, &xd, &inv, None, &mut dx, groups, head_dim, None)
                .unwrap();
            let want = g.download(&g.bf16(&dx));
            let mut dxb = g.stream.alloc_zeros::<u16>(n).unwrap();
            k.head_norm_rope_backward_bf16(&dyb, &xb, &inv, tables, &mut dxb, heads, head_dim)
                .unwrap();
            let got = g.download(&dxb);
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            say(&format!("{name} backward: {differ} of {n} values differ"));
            let far = got
                .iter()
                .zip(&want)
                .filter(|(&a, &b)| (a as i16 as i32 - b as i16 as i32).abs() > 1)
                .count();
            assert_eq!(
                far, 0,
                "{name} backward: values more than one bf16 step apart"
            );
            assert!(
                differ * 100 <= n,
                "{name} backward: {differ} of {n} values differ"
            );
        }
    }
}

#[test]
fn rope_matches_cpu_forward_and_inverse() {
    let g = gpu("rope_matches_cpu_forward_and_inverse");
    let (tokens, heads, head_dim) = (41, 3, 16);
    let rope = Rope::new(head_dim, 10_000.0, 64);
    let mut rng = SplitMix64::new(3);
    let x = randn(&mut rng, tokens * heads * head_dim, 1.0);
    let positions: Vec<u32> = (0..tokens).map(|_| rng.below(64) as u32).collect();
    let (cos, sin) = rope.tables();
    let (cosd, sind, posd) = (g.upload(cos), g.upload(sin), g.upload(&positions));
    for inverse in [false, true] {
        let mut want = x.clone();
        rope.apply(&mut want, &positions, head_dim, inverse);
        let mut xd = g.upload(&x);
        g.kernels
            .rope_apply(&mut xd, &posd, &cosd, &sind, heads, head_dim, inverse)
            .unwrap();
        assert_close(
            &format!("rope (inverse {inverse})"),
            &g.download(&xd),
            &want,
            1e-5,
        );
    }
}

/// bf16 values on the device, widened to f32 on the host.
fn widen(g: &Gpu, x: &CudaSlice<u16>) -> Vec<f32> {
    let bits: Vec<u16> = g.stream.clone_dtoh(x).unwrap();
    bits.iter()
        .map(|&b| f32::from_bits(u32::from(b) << 16))
        .collect()
}

#[test]
fn swiglu_matches_cpu() {
    let g = gpu("swiglu_matches_cpu");
    let n = 3001;
    let mut rng = SplitMix64::new(4);
    let (gate, up, dh) = (
        randn(&mut rng, n, 3.0),
        randn(&mut rng, n, 1.0),
        randn(&mut rng, n, 1.0),
    );
    let h = ops::swiglu_forward(&gate, &up);
    let (dgate, dup) = ops::swiglu_backward(&dh, &gate, &up);
    let (gd, ud, dhd) = (g.upload(&gate), g.upload(&up), g.upload(&dh));
    let (mut hd, mut dgd, mut dud) = (g.zeros(n), g.zeros(n), g.zeros(n));
    g.kernels.swiglu_forward(&gd, &ud, &mut hd).unwrap();
    g.kernels
        .swiglu_backward(&dhd, &gd, &ud, &mut dgd, &mut dud)
        .unwrap();
    assert_close("swiglu h", &g.download(&hd), &h, 1e-5);
    assert_close("swiglu dgate", &g.download(&dgd), &dgate, 1e-5);
    assert_close("swiglu dup", &g.download(&dud), &dup, 1e-5);
    // The bf16 builds read bf16 (as the products write it) and write bf16: the f32 builds'
    // results on the rounded inputs, rounded, bit for bit.
    let (gb, ub, dhb) = (g.bf16(&gd), g.bf16(&ud), g.bf16(&dhd));
    let (gr, ur, dhr) = (
        g.upload(&widen(&g, &gb)),
        g.upload(&widen(&g, &ub)),
        g.upload(&widen(&g, &dhb)),
    );
    g.kernels.swiglu_forward(&gr, &ur, &mut hd).unwrap();
    g.kernels
        .swiglu_backward(&dhr, &gr, &ur, &mut dgd, &mut dud)
        .unwrap();
    let bf16_zeros = || g.stream.alloc_zeros::<u16>(n).unwrap();
    let (mut hb, mut dgb, mut dub) = (bf16_zeros(), bf16_zeros(), bf16_zeros());
    g.kernels.swiglu_forward(&gb, &ub, &mut hb).unwrap();
    g.kernels
        .swiglu_backward(&dhb, &gb, &ub, &mut dgb, &mut dub)
        .unwrap();
    for (name, got, f32_out) in [("h", &hb, &hd), ("dgate", &dgb, &dgd), ("dup", &dub, &dud)] {
        let want = g.download(&g.bf16(f32_out));
        assert_eq!(g.download(got), want, "swiglu bf16 {name}");
    }
}

#[test]
fn embedding_matches_cpu_bit_for_bit() {
    let g = gpu("embedding_matches_cpu_bit_for_bit");
    let (vocab, d, n) = (50, 24, 300);
    let mut rng = SplitMix64::new(5);
    let embed = randn(&mut rng, vocab * d, 1.0);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64) as u32).collect();
    let dx = randn(&mut rng, n * d, 1.0);
    let d_embed0 = randn(&mut rng, vocab * d, 1.0);
    let gathered: Vec<f32> = tokens
        .iter()
        .flat_map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec())
        .collect();
    // The CPU reference's scatter-add, in token order.
    let mut d_embed = d_embed0.clone();
    for (row, &t) in dx.chunks(d).zip(&tokens) {
        for (a, b) in d_embed[t as usize * d..(t as usize + 1) * d]
            .iter_mut()
            .zip(row)
        {
            *a += b;
        }
    }
    let chains = TokenChains::new(&tokens);
    let (ed, td, dxd) = (g.upload(&embed), g.upload(&tokens), g.upload(&dx));
    let (fd, nd) = (g.upload(&chains.first), g.upload(&chains.next));
    let (mut out, mut ded) = (g.zeros(n * d), g.upload(&d_embed0));
    g.kernels.embedding_forward(&ed, &td, &mut out, d).unwrap();
    g.kernels
        .embedding_backward(&dxd, &td, &fd, &nd, &mut ded, d)
        .unwrap();
    assert_close("embedding forward", &g.download(&out), &gathered, 0.0);
    assert_close("embedding backward", &g.download(&ded), &d_embed, 0.0);
}

#[test]
fn cross_entropy_matches_cpu_logits_loss() {
    use redpack_trainer::backend::cpu::loss::{logits_loss, LossGrads};
    use redpack_trainer::model::stream::Scored;
    let g = gpu("cross_entropy_matches_cpu_logits_loss");
    let (tokens, vocab, d, z_loss) = (19, 700, 32, 1e-4f32);
    let scale = 1.0 / (d as f32).sqrt();
    let mut rng = SplitMix64::new(7);
    let hidden = randn(&mut rng, tokens * d, 1.0);
    let embed = randn(&mut rng, vocab * d, 1.0);
    let targets: Vec<u32> = (0..tokens)
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    let scored: Vec<Scored> = (0..tokens)
        .map(|t| Scored {
            index: t,
            row: 0,
            target: targets[t],
        })
        .collect();
    let (mut d_embed, mut d_hidden) = (vec![0.0f32; vocab * d], vec![0.0f32; tokens * d]);
    let grads = LossGrads {
        embed: &mut d_embed,
        hidden: &mut d_hidden,
    };
    let (stats, token_ce) = logits_loss(&hidden, &embed, d, &scored, 1, z_loss, Some(grads));

    // The logits chunk the matmul will produce, computed here in f64.
    let logits: Vec<f32> = product(
        tokens,
        vocab,
        d,
        |t, c| hidden[t * d + c],
        |c, v| embed[v * d + c],
    )
    .iter()
    .map(|l| l * scale)
    .collect();
    let (ld, td) = (g.upload(&logits), g.upload(&targets));
    let (mut lzd, mut ced, mut zd) = (g.zeros(tokens), g.zeros(tokens), g.zeros(tokens));
    let k = &g.kernels;
    k.cross_entropy_forward(&ld, &td, &mut lzd, &mut ced, &mut zd, vocab, z_loss)
        .unwrap();
    // The bf16 build gives the f32 gradient's values rounded, bit for bit.
    let mut gd = g.zeros(tokens * vocab);
    k.cross_entropy_backward(&ld, &mut gd, &td, &lzd, vocab, z_loss, scale)
        .unwrap();
    let mut gb = g.stream.alloc_zeros::<u16>(tokens * vocab).unwrap();
    k.cross_entropy_backward(&ld, &mut gb, &td, &lzd, vocab, z_loss, scale)
        .unwrap();
    assert_eq!(
        g.download(&gb),
        g.download(&g.bf16(&gd)),
        "cross-entropy bf16 gradient"
    );
    assert_eq!(g.download(&ld), logits, "the logits are left as they are");
    // The fused kernel of a training step: the same bits from one read of the logits.
    let (mut lzf, mut cef, mut zf) = (g.zeros(tokens), g.zeros(tokens), g.zeros(tokens));
    let mut gf = g.zeros(tokens * vocab);
    k.cross_entropy_fused(
        &ld,
        &td,
        (&mut lzf, &mut cef, &mut zf),
        &mut gf,
        vocab,
        z_loss,
        scale,
    )
    .unwrap();
    for (name, got, want) in [
        ("log Z", &lzf, &lzd),
        ("loss", &cef, &ced),
        ("z-loss", &zf, &zd),
        ("gradient", &gf, &gd),
    ] {
        assert_eq!(
            g.download(got),
            g.download(want),
            "fused cross-entropy {name}"
        );
    }
    let mut gfb = g.stream.alloc_zeros::<u16>(tokens * vocab).unwrap();
    k.cross_entropy_fused(
        &ld,
        &td,
        (&mut lzf, &mut cef, &mut zf),
        &mut gfb,
        vocab,
        z_loss,
        scale,
    )
    .unwrap();
    assert_eq!(
        g.download(&gfb),
        g.download(&gb),
        "fused cross-entropy bf16 gradient"
    );
    let too_big = redpack_trainer::backend::cuda::kernels::CE_FUSED_VOCAB + 1;
    assert!(
        k.cross_entropy_fused(
            &ld,
            &td,
            (&mut lzf, &mut cef, &mut zf),
            &mut gf,
            too_big,
            z_loss,
            scale
        )
        .is_err(),
        "a vocabulary past the registers is refused"
    );
    let want_ce: Vec<f32> = token_ce.iter().map(|&v| v as f32).collect();
    assert_close("cross-entropy per token", &g.download(&ced), &want_ce, 1e-5);
    let z_sum: f64 = g.download(&zd).iter().map(|&v| v as f64).sum();
    assert_close(
        "z-loss sum",
        &[z_sum as f32],
        &[stats.z_loss_sum as f32],
        1e-5,
    );

    // Chain the logits gradient through the products as the backend will: dh = G E, dE = Gᵀ h.
    let grad = g.download(&gd);
    let dh = product(
        tokens,
        d,
        vocab,
        |t, v| grad[t * vocab + v],
        |v, c| embed[v * d + c],
    );
    let de = product(
        vocab,
        d,
        tokens,
        |v, t| grad[t * vocab + v],
        |t, c| hidden[t * d + c],
    );
    assert_close("cross-entropy d hidden", &dh, &d_hidden, 1e-5);
    assert_close("cross-entropy d embed", &de, &d_embed, 1e-5);
}

#[test]
fn a_warning_shows_in_the_log() {
    // The compile test refuses any log output; this checks that NVRTC does report warnings
    // there (an unused variable), so a warning in a kernel cannot slip through.
    require_nvrtc();
    let source = "extern \"C\" __global__ void k(float* x) { int unused = 1; x[0] = 0.0f; }";
    let compiled = nvrtc::compile("warns", source, "sm_90").unwrap();
    assert!(compiled.log.contains("warning"), "log: {:?}", compiled.log);
}

#[test]
fn dropout_matches_cpu_bit_for_bit() {
    let g = gpu("dropout_matches_cpu_bit_for_bit");
    let (tokens, width) = (67, 40);
    let mut rng = SplitMix64::new(8);
    let x = randn(&mut rng, tokens * width, 1.0);
    let rows: Vec<u32> = (0..tokens).map(|t| (t / 20) as u32).collect();
    let positions: Vec<u32> = (0..tokens).map(|t| (t % 20 + 3) as u32).collect();
    let dropout = ops::Dropout {
        p: 0.3,
        seed: 0x1234_5678_9abc_def0,
        site: (2u64 << 32) | 5,
    };
    let mut want = x.clone();
    dropout.apply(&mut want, &rows, &positions);
    let mut xd = g.upload(&x);
    g.kernels
        .dropout_apply(
            &mut xd,
            &g.upload(&rows),
            &g.upload(&positions),
            width,
            dropout.p,
            dropout.seed,
            dropout.site,
        )
        .unwrap();
    let got = g.download(&xd);
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let dropped = want.iter().filter(|v| **v == 0.0).count();
    eprintln!(
        "dropout: {dropped} of {} dropped, {differ} differ",
        want.len()
    );
    assert_eq!(differ, 0, "dropout masks differ from the CPU's");
}

#[test]
fn residual_add_and_bf16_conversion_match_the_host() {
    let g = gpu("residual_add_and_bf16_conversion_match_the_host");
    let mut rng = SplitMix64::new(9);
    let mut x = randn(&mut rng, 1001, 3.0);
    x[0] = f32::NAN;
    x[1] = f32::INFINITY;
    x[2] = -0.0;
    x[3] = f32::from_bits(0x3f80_8000); // a tie: rounds to even
    x[4] = f32::from_bits(0x3f81_8000); // a tie: rounds up to even
    let y = randn(&mut rng, 1001, 1.0);
    let mut xd = g.upload(&x);
    let mut bf = g.stream.alloc_zeros::<u16>(x.len()).unwrap();
    g.kernels.f32_to_bf16(&xd, &mut bf).unwrap();
    let got: Vec<u16> = g.download(&bf);
    for (i, (&v, &b)) in x.iter().zip(&got).enumerate() {
        let bits = v.to_bits();
        let want = if v.is_nan() {
            ((bits >> 16) | 0x40) as u16
        } else {
            ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
        };
        assert_eq!(b, want, "bf16 of element {i} ({v})");
    }
    g.kernels.add_inplace(&mut xd, &g.upload(&y)).unwrap();
    let sum = g.download(&xd);
    for i in 5..x.len() {
        assert_eq!(sum[i].to_bits(), (x[i] + y[i]).to_bits(), "sum {i}");
    }
}

#[test]
fn cublas_products_match_the_cpu_reference() {
    use redpack_trainer::backend::cuda::blas::{Blas, BlasEngine};
    let g = gpu("cublas_products_match_the_cpu_reference");
    for engine in [BlasEngine::GemmEx, BlasEngine::Lt] {
        let blas = Blas::with_engine(g.stream.clone(), engine).expect("cuBLAS");
        assert_eq!(blas.engine(), engine);
        check_products(&g, &blas);
    }
}

/// Every product shape the model uses, on small odd sizes (so cuBLASLt also meets operands
/// aligned to only 4 bytes), against host products, in both precisions.
fn check_products(g: &Gpu, blas: &redpack_trainer::backend::cuda::blas::Blas) {
    use redpack_trainer::backend::cpu::matmul;
    use redpack_trainer::backend::cuda::blas::products::{self, AttnSizes};
    use redpack_trainer::backend::cuda::blas::Operand;
    use redpack_trainer::backend::Precision;
    let engine = blas.engine().name();
    let mut rng = SplitMix64::new(10);
    for precision in [Precision::F32, Precision::Bf16] {
        // f32 products agree to rounding; bf16 operands to about 2^-8 of the values.
        let tol = match precision {
            Precision::F32 => 1e-5,
            Precision::Bf16 => 2e-2,
        };
        // In the bf16 mode each product also runs on bf16 copies made beforehand (the operands
        // the model converts once and reuses): the same rounding, so the same bits.
        let run = |(spec, la, lb), a: &[f32], b: &[f32], c0: &[f32]| {
            let (ad, bd) = (g.upload(a), g.upload(b));
            let product = |a: Operand<'_>, b: Operand<'_>| {
                let mut c = g.upload(c0);
                blas.gemm(&g.kernels, precision, spec, a, la, b, lb, (&mut c).into())
                    .unwrap();
                g.download(&c)
            };
            let got = product((&ad).into(), (&bd).into());
            // A bf16 result (what the FFN's products write): the f32 one rounded, give or take
            // an ulp of it or of the bf16 `C` it adds to. The f32 mode refuses one.
            let mut c16 = g.bf16(&g.upload(c0));
            let bf16_out = blas.gemm(
                &g.kernels,
                precision,
                spec,
                (&ad).into(),
                la,
                (&bd).into(),
                lb,
                (&mut c16).into(),
            );
            match precision {
                Precision::F32 => assert!(bf16_out.is_err(), "the f32 mode wrote a bf16 result"),
                Precision::Bf16 => {
                    bf16_out.unwrap();
                    let bits: Vec<u16> = g.stream.clone_dtoh(&c16).unwrap();
                    for (i, (&b, &want)) in bits.iter().zip(&got).enumerate() {
                        let v = f32::from_bits(u32::from(b) << 16);
                        let ulp = want.abs().max(c0[i].abs() * spec.beta.abs()) / 128.0;
                        assert!(
                            (v - want).abs() <= ulp + 1e-6,
                            "{engine} bf16 result {i}: {v} against {want}"
                        );
                    }
                }
            }
            if precision == Precision::Bf16 {
                let (ab, bb) = (g.bf16(&ad), g.bf16(&bd));
                let again = product((&ab).into(), (&bb).into());
                assert_eq!(again, got, "bf16 copies made beforehand differ");
            }
            got
        };
        let (m, k, n) = (37, 24, 19);
        let x = randn(&mut rng, m * k, 1.0);
        let w = randn(&mut rng, n * k, 1.0);
        let dy = randn(&mut rng, m * n, 1.0);
        let base = randn(&mut rng, m * n, 1.0);
        let mut want = base.clone();
        matmul::linear_forward(&mut want, &x, &w, m, k, n, true);
        let got = run(products::linear_forward(m, k, n, true), &x, &w, &base);
        assert_close(&format!("{precision:?} linear_forward"), &got, &want, tol);
        let base = randn(&mut rng, m * k, 1.0);
        let mut want = base.clone();
        matmul::linear_backward_input(&mut want, &dy, &w, m, k, n, true);
        let got = run(
            products::linear_backward_input(m, k, n, true),
            &dy,
            &w,
            &base,
        );
        assert_close(
            &format!("{precision:?} linear_backward_input"),
            &got,
            &want,
            tol,
        );
        let base = randn(&mut rng, n * k, 1.0);
        let mut want = base.clone();
        matmul::linear_backward_weight(&mut want, &dy, &x, m, k, n);
        let got = run(products::linear_backward_weight(m, k, n), &dy, &x, &base);
        assert_close(
            &format!("{precision:?} linear_backward_weight"),
            &got,
            &want,
            tol,
        );

        // Batched attention products against per-entry host products.
        let s = AttnSizes {
            batch: 6,
            max_q: 9,
            max_k: 5,
            head_dim: 8,
        };
        let (b, mq, mk, hd) = (s.batch, s.max_q, s.max_k, s.head_dim);
        let q = randn(&mut rng, b * mq * hd, 1.0);
        let kk = randn(&mut rng, b * mk * hd, 1.0);
        let sc = randn(&mut rng, b * mq * mk, 1.0);
        let per = |rows: usize, cols: usize, f: &dyn Fn(usize, usize, usize) -> f32| {
            (0..b * rows * cols)
                .map(|at| f(at / (rows * cols), at / cols % rows, at % cols))
                .collect::<Vec<f32>>()
        };
        let dot =
            |n: usize, f: &dyn Fn(usize) -> f32| (0..n).map(|p| f(p) as f64).sum::<f64>() as f32;
        let cases: Vec<(&str, Vec<f32>, Vec<f32>)> = vec![
            (
                "scores Q Kt",
                run(s.scores(), &q, &kk, &vec![0.0; b * mq * mk]),
                per(mq, mk, &|e, i, j| {
                    dot(hd, &|p| {
                        q[(e * mq + i) * hd + p] * kk[(e * mk + j) * hd + p]
                    })
                }),
            ),
            (
                "output P V",
                run(s.output(), &sc, &kk, &vec![0.0; b * mq * hd]),
                per(mq, hd, &|e, i, c| {
                    dot(mk, &|p| {
                        sc[(e * mq + i) * mk + p] * kk[(e * mk + p) * hd + c]
                    })
                }),
            ),
            (
                "d_values Pt dO",
                run(s.d_values(), &sc, &q, &vec![0.0; b * mk * hd]),
                per(mk, hd, &|e, j, c| {
                    dot(mq, &|p| {
                        sc[(e * mq + p) * mk + j] * q[(e * mq + p) * hd + c]
                    })
                }),
            ),
            (
                "d_keys dSt Q",
                run(s.d_keys(), &sc, &q, &vec![0.0; b * mk * hd]),
                per(mk, hd, &|e, j, c| {
                    dot(mq, &|p| {
                        sc[(e * mq + p) * mk + j] * q[(e * mq + p) * hd + c]
                    })
                }),
            ),
        ];
        for (name, got, want) in cases {
            assert_close(&format!("{engine} {precision:?} {name}"), &got, &want, tol);
        }
    }
}

/// cuBLASLt at a model's sizes (a DecLLM-150M projection, aligned as the allocator aligns):
/// one plan per shape however often it runs, the same bits on every run, and the products of
/// `cublasGemmEx` up to summation order.
#[test]
fn cublaslt_plans_are_built_once_and_give_the_same_bits_every_run() {
    use redpack_trainer::backend::cuda::blas::products;
    use redpack_trainer::backend::cuda::blas::{Blas, BlasEngine};
    use redpack_trainer::backend::Precision;
    let g = gpu("cublaslt_plans_are_built_once_and_give_the_same_bits_every_run");
    let lt = Blas::with_engine(g.stream.clone(), BlasEngine::Lt).expect("cuBLASLt");
    let ex = Blas::with_engine(g.stream.clone(), BlasEngine::GemmEx).expect("cuBLAS");
    let mut rng = SplitMix64::new(11);
    // Smaller on the CPU emulation of a GPU (its products are plain loops), with the same
    // alignments: every dimension a multiple of 16.
    let (m, k, n) = if cuda_support::emulation::active() {
        (128, 96, 288)
    } else {
        (1024, 768, 2304)
    };
    let x = g.upload(&randn(&mut rng, m * k, 1.0));
    let w = g.upload(&randn(&mut rng, n * k, 0.05));
    let (xb, wb) = (g.bf16(&x), g.bf16(&w));
    let run = |blas: &Blas, accumulate: bool| {
        let (spec, la, lb) = products::linear_forward(m, k, n, accumulate);
        let mut c = g.upload(&vec![0.5f32; m * n]);
        blas.gemm(
            &g.kernels,
            Precision::Bf16,
            spec,
            (&xb).into(),
            la,
            (&wb).into(),
            lb,
            (&mut c).into(),
        )
        .unwrap();
        g.download(&c)
    };
    let first = run(&lt, false);
    for _ in 0..3 {
        assert_eq!(
            run(&lt, false),
            first,
            "cuBLASLt gave other bits on a later run"
        );
    }
    assert_eq!(lt.cached_plans(), 1, "one shape, one plan");
    let accumulated = run(&lt, true);
    assert_eq!(
        lt.cached_plans(),
        1,
        "beta is a launch argument, not part of the plan"
    );
    let want = run(&ex, false);
    assert_close("cuBLASLt against cublasGemmEx", &first, &want, 1e-5);
    let shifted: Vec<f32> = want.iter().map(|v| v + 0.5).collect();
    assert_close("cuBLASLt with beta 1", &accumulated, &shifted, 1e-5);
}
