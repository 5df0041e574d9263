//! `redpack build-corpus`: resolve flags and the pipeline file into settings, run the build,
//! print the summary (or JSON). With no arguments, the built-in default build on a generated
//! sample.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use redpack::pipeline::config::{FormatChoice, PackConfig};
use redpack::pipeline::{
    build, run_stage, BuildOptions, BuildReport, BuildSettings, Overrides, PipelineConfig,
    ProgressSink, Stage, StageOutcome,
};
use redpack::train_tokenizer::{self, TrainConfig};

use crate::cli::build_corpus::{BuildCorpusArgs, FormatArg};
use crate::progress::Bars;

/// Where the default build writes when `--out` is not given.
pub const DEFAULT_OUT: &str = "redpack-default";
/// Sequence length of the default packed build: short, so the small sample yields many
/// sequences (the study's 2048 would give only a handful).
pub const DEFAULT_SEQ_LEN: u32 = 256;
/// Vocabulary of the tokenizer the default build trains on the sample.
pub const DEFAULT_VOCAB: usize = 4096;
/// Seed of the generated sample.
pub const SAMPLE_SEED: u64 = 2510_26622;

pub fn format_choice(format: FormatArg) -> FormatChoice {
    match format {
        FormatArg::Auto => FormatChoice::Auto,
        FormatArg::Redpajama => FormatChoice::Redpajama,
        FormatArg::Flan => FormatChoice::Flan,
    }
}

fn overrides(args: &BuildCorpusArgs) -> Overrides {
    Overrides {
        inputs: args.inputs.clone(),
        data_manifest: args.data_manifest.clone(),
        data_root: args.data_root.clone(),
        format: args.format.map(format_choice),
        tokenizer: args.tokenizer.clone(),
        seq_len: args.seq_len,
        prefix_len: args.prefix_len,
        threads: args.threads,
        no_dedup: args.no_dedup,
        shuffle_seed: args.shuffle_seed,
        max_rejected_fraction: args.max_rejected_fraction,
        memory_limit: args.memory_limit,
        eval_docs: args.eval_docs,
        eval_seq_len: args.eval_seq_len,
    }
}

fn options(args: &BuildCorpusArgs) -> BuildOptions {
    BuildOptions {
        progress: if args.json {
            None
        } else {
            Some(Arc::new(Bars) as Arc<dyn ProgressSink>)
        },
        resume: args.resume,
        keep_work: args.keep_work,
        sort_budget: args.sort_budget.map(|b| b as usize),
        overwrite: args.overwrite,
        allow_empty: args.allow_empty,
    }
}

/// Reads a worker index or count from the environment (Slurm array jobs, Kubernetes Indexed
/// Jobs); `Err` when a variable is set but not a number.
fn env_number(name: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("environment variable {name}={value:?} is not a number")),
        Err(_) => Ok(None),
    }
}

/// This worker's index and the worker count: flags first, then Slurm, then Kubernetes.
pub fn worker_slot(args: &BuildCorpusArgs) -> anyhow::Result<(usize, usize)> {
    let slurm_id = env_number("SLURM_ARRAY_TASK_ID")?;
    let slurm_min = env_number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
    let slurm_count = env_number("SLURM_ARRAY_TASK_COUNT")?;
    let k8s_index = env_number("JOB_COMPLETION_INDEX")?;
    let worker = match args.worker {
        Some(i) => i,
        None => match (slurm_id, k8s_index) {
            (Some(id), _) => id.checked_sub(slurm_min).with_context(|| {
                format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {slurm_min}")
            })?,
            (None, Some(index)) => index,
            (None, None) => 0,
        },
    };
    let workers = args.workers.or(slurm_count).unwrap_or(1);
    if workers == 0 || worker >= workers {
        anyhow::bail!(
            "worker index {worker} is not below the worker count {workers} (give --workers N and --worker I with I < N)"
        );
    }
    Ok((worker, workers))
}

