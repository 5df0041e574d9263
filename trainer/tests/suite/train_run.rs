//! End-to-end runs of the training loop on `tiny` models: a crash and resume reproduce the
//! uninterrupted run bitwise, NaN stops the run with the last checkpoint intact, checkpoints
//! round-trip, wrong inputs fail before any work, and the loop's resident-training path (the
//! one a GPU takes) gives the host loop's bits.

use super::train_common;

use std::path::Path;
use std::sync::Arc;

use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::{
    Backend, BackendError, MicroBatch, ResidentTraining, Staged, Stager,
};
use redpack_trainer::batch::{Batch, LossStats, StepOptions};
use redpack_trainer::checkpoint;
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::eval::{EvalJob, EvalOptions};
use redpack_trainer::metrics::{read_metrics, Quiet, StepMetrics, METRICS_FILE};
use redpack_trainer::optim::{self, Adafactor, UpdateStats};
use redpack_trainer::params::ParamStore;
use redpack_trainer::run::{Mode, TrainError, TrainRun, TrainSettings};
use redpack_trainer::schedule::Schedule;
use train_common::{examples_corpus, packed_corpus, packed_corpus_with_sha, tiny_settings};

/// The CPU backend, with a NaN loss injected from forward-backward call `nan_from` on.
struct Faulty {
    inner: CpuBackend,
    calls: usize,
    nan_from: usize,
}

impl Faulty {
    fn new(nan_from: usize) -> Faulty {
        Faulty {
            inner: CpuBackend::new(Some(1)).unwrap(),
            calls: 0,
            nan_from,
        }
    }
}

impl Backend for Faulty {
    fn name(&self) -> String {
        "faulty cpu".into()
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
        let mut stats = self
            .inner
            .forward_backward(config, params, batch, options, grads)?;
        if self.calls >= self.nan_from {
            stats.loss_sum = f64::NAN;
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

fn train(
    settings: &TrainSettings,
    backend: &mut dyn Backend,
) -> Result<Vec<StepMetrics>, TrainError> {
    let run = TrainRun::prepare(settings.clone())?;
    Ok(run.run(backend, &mut Quiet)?.metrics)
}

/// Everything but the wall-clock fields.
fn deterministic(m: &StepMetrics) -> StepMetrics {
    StepMetrics {
        elapsed_s: 0.0,
        tokens_per_s: 0.0,
        ..m.clone()
    }
}

fn final_params(out: &Path) -> ParamStore {
    let dir = checkpoint::latest(out).unwrap().unwrap();
    checkpoint::load(&dir, true).unwrap().params
}

fn crash_and_resume_matches(arch: Arch, mode: Mode, data: &Path, root: &Path) {
    let mut settings = tiny_settings(arch, mode, data, &root.join("straight"), 6);
    settings.schedule = Schedule::WarmupCosine {
        warmup_steps: 2,
        peak: 0.02,
        end: 0.002,
    };
    let straight = train(&settings, &mut CpuBackend::new(Some(1)).unwrap()).unwrap();
    assert_eq!(straight.len(), 6);

    // The same run, failing at step 5 (2 micro-batches a step: call 9), then resumed from the
    // checkpoint of step 3 (step 4's has none; a failure at step 4 would condemn step 3's).
    settings.out = root.join("resumed");
    let err = train(&settings, &mut Faulty::new(9)).unwrap_err();
    assert!(
        matches!(err, TrainError::Unhealthy { step: 5, .. }),
        "{err}"
    );
    settings.resume = true;
    let tail = train(&settings, &mut CpuBackend::new(Some(1)).unwrap()).unwrap();
    assert_eq!(tail.first().map(|m| m.step), Some(4));

    let a: Vec<_> = read_metrics(&root.join("straight").join(METRICS_FILE)).unwrap();
    let b: Vec<_> = read_metrics(&root.join("resumed").join(METRICS_FILE)).unwrap();
    assert_eq!(a.len(), 6);
    let a: Vec<_> = a.iter().map(deterministic).collect();
    let b: Vec<_> = b.iter().map(deterministic).collect();
    assert_eq!(a, b, "metrics of the resumed run differ");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits());
    }
    assert_eq!(
        final_params(&root.join("straight")),
        final_params(&root.join("resumed"))
    );
}

#[test]
fn dec_pretrain_resume_reproduces_losses_bitwise() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 10, 16);
    crash_and_resume_matches(Arch::Dec, Mode::Pretrain, &data, root.path());
}

