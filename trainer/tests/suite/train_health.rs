//! A failure never looks like a success: non-finite values stay non-finite through the layers,
//! a diverging run (loss spike, NaN, collapsed gradient) stops with an error that names a
//! checkpoint that is really good, and the checkpoint whose weights produced the failure is
//! marked unhealthy and never resumed from. Also the integrity and identity checks around it:
//! checksums of checkpoints and token files, `--resume` of the same run only, `--overwrite`,
//! the memory estimate, and the loader's errors.

use super::cuda_support;
use super::train_common;

use std::path::{Path, PathBuf};

use redpack_trainer::backend::cpu::{ops, CpuBackend};
use redpack_trainer::backend::{Backend, BackendError};
use redpack_trainer::batch::{Batch, LossStats, StepOptions};
use redpack_trainer::checkpoint::{self, CheckpointError};
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::data::{
    DataError, ExampleSource, Loader, LoaderOptions, MemorySource, Order, OwnedExample,
};
use redpack_trainer::eval::{EvalJob, EvalOptions};
use redpack_trainer::metrics::{read_metrics, Quiet, METRICS_FILE};
use redpack_trainer::optim::{Adafactor, AdafactorConfig};
use redpack_trainer::params::ParamStore;
use redpack_trainer::run::health::Problem;
use redpack_trainer::run::{BatchSize, Mode, TrainError, TrainRun, TrainSettings};
use redpack_trainer::schedule::Schedule;
use train_common::{packed_corpus, tiny_settings};

fn train(settings: &TrainSettings, backend: &mut dyn Backend) -> Result<u64, TrainError> {
    let run = TrainRun::prepare(settings.clone())?;
    Ok(run.run(backend, &mut Quiet)?.step)
}

fn cpu() -> CpuBackend {
    CpuBackend::new(Some(1)).unwrap()
}

/// The CPU backend with the loss scaled by `factor` from forward-backward call `from` on, and
/// the gradient left out when `zero_grad` is set.
struct Tampered {
    inner: CpuBackend,
    calls: usize,
    from: usize,
    factor: f64,
    zero_grad: bool,
}

impl Tampered {
    fn spike(from: usize) -> Tampered {
        Tampered {
            inner: cpu(),
            calls: 0,
            from,
            factor: 100.0,
            zero_grad: false,
        }
    }

    fn zero_grad(from: usize) -> Tampered {
        Tampered {
            factor: 1.0,
            zero_grad: true,
            ..Tampered::spike(from)
        }
    }
}

impl Backend for Tampered {
    fn name(&self) -> String {
        "tampered cpu".into()
    }
    fn forward_backward(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
        grads: &mut ParamStore,
    ) -> Result<LossStats, BackendError> {
        self.calls += 1;
        let on = self.calls >= self.from;
        let mut stats = if on && self.zero_grad {
            self.inner.forward_loss(config, params, batch, options)?
        } else {
            self.inner
                .forward_backward(config, params, batch, options, grads)?
        };
        if on {
            stats.loss_sum *= self.factor;
        }
        Ok(stats)
    }
    fn forward_loss(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        self.inner.forward_loss(config, params, batch, options)
    }
}

fn step_dir(out: &Path, step: u64) -> PathBuf {
    out.join(checkpoint::CHECKPOINTS_DIR)
        .join(checkpoint::step_dir_name(step))
}

fn healthy(dir: &Path) -> bool {
    checkpoint::load_meta(dir).unwrap().is_healthy()
}

/// Every checkpoint `latest` can return is healthy and holds finite weights.
fn assert_latest_is_good(out: &Path) {
    if let Some(dir) = checkpoint::latest(out).unwrap() {
        let ckpt = checkpoint::load(&dir, true).unwrap();
        assert!(ckpt.meta.is_healthy(), "{}", dir.display());
        assert!(ckpt
            .params
            .tensors
            .iter()
            .all(|t| t.data.iter().all(|x| x.is_finite())));
    }
}

