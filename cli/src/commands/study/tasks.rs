//! The downstream tasks of a study (`[tasks]`): every task file is read when the study starts, so
//! a missing download fails before any training; after a scaling or finetuning run is evaluated,
//! its checkpoint is scored on every task once per shots setting through the tokenizer it was
//! trained with, and the reports go to the run's `study-tasks.json`.

use anyhow::Context;
use redpack_trainer::backend::DeviceChoice;
use redpack_trainer::checkpoint;
use redpack_trainer::generate::{open_model, OpenOptions};
use redpack_trainer::lm::LanguageModel;
use redpack_trainer::study::execute::{self, TasksFile, TasksResult, TASKS_FILE};
use redpack_trainer::study::file::TasksSpec;
use redpack_trainer::study::{state, RunPlan, Study};
use redpack_trainer::tasks::{self, Report, Settings, Shots, TaskData, TaskId};

use crate::commands::checkpoint_model;
use crate::commands::eval_tasks::Tokenizer;

/// The longest context and continuation a task example is scored on.
const MAX_LEN: usize = 2048;

/// A study's tasks, their files read.
pub struct StudyTasks<'a> {
    spec: &'a TasksSpec,
    data: Vec<TaskData>,
    shots: Vec<(&'a str, Shots)>,
}

/// Reads every task file of the study's `[tasks]`, or `None` without one.
pub fn load(study: &Study) -> anyhow::Result<Option<StudyTasks<'_>>> {
    let Some(spec) = &study.file.tasks else {
        return Ok(None);
    };
    let root = study.resolve(&spec.data_root);
    let mut data = Vec::new();
    for task in TaskId::parse_list(&spec.tasks)? {
        data.push(
            task.load(&root)
                .with_context(|| format!("study tasks.data_root {}", root.display()))?,
        );
    }
    let parsed = spec
        .shots()
        .map_err(|e| anyhow::anyhow!("tasks.shots: {e}"))?;
    let shots = spec.shots.iter().map(String::as_str).zip(parsed).collect();
    Ok(Some(StudyTasks { spec, data, shots }))
}

/// Scores `plan`'s checkpoint on every task (nothing for an isoFLOP run). `progress` gets a
/// line per shots setting.
pub fn score(
    plan: &RunPlan,
    study_tasks: &StudyTasks<'_>,
    device: &str,
    threads: Option<usize>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<()> {
    let Some(dir) = execute::tasks_checkpoint(plan)? else {
        return Ok(());
    };
    let spec = study_tasks.spec;
    let meta = checkpoint::load_meta(&dir)
        .with_context(|| format!("run {}: cannot read {}", plan.name, dir.display()))?;
    let codec = Tokenizer(checkpoint_model::load_tokenizer(&dir, &meta, None)?);
    let options = OpenOptions {
        device: match device {
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda,
            _ => DeviceChoice::Auto,
        },
        threads,
        batch: spec.batch,
        max_len: MAX_LEN,
        verify: true,
    };
    let mut model = open_model(&dir, &options).with_context(|| {
        format!(
            "run {}: cannot open {} for the tasks",
            plan.name,
            dir.display()
        )
    })?;
    let mut results = Vec::with_capacity(study_tasks.shots.len());
    for &(label, shots) in &study_tasks.shots {
        progress(&format!("downstream tasks, {label} shots"));
        let settings = Settings {
            shots,
            limit: spec.limit,
            seed: spec.seed,
            batch: spec.batch,
        };
        let mut reports = Vec::with_capacity(study_tasks.data.len());
        for data in &study_tasks.data {
            reports.push(
                tasks::evaluate(data, &mut model, &codec, &settings).with_context(|| {
                    format!("run {}: task {} failed", plan.name, data.task.name())
                })?,
            );
        }
        results.push(TasksResult {
            shots: label,
            report: Report::new(model.describe(), spec.seed, reports),
        });
    }
    let file = TasksFile {
        checkpoint: dir.display().to_string(),
        results,
    };
    state::write_json(&plan.dir().join(TASKS_FILE), &file)?;
    Ok(())
}
