//! Checkpoints: one directory per saved step, `RUN/checkpoints/step-00001000/`, holding
//!
//! - `model.safetensors`: the parameters under their checkpoint names (PyTorch `[out, in]`
//!   layout, f32) and the Adafactor state under `optimizer.<param>.v` (`.v_row`/`.v_col` when
//!   factored, `.m` with momentum), so other tools can read the weights directly;
//! - `checkpoint.json`: the model config, step, data cursor, RNG seed, the corpus tokenizer's
//!   sha256, the corpus manifest's sha256, the resolved run settings, the sha256 of
//!   `model.safetensors` (checked on every load unless the caller skips it) and the step's
//!   health (`healthy`, its loss and gradient norm).
//!
//! Only healthy checkpoints are resumed from: a checkpoint is written only when its weights are
//! finite and its step passed the run's health checks, and it is marked `healthy: false` (with
//! the problem) when the next step, the first computed from its weights, fails them. `latest`
//! and `resolve` never pick a checkpoint marked so.
//!
//! With validation on (`--eval-data`), `RUN/checkpoints/best/` holds the checkpoint with the lowest
//! pooled eval loss so far, a checkpoint like the others plus `best.json` (`BestEval`: its step
//! and eval losses); `latest`, `prune` and `--resume` never pick it.
//!
//! A checkpoint is written into a hidden temporary directory next to its final place, every file
//! fsynced, then renamed into place and the parent fsynced: a crash leaves either the previous
//! checkpoints or the complete new one, never a truncated one that looks valid.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::data::Cursor;
use crate::optim::AdafactorConfig;
use crate::params::{param_shapes, ParamStore, Tensor};

pub const MODEL_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "checkpoint.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const FORMAT_NAME: &str = "redpack-checkpoint";
pub const FORMAT_VERSION: u32 = 1;
/// The directory of the best checkpoint under `RUN/checkpoints/`.
pub const BEST_DIR: &str = "best";
/// The file in the best checkpoint that says which step it is and what it scored.
pub const BEST_FILE: &str = "best.json";

/// What can go wrong saving or loading a checkpoint. Every variant names its path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("{}: no checkpoint here (expected a checkpoint directory with {META_FILE} and {MODEL_FILE}, or a run directory with checkpoints/)", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: sha256 {got} does not match {META_FILE}'s {want}: the file changed or is damaged (--no-verify skips this check)", path.display())]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("{}: the checkpoint is marked unhealthy ({problem}); use an earlier one (a run directory resolves to its latest healthy checkpoint)", path.display())]
    Unhealthy { path: PathBuf, problem: String },
    #[error("{}: tensor {tensor:?} holds a non-finite value; a checkpoint is never written with one", path.display())]
    NonFinite { path: PathBuf, tensor: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The tokenizer a model was trained with, as the corpus manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerStamp {
    pub sha256: String,
    pub vocab_size: u32,
    pub eod_id: u32,
    pub pad_id: u32,
}

/// The random state of a run. Every random draw is a counter hash of the seed (initialization:
/// seed and tensor index; shuffling: seed and epoch; dropout: seed, step and micro-batch), so the
/// seed plus the step and cursor is the whole state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
}

/// The best evaluation of a run so far (lowest pooled eval loss; the earliest step on a tie).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEval {
    pub step: u64,
    /// Token-pooled mean cross-entropy over the eval corpus (the criterion).
    pub loss: f64,
    /// The mean over sources of each source's pooled loss.
    pub source_avg_loss: f64,
    /// The eval corpus and how many rows were scored (all when unset).
    pub data: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// How the step a checkpoint was written at went, and whether it may be resumed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHealth {
    /// False once a check failed on the weights of this checkpoint (see `problem`).
    pub healthy: bool,
    /// The step's training loss and gradient norm (before clipping).
    pub loss: f64,
    pub grad_norm: f64,
    /// The moving average of the loss after this step (the spike check's baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_average: Option<f64>,
    /// Why the checkpoint is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub format_version: u32,
    /// Optimizer updates completed.
    pub step: u64,
    pub model: ModelConfig,
    pub optimizer: AdafactorConfig,
    /// The data position after the last batch of `step`.
    pub cursor: Cursor,
    pub rng: RngState,
    pub tokenizer: TokenizerStamp,
    /// Total scored tokens and training FLOPs so far, so metrics continue across a resume.
    pub tokens_seen: u64,
    pub flops_seen: f64,
    /// Training FLOPs so far in the paper's convention (`flops::paper_training_flops`).
    #[serde(default)]
    pub paper_flops_seen: f64,
    /// The run's resolved settings, for the record and for checks on resume.
    pub settings: serde_json::Value,
    /// The best evaluation up to `step` (with validation on), so a resumed run keeps choosing
    /// the best checkpoint over the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestEval>,
    /// sha256 of the training corpus's `manifest.json`: a resumed run must read the same corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_sha256: Option<String>,
    /// sha256 of `model.safetensors` (parameters and optimizer state), set when saving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckpointHealth>,
}

