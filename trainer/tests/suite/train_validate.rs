//! Validation while training (`--eval-data`): eval records land on the right steps of
//! `metrics.jsonl` and equal `redpack eval` on the same parameters; training is bitwise the same
//! with and without validation (CPU, and on the CUDA backend's resident path); the best
//! checkpoint is the minimum over the evaluations and loads; a resume across an evaluation keeps
//! the best so far and stays exact; a wrong eval corpus fails before the first step.

use super::cuda_support;
use super::train_common;

use std::path::{Path, PathBuf};

use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::cuda::{CudaBackend, CudaOptions};
use redpack_trainer::backend::{Backend, Precision};
use redpack_trainer::checkpoint::{self, BestEval};
use redpack_trainer::config::Arch;
use redpack_trainer::eval::{EvalJob, EvalOptions};
use redpack_trainer::metrics::{read_metrics, Quiet, StepMetrics, METRICS_FILE};
use redpack_trainer::params::ParamStore;
use redpack_trainer::run::{
    EvalRecipe, Mode, Recipe, TrainOutcome, TrainRun, TrainSettings, Validation,
};
use redpack_trainer::schedule::Schedule;
use train_common::{examples_corpus, packed_corpus, packed_corpus_with_sha, tiny_settings};

fn cpu() -> CpuBackend {
    CpuBackend::new(Some(1)).unwrap()
}

fn train(settings: &TrainSettings, backend: &mut dyn Backend) -> TrainOutcome {
    TrainRun::prepare(settings.clone())
        .expect("prepare")
        .run(backend, &mut Quiet)
        .expect("train")
}

fn with_eval(
    settings: &TrainSettings,
    data: &Path,
    every: u64,
    rows: Option<u64>,
) -> TrainSettings {
    TrainSettings {
        eval: Some(Validation {
            data: data.to_path_buf(),
            every,
            rows,
            keep_best: settings.mode == Mode::Finetune,
        }),
        ..settings.clone()
    }
}

/// The training part of a record: everything but the wall clock and the evaluation.
fn training_part(m: &StepMetrics) -> StepMetrics {
    StepMetrics {
        elapsed_s: 0.0,
        tokens_per_s: 0.0,
        eval: None,
        ..m.clone()
    }
}

fn params_of(dir: &Path) -> ParamStore {
    checkpoint::load(dir, false).unwrap().params
}

fn final_params(out: &Path) -> ParamStore {
    params_of(&checkpoint::latest(out).unwrap().unwrap())
}

fn best_dir(out: &Path) -> PathBuf {
    out.join(checkpoint::CHECKPOINTS_DIR)
        .join(checkpoint::BEST_DIR)
}

/// `redpack eval` (the library's `EvalJob`) on a checkpoint: pooled and source-averaged loss.
fn eval_job(ckpt: &Path, data: &Path, rows: Option<u64>) -> (f64, f64) {
    let report = EvalJob::prepare(
        ckpt,
        data,
        EvalOptions {
            max_examples: rows,
            ..EvalOptions::default()
        },
    )
    .expect("eval prepare")
    .run(&mut cpu(), |_| {})
    .expect("eval run");
    let avg = report.sources.values().map(|s| s.loss).sum::<f64>() / report.sources.len() as f64;
    (report.overall.loss, avg)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

#[test]
fn eval_records_sit_on_their_steps_and_equal_redpack_eval() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("train"), 16, 24);
    // Rows of another length than training's, from other documents.
    let held = packed_corpus(&root.path().join("held"), 6, 20);
    let out = root.path().join("run");
    let mut settings = tiny_settings(Arch::Red, Mode::Pretrain, &data, &out, 7);
    settings.checkpoint_every = 1;
    let settings = with_eval(&settings, &held, 3, Some(5));
    let outcome = train(&settings, &mut cpu());
    let records = read_metrics(&out.join(METRICS_FILE)).unwrap();
    let eval_steps = |v: &[StepMetrics]| -> Vec<u64> {
        v.iter()
            .filter(|m| m.eval.is_some())
            .map(|m| m.step)
            .collect()
    };
    assert_eq!(records.len(), 7);
    assert_eq!(
        eval_steps(&records),
        vec![3, 6, 7],
        "every 3 steps and the last"
    );
    assert_eq!(eval_steps(&outcome.metrics), vec![3, 6, 7]);
    for m in records.iter().filter(|m| m.eval.is_some()) {
        let e = m.eval.as_ref().unwrap();
        assert_eq!(e.examples, 5, "--eval-rows");
        assert_eq!(
            e.sources.keys().collect::<Vec<_>>(),
            vec!["code", "web"],
            "per-source losses"
        );
        let avg = (e.sources["code"] + e.sources["web"]) / 2.0;
        assert!(close(e.source_avg_loss, avg));
        assert!(close(e.ppl, e.loss.exp()));
        // The same parameters scored by `redpack eval`.
        let dir = out
            .join(checkpoint::CHECKPOINTS_DIR)
            .join(checkpoint::step_dir_name(m.step));
        let (pooled, averaged) = eval_job(&dir, &held, Some(5));
        assert!(
            close(e.loss, pooled) && close(e.source_avg_loss, averaged),
            "step {}: validation {} / {}, redpack eval {pooled} / {averaged}",
            m.step,
            e.loss,
            e.source_avg_loss
        );
    }
    // A pretraining run keeps no best checkpoint unless asked, but tracks the best evaluation.
    assert!(!best_dir(&out).exists());
    assert!(outcome.best_checkpoint.is_none());
    let best = outcome.best.expect("best evaluation");
    let last_meta = checkpoint::load_meta(&checkpoint::latest(&out).unwrap().unwrap()).unwrap();
    assert_eq!(last_meta.best.as_ref(), Some(&best));
}

