//! One run of a study through the library: its training settings for this invocation (fresh,
//! resumed or initialized from its pretraining run), then the evaluations of its final checkpoint,
//! written next to the run (`study-eval.json`, `study-locality/`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::file::EvalSpec;
use super::grid::{Corpora, CorpusShape, RunPlan};
use super::state::{self, RunState};
use super::StudyError;
use crate::analysis::{write_outputs, LocalityJob, LocalityOptions};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::checkpoint::{self, BEST_DIR, CHECKPOINTS_DIR};
use crate::eval::grid::{GridJob, GridOptions};
use crate::eval::{EvalJob, EvalOptions};
use crate::run::TrainSettings;

pub const EVAL_FILE: &str = "study-eval.json";
/// A run's downstream task reports (`[tasks]`), one per shots setting.
pub const TASKS_FILE: &str = "study-tasks.json";
pub const LOCALITY_DIR: &str = "study-locality";

/// Rows per evaluation batch.
const EVAL_BATCH_ROWS: usize = 4;

fn run_error(plan: &RunPlan, message: impl std::fmt::Display) -> StudyError {
    StudyError::Run {
        run: plan.name.clone(),
        message: message.to_string(),
    }
}

/// The settings to train `plan` with now: a new or interrupted pretraining run resumes from its
/// latest healthy checkpoint (a fresh start when there is none); a finetuning run starts from its
/// pretraining run's final checkpoint until it has a checkpoint of its own.
pub fn settings_now(plan: &RunPlan, run_state: &RunState) -> Result<TrainSettings, StudyError> {
    let mut settings = plan.settings.clone();
    let own = checkpoint::latest(plan.dir()).map_err(|e| run_error(plan, e))?;
    if matches!(run_state, RunState::Interrupted | RunState::Stale) && own.is_some() {
        settings.resume = true;
        settings.init = None;
    } else if let Some(init) = &plan.settings.init {
        let from = checkpoint::latest(init)
            .map_err(|e| run_error(plan, e))?
            .ok_or_else(|| {
                run_error(
                    plan,
                    format!(
                        "its pretraining run {} has no checkpoint yet: run it first (--only {})",
                        plan.init_from.as_deref().unwrap_or("?"),
                        plan.init_from.as_deref().unwrap_or("?")
                    ),
                )
            })?;
        settings.init = Some(from);
        settings.resume = false;
    } else {
        // A run killed before its first checkpoint starts afresh; `redpack train` refuses
        // `--resume` where there is nothing to continue.
        settings.resume = own.is_some();
    }
    Ok(settings)
}

/// What `TASKS_FILE` holds: the task report of each shots setting, in the study's order.
#[derive(Debug, Serialize)]
pub struct TasksFile<'a> {
    pub checkpoint: String,
    pub results: Vec<TasksResult<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TasksResult<'a> {
    pub shots: &'a str,
    #[serde(flatten)]
    pub report: crate::tasks::Report,
}

/// The checkpoint a run's downstream tasks score: a scaling run's final checkpoint, a
/// finetuning run's best; `None` for an isoFLOP run (compared on perplexity only).
pub fn tasks_checkpoint(plan: &RunPlan) -> Result<Option<PathBuf>, StudyError> {
    match plan.group {
        super::RunGroup::Scaling => final_checkpoint(plan).map(Some),
        super::RunGroup::Finetune => Ok(Some(plan.dir().join(CHECKPOINTS_DIR).join(BEST_DIR))),
        super::RunGroup::IsoFlop { .. } => Ok(None),
    }
}

/// The final checkpoint of a trained run.
pub fn final_checkpoint(plan: &RunPlan) -> Result<PathBuf, StudyError> {
    checkpoint::latest(plan.dir())
        .map_err(|e| run_error(plan, e))?
        .ok_or_else(|| run_error(plan, "no checkpoint after training"))
}