impl CheckpointMeta {
    /// False only for a checkpoint marked unhealthy.
    pub fn is_healthy(&self) -> bool {
        self.health.as_ref().is_none_or(|h| h.healthy)
    }
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub meta: CheckpointMeta,
    pub params: ParamStore,
    /// Optimizer state tensors by name (empty when loaded weights-only).
    pub optimizer_state: HashMap<String, Tensor>,
}

/// A borrowed f32 tensor as safetensors sees it.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Directory name of the checkpoint at `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Saves a checkpoint under `run_dir/checkpoints/` and returns its directory.
pub fn save(
    run_dir: &Path,
    meta: &CheckpointMeta,
    params: &ParamStore,
    optimizer_state: &[(String, Tensor)],
) -> Result<PathBuf, CheckpointError> {
    write_dir(
        run_dir,
        &step_dir_name(meta.step),
        meta,
        params,
        optimizer_state,
        None,
    )
}

/// Saves the run's best checkpoint as `run_dir/checkpoints/best/`, replacing the previous one,
/// with `best.json` describing `best` (which should also be `meta.best`).
pub fn save_best(
    run_dir: &Path,
    meta: &CheckpointMeta,
    params: &ParamStore,
    optimizer_state: &[(String, Tensor)],
    best: &BestEval,
) -> Result<PathBuf, CheckpointError> {
    write_dir(run_dir, BEST_DIR, meta, params, optimizer_state, Some(best))
}

/// Reads `best.json` of a best checkpoint directory.
pub fn load_best(dir: &Path) -> Result<BestEval, CheckpointError> {
    let path = dir.join(BEST_FILE);
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, format!("invalid JSON: {e}")))
}

/// Writes a checkpoint directory `run_dir/checkpoints/name` atomically.
fn write_dir(
    run_dir: &Path,
    name: &str,
    meta: &CheckpointMeta,
    params: &ParamStore,
    optimizer_state: &[(String, Tensor)],
    best: Option<&BestEval>,
) -> Result<PathBuf, CheckpointError> {
    let parent = run_dir.join(CHECKPOINTS_DIR);
    let final_dir = parent.join(name);
    let tensors = params
        .iter()
        .chain(optimizer_state.iter().map(|(n, t)| (n.as_str(), t)));
    for (tensor, t) in tensors {
        if t.data.iter().any(|x| !x.is_finite()) {
            return Err(CheckpointError::NonFinite {
                path: final_dir,
                tensor: tensor.to_string(),
            });
        }
    }
    std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    let tmp_dir = parent.join(format!(".{name}.tmp"));
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir).map_err(io_error(&tmp_dir))?;
    }
    std::fs::create_dir(&tmp_dir).map_err(io_error(&tmp_dir))?;

    let model_path = tmp_dir.join(MODEL_FILE);
    let views = params
        .iter()
        .map(|(name, t)| (name.to_string(), &t.shape, &t.data))
        .chain(
            optimizer_state
                .iter()
                .map(|(n, t)| (n.clone(), &t.shape, &t.data)),
        )
        .map(|(name, shape, data)| (name, F32View { shape, data }));
    safetensors::serialize_to_file(views, None, &model_path)
        .map_err(|e| corrupt(&model_path, format!("cannot write safetensors: {e}")))?;
    sync_file(&model_path)?;
    let meta = CheckpointMeta {
        model_sha256: Some(file_sha256(&model_path)?),
        ..meta.clone()
    };

    let meta_path = tmp_dir.join(META_FILE);
    let mut json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| corrupt(&meta_path, format!("cannot encode: {e}")))?;
    json.push(b'\n');
    std::fs::write(&meta_path, &json).map_err(io_error(&meta_path))?;
    sync_file(&meta_path)?;
    if let Some(best) = best {
        let best_path = tmp_dir.join(BEST_FILE);
        let mut json = serde_json::to_vec_pretty(best)
            .map_err(|e| corrupt(&best_path, format!("cannot encode: {e}")))?;
        json.push(b'\n');
        std::fs::write(&best_path, &json).map_err(io_error(&best_path))?;
        sync_file(&best_path)?;
    }
    sync_dir(&tmp_dir)?;

    if final_dir.exists() {
        // A run re-saved at the same step (a resume that saves again at once), or a new best.
        let old = parent.join(format!(".{name}.old"));
        std::fs::rename(&final_dir, &old).map_err(io_error(&final_dir))?;
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    }
    std::fs::rename(&tmp_dir, &final_dir).map_err(io_error(&final_dir))?;
    sync_dir(&parent)?;
    Ok(final_dir)
}

