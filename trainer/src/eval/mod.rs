//! Evaluation: mean loss and perplexity of a checkpoint on a corpus, overall and per source.
//!
//! Which tokens are scored:
//! - with a fixed prefix `k` (`--prefix-len k`), positions `>= k` given everything before, for
//!   both architectures (RedLLM's encoder reads `[0, k)`; DecLLM reads the same tokens causally),
//!   so the two numbers compare; rows of at most `k` tokens are skipped;
//! - otherwise each corpus's own objective: a packed corpus is scored as it is trained (DecLLM:
//!   every next token; RedLLM: the targets after the shard's split), an examples corpus on its
//!   targets.
//!
//! The z-loss and dropout are off: the loss is the plain cross-entropy. Attention is the
//! checkpoint's (`AttentionMode`, from the run settings it records): a DecLLM trained with a
//! bidirectional prefix ("DecLLM + BiAttn") is scored with it, and attention resets at document
//! boundaries when the run reset it.
//!
//! `grid` evaluates every (context length, prefix length) pair of a grid, per source, with the
//! mean log-probability by position.

pub mod grid;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redpack_schemas::Kind;
use serde::Serialize;

use crate::backend::{Backend, BackendError};
use crate::batch::StepOptions;
use crate::checkpoint::{self, CheckpointError, CheckpointMeta};
use crate::config::{Arch, ModelConfig};
use crate::data::{
    open_corpus, CheckedCorpus, CorpusSummary, Cursor, DataError, Loader, LoaderOptions, Order,
};
use crate::flops::{forward_flops, inference_flops, StackTokens};
use crate::params::ParamStore;
use crate::run::check_tokenizer;

/// Errors evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Incompatible(String),
    #[error("batch {batch}: {source}")]
    Backend {
        batch: u64,
        #[source]
        source: BackendError,
    },
    #[error("{}: nothing to score (no example is longer than the prefix)", .0.display())]
    NothingScored(PathBuf),
    /// A grid evaluation read no row as long as its shortest length.
    #[error("{}: nothing to score (no row is at least {length} tokens long)", .dir.display())]
    NoRowLongEnough { dir: PathBuf, length: usize },
}

/// How to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalOptions {
    /// Score positions `>= k` of every row, whatever the architecture.
    pub prefix_len: Option<usize>,
    /// Rows per forward pass.
    pub batch_rows: usize,
    /// Stop after this many examples (corpus order).
    pub max_examples: Option<u64>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            prefix_len: None,
            batch_rows: 8,
            max_examples: None,
        }
    }
}

/// Loss of one source (or of everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    /// Mean cross-entropy per scored token (natural log).
    pub loss: f64,
    pub ppl: f64,
    pub tokens: u64,
    pub examples: u64,
}

/// The whole report; serialized as `{"loss", "ppl", "tokens", "examples", "sources": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    #[serde(flatten)]
    pub overall: Score,
    pub sources: BTreeMap<String, Score>,
    /// The fixed prefix length scoring started at, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<usize>,
    /// Mean inference FLOPs per example in the paper's convention: `2 · N` per token per stack,
    /// the cross-attention K, V once per encoder token (`flops::inference_flops`).
    pub inference_flops_per_example: f64,
    /// Mean forward FLOPs per example as the backends compute them (`flops::forward_flops`:
    /// logits and attention included).
    pub forward_flops_per_example: f64,
}

/// The attention a checkpoint was trained with, read from the run settings it records
/// (`objective.bidirectional_prefix`, `objective.reset_at_doc_boundaries`); absent fields
/// read as off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AttentionMode {
    /// DecLLM + BiAttn: the prefix tokens attend to each other bidirectionally.
    pub bidirectional_prefix: bool,
    /// A token attends only within its own document.
    pub reset_at_doc_boundaries: bool,
}

