//! The build as a fixed sequence of stages over a work directory (see [`super::work`]):
//! `plan`, `scan`, `dedup`, `tokenize`, `finish`.
//!
//! [`build`] runs every stage in one process; [`run_stage`] runs one worker's share of one
//! stage, for builds spread over many machines. Both go through the same per-unit code, so a
//! build split over any number of workers writes exactly the bytes the one-process build
//! writes. Within a process, units use the rayon pool: the scan and tokenize stages take one
//! file at a time and parallelize over its records (a reader thread parses ahead through a
//! bounded channel), the dedup stage merges several partitions at once.
//!
//! Memory: `--memory-limit` is divided between the external sorters (a quarter of it) and
//! everything else (chunks in flight, the tokenizer, read buffers). The sorters spill to the
//! work directory, so resident memory stays flat whatever the corpus size.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use redpack_schemas::MANIFEST_FILE;
use serde::Serialize;

use super::config::{BuildSettings, PackSettings};
use super::dedup_stage::dedup_partition;
use super::finish::finish;
use super::progress;
use super::report::{BuildReport, StageSeconds};
use super::scan::{scan_file, UnitContext};
use super::tokenize_stage::tokenize_file;
use super::types::{BuildError, BuildOptions};
use super::work::{
    stage_units, worker_units, write_json, Locks, Plan, PlannedFile, Stage, WorkDir, MAX_FILES,
};
use crate::input::datamanifest::DataManifest;
use crate::input::{self, InputFile};
use crate::tokenize::DocTokenizer;
use crate::train_tokenizer;

/// Finds the input files: a data manifest resolved against its root, or paths/globs/dirs.
pub fn discover_inputs(settings: &BuildSettings) -> Result<Vec<InputFile>, BuildError> {
    let hint = settings.input.format.hint();
    match &settings.input.data_manifest {
        Some(manifest_path) => {
            let root = settings
                .input
                .data_root
                .as_deref()
                .unwrap_or(Path::new("."));
            let manifest = DataManifest::load(manifest_path)?;
            Ok(manifest.resolve(root, hint, true)?.files)
        }
        None => Ok(input::discover(&settings.input.paths, hint)?),
    }
}

/// Loads the configured tokenizer, or trains one on the inputs. Returns it and whether it was
/// trained.
pub fn prepare_tokenizer(
    settings: &BuildSettings,
    files: &[InputFile],
) -> Result<(DocTokenizer, bool), BuildError> {
    prepare_loaded_tokenizer(settings, files, None)
}

/// [`prepare_tokenizer`], reusing `loaded` when it is the configured file already loaded.
fn prepare_loaded_tokenizer(
    settings: &BuildSettings,
    files: &[InputFile],
    loaded: Option<DocTokenizer>,
) -> Result<(DocTokenizer, bool), BuildError> {
    let config = &settings.tokenizer;
    let (tokenizer, trained) = match (&config.path, loaded) {
        (Some(_), Some(loaded)) => (loaded, false),
        (Some(path), None) => (
            DocTokenizer::from_file_to_encode(
                path,
                config.eod_token.as_deref(),
                config.pad_token.as_deref(),
            )?,
            false,
        ),
        (None, _) => {
            let trained = train_tokenizer::train_on_inputs(
                files,
                &settings.input.fields.field_map(),
                &config.train,
            )?;
            let json = train_tokenizer::to_json(&trained)?;
            let tokenizer = DocTokenizer::from_bytes_to_encode(
                Path::new("<trained>"),
                json.into_bytes(),
                Some(&config.train.eod_token),
                Some(&config.train.pad_token),
            )?;
            (tokenizer, true)
        }
    };
    Ok((tokenizer.with_chunk_bytes(config.chunk_bytes), trained))
}

fn thread_pool(settings: &BuildSettings) -> Result<rayon::ThreadPool, BuildError> {
    let threads = settings.output.threads;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|err| BuildError::Threads {
            threads,
            message: err.to_string(),
        })
}