/// sha256 of a file, lowercase hex, read in pieces.
fn file_sha256(path: &Path) -> Result<String, CheckpointError> {
    use std::io::Read;
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Marks the checkpoint in `dir` unhealthy with `problem`, rewriting its `checkpoint.json`
/// atomically (the weights stay, for inspection).
pub fn mark_unhealthy(dir: &Path, problem: &str) -> Result<(), CheckpointError> {
    let mut meta = load_meta(dir)?;
    let health = meta.health.get_or_insert(CheckpointHealth {
        healthy: false,
        loss: 0.0,
        grad_norm: 0.0,
        loss_average: None,
        problem: None,
    });
    health.healthy = false;
    health.problem = Some(problem.to_string());
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!(".{META_FILE}.tmp"));
    let mut json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| corrupt(&path, format!("cannot encode: {e}")))?;
    json.push(b'\n');
    std::fs::write(&tmp, &json).map_err(io_error(&tmp))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(path))
}

fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    // Directories cannot be fsynced on every platform; where opening fails there is nothing to do.
    match File::open(path) {
        Ok(f) => f.sync_all().map_err(io_error(path)),
        Err(_) => Ok(()),
    }
}

/// The complete, healthy checkpoint with the highest step in `run_dir/checkpoints/`, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    let mut steps = step_dirs(run_dir)?;
    while let Some((_, dir)) = steps.pop() {
        if load_meta(&dir)?.is_healthy() {
            return Ok(Some(dir));
        }
    }
    Ok(None)
}

/// Whether `run_dir` holds any complete checkpoint, healthy or not.
pub fn has_checkpoints(run_dir: &Path) -> Result<bool, CheckpointError> {
    Ok(!step_dirs(run_dir)?.is_empty()
        || run_dir
            .join(CHECKPOINTS_DIR)
            .join(BEST_DIR)
            .join(META_FILE)
            .is_file())
}

/// The complete checkpoints (`step-N` with a `checkpoint.json`), by step.
fn step_dirs(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let parent = run_dir.join(CHECKPOINTS_DIR);
    if !parent.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&parent).map_err(io_error(&parent))? {
        let entry = entry.map_err(io_error(&parent))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if dir.join(META_FILE).is_file() {
            found.push((step, dir));
        }
    }
    found.sort();
    Ok(found)
}

/// Accepts a checkpoint directory, a file inside one, or a run directory (its latest checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    let not_found = || CheckpointError::NotFound {
        path: path.to_path_buf(),
    };
    if !path.exists() {
        return Err(CheckpointError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let dir = if path.is_file() {
        path.parent().ok_or_else(not_found)?.to_path_buf()
    } else {
        path.to_path_buf()
    };
    if dir.join(META_FILE).is_file() {
        let meta = load_meta(&dir)?;
        if !meta.is_healthy() {
            return Err(CheckpointError::Unhealthy {
                path: dir,
                problem: meta
                    .health
                    .and_then(|h| h.problem)
                    .unwrap_or_else(|| "no reason recorded".into()),
            });
        }
        return Ok(dir);
    }
    latest(&dir)?.ok_or_else(not_found)
}

/// Reads `checkpoint.json` of a checkpoint directory.
pub fn load_meta(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    let head: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, format!("invalid JSON: {e}")))?;
    if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
        return Err(corrupt(&path, format!("not a {FORMAT_NAME} file")));
    }
    let version = head.get("format_version").and_then(|v| v.as_u64());
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(corrupt(
            &path,
            format!(
                "format version {version:?} is not supported (this redpack reads {FORMAT_VERSION})"
            ),
        ));
    }
    let meta: CheckpointMeta = serde_json::from_value(head)
        .map_err(|e| corrupt(&path, format!("unexpected content: {e}")))?;
    // Every user of the metadata sizes buffers and loops from `model`: check its dimensions
    // (checked arithmetic, no overflowing parameter count) before anything does.
    meta.model
        .validate()
        .map_err(|e| corrupt(&path, format!("model: {e}")))?;
    Ok(meta)
}

