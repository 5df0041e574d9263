//! Run settings: a recipe (a `trainer/configs/*.toml` file, every field optional) overlaid with
//! command-line values, then resolved once, with the paper's defaults for the mode, into the
//! `TrainSettings` the loop reads. Nothing later looks at raw flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::health::{HealthPolicy, HealthRecipe};
use crate::config::{Arch, ModelConfig, ModelOverrides};
use crate::data::Mixture;
use crate::optim::AdafactorConfig;
use crate::schedule::Schedule;

/// Pretraining (packed corpus) or instruction tuning (examples corpus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Pretrain,
    Finetune,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pretrain => "pretrain",
            Mode::Finetune => "finetune",
        }
    }
}

/// Objective switches (the recipe's `[objective]` table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveRecipe {
    pub z_loss: Option<f32>,
    pub dropout: Option<f32>,
    pub bidirectional_prefix: Option<bool>,
    pub reset_at_doc_boundaries: Option<bool>,
}

/// Data switches (the recipe's `[data]` table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRecipe {
    /// Source weights for finetuning (`[data.mixture]`, see `crate::data::Mixture`); rows are
    /// drawn uniformly without it.
    pub mixture: Option<Mixture>,
}

/// Validation while training (the recipe's `[eval]` table; `--eval-data`, `--eval-every`,
/// `--eval-rows` on the command line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRecipe {
    /// A corpus of the training corpus's kind and tokenizer (a held-out split, `OUT/eval/` of
    /// `build-corpus --eval-docs`); validation is off without it.
    pub data: Option<PathBuf>,
    /// Evaluate after every N optimizer steps, and after the last (default: `checkpoint_every`).
    pub every: Option<u64>,
    /// Score only the first M rows of the eval corpus, in corpus order (default: all).
    pub rows: Option<u64>,
    /// Keep the checkpoint with the lowest pooled eval loss as `RUN/checkpoints/best`
    /// (default: on for finetuning, off for pretraining).
    pub keep_best: Option<bool>,
}

/// A recipe: what a config file or the command line says. Unset fields fall back to the next
/// layer and finally to the paper's defaults for the mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub arch: Option<Arch>,
    pub mode: Option<Mode>,
    /// Model size preset (`tiny`, `small`, `150m`, `1b`, `2b`, `4b`, `8b`).
    pub size: Option<String>,
    /// Dimensions set over the size preset (the recipe's `[model]` table).
    #[serde(default)]
    pub model: ModelOverrides,
    pub steps: Option<u64>,
    /// Sequences per optimizer step.
    pub batch: Option<u64>,
    /// Tokens per optimizer step, converted to sequences of the corpus's maximum row length
    /// (an alternative to `batch`).
    pub batch_tokens: Option<u64>,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accum: Option<u64>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<u64>,
    /// Keep only the newest N checkpoints (0 keeps all).
    pub keep_checkpoints: Option<u64>,
    /// Global gradient-norm clipping threshold (off when unset).
    pub grad_clip_norm: Option<f64>,
    #[serde(default)]
    pub objective: ObjectiveRecipe,
    pub optimizer: Option<AdafactorConfig>,
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub data: DataRecipe,
    #[serde(default)]
    pub eval: EvalRecipe,
    /// When a run counts as failed (the recipe's `[health]` table, see `run::health`).
    #[serde(default)]
    pub health: HealthRecipe,
}

