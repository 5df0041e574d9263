//! The study file: a TOML document declaring the corpora, the grid of runs, the recipes they
//! start from and the evaluation settings. Unknown fields are errors, and every error names the
//! file and the field. Relative paths are resolved against the study file's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StudyError;
use crate::config::ModelOverrides;

/// A whole study file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// A short name, shown in the report's title.
    pub name: String,
    /// What the study is for, shown under the title.
    #[serde(default)]
    pub description: String,
    /// `cpu`, `cuda` or `auto` (default `auto`).
    #[serde(default = "default_device")]
    pub device: String,
    /// CPU threads (default: every core).
    #[serde(default)]
    pub threads: Option<usize>,
    pub corpus: CorpusSpec,
    pub pretrain: PretrainSpec,
    /// The sizes, in increasing order of parameters.
    #[serde(rename = "sizes")]
    pub sizes: Vec<SizeSpec>,
    #[serde(default)]
    pub finetune: Option<FinetuneSpec>,
    #[serde(default)]
    pub eval: EvalSpec,
    /// The paper's downstream tasks on every scaling and finetuning run (none by default).
    #[serde(default)]
    pub tasks: Option<TasksSpec>,
    /// Slurm settings for `--emit slurm`.
    #[serde(default)]
    pub slurm: SlurmSpec,
}

fn default_device() -> String {
    "auto".to_string()
}

/// Where the corpora come from: built beforehand (`pretrain`, `pretrain_eval`, ...) or built by the
/// study into `OUT/corpus` (`builtin` or `[corpus.build]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusSpec {
    /// Build the built-in default corpus (generated text) into `OUT/corpus`.
    #[serde(default)]
    pub builtin: bool,
    /// Build a packed corpus from real inputs into `OUT/corpus`.
    #[serde(default)]
    pub build: Option<BuildSpec>,
    /// A packed corpus built beforehand, and its held-out split.
    pub pretrain: Option<PathBuf>,
    pub pretrain_eval: Option<PathBuf>,
    /// An examples corpus built beforehand, and its held-out split.
    pub finetune: Option<PathBuf>,
    pub finetune_eval: Option<PathBuf>,
    /// Documents held out for evaluation when the study builds the corpus.
    #[serde(default)]
    pub eval_docs: Option<u64>,
}

/// A packed corpus the study builds from inputs (as `redpack build-corpus` would).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Input files or folders (RedPajama layout).
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// A data manifest and the folder its paths are relative to (instead of `inputs`).
    pub data_manifest: Option<PathBuf>,
    pub data_root: Option<PathBuf>,
    /// A `tokenizer.json`; without it one of `vocab_size` tokens is trained on the inputs.
    pub tokenizer: Option<PathBuf>,
    pub vocab_size: Option<usize>,
    pub seq_len: Option<u32>,
    /// Rows of the held-out split (default 8 x `seq_len`).
    pub eval_seq_len: Option<u32>,
}

/// The pretraining grid: every size of `[[sizes]]` for every architecture of `archs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSpec {
    /// `dec` and/or `red`.
    pub archs: Vec<String>,
    /// The recipe each architecture starts from (a `trainer/configs` file).
    pub recipes: BTreeMap<String, PathBuf>,
    /// Token budget of each size's run (`batch x seq_len` tokens a step), unless the size sets
    /// its own.
    pub tokens: Option<u64>,
    /// Training-FLOPs budgets (`6 N D` as the paper counts): every size also runs once per budget,
    /// the isoFLOP grid.
    #[serde(default)]
    pub isoflops: Vec<f64>,
    /// Sequences per step (over the recipe's).
    pub batch: Option<u64>,
    /// Warmup as a fraction of each run's steps (over the recipe's warmup steps).
    pub warmup_fraction: Option<f64>,
    pub checkpoint_every: Option<u64>,
    pub seed: Option<u64>,
}

/// One model size: a preset with dimensions over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeSpec {
    pub name: String,
    /// A size preset (`tiny`, `small`, `150m`, `1b`, ...), default `tiny`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Dimensions over the preset (`model = { d_model = 64, layers = 2 }`, the names of a
    /// recipe's `[model]` table). `layers` is DecLLM's depth and RedLLM's per stack;
    /// `encoder_layers` and `decoder_layers` set RedLLM's stacks and are ignored for DecLLM.
    #[serde(default)]
    pub model: ModelOverrides,
    /// This size's token budget (over `[pretrain] tokens`).
    pub tokens: Option<u64>,
    /// This size's steps (over the token budget).
    pub steps: Option<u64>,
    /// Micro-batches per step for this size, pretraining and finetuning (over the recipes').
    pub accum: Option<u64>,
}

fn default_preset() -> String {
    "tiny".to_string()
}