#[test]
fn a_diverging_run_stops_instead_of_reporting_success() {
    // A learning rate of 1e3: the loss jumps, the activations overflow. The run used to go on
    // with a loss of exactly ln(vocab) and a zero gradient, and end as a success.
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 12, 16);
    for (name, spike_factor) in [("default", None), ("no-spike-check", Some(0.0))] {
        let mut settings = tiny_settings(
            Arch::Dec,
            Mode::Pretrain,
            &data,
            &root.path().join(name),
            12,
        );
        settings.schedule = Schedule::Constant { lr: 1e3 };
        settings.checkpoint_every = 1;
        if let Some(f) = spike_factor {
            settings.health.spike_factor = f;
        }
        let err = train(&settings, &mut cpu()).unwrap_err();
        let TrainError::Unhealthy { step, marked, .. } = &err else {
            panic!("{name}: {err}");
        };
        eprintln!("{name}: {err}");
        assert!(*step < 12, "{name}: {err}");
        let metrics = read_metrics(&settings.out.join(METRICS_FILE)).unwrap();
        assert_eq!(metrics.len() as u64, step - 1, "{name}");
        assert!(metrics
            .iter()
            .all(|m| m.loss.is_finite() && m.grad_norm > 0.0));
        // The weights of the step before produced the failure: their checkpoint is marked.
        if *step > 1 {
            let before = step_dir(&settings.out, step - 1);
            assert_eq!(marked.first(), Some(&before), "{name}: {err}");
            assert!(!healthy(&before));
        }
        assert_latest_is_good(&settings.out);
    }
}

#[test]
fn a_loss_spike_names_the_last_good_checkpoint_and_resume_continues_from_it() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 12, 16);
    let mut settings = tiny_settings(
        Arch::Red,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        6,
    );
    settings.checkpoint_every = 1;
    // Two micro-batches a step: call 9 is step 5's first.
    let err = train(&settings, &mut Tampered::spike(9)).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            &err,
            TrainError::Unhealthy {
                step: 5,
                problem: Problem::Spike { .. },
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("loss spike"), "{message}");
    assert!(
        message.contains("step-00000004") && message.contains("marked unhealthy"),
        "{message}"
    );
    assert!(
        message.contains("last good checkpoint is")
            && message.contains(&step_dir(&settings.out, 3).display().to_string()),
        "{message}"
    );
    let meta = checkpoint::load_meta(&step_dir(&settings.out, 4)).unwrap();
    let health = meta.health.unwrap();
    assert!(!health.healthy);
    assert!(health.problem.unwrap().contains("step 5"));
    let good = checkpoint::load_meta(&step_dir(&settings.out, 3)).unwrap();
    let h = good.health.unwrap();
    assert!(h.healthy && h.loss.is_finite() && h.grad_norm > 0.0);
    assert_eq!(
        checkpoint::latest(&settings.out).unwrap(),
        Some(step_dir(&settings.out, 3))
    );
    // Pointing at the marked checkpoint is refused, naming why.
    let e = checkpoint::resolve(&step_dir(&settings.out, 4)).unwrap_err();
    assert!(matches!(e, CheckpointError::Unhealthy { .. }), "{e}");
    // Resuming continues from step 3, and the run completes.
    settings.resume = true;
    assert_eq!(train(&settings, &mut cpu()).unwrap(), 6);
    let metrics = read_metrics(&settings.out.join(METRICS_FILE)).unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(
        healthy(&step_dir(&settings.out, 4)),
        "rewritten by the resumed run"
    );
}

#[test]
fn a_collapsed_gradient_stops_the_run_unless_allowed() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 12, 16);
    let mut settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        4,
    );
    let err = train(&settings, &mut Tampered::zero_grad(5)).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::Unhealthy {
                step: 3,
                problem: Problem::Collapse { .. },
                ..
            }
        ),
        "{err}"
    );
    settings.out = root.path().join("allowed");
    settings.health.stop_on_zero_grad = false;
    assert_eq!(train(&settings, &mut Tampered::zero_grad(5)).unwrap(), 4);
}

#[test]
fn non_finite_values_are_not_squashed_by_the_cpu_layers() {
    // Finite values too large to square: 1 / rms would be 1 / sqrt(inf) = 0, a zero output.
    let (xhat, inv) = ops::group_rmsnorm_forward(&[3e19f32; 8], 8, 1e-6);
    assert!(inv[0].is_nan() && xhat.iter().all(|x| x.is_nan()));
    let (xhat, _) = ops::group_rmsnorm_forward(&[3.0f32; 8], 8, 1e-6);
    assert!(xhat.iter().all(|x| (x - 1.0).abs() < 1e-5));
    // A NaN parameter gives a NaN update, not one scaled by epsilon2.
    let mut params = ParamStore {
        names: vec!["w".into()],
        tensors: vec![redpack_trainer::params::Tensor {
            shape: vec![2, 2],
            data: vec![f32::NAN, 1.0, 1.0, 1.0],
        }],
    };
    let grads = ParamStore {
        names: vec!["w".into()],
        tensors: vec![redpack_trainer::params::Tensor {
            shape: vec![2, 2],
            data: vec![0.1; 4],
        }],
    };
    let mut opt = Adafactor::new(AdafactorConfig::default(), &params).unwrap();
    let stats = opt.update(&mut params, &grads, 0.01).unwrap();
    assert!(stats.update_norm.is_nan(), "{}", stats.update_norm);
}