fn run_one_stage(
    args: &BuildCorpusArgs,
    settings: &BuildSettings,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let stage = Stage::parse(name).with_context(|| {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        format!(
            "unknown stage {name:?}; the stages are {}",
            names.join(", ")
        )
    })?;
    let (worker, workers) = worker_slot(args)?;
    let outcome = run_stage(settings, &options(args), stage, worker, workers)
        .with_context(|| format!("building {}", settings.out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        match &outcome {
            StageOutcome::Stage(report) => print!("{}", report.summary()),
            StageOutcome::Finished(report) => print!("{}", report.summary()),
        }
    }
    if let StageOutcome::Finished(report) = &outcome {
        warn_faults(report);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: BuildCorpusArgs) -> anyhow::Result<ExitCode> {
    if args.stages {
        for stage in Stage::ALL {
            println!("{}\t{}", stage.name(), stage.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let (true, Some(out)) = (args.status, &args.out) {
        let status = redpack::pipeline::work::BuildStatus::of(out)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{}", status.summary());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.pipeline.is_none() && args.inputs.is_empty() && args.data_manifest.is_none() {
        return run_default(&args);
    }
    let mut config = match &args.pipeline {
        Some(path) => PipelineConfig::load(path)?,
        None => PipelineConfig::default(),
    };
    if auto_examples(&args)? {
        // As pipelines/flan.toml: FLAN templates make MinHash merge pairs FLAN means to keep.
        config.pack = PackConfig::examples();
        config.dedup.near = false;
    }
    let out = args
        .out
        .clone()
        .context("--out DIR is required when inputs or a pipeline are given")?;
    let settings = BuildSettings::resolve(config, overrides(&args), out)?;
    if let Some(name) = &args.stage {
        return run_one_stage(&args, &settings, name);
    }
    let report = build(&settings, &options(&args))
        .with_context(|| format!("building {}", settings.out.display()))?;
    warn_faults(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// A rayon pool of `threads` workers; `None` or 0 means one per core, as everywhere in redpack.
pub fn thread_pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let threads = threads.unwrap_or(0);
    let max = redpack::pipeline::config::MAX_THREADS;
    anyhow::ensure!(
        threads <= max,
        "--threads {threads} is above {max}; 0 means all cores"
    );
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

/// True when nothing fixes the layout (no pipeline file, no `--seq-len`, `--prefix-len` or
/// `--eval-seq-len`) and every input is FLAN (`--format flan`, or found so by `--format auto`):
/// then the build makes an examples corpus, the only kind FLAN's input/target pairs fit.
fn auto_examples(args: &BuildCorpusArgs) -> anyhow::Result<bool> {
    let layout_given = args.pipeline.is_some()
        || args.seq_len.is_some()
        || args.prefix_len.is_some()
        || args.eval_seq_len.is_some();
    if layout_given || args.format == Some(FormatArg::Redpajama) {
        return Ok(false);
    }
    if args.format == Some(FormatArg::Flan) {
        return Ok(true);
    }
    if args.inputs.is_empty() {
        return Ok(false);
    }
    let files = redpack::input::discover(&args.inputs, redpack::input::FormatHint::Auto)?;
    Ok(!files.is_empty() && files.iter().all(|f| f.format.is_flan()))
}

/// Prints, on stderr, each input file whose reading stopped early: its records up to the fault
/// are in the corpus, the rest counted as rejected (see the manifest's `inputs`).
fn warn_faults(report: &BuildReport) {
    for fault in &report.faults {
        eprintln!("warning: {fault}");
    }
}

/// The built-in default: sample → tokenizer → packed corpus and examples corpus.
fn run_default(args: &BuildCorpusArgs) -> anyhow::Result<ExitCode> {
    let root = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUT));
    let raw = root.join("raw");
    let sample = place_sample(&root, &raw, args.overwrite)?;
    if !args.json {
        println!(
            "sample corpus: {} files, {} documents, {} FLAN examples in {}",
            sample.files.len(),
            sample.documents,
            sample.examples,
            raw.display()
        );
    }
    let tokenizer = match &args.tokenizer {
        Some(path) => path.clone(),
        None => train_default_tokenizer(&root, &raw, args.threads)?,
    };
    let redpajama = raw.join(redpack::sample::REDPAJAMA_ROOT);
    let flan = raw.join(redpack::sample::FLAN_ROOT);
    let packed = default_build(args, &tokenizer, &redpajama, &root.join("packed"), false)?;
    let examples = default_build(args, &tokenizer, &flan, &root.join("examples"), true)?;
    warn_faults(&packed);
    warn_faults(&examples);
    if args.json {
        let both = serde_json::json!({ "packed": packed, "examples": examples });
        println!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        println!();
        print!("{}", packed.summary());
        println!();
        print!("{}", examples.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the built-in sample to `raw`. An existing `raw` is kept when it holds exactly the
/// sample (a second run rebuilds from it); when its files differ (edited, added, removed) the
/// build stops unless `overwrite`, so edits are never lost without a word.
fn place_sample(
    root: &Path,
    raw: &Path,
    overwrite: bool,
) -> anyhow::Result<redpack::sample::SampleReport> {
    let fresh = root.join(".redpack-sample");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).with_context(|| format!("removing {}", fresh.display()))?;
    }
    let mut sample = redpack::sample::write_sample(&fresh, SAMPLE_SEED)
        .with_context(|| format!("writing the sample corpus to {}", fresh.display()))?;
    sample.root = raw.to_path_buf();
    if raw.exists() {
        match first_difference(&fresh, raw)? {
            None => {
                std::fs::remove_dir_all(&fresh)
                    .with_context(|| format!("removing {}", fresh.display()))?;
                return Ok(sample);
            }
            Some(what) if !overwrite => {
                let _ = std::fs::remove_dir_all(&fresh);
                anyhow::bail!(
                    "{} is not the built-in sample ({what}); it was left as it is. Pass \
                     --overwrite to replace it with the sample, or build your files with \
                     --input {} --out DIR",
                    raw.display(),
                    raw.display()
                );
            }
            Some(_) => std::fs::remove_dir_all(raw)
                .with_context(|| format!("removing {}", raw.display()))?,
        }
    }
    std::fs::rename(&fresh, raw)
        .with_context(|| format!("moving {} to {}", fresh.display(), raw.display()))?;
    Ok(sample)
}

/// The files under `dir`, relative, sorted.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in
            std::fs::read_dir(&next).with_context(|| format!("reading {}", next.display()))?
        {
            let path = entry
                .with_context(|| format!("reading {}", next.display()))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                out.push(relative.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// How `actual` differs from `expected` (first difference), `None` when the trees are equal.
fn first_difference(expected: &Path, actual: &Path) -> anyhow::Result<Option<String>> {
    let want = files_under(expected)?;
    let have = files_under(actual)?;
    if let Some(extra) = have.iter().find(|p| !want.contains(p)) {
        return Ok(Some(format!("{} is not in the sample", extra.display())));
    }
    for relative in &want {
        let path = actual.join(relative);
        if !have.contains(relative) {
            return Ok(Some(format!("{} is missing", path.display())));
        }
        let a = std::fs::read(expected.join(relative))
            .with_context(|| format!("reading {}", expected.join(relative).display()))?;
        let b = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if a != b {
            return Ok(Some(format!("{} was changed", path.display())));
        }
    }
    Ok(None)
}

fn train_default_tokenizer(
    root: &Path,
    raw: &Path,
    threads: Option<usize>,
) -> anyhow::Result<PathBuf> {
    let files = redpack::input::discover(&[raw.to_path_buf()], redpack::input::FormatHint::Auto)?;
    let config = TrainConfig {
        vocab_size: DEFAULT_VOCAB,
        ..TrainConfig::default()
    };
    let pool = thread_pool(threads)?;
    let fields = redpack::input::FieldMap::default();
    let tokenizer = pool.install(|| train_tokenizer::train_on_inputs(&files, &fields, &config))?;
    let path = root.join("tokenizer.json");
    train_tokenizer::save(&tokenizer, &path)?;
    Ok(path)
}

fn default_build(
    args: &BuildCorpusArgs,
    tokenizer: &Path,
    input: &Path,
    out: &Path,
    flan: bool,
) -> anyhow::Result<BuildReport> {
    let mut config = PipelineConfig::default();
    if flan {
        config.pack = PackConfig::Examples {
            max_input_len: 2048,
            max_target_len: 512,
        };
        // As in pipelines/flan.toml: templates make MinHash merge pairs FLAN means to keep.
        config.dedup.near = false;
    }
    let mut overrides = overrides(args);
    overrides.inputs = vec![input.to_path_buf()];
    overrides.tokenizer = Some(tokenizer.to_path_buf());
    overrides.format = Some(if flan {
        FormatChoice::Flan
    } else {
        FormatChoice::Redpajama
    });
    if flan {
        overrides.seq_len = None;
        overrides.prefix_len = None;
        overrides.eval_seq_len = None;
    } else if overrides.seq_len.is_none() {
        overrides.seq_len = Some(DEFAULT_SEQ_LEN);
    }
    let settings = BuildSettings::resolve(config, overrides, out.to_path_buf())?;
    // The default's corpora are its own outputs, rebuilt from the checked sample each run.
    let options = BuildOptions {
        overwrite: true,
        ..options(args)
    };
    build(&settings, &options).with_context(|| format!("building {}", out.display()))
}
