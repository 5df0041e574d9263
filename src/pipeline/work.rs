//! The work directory of a build: the plan, each stage's per-unit outputs, locks.
//!
//! A build is a fixed sequence of [`Stage`]s. Every stage but `plan` and `finish` is split into
//! units (input files for `scan` and `tokenize`, dedup partitions for `dedup`); a unit's outputs
//! are written atomically and its small JSON "meta" file is written last, so a unit is done
//! exactly when its meta file exists. That makes three things fall out of one mechanism:
//! - resume: a rerun skips every unit whose meta exists (`kill -9` at any point loses at most
//!   the units in flight);
//! - many machines: worker `I` of `N` takes a deterministic share of the units, and the next
//!   stage starts only when every unit of the previous one is done;
//! - determinism: a unit's outputs depend only on its inputs and the plan, never on which
//!   worker, thread count or run produced them.
//!
//! Layout under `OUT/.redpack-work/`:
//! ```text
//! plan.json                      settings, input files with size/mtime, tokenizer sha256
//! tokenizer.json                 the tokenizer every stage uses
//! scan/NNNNNN.{fp,band,json}     per input file: sorted dedup keys + counts, rejects
//! scan/NNNNNN.sig                signatures, only with dedup.minhash.verify_threshold
//! dedup/NNNNNN.{dups,json}       per partition: duplicate doc ids, indexed by file
//! tokens/NNNNNN.{tok,json}       per input file: the kept documents' tokens + counts
//! spill/                         external-sort runs (deleted as merged)
//! locks/                         advisory locks of running workers
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use redpack_schemas::atomic;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::config::recipe_before_finish;
use super::types::BuildError;
use crate::input::{InputFile, InputFormat};

/// The work directory's name inside the output directory.
pub const WORK_DIR: &str = ".redpack-work";
/// Most dedup partitions. A plan picks a power of two up to this from the input size (about
/// one per GiB of input), never from the worker count, so outputs do not depend on it.
pub const MAX_PARTITIONS: usize = 256;
/// Input bytes per dedup partition when planning.
const PARTITION_BYTES: u64 = 1 << 30;
/// Bits of a document id that hold the item's position in its file.
pub const ITEM_BITS: u32 = 40;
/// Most input files a build can have (document ids are `file << 40 | item` below 2^63).
pub const MAX_FILES: usize = 1 << 23;
/// Plan format version.
const PLAN_VERSION: u32 = 1;

/// A document id: input order as one integer.
pub fn doc_id(file: usize, item: u64) -> u64 {
    ((file as u64) << ITEM_BITS) | item
}

/// The file index of a document id.
pub fn doc_file(doc: u64) -> usize {
    (doc >> ITEM_BITS) as usize
}

/// The item index of a document id.
pub fn doc_item(doc: u64) -> u64 {
    doc & ((1 << ITEM_BITS) - 1)
}

/// The stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Plan,
    Scan,
    Dedup,
    Tokenize,
    Finish,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Plan,
        Stage::Scan,
        Stage::Dedup,
        Stage::Tokenize,
        Stage::Finish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Plan => "plan",
            Stage::Scan => "scan",
            Stage::Dedup => "dedup",
            Stage::Tokenize => "tokenize",
            Stage::Finish => "finish",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// One line for `--stages`.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Plan => "find the inputs, record their sizes, load or train the tokenizer (1 worker)",
            Stage::Scan => "read every input file: count rejects, filter, compute dedup keys (N workers, by file)",
            Stage::Dedup => "merge the dedup keys of all files: exact and near duplicates (N workers, by key partition)",
            Stage::Tokenize => "reread every input file and tokenize the kept records (N workers, by file)",
            Stage::Finish => "pack the tokens into shards and write the manifest (1 worker)",
        }
    }

    pub fn previous(self) -> Option<Stage> {
        let index = Stage::ALL.iter().position(|s| *s == self)?;
        index.checked_sub(1).map(|i| Stage::ALL[i])
    }

    /// Whether the stage splits over workers.
    pub fn parallel(self) -> bool {
        matches!(self, Stage::Scan | Stage::Dedup | Stage::Tokenize)
    }
}