#[test]
fn non_finite_values_are_not_squashed_by_the_cuda_norm() {
    let g = cuda_support::gpu("non_finite_values_are_not_squashed_by_the_cuda_norm");
    let x = [3e19f32; 64]
        .iter()
        .chain(&[3.0f32; 64])
        .copied()
        .collect::<Vec<_>>();
    let gain = vec![1.0f32; 64];
    let (xd, gd) = (g.upload(&x), g.upload(&gain));
    let (mut yd, mut invd) = (g.zeros(128), g.zeros(2));
    g.kernels
        .rmsnorm_forward(&xd, Some(&gd), &mut yd, &mut invd, 2, 64, 1e-6, None)
        .unwrap();
    let (y, inv) = (g.download(&yd), g.download(&invd));
    assert!(
        inv[0].is_nan() && y[..64].iter().all(|v| v.is_nan()),
        "{inv:?}"
    );
    assert!(y[64..].iter().all(|v| (v - 1.0).abs() < 1e-5));
}

/// Flips the lowest bit of the byte `from_end` bytes before the end of `path`.
fn flip(path: &Path, from_end: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - from_end;
    bytes[at] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_a_checkpoint_is_an_error_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 8, 16);
    let mut settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        3,
    );
    train(&settings, &mut cpu()).unwrap();
    let dir = step_dir(&settings.out, 3);
    let meta = checkpoint::load_meta(&dir).unwrap();
    assert_eq!(meta.model_sha256.as_deref().map(str::len), Some(64));
    flip(&dir.join(checkpoint::MODEL_FILE), 3);
    let want = dir.join(checkpoint::MODEL_FILE).display().to_string();
    let e = checkpoint::load(&dir, true).unwrap_err().to_string();
    assert!(e.contains(&want) && e.contains("sha256"), "{e}");
    // Resume, eval and --init all refuse it.
    settings.steps = 4;
    settings.resume = true;
    let e = train(&settings, &mut cpu()).unwrap_err().to_string();
    assert!(e.contains(&want), "{e}");
    let e = EvalJob::prepare(&dir, &data, EvalOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&want), "{e}");
    let mut fresh = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("tuned"),
        1,
    );
    fresh.init = Some(dir.clone());
    let e = train(&fresh, &mut cpu()).unwrap_err().to_string();
    assert!(e.contains(&want), "{e}");
    // Skipping the check loads it (the flipped bit is in a weight).
    assert!(checkpoint::load_checked(&dir, true, false).is_ok());
    assert!(EvalJob::prepare_checked(&dir, &data, EvalOptions::default(), false).is_ok());
}

#[test]
fn a_flipped_byte_in_a_token_file_stops_training_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 8, 16);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join(redpack_schemas::MANIFEST_FILE)).unwrap())
            .unwrap();
    let tokens = data.join(manifest["shards"][0]["tokens_file"].as_str().unwrap());
    // The low byte of the last (u16) token, a value in [2, 48): its lowest bit flipped, it
    // stays a valid token id.
    assert_eq!(manifest["token_dtype"], "u16");
    flip(&tokens, 2);
    let mut settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        2,
    );
    let e = train(&settings, &mut cpu()).unwrap_err().to_string();
    assert!(
        e.contains(&tokens.display().to_string()) && e.contains("sha256"),
        "{e}"
    );
    assert!(!settings.out.join(checkpoint::CHECKPOINTS_DIR).exists());
    settings.verify = false;
    assert_eq!(train(&settings, &mut cpu()).unwrap(), 2);
}

