//! The CUDA backend against the CPU reference, whole model at a time: one training step of a
//! `tiny` model of each architecture (the loss and every parameter's gradient, f32), the masks
//! (DecLLM + BiAttn, document resets, cross-attention), dropout (the same masks on both
//! devices), forward-only evaluation, 20 optimizer steps whose losses must track the CPU's, and
//! one bf16 step within mixed-precision tolerances; random batches and options; one layer at the
//! paper's 150M shapes; and, on the CPU emulation of a GPU, whole steps under AddressSanitizer.
//! Without a GPU the tests run on that emulation (`cuda_support::emulation`), and without a C++
//! compiler to build it they fail, naming what to install.

use super::cuda_support;

use cuda_support::{assert_close, require_nvrtc, say};
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::cuda::{CudaBackend, CudaOptions};
use redpack_trainer::backend::Backend;
use redpack_trainer::backend::Precision;
use redpack_trainer::batch::{Batch, LossStats, StepOptions};
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::optim::{self, Adafactor, AdafactorConfig};
use redpack_trainer::params::ParamStore;
use redpack_trainer::rng::SplitMix64;

const VOCAB: usize = 211;

/// The CUDA backend in `precision` (on the GPU, or the CPU emulation of one).
fn cuda(test: &str, precision: Precision) -> CudaBackend {
    let info = cuda_support::device(test);
    require_nvrtc();
    let cache = cuda_support::kernel_cache(&info.arch());
    match CudaBackend::new(
        &info,
        precision,
        &cache,
        CudaOptions::from_env().expect("REDPACK_CUDA_* variables"),
    ) {
        Ok(b) => b,
        Err(e) => panic!("cannot start the CUDA backend on {}: {e}", info.name),
    }
}

fn tiny(arch: Arch) -> ModelConfig {
    ModelConfig::preset(arch, "tiny", VOCAB).unwrap()
}

/// Rows of different lengths (one of a single token, one empty for DecLLM) with random
/// prefixes and document starts, padded with id 0.
fn batch(arch: Arch, seed: u64) -> Batch {
    let seq = 48;
    let lengths: Vec<usize> = match arch {
        Arch::Dec => vec![seq, 37, 1, 0, 20],
        Arch::Red => vec![seq, 37, 2, 20],
    };
    let rows = lengths.len();
    let mut rng = SplitMix64::new(seed);
    let mut tokens = vec![0u32; rows * seq];
    let mut prefix_len = Vec::new();
    let mut doc_starts = Vec::new();
    for (r, &n) in lengths.iter().enumerate() {
        for t in &mut tokens[r * seq..r * seq + n] {
            *t = rng.below(VOCAB as u64) as u32;
        }
        let k = match n {
            0 => 0,
            1 => 1,
            _ => 1 + rng.below(n as u64 - 1) as usize,
        };
        prefix_len.push(k);
        let mut starts: Vec<u32> = (0..3)
            .map(|_| rng.below(n.max(1) as u64) as u32)
            .filter(|&s| s > 0)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        doc_starts.push(starts);
    }
    Batch {
        rows,
        seq,
        tokens,
        prefix_len,
        length: lengths,
        doc_starts,
        source: vec![String::new(); rows],
    }
}

fn check_stats(name: &str, gpu: &LossStats, cpu: &LossStats, tol: f64) {
    assert_eq!(gpu.tokens, cpu.tokens, "{name}: scored tokens");
    assert_eq!(
        gpu.row_tokens, cpu.row_tokens,
        "{name}: scored tokens per row"
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-30);
    let (loss, z) = (
        rel(gpu.loss_sum, cpu.loss_sum),
        rel(gpu.z_loss_sum, cpu.z_loss_sum),
    );
    say(&format!(
        "{name}: loss {} vs cpu {} (rel {loss:.2e}), z {} vs {} (rel {z:.2e})",
        gpu.loss_sum, cpu.loss_sum, gpu.z_loss_sum, cpu.z_loss_sum
    ));
    assert!(loss <= tol, "{name}: loss differs by {loss:.2e}");
    assert!(cpu.z_loss_sum == 0.0 || z <= tol, "{name}: z-loss differs");
    let rows: Vec<f32> = gpu.row_loss.iter().map(|&v| v as f32).collect();
    let cpu_rows: Vec<f32> = cpu.row_loss.iter().map(|&v| v as f32).collect();
    assert_close(&format!("{name}: row losses"), &rows, &cpu_rows, tol);
}

