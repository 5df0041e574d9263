//! `redpack study run`: the study's corpora, its grid, then every run in order (skipping finished
//! runs, resuming an interrupted one), each trained and evaluated through the library. One
//! progress line per run (steps, ETA) under one for the whole study (runs, ETA).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use redpack_schemas::manifest::Layout;
use redpack_trainer::backend::{open_backend, Backend, DeviceChoice};
use redpack_trainer::checkpoint;
use redpack_trainer::data::open_corpus;
use redpack_trainer::metrics::{
    read_metrics, EvalMetrics, StepMetrics, StepObserver, METRICS_FILE,
};
use redpack_trainer::run::TrainRun;
use redpack_trainer::study::report::{StudyState, STATE_FILE};
use redpack_trainer::study::state::{self, DoneRecord, RunState};
use redpack_trainer::study::{execute, expand, slurm, CorpusShape, RunPlan, Study};
use serde::Serialize;

use super::corpus;
use super::tasks::{self, StudyTasks};
use crate::cli::study::{EmitArg, StudyRunArgs};

/// What happened to one run in this invocation.
#[derive(Debug, Serialize)]
struct RunOutcome {
    name: String,
    /// `finished` (before this invocation), `trained` or `resumed`.
    status: &'static str,
    steps: u64,
    train_seconds: f64,
    eval_seconds: f64,
}

fn shape_of(pretrain: &Path) -> anyhow::Result<CorpusShape> {
    let (_, summary) = open_corpus(pretrain)
        .with_context(|| format!("{}: cannot open the pretraining corpus", pretrain.display()))?;
    match summary.layout {
        Layout::Packed {
            seq_len,
            prefix_len,
        } => Ok(CorpusShape {
            seq_len: seq_len as usize,
            prefix_len: prefix_len as usize,
            vocab_size: summary.tokenizer.vocab_size as usize,
        }),
        Layout::Examples { .. } => anyhow::bail!(
            "{}: the pretraining corpus must be packed, this is an examples corpus",
            pretrain.display()
        ),
    }
}

/// The study's device, opened; the note says which device and why.
fn open_device(name: &str, threads: Option<usize>) -> anyhow::Result<(Box<dyn Backend>, String)> {
    let choice = match name {
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda,
        _ => DeviceChoice::Auto,
    };
    let opened = open_backend(choice, threads, None)?;
    Ok((opened.backend, opened.note))
}