impl Recipe {
    /// Parses a TOML recipe; `place` names it in errors.
    pub fn from_toml(text: &str, place: &str) -> Result<Recipe, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError(format!("{place}: {e}")))
    }

    /// `self` with every field that `top` sets replaced by `top`'s value.
    pub fn overlay(self, top: Recipe) -> Recipe {
        Recipe {
            arch: top.arch.or(self.arch),
            mode: top.mode.or(self.mode),
            size: top.size.or(self.size),
            model: self.model.overlay(top.model),
            steps: top.steps.or(self.steps),
            // A batch given in one unit on top replaces one given in the other below.
            batch: top.batch.or(if top.batch_tokens.is_some() {
                None
            } else {
                self.batch
            }),
            batch_tokens: top.batch_tokens.or(if top.batch.is_some() {
                None
            } else {
                self.batch_tokens
            }),
            accum: top.accum.or(self.accum),
            seed: top.seed.or(self.seed),
            checkpoint_every: top.checkpoint_every.or(self.checkpoint_every),
            keep_checkpoints: top.keep_checkpoints.or(self.keep_checkpoints),
            grad_clip_norm: top.grad_clip_norm.or(self.grad_clip_norm),
            objective: ObjectiveRecipe {
                z_loss: top.objective.z_loss.or(self.objective.z_loss),
                dropout: top.objective.dropout.or(self.objective.dropout),
                bidirectional_prefix: top
                    .objective
                    .bidirectional_prefix
                    .or(self.objective.bidirectional_prefix),
                reset_at_doc_boundaries: top
                    .objective
                    .reset_at_doc_boundaries
                    .or(self.objective.reset_at_doc_boundaries),
            },
            optimizer: top.optimizer.or(self.optimizer),
            schedule: top.schedule.or(self.schedule),
            data: DataRecipe {
                mixture: top.data.mixture.or(self.data.mixture),
            },
            eval: EvalRecipe {
                data: top.eval.data.or(self.eval.data),
                every: top.eval.every.or(self.eval.every),
                rows: top.eval.rows.or(self.eval.rows),
                keep_best: top.eval.keep_best.or(self.eval.keep_best),
            },
            health: self.health.overlay(top.health),
        }
    }
}

/// The batch size, in the unit it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    Sequences(u64),
    Tokens(u64),
}

/// Objective options as the loop applies them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub z_loss: f32,
    pub dropout: f32,
    pub bidirectional_prefix: bool,
    pub reset_at_doc_boundaries: bool,
}

/// Validation while training, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// The eval corpus.
    pub data: PathBuf,
    /// Evaluate at steps `every`, `2 every`, ... and at the last step.
    pub every: u64,
    /// Score the first `rows` rows only (corpus order); all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Keep the best checkpoint (lowest pooled eval loss) as `RUN/checkpoints/best`.
    pub keep_best: bool,
}

impl Validation {
    /// Whether validation runs after `step` of a run of `steps`.
    pub fn due(&self, step: u64, steps: u64) -> bool {
        step.is_multiple_of(self.every) || step == steps
    }
}

/// Everything a training run needs, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub arch: Arch,
    pub mode: Mode,
    pub size: String,
    /// Dimensions set over the size preset. With `--resume` or `--init` the model is the
    /// checkpoint's, and these must agree with it.
    #[serde(default)]
    pub model: ModelOverrides,
    pub data: PathBuf,
    pub out: PathBuf,
    pub steps: u64,
    pub batch: BatchSize,
    pub accum: u64,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Keep only the newest N checkpoints (0 keeps all).
    pub keep_checkpoints: u64,
    pub grad_clip_norm: Option<f64>,
    pub objective: Objective,
    pub optimizer: AdafactorConfig,
    pub schedule: Schedule,
    /// Start from this checkpoint's weights (fresh optimizer, step 0): finetuning.
    pub init: Option<PathBuf>,
    /// Continue the run in `out` from its latest checkpoint (a fresh start when it has none).
    pub resume: bool,
    /// Source weights (finetuning); rows are drawn uniformly when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture: Option<Mixture>,
    /// Validation while training; off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<Validation>,
    /// When the run stops as failed.
    #[serde(default)]
    pub health: HealthPolicy,
    /// Check every shard's token checksum (once, before training on it) and every checkpoint's
    /// (on load) against the manifest or `checkpoint.json` (`--no-verify` turns it off).
    #[serde(default = "verify_default")]
    pub verify: bool,
    /// A fresh run may replace a run already in `out` (`--overwrite`); refused otherwise.
    #[serde(default)]
    pub overwrite: bool,
    /// Whether the activations of a step live in host memory (the CPU backend), for the memory
    /// estimate `prepare` makes; a device backend's are checked against its own memory.
    #[serde(skip, default = "verify_default")]
    pub host_activations: bool,
}

fn verify_default() -> bool {
    true
}

/// The largest values the loop accepts, so that sizes computed from them cannot overflow.
pub const MAX_STEPS: u64 = 1 << 40;
pub const MAX_BATCH_SEQUENCES: u64 = 1 << 24;
pub const MAX_BATCH_TOKENS: u64 = 1 << 40;