/// Clears the work directory's contents, keeping its locks. The corpus in the output directory
/// is not touched: the new one replaces it only once complete (see [`super::publish`]).
fn start_fresh(work: &WorkDir) -> Result<(), BuildError> {
    if work.exists() {
        let entries = std::fs::read_dir(work.root()).map_err(|e| BuildError::io(work.root(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BuildError::io(work.root(), e))?;
            let path = entry.path();
            if entry.file_name() == "locks" {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| BuildError::io(&path, e))?;
        }
    }
    work.create_dirs()
}

/// Loads the tokenizer the plan recorded (the copy in the work directory).
fn plan_tokenizer(
    settings: &BuildSettings,
    plan: &Plan,
    work: &WorkDir,
) -> Result<DocTokenizer, BuildError> {
    let config = &settings.tokenizer;
    let (eod, pad) = if plan.tokenizer_trained {
        (
            Some(config.train.eod_token.as_str()),
            Some(config.train.pad_token.as_str()),
        )
    } else {
        (config.eod_token.as_deref(), config.pad_token.as_deref())
    };
    let tokenizer = DocTokenizer::from_file(&work.tokenizer(), eod, pad)?;
    if tokenizer.sha256() != plan.tokenizer_sha256 {
        return Err(BuildError::Work {
            path: work.tokenizer(),
            message: "does not match the plan's tokenizer sha256".into(),
        });
    }
    Ok(tokenizer.with_chunk_bytes(config.chunk_bytes))
}

/// Stage `plan`: discovers the inputs, loads or trains the tokenizer and writes `plan.json`.
/// When a plan exists it must describe the same build (the error says what changed); it is
/// then reused, tokenizer included. `loaded` is the configured tokenizer file when the caller
/// has loaded it already.
fn plan_stage(
    settings: &BuildSettings,
    work: &WorkDir,
    pool: &rayon::ThreadPool,
    loaded: Option<DocTokenizer>,
) -> Result<(Plan, DocTokenizer), BuildError> {
    let files = discover_inputs(settings)?;
    match settings.pack {
        PackSettings::Examples { .. } => {
            if let Some(file) = files.iter().find(|f| !f.format.is_flan()) {
                return Err(BuildError::LayoutMismatch {
                    path: file.path.clone(),
                    format: file.format.to_string(),
                });
            }
        }
        PackSettings::Packed { .. } => {}
    }
    if files.len() > MAX_FILES {
        return Err(BuildError::Work {
            path: settings.out.clone(),
            message: format!(
                "{} input files; at most {MAX_FILES} are supported",
                files.len()
            ),
        });
    }
    let planned = files
        .iter()
        .map(PlannedFile::of)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(existing) = work.load_plan()? {
        let tokenizer = if existing.tokenizer_trained && settings.tokenizer.path.is_none() {
            plan_tokenizer(settings, &existing, work)?
        } else {
            pool.install(|| prepare_loaded_tokenizer(settings, &files, loaded))?
                .0
        };
        let wanted = Plan::new(
            settings.recipe(),
            planned,
            tokenizer.sha256().to_string(),
            existing.tokenizer_trained,
            tokenizer.vocab_size(),
        );
        if let Some(why) = existing.mismatch(&wanted) {
            return Err(BuildError::ResumeMismatch {
                dir: settings.out.clone(),
                why,
            });
        }
        let tokenizer = plan_tokenizer(settings, &existing, work)?;
        return Ok((existing, tokenizer));
    }
    let (tokenizer, trained) =
        pool.install(|| prepare_loaded_tokenizer(settings, &files, loaded))?;
    redpack_schemas::atomic::write_file(&work.tokenizer(), tokenizer.json())?;
    let plan = Plan::new(
        settings.recipe(),
        planned,
        tokenizer.sha256().to_string(),
        trained,
        tokenizer.vocab_size(),
    );
    write_json(&work.plan(), &plan)?;
    // The work directory's copy holds these very bytes: the tokenizer is not loaded again.
    Ok((plan, tokenizer))
}

/// What one worker did in one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: &'static str,
    pub worker: usize,
    pub workers: usize,
    /// Units (input files or partitions) of the whole stage.
    pub stage_units: usize,
    /// Units this worker owns.
    pub units: usize,
    /// Units run now.
    pub ran: usize,
    /// Units found done already (resumed).
    pub skipped: usize,
    pub seconds: f64,
}

impl StageReport {
    pub fn summary(&self) -> String {
        format!(
            "stage {} worker {}/{}: {} of {} units ({} run, {} already done) in {:.1} s\n",
            self.stage,
            self.worker,
            self.workers,
            self.units,
            self.stage_units,
            self.ran,
            self.skipped,
            self.seconds
        )
    }
}

