//! CUDA training throughput: forward + backward steps of DecLLM and RedLLM (150m by default) at
//! 2048 tokens per row (RedLLM: 1024 encoder + 1024 decoder tokens), parameters resident on the
//! device, gradients zeroed each step, the batch's inputs staged once beforehand as the training
//! loader's thread stages every batch (`batch_inputs` measures that host work; the optimizer
//! update is not timed; neither is in the PyTorch reference, `torch_ref.py`). Prints one JSON
//! object per line:
//! tokens/s (all tokens read per step, and scored tokens), MFU against `BENCH_PEAK_TFLOPS`
//! (989, an H100 SXM's dense bf16), step time, the allocator's peak bytes, and the time of a whole
//! training step as `redpack train` runs it on a GPU (`train_step_s`: the batch staged into
//! pinned memory beforehand as the loader thread does it, then resident parameters, the gradient
//! norm and the Adafactor update on the device; `update_s` is the norm and update alone).
//!
//! `cargo bench -p redpack-trainer --bench cuda_step`, or run the built binary directly.
//! Environment: `BENCH_SIZE` (150m), `BENCH_ARCHS` (dec,red), `BENCH_ROWS` (8), `BENCH_SEQ`
//! (2048), `BENCH_VOCAB` (32768), `BENCH_STEPS` (10), `BENCH_WARMUP` (2), `BENCH_PRECISION`
//! (bf16 or f32), `BENCH_PEAK_TFLOPS` (989), `BENCH_TRAIN_STEPS` (3 whole training steps timed;
//! 0 skips them), `BENCH_PROFILE` (0; 1 prints, after the timed
//! steps, a time table by kernel and product shape of two more steps run with the backend's
//! profiler on, and one of an optimizer update with its launch count). Without a GPU it fails,
//! saying so.

use std::time::Instant;