#[test]
fn red_finetune_resume_reproduces_losses_bitwise() {
    // Finetuning: dropout 0.05, padded variable-length rows, loss on targets only.
    let root = tempfile::tempdir().unwrap();
    let data = examples_corpus(&root.path().join("flan"), 9);
    crash_and_resume_matches(Arch::Red, Mode::Finetune, &data, root.path());
}

#[test]
fn nan_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 10, 16);
    let settings = tiny_settings(
        Arch::Red,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        6,
    );
    let err = train(&settings, &mut Faulty::new(9)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("step 5") && message.contains("not finite"),
        "{message}"
    );
    assert!(
        message.contains("step-00000003"),
        "names the last good checkpoint: {message}"
    );
    let latest = checkpoint::latest(&settings.out).unwrap().unwrap();
    assert!(latest.ends_with("step-00000003"));
    let ckpt = checkpoint::load(&latest, true).unwrap();
    assert_eq!(ckpt.meta.step, 3);
    assert!(ckpt
        .params
        .tensors
        .iter()
        .all(|t| t.data.iter().all(|x| x.is_finite())));
    assert_eq!(
        read_metrics(&settings.out.join(METRICS_FILE))
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn checkpoint_round_trip_and_eval() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 8, 16);
    let settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        2,
    );
    let run = TrainRun::prepare(settings.clone()).unwrap();
    let outcome = run
        .run(&mut CpuBackend::new(Some(1)).unwrap(), &mut Quiet)
        .unwrap();
    assert!(outcome.final_checkpoint.ends_with("step-00000002"));
    let ckpt = checkpoint::load(&outcome.final_checkpoint, true).unwrap();
    assert_eq!(ckpt.meta.step, 2);
    assert_eq!(
        ckpt.meta.cursor.position, 8,
        "2 steps x 4 sequences, one epoch of 8"
    );
    assert_eq!(ckpt.meta.tokenizer.sha256, train_common::TOKENIZER_SHA);
    ckpt.params.check_matches(&ckpt.meta.model).unwrap();
    assert_eq!(
        ckpt.optimizer_state.len(),
        ckpt.params.len(),
        "unfactored: one `v` per parameter"
    );
    assert!(ckpt
        .optimizer_state
        .contains_key("optimizer.embed_tokens.weight.v"));

    // Saving what was loaded gives back the same tensors.
    let state: Vec<_> = {
        let mut s: Vec<_> = ckpt.optimizer_state.clone().into_iter().collect();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        s
    };
    let copy = root.path().join("copy");
    let saved = checkpoint::save(&copy, &ckpt.meta, &ckpt.params, &state).unwrap();
    let again = checkpoint::load(&saved, true).unwrap();
    assert_eq!(again.params, ckpt.params);
    assert_eq!(again.optimizer_state, ckpt.optimizer_state);
    assert_eq!(again.meta, ckpt.meta);

    // Evaluation: DecLLM scores 15 next tokens a row; at --prefix-len 8, the last 8.
    let mut backend = CpuBackend::new(Some(1)).unwrap();
    let report = EvalJob::prepare(&settings.out, &data, EvalOptions::default())
        .unwrap()
        .run(&mut backend, |_| {})
        .unwrap();
    assert_eq!(report.overall.tokens, 8 * 15);
    assert_eq!(report.sources.len(), 2);
    assert_eq!(report.sources["web"].tokens, 4 * 15);
    // A backend with resident parameters gets them once for the whole evaluation (its
    // per-batch path panics), here over 3 batches of 3 rows, and reports the same.
    let small_batches = EvalOptions {
        batch_rows: 3,
        ..EvalOptions::default()
    };
    let by_three = |backend: &mut dyn Backend| {
        EvalJob::prepare(&settings.out, &data, small_batches.clone())
            .unwrap()
            .run(backend, |_| {})
            .unwrap()
    };
    let mut resident = HostResident::new(usize::MAX);
    let on_device = by_three(&mut resident);
    assert_eq!(resident.param_loads, 1);
    assert_eq!(
        serde_json::to_value(&on_device).unwrap(),
        serde_json::to_value(by_three(&mut backend)).unwrap()
    );
    assert_eq!(on_device.overall.tokens, report.overall.tokens);
    assert!((report.overall.ppl - report.overall.loss.exp()).abs() < 1e-9);
    let fixed = EvalJob::prepare(
        &outcome.final_checkpoint,
        &data,
        EvalOptions {
            prefix_len: Some(8),
            ..EvalOptions::default()
        },
    )
    .unwrap()
    .run(&mut backend, |_| {})
    .unwrap();
    assert_eq!(fixed.overall.tokens, 8 * 8);
    let json = serde_json::to_value(&fixed).unwrap();
    for key in ["loss", "ppl", "tokens", "sources"] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
}

