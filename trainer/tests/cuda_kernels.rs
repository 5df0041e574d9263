//! The CUDA kernels: every source compiles with NVRTC (here and on CI, no GPU needed), the PTX
//! cache works, and each kernel matches the CPU reference's math on random inputs (forward and
//! backward, f32, within about 1e-5 of the tensor's largest value). The parity tests need a GPU:
//! without one they print `SKIPPED: no CUDA device` and return.

mod cuda_support;

use cuda_support::{assert_close, gpu, product, randn, reference_probs, require_nvrtc, Gpu};
use redpack_trainer::backend::cpu::attention::AttnRow;
use redpack_trainer::backend::cpu::ops;
use redpack_trainer::backend::cuda::kernels::KERNELS;
use redpack_trainer::backend::cuda::launch_tokens::{ScoresShape, TokenChains};
use redpack_trainer::backend::cuda::nvrtc::{self, KernelCache};
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
    let Some(g) = gpu("rmsnorm_with_gain_matches_cpu") else {
        return;
    };
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
    k.rmsnorm_forward(&xd, Some(&gd), &mut yd, &mut invd, rows, width, eps)
        .unwrap();
    let (mut dgd, mut dxd) = (g.upload(&dgain0), g.upload(&dx0));
    k.rmsnorm_backward(&dyd, &xd, &invd, Some(&gd), &mut dxd, rows, width)
        .unwrap();
    k.rmsnorm_gain_backward(&dyd, &xd, &invd, &mut dgd, rows)
        .unwrap();
    assert_close("rmsnorm y", &g.download(&yd), &y, 1e-5);
    assert_close("rmsnorm inv", &g.download(&invd), &inv, 1e-5);
    assert_close("rmsnorm dx", &g.download(&dxd), &dx, 1e-5);
    assert_close("rmsnorm dgain", &g.download(&dgd), &dgain, 1e-5);
}

#[test]
fn per_head_rmsnorm_matches_cpu() {
    let Some(g) = gpu("per_head_rmsnorm_matches_cpu") else {
        return;
    };
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
    k.rmsnorm_forward(&xd, None, &mut yd, &mut invd, groups, width, eps)
        .unwrap();
    k.rmsnorm_backward(&dyd, &xd, &invd, None, &mut dxd, groups, width)
        .unwrap();
    assert_close("head norm y", &g.download(&yd), &xhat, 1e-5);
    assert_close("head norm dx", &g.download(&dxd), &dx, 1e-5);
}

