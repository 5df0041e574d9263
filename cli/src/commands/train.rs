//! `redpack train`: resolve the recipe and flags into settings, check everything, then run the
//! loop with a progress bar on stderr and a summary on stdout.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redpack_trainer::backend::{open_backend, open_backend_on, Backend, DeviceChoice, Precision};
use redpack_trainer::config::{human_count, Arch, ModelOverrides};
use redpack_trainer::dist::{launch, nccl, HangLimits, Launch, Link, Parallel};
use redpack_trainer::metrics::{EvalMetrics, Quiet, StepMetrics, StepObserver};
use redpack_trainer::run::health::HealthRecipe;
use redpack_trainer::run::memory;
use redpack_trainer::run::{
    EvalRecipe, Mode, ObjectiveRecipe, Recipe, TrainError, TrainRun, TrainSettings,
};

use crate::cli::train::{ArchArg, DeviceArg, ModeArg, PrecisionArg, TrainArgs};

/// The backend `--device` and `--precision` ask for: CUDA when asked (failing with the probe's
/// reason when there is no driver or device) or when `auto` finds a device, else the CPU. The
/// choice, and why `auto` fell back to the CPU, goes to stderr.
pub fn backend_for(
    device: DeviceArg,
    threads: Option<usize>,
    precision: Option<PrecisionArg>,
) -> anyhow::Result<Box<dyn Backend>> {
    check_threads(threads)?;
    let choice = match device {
        DeviceArg::Auto => DeviceChoice::Auto,
        DeviceArg::Cpu => DeviceChoice::Cpu,
        DeviceArg::Cuda => DeviceChoice::Cuda,
    };
    let precision = precision.map(|p| match p {
        PrecisionArg::Bf16 => Precision::Bf16,
        PrecisionArg::F32 => Precision::F32,
    });
    let opened = open_backend(choice, threads, precision)?;
    eprintln!("{}", opened.note);
    Ok(opened.backend)
}

/// `--threads`: 0 (or leaving it out) means every core, as in every redpack command; a count
/// above the pipeline's limit is refused rather than tried.
pub fn check_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let max = redpack::pipeline::config::MAX_THREADS;
    match threads {
        Some(n) if n > max => anyhow::bail!("--threads {n} is above {max}; 0 means all cores"),
        _ => Ok(()),
    }
}

/// The flags as a recipe layer, to overlay on the recipe file.
fn flags_recipe(args: &TrainArgs) -> Recipe {
    Recipe {
        arch: args.arch.map(|a| match a {
            ArchArg::Dec => Arch::Dec,
            ArchArg::Red => Arch::Red,
        }),
        mode: args.mode.map(|m| match m {
            ModeArg::Pretrain => Mode::Pretrain,
            ModeArg::Finetune => Mode::Finetune,
        }),
        size: args.size.clone(),
        model: ModelOverrides {
            d_model: args.d_model,
            d_ffn: args.d_ffn,
            n_heads: args.heads,
            head_dim: args.head_dim,
            layers: args.layers,
            encoder_layers: args.encoder_layers,
            decoder_layers: args.decoder_layers,
            rope_base: None,
            norm_eps: None,
        },
        steps: args.steps,
        batch: args.batch,
        batch_tokens: args.batch_tokens,
        accum: args.accum,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep_checkpoints,
        grad_clip_norm: args.grad_clip,
        objective: ObjectiveRecipe {
            z_loss: args.z_loss,
            dropout: args.dropout,
            bidirectional_prefix: args.bidirectional_prefix.then_some(true),
            reset_at_doc_boundaries: args.reset_attention.then_some(true),
        },
        optimizer: None,
        schedule: None,
        data: Default::default(),
        eval: EvalRecipe {
            data: args.eval_data.clone(),
            every: args.eval_every,
            rows: args.eval_rows,
            keep_best: None,
        },
        health: HealthRecipe {
            spike_factor: args.spike_factor,
            stop_on_zero_grad: args.allow_zero_grad.then_some(false),
        },
    }
}