/// One step on both backends from the same parameters; compares the loss (within `tol`) and
/// every gradient (within `grad_tol` of the tensor's largest value).
fn step_parity(
    test: &str,
    arch: Arch,
    options: StepOptions,
    precision: Precision,
    tol: f64,
    grad_tol: f64,
) {
    step_parity_with(
        test,
        &tiny(arch),
        &batch(arch, 11),
        options,
        precision,
        tol,
        grad_tol,
    );
}

/// `step_parity` for a given model and batch.
fn step_parity_with(
    test: &str,
    config: &ModelConfig,
    batch: &Batch,
    options: StepOptions,
    precision: Precision,
    tol: f64,
    grad_tol: f64,
) {
    let mut gpu = cuda(test, precision);
    let (config, batch) = (config.clone(), batch.clone());
    let params = ParamStore::init(&config, 7);
    let mut cpu = CpuBackend::new(Some(2)).unwrap();
    let mut cpu_grads = params.zeros_like();
    let cpu_stats = cpu
        .forward_backward(&config, &params, &batch, &options, &mut cpu_grads)
        .unwrap();
    // The GPU adds into the buffers it is given: start from something non-zero to check that.
    let mut gpu_grads = params.zeros_like();
    for t in &mut gpu_grads.tensors {
        t.data.fill(0.5);
    }
    let gpu_stats = gpu
        .forward_backward(&config, &params, &batch, &options, &mut gpu_grads)
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    say(&format!("{test} on {}", gpu.name()));
    check_stats(test, &gpu_stats, &cpu_stats, tol);
    // Every tensor is reported before failing, so one run shows where a mismatch starts.
    let mut failed = Vec::new();
    for ((name, g), c) in gpu_grads.iter().zip(&cpu_grads.tensors) {
        let g: Vec<f32> = g.data.iter().map(|v| v - 0.5).collect();
        let worst = worst_mismatch(&format!("{test}: d {name}"), &g, &c.data);
        if worst.is_nan() || worst > grad_tol {
            failed.push(format!("{name} ({worst:.2e})"));
        }
    }
    assert!(
        failed.is_empty(),
        "{test}: gradients beyond {grad_tol:.0e}: {}",
        failed.join(", ")
    );
}

/// `max |gpu − cpu| / max |cpu|`, printed with where it occurs (NaN on a NaN mismatch).
fn worst_mismatch(name: &str, gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "{name}: lengths differ");
    let scale = cpu
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g as f64 - c as f64).abs() / scale;
        if err.is_nan() || err > worst {
            (worst, at) = (err, i);
            if err.is_nan() {
                break;
            }
        }
    }
    say(&format!(
        "{name}: worst relative mismatch {worst:.2e} at {at} (gpu {}, cpu {}, max |cpu| {scale:.3e})",
        gpu.get(at).copied().unwrap_or(0.0),
        cpu.get(at).copied().unwrap_or(0.0)
    ));
    worst
}

fn pretrain_options(arch: Arch) -> StepOptions {
    StepOptions {
        z_loss: 1e-3,
        loss_on_prefix: arch == Arch::Dec,
        ..StepOptions::default()
    }
}

#[test]
fn decllm_tiny_step_matches_cpu() {
    step_parity(
        "decllm_tiny_step_matches_cpu",
        Arch::Dec,
        pretrain_options(Arch::Dec),
        Precision::F32,
        1e-5,
        1e-4,
    );
}

#[test]
fn redllm_tiny_step_matches_cpu() {
    step_parity(
        "redllm_tiny_step_matches_cpu",
        Arch::Red,
        pretrain_options(Arch::Red),
        Precision::F32,
        1e-5,
        1e-4,
    );
}

#[test]
fn decllm_biattn_with_document_resets_matches_cpu() {
    let options = StepOptions {
        z_loss: 1e-4,
        bidirectional_prefix: true,
        reset_at_doc_boundaries: true,
        ..StepOptions::default()
    };
    step_parity(
        "decllm_biattn_with_document_resets_matches_cpu",
        Arch::Dec,
        options,
        Precision::F32,
        1e-5,
        1e-4,
    );
}