fn assert_training_unchanged(arch: Arch, mode: Mode) {
    let root = tempfile::tempdir().unwrap();
    let (data, held) = match mode {
        Mode::Pretrain => (
            packed_corpus(&root.path().join("train"), 16, 24),
            packed_corpus(&root.path().join("held"), 5, 24),
        ),
        Mode::Finetune => (
            examples_corpus(&root.path().join("train"), 16),
            examples_corpus(&root.path().join("held"), 7),
        ),
    };
    let plain = tiny_settings(arch, mode, &data, &root.path().join("plain"), 5);
    let mut validated = with_eval(&plain, &held, 2, None);
    validated.out = root.path().join("validated");
    let a = train(&plain, &mut cpu()).metrics;
    let b = train(&validated, &mut cpu()).metrics;
    assert!(a.iter().all(|m| m.eval.is_none()));
    assert_eq!(
        b.iter().filter(|m| m.eval.is_some()).count(),
        3,
        "steps 2, 4, 5"
    );
    // Bitwise: f64 equality of every loss, norm and count.
    let strip = |v: &[StepMetrics]| v.iter().map(training_part).collect::<Vec<_>>();
    assert_eq!(strip(&a), strip(&b), "{arch:?} {mode:?}");
    let (x, y) = (
        final_params(&root.path().join("plain")),
        final_params(&root.path().join("validated")),
    );
    assert_eq!(x.tensors, y.tensors, "{arch:?} {mode:?}: final parameters");
}

#[test]
fn validation_does_not_change_training() {
    assert_training_unchanged(Arch::Dec, Mode::Pretrain);
    assert_training_unchanged(Arch::Red, Mode::Pretrain);
    // Finetuning has dropout on: its seeds must not move either.
    assert_training_unchanged(Arch::Dec, Mode::Finetune);
    assert_training_unchanged(Arch::Red, Mode::Finetune);
}

/// The minimum over the eval records (the earliest on a tie).
fn minimum(records: &[StepMetrics]) -> (u64, f64) {
    records
        .iter()
        .filter_map(|m| m.eval.as_ref().map(|e| (m.step, e.loss)))
        .fold(None, |best: Option<(u64, f64)>, (s, l)| match best {
            Some((_, b)) if b <= l => best,
            _ => Some((s, l)),
        })
        .unwrap()
}