/// One planned input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub display: String,
    pub source: String,
    pub format: InputFormat,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl PlannedFile {
    pub fn of(file: &InputFile) -> Result<Self, BuildError> {
        require_utf8(&file.path)?;
        let (size, mtime_ns) = identity(&file.path)?;
        Ok(PlannedFile {
            path: file.path.clone(),
            display: file.display.to_string(),
            source: file.source.to_string(),
            format: file.format,
            size,
            mtime_ns,
            sha256: file.sha256.as_deref().map(str::to_string),
        })
    }

    pub fn input_file(&self) -> InputFile {
        InputFile {
            path: self.path.clone(),
            display: self.display.as_str().into(),
            source: self.source.as_str().into(),
            format: self.format,
            sha256: self.sha256.as_deref().map(Into::into),
        }
    }

    /// Errors when the file's size or modification time differ from the plan's.
    pub fn check_unchanged(&self) -> Result<(), BuildError> {
        let (size, mtime_ns) = identity(&self.path)?;
        if size != self.size || mtime_ns != self.mtime_ns {
            return Err(BuildError::InputChanged {
                path: self.path.clone(),
                detail: format!(
                    "size {} -> {size} bytes, mtime {} -> {mtime_ns} ns",
                    self.size, self.mtime_ns
                ),
            });
        }
        Ok(())
    }
}