#[test]
fn redllm_with_document_resets_matches_cpu() {
    let options = StepOptions {
        reset_at_doc_boundaries: true,
        ..pretrain_options(Arch::Red)
    };
    step_parity(
        "redllm_with_document_resets_matches_cpu",
        Arch::Red,
        options,
        Precision::F32,
        1e-5,
        1e-4,
    );
}

#[test]
fn dropout_masks_match_cpu() {
    for arch in [Arch::Dec, Arch::Red] {
        let options = StepOptions {
            dropout: 0.1,
            dropout_seed: 1234,
            ..pretrain_options(arch)
        };
        step_parity(
            &format!("dropout_masks_match_cpu ({})", arch.name()),
            arch,
            options,
            Precision::F32,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn micro_batches_accumulate_like_the_cpu() {
    let test = "micro_batches_accumulate_like_the_cpu";
    let mut gpu = cuda(test, Precision::F32);
    let mut cpu = CpuBackend::new(Some(2)).unwrap();
    for arch in [Arch::Dec, Arch::Red] {
        let config = tiny(arch);
        let params = ParamStore::init(&config, 9);
        let (a, b) = (batch(arch, 21), batch(arch, 22));
        let options = pretrain_options(arch);
        let micro = [(&a, options), (&b, options)];
        let mut cpu_grads = params.zeros_like();
        let cpu_stats = cpu
            .forward_backward_many(&config, &params, &micro, &mut cpu_grads)
            .unwrap();
        let mut gpu_grads = params.zeros_like();
        let gpu_stats = gpu
            .forward_backward_many(&config, &params, &micro, &mut gpu_grads)
            .unwrap();
        for (i, (g, c)) in gpu_stats.iter().zip(&cpu_stats).enumerate() {
            check_stats(&format!("{test} ({}, micro {i})", arch.name()), g, c, 1e-5);
        }
        for ((name, g), c) in gpu_grads.iter().zip(&cpu_grads.tensors) {
            assert_close(&format!("{test}: d {name}"), &g.data, &c.data, 1e-4);
        }
    }
}

#[test]
fn forward_loss_matches_cpu() {
    let mut gpu = cuda("forward_loss_matches_cpu", Precision::F32);
    let mut cpu = CpuBackend::new(Some(2)).unwrap();
    for arch in [Arch::Dec, Arch::Red] {
        let config = tiny(arch);
        let params = ParamStore::init(&config, 3);
        let batch = batch(arch, 5);
        let options = pretrain_options(arch);
        let c = cpu
            .forward_loss(&config, &params, &batch, &options)
            .unwrap();
        let g = gpu
            .forward_loss(&config, &params, &batch, &options)
            .unwrap();
        check_stats(&format!("forward_loss ({})", arch.name()), &g, &c, 1e-5);
        // Evaluation's path: the parameters loaded once, then two batches.
        use redpack_trainer::backend::ResidentTraining;
        gpu.load_params(&config, &params).unwrap();
        let other = self::batch(arch, 6);
        let c2 = cpu
            .forward_loss(&config, &params, &other, &options)
            .unwrap();
        for (name, b, want) in [("first", &batch, &c), ("second", &other, &c2)] {
            let got = gpu.forward_loss_loaded(&config, b, &options).unwrap();
            check_stats(
                &format!("forward_loss_loaded {name} ({})", arch.name()),
                &got,
                want,
                1e-5,
            );
        }
    }
}

#[test]
fn a_batch_with_nothing_scored_gives_zero_loss_and_gradients() {
    let mut gpu = cuda("a_batch_with_nothing_scored", Precision::F32);
    let config = tiny(Arch::Dec);
    let params = ParamStore::init(&config, 3);
    let mut b = batch(Arch::Dec, 5);
    // Finetuning with the whole row as prefix: no target.
    b.prefix_len = b.length.clone();
    let mut grads = params.zeros_like();
    let stats = gpu
        .forward_backward(&config, &params, &b, &StepOptions::default(), &mut grads)
        .unwrap();
    assert_eq!(stats.tokens, 0);
    assert!(grads
        .tensors
        .iter()
        .all(|t| t.data.iter().all(|&v| v == 0.0)));
}

#[test]
fn a_bad_batch_is_an_error_not_a_crash() {
    let mut gpu = cuda("a_bad_batch_is_an_error_not_a_crash", Precision::F32);
    let config = tiny(Arch::Red);
    let params = ParamStore::init(&config, 3);
    let mut b = batch(Arch::Red, 5);
    b.tokens[0] = VOCAB as u32 + 5;
    let mut grads = params.zeros_like();
    let err = gpu
        .forward_backward(
            &config,
            &params,
            &b,
            &pretrain_options(Arch::Red),
            &mut grads,
        )
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

/// 20 Adafactor steps on each device from the same start, the optimizer on the host for both:
/// the per-step losses must agree closely (f32 differences compound slowly over the steps).
fn twenty_steps(test: &str, arch: Arch) {
    let mut gpu = cuda(test, Precision::F32);
    let mut cpu = CpuBackend::new(Some(2)).unwrap();
    let config = tiny(arch);
    let options = pretrain_options(arch);
    let start = ParamStore::init(&config, 1);
    let optim_config = AdafactorConfig::default();
    let mut losses = [Vec::new(), Vec::new()];
    for (which, backend) in [&mut cpu as &mut dyn Backend, &mut gpu]
        .into_iter()
        .enumerate()
    {
        let mut params = start.clone();
        let mut optimizer = Adafactor::new(optim_config.clone(), &params).unwrap();
        let mut grads = params.zeros_like();
        for step in 0..20u64 {
            let b = batch(arch, 100 + step % 4);
            grads.fill_zero();
            let stats = backend
                .forward_backward(&config, &params, &b, &options, &mut grads)
                .unwrap();
            optim::scale_grads(&mut grads, 1.0 / stats.tokens as f32);
            optimizer.update(&mut params, &grads, 1e-2).unwrap();
            losses[which].push(stats.loss_sum / stats.tokens as f64);
        }
    }
    let mut worst = 0.0f64;
    for (step, (c, g)) in losses[0].iter().zip(&losses[1]).enumerate() {
        let rel = (g - c).abs() / c.abs();
        say(&format!(
            "{test}: step {step}: cpu {c:.6} gpu {g:.6} (rel {rel:.2e})"
        ));
        worst = worst.max(rel);
    }
    say(&format!(
        "{test}: cpu loss {:.4} -> {:.4}",
        losses[0][0],
        losses[0][losses[0].len() - 1]
    ));
    assert!(worst <= 1e-3, "{test}: losses drift apart by {worst:.2e}");
}

#[test]
fn decllm_twenty_steps_track_cpu() {
    twenty_steps("decllm_twenty_steps_track_cpu", Arch::Dec);
}

#[test]
fn redllm_twenty_steps_track_cpu() {
    twenty_steps("redllm_twenty_steps_track_cpu", Arch::Red);
}

#[test]
fn bf16_step_is_close_to_cpu() {
    // bf16 operands carry 8 bits of mantissa: about 0.4% per rounding, and a gradient passes
    // through several products (and sums with cancellation, as in the norm gains). Loose bounds
    // that still catch a wrong product, which is off by the size of the values themselves.
    for arch in [Arch::Dec, Arch::Red] {
        step_parity(
            &format!("bf16_step_is_close_to_cpu ({})", arch.name()),
            arch,
            pretrain_options(arch),
            Precision::Bf16,
            2e-2,
            0.25,
        );
    }
}

/// Resident training (parameters, gradients and Adafactor state on the GPU, the optimizer step
/// on the device) against the host loop on the CPU reference, 4 steps of each architecture with
/// two micro-batches per step, global-norm clipping that bites, and Adafactor with factored
/// second moments and momentum: the gradient and update norms of every step, the parameters'
/// total change and the optimizer state read back must match.
#[test]
fn resident_training_matches_the_host_loop() {
    use redpack_trainer::backend::{MicroBatch, ResidentTraining};
    for arch in [Arch::Dec, Arch::Red] {
        let test = format!("resident_training_matches_the_host_loop ({})", arch.name());
        let mut gpu = cuda(&test, Precision::F32);
        let mut cpu = CpuBackend::new(Some(2)).unwrap();
        let config = tiny(arch);
        let options = pretrain_options(arch);
        let start = ParamStore::init(&config, 5);
        let optim_config = AdafactorConfig {
            factored: true,
            min_dim_size_to_factor: 32,
            beta1: Some(0.9),
            ..AdafactorConfig::default()
        };
        let (steps, clip, lr) = (4u64, Some(0.25), 1e-2f32);
        let micro = |step: u64| [batch(arch, 200 + 2 * step), batch(arch, 201 + 2 * step)];

        // The host loop, as `run::TrainRun` does it without a resident device.
        let mut params = start.clone();
        let mut optimizer = Adafactor::new(optim_config.clone(), &params).unwrap();
        let mut grads = params.zeros_like();
        let mut host_norms = Vec::new();
        for step in 0..steps {
            let batches = micro(step);
            let list: Vec<_> = batches.iter().map(|b| (b, options)).collect();
            grads.fill_zero();
            let stats = cpu
                .forward_backward_many(&config, &params, &list, &mut grads)
                .unwrap();
            let scored: usize = stats.iter().map(|s| s.tokens).sum();
            optim::scale_grads(&mut grads, 1.0 / scored as f32);
            let norm = optim::clip_global_norm(&mut grads, clip.unwrap());
            let update = optimizer.update(&mut params, &grads, lr).unwrap();
            host_norms.push((norm, update.update_norm));
        }

        // The same steps resident on the GPU. The second micro-batch of each step comes staged
        // (inputs built and in pinned memory, as `redpack train`'s loader thread leaves them),
        // the first is built in the step.
        let fresh = Adafactor::new(optim_config.clone(), &start).unwrap();
        gpu.load_training(&config, &start, &fresh).unwrap();
        let stager = gpu
            .stager(&config, &options)
            .expect("the CUDA backend stages");
        let mut device_norms = Vec::new();
        for step in 0..steps {
            let batches = micro(step);
            let staged = stager.stage(&batches[1]);
            let list = [
                MicroBatch::new(&batches[0], options),
                MicroBatch {
                    staged: Some(&staged),
                    ..MicroBatch::new(&batches[1], options)
                },
            ];
            let stats = ResidentTraining::accumulate(&mut gpu, &config, &list).unwrap();
            let scored: usize = stats.iter().map(|s| s.tokens).sum();
            let (norm, update) = gpu.apply_update(1.0 / scored as f32, clip, lr).unwrap();
            device_norms.push((norm, update.unwrap().update_norm));
        }
        let mut gpu_params = start.clone();
        let mut gpu_optimizer = fresh.clone();
        gpu.store_training(&mut gpu_params, &mut gpu_optimizer)
            .unwrap();

        for (step, (h, d)) in host_norms.iter().zip(&device_norms).enumerate() {
            say(&format!(
                "{test}: step {step}: grad norm cpu {:.6} gpu {:.6}, update norm cpu {:.6e} gpu {:.6e}",
                h.0, d.0, h.1, d.1
            ));
            assert!(
                h.0 > clip.unwrap(),
                "{test}: clipping should bite at step {step}"
            );
            assert!(
                (h.0 - d.0).abs() <= 1e-4 * h.0,
                "{test}: gradient norm at step {step}"
            );
            assert!(
                (h.1 - d.1).abs() <= 1e-3 * h.1,
                "{test}: update norm at step {step}"
            );
        }
        assert_eq!(
            gpu_optimizer.step(),
            optimizer.step(),
            "{test}: update count"
        );
        for ((name, want), got) in params.iter().zip(&gpu_params.tensors) {
            let delta = |p: &[f32], s: &[f32]| -> Vec<f32> {
                p.iter().zip(s).map(|(a, b)| a - b).collect()
            };
            let s = &start.get(name).unwrap().data;
            assert_close(
                &format!("{test}: change of {name}"),
                &delta(&got.data, s),
                &delta(&want.data, s),
                2e-3,
            );
        }
        for ((name, want), (_, got)) in optimizer
            .state_tensors()
            .iter()
            .zip(gpu_optimizer.state_tensors())
        {
            assert_close(&format!("{test}: {name}"), &got.data, &want.data, 1e-3);
        }
    }
}

/// compute-sanitizer's memcheck, on the CPU emulation of a GPU: one step of each architecture
/// (f32, and bf16 with the fused attention) in a child process that preloads AddressSanitizer
/// and loads the emulation built with it, so that any kernel's read or write past a device
/// allocation fails the run with the kernel's source line. The child takes the sanitized
/// emulation even where a driver is installed; on a GPU, `scripts/gpu-check.sh` runs
/// compute-sanitizer on the same steps.
#[test]
fn steps_stay_inside_their_buffers_under_addresssanitizer() {
    use cuda_support::emulation;
    let test = "steps_stay_inside_their_buffers_under_addresssanitizer";
    if std::env::var(emulation::MODE_VARIABLE).is_ok_and(|v| v == emulation::ASAN) {
        return; // the child itself
    }
    let runtime = emulation::asan_runtime().unwrap_or_else(|e| panic!("{test}: {e}"));
    // The steps' names in this binary: `cuda_model::...` (the module path without the crate).
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, path)| path);
    let steps = [
        "decllm_tiny_step_matches_cpu",
        "redllm_tiny_step_matches_cpu",
        "bf16_step_is_close_to_cpu",
    ]
    .map(|name| format!("{module}::{name}"));
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(steps)
        .args(["--exact", "--test-threads", "1"])
        .env(emulation::MODE_VARIABLE, emulation::ASAN)
        // The child's steps take the fused cross-entropy kernel, so that whole steps run both
        // ways in this binary (the other tests take the default two kernels).
        .env("REDPACK_CUDA_CE", "fused")
        .env("LD_PRELOAD", &runtime)
        // Rust keeps some allocations for the process's life on purpose.
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("running the steps under AddressSanitizer");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && log.contains("test result: ok. 3 passed"),
        "the steps under AddressSanitizer ({}):\n{log}",
        out.status
    );
    assert!(!log.contains("ERROR: AddressSanitizer"), "{log}");
    say(&format!("{test}: 3 steps ran clean under AddressSanitizer"));
}

/// Random batches and options against the CPU: row counts and lengths down to empty, prefixes
/// from none to the whole row (nothing to score), document starts, every mask option, dropout
/// and z-loss, in f32 (tight) and bf16 (with the fused attention, loose). A batch the CPU
/// refuses must be refused on the device too.
#[test]
fn random_batches_and_options_match_cpu() {
    let test = "random_batches_and_options_match_cpu";
    let mut f32_gpu = cuda(test, Precision::F32);
    let mut bf16_gpu = cuda(test, Precision::Bf16);
    let mut cpu = CpuBackend::new(Some(2)).unwrap();
    let mut rng = SplitMix64::new(2024);
    for case in 0..24u64 {
        let arch = if case % 2 == 0 { Arch::Dec } else { Arch::Red };
        let config = tiny(arch);
        let params = ParamStore::init(&config, 100 + case);
        let rows = 1 + rng.below(5) as usize;
        let seq = 1 + rng.below(40) as usize;
        let mut batch = Batch {
            rows,
            seq,
            tokens: vec![0; rows * seq],
            prefix_len: Vec::new(),
            length: Vec::new(),
            doc_starts: Vec::new(),
            source: vec![String::new(); rows],
        };
        for r in 0..rows {
            let n = rng.below(seq as u64 + 1) as usize;
            for t in &mut batch.tokens[r * seq..r * seq + n] {
                *t = rng.below(VOCAB as u64) as u32;
            }
            batch.length.push(n);
            // RedLLM needs an encoder input (a prefix of at least 1) in every non-empty row;
            // one case in eight breaks that on purpose.
            let least = usize::from(arch == Arch::Red && n > 0 && case % 8 != 7);
            batch
                .prefix_len
                .push(least + rng.below((n + 1 - least) as u64) as usize);
            let mut starts: Vec<u32> = (0..rng.below(4))
                .map(|_| rng.below(n.max(1) as u64) as u32)
                .filter(|&s| s > 0)
                .collect();
            starts.sort_unstable();
            starts.dedup();
            batch.doc_starts.push(starts);
        }
        let options = StepOptions {
            z_loss: if rng.below(2) == 0 { 0.0 } else { 1e-3 },
            dropout: if rng.below(3) == 0 { 0.1 } else { 0.0 },
            dropout_seed: rng.below(1000),
            bidirectional_prefix: false,
            reset_at_doc_boundaries: rng.below(2) == 0,
            loss_on_prefix: false,
        };
        // DecLLM: causal LM, prefix LM, or BiAttn (which cannot score the prefix it sees; one
        // case in eight asks for both, to be refused).
        let options = match (arch, rng.below(3)) {
            (Arch::Dec, 0) => StepOptions {
                loss_on_prefix: true,
                bidirectional_prefix: case % 8 == 6,
                ..options
            },
            (Arch::Dec, 1) => StepOptions {
                bidirectional_prefix: true,
                ..options
            },
            _ => options,
        };
        let bf16 = case % 4 >= 2;
        let (gpu, tol, grad_tol) = if bf16 {
            (&mut bf16_gpu, 2e-2, 0.25)
        } else {
            (&mut f32_gpu, 1e-5, 1e-4)
        };
        let name = format!(
            "{test} case {case} ({}, {}, rows {:?} of {seq}, prefixes {:?}, {options:?})",
            arch.name(),
            if bf16 { "bf16" } else { "f32" },
            batch.length,
            batch.prefix_len
        );
        let mut cpu_grads = params.zeros_like();
        let cpu_stats = cpu.forward_backward(&config, &params, &batch, &options, &mut cpu_grads);
        let mut gpu_grads = params.zeros_like();
        let gpu_stats = gpu.forward_backward(&config, &params, &batch, &options, &mut gpu_grads);
        let (cpu_stats, gpu_stats) = match (cpu_stats, gpu_stats) {
            (Ok(c), Ok(g)) => (c, g),
            (Err(c), Err(g)) => {
                say(&format!("{name}: refused by both ({c} / {g})"));
                continue;
            }
            (c, g) => panic!("{name}: cpu {:?}, gpu {:?}", c.err(), g.err()),
        };
        check_stats(&name, &gpu_stats, &cpu_stats, tol);
        // Each gradient against its tensor's largest value, but never a scale below 1e-3 of the
        // largest gradient of the model: a gradient that is exactly zero on the CPU (a query
        // that sees a single key has none) is rounding noise on the device.
        let largest = cpu_grads
            .tensors
            .iter()
            .flat_map(|t| &t.data)
            .fold(0f64, |m, &v| m.max(v.abs() as f64));
        for ((param, g), c) in gpu_grads.iter().zip(&cpu_grads.tensors) {
            let own = c.data.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            let scale = own.max(1e-3 * largest).max(1e-30);
            let worst = g.data.iter().zip(&c.data).fold(0f64, |m, (&a, &b)| {
                let err = (a as f64 - b as f64).abs() / scale;
                if err.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(err)
                }
            });
            assert!(
                !worst.is_nan() && worst <= grad_tol,
                "{name}: d {param} differs by {worst:.2e} of {scale:.3e}"
            );
        }
    }
}