impl AttentionMode {
    /// The mode recorded in a checkpoint's metadata.
    pub fn of_checkpoint(meta: &CheckpointMeta) -> AttentionMode {
        let flag = |name: &str| {
            meta.settings
                .get("objective")
                .and_then(|o| o.get(name))
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        };
        AttentionMode {
            bidirectional_prefix: meta.model.arch == Arch::Dec && flag("bidirectional_prefix"),
            reset_at_doc_boundaries: flag("reset_at_doc_boundaries"),
        }
    }

    /// A short description: `encoder-decoder`, `causal` or `causal, bidirectional over the
    /// prefix`, with `, reset at document boundaries` when it applies.
    pub fn describe(&self, arch: Arch) -> String {
        let mut s = match (arch, self.bidirectional_prefix) {
            (Arch::Red, _) => {
                "encoder-decoder (bidirectional encoder over the prefix, causal decoder)"
                    .to_string()
            }
            (Arch::Dec, true) => {
                "causal, bidirectional over the prefix (DecLLM + BiAttn)".to_string()
            }
            (Arch::Dec, false) => "causal".to_string(),
        };
        if self.reset_at_doc_boundaries {
            s.push_str(", reset at document boundaries");
        }
        s
    }
}

/// A checked evaluation, ready to run.
pub struct EvalJob {
    pub checkpoint: PathBuf,
    pub corpus: CorpusSummary,
    pub model: ModelConfig,
    pub step: u64,
    params: ParamStore,
    options: EvalOptions,
    step_options: StepOptions,
    loader: Loader,
}

impl EvalJob {
    /// Loads the checkpoint and opens the corpus; fails on a tokenizer mismatch, a vocabulary
    /// larger than the model's or a prefix the architecture cannot use, before any work.
    pub fn prepare(
        checkpoint_path: &Path,
        data: &Path,
        options: EvalOptions,
    ) -> Result<EvalJob, EvalError> {
        EvalJob::prepare_checked(checkpoint_path, data, options, true)
    }

    /// `prepare`, checking the checkpoint's and the token files' sha256 (each shard before its
    /// first row is read) only when `verify` is set.
    pub fn prepare_checked(
        checkpoint_path: &Path,
        data: &Path,
        options: EvalOptions,
        verify: bool,
    ) -> Result<EvalJob, EvalError> {
        let dir = checkpoint::resolve(checkpoint_path)?;
        let meta = checkpoint::load_meta(&dir)?;
        let (corpus, summary) = open_corpus(data)?;
        check_tokenizer(&dir, &meta.model, &meta.tokenizer, &summary)
            .map_err(|e| EvalError::Incompatible(e.to_string()))?;
        if options.prefix_len == Some(0) && meta.model.arch == Arch::Red {
            return Err(EvalError::Incompatible(
                "--prefix-len must be at least 1 for RedLLM (its encoder needs an input)".into(),
            ));
        }
        let ckpt = checkpoint::load_checked(&dir, false, verify)?;
        let arch = ckpt.meta.model.arch;
        let attention = AttentionMode::of_checkpoint(&ckpt.meta);
        // A bidirectional prefix sees the tokens after it, so they are never scored: a packed
        // corpus is then scored on its targets, as the model was trained.
        let step_options = StepOptions {
            loss_on_prefix: arch == Arch::Dec
                && options.prefix_len.is_none()
                && summary.kind == Kind::Packed
                && !attention.bidirectional_prefix,
            bidirectional_prefix: attention.bidirectional_prefix,
            reset_at_doc_boundaries: attention.reset_at_doc_boundaries,
            ..StepOptions::default()
        };
        let loader_options = LoaderOptions {
            epochs: Some(1),
            prefix_len_override: options.prefix_len,
            require_split: arch == Arch::Red,
            // Padding is told apart from text only when it has its own id.
            trim_trailing_padding: summary.kind == Kind::Packed
                && summary.tokenizer.pad_id != summary.tokenizer.eod_id,
            ..LoaderOptions::new(
                options.batch_rows.max(1),
                Order::Sequential,
                summary.tokenizer.pad_id,
            )
        };
        let corpus = CheckedCorpus::new(corpus, verify);
        let loader = Loader::spawn(Box::new(corpus), loader_options, Cursor::default())?;
        Ok(EvalJob {
            checkpoint: dir,
            corpus: summary,
            model: ckpt.meta.model,
            step: ckpt.meta.step,
            params: ckpt.params,
            options,
            step_options,
            loader,
        })
    }