use redpack_trainer::backend::cuda::runtime::probe::{self, CudaAvailability};
use redpack_trainer::backend::cuda::{CudaBackend, CudaOptions};
use redpack_trainer::backend::{Backend, MicroBatch, Precision, ResidentTraining};
use redpack_trainer::batch::{Batch, StepOptions};
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::flops::{training_flops, StackTokens};
use redpack_trainer::optim::{Adafactor, AdafactorConfig};
use redpack_trainer::params::ParamStore;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("cuda_step: {what}: {e}");
    std::process::exit(1)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    if let other @ (CudaAvailability::NoDriver | CudaAvailability::NoDevice { .. }) =
        probe::detect()
    {
        fail("this benchmark needs a CUDA device", format!("{other:?}"));
    }
    let size = env_or("BENCH_SIZE", "150m");
    let rows = env_usize("BENCH_ROWS", 8).max(1);
    let seq = env_usize("BENCH_SEQ", 2048).max(4);
    let vocab = env_usize("BENCH_VOCAB", 32768);
    let steps = env_usize("BENCH_STEPS", 10).max(1);
    let warmup = env_usize("BENCH_WARMUP", 2);
    let peak_tflops: f64 = env_or("BENCH_PEAK_TFLOPS", "989").parse().unwrap_or(989.0);
    let precision = match env_or("BENCH_PRECISION", "bf16").as_str() {
        "f32" => Precision::F32,
        _ => Precision::Bf16,
    };
    let cuda_options = CudaOptions::from_env().unwrap_or_else(|e| fail("environment", e));
    let mut backend =
        CudaBackend::open(precision, cuda_options).unwrap_or_else(|e| fail("opening", e));
    let profile = backend.profiler().clone();
    eprintln!("cuda_step on {}", backend.name());
    for arch_name in env_or("BENCH_ARCHS", "dec,red").split(',') {
        let arch = match arch_name.trim() {
            "dec" => Arch::Dec,
            "red" => Arch::Red,
            other => fail("BENCH_ARCHS", format!("unknown architecture {other:?}")),
        };
        let config = ModelConfig::preset(arch, &size, vocab).unwrap_or_else(|e| fail("config", e));
        let params = ParamStore::init(&config, 0);
        let batch = Batch::random_full(rows, seq, vocab, 1);
        let options = StepOptions {
            z_loss: 1e-4,
            loss_on_prefix: arch == Arch::Dec,
            ..StepOptions::default()
        };
        backend
            .upload_params(&params)
            .unwrap_or_else(|e| fail("uploading parameters", e));
        // The batch staged once, as `redpack train`'s loader thread stages each batch while the
        // previous step runs (so its host-side cost is not in the step: `batch_inputs` measures
        // it); a staged batch may be used again.
        let staged = ResidentTraining::stager(&backend, &config, &options)
            .unwrap_or_else(|| fail("staging", "the CUDA backend has no stager"))
            .stage(&batch);
        let step = |backend: &mut CudaBackend| {
            backend
                .zero_grads()
                .unwrap_or_else(|e| fail("zeroing gradients", e));
            backend
                .forward_backward_prepared(&config, &batch, &options, &staged)
                .unwrap_or_else(|e| fail("forward/backward", e))
        };
        let mut first_loss = None;
        for _ in 0..warmup {
            let stats = step(&mut backend);
            first_loss.get_or_insert(stats.loss_sum / stats.tokens.max(1) as f64);
        }
        backend.synchronize().unwrap_or_else(|e| fail("sync", e));
        backend
            .keep_pool_and_reset_peak()
            .unwrap_or_else(|e| fail("memory pool", e));
        let start = Instant::now();
        let mut scored = 0usize;
        let mut last_loss = 0.0;
        for _ in 0..steps {
            let stats = step(&mut backend);
            scored += stats.tokens;
            last_loss = stats.loss_sum / stats.tokens.max(1) as f64;
        }
        backend.synchronize().unwrap_or_else(|e| fail("sync", e));
        let elapsed = start.elapsed().as_secs_f64();
        let peak = backend.peak_pool_bytes().unwrap_or(0);
        // Whole optimizer steps as `redpack train` runs them on a GPU: resident parameters,
        // gradients scaled to the mean, the global norm, and the Adafactor update (the paper's
        // settings) on the device.
        let train_steps = env_usize("BENCH_TRAIN_STEPS", 3);
        if train_steps > 0 {
            let optimizer = Adafactor::new(AdafactorConfig::default(), &params)
                .unwrap_or_else(|e| fail("optimizer", e));
            backend
                .load_training(&config, &params, &optimizer)
                .unwrap_or_else(|e| fail("loading resident training", e));
        }
        let (mut train_step_s, mut update_s) = (0.0, 0.0);
        let stager = ResidentTraining::stager(&backend, &config, &options);
        for i in (0..=train_steps).filter(|_| train_steps > 0) {
            // Staged as `redpack train`'s loader thread does it, ahead of the step (so not
            // timed): inputs built and written into pinned memory.
            let staged = stager.as_ref().map(|s| s.stage(&batch));
            let micro = [MicroBatch {
                staged: staged.as_ref(),
                ..MicroBatch::new(&batch, options)
            }];
            let start = Instant::now();
            let stats = ResidentTraining::accumulate(&mut backend, &config, &micro)
                .unwrap_or_else(|e| fail("forward/backward", e));
            let scored: usize = stats.iter().map(|s| s.tokens).sum();
            // `accumulate` returns once the losses are read back, so the device is idle here.
            let update_start = Instant::now();
            backend
                .apply_update(1.0 / scored.max(1) as f32, None, 1e-3)
                .unwrap_or_else(|e| fail("optimizer update", e));
            backend.synchronize().unwrap_or_else(|e| fail("sync", e));
            if i > 0 {
                // the first one warms the optimizer's buffers up
                train_step_s += start.elapsed().as_secs_f64() / train_steps as f64;
                update_s += update_start.elapsed().as_secs_f64() / train_steps as f64;
            }
        }
        if train_steps > 0 && env_usize("BENCH_PROFILE", 0) > 0 {
            // The optimizer step alone: how many launches, and how long its kernels take.
            profile.set_enabled(true);
            profile.reset();
            backend
                .apply_update(1e-6, None, 1e-3)
                .unwrap_or_else(|e| fail("optimizer update", e));
            profile.set_enabled(false);
            let rows = profile.entries();
            let launches: u64 = rows.iter().map(|r| r.1).sum();
            eprintln!(
                "profile of one optimizer update, {} {size}: {launches} launches\n{}",
                arch.name(),
                profile.report()
            );
        }
        if env_usize("BENCH_PROFILE", 0) > 0 {
            profile.set_enabled(true);
            profile.reset();
            for _ in 0..2 {
                step(&mut backend);
            }
            profile.set_enabled(false);
            eprintln!(
                "profile of 2 steps, {} {size} ({}):\n{}",
                arch.name(),
                precision.name(),
                profile.report()
            );
        }
        let flops = training_flops(&config, &StackTokens::from_batch(&config, &batch, &options));
        let step_s = elapsed / steps as f64;
        let tokens: usize = batch.length.iter().sum();
        let json = serde_json::json!({
            "impl": "redpack",
            "mode": precision.name(),
            "attention": match cuda_options.fused_attention(precision, config.head_dim) {
                false => "batched".to_string(),
                true => format!("flash-{}", cuda_options.flash_name()),
            },
            "flash_tuning": backend.flash_tuning(),
            "blas": backend.blas_engine().name(),
            "ce": cuda_options.cross_entropy.name(),
            "blas_plans": backend.blas_plans(),
            "arch": arch.name(),
            "size": size,
            "params": config.param_count(),
            "rows": rows,
            "seq": seq,
            "vocab": vocab,
            "steps": steps,
            "step_s": step_s,
            "tokens_per_s": tokens as f64 / step_s,
            "scored_tokens_per_s": scored as f64 / elapsed,
            "flops_per_step": flops,
            "tflops": flops / step_s / 1e12,
            "mfu": flops / step_s / (peak_tflops * 1e12),
            "peak_bytes": peak,
            "train_step_s": train_step_s,
            "update_s": update_s,
            "loss": last_loss,
            "first_loss": first_loss,
        });
        println!("{json}");
    }
}
