//! The training loop (`TrainRun`, what `redpack train` runs) on the CUDA backend against the
//! same run on the CPU reference: resident training (parameters, gradients and Adafactor state
//! on the device, the loader's thread staging batches into pinned buffers), checkpoints, and a
//! resume from one. f32, so the runs agree to rounding. Runs on the GPU where there is one, and
//! on the CPU emulation of one elsewhere (`cuda_support::emulation`).

use super::cuda_support;
use super::train_common;

use std::path::Path;

use cuda_support::say;
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::cuda::{CudaBackend, CudaOptions};
use redpack_trainer::backend::Backend;
use redpack_trainer::backend::Precision;
use redpack_trainer::checkpoint;
use redpack_trainer::config::Arch;
use redpack_trainer::metrics::{Quiet, StepMetrics};
use redpack_trainer::params::ParamStore;
use redpack_trainer::run::{Mode, TrainRun, TrainSettings};
use train_common::{examples_corpus, packed_corpus, tiny_settings};

fn cuda(test: &str) -> CudaBackend {
    let info = cuda_support::device(test);
    cuda_support::require_nvrtc();
    let cache = cuda_support::kernel_cache(&info.arch());
    CudaBackend::new(
        &info,
        Precision::F32,
        &cache,
        CudaOptions::from_env().expect("REDPACK_CUDA_* variables"),
    )
    .unwrap_or_else(|e| panic!("cannot start the CUDA backend on {}: {e}", info.name))
}

fn train(settings: &TrainSettings, backend: &mut dyn Backend) -> Vec<StepMetrics> {
    let run = TrainRun::prepare(settings.clone()).expect("prepare");
    run.run(backend, &mut Quiet).expect("train").metrics
}

fn final_params(out: &Path) -> ParamStore {
    let dir = checkpoint::latest(out).unwrap().unwrap();
    checkpoint::load(&dir, true).unwrap().params
}

/// Losses and gradient norms step by step, then every parameter of the last checkpoint.
fn assert_runs_agree(
    test: &str,
    cpu: &[StepMetrics],
    gpu: &[StepMetrics],
    cpu_out: &Path,
    gpu_out: &Path,
) {
    assert_eq!(cpu.len(), gpu.len(), "{test}: steps");
    for (c, g) in cpu.iter().zip(gpu) {
        assert_eq!(c.step, g.step);
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
        say(&format!(
            "{test}: step {}: loss cpu {:.6} gpu {:.6}, grad norm cpu {:.6} gpu {:.6}",
            c.step, c.loss, g.loss, c.grad_norm, g.grad_norm
        ));
        assert!(rel(c.loss, g.loss) < 1e-5, "{test}: step {} loss", c.step);
        assert!(
            rel(c.grad_norm, g.grad_norm) < 1e-4,
            "{test}: step {} gradient norm",
            c.step
        );
    }
    let (a, b) = (final_params(cpu_out), final_params(gpu_out));
    assert_eq!(a.names, b.names, "{test}: parameter names");
    for ((name, x), y) in a.names.iter().zip(&a.tensors).zip(&b.tensors) {
        cuda_support::assert_close(&format!("{test}: {name}"), &y.data, &x.data, 2e-5);
    }
}

fn run_both(test: &str, arch: Arch, mode: Mode) {
    let mut gpu = cuda(test);
    let root = tempfile::tempdir().unwrap();
    let data = match mode {
        Mode::Pretrain => packed_corpus(&root.path().join("data"), 12, 24),
        Mode::Finetune => examples_corpus(&root.path().join("data"), 12),
    };
    let mut settings = tiny_settings(arch, mode, &data, &root.path().join("cpu"), 6);
    settings.grad_clip_norm = Some(0.5);
    // Adafactor scales each gradient by its running RMS, so a gradient that is zero but for
    // rounding (cross-attention keys that are all alike) becomes an update of the learning
    // rate's size whose sign is the rounding's: one element of one tensor then differs by about
    // 5e-3. A floor on the squared gradient keeps such noise from being scaled up, and the runs
    // then agree to about 2e-6 everywhere.
    settings.optimizer.epsilon1 = 1e-10;
    let cpu = train(&settings, &mut CpuBackend::new(Some(2)).unwrap());

    // The same run on the device, stopped after step 3's checkpoint and resumed from it: the
    // resume loads the parameters and the optimizer state onto the device again.
    settings.out = root.path().join("gpu");
    let mut first = settings.clone();
    first.steps = 3;
    let head = train(&first, &mut gpu);
    settings.resume = true;
    let tail = train(&settings, &mut gpu);
    assert_eq!(tail.first().map(|m| m.step), Some(4), "{test}: resumed at");
    let both: Vec<StepMetrics> = head.into_iter().chain(tail).collect();
    assert_runs_agree(
        test,
        &cpu,
        &both,
        &root.path().join("cpu"),
        &root.path().join("gpu"),
    );
}

#[test]
fn decllm_pretraining_on_cuda_matches_cpu() {
    run_both(
        "decllm_pretraining_on_cuda_matches_cpu",
        Arch::Dec,
        Mode::Pretrain,
    );
}

#[test]
fn redllm_finetuning_on_cuda_matches_cpu() {
    run_both(
        "redllm_finetuning_on_cuda_matches_cpu",
        Arch::Red,
        Mode::Finetune,
    );
}