/// Loads a checkpoint directory: the parameters in the order `meta.model` needs, and the
/// optimizer state when `with_optimizer` is set; `model.safetensors` is checked against the
/// sha256 in `checkpoint.json`.
pub fn load(dir: &Path, with_optimizer: bool) -> Result<Checkpoint, CheckpointError> {
    load_checked(dir, with_optimizer, true)
}

/// `load`, checking the sha256 of `model.safetensors` only when `verify` is set.
pub fn load_checked(
    dir: &Path,
    with_optimizer: bool,
    verify: bool,
) -> Result<Checkpoint, CheckpointError> {
    let meta = load_meta(dir)?;
    let path = dir.join(MODEL_FILE);
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    if let Some(want) = meta.model_sha256.as_ref().filter(|_| verify) {
        let got = hex(&Sha256::digest(&bytes));
        if &got != want {
            return Err(CheckpointError::Checksum {
                path,
                got,
                want: want.clone(),
            });
        }
    }
    // Each parameter takes 4 bytes of the file: a config claiming more parameters than the file
    // can hold is refused before its tensor list is built (huge layer counts would loop).
    let claimed = meta.model.checked_param_count().unwrap_or(u64::MAX);
    let room = u64::try_from(bytes.len() / 4).unwrap_or(u64::MAX);
    if claimed > room {
        return Err(corrupt(
            &path,
            format!(
                "checkpoint.json describes {claimed} parameters, more than the file's {} bytes hold",
                bytes.len()
            ),
        ));
    }
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(&path, format!("invalid safetensors: {e}")))?;
    let read = |name: &str| -> Result<Tensor, CheckpointError> {
        let view = file
            .tensor(name)
            .map_err(|_| corrupt(&path, format!("tensor {name:?} is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(
                &path,
                format!("tensor {name:?} is {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Tensor {
            shape: view.shape().to_vec(),
            data,
        })
    };
    let mut params = ParamStore {
        names: Vec::new(),
        tensors: Vec::new(),
    };
    for (name, shape) in param_shapes(&meta.model) {
        let tensor = read(&name)?;
        if tensor.shape != shape {
            return Err(corrupt(
                &path,
                format!(
                    "tensor {name:?} has shape {:?}, the config needs {shape:?}",
                    tensor.shape
                ),
            ));
        }
        params.names.push(name);
        params.tensors.push(tensor);
    }
    let mut optimizer_state = HashMap::new();
    if with_optimizer {
        for name in file.names() {
            if name.starts_with("optimizer.") {
                optimizer_state.insert(name.to_string(), read(name)?);
            }
        }
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        meta,
        params,
        optimizer_state,
    })
}

/// Deletes all but the newest `keep` complete checkpoints of a run (`keep = 0` keeps all) and
/// returns the directories removed. The loop calls it once the newest checkpoint has passed the
/// next step's health checks, so a checkpoint that is about to be marked unhealthy never
/// replaces the good ones before it.
pub fn prune(run_dir: &Path, keep: usize) -> Result<Vec<PathBuf>, CheckpointError> {
    let parent = run_dir.join(CHECKPOINTS_DIR);
    if keep == 0 || !parent.is_dir() {
        return Ok(Vec::new());
    }
    let mut steps: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&parent).map_err(io_error(&parent))? {
        let entry = entry.map_err(io_error(&parent))?;
        let step = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step {
            if entry.path().join(META_FILE).is_file() {
                steps.push((step, entry.path()));
            }
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(excess);
    for (_, dir) in steps.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        removed.push(dir);
    }
    Ok(removed)
}