#[test]
fn resume_continues_only_the_same_run_and_a_new_run_never_replaces_one_silently() {
    let root = tempfile::tempdir().unwrap();
    let a = packed_corpus(&root.path().join("a"), 8, 16);
    let b = packed_corpus(&root.path().join("b"), 10, 16);
    let out = root.path().join("run");
    let mut settings = tiny_settings(Arch::Dec, Mode::Pretrain, &a, &out, 3);
    // --resume with nothing to resume.
    settings.resume = true;
    let e = train(&settings, &mut cpu()).unwrap_err().to_string();
    assert!(e.contains("no run here to continue"), "{e}");
    assert!(!out.join(METRICS_FILE).exists());
    settings.resume = false;
    train(&settings, &mut cpu()).unwrap();
    let before = std::fs::read(step_dir(&out, 3).join(checkpoint::MODEL_FILE)).unwrap();
    // Another corpus with the same shape and tokenizer.
    let mut other = settings.clone();
    other.data = b.clone();
    other.steps = 5;
    other.resume = true;
    let e = train(&other, &mut cpu()).unwrap_err().to_string();
    assert!(e.contains("manifest.json has sha256"), "{e}");
    // A new run into the run directory is refused without --overwrite.
    let e = train(&settings, &mut cpu()).unwrap_err().to_string();
    assert!(e.contains("--overwrite"), "{e}");
    assert_eq!(
        std::fs::read(step_dir(&out, 3).join(checkpoint::MODEL_FILE)).unwrap(),
        before,
        "the refused runs left the checkpoint alone"
    );
    // --overwrite replaces it: a fresh run on the other corpus.
    other.resume = false;
    other.overwrite = true;
    other.checkpoint_every = 5;
    assert_eq!(train(&other, &mut cpu()).unwrap(), 5);
    assert!(!step_dir(&out, 3).exists());
    let steps: Vec<u64> = read_metrics(&out.join(METRICS_FILE))
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
}

#[test]
fn an_impossible_batch_is_refused_with_a_memory_estimate() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 8, 16);
    let mut settings = tiny_settings(
        Arch::Red,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        1,
    );
    settings.batch = BatchSize::Sequences(1 << 24);
    settings.accum = 1;
    let e = train(&settings, &mut cpu()).unwrap_err().to_string();
    assert!(
        e.contains("the run needs at least") && e.contains("GiB") && e.contains("available"),
        "{e}"
    );
    assert!(!settings.out.exists(), "nothing was created");
    settings.batch = BatchSize::Sequences(1 << 25);
    let e = settings.validate().unwrap_err().to_string();
    assert!(e.contains("--batch"), "{e}");
    // Weights from a checkpoint: the activations of the batch are checked all the same.
    let small = tiny_settings(
        Arch::Red,
        Mode::Pretrain,
        &data,
        &root.path().join("small"),
        1,
    );
    train(&small, &mut cpu()).unwrap();
    settings.batch = BatchSize::Sequences(1 << 24);
    settings.init = Some(small.out.clone());
    let e = train(&settings, &mut cpu()).unwrap_err().to_string();
    assert!(
        e.contains("one step's activations") && e.contains("GiB"),
        "{e}"
    );
}

/// A source whose examples panic past `good`.
struct Panicking {
    good: u64,
}

impl ExampleSource for Panicking {
    fn place(&self) -> String {
        "panicking".into()
    }
    fn len(&self) -> u64 {
        8
    }
    fn example(&self, index: u64) -> Result<OwnedExample, DataError> {
        assert!(index < self.good, "example {index} is unreadable");
        Ok(OwnedExample {
            tokens: vec![2, 3, 4, 5],
            prefix_len: 2,
            source: "s".into(),
            doc_starts: Vec::new(),
        })
    }
}

#[test]
fn the_loaders_errors_reach_the_caller_with_their_cause() {
    let options = LoaderOptions::new(4, Order::Sequential, 0);
    let mut loader = Loader::spawn(
        Box::new(Panicking { good: 4 }),
        options.clone(),
        Default::default(),
    )
    .unwrap();
    assert!(loader.next_batch().unwrap().is_some());
    let e = loader.next_batch().unwrap_err().to_string();
    assert!(e.contains("example 4 is unreadable"), "{e}");
    // Rows with nothing to score, a whole epoch of them: an error, not the end of the data.
    let source = MemorySource {
        examples: (0..3)
            .map(|_| OwnedExample {
                tokens: vec![2, 0, 0],
                prefix_len: 1,
                source: "s".into(),
                doc_starts: Vec::new(),
            })
            .collect(),
    };
    let options = LoaderOptions {
        trim_trailing_padding: true,
        ..options
    };
    let mut loader = Loader::spawn(Box::new(source), options, Default::default()).unwrap();
    let e = loader.next_batch().unwrap_err().to_string();
    assert!(e.contains("nothing to score"), "{e}");
}

#[test]
fn a_device_run_is_checked_against_the_devices_free_memory() {
    use redpack_trainer::run::memory;
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 8, 16);
    let mut settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        1,
    );
    // A device backend's activations are not counted against the host.
    settings.host_activations = false;
    settings.batch = BatchSize::Sequences(1 << 22);
    settings.accum = 1;
    let run = TrainRun::prepare(settings).unwrap();
    let check = |free| {
        memory::check_device(
            &run.model,
            &run.settings,
            run.rows_per_micro_batch,
            16,
            free,
        )
    };
    let e = check(Some(16 << 30)).unwrap_err().to_string();
    assert!(
        e.contains("on the device") && e.contains("16.00 GiB is available"),
        "{e}"
    );
    assert!(
        check(None).is_ok(),
        "an unknown limit refuses only an overflow"
    );
    assert!(check(Some(1 << 50)).is_ok());
}