    /// Scores the corpus; `progress` is called with the examples scored so far.
    pub fn run(
        mut self,
        backend: &mut dyn Backend,
        mut progress: impl FnMut(u64),
    ) -> Result<EvalReport, EvalError> {
        let mut sums: BTreeMap<String, (f64, u64, u64)> = BTreeMap::new();
        let mut examples = 0u64;
        let mut batch_no = 0u64;
        let mut tokens = StackTokens::default();
        let resident = load_resident(backend, &self.model, &self.params)?;
        while let Some(loaded) = self.loader.next_batch()? {
            let mut batch = loaded.batch;
            if let Some(max) = self.options.max_examples {
                let left = max.saturating_sub(examples) as usize;
                if left == 0 {
                    break;
                }
                if batch.rows > left {
                    batch = truncate_rows(batch, left);
                }
            }
            let stats = match backend.resident().filter(|_| resident) {
                Some(device) => device.forward_loss_loaded(&self.model, &batch, &self.step_options),
                None => backend.forward_loss(&self.model, &self.params, &batch, &self.step_options),
            }
            .map_err(|source| EvalError::Backend {
                batch: batch_no,
                source,
            })?;
            for r in 0..batch.rows {
                let entry = sums.entry(batch.source[r].clone()).or_default();
                entry.0 += stats.row_loss.get(r).copied().unwrap_or(0.0);
                entry.1 += stats.row_tokens.get(r).copied().unwrap_or(0) as u64;
                entry.2 += 1;
            }
            tokens.add(&StackTokens::from_batch(
                &self.model,
                &batch,
                &self.step_options,
            ));
            examples += batch.rows as u64;
            batch_no += 1;
            progress(examples);
        }
        let score = |loss_sum: f64, tokens: u64, examples: u64| {
            let loss = if tokens > 0 {
                loss_sum / tokens as f64
            } else {
                f64::NAN
            };
            Score {
                loss,
                ppl: loss.exp(),
                tokens,
                examples,
            }
        };
        let (total_loss, total_tokens) = sums
            .values()
            .fold((0.0, 0u64), |(l, t), s| (l + s.0, t + s.1));
        if total_tokens == 0 {
            return Err(EvalError::NothingScored(self.corpus.dir.clone()));
        }
        Ok(EvalReport {
            overall: score(total_loss, total_tokens, examples),
            sources: sums
                .into_iter()
                .map(|(name, (l, t, e))| (name, score(l, t, e)))
                .collect(),
            prefix_len: self.options.prefix_len,
            inference_flops_per_example: inference_flops(&self.model, &tokens) / examples as f64,
            forward_flops_per_example: forward_flops(&self.model, &tokens) / examples as f64,
        })
    }
}

/// The first `rows` rows of a batch.
fn truncate_rows(mut batch: crate::batch::Batch, rows: usize) -> crate::batch::Batch {
    batch.rows = rows;
    batch.tokens.truncate(rows * batch.seq);
    batch.prefix_len.truncate(rows);
    batch.length.truncate(rows);
    batch.doc_starts.truncate(rows);
    batch.source.truncate(rows);
    batch
}

/// Puts the parameters on a device that keeps them resident, once for a whole evaluation;
/// `false` when the backend takes them with every batch.
pub(crate) fn load_resident(
    backend: &mut dyn Backend,
    model: &ModelConfig,
    params: &ParamStore,
) -> Result<bool, EvalError> {
    match backend.resident() {
        Some(device) => {
            device
                .load_params(model, params)
                .map_err(|source| EvalError::Backend { batch: 0, source })?;
            Ok(true)
        }
        None => Ok(false),
    }
}