/// Finetuning runs from the pretrained checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSpec {
    /// `dec`, `red` and/or `dec-biattn` (DecLLM + BiAttn, from the DecLLM checkpoint).
    pub archs: Vec<String>,
    /// The sizes finetuned (default: all).
    #[serde(default)]
    pub sizes: Vec<String>,
    /// The recipe per finetuning architecture.
    pub recipes: BTreeMap<String, PathBuf>,
    pub steps: Option<u64>,
    pub batch: Option<u64>,
    pub checkpoint_every: Option<u64>,
    /// Eval rows scored during finetuning (default: all).
    pub eval_rows: Option<u64>,
}

/// Evaluation of each final pretrained checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Context lengths (the training length is always included).
    #[serde(default)]
    pub lengths: Vec<usize>,
    /// Prefix lengths (the training split is always included).
    #[serde(default)]
    pub prefix_lens: Vec<usize>,
    /// Eval rows per (length, prefix) pair (default: all).
    pub rows: Option<u64>,
    /// Local attention window.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Rows of the attention analysis.
    #[serde(default = "default_locality_rows")]
    pub locality_rows: u64,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec {
            lengths: Vec::new(),
            prefix_lens: Vec::new(),
            rows: None,
            window: default_window(),
            locality_rows: default_locality_rows(),
        }
    }
}

fn default_window() -> usize {
    5
}

fn default_locality_rows() -> u64 {
    4
}

/// The downstream tasks (`redpack eval-tasks`) each scaling run's final checkpoint and each
/// finetuning run's best checkpoint is scored on, once per shots setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSpec {
    /// The task files' folder (the layout of `data-manifests/eval-tasks.toml`).
    pub data_root: PathBuf,
    /// Task names, as `eval-tasks --tasks` takes them (default `all`).
    #[serde(default = "default_tasks")]
    pub tasks: String,
    /// Shots settings, each `paper` (the paper's per-task counts) or a number (default `0` and
    /// `paper`: zero- and few-shot, as the paper compares them).
    #[serde(default = "default_shots")]
    pub shots: Vec<String>,
    /// The first N examples of each task only.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Seeds the demonstration draws (default 1234, as `eval-tasks`).
    #[serde(default = "default_task_seed")]
    pub seed: u64,
    /// Examples per call to the model.
    #[serde(default = "default_task_batch")]
    pub batch: usize,
}

fn default_tasks() -> String {
    "all".to_string()
}

fn default_shots() -> Vec<String> {
    vec!["0".to_string(), "paper".to_string()]
}

fn default_task_seed() -> u64 {
    1234
}

fn default_task_batch() -> usize {
    8
}

impl TasksSpec {
    /// The shots settings, parsed.
    pub fn shots(&self) -> Result<Vec<crate::tasks::Shots>, String> {
        self.shots
            .iter()
            .map(|text| match text.as_str() {
                "paper" => Ok(crate::tasks::Shots::Paper),
                other => other
                    .parse::<usize>()
                    .map(crate::tasks::Shots::Fixed)
                    .map_err(|_| format!("{other:?} is not `paper` or a number")),
            })
            .collect()
    }
}

/// Job settings for `--emit slurm`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    pub partition: Option<String>,
    /// `--time` per task (default `48:00:00`).
    pub time: Option<String>,
    /// `--gres` per task (default `gpu:1`).
    pub gres: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// The `redpack` binary the tasks run (default `redpack`).
    pub binary: Option<String>,
}

/// A parsed study file with the folder its relative paths are resolved against.
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    pub path: PathBuf,
    pub base: PathBuf,
    pub file: StudyFile,
}