/// Resolves recipe file + flags into settings; no corpus or checkpoint is touched.
pub fn resolve_settings(args: &TrainArgs) -> anyhow::Result<TrainSettings> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the recipe", path.display()))?;
            Recipe::from_toml(&text, &path.display().to_string())?
        }
        None => Recipe::default(),
    };
    let recipe = file.overlay(flags_recipe(args));
    let mut settings = TrainSettings::resolve(
        recipe,
        args.data.clone(),
        args.out.clone(),
        args.init.clone(),
        args.resume,
    )?;
    if let Some(lr) = args.lr {
        settings.schedule = settings.schedule.with_peak(lr);
        settings.validate()?;
    }
    settings.verify = !args.no_verify;
    settings.overwrite = args.overwrite;
    Ok(settings)
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let launch = launch::from_env(&|k| std::env::var(k).ok(), args.rendezvous.as_deref())?;
    let mut settings = resolve_settings(&args)?;
    let (mut backend, link) = match &launch {
        Some(launch) => {
            let (backend, link) = join_job(&args, launch)?;
            (backend, Some(link))
        }
        None => (
            backend_for(args.device, args.threads, args.precision)?,
            None,
        ),
    };
    // A device backend holds the activations in its own memory: checked against it below.
    settings.host_activations = backend.resident().is_none();
    let run = match &link {
        None => TrainRun::prepare(settings).context("cannot start training")?,
        // Rank 0 prepares first (an --overwrite clears the old run once), then the others.
        Some(link) => {
            let rank0 = link.rank == 0;
            if !rank0 {
                barrier(backend.as_mut(), link)?;
            }
            let run = TrainRun::prepare(settings).context("cannot start training")?;
            if rank0 {
                barrier(backend.as_mut(), link)?;
            }
            barrier(backend.as_mut(), link)?;
            run
        }
    };
    if backend.resident().is_some() {
        memory::check_device(
            &run.model,
            &run.settings,
            run.rows_per_micro_batch,
            run.corpus.max_row_len(),
            backend.free_device_memory(),
        )
        .context("cannot start training")?;
    }
    let parallel = link.as_ref().map_or(Parallel::SINGLE, |l| Parallel {
        rank: l.rank,
        world_size: l.world_size,
    });
    if parallel.writes() {
        describe(&run, backend.as_ref());
    }
    let model = run.model.clone();
    let total = run.settings.steps;
    let start = run.start_step;
    let outcome = if parallel.writes() {
        let mut bar = Bar::new(total, start);
        let outcome = run.run_parallel(backend.as_mut(), &mut bar, parallel);
        bar.finish();
        outcome
    } else {
        run.run_parallel(backend.as_mut(), &mut Quiet, parallel)
    };
    // A collective that failed because another rank went away or hung reports that rank; this
    // rank's own errors (health checks, data, checkpoints) stand as they are.
    let failure = match (&outcome, &link) {
        (Err(TrainError::Backend { .. }), Some(link)) => link.failure_within(FAILURE_GRACE),
        _ => None,
    };
    let outcome = match (outcome, failure) {
        (Err(_), Some(failure)) => Err(anyhow::anyhow!("{failure}")),
        (outcome, _) => outcome.map_err(anyhow::Error::from),
    }
    .context("training stopped")?;
    if let Some(link) = &link {
        link.finish();
        if !parallel.writes() {
            eprintln!(
                "rank {} of {}: finished at step {}",
                link.rank, link.world_size, outcome.step
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    let first = outcome.metrics.first();
    let last = outcome.metrics.last();
    if args.json {
        let summary = serde_json::json!({
            "step": outcome.step,
            "start_step": outcome.start_step,
            "first_loss": first.map(|m| m.loss),
            "last_loss": last.map(|m| m.loss),
            "tokens_seen": last.map(|m| m.tokens_seen),
            "flops_seen": last.map(|m| m.flops_seen),
            "paper_flops_seen": last.map(|m| m.paper_flops_seen),
            "mixture": last.and_then(|m| m.mixture.clone()),
            "eval": outcome.metrics.iter().rev().find_map(|m| m.eval.clone()),
            "best": outcome.best,
            "best_checkpoint": outcome.best_checkpoint,
            "model": model,
            "parameters": model.param_count(),
            "checkpoint": outcome.final_checkpoint,
            "metrics": args.out.join(redpack_trainer::metrics::METRICS_FILE),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        match (first, last) {
            (Some(first), Some(last)) => println!(
                "steps {}..{}: loss {:.4} -> {:.4}, {} tokens, {:.3e} training FLOPs ({:.3e} as the paper counts, 6 N D)",
                first.step,
                last.step,
                first.loss,
                last.loss,
                human_count(last.tokens_seen),
                last.flops_seen,
                last.paper_flops_seen
            ),
            _ => println!("nothing to do: the run is already at step {}", outcome.step),
        }
        if let Some(mixture) = last.and_then(|m| m.mixture.as_ref()) {
            let shares: Vec<String> = mixture.iter().map(|(k, p)| format!("{k} {p:.4}")).collect();
            println!("mixture realized: {}", shares.join(", "));
        }
        if let Some(best) = &outcome.best {
            println!(
                "best eval: step {}, loss {:.4} (source average {:.4}){}",
                best.step,
                best.loss,
                best.source_avg_loss,
                outcome
                    .best_checkpoint
                    .as_ref()
                    .map(|d| format!(", checkpoint {}", d.display()))
                    .unwrap_or_default()
            );
        }
        println!("checkpoint: {}", outcome.final_checkpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a rank whose collective failed waits for the message saying which rank the job lost
/// (it may arrive just after the abort that failed the collective).
const FAILURE_GRACE: Duration = Duration::from_secs(3);

/// A data-parallel rank: checks that NCCL loads, opens the rank's GPU (`LOCAL_RANK`), meets the
/// other ranks and joins their NCCL communicator.
fn join_job(args: &TrainArgs, launch: &Launch) -> anyhow::Result<(Box<dyn Backend>, Link)> {
    let who = format!(
        "rank {} of {} ({} launch)",
        launch.rank, launch.world_size, launch.launcher
    );
    if matches!(args.device, DeviceArg::Cpu) {
        anyhow::bail!("{who}: data-parallel training runs on CUDA GPUs, not --device cpu");
    }
    check_threads(args.threads)?;
    nccl::available().with_context(|| format!("{who}: cannot train data-parallel"))?;
    let precision = args.precision.map(|p| match p {
        PrecisionArg::Bf16 => Precision::Bf16,
        PrecisionArg::F32 => Precision::F32,
    });
    let opened = open_backend_on(
        DeviceChoice::Cuda,
        args.threads,
        precision,
        launch.local_rank,
    )
    .with_context(|| format!("{who}: cannot open GPU {}", launch.local_rank))?;
    let mut backend = opened.backend;
    eprintln!("{who}: {}", opened.note);
    let timeout = Duration::from_secs(args.rendezvous_timeout);
    let hang = HangLimits {
        silence: Duration::from_secs(args.heartbeat_timeout.max(3)),
        progress: Duration::from_secs(args.hang_timeout.max(1)),
    };
    let (link, id) = Link::connect(launch, timeout, hang, nccl::unique_id).context(who.clone())?;
    let device = backend
        .resident()
        .ok_or_else(|| anyhow::anyhow!("{who}: the backend keeps no state on a device"))?;
    let comm = device
        .join_group(&id, launch.rank, launch.world_size)
        .with_context(|| format!("{who}: joining the NCCL communicator"))?;
    link.guard(comm);
    Ok((backend, link))
}

/// Waits for every rank (a one-value all-reduce); a lost rank is named.
fn barrier(backend: &mut dyn Backend, link: &Link) -> anyhow::Result<()> {
    let result = match backend.resident() {
        Some(device) => device.all_reduce_sums(&mut [0.0]),
        None => Ok(()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) => match link.failure_within(FAILURE_GRACE) {
            Some(failure) => Err(anyhow::anyhow!("{failure}")),
            None => Err(e.into()),
        },
    }
    .context("waiting for the other ranks")
}

fn describe(run: &TrainRun, backend: &dyn Backend) {
    let s = &run.settings;
    let arch = match s.arch {
        Arch::Dec => "DecLLM",
        Arch::Red => "RedLLM",
    };
    // With --init or --resume the model is the checkpoint's, whatever --size says.
    let size = if run.resumed_from.is_some() || run.initialized_from.is_some() {
        "(from the checkpoint)".to_string()
    } else if s.model.is_empty() {
        s.size.clone()
    } else {
        format!("{} with {}", s.size, s.model.describe().join(", "))
    };
    eprintln!(
        "{} {arch} {size}, {} parameters, on {} ({} examples)",
        s.mode.name(),
        human_count(run.model.param_count()),
        s.data.display(),
        run.corpus.examples
    );
    eprintln!(
        "model: {} ({} parameters)",
        run.model.describe(),
        run.model.param_count()
    );
    eprintln!(
        "batch {} sequences ({} x {}), steps {}..{}, backend {}",
        run.rows_per_step,
        s.accum,
        run.rows_per_micro_batch,
        run.start_step + 1,
        s.steps,
        backend.name()
    );
    let health = &s.health;
    eprintln!(
        "health: stop on a non-finite value{}{}; integrity checks {}",
        if health.spike_factor > 0.0 {
            format!(", a loss above {} x its baseline", health.spike_factor)
        } else {
            String::new()
        },
        if health.stop_on_zero_grad {
            ", a zero gradient"
        } else {
            ""
        },
        if s.verify { "on" } else { "off (--no-verify)" }
    );
    if let Some(plan) = &run.mixture {
        eprintln!("mixture:");
        for line in plan.describe() {
            eprintln!("  {line}");
        }
    }
    if let Some(v) = &run.validator {
        eprintln!(
            "validation on {} ({} rows of {}, max length {}) every {} steps{}",
            v.settings.data.display(),
            v.settings.rows.map_or_else(
                || "all".to_string(),
                |n| n.min(v.corpus.examples).to_string()
            ),
            v.corpus.examples,
            v.corpus.max_row_len(),
            v.settings.every,
            if v.settings.keep_best {
                ", keeping the best checkpoint"
            } else {
                ""
            }
        );
    }
    if let Some(v) = run
        .validator
        .as_ref()
        .filter(|v| v.corpus.max_row_len() > run.corpus.max_row_len())
    {
        eprintln!(
            "note: eval rows are up to {} tokens, training rows up to {}: validation scores the rows whole, beyond the training length (build the eval split with --eval-seq-len {} to validate at it)",
            v.corpus.max_row_len(),
            run.corpus.max_row_len(),
            run.corpus.max_row_len()
        );
    }
    if let Some(best) = &run.best {
        eprintln!(
            "best eval so far: step {}, loss {:.4}",
            best.step, best.loss
        );
    }
    if let Some(dir) = &run.resumed_from {
        eprintln!("resuming from {}", dir.display());
    }
    if let Some(dir) = &run.initialized_from {
        eprintln!("weights from {}", dir.display());
    }
    eprintln!("run directory: {}", s.out.display());
}

/// The progress bar, fed by the loop.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(total: u64, start: u64) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(start);
        bar.enable_steady_tick(Duration::from_millis(500));
        Bar { bar }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl StepObserver for Bar {
    fn on_step(&mut self, m: &StepMetrics) {
        self.bar.set_position(m.step);
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} |g| {:.3} |u| {:.3} {}/s",
            m.loss,
            m.lr,
            m.grad_norm,
            m.update_norm,
            human_count(m.tokens_per_s as u64)
        ));
    }

    fn on_eval(&mut self, step: u64, eval: &EvalMetrics) {
        let line = format!(
            "step {step}: eval loss {:.4} (ppl {:.2}), source average {:.4}, {} tokens in {} rows{}",
            eval.loss,
            eval.ppl,
            eval.source_avg_loss,
            human_count(eval.tokens),
            eval.examples,
            if eval.best { ", best so far" } else { "" }
        );
        // A hidden bar (stderr not a terminal: a log file) drops `println`; the line still goes
        // to the log.
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn on_checkpoint(&mut self, step: u64, dir: &Path) {
        self.bar
            .println(format!("step {step}: checkpoint {}", dir.display()));
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use redpack_trainer::run::BatchSize;
    use redpack_trainer::schedule::Schedule;

    use super::*;
    use crate::cli::{Cli, Command};

    fn train_args(flags: &[&str]) -> TrainArgs {
        let argv = ["redpack", "train", "--data", "d", "--out", "o"];
        match Cli::try_parse_from(argv.iter().chain(flags))
            .unwrap()
            .command
        {
            Command::Train(args) => *args,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn flags_resolve_over_the_mode_defaults() {
        let args = train_args(&[
            "--arch",
            "red",
            "--mode",
            "pretrain",
            "--steps",
            "50",
            "--batch-tokens",
            "4096",
            "--lr",
            "0.02",
        ]);
        let s = resolve_settings(&args).unwrap();
        assert_eq!((s.arch, s.mode, s.steps), (Arch::Red, Mode::Pretrain, 50));
        assert_eq!(s.batch, BatchSize::Tokens(4096));
        assert_eq!(s.objective.z_loss, 1e-4);
        assert_eq!(
            s.schedule,
            Schedule::WarmupCosine {
                warmup_steps: 2000,
                peak: 0.02,
                end: 0.001
            }
        );
        let tune = resolve_settings(&train_args(&["--arch", "dec", "--mode", "finetune"])).unwrap();
        assert_eq!(tune.objective.dropout, 0.05);
        assert_eq!(tune.schedule, Schedule::Constant { lr: 0.001 });
    }

    #[test]
    fn dimension_flags_override_the_preset() {
        let args = train_args(&[
            "--arch",
            "red",
            "--mode",
            "pretrain",
            "--d-model",
            "48",
            "--d-ffn",
            "96",
            "--heads",
            "3",
            "--head-dim",
            "8",
            "--layers",
            "2",
            "--decoder-layers",
            "1",
        ]);
        let s = resolve_settings(&args).unwrap();
        let model = s.model_config(100).unwrap();
        assert_eq!(
            (model.d_model, model.d_ffn, model.n_heads, model.head_dim),
            (48, 96, 3, 8)
        );
        assert_eq!((model.encoder_layers, model.decoder_layers), (2, 1));
        let err = resolve_settings(&train_args(&[
            "--arch", "dec", "--mode", "pretrain", "--heads", "0",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("n_heads must be positive, got 0"), "{err}");
        let err = resolve_settings(&train_args(&[
            "--arch",
            "dec",
            "--mode",
            "pretrain",
            "--encoder-layers",
            "2",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("RedLLM dimension"), "{err}");
    }

    #[test]
    fn cuda_without_a_device_is_refused_with_a_hint() {
        use redpack_trainer::backend::{probe_cuda, CudaAvailability};
        if let CudaAvailability::Device(_) = probe_cuda() {
            return; // a GPU machine: --device cuda opens the CUDA backend
        }
        let err = backend_for(DeviceArg::Cuda, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.ends_with("use `--device cpu`"), "{err}");
        assert!(backend_for(DeviceArg::Auto, Some(1), None).is_ok());
        let err = backend_for(DeviceArg::Cpu, Some(1), Some(PrecisionArg::Bf16))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("f32 only"), "{err}");
    }

    #[test]
    fn eval_flags_resolve_into_validation() {
        let s = resolve_settings(&train_args(&[
            "--arch",
            "red",
            "--mode",
            "finetune",
            "--checkpoint-every",
            "40",
            "--eval-data",
            "held",
            "--eval-rows",
            "64",
        ]))
        .unwrap();
        let v = s.eval.unwrap();
        assert_eq!(
            (v.data.as_path(), v.every, v.rows, v.keep_best),
            (std::path::Path::new("held"), 40, Some(64), true)
        );
        let s = resolve_settings(&train_args(&[
            "--arch",
            "dec",
            "--mode",
            "pretrain",
            "--eval-data",
            "held",
            "--eval-every",
            "7",
        ]))
        .unwrap();
        let v = s.eval.unwrap();
        assert_eq!((v.every, v.rows, v.keep_best), (7, None, false));
        let err = resolve_settings(&train_args(&[
            "--arch",
            "dec",
            "--mode",
            "pretrain",
            "--eval-every",
            "7",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("--eval-data"), "{err}");
    }

    #[test]
    fn init_and_resume_together_are_refused() {
        let args = train_args(&[
            "--arch", "dec", "--mode", "finetune", "--init", "x", "--resume",
        ]);
        let err = resolve_settings(&args).unwrap_err().to_string();
        assert!(err.contains("--init") && err.contains("--resume"), "{err}");
    }
}