/// Lengths and prefix lengths of the evaluation grid: the study's, with the training length and
/// split always included.
pub fn eval_grid(eval: &EvalSpec, shape: CorpusShape) -> (Vec<usize>, Vec<usize>) {
    let mut lengths = eval.lengths.clone();
    lengths.push(shape.seq_len);
    lengths.sort_unstable();
    lengths.dedup();
    let mut prefixes = eval.prefix_lens.clone();
    prefixes.push(shape.prefix_len);
    prefixes.sort_unstable();
    prefixes.dedup();
    (lengths, prefixes)
}

/// Evaluates a trained run: for a scaling run the (length, prefix) grid on the held-out split and
/// the attention locality at the training length; for an isoFLOP run the training length and
/// split only; for finetuning the best checkpoint on the held-out examples. `progress` gets a
/// line per part.
pub fn evaluate(
    plan: &RunPlan,
    corpora: &Corpora,
    shape: CorpusShape,
    eval: &EvalSpec,
    backend: &mut dyn Backend,
    threads: Option<usize>,
    mut progress: impl FnMut(&str),
) -> Result<(), StudyError> {
    let dir = plan.dir();
    let write_err = |path: &Path, e: &dyn std::fmt::Display| StudyError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if !plan.is_pretrain() {
        let best = dir.join(CHECKPOINTS_DIR).join(BEST_DIR);
        let data = corpora
            .finetune_eval
            .as_ref()
            .ok_or_else(|| run_error(plan, "no held-out examples corpus"))?;
        progress("scoring the best checkpoint");
        let options = EvalOptions {
            prefix_len: None,
            batch_rows: EVAL_BATCH_ROWS,
            max_examples: eval.rows,
        };
        let job = EvalJob::prepare(&best, data, options).map_err(|e| run_error(plan, e))?;
        let report = job.run(backend, |_| {}).map_err(|e| run_error(plan, e))?;
        return state::write_json(&dir.join(EVAL_FILE), &report);
    }
    let ckpt = final_checkpoint(plan)?;
    // An isoFLOP run is compared at the training length only: the length grid and the attention
    // analysis are read from the scaling runs.
    let isoflop = matches!(plan.group, super::RunGroup::IsoFlop { .. });
    let (lengths, prefix_lens) = if isoflop {
        (vec![shape.seq_len], vec![shape.prefix_len])
    } else {
        eval_grid(eval, shape)
    };
    progress("length and prefix grid");
    let options = GridOptions {
        lengths,
        prefix_lens,
        batch_rows: EVAL_BATCH_ROWS,
        max_rows: eval.rows,
    };
    let job = GridJob::prepare(&ckpt, &corpora.pretrain_eval, options)
        .map_err(|e| run_error(plan, format!("evaluation: {e}")))?;
    let mut report = job
        .run(backend, |_| {})
        .map_err(|e| run_error(plan, format!("evaluation: {e}")))?;
    // Memory depends on the process, not the run: kept out so the file is deterministic.
    report.peak_rss_bytes = None;
    state::write_json(&dir.join(EVAL_FILE), &report)?;
    if isoflop {
        return Ok(());
    }
    progress("attention locality");
    let options = LocalityOptions {
        length: shape.seq_len,
        prefix_len: shape.prefix_len,
        window: eval.window,
        rows: eval.locality_rows,
    };
    let job = LocalityJob::prepare(&ckpt, &corpora.pretrain_eval, options)
        .map_err(|e| run_error(plan, format!("attention analysis: {e}")))?;
    let cpu = CpuBackend::new(threads).map_err(|e| run_error(plan, e))?;
    let (report, maps) = job
        .run(&cpu, |_| {})
        .map_err(|e| run_error(plan, format!("attention analysis: {e}")))?;
    let out = dir.join(LOCALITY_DIR);
    write_outputs(report, &maps, &out).map_err(|e| write_err(&out, &e))?;
    Ok(())
}