impl Study {
    /// Reads and checks a study file.
    pub fn load(path: &Path) -> Result<Study, StudyError> {
        let text = std::fs::read_to_string(path).map_err(|e| StudyError::Io {
            path: path.to_path_buf(),
            message: format!("cannot read the study file: {e}"),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Study::parse(&text, path, &base)
    }

    /// Parses study text; `path` names it in errors, `base` resolves relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Study, StudyError> {
        let file: StudyFile = toml::from_str(text).map_err(|e| StudyError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let study = Study {
            path: path.to_path_buf(),
            base: base.to_path_buf(),
            file,
        };
        study.validate()?;
        Ok(study)
    }

    /// A path of the study file, resolved against its folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn invalid(&self, message: String) -> StudyError {
        StudyError::Invalid {
            path: self.path.clone(),
            message,
        }
    }

    fn validate(&self) -> Result<(), StudyError> {
        let f = &self.file;
        if !["cpu", "cuda", "auto"].contains(&f.device.as_str()) {
            return Err(self.invalid(format!(
                "device: {:?} is not one of cpu, cuda, auto",
                f.device
            )));
        }
        let c = &f.corpus;
        let given = [c.builtin, c.build.is_some(), c.pretrain.is_some()]
            .iter()
            .filter(|&&b| b)
            .count();
        if given != 1 {
            return Err(self.invalid(
                "corpus: give exactly one of `builtin = true`, a [corpus.build] table, or `pretrain` (a corpus built beforehand)".into(),
            ));
        }
        if c.pretrain.is_some() && c.pretrain_eval.is_none() {
            return Err(self.invalid(
                "corpus.pretrain_eval: the held-out split of `pretrain` is needed for evaluation"
                    .into(),
            ));
        }
        if let Some(b) = &c.build {
            if b.inputs.is_empty() == b.data_manifest.is_none() {
                return Err(self.invalid(
                    "corpus.build: give `inputs` or `data_manifest` (with `data_root`)".into(),
                ));
            }
            if b.tokenizer.is_none() == b.vocab_size.is_none() {
                return Err(self.invalid(
                    "corpus.build: give `tokenizer` (a tokenizer.json) or `vocab_size` (train one on the inputs)".into(),
                ));
            }
        }
        if (c.builtin || c.build.is_some()) && c.eval_docs.unwrap_or(0) == 0 {
            return Err(self.invalid(
                "corpus.eval_docs: a corpus the study builds needs held-out documents (at least 1)"
                    .into(),
            ));
        }
        let p = &f.pretrain;
        if p.archs.is_empty() {
            return Err(self.invalid("pretrain.archs: name at least one of dec, red".into()));
        }
        for arch in &p.archs {
            if arch != "dec" && arch != "red" {
                return Err(self.invalid(format!("pretrain.archs: {arch:?} is not dec or red")));
            }
            if !p.recipes.contains_key(arch) {
                return Err(self.invalid(format!(
                    "pretrain.recipes.{arch}: no recipe for this architecture"
                )));
            }
        }
        if let Some(w) = p.warmup_fraction {
            if !(0.0..1.0).contains(&w) {
                return Err(self.invalid(format!("pretrain.warmup_fraction: {w} is not in [0, 1)")));
            }
        }
        if let Some(b) = p.isoflops.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
            return Err(self.invalid(format!(
                "pretrain.isoflops: {b} is not a positive number of FLOPs"
            )));
        }
        if f.sizes.is_empty() {
            return Err(self.invalid("sizes: declare at least one [[sizes]] table".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in f.sizes.iter().enumerate() {
            let place = format!("sizes[{i}] ({})", s.name);
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')
            {
                return Err(self.invalid(format!(
                    "{place}.name: use letters, digits, `_` or `.` (it names run folders)"
                )));
            }
            if !seen.insert(s.name.clone()) {
                return Err(self.invalid(format!("{place}.name: declared twice")));
            }
            if s.steps.is_none() && s.tokens.is_none() && p.tokens.is_none() {
                return Err(self.invalid(format!(
                    "{place}: no budget: set `steps` or `tokens` here, or `tokens` in [pretrain]"
                )));
            }
            if s.steps == Some(0) || s.tokens == Some(0) {
                return Err(self.invalid(format!("{place}: a budget of 0")));
            }
        }
        if let Some(ft) = &f.finetune {
            for arch in &ft.archs {
                let from = match arch.as_str() {
                    "dec" | "dec-biattn" => "dec",
                    "red" => "red",
                    other => {
                        return Err(self.invalid(format!(
                            "finetune.archs: {other:?} is not dec, red or dec-biattn"
                        )))
                    }
                };
                if !p.archs.iter().any(|a| a == from) {
                    return Err(self.invalid(format!(
                        "finetune.archs: {arch} starts from a `{from}` pretraining run, and pretrain.archs has none"
                    )));
                }
                if !ft.recipes.contains_key(arch) {
                    return Err(self.invalid(format!(
                        "finetune.recipes.{arch}: no recipe for this architecture"
                    )));
                }
            }
            for name in &ft.sizes {
                if !f.sizes.iter().any(|s| &s.name == name) {
                    return Err(
                        self.invalid(format!("finetune.sizes: {name:?} is not a declared size"))
                    );
                }
            }
            if c.pretrain.is_some() && (c.finetune.is_none() || c.finetune_eval.is_none()) {
                return Err(self.invalid(
                    "corpus.finetune, corpus.finetune_eval: finetuning needs an examples corpus and its held-out split".into(),
                ));
            }
            if c.build.is_some() {
                return Err(self.invalid(
                    "finetune: a [corpus.build] corpus is packed text only; give corpus.finetune and corpus.finetune_eval built beforehand, or use the builtin corpus".into(),
                ));
            }
        }
        if f.eval.window == 0 {
            return Err(self.invalid("eval.window: must be at least 1".into()));
        }
        if let Some(t) = &f.tasks {
            crate::tasks::TaskId::parse_list(&t.tasks)
                .map_err(|e| self.invalid(format!("tasks.tasks: {e}")))?;
            let shots = t
                .shots()
                .map_err(|e| self.invalid(format!("tasks.shots: {e}")))?;
            if shots.is_empty() {
                return Err(self.invalid("tasks.shots: give at least one setting".into()));
            }
            if t.limit == Some(0) || t.batch == 0 {
                return Err(self.invalid("tasks.limit, tasks.batch: must be at least 1".into()));
            }
        }
        Ok(())
    }
}
