//! Per-step metrics: one JSON object per optimizer step in `RUN/metrics.jsonl`, and the same
//! record handed to an observer (the CLI's progress bar).
//!
//! With validation on (`--eval-data`), the record of a step after which the eval corpus was scored
//! carries an `eval` object (`EvalMetrics`); other records have none, so a reader that ignores it
//! reads every line as before.
//!
//! Everything in a record except `elapsed_s` and `tokens_per_s` is a deterministic function of
//! the run's settings and data, so two runs (or a run and its resumed twin) can be compared
//! line by line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based number of this update.
    pub step: u64,
    /// Mean cross-entropy per scored token (natural log), z-loss excluded.
    pub loss: f64,
    /// Mean z-loss term per scored token.
    pub z_loss: f64,
    pub lr: f64,
    /// Global gradient norm (of the mean-loss gradient, before clipping).
    pub grad_norm: f64,
    /// Norm of the applied parameter update.
    pub update_norm: f64,
    /// Scored tokens this step.
    pub tokens: u64,
    /// Scored tokens since the start of the run.
    pub tokens_seen: u64,
    /// Training FLOPs this step and since the start, detailed (see `flops::training_flops`).
    pub flops: f64,
    pub flops_seen: f64,
    /// The same in the paper's convention, `6 · N · D` per stack (see
    /// `flops::paper_training_flops`).
    #[serde(default)]
    pub paper_flops: f64,
    #[serde(default)]
    pub paper_flops_seen: f64,
    /// Data position after this step.
    pub epoch: u64,
    pub position: u64,
    /// Wall-clock seconds of this step, and real (non-padding) tokens read per second.
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    /// With a source mixture: the share of draws each mixture key has had since the run's
    /// start (compare with the normalized weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture: Option<BTreeMap<String, f64>>,
    /// The eval corpus scored with the parameters after this step, on the steps validation runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalMetrics>,
}

/// One evaluation on the eval corpus during training: the training objective's cross-entropy
/// (z-loss and dropout off), over the scored tokens of the first `examples` rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Token-pooled mean cross-entropy (natural log) over every scored token.
    pub loss: f64,
    /// The mean over sources of each source's pooled loss (the paper's headline average).
    pub source_avg_loss: f64,
    /// `exp(loss)`.
    pub ppl: f64,
    /// Scored tokens and rows.
    pub tokens: u64,
    pub examples: u64,
    /// Pooled loss of each source.
    pub sources: BTreeMap<String, f64>,
    /// Whether this is the lowest pooled loss of the run so far (saved as `checkpoints/best`
    /// when the run keeps its best checkpoint).
    #[serde(default)]
    pub best: bool,
}

/// Errors writing or reading the metrics file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: invalid metrics record: {source}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Appends step records to `metrics.jsonl`, flushing each line so a crash loses at most the line
/// being written.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl` for a run continuing after `keep_through_step`: records of
    /// later steps (logged after the checkpoint being resumed, then lost) are dropped so the file
    /// holds each step once. A fresh run passes 0 and gets an empty file.
    pub fn open(run_dir: &Path, keep_through_step: u64) -> Result<MetricsLog, MetricsError> {
        let path = run_dir.join(METRICS_FILE);
        let io = |source| MetricsError::Io {
            path: path.clone(),
            source,
        };
        let kept: Vec<String> = if keep_through_step > 0 && path.exists() {
            read_lines(&path)?
                .into_iter()
                .filter(|(_, record)| record.step <= keep_through_step)
                .map(|(line, _)| line)
                .collect()
        } else {
            Vec::new()
        };
        let mut file = File::create(&path).map_err(io)?;
        for line in kept {
            writeln!(file, "{line}").map_err(io)?;
        }
        file.flush().map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(MetricsLog { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&mut self, record: &StepMetrics) -> Result<(), MetricsError> {
        let line = serde_json::to_string(record).map_err(|e| MetricsError::Parse {
            path: self.path.clone(),
            line: 0,
            source: e,
        })?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|source| MetricsError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Reads every record of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, MetricsError> {
    Ok(read_lines(path)?.into_iter().map(|(_, r)| r).collect())
}

fn read_lines(path: &Path) -> Result<Vec<(String, StepMetrics)>, MetricsError> {
    let file = File::open(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|source| MetricsError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push((line, record));
    }
    Ok(out)
}

/// Receives every step's metrics as the run goes (a progress bar, a test recorder).
pub trait StepObserver {
    fn on_step(&mut self, metrics: &StepMetrics);
    /// A checkpoint was written.
    fn on_checkpoint(&mut self, _step: u64, _dir: &Path) {}
    /// The eval corpus was scored after `step` (called before `on_step` of that step).
    fn on_eval(&mut self, _step: u64, _eval: &EvalMetrics) {}
}

/// An observer that does nothing.
pub struct Quiet;

impl StepObserver for Quiet {
    fn on_step(&mut self, _metrics: &StepMetrics) {}
}
