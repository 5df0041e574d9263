//! Everything a run checks and loads before its first step: the corpus kind against the mode,
//! the tokenizer and vocabulary against any checkpoint, the run directory against `--resume`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redpack_schemas::{Kind, Layout};

use super::settings::{Mode, TrainSettings};
use super::tokenizer::{check_tokenizer, check_vocab};
use super::validate::Validator;
use super::TrainError;
use crate::batch::StepOptions;
use crate::checkpoint::{self, BestEval, CheckpointHealth, TokenizerStamp};
use crate::config::{Arch, ModelConfig};
use crate::data::{
    open_corpus, CheckedCorpus, CorpusSummary, Cursor, ExampleSource, LoaderOptions, MixturePlan,
    Order,
};
use crate::optim::Adafactor;
use crate::params::ParamStore;

/// A run ready to start: model, optimizer and data position loaded, every check passed.
pub struct TrainRun {
    pub settings: TrainSettings,
    pub corpus: CorpusSummary,
    pub model: ModelConfig,
    pub params: ParamStore,
    pub optimizer: Adafactor,
    /// Updates already done (0 for a new run).
    pub start_step: u64,
    pub cursor: Cursor,
    pub tokens_seen: u64,
    pub flops_seen: f64,
    /// Training FLOPs so far in the paper's convention (`flops::paper_training_flops`).
    pub paper_flops_seen: f64,
    /// The source mixture resolved against the corpus, when the settings give one.
    pub mixture: Option<Arc<MixturePlan>>,
    /// Sequences per optimizer step and per micro-batch.
    pub rows_per_step: u64,
    pub rows_per_micro_batch: usize,
    /// Set when continuing from this checkpoint.
    pub resumed_from: Option<PathBuf>,
    /// Set when the weights came from `--init`.
    pub initialized_from: Option<PathBuf>,
    /// The checked eval corpus, with validation on.
    pub validator: Option<Validator>,
    /// The best evaluation so far (from the resumed checkpoint, then this run's).
    pub best: Option<BestEval>,
    pub(super) tokenizer: TokenizerStamp,
    /// The health of the last step (the resumed checkpoint's, then this run's).
    pub(super) health: Option<CheckpointHealth>,
    pub(super) loss_on_prefix: bool,
    pub(super) loader_options: LoaderOptions,
    pub(super) source: Option<Box<dyn ExampleSource>>,
    /// This process's rank and the world size (`run_parallel`).
    pub(super) parallel: crate::dist::Parallel,
}

impl std::fmt::Debug for TrainRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainRun")
            .field("model", &self.model)
            .field("start_step", &self.start_step)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

fn empty_store() -> ParamStore {
    ParamStore {
        names: Vec::new(),
        tensors: Vec::new(),
    }
}