#[test]
fn pruning_waits_until_the_newest_checkpoint_is_known_to_be_good() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 12, 16);
    let mut settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        6,
    );
    settings.checkpoint_every = 1;
    settings.keep_checkpoints = 1;
    // Step 5 spikes: step 4's checkpoint is condemned, and step 3's must still be there.
    let err = train(&settings, &mut Tampered::spike(9)).unwrap_err();
    assert!(
        matches!(err, TrainError::Unhealthy { step: 5, .. }),
        "{err}"
    );
    assert_eq!(
        checkpoint::latest(&settings.out).unwrap(),
        Some(step_dir(&settings.out, 3))
    );
    settings.resume = true;
    assert_eq!(train(&settings, &mut cpu()).unwrap(), 6);
    let names: Vec<_> = std::fs::read_dir(settings.out.join(checkpoint::CHECKPOINTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["step-00000006"]);
}

#[test]
fn an_evaluation_that_cannot_fit_is_refused_with_its_estimate() {
    use redpack_trainer::run::memory;
    let model = ModelConfig::preset(Arch::Red, "tiny", 48).unwrap();
    let e = memory::check_forward(&model, 4096, 16384, Some(1 << 30))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("on the device") && e.contains("1.00 GiB is available"),
        "{e}"
    );
    assert!(memory::check_forward(&model, 8, 256, Some(1 << 30)).is_ok());
    let e = memory::check_forward(&model, usize::MAX, usize::MAX, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more memory than can be counted"), "{e}");
}

#[test]
fn a_diverging_run_stops_on_the_cuda_backend_too() {
    use redpack_trainer::backend::cuda::{CudaBackend, CudaOptions};
    use redpack_trainer::backend::Precision;
    let test = "a_diverging_run_stops_on_the_cuda_backend_too";
    let info = cuda_support::device(test);
    cuda_support::require_nvrtc();
    let cache = cuda_support::kernel_cache(&info.arch());
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 12, 16);
    for precision in [Precision::F32, Precision::Bf16] {
        let mut backend = CudaBackend::new(
            &info,
            precision,
            &cache,
            CudaOptions::from_env().expect("REDPACK_CUDA_* variables"),
        )
        .unwrap();
        let mut settings = tiny_settings(
            Arch::Dec,
            Mode::Pretrain,
            &data,
            &root.path().join(precision.name()),
            12,
        );
        settings.schedule = Schedule::Constant { lr: 1e3 };
        settings.health.spike_factor = 0.0;
        settings.checkpoint_every = 1;
        let err = train(&settings, &mut backend).unwrap_err();
        eprintln!("{}: {err}", precision.name());
        assert!(matches!(err, TrainError::Unhealthy { .. }), "{err}");
        assert_latest_is_good(&settings.out);
    }
}

#[test]
fn a_best_checkpoint_from_the_condemned_step_is_marked_too() {
    use redpack_trainer::run::Validation;
    let root = tempfile::tempdir().unwrap();
    let data = train_common::examples_corpus(&root.path().join("flan"), 9);
    let mut settings = tiny_settings(
        Arch::Red,
        Mode::Finetune,
        &data,
        &root.path().join("run"),
        6,
    );
    settings.checkpoint_every = 1;
    settings.eval = Some(Validation {
        data: data.clone(),
        every: 1,
        rows: None,
        keep_best: true,
    });
    // Step 4 spikes (calls 7 and 8): step 3's weights are condemned, its best checkpoint too.
    let err = train(&settings, &mut Tampered::spike(7)).unwrap_err();
    let TrainError::Unhealthy {
        step: 4, marked, ..
    } = &err
    else {
        panic!("{err}");
    };
    let best = settings
        .out
        .join(checkpoint::CHECKPOINTS_DIR)
        .join(checkpoint::BEST_DIR);
    assert_eq!(checkpoint::load_best(&best).unwrap().step, 3);
    assert_eq!(marked, &[step_dir(&settings.out, 3), best.clone()]);
    assert!(!healthy(&best));
    let e = checkpoint::resolve(&best).unwrap_err();
    assert!(matches!(e, CheckpointError::Unhealthy { .. }), "{e}");
}