/// Runs this worker's units of a parallel stage, skipping the done ones.
#[allow(clippy::too_many_arguments)]
fn run_units(
    settings: &BuildSettings,
    options: &BuildOptions,
    plan: &Plan,
    work: &WorkDir,
    tokenizer: &DocTokenizer,
    pool: &rayon::ThreadPool,
    stage: Stage,
    worker: usize,
    workers: usize,
) -> Result<StageReport, BuildError> {
    let started = Instant::now();
    let mine = worker_units(stage, plan, worker, workers);
    let todo: Vec<usize> = mine
        .iter()
        .copied()
        .filter(|&unit| {
            work.unit_done_marker(stage, unit)
                .is_none_or(|marker| !marker.exists())
        })
        .collect();
    let budget = options.sort_budget(settings);
    let threads = pool.current_num_threads().max(1);
    let bytes = AtomicU64::new(0);
    let records = AtomicU64::new(0);
    match stage {
        Stage::Scan | Stage::Tokenize => {
            let total: u64 = todo.iter().map(|&u| plan.files[u].size).sum();
            let progress = progress::open(options.progress.as_ref(), stage.name(), total, "bytes");
            // Files in flight at once: one reader thread each parses ahead, and all of them
            // share the rayon pool, so a single reader never starves many cores.
            let in_flight = (threads / 4).clamp(1, todo.len().max(1));
            let ctx = UnitContext {
                settings,
                plan,
                work,
                pool,
                bytes: &bytes,
                records: &records,
                sort_budget: budget / in_flight,
            };
            // The progress thread wakes every 100 ms, and at once when the stage ends (the
            // sender is dropped), so it never holds the stage open.
            let (done, stopped) = std::sync::mpsc::channel::<()>();
            let failed = std::sync::atomic::AtomicBool::new(false);
            let next = std::sync::atomic::AtomicUsize::new(0);
            let (shown, bytes_read, records_read) = (&progress, &bytes, &records);
            let result = std::thread::scope(|scope| {
                scope.spawn(move || loop {
                    shown.set(
                        bytes_read.load(Ordering::Relaxed),
                        &format!("{} records", records_read.load(Ordering::Relaxed)),
                    );
                    match stopped.recv_timeout(Duration::from_millis(100)) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                });
                let run_some = || -> Result<(), BuildError> {
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&unit) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let result = match stage {
                            Stage::Scan => scan_file(&ctx, unit).map(drop),
                            _ => tokenize_file(&ctx, tokenizer, unit).map(drop),
                        };
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                            return result;
                        }
                    }
                    Ok(())
                };
                let workers: Vec<_> = (0..in_flight).map(|_| scope.spawn(run_some)).collect();
                let mut result = Ok(());
                for worker in workers {
                    let outcome = worker.join().unwrap_or_else(|_| {
                        Err(BuildError::Work {
                            path: work.root().to_path_buf(),
                            message: format!("internal error: a {} thread panicked", stage.name()),
                        })
                    });
                    if result.is_ok() {
                        result = outcome;
                    }
                }
                drop(done);
                result
            });
            progress.finish();
            result?;
        }
        Stage::Dedup => {
            let progress = progress::open(
                options.progress.as_ref(),
                "dedup",
                todo.len() as u64,
                "partitions",
            );
            let budget = budget / threads;
            let minhash = &settings.dedup.minhash;
            let verify = minhash
                .verify_threshold
                .filter(|_| settings.dedup.near)
                .map(|t| (t, minhash.num_hashes()));
            let finished = AtomicU64::new(0);
            pool.install(|| {
                todo.par_iter().with_max_len(1).try_for_each(|&unit| {
                    dedup_partition(plan, work, unit, budget, verify)?;
                    let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
                    progress.set(n, "");
                    Ok::<(), BuildError>(())
                })
            })?;
            progress.finish();
        }
        Stage::Plan | Stage::Finish => {}
    }
    Ok(StageReport {
        stage: stage.name(),
        worker,
        workers,
        stage_units: stage_units(stage, plan),
        units: mine.len(),
        ran: todo.len(),
        skipped: mine.len() - todo.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn remove_work(work: &WorkDir) {
    // Scratch space only: a leftover is harmless (the next build clears it).
    let _ = std::fs::remove_dir_all(work.root());
}

/// What can be checked before anything is written: a corpus already in the output directory
/// needs `overwrite` (a resumed build continues one that was allowed to start), the inputs
/// must exist and a given tokenizer must load. Returns that tokenizer, for the plan stage.
fn check_before_writing(
    settings: &BuildSettings,
    options: &BuildOptions,
    has_plan: bool,
) -> Result<Option<DocTokenizer>, BuildError> {
    let out = &settings.out;
    if options.resume && !has_plan && out.join(MANIFEST_FILE).exists() {
        return Err(BuildError::ResumeMismatch {
            dir: out.clone(),
            why: "it holds a finished corpus, not an interrupted build".into(),
        });
    }
    if out.join(MANIFEST_FILE).exists() && !options.overwrite && !(options.resume && has_plan) {
        return Err(BuildError::CorpusExists { dir: out.clone() });
    }
    let hint = settings.input.format.hint();
    let files = match &settings.input.data_manifest {
        Some(manifest_path) => {
            let root = settings
                .input
                .data_root
                .as_deref()
                .unwrap_or(Path::new("."));
            // Sizes only here; the plan stage verifies the checksums.
            DataManifest::load(manifest_path)?
                .resolve(root, hint, false)?
                .files
        }
        None => input::discover(&settings.input.paths, hint)?,
    };
    for file in &files {
        super::work::require_utf8(&file.path)?;
    }
    let config = &settings.tokenizer;
    let tokenizer = match &config.path {
        Some(path) => Some(DocTokenizer::from_file_to_encode(
            path,
            config.eod_token.as_deref(),
            config.pad_token.as_deref(),
        )?),
        None => None,
    };
    Ok(tokenizer)
}

/// Runs a whole build into `settings.out` in this process and returns its report. With
/// `options.resume`, continues an interrupted build of the same inputs and settings.
pub fn build(settings: &BuildSettings, options: &BuildOptions) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let out = &settings.out;
    let work = WorkDir::new(out);
    let has_plan = work.plan().exists();
    let loaded = check_before_writing(settings, options, has_plan)?;
    std::fs::create_dir_all(out).map_err(|e| BuildError::io(out, e))?;
    work.create_dirs()?;
    let _lock = Locks::exclusive(&work)?;
    let has_plan = work.plan().exists();
    if options.resume && !has_plan && out.join(MANIFEST_FILE).exists() {
        return Err(BuildError::ResumeMismatch {
            dir: out.clone(),
            why: "it holds a finished corpus, not an interrupted build".into(),
        });
    }
    if !options.resume || !has_plan {
        start_fresh(&work)?;
    }
    let pool = thread_pool(settings)?;
    let mut stages = vec![StageSeconds {
        stage: "load",
        seconds: started.elapsed().as_secs_f64(),
    }];
    let plan_started = Instant::now();
    let (plan, tokenizer) = plan_stage(settings, &work, &pool, loaded)?;
    stages.push(StageSeconds {
        stage: Stage::Plan.name(),
        seconds: plan_started.elapsed().as_secs_f64(),
    });
    if let Some(sink) = &options.progress {
        sink.note(&format!("encoder: {}", tokenizer.encoder()));
    }
    std::thread::scope(|scope| {
        // The fast encoder (vocabulary and merge tables, character classes) is built beside
        // the scan and dedup stages, which leave cores idle while a reader parses ahead, instead
        // of on the tokenize stage's critical path; that stage waits for it if need be.
        scope.spawn(|| tokenizer.fast().map(drop));
        for stage in [Stage::Scan, Stage::Dedup, Stage::Tokenize] {
            let report = run_units(
                settings, options, &plan, &work, &tokenizer, &pool, stage, 0, 1,
            )?;
            stages.push(StageSeconds {
                stage: report.stage,
                seconds: report.seconds,
            });
        }
        Ok::<(), BuildError>(())
    })?;
    let finish_started = Instant::now();
    let mut report = finish_and_clean(settings, options, &plan, &work, &tokenizer, &pool, started)?;
    stages.push(StageSeconds {
        stage: Stage::Finish.name(),
        seconds: finish_started.elapsed().as_secs_f64(),
    });
    report.throughput.stages = stages;
    Ok(report)
}

/// Stage `finish`, then the work directory goes (unless asked to keep it).
fn finish_and_clean(
    settings: &BuildSettings,
    options: &BuildOptions,
    plan: &Plan,
    work: &WorkDir,
    tokenizer: &DocTokenizer,
    pool: &rayon::ThreadPool,
    started: Instant,
) -> Result<BuildReport, BuildError> {
    let report = finish(
        settings,
        plan,
        work,
        tokenizer,
        options,
        pool.current_num_threads(),
        started,
    )?;
    if !options.keep_work {
        remove_work(work);
    }
    Ok(report)
}

/// The outcome of [`run_stage`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StageOutcome {
    Stage(StageReport),
    Finished(Box<BuildReport>),
}

