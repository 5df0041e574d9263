//! Run state for resuming a study: each run directory holds `study-run.json` (the run's plan and
//! fingerprint, written before its first step) and, once trained and evaluated, `study-done.json`.
//! A rerun skips finished runs, resumes an interrupted one from its latest checkpoint, and refuses
//! a run whose plan no longer matches the study file, naming the run and what changed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::grid::RunPlan;
use super::StudyError;
use crate::config::ModelConfig;

pub const RUN_FILE: &str = "study-run.json";
pub const DONE_FILE: &str = "study-done.json";

/// What `study-run.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub fingerprint: String,
    pub plan: serde_json::Value,
}

/// What `study-done.json` holds: the run finished training and its evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneRecord {
    pub fingerprint: String,
    /// The fingerprint of the evaluation settings the run was evaluated with (see
    /// `evaluation_fingerprint`).
    #[serde(default)]
    pub evaluation: String,
    pub model: ModelConfig,
    pub final_checkpoint: PathBuf,
    /// Wall seconds of training and of evaluation, summed over the invocations that did them.
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Nothing written yet.
    New,
    /// Started with the same plan, not finished: resume it.
    Interrupted,
    /// Trained and evaluated with the same plan: skip it.
    Finished(DoneRecord),
    /// Trained with the same plan, evaluated with other evaluation settings: evaluate again.
    Stale,
}

/// The plan as it enters the fingerprint: everything that decides the run's numbers.
pub fn plan_value(plan: &RunPlan) -> serde_json::Value {
    let mut value = serde_json::to_value(plan).unwrap_or(serde_json::Value::Null);
    if let Some(settings) = value.get_mut("settings").and_then(|s| s.as_object_mut()) {
        // Where the run lives, whether it resumes and where its pretrained checkpoint lives (named by
        // `init_from`) do not change its numbers.
        settings.remove("out");
        settings.remove("resume");
        settings.remove("init");
    }
    value
}

fn sha256_hex(value: &serde_json::Value) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of the plan's canonical JSON.
pub fn fingerprint(plan: &RunPlan) -> String {
    sha256_hex(&plan_value(plan))
}

/// sha256 of the evaluation settings' canonical JSON: a change re-evaluates finished runs
/// without training them again.
pub fn evaluation_fingerprint<T: Serialize>(settings: &T) -> String {
    sha256_hex(&serde_json::to_value(settings).unwrap_or(serde_json::Value::Null))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StudyError> {
    let text = std::fs::read_to_string(path).map_err(|e| StudyError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| StudyError::Io {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// Writes JSON atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StudyError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| StudyError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StudyError::Io {
            path: parent.to_path_buf(),
            message: format!("cannot create the directory: {e}"),
        })?;
    }
    redpack_schemas::atomic::write_file(path, format!("{text}\n").as_bytes()).map_err(|e| {
        StudyError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// The leaves that differ between two JSON values, as `path: old -> new`.
pub fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into("", old, new, &mut out);
    out
}

fn diff_into(place: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let here = if place.is_empty() {
                    key.clone()
                } else {
                    format!("{place}.{key}")
                };
                let null = Value::Null;
                diff_into(
                    &here,
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{place}: {a} -> {b}")),
        _ => {}
    }
}

/// Where `plan` stands in its directory, for evaluation settings of fingerprint `evaluation`; an
/// error when the directory holds a run of another plan or something that is not a study run.
pub fn check(plan: &RunPlan, evaluation: &str) -> Result<RunState, StudyError> {
    let dir = plan.dir();
    let run_file = dir.join(RUN_FILE);
    if !run_file.exists() {
        let occupied = std::fs::read_dir(dir)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        if occupied {
            return Err(StudyError::Changed {
                run: plan.name.clone(),
                dir: dir.to_path_buf(),
                what: format!(
                    "the folder exists but has no {RUN_FILE}: it is not a run of this study"
                ),
            });
        }
        return Ok(RunState::New);
    }
    let record: RunRecord = read_json(&run_file)?;
    let print = fingerprint(plan);
    if record.fingerprint != print {
        let changes = differences(&record.plan, &plan_value(plan));
        let what = if changes.is_empty() {
            "its fingerprint differs".to_string()
        } else {
            changes.join("; ")
        };
        return Err(StudyError::Changed {
            run: plan.name.clone(),
            dir: dir.to_path_buf(),
            what,
        });
    }
    let done_file = dir.join(DONE_FILE);
    if done_file.exists() {
        let done: DoneRecord = read_json(&done_file)?;
        if done.fingerprint == print {
            return Ok(if done.evaluation == evaluation {
                RunState::Finished(done)
            } else {
                RunState::Stale
            });
        }
    }
    Ok(RunState::Interrupted)
}

/// Records the plan before the run's first step.
pub fn start(plan: &RunPlan) -> Result<(), StudyError> {
    write_json(
        &plan.dir().join(RUN_FILE),
        &RunRecord {
            fingerprint: fingerprint(plan),
            plan: plan_value(plan),
        },
    )
}

/// Reads a finished run's record, if any.
pub fn done(dir: &Path) -> Result<Option<DoneRecord>, StudyError> {
    let path = dir.join(DONE_FILE);
    if path.exists() {
        read_json(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Marks a run finished.
pub fn finish(dir: &Path, record: &DoneRecord) -> Result<(), StudyError> {
    write_json(&dir.join(DONE_FILE), record)
}

/// Reads any JSON file of a run, naming it in errors.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StudyError> {
    read_json(path)
}