/// Size and modification time (ns) of a file.
pub fn identity(path: &Path) -> Result<(u64, u64), BuildError> {
    let meta = fs::metadata(path).map_err(|e| BuildError::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// The plan: everything later stages need to agree on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    /// The build settings that shape the output (the manifest's `build`).
    pub recipe: serde_json::Value,
    pub files: Vec<PlannedFile>,
    pub tokenizer_sha256: String,
    pub tokenizer_trained: bool,
    /// 2 (u16) or 4 (u32): the token width of the scratch files and the shards.
    pub token_width: u32,
    pub partitions: usize,
}

impl Plan {
    pub fn new(
        recipe: serde_json::Value,
        files: Vec<PlannedFile>,
        tokenizer_sha256: String,
        tokenizer_trained: bool,
        vocab_size: u32,
    ) -> Self {
        let input_bytes: u64 = files.iter().map(|f| f.size).sum();
        let wanted = input_bytes.div_ceil(PARTITION_BYTES).max(1);
        let partitions = (wanted.next_power_of_two() as usize).min(MAX_PARTITIONS);
        Plan {
            version: PLAN_VERSION,
            recipe,
            files,
            tokenizer_sha256,
            tokenizer_trained,
            token_width: if vocab_size <= 1 << 16 { 2 } else { 4 },
            partitions,
        }
    }

    /// Why `self` (the plan on disk) cannot be resumed by a build planned as `other`, if it
    /// cannot.
    pub fn mismatch(&self, other: &Plan) -> Option<String> {
        if self.version != other.version {
            return Some(format!(
                "the work directory is from plan version {}, this redpack writes {}",
                self.version, other.version
            ));
        }
        if recipe_before_finish(&self.recipe) != recipe_before_finish(&other.recipe) {
            return Some("the build settings differ from the interrupted run's".into());
        }
        if self.files.len() != other.files.len() {
            return Some(format!(
                "the interrupted run had {} input files, this one has {}",
                self.files.len(),
                other.files.len()
            ));
        }
        for (index, (old, new)) in self.files.iter().zip(&other.files).enumerate() {
            if old.display != new.display || old.format != new.format || old.source != new.source {
                return Some(format!(
                    "input #{index} was {} ({}, source {}) and is now {} ({}, source {})",
                    old.display, old.format, old.source, new.display, new.format, new.source
                ));
            }
            if old.size != new.size || old.mtime_ns != new.mtime_ns || old.sha256 != new.sha256 {
                return Some(format!(
                    "{} changed since the interrupted run (size {} -> {} bytes, mtime {} -> {} ns)",
                    new.path.display(),
                    old.size,
                    new.size,
                    old.mtime_ns,
                    new.mtime_ns
                ));
            }
        }
        if self.tokenizer_sha256 != other.tokenizer_sha256 {
            return Some("the tokenizer differs from the interrupted run's".into());
        }
        None
    }
}

/// Paths inside the work directory.
#[derive(Debug, Clone)]
pub struct WorkDir {
    root: PathBuf,
}

impl WorkDir {
    pub fn new(out: &Path) -> Self {
        WorkDir {
            root: out.join(WORK_DIR),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    pub fn plan(&self) -> PathBuf {
        self.root.join("plan.json")
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }

    /// Where the finish stage writes the new corpus before it replaces the one in the output
    /// directory (see [`super::publish`]).
    pub fn staged(&self) -> PathBuf {
        self.root.join("staged")
    }

    fn unit(&self, dir: &str, unit: usize, ext: &str) -> PathBuf {
        self.root.join(dir).join(format!("{unit:06}.{ext}"))
    }

    pub fn scan_fp(&self, file: usize) -> PathBuf {
        self.unit("scan", file, "fp")
    }
    pub fn scan_band(&self, file: usize) -> PathBuf {
        self.unit("scan", file, "band")
    }
    pub fn scan_sig(&self, file: usize) -> PathBuf {
        self.unit("scan", file, "sig")
    }
    pub fn scan_meta(&self, file: usize) -> PathBuf {
        self.unit("scan", file, "json")
    }
    pub fn dedup_dups(&self, partition: usize) -> PathBuf {
        self.unit("dedup", partition, "dups")
    }
    pub fn dedup_meta(&self, partition: usize) -> PathBuf {
        self.unit("dedup", partition, "json")
    }
    pub fn tokens(&self, file: usize) -> PathBuf {
        self.unit("tokens", file, "tok")
    }
    pub fn tokens_meta(&self, file: usize) -> PathBuf {
        self.unit("tokens", file, "json")
    }

    /// A private spill directory for one unit of one stage.
    pub fn spill(&self, stage: Stage, unit: usize) -> PathBuf {
        self.root
            .join("spill")
            .join(format!("{}-{unit:06}", stage.name()))
    }

    /// The meta file that marks unit `unit` of `stage` done.
    pub fn unit_done_marker(&self, stage: Stage, unit: usize) -> Option<PathBuf> {
        match stage {
            Stage::Scan => Some(self.scan_meta(unit)),
            Stage::Dedup => Some(self.dedup_meta(unit)),
            Stage::Tokenize => Some(self.tokens_meta(unit)),
            Stage::Plan | Stage::Finish => None,
        }
    }

    pub fn create_dirs(&self) -> Result<(), BuildError> {
        for dir in ["scan", "dedup", "tokens", "spill", "locks"] {
            let path = self.root.join(dir);
            fs::create_dir_all(&path).map_err(|e| BuildError::io(&path, e))?;
        }
        Ok(())
    }

    pub fn load_plan(&self) -> Result<Option<Plan>, BuildError> {
        let path = self.plan();
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Errors unless every unit of `stage` is done, naming the first missing ones.
    pub fn require_complete(
        &self,
        stage: Stage,
        plan: &Plan,
        next: Stage,
    ) -> Result<(), BuildError> {
        let units = stage_units(stage, plan);
        let missing: Vec<usize> = (0..units)
            .filter(|&u| {
                self.unit_done_marker(stage, u)
                    .is_some_and(|marker| !marker.exists())
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let what = match stage {
            Stage::Dedup => "partitions",
            _ => "input files",
        };
        let examples: Vec<String> = missing
            .iter()
            .take(3)
            .map(|&u| match stage {
                Stage::Dedup => format!("#{u}"),
                _ => plan
                    .files
                    .get(u)
                    .map(|f| format!("#{u} {}", f.display))
                    .unwrap_or_else(|| format!("#{u}")),
            })
            .collect();
        Err(BuildError::StageIncomplete {
            stage: next.name(),
            previous: stage.name(),
            detail: format!(
                "{} of {units} {what} are not done yet (first: {})",
                missing.len(),
                examples.join(", ")
            ),
        })
    }
}

/// The number of units of a stage.
pub fn stage_units(stage: Stage, plan: &Plan) -> usize {
    match stage {
        Stage::Scan | Stage::Tokenize => plan.files.len(),
        Stage::Dedup => plan.partitions,
        Stage::Plan | Stage::Finish => 1,
    }
}

/// The units worker `worker` of `workers` runs in `stage`, ascending. Files are balanced by
/// size (largest first onto the least loaded worker); partitions go round robin. The share
/// depends only on the plan, so every worker computes the same split.
pub fn worker_units(stage: Stage, plan: &Plan, worker: usize, workers: usize) -> Vec<usize> {
    let workers = workers.max(1);
    match stage {
        Stage::Scan | Stage::Tokenize => {
            let mut order: Vec<usize> = (0..plan.files.len()).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(plan.files[i].size), i));
            let mut load = vec![0u64; workers];
            let mut owner = vec![0usize; plan.files.len()];
            for i in order {
                let (least, _) = load
                    .iter()
                    .enumerate()
                    .min_by_key(|&(w, &l)| (l, w))
                    .unwrap_or((0, &0));
                owner[i] = least;
                load[least] += plan.files[i].size.max(1);
            }
            (0..plan.files.len())
                .filter(|&i| owner[i] == worker)
                .collect()
        }
        Stage::Dedup => (0..plan.partitions)
            .filter(|p| p % workers == worker)
            .collect(),
        Stage::Plan | Stage::Finish => {
            if worker == 0 {
                vec![0]
            } else {
                Vec::new()
            }
        }
    }
}

/// Advisory locks (released when dropped, or by the OS when the process dies).
#[derive(Debug)]
pub struct Locks {
    _files: Vec<File>,
}

impl Locks {
    /// The whole-build lock, exclusive: no other build or worker may use the directory.
    pub fn exclusive(work: &WorkDir) -> Result<Locks, BuildError> {
        let build = lock_file(&work.root.join("locks").join("build.lock"), true, work)?;
        Ok(Locks {
            _files: vec![build],
        })
    }

    /// A worker's locks: the build lock shared (other workers may run) and its own slot
    /// exclusive (the same worker must not run twice).
    pub fn worker(
        work: &WorkDir,
        stage: Stage,
        worker: usize,
        workers: usize,
    ) -> Result<Locks, BuildError> {
        let build = lock_file(&work.root.join("locks").join("build.lock"), false, work)?;
        let slot = work
            .root
            .join("locks")
            .join(format!("{}-{worker}-of-{workers}.lock", stage.name()));
        let own = lock_file(&slot, true, work)?;
        Ok(Locks {
            _files: vec![build, own],
        })
    }
}

fn lock_file(path: &Path, exclusive: bool, work: &WorkDir) -> Result<File, BuildError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| BuildError::io(parent, e))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| BuildError::io(path, e))?;
    let result = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match result {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(BuildError::Busy {
            dir: work.root.parent().unwrap_or(&work.root).to_path_buf(),
            lock: path.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(BuildError::io(path, e)),
    }
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BuildError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| BuildError::Work {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    atomic::write_file(path, &bytes)?;
    Ok(())
}

/// Input paths are recorded as text (the plan, the manifest's `inputs`, provenance), so a
/// file name that is not UTF-8 is refused up front, naming the file.
pub fn require_utf8(path: &Path) -> Result<(), BuildError> {
    if path.to_str().is_some() {
        return Ok(());
    }
    Err(BuildError::Work {
        path: path.to_path_buf(),
        message: "this input's path is not valid UTF-8; rename it (redpack records input paths \
                  as text)"
            .into(),
    })
}

/// Reads a JSON file of the work directory.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, BuildError> {
    let bytes = fs::read(path).map_err(|e| BuildError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| BuildError::Work {
        path: path.to_path_buf(),
        message: format!("unreadable ({e}); delete the work directory and rebuild"),
    })
}

/// Per-source counts keyed by source name.
pub type SourceCounts = BTreeMap<String, redpack_schemas::Counts>;

/// How far a build in an output directory has come (`build-corpus --status`).
#[derive(Debug, Clone, Serialize)]
pub struct BuildStatus {
    pub out: PathBuf,
    /// A finished corpus (its manifest) is there.
    pub complete: bool,
    /// Per stage: units done and units in all (`None` before the plan exists).
    pub stages: Vec<StageStatus>,
}

/// One line of [`BuildStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub stage: &'static str,
    pub done: usize,
    pub units: Option<usize>,
}

impl BuildStatus {
    /// Reads the work directory of `out` (nothing is changed).
    pub fn of(out: &Path) -> Result<Self, BuildError> {
        let work = WorkDir::new(out);
        let complete = out.join(redpack_schemas::MANIFEST_FILE).exists();
        let plan = work.load_plan()?;
        let stages = Stage::ALL
            .iter()
            .map(|&stage| {
                let units = plan.as_ref().map(|p| stage_units(stage, p));
                let done = match (stage, &plan) {
                    (Stage::Plan, Some(_)) => 1,
                    (Stage::Finish, _) => usize::from(complete),
                    (_, Some(p)) => (0..stage_units(stage, p))
                        .filter(|&u| {
                            work.unit_done_marker(stage, u)
                                .is_some_and(|marker| marker.exists())
                        })
                        .count(),
                    (_, None) => usize::from(complete),
                };
                StageStatus {
                    stage: stage.name(),
                    done,
                    units: units.or(complete.then_some(1)),
                }
            })
            .collect();
        Ok(BuildStatus {
            out: out.to_path_buf(),
            complete,
            stages,
        })
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "{}: {}\n",
            self.out.display(),
            if self.complete {
                "a finished corpus"
            } else {
                "not finished"
            }
        );
        for line in &self.stages {
            let units = line
                .units
                .map_or_else(|| "?".to_string(), |n| n.to_string());
            text.push_str(&format!(
                "  {:<9} {:>6} / {units} units done\n",
                line.stage, line.done
            ));
        }
        text
    }
}