#[test]
fn a_finetuning_run_keeps_its_best_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let data = examples_corpus(&root.path().join("train"), 16);
    let held = examples_corpus(&root.path().join("held"), 9);
    let out = root.path().join("run");
    let mut settings = tiny_settings(Arch::Red, Mode::Finetune, &data, &out, 7);
    settings.checkpoint_every = 1;
    // A rate high enough that the eval loss does not simply fall step after step.
    settings.schedule = Schedule::Constant { lr: 0.2 };
    let settings = with_eval(&settings, &held, 1, None);
    let outcome = train(&settings, &mut cpu());
    let records = read_metrics(&out.join(METRICS_FILE)).unwrap();
    let losses: Vec<f64> = records
        .iter()
        .map(|m| m.eval.as_ref().unwrap().loss)
        .collect();
    cuda_support::say(&format!("eval losses: {losses:?}"));
    let (step, loss) = minimum(&records);
    assert!(
        step < 7,
        "the run is meant to end above its best: {losses:?}"
    );
    // The `best` flags mark each new minimum.
    let mut low = f64::INFINITY;
    for m in &records {
        let e = m.eval.as_ref().unwrap();
        assert_eq!(e.best, e.loss < low, "step {}", m.step);
        low = low.min(e.loss);
    }
    let dir = best_dir(&out);
    assert_eq!(outcome.best_checkpoint.as_deref(), Some(dir.as_path()));
    let best = checkpoint::load_best(&dir).unwrap();
    assert_eq!((best.step, best.loss), (step, loss));
    assert_eq!(outcome.best.as_ref(), Some(&best));
    // A real checkpoint of that step: its metadata says so, its weights are that step's, and
    // `redpack eval` on it gives the recorded loss.
    let ckpt = checkpoint::load(&dir, true).unwrap();
    assert_eq!(ckpt.meta.step, step);
    assert_eq!(ckpt.meta.best.as_ref(), Some(&best));
    assert!(!ckpt.optimizer_state.is_empty());
    let at_step = params_of(
        &out.join(checkpoint::CHECKPOINTS_DIR)
            .join(checkpoint::step_dir_name(step)),
    );
    assert_eq!(ckpt.params.tensors, at_step.tensors);
    let (pooled, _) = eval_job(&dir, &held, None);
    assert!(close(pooled, loss), "{pooled} vs {loss}");
    // The best checkpoint is never the one a run resumes from.
    assert_eq!(
        checkpoint::latest(&out)
            .unwrap()
            .unwrap()
            .file_name()
            .unwrap(),
        checkpoint::step_dir_name(7).as_str()
    );
}