fn incompatible(path: &Path, what: impl Into<String>) -> TrainError {
    TrainError::Incompatible {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn rows_text(rows: Option<u64>) -> String {
    rows.map_or_else(|| "all".to_string(), |n| n.to_string())
}

/// Refuses a corpus whose rows leave nothing for the architecture to score.
fn check_layout(settings: &TrainSettings, summary: &CorpusSummary) -> Result<(), TrainError> {
    let problem = match summary.layout {
        Layout::Packed { seq_len, .. } if seq_len < 2 => Some(format!(
            "rows of {seq_len} token(s): at least 2 are needed to score one (rebuild with a larger --seq-len)"
        )),
        Layout::Packed {
            seq_len,
            prefix_len,
        } if settings.arch == Arch::Red && (prefix_len == 0 || prefix_len >= seq_len) => {
            Some(format!(
                "rows of {seq_len} tokens split at {prefix_len}: RedLLM needs an encoder input and a target on both sides of the split (rebuild with 0 < --prefix-len < --seq-len)"
            ))
        }
        _ => None,
    };
    match problem {
        Some(what) => Err(incompatible(&settings.data, what)),
        None => Ok(()),
    }
}

/// Corpus kind each mode trains on.
fn required_kind(mode: Mode) -> Kind {
    match mode {
        Mode::Pretrain => Kind::Packed,
        Mode::Finetune => Kind::Examples,
    }
}

impl TrainRun {
    /// Opens the corpus and builds, loads or resumes the model; touches nothing on disk except
    /// creating the run directory.
    pub fn prepare(settings: TrainSettings) -> Result<TrainRun, TrainError> {
        settings.validate()?;
        let (corpus, summary) = open_corpus(&settings.data)?;
        let corpus = CheckedCorpus::new(corpus, settings.verify);
        let want = required_kind(settings.mode);
        if summary.kind != want {
            return Err(incompatible(
                &settings.data,
                format!(
                    "the corpus is `{}`, but --mode {} trains on `{}` corpora (pretrain: packed RedPajama sequences; finetune: FLAN input/target examples)",
                    summary.kind.name(),
                    settings.mode.name(),
                    want.name()
                ),
            ));
        }
        check_layout(&settings, &summary)?;
        let (rows_per_step, rows_per_micro_batch) = settings.rows(summary.max_row_len())?;
        let tokenizer = TokenizerStamp {
            sha256: summary.tokenizer.sha256.clone(),
            vocab_size: summary.tokenizer.vocab_size,
            eod_id: summary.tokenizer.eod_id,
            pad_id: summary.tokenizer.pad_id,
        };
        // A run to protect: one with a checkpoint (a run stopped before its first checkpoint
        // left only its metrics, which a new run starts afresh).
        let existing = checkpoint::has_checkpoints(&settings.out)?;
        // Only --resume continues a run; a fresh run (refused below unless --overwrite) never
        // reads the old one.
        let latest = match settings.resume {
            true => checkpoint::latest(&settings.out)?,
            false => None,
        };
        if settings.resume && latest.is_none() {
            return Err(incompatible(
                &settings.out,
                if existing {
                    "--resume: every checkpoint of the run is marked unhealthy, so there is none to continue from; start again with --overwrite"
                } else {
                    "--resume: there is no run here to continue (no checkpoint in checkpoints/); drop --resume to start one"
                },
            ));
        }
        if existing && !settings.resume && !settings.overwrite {
            return Err(incompatible(
                &settings.out,
                "already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another --out",
            ));
        }
        let model = settings.model_config(summary.tokenizer.vocab_size as usize)?;
        if latest.is_none() && settings.init.is_none() {
            // A new model is allocated below: refuse one that cannot fit first.
            super::memory::check_host(
                &model,
                &settings,
                rows_per_micro_batch,
                summary.max_row_len(),
            )?;
        }
        // Every source must have a weight before the first step.
        let mixture = match &settings.mixture {
            Some(m) => Some(Arc::new(MixturePlan::build(&corpus, m)?)),
            None => None,
        };
        let mut run = TrainRun {
            model,
            params: empty_store(),
            optimizer: Adafactor::new(settings.optimizer.clone(), &empty_store())?,
            start_step: 0,
            cursor: Cursor::default(),
            tokens_seen: 0,
            flops_seen: 0.0,
            paper_flops_seen: 0.0,
            mixture: mixture.clone(),
            rows_per_step,
            rows_per_micro_batch,
            resumed_from: None,
            initialized_from: None,
            validator: None,
            best: None,
            tokenizer,
            health: None,
            loss_on_prefix: settings.arch == Arch::Dec && settings.mode == Mode::Pretrain,
            loader_options: LoaderOptions {
                require_split: settings.arch == Arch::Red,
                // Padding is told apart from text only when it has its own id.
                trim_trailing_padding: summary.kind == Kind::Packed
                    && summary.tokenizer.pad_id != summary.tokenizer.eod_id,
                mixture,
                ..LoaderOptions::new(
                    rows_per_micro_batch,
                    Order::Shuffled {
                        seed: settings.seed,
                    },
                    summary.tokenizer.pad_id,
                )
            },
            source: Some(Box::new(corpus)),
            parallel: crate::dist::Parallel::SINGLE,
            corpus: summary,
            settings,
        };
        match (&latest, &run.settings.init) {
            (Some(dir), _) => run.resume_from(dir)?,
            (None, Some(init)) => run.init_from(&init.clone())?,
            (None, None) => {
                run.params = ParamStore::init(&run.model, run.settings.seed);
                run.optimizer = Adafactor::new(run.settings.optimizer.clone(), &run.params)?;
            }
        }
        if latest.is_some() || run.settings.init.is_some() {
            super::memory::check_host_activations(
                &run.model,
                &run.settings,
                run.rows_per_micro_batch,
                run.corpus.max_row_len(),
            )?;
        }
        check_vocab(&run.settings.data, &run.model, &run.corpus)?;
        if let Some(eval) = &run.settings.eval {
            let objective = StepOptions {
                bidirectional_prefix: run.settings.objective.bidirectional_prefix,
                reset_at_doc_boundaries: run.settings.objective.reset_at_doc_boundaries,
                loss_on_prefix: run.loss_on_prefix,
                ..StepOptions::default()
            };
            run.validator = Some(Validator::prepare(
                eval,
                &run.model,
                &run.tokenizer,
                run.corpus.kind,
                &objective,
                run.rows_per_micro_batch,
            )?);
            if let Some(v) = run.validator.as_mut() {
                v.verify = run.settings.verify;
            }
        }
        if existing && run.settings.overwrite && !run.settings.resume {
            run.clear_previous_run()?;
        }
        std::fs::create_dir_all(&run.settings.out).map_err(|source| {
            crate::checkpoint::CheckpointError::Io {
                path: run.settings.out.clone(),
                source,
            }
        })?;
        Ok(run)
    }

    /// `--overwrite`: removes the previous run's checkpoints and metrics, once every check of
    /// the new run has passed.
    fn clear_previous_run(&self) -> Result<(), TrainError> {
        let out = &self.settings.out;
        for path in [
            out.join(checkpoint::CHECKPOINTS_DIR),
            out.join(crate::metrics::METRICS_FILE),
        ] {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else if path.exists() {
                std::fs::remove_file(&path)
            } else {
                Ok(())
            };
            removed.map_err(|source| checkpoint::CheckpointError::Io { path, source })?;
        }
        Ok(())
    }

    fn resume_from(&mut self, dir: &Path) -> Result<(), TrainError> {
        let ckpt = checkpoint::load_checked(dir, true, self.settings.verify)?;
        let meta = &ckpt.meta;
        if let Some(was) = &meta.corpus_sha256 {
            if *was != self.corpus.manifest_sha256 {
                return Err(incompatible(
                    dir,
                    format!(
                        "the run was trained on a corpus whose manifest.json has sha256 {was}; {} has {}: resuming on other data would not continue the same run",
                        self.settings.data.display(),
                        self.corpus.manifest_sha256
                    ),
                ));
            }
        }
        if meta.model.arch != self.settings.arch {
            return Err(incompatible(
                dir,
                format!(
                    "holds a {} model, the run asks for {}",
                    meta.model.arch.name(),
                    self.settings.arch.name()
                ),
            ));
        }
        check_tokenizer(dir, &meta.model, &meta.tokenizer, &self.corpus)?;
        self.check_overrides(dir, &meta.model)?;
        // The data order depends on these; a resume with other values would not continue the run.
        let was = &meta.settings;
        let now = serde_json::to_value(&self.settings).unwrap_or_default();
        for key in ["mode", "seed", "batch", "accum", "mixture"] {
            if was.get(key) != now.get(key) {
                return Err(incompatible(
                    dir,
                    format!(
                        "the run was started with {key} = {}, now {}: resuming would not continue the same run",
                        was.get(key).map(|v| v.to_string()).unwrap_or_default(),
                        now.get(key).map(|v| v.to_string()).unwrap_or_default()
                    ),
                ));
            }
        }
        self.optimizer = Adafactor::from_state(
            self.settings.optimizer.clone(),
            &ckpt.params,
            meta.step,
            |name| ckpt.optimizer_state.get(name).cloned(),
        )
        .map_err(|e| incompatible(dir, e.to_string()))?;
        self.model = meta.model.clone();
        self.start_step = meta.step;
        self.cursor = meta.cursor;
        self.tokens_seen = meta.tokens_seen;
        self.flops_seen = meta.flops_seen;
        self.paper_flops_seen = meta.paper_flops_seen;
        if let (Some(best), Some(eval)) = (&meta.best, &self.settings.eval) {
            // The best so far is a minimum over one eval set; another would not compare.
            if (&best.data, best.rows) != (&eval.data, eval.rows) {
                return Err(incompatible(
                    dir,
                    format!(
                        "the run chose its best checkpoint on eval data {} ({} rows), now {} ({} rows): pass the same --eval-data and --eval-rows to continue it",
                        best.data.display(),
                        rows_text(best.rows),
                        eval.data.display(),
                        rows_text(eval.rows)
                    ),
                ));
            }
        }
        self.best = meta.best.clone();
        self.health = meta.health.clone();
        self.params = ckpt.params;
        self.resumed_from = Some(dir.to_path_buf());
        Ok(())
    }

    /// With `--resume` or `--init` the model is the checkpoint's: a dimension the recipe or the
    /// command line sets must be the checkpoint's, or the run would not be the one asked for.
    fn check_overrides(&self, dir: &Path, model: &ModelConfig) -> Result<(), TrainError> {
        let overrides = &self.settings.model;
        if overrides.is_empty() {
            return Ok(());
        }
        let asked = overrides.apply(model).map_err(|e| {
            incompatible(
                dir,
                format!(
                    "the model dimensions asked for do not apply to the checkpoint's model: {e}"
                ),
            )
        })?;
        let differences: Vec<String> = model
            .differences(&asked)
            .into_iter()
            .map(|(name, has, wants)| {
                format!("{name} = {has} in the checkpoint, {wants} asked for")
            })
            .collect();
        if differences.is_empty() {
            return Ok(());
        }
        Err(incompatible(
            dir,
            format!(
                "the checkpoint's model does not match the dimensions asked for ({}); with --resume or --init the model comes from the checkpoint: drop the override or start a new run",
                differences.join("; ")
            ),
        ))
    }

    fn init_from(&mut self, path: &Path) -> Result<(), TrainError> {
        let dir = checkpoint::resolve(path)?;
        let ckpt = checkpoint::load_checked(&dir, false, self.settings.verify)?;
        if ckpt.meta.model.arch != self.settings.arch {
            return Err(incompatible(
                &dir,
                format!(
                    "holds a {} model, the run asks for {}",
                    ckpt.meta.model.arch.name(),
                    self.settings.arch.name()
                ),
            ));
        }
        check_tokenizer(&dir, &ckpt.meta.model, &ckpt.meta.tokenizer, &self.corpus)?;
        self.check_overrides(&dir, &ckpt.meta.model)?;
        self.model = ckpt.meta.model.clone();
        self.optimizer = Adafactor::new(self.settings.optimizer.clone(), &ckpt.params)?;
        self.params = ckpt.params;
        self.initialized_from = Some(dir);
        Ok(())
    }
}