/// One step at the paper's 150M layer shapes (d_model 1024, 8 heads of 128, d_ffn 4096), so at
/// the benchmark's head dim and launch sizes, with one layer per stack, a small vocabulary and a
/// short batch so that the CPU emulation of a GPU runs it in seconds: f32 and bf16 (the fused
/// attention at head dim 128; gradients within 5e-2, where they come within 2e-2), each
/// architecture, against the CPU. The tiny models of the other tests have heads of 32.
#[test]
fn a_150m_shaped_layer_matches_cpu() {
    for arch in [Arch::Dec, Arch::Red] {
        let mut config = ModelConfig::preset(arch, "150m", VOCAB).unwrap();
        (config.layers, config.encoder_layers, config.decoder_layers) = (1, 1, 1);
        let mut batch = batch(arch, 23);
        // Two rows of 9 tokens (RedLLM: 4 + 5), one document start.
        let seq = 9;
        batch.tokens = (0..2 * seq).map(|i| (i * 37 % VOCAB) as u32).collect();
        (batch.rows, batch.seq) = (2, seq);
        batch.length = vec![seq, seq - 2];
        batch.prefix_len = vec![4, 3];
        batch.doc_starts = vec![vec![5], vec![]];
        batch.source = vec![String::new(); 2];
        for (precision, tol, grad_tol) in
            [(Precision::F32, 1e-5, 1e-4), (Precision::Bf16, 2e-2, 5e-2)]
        {
            step_parity_with(
                &format!(
                    "a_150m_shaped_layer_matches_cpu ({}, {})",
                    arch.name(),
                    precision.name()
                ),
                &config,
                &batch,
                pretrain_options(arch),
                precision,
                tol,
                grad_tol,
            );
        }
    }
}