#[test]
fn rope_matches_cpu_forward_and_inverse() {
    let Some(g) = gpu("rope_matches_cpu_forward_and_inverse") else {
        return;
    };
    let (tokens, heads, head_dim) = (41, 3, 16);
    let rope = ops::Rope::new(head_dim, 10_000.0, 64);
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

#[test]
fn swiglu_matches_cpu() {
    let Some(g) = gpu("swiglu_matches_cpu") else {
        return;
    };
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
}

#[test]
fn embedding_matches_cpu_bit_for_bit() {
    let Some(g) = gpu("embedding_matches_cpu_bit_for_bit") else {
        return;
    };
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
fn masked_softmax_matches_cpu_for_every_mask() {
    let Some(g) = gpu("masked_softmax_matches_cpu_for_every_mask") else {
        return;
    };
    let (heads, max_q, max_k, scale) = (2, 12, 12, 0.25);
    let row = |q_start, q_len, k_start, k_len, causal, prefix| AttnRow {
        q_start,
        q_len,
        k_start,
        k_len,
        causal,
        bidirectional_prefix: prefix,
    };
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
fn cross_entropy_matches_cpu_logits_loss() {
    use redpack_trainer::backend::cpu::loss::{logits_loss, LossGrads};
    use redpack_trainer::backend::cpu::stream::Scored;
    let Some(g) = gpu("cross_entropy_matches_cpu_logits_loss") else {
        return;
    };
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
    let (mut ld, td) = (g.upload(&logits), g.upload(&targets));
    let (mut lzd, mut ced, mut zd) = (g.zeros(tokens), g.zeros(tokens), g.zeros(tokens));
    let k = &g.kernels;
    k.cross_entropy_forward(&ld, &td, &mut lzd, &mut ced, &mut zd, vocab, z_loss)
        .unwrap();
    k.cross_entropy_backward(&mut ld, &td, &lzd, vocab, z_loss, scale)
        .unwrap();
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
    let grad = g.download(&ld);
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
fn adafactor_matches_cpu_full_factored_and_with_momentum() {
    use redpack_trainer::backend::cuda::launch_adafactor::{
        AdafactorScratch, AdafactorStep, DeviceMoment,
    };
    use redpack_trainer::optim::adafactor::{beta2, Adafactor, AdafactorConfig};
    use redpack_trainer::params::{ParamStore, Tensor};
    let Some(g) = gpu("adafactor_matches_cpu_full_factored_and_with_momentum") else {
        return;
    };
    let factored = AdafactorConfig {
        factored: true,
        ..AdafactorConfig::default()
    };
    let momentum = AdafactorConfig {
        beta1: Some(0.9),
        clipping_threshold: None,
        multiply_by_parameter_scale: false,
        ..AdafactorConfig::default()
    };
    let (rows, cols, lr) = (128, 160, 1e-2);
    let mut rng = SplitMix64::new(8);
    for (label, config) in [
        ("full", AdafactorConfig::default()),
        ("factored", factored),
        ("momentum", momentum),
    ] {
        let start = randn(&mut rng, rows * cols, 0.05);
        let grads: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, rows * cols, 1e-2)).collect();
        let store = |data: Vec<f32>| ParamStore {
            names: vec!["w".to_string()],
            tensors: vec![Tensor {
                shape: vec![rows, cols],
                data,
            }],
        };
        let mut params = store(start.clone());
        let mut optimizer = Adafactor::new(config.clone(), &params).unwrap();
        let is_factored = config.factors(&[rows, cols]);
        let mut pd = g.upload(&start);
        let mut v_full = g.zeros(if is_factored { 1 } else { rows * cols });
        let (mut v_row, mut v_col) = (g.zeros(rows), g.zeros(cols));
        let mut m = config.beta1.map(|_| g.zeros(rows * cols));
        let mut scratch = AdafactorScratch::new(&g.stream, rows * cols).unwrap();
        for (t, grad) in grads.iter().enumerate() {
            let before = params.tensors[0].data.clone();
            let before_gpu = g.download(&pd);
            optimizer
                .update(&mut params, &store(grad.clone()), lr)
                .unwrap();
            let gd = g.upload(grad);
            let step = AdafactorStep {
                config: &config,
                beta2: beta2(config.decay_rate, t as u64),
                lr,
            };
            let moment = if is_factored {
                DeviceMoment::Factored {
                    v_row: &mut v_row,
                    v_col: &mut v_col,
                }
            } else {
                DeviceMoment::Full(&mut v_full)
            };
            g.kernels
                .adafactor_update(step, &mut pd, &gd, moment, m.as_mut(), &mut scratch, None)
                .unwrap();
            // Compare the updates, which are small next to the parameters.
            let delta = |p: &[f32], b: &[f32]| -> Vec<f32> {
                p.iter().zip(b).map(|(x, y)| x - y).collect()
            };
            let gpu_update = delta(&g.download(&pd), &before_gpu);
            let cpu_update = delta(&params.tensors[0].data, &before);
            // The updates are read back as differences of parameters about 100 times larger,
            // so one ulp of a parameter (the rounding of the final add on either side) is
            // already a few 1e-5 of the largest update: the tolerance is 1e-5 plus that ulp.
            let p_max = params.tensors[0]
                .data
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            let ulp = f32::from_bits(p_max.to_bits() + 1) - p_max;
            let u_max = cpu_update
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(1e-30);
            assert_close(
                &format!("adafactor {label} update {t}"),
                &gpu_update,
                &cpu_update,
                1e-5 + f64::from(ulp / u_max),
            );
        }
    }
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
    let Some(g) = gpu("dropout_matches_cpu_bit_for_bit") else {
        return;
    };
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
    let Some(g) = gpu("residual_add_and_bf16_conversion_match_the_host") else {
        return;
    };
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
fn attention_packing_round_trips() {
    use redpack_trainer::backend::cuda::launch_model::{PackShape, PackSide};
    let Some(g) = gpu("attention_packing_round_trips") else {
        return;
    };
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

#[test]
fn cublas_products_match_the_cpu_reference() {
    use redpack_trainer::backend::cpu::matmul;
    use redpack_trainer::backend::cuda::blas::{Blas, Operand, Precision};
    use redpack_trainer::backend::cuda::products::{self, AttnSizes};
    let Some(g) = gpu("cublas_products_match_the_cpu_reference") else {
        return;
    };
    let blas = Blas::new(g.stream.clone()).expect("cuBLAS");
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
                blas.gemm(&g.kernels, precision, spec, a, la, b, lb, &mut c)
                    .unwrap();
                g.download(&c)
            };
            let got = product((&ad).into(), (&bd).into());
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
            assert_close(&format!("{precision:?} {name}"), &got, &want, tol);
        }
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
    use redpack_trainer::backend::cuda::launch_flash::{FlashShape, FlashVariant, FLASH_HEAD_DIMS};
    let Some(g) = gpu("flash_attention_matches_cpu_for_every_mask_and_head_dim") else {
        return;
    };
    let row = |q_start, q_len, k_start, k_len, causal, prefix| AttnRow {
        q_start,
        q_len,
        k_start,
        k_len,
        causal,
        bidirectional_prefix: prefix,
    };
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
            };
            let pipelined = FlashShape {
                variant: FlashVariant::Pipelined,
                ..basic
            };
            let mut basic_bits = None;
            for (docs, fshape) in [None, Some((&q_doc[..], &k_doc[..]))]
                .into_iter()
                .flat_map(|docs| [(docs, basic), (docs, pipelined)])
            {
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
                let doc_d = docs.map(|(a, b)| (g.upload(a), g.upload(b)));
                let docs_arg = doc_d.as_ref().map(|(a, b)| (a, b));
                let mut od = g.zeros(q_tokens * da);
                let mut lse = g.zeros(fshape.lines());
                let k_ = &g.kernels;
                k_.flash_forward(&qd, &kd, &vd, &descd, docs_arg, fshape, &mut od, &mut lse)
                    .unwrap();
                let mut delta = g.zeros(fshape.lines());
                k_.flash_delta(&dod, &g.bf16(&od), &descd, fshape, &mut delta)
                    .unwrap();
                let backward = || {
                    let (mut dqd, mut dkd, mut dvd) = (
                        g.zeros(q_tokens * da),
                        g.zeros(k_tokens * da),
                        g.zeros(k_tokens * da),
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
                    (g.download(&dqd), g.download(&dkd), g.download(&dvd))
                };
                let (gdq, gdk, gdv) = backward();
                let name = format!(
                    "flash {:?} {label} head_dim {hd}{}",
                    fshape.variant,
                    if docs.is_some() {
                        " with documents"
                    } else {
                        ""
                    }
                );
                assert_close(&format!("{name} out"), &g.download(&od), &out, 1e-2);
                assert_close(&format!("{name} dq"), &gdq, &dq, 2e-2);
                assert_close(&format!("{name} dk"), &gdk, &dk, 2e-2);
                assert_close(&format!("{name} dv"), &gdv, &dv, 1e-2);
                let again = backward();
                let got = (g.download(&od), gdq, gdk, gdv);
                assert!(
                    (&again.0, &again.1, &again.2) == (&got.1, &got.2, &got.3),
                    "{name}: the backward pass is not deterministic"
                );
                // Both variants sum in the same order: the same bits.
                match fshape.variant {
                    FlashVariant::Basic => basic_bits = Some(got),
                    FlashVariant::Pipelined => assert!(
                        basic_bits.as_ref() == Some(&got),
                        "{name}: differs from the basic variant"
                    ),
                }
            }
        }
    }
}