/// Runs worker `worker`'s share (of `workers`) of one stage. `plan` and `finish` run on worker
/// 0 only (other workers have nothing to do); the parallel stages need the previous stage
/// complete and the same settings as the plan.
pub fn run_stage(
    settings: &BuildSettings,
    options: &BuildOptions,
    stage: Stage,
    worker: usize,
    workers: usize,
) -> Result<StageOutcome, BuildError> {
    let started = Instant::now();
    if workers == 0 || worker >= workers {
        return Err(BuildError::StageMismatch {
            stage: stage.name(),
            why: format!(
                "worker {worker} of {workers}: the worker index must be below the worker count"
            ),
        });
    }
    let out = &settings.out;
    std::fs::create_dir_all(out).map_err(|e| BuildError::io(out, e))?;
    let work = WorkDir::new(out);
    work.create_dirs()?;
    let idle = |plan: Option<&Plan>| StageReport {
        stage: stage.name(),
        worker,
        workers,
        stage_units: plan.map_or(1, |p| stage_units(stage, p)),
        units: 0,
        ran: 0,
        skipped: 0,
        seconds: started.elapsed().as_secs_f64(),
    };
    if !stage.parallel() && worker != 0 {
        return Ok(StageOutcome::Stage(idle(None)));
    }
    let pool = thread_pool(settings)?;
    if stage == Stage::Plan {
        let _lock = Locks::exclusive(&work)?;
        let loaded = if work.plan().exists() {
            None
        } else {
            let loaded = check_before_writing(settings, options, false)?;
            start_fresh(&work)?;
            loaded
        };
        let (plan, _) = plan_stage(settings, &work, &pool, loaded).map_err(|err| match err {
            BuildError::ResumeMismatch { dir, why } => BuildError::StageMismatch {
                stage: "plan",
                why: format!(
                    "{} already holds the plan of a different build ({why}); remove {} to start \
                     over, or use another --out",
                    dir.display(),
                    WorkDir::new(&dir).root().display()
                ),
            },
            other => other,
        })?;
        let mut report = idle(Some(&plan));
        report.units = 1;
        report.ran = 1;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(StageOutcome::Stage(report));
    }
    let _lock = Locks::worker(&work, stage, worker, workers)?;
    let plan = work
        .load_plan()?
        .ok_or_else(|| BuildError::StageIncomplete {
            stage: stage.name(),
            previous: "plan",
            detail: format!("no plan in {}", work.root().display()),
        })?;
    if super::config::recipe_before_finish(&plan.recipe)
        != super::config::recipe_before_finish(&settings.recipe())
    {
        return Err(BuildError::StageMismatch {
            stage: stage.name(),
            why: "this worker's settings differ from the plan's; run every stage with the same pipeline and flags".into(),
        });
    }
    if let Some(previous) = stage.previous().filter(|p| *p != Stage::Plan) {
        work.require_complete(previous, &plan, stage)?;
    }
    let tokenizer = plan_tokenizer(settings, &plan, &work)?;
    if stage == Stage::Finish {
        drop(_lock);
        let _exclusive = Locks::exclusive(&work)?;
        let report = finish_and_clean(settings, options, &plan, &work, &tokenizer, &pool, started)?;
        return Ok(StageOutcome::Finished(Box::new(report)));
    }
    let report = run_units(
        settings, options, &plan, &work, &tokenizer, &pool, stage, worker, workers,
    )?;
    Ok(StageOutcome::Stage(report))
}