#[test]
fn a_resume_across_an_evaluation_keeps_the_best_and_stays_exact() {
    let root = tempfile::tempdir().unwrap();
    let data = examples_corpus(&root.path().join("train"), 16);
    let held = examples_corpus(&root.path().join("held"), 9);
    let base = tiny_settings(
        Arch::Dec,
        Mode::Finetune,
        &data,
        &root.path().join("straight"),
        8,
    );
    let mut straight = with_eval(&base, &held, 2, Some(6));
    straight.schedule = Schedule::Constant { lr: 0.2 };
    train(&straight, &mut cpu());

    // Stopped after step 4 (an evaluation and a checkpoint), then resumed to step 8.
    let mut first = straight.clone();
    first.out = root.path().join("resumed");
    first.steps = 4;
    let head = train(&first, &mut cpu());
    let best_at_4: BestEval = head.best.clone().unwrap();
    let mut rest = first.clone();
    rest.steps = 8;
    rest.resume = true;
    let resumed = TrainRun::prepare(rest.clone()).unwrap();
    assert_eq!(resumed.start_step, 4);
    assert_eq!(
        resumed.best.as_ref(),
        Some(&best_at_4),
        "best so far from the checkpoint"
    );
    resumed.run(&mut cpu(), &mut Quiet).unwrap();

    let a = read_metrics(&root.path().join("straight").join(METRICS_FILE)).unwrap();
    let b = read_metrics(&root.path().join("resumed").join(METRICS_FILE)).unwrap();
    let deterministic = |v: &[StepMetrics]| {
        v.iter()
            .map(|m| StepMetrics {
                elapsed_s: 0.0,
                tokens_per_s: 0.0,
                ..m.clone()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        deterministic(&a),
        deterministic(&b),
        "metrics, evaluations included"
    );
    let (s, r) = (
        best_dir(&root.path().join("straight")),
        best_dir(&root.path().join("resumed")),
    );
    assert_eq!(
        checkpoint::load_best(&s).unwrap(),
        checkpoint::load_best(&r).unwrap()
    );
    assert_eq!(params_of(&s).tensors, params_of(&r).tensors);
    assert_eq!(
        final_params(&root.path().join("straight")).tensors,
        final_params(&root.path().join("resumed")).tensors
    );

    // Another eval set would make the best so far meaningless.
    let other = examples_corpus(&root.path().join("other"), 9);
    let mut moved = rest.clone();
    moved.steps = 10;
    moved.eval.as_mut().unwrap().data = other;
    let err = TrainRun::prepare(moved).unwrap_err().to_string();
    assert!(
        err.contains("best checkpoint") && err.contains("--eval-data"),
        "{err}"
    );
}

#[test]
fn a_wrong_eval_corpus_fails_before_the_first_step() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("train"), 8, 24);
    let base = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("run"),
        2,
    );
    let fails = |eval: &Path| {
        let err = TrainRun::prepare(with_eval(&base, eval, 1, None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&eval.display().to_string()) && err.contains("--eval-data"),
            "{err}"
        );
        assert!(!root.path().join("run").join(METRICS_FILE).exists());
        err
    };
    let err = fails(&root.path().join("missing"));
    assert!(err.contains("cannot open the eval corpus"), "{err}");
    let other = packed_corpus_with_sha(&root.path().join("other-tok"), 4, 24, &"2".repeat(64));
    let err = fails(&other);
    assert!(err.contains("tokenizer mismatch"), "{err}");
    let examples = examples_corpus(&root.path().join("examples"), 4);
    let err = fails(&examples);
    assert!(err.contains("same kind"), "{err}");

    // Settings: eval switches without eval data, and zero counts.
    let resolve = |eval: EvalRecipe| {
        TrainSettings::resolve(
            Recipe {
                arch: Some(Arch::Dec),
                mode: Some(Mode::Finetune),
                eval,
                ..Recipe::default()
            },
            data.clone(),
            root.path().join("x"),
            None,
            false,
        )
    };
    let err = resolve(EvalRecipe {
        every: Some(5),
        ..EvalRecipe::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("without eval data") && err.contains("--eval-data"),
        "{err}"
    );
    for (every, rows, flag) in [
        (Some(0), None, "--eval-every"),
        (None, Some(0), "--eval-rows"),
    ] {
        let err = resolve(EvalRecipe {
            data: Some(data.clone()),
            every,
            rows,
            keep_best: None,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(flag), "{err}");
    }
    // The defaults: every checkpoint, best kept when finetuning.
    let s = resolve(EvalRecipe {
        data: Some(data.clone()),
        ..EvalRecipe::default()
    })
    .unwrap();
    let v = s.eval.unwrap();
    assert_eq!(
        (v.every, v.rows, v.keep_best),
        (s.checkpoint_every, None, true)
    );
}

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

/// On the CUDA backend the evaluation runs on the resident training parameters between steps:
/// the training is bitwise that of the run without validation, and the eval losses are the
/// CPU's to rounding.
#[test]
fn validation_on_cuda_leaves_resident_training_alone() {
    let test = "validation_on_cuda_leaves_resident_training_alone";
    let mut gpu = cuda(test);
    let root = tempfile::tempdir().unwrap();
    let data = examples_corpus(&root.path().join("train"), 8);
    let held = examples_corpus(&root.path().join("held"), 4);
    let plain = tiny_settings(
        Arch::Red,
        Mode::Finetune,
        &data,
        &root.path().join("plain"),
        3,
    );
    let mut validated = with_eval(&plain, &held, 1, None);
    validated.out = root.path().join("validated");
    let a = train(&plain, &mut gpu).metrics;
    let b = train(&validated, &mut gpu).metrics;
    let strip = |v: &[StepMetrics]| v.iter().map(training_part).collect::<Vec<_>>();
    assert_eq!(
        strip(&a),
        strip(&b),
        "{test}: training with and without validation"
    );
    assert_eq!(
        final_params(&root.path().join("plain")).tensors,
        final_params(&root.path().join("validated")).tensors,
        "{test}: final parameters"
    );
    let mut on_cpu = validated.clone();
    on_cpu.out = root.path().join("cpu");
    let c = train(&on_cpu, &mut cpu()).metrics;
    for (g, c) in b.iter().zip(&c) {
        let (ge, ce) = (g.eval.as_ref().unwrap(), c.eval.as_ref().unwrap());
        cuda_support::say(&format!(
            "{test}: step {}: eval loss gpu {:.6} cpu {:.6}",
            g.step, ge.loss, ce.loss
        ));
        assert!(
            (ge.loss - ce.loss).abs() / ce.loss < 1e-5,
            "{test}: step {}",
            g.step
        );
        assert!((ge.source_avg_loss - ce.source_avg_loss).abs() / ce.source_avg_loss < 1e-5);
    }
}

/// The `[eval]` table the finetuning recipes show (commented out) parses and resolves, and the
/// command line's eval data replaces the recipe's.
#[test]
fn the_recipes_eval_table_resolves() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/redllm-tiny-finetune.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("\n[eval]\n"), "{uncommented}");
    let recipe = Recipe::from_toml(&uncommented, "recipe").unwrap();
    let resolve = |recipe: Recipe| {
        TrainSettings::resolve(recipe, "data".into(), "out".into(), None, false).unwrap()
    };
    let v = resolve(recipe.clone()).eval.unwrap();
    assert_eq!(
        v,
        Validation {
            data: "corpora/flan/eval".into(),
            every: 50,
            rows: Some(2000),
            keep_best: true
        }
    );
    let flags = Recipe {
        eval: EvalRecipe {
            data: Some("held".into()),
            ..EvalRecipe::default()
        },
        ..Recipe::default()
    };
    let v = resolve(recipe.overlay(flags)).eval.unwrap();
    assert_eq!((v.data, v.every), (PathBuf::from("held"), 50));
    // Without the table, no validation.
    assert!(resolve(Recipe::from_toml(&text, "recipe").unwrap())
        .eval
        .is_none());
}
