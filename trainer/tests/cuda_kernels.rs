//! The CUDA kernels: every source compiles with NVRTC (here and on CI, no GPU needed), the PTX
//! cache works, and each kernel matches the CPU reference's math on random inputs (forward and
//! backward, f32, within about 1e-5 of the tensor's largest value). The parity tests need a GPU:
//! without one they print `SKIPPED: no CUDA device` and return.

mod cuda_support;

use cuda_support::{assert_close, gpu, product, randn, reference_probs, require_nvrtc};
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
    let (rows, width, eps) = (37, 96, 1e-6);
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
        .flat_map(|r| {
            [
                r.q_start,
                r.q_len,
                r.k_start,
                r.k_len,
                r.causal as usize,
                r.bidirectional_prefix,
            ]
        })
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
                .adafactor_update(step, &mut pd, &gd, moment, m.as_mut(), &mut scratch)
                .unwrap();
            // Compare the updates, which are small next to the parameters.
            let delta = |p: &[f32], b: &[f32]| -> Vec<f32> {
                p.iter().zip(b).map(|(x, y)| x - y).collect()
            };
            let gpu_update = delta(&g.download(&pd), &before_gpu);
            let cpu_update = delta(&params.tensors[0].data, &before);
            assert_close(
                &format!("adafactor {label} update {t}"),
                &gpu_update,
                &cpu_update,
                2e-5,
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