#[test]
fn finetune_from_pretrained_weights() {
    let root = tempfile::tempdir().unwrap();
    let packed = packed_corpus(&root.path().join("rp"), 8, 16);
    let flan = examples_corpus(&root.path().join("flan"), 8);
    let pre = tiny_settings(
        Arch::Red,
        Mode::Pretrain,
        &packed,
        &root.path().join("pre"),
        1,
    );
    train(&pre, &mut CpuBackend::new(Some(1)).unwrap()).unwrap();
    let pretrained = final_params(&pre.out);

    let mut tune = tiny_settings(
        Arch::Red,
        Mode::Finetune,
        &flan,
        &root.path().join("tune"),
        1,
    );
    tune.init = Some(pre.out.clone());
    let run = TrainRun::prepare(tune.clone()).unwrap();
    assert_eq!(
        run.params, pretrained,
        "--init loads the pretrained weights"
    );
    assert_eq!(run.optimizer.step(), 0, "with a fresh optimizer");
    assert_eq!(run.start_step, 0);

    // A corpus encoded with another tokenizer is refused before any work.
    let other = packed_corpus_with_sha(&root.path().join("other"), 4, 16, &"2".repeat(64));
    let mut wrong = tiny_settings(Arch::Red, Mode::Pretrain, &other, &root.path().join("x"), 1);
    wrong.init = Some(pre.out.clone());
    let err = TrainRun::prepare(wrong).unwrap_err().to_string();
    assert!(err.contains("tokenizer mismatch"), "{err}");
    let err = EvalJob::prepare(&pre.out, &other, EvalOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer mismatch"), "{err}");

    // An architecture other than the checkpoint's is refused too.
    let mut dec = tiny_settings(
        Arch::Dec,
        Mode::Finetune,
        &flan,
        &root.path().join("dec"),
        1,
    );
    dec.init = Some(pre.out.clone());
    let err = TrainRun::prepare(dec).unwrap_err().to_string();
    assert!(err.contains("holds a red model"), "{err}");
}

#[test]
fn wrong_inputs_fail_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let packed = packed_corpus(&root.path().join("rp"), 4, 16);
    let flan = examples_corpus(&root.path().join("flan"), 4);

    let err = TrainRun::prepare(tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &flan,
        &root.path().join("a"),
        1,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("the corpus is `examples`"), "{err}");
    assert!(err.contains("--mode pretrain"), "{err}");
    let err = TrainRun::prepare(tiny_settings(
        Arch::Dec,
        Mode::Finetune,
        &packed,
        &root.path().join("b"),
        1,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("--mode finetune"), "{err}");

    let missing = root.path().join("missing");
    let err = TrainRun::prepare(tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &missing,
        &root.path().join("c"),
        1,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing"), "{err}");

    // A finished run is not overwritten without --resume.
    let settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &packed,
        &root.path().join("d"),
        1,
    );
    train(&settings, &mut CpuBackend::new(Some(1)).unwrap()).unwrap();
    let err = TrainRun::prepare(settings.clone()).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    // A resume with another seed would not continue the same data order.
    let mut reseeded = settings;
    reseeded.resume = true;
    reseeded.seed += 1;
    let err = TrainRun::prepare(reseeded).unwrap_err().to_string();
    assert!(err.contains("seed"), "{err}");
}

#[test]
fn old_checkpoints_are_pruned() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 4, 16);
    let mut settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        3,
    );
    settings.checkpoint_every = 1;
    settings.keep_checkpoints = 2;
    train(&settings, &mut CpuBackend::new(Some(1)).unwrap()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(settings.out.join(checkpoint::CHECKPOINTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["step-00000002", "step-00000003"]);
}

/// A backend that claims resident training but keeps its "device" state on the host, doing
/// each step with the same functions the host loop uses: a run through the loop's resident path
/// must then give the same bits as the plain CPU run. It refuses the trait's per-step path, so
/// the loop cannot fall back to it unseen, and can report a non-finite gradient norm from a
/// given step on.
struct HostResident {
    cpu: CpuBackend,
    state: Option<(ParamStore, Adafactor, ParamStore)>,
    loads: usize,
    stores: usize,
    updates: usize,
    nan_from_update: usize,
    /// Micro-batches that arrived staged by `HostStager`, checked against their batches.
    staged: usize,
    /// Parameters `load_params` put on the "device", and how often it was called.
    eval_params: Option<ParamStore>,
    param_loads: usize,
}

/// A batch's contents in one number.
fn fingerprint(batch: &Batch) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let words = batch.tokens.iter().map(|&t| t as u64);
    let lens = batch
        .length
        .iter()
        .chain(&batch.prefix_len)
        .map(|&v| v as u64);
    for v in words.chain(lens) {
        h = (h ^ v).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Stages a batch as the thread that ran it and the batch's fingerprint, so the resident step
/// can check that staging ran on the loader's thread and reached the step with its own batch.
struct HostStager;

impl Stager for HostStager {
    fn stage(&self, batch: &Batch) -> Staged {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        Box::new((thread, fingerprint(batch)))
    }
}

impl HostResident {
    fn new(nan_from_update: usize) -> HostResident {
        HostResident {
            cpu: CpuBackend::new(Some(1)).unwrap(),
            state: None,
            loads: 0,
            stores: 0,
            updates: 0,
            nan_from_update,
            staged: 0,
            eval_params: None,
            param_loads: 0,
        }
    }
}

impl Backend for HostResident {
    fn name(&self) -> String {
        "host-resident cpu".into()
    }
    fn forward_backward(
        &mut self,
        _: &ModelConfig,
        _: &ParamStore,
        _: &Batch,
        _: &StepOptions,
        _: &mut ParamStore,
    ) -> Result<LossStats, BackendError> {
        panic!("a resident backend's per-step trait path was used")
    }
    fn forward_loss(
        &mut self,
        _: &ModelConfig,
        _: &ParamStore,
        _: &Batch,
        _: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        panic!("a resident backend's per-batch evaluation path was used")
    }
    fn resident(&mut self) -> Option<&mut dyn ResidentTraining> {
        Some(self)
    }
}

impl ResidentTraining for HostResident {
    fn load_training(
        &mut self,
        _: &ModelConfig,
        params: &ParamStore,
        optimizer: &Adafactor,
    ) -> Result<(), BackendError> {
        self.loads += 1;
        self.state = Some((params.clone(), optimizer.clone(), params.zeros_like()));
        Ok(())
    }
    fn load_params(&mut self, _: &ModelConfig, params: &ParamStore) -> Result<(), BackendError> {
        self.param_loads += 1;
        self.eval_params = Some(params.clone());
        Ok(())
    }
    fn forward_loss_loaded(
        &mut self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        let params = match (&self.eval_params, &self.state) {
            (Some(p), _) | (None, Some((p, _, _))) => p,
            (None, None) => panic!("no parameters loaded"),
        };
        self.cpu.forward_loss(config, params, batch, options)
    }
    fn stager(&self, _: &ModelConfig, _: &StepOptions) -> Option<Arc<dyn Stager>> {
        Some(Arc::new(HostStager))
    }
    fn accumulate(
        &mut self,
        config: &ModelConfig,
        micro_batches: &[MicroBatch<'_>],
    ) -> Result<Vec<LossStats>, BackendError> {
        for mb in micro_batches {
            let staged = mb.staged.expect("every batch staged");
            let (thread, print) = staged
                .downcast_ref::<(String, u64)>()
                .expect("HostStager's");
            assert_eq!(thread, "redpack-batches", "staged on the loader thread");
            assert_eq!(*print, fingerprint(mb.batch), "staged with its own batch");
            self.staged += 1;
        }
        let (params, _, grads) = self.state.as_mut().expect("loaded");
        grads.fill_zero();
        let batches: Vec<_> = micro_batches.iter().map(|m| (m.batch, m.options)).collect();
        self.cpu
            .forward_backward_many(config, params, &batches, grads)
    }
    fn apply_update(
        &mut self,
        scale: f32,
        clip: Option<f64>,
        lr: f32,
    ) -> Result<(f64, Option<UpdateStats>), BackendError> {
        let (params, optimizer, grads) = self.state.as_mut().expect("loaded");
        self.updates += 1;
        optim::scale_grads(grads, scale);
        let norm = match clip {
            Some(max) => optim::clip_global_norm(grads, max),
            None => optim::global_norm(grads),
        };
        if self.updates >= self.nan_from_update {
            return Ok((f64::NAN, None));
        }
        let update = optimizer
            .update(params, grads, lr)
            .map_err(|e| BackendError::Device(e.to_string()))?;
        Ok((norm, Some(update)))
    }
    fn store_training(
        &mut self,
        params: &mut ParamStore,
        optimizer: &mut Adafactor,
    ) -> Result<(), BackendError> {
        self.stores += 1;
        let (p, o, _) = self.state.as_ref().expect("loaded");
        *params = p.clone();
        *optimizer = o.clone();
        Ok(())
    }
}

#[test]
fn the_resident_path_of_the_loop_matches_the_host_loop_bitwise() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 10, 16);
    let mut settings = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("host"),
        6,
    );
    settings.grad_clip_norm = Some(0.5);
    let host = train(&settings, &mut CpuBackend::new(Some(1)).unwrap()).unwrap();

    // Straight through the resident path: one load, a store before each of the 2 checkpoints.
    settings.out = root.path().join("resident");
    let mut resident = HostResident::new(usize::MAX);
    let got = train(&settings, &mut resident).unwrap();
    assert_eq!((resident.loads, resident.stores), (1, 2));
    assert_eq!(resident.staged, 6 * settings.accum as usize);
    let strip = |m: &[StepMetrics]| m.iter().map(deterministic).collect::<Vec<_>>();
    assert_eq!(strip(&got), strip(&host));
    assert_eq!(
        final_params(&root.path().join("host")),
        final_params(&root.path().join("resident"))
    );

    // A non-finite gradient norm at step 5 stops the run, naming the step-3 checkpoint, and a
    // resume loads the parameters and optimizer state from it onto the "device" again.
    settings.out = root.path().join("resumed");
    let err = train(&settings, &mut HostResident::new(5)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("step 5") && message.contains("gradient norm"),
        "{message}"
    );
    assert!(message.contains("step-00000003"), "{message}");
    settings.resume = true;
    let mut again = HostResident::new(usize::MAX);
    let tail = train(&settings, &mut again).unwrap();
    assert_eq!(again.loads, 1);
    assert_eq!(tail.first().map(|m| m.step), Some(4));
    // Both read back from their files (the JSON round trip of a value is compared with itself).
    let read = |run: &str| read_metrics(&root.path().join(run).join(METRICS_FILE)).unwrap();
    assert_eq!(strip(&read("resumed")), strip(&read("host")));
    assert_eq!(
        final_params(&root.path().join("host")),
        final_params(&root.path().join("resumed"))
    );
}