/// A recipe that cannot be resolved.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// The paper's defaults for a mode (arXiv 2510.26622, "Pretraining" and "Instruction tuning").
pub fn mode_defaults(mode: Mode) -> Recipe {
    let (z_loss, dropout, schedule) = match mode {
        Mode::Pretrain => (
            1e-4,
            0.0,
            Schedule::WarmupCosine {
                warmup_steps: 2000,
                peak: 0.01,
                end: 0.001,
            },
        ),
        Mode::Finetune => (0.0, 0.05, Schedule::Constant { lr: 0.001 }),
    };
    Recipe {
        size: Some("tiny".to_string()),
        steps: Some(1000),
        batch: Some(8),
        accum: Some(1),
        seed: Some(0),
        checkpoint_every: Some(1000),
        keep_checkpoints: Some(0),
        objective: ObjectiveRecipe {
            z_loss: Some(z_loss),
            dropout: Some(dropout),
            bidirectional_prefix: Some(false),
            reset_at_doc_boundaries: Some(false),
        },
        optimizer: Some(AdafactorConfig::default()),
        schedule: Some(schedule),
        ..Recipe::default()
    }
}

impl TrainSettings {
    /// Resolves `recipe` (already overlaid with the command line) over the mode's defaults.
    pub fn resolve(
        recipe: Recipe,
        data: PathBuf,
        out: PathBuf,
        init: Option<PathBuf>,
        resume: bool,
    ) -> Result<TrainSettings, SettingsError> {
        let arch = recipe.arch.ok_or_else(|| {
            SettingsError("no architecture: pass --arch dec|red or set `arch` in the config".into())
        })?;
        let mode = recipe.mode.ok_or_else(|| {
            SettingsError(
                "no mode: pass --mode pretrain|finetune or set `mode` in the config".into(),
            )
        })?;
        let r = mode_defaults(mode).overlay(recipe);
        let missing = |what: &str| SettingsError(format!("internal: no default for {what}"));
        let batch = match (r.batch_tokens, r.batch) {
            (Some(tokens), _) => BatchSize::Tokens(tokens),
            (None, Some(rows)) => BatchSize::Sequences(rows),
            (None, None) => return Err(missing("batch")),
        };
        let objective = Objective {
            z_loss: r.objective.z_loss.ok_or_else(|| missing("z_loss"))?,
            dropout: r.objective.dropout.ok_or_else(|| missing("dropout"))?,
            bidirectional_prefix: r.objective.bidirectional_prefix.unwrap_or(false),
            reset_at_doc_boundaries: r.objective.reset_at_doc_boundaries.unwrap_or(false),
        };
        let eval = match r.eval.data {
            Some(dir) => Some(Validation {
                data: dir,
                every: r
                    .eval
                    .every
                    .or(r.checkpoint_every)
                    .ok_or_else(|| missing("checkpoint_every"))?,
                rows: r.eval.rows,
                keep_best: r.eval.keep_best.unwrap_or(mode == Mode::Finetune),
            }),
            None => {
                let set: Vec<&str> = [
                    r.eval.every.map(|_| "every"),
                    r.eval.rows.map(|_| "rows"),
                    r.eval.keep_best.map(|_| "keep_best"),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !set.is_empty() {
                    return Err(SettingsError(format!(
                        "eval {} given without eval data: pass --eval-data DIR or set `data` in the [eval] table",
                        set.join(", ")
                    )));
                }
                None
            }
        };
        let settings = TrainSettings {
            arch,
            mode,
            size: r.size.ok_or_else(|| missing("size"))?,
            model: r.model,
            data,
            out,
            steps: r.steps.ok_or_else(|| missing("steps"))?,
            batch,
            accum: r.accum.ok_or_else(|| missing("accum"))?,
            seed: r.seed.ok_or_else(|| missing("seed"))?,
            checkpoint_every: r
                .checkpoint_every
                .ok_or_else(|| missing("checkpoint_every"))?,
            keep_checkpoints: r.keep_checkpoints.unwrap_or(0),
            grad_clip_norm: r.grad_clip_norm,
            objective,
            optimizer: r.optimizer.ok_or_else(|| missing("optimizer"))?,
            schedule: r.schedule.ok_or_else(|| missing("schedule"))?,
            init,
            resume,
            mixture: r.data.mixture,
            eval,
            health: r.health.resolve(),
            verify: true,
            overwrite: false,
            host_activations: true,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The model a new run builds: the size preset for the tokenizer's `vocab_size`, with the
    /// overrides applied, validated.
    pub fn model_config(&self, vocab_size: usize) -> Result<ModelConfig, SettingsError> {
        let preset = ModelConfig::preset(self.arch, &self.size, vocab_size)
            .map_err(|e| SettingsError(e.to_string()))?;
        self.model.apply(&preset).map_err(|e| {
            SettingsError(format!(
                "model size {} with {}: {e}",
                self.size,
                self.model.describe().join(", ")
            ))
        })
    }

    /// Checks values that do not depend on the corpus.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError(m));
        // The shape, with the smallest vocabulary: `prepare` checks it again with the corpus's.
        self.model_config(2)?;
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return bad(format!(
                "steps must be in [1, {MAX_STEPS}], got {}",
                self.steps
            ));
        }
        match self.batch {
            BatchSize::Sequences(n) if !(1..=MAX_BATCH_SEQUENCES).contains(&n) => {
                return bad(format!(
                    "the batch (--batch) must be in [1, {MAX_BATCH_SEQUENCES}] sequences, got {n}"
                ))
            }
            BatchSize::Tokens(n) if !(1..=MAX_BATCH_TOKENS).contains(&n) => {
                return bad(format!(
                    "the batch (--batch-tokens) must be in [1, {MAX_BATCH_TOKENS}] tokens, got {n}"
                ))
            }
            _ => {}
        }
        if self.accum == 0 || self.accum > MAX_BATCH_SEQUENCES {
            return bad(format!(
                "accum must be in [1, {MAX_BATCH_SEQUENCES}], got {}",
                self.accum
            ));
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.objective.dropout) {
            return bad(format!(
                "dropout must be in [0, 1), got {}",
                self.objective.dropout
            ));
        }
        if !(self.objective.z_loss >= 0.0 && self.objective.z_loss.is_finite()) {
            return bad(format!(
                "z_loss must be >= 0, got {}",
                self.objective.z_loss
            ));
        }
        if self.objective.bidirectional_prefix && self.arch == Arch::Red {
            return bad("bidirectional_prefix is a DecLLM option (RedLLM's encoder is bidirectional already)".into());
        }
        self.health.validate().map_err(SettingsError)?;
        if let Some(clip) = self.grad_clip_norm {
            if !clip.is_finite() || clip <= 0.0 {
                return bad(format!("grad_clip_norm must be > 0, got {clip}"));
            }
        }
        if let Some(mixture) = &self.mixture {
            if self.mode != Mode::Finetune {
                return bad("[data.mixture] weighs the sources of a finetuning corpus; --mode pretrain reads packed rows uniformly".into());
            }
            mixture.validate().map_err(SettingsError)?;
        }
        if let Some(eval) = &self.eval {
            if eval.every == 0 {
                return bad("eval every (--eval-every) must be at least 1".into());
            }
            if eval.rows == Some(0) {
                return bad("eval rows (--eval-rows) must be at least 1".into());
            }
        }
        if self.init.is_some() && self.resume {
            return bad("--init starts a new run from pretrained weights; --resume continues an existing run: pass one".into());
        }
        self.optimizer
            .validate()
            .map_err(|e| SettingsError(e.to_string()))?;
        self.schedule
            .validate()
            .map_err(|e| SettingsError(e.to_string()))
    }

    /// Rows per optimizer step and per micro-batch, given the corpus's maximum row length.
    pub fn rows(&self, max_row_len: usize) -> Result<(u64, usize), SettingsError> {
        let total = match self.batch {
            BatchSize::Sequences(n) => n,
            BatchSize::Tokens(t) => (t / max_row_len.max(1) as u64).max(1),
        };
        if total % self.accum != 0 {
            return Err(SettingsError(format!(
                "a batch of {total} sequences does not split into {} equal micro-batches (--accum)",
                self.accum
            )));
        }
        Ok((total, (total / self.accum) as usize))
    }
}