pub fn run(args: StudyRunArgs) -> anyhow::Result<ExitCode> {
    let study = Study::load(&args.study)?;
    // Task files are read first: a missing download fails before any training.
    let study_tasks = tasks::load(&study)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the study folder", args.out.display()))?;
    let out = args
        .out
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", args.out.display()))?;
    let threads = study.file.threads;
    let (corpora, synthetic) = corpus::prepare(&study, &out, threads, args.json)?;
    let shape = shape_of(&corpora.pretrain)?;
    let plans = expand(&study, &corpora, shape, &out)?;
    // Every run is checked before any work, so a changed study fails at once.
    let evaluation = match &study.file.tasks {
        None => state::evaluation_fingerprint(&(&study.file.eval, &corpora, shape)),
        Some(spec) => state::evaluation_fingerprint(&(&study.file.eval, &corpora, shape, spec)),
    };
    let mut states = Vec::with_capacity(plans.len());
    for plan in &plans {
        states.push(state::check(plan, &evaluation)?);
    }
    let study_file = args
        .study
        .canonicalize()
        .unwrap_or_else(|_| args.study.clone());
    state::write_json(
        &out.join(STATE_FILE),
        &StudyState {
            name: study.file.name.clone(),
            description: study.file.description.clone(),
            study_file: study_file.clone(),
            synthetic,
            shape,
            corpora: corpora.clone(),
            plans: plans.clone(),
        },
    )?;
    if args.emit == Some(EmitArg::Slurm) {
        let dir = out.join("slurm");
        for (name, text, executable) in slurm::emit(&plans, &study_file, &out, &study.file.slurm) {
            let path = dir.join(&name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
            redpack_schemas::atomic::write_file(&path, text.as_bytes())
                .with_context(|| format!("{}: cannot write", path.display()))?;
            if executable {
                set_executable(&path)?;
            }
        }
        println!(
            "wrote {} (one task per run, {} runs): submit with {}",
            dir.join("study.sbatch").display(),
            plans.len(),
            dir.join("submit.sh").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let selected: Vec<usize> = match &args.only {
        Some(name) => {
            let i = plans
                .iter()
                .position(|p| &p.name == name)
                .with_context(|| {
                    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
                    format!(
                        "--only {name}: no such run; the runs are {}",
                        names.join(", ")
                    )
                })?;
            vec![i]
        }
        None => (0..plans.len()).collect(),
    };
    let progress = Progress::new(selected.len() as u64, args.json);
    let mut outcomes = Vec::new();
    let mut trained = 0usize;
    for (n, &i) in selected.iter().enumerate() {
        let plan = &plans[i];
        let label = format!("[{}/{}] {}", n + 1, selected.len(), plan.name);
        if let RunState::Finished(done) = &states[i] {
            progress.line(format!("{label}: finished before, skipped"));
            progress.run_done();
            outcomes.push(RunOutcome {
                name: plan.name.clone(),
                status: "finished",
                steps: plan.settings.steps,
                train_seconds: done.train_seconds,
                eval_seconds: done.eval_seconds,
            });
            continue;
        }
        if args.max_runs.is_some_and(|max| trained >= max) {
            progress.line(format!(
                "stopped after {trained} runs (--max-runs); rerun to continue"
            ));
            break;
        }
        if let Some(from) = &plan.init_from {
            let j = plans.iter().position(|p| &p.name == from).unwrap_or(i);
            if state::done(plans[j].dir())?.is_none() {
                anyhow::bail!(
                    "run {}: its pretraining run {from} is not finished: run it first (--only {from})",
                    plan.name
                );
            }
        }
        let status = match states[i] {
            RunState::Interrupted => "resumed",
            RunState::Stale => "re-evaluated",
            _ => "trained",
        };
        // A fresh backend per run: nothing a run leaves on the device outlives it.
        let (mut backend, note) = open_device(&study.file.device, threads)?;
        if trained == 0 {
            progress.line(note);
        }
        let done = run_one(
            plan,
            &states[i],
            (&corpora, shape, &evaluation),
            (&study, study_tasks.as_ref()),
            backend.as_mut(),
            &progress,
            &label,
        )?;
        trained += 1;
        progress.run_done();
        outcomes.push(RunOutcome {
            name: plan.name.clone(),
            status,
            steps: plan.settings.steps,
            train_seconds: done.train_seconds,
            eval_seconds: done.eval_seconds,
        });
    }
    progress.finish();
    if args.json {
        let summary = serde_json::json!({
            "study": study.file.name,
            "out": out,
            "runs": outcomes,
            "total_runs": plans.len(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let finished = plans
            .iter()
            .filter(|p| matches!(state::done(p.dir()), Ok(Some(_))))
            .count();
        println!(
            "{finished} of {} runs finished in {}; `redpack study report {}` writes the report",
            plans.len(),
            out.display(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("{}: cannot make executable", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Trains (or resumes) and evaluates one run, then marks it finished.
fn run_one(
    plan: &RunPlan,
    run_state: &RunState,
    (corpora, shape, evaluation): (&redpack_trainer::study::Corpora, CorpusShape, &str),
    (study, study_tasks): (&Study, Option<&StudyTasks<'_>>),
    backend: &mut dyn Backend,
    progress: &Progress,
    label: &str,
) -> anyhow::Result<DoneRecord> {
    state::start(plan)?;
    let settings = execute::settings_now(plan, run_state)?;
    let train = TrainRun::prepare(settings)
        .with_context(|| format!("run {}: cannot start training", plan.name))?;
    let mut bar = progress.run_bar(label, plan.settings.steps, train.start_step);
    let started = Instant::now();
    let outcome = train.run(backend, &mut bar);
    bar.bar.finish_and_clear();
    outcome.with_context(|| format!("run {}: training stopped", plan.name))?;
    let trained_in = started.elapsed();
    let started = Instant::now();
    let eval_label = label.to_string();
    execute::evaluate(
        plan,
        corpora,
        shape,
        &study.file.eval,
        backend,
        study.file.threads,
        |part| progress.status(format!("{eval_label}: evaluating ({part})")),
    )?;
    if let Some(study_tasks) = study_tasks {
        tasks::score(
            plan,
            study_tasks,
            &study.file.device,
            study.file.threads,
            |part| progress.status(format!("{eval_label}: evaluating ({part})")),
        )?;
    }
    let eval_seconds = started.elapsed().as_secs_f64();
    let metrics_path = plan.dir().join(METRICS_FILE);
    let metrics = read_metrics(&metrics_path)
        .with_context(|| format!("run {}: cannot read its metrics", plan.name))?;
    let final_checkpoint: PathBuf = execute::final_checkpoint(plan)?;
    let meta = checkpoint::load_meta(&final_checkpoint)
        .with_context(|| format!("run {}: cannot read its checkpoint", plan.name))?;
    let done = DoneRecord {
        fingerprint: state::fingerprint(plan),
        evaluation: evaluation.to_string(),
        model: meta.model,
        final_checkpoint,
        // Every step's time, over all the invocations that trained the run.
        train_seconds: metrics.iter().map(|m| m.elapsed_s).sum(),
        eval_seconds,
    };
    state::finish(plan.dir(), &done)?;
    let last = metrics.last();
    progress.line(format!(
        "{label}: {} steps, train loss {:.4}, {:.1} s training ({:.1} s in this call), {:.1} s evaluation",
        last.map_or(0, |m| m.step),
        last.map_or(f64::NAN, |m| m.loss),
        done.train_seconds,
        trained_in.as_secs_f64(),
        eval_seconds
    ));
    Ok(done)
}

/// The study's bars: the whole study on top, the current run below.
struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
    quiet: bool,
}

impl Progress {
    fn new(runs: u64, quiet: bool) -> Progress {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(4)
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(runs));
        if let Ok(style) = ProgressStyle::with_template(
            "study {elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}",
        ) {
            overall.set_style(style.progress_chars("=> "));
        }
        overall.enable_steady_tick(Duration::from_millis(500));
        Progress {
            multi,
            overall,
            quiet,
        }
    }

    /// A line above the bars (or on stderr when they are hidden).
    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }

    fn status(&self, text: String) {
        self.overall.set_message(text);
    }

    fn run_done(&self) {
        self.overall.inc(1);
        self.overall.set_message("");
    }

    fn run_bar(&self, label: &str, steps: u64, start: u64) -> RunBar {
        let bar = self.multi.add(ProgressBar::new(steps));
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps, ETA {eta} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar.set_position(start);
        RunBar { bar }
    }

    fn finish(&self) {
        self.overall.finish_and_clear();
    }
}

/// The current run's bar, fed by the training loop.
struct RunBar {
    bar: ProgressBar,
}

impl StepObserver for RunBar {
    fn on_step(&mut self, m: &StepMetrics) {
        self.bar.set_position(m.step);
        self.bar.set_message(format!("loss {:.4}", m.loss));
    }

    fn on_eval(&mut self, step: u64, eval: &EvalMetrics) {
        self.bar
            .set_message(format!("step {step}: eval loss {:.4}", eval.loss));
    }
}
