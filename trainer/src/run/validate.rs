//! Validation while training: the eval corpus (`--eval-data`) scored with the current parameters
//! after every `every` steps and after the last, under the training objective with the z-loss and
//! dropout off (a packed corpus as it is pretrained on, an examples corpus on its targets; DecLLM
//! with a bidirectional prefix keeps it).
//!
//! Scoring reads nothing the training reads or writes: its own loader over the eval corpus (in
//! corpus order, the same rows every time), no random draws, and on a resident device the
//! parameters already there (`ResidentTraining::forward_loss_loaded`), which a forward pass does
//! not change. So the training losses are the same with and without validation.
//!
//! In a data-parallel job each rank scores every `world_size`-th batch (from its rank on) and
//! the per-source sums are added over the ranks, so evaluating takes 1 / world_size of the time;
//! every rank still reads every batch, which fixes the rows and the sources in the same order on
//! all ranks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use redpack_schemas::Kind;

use super::settings::Validation;
use super::tokenizer::check_tokenizer;
use super::TrainError;
use crate::backend::Backend;
use crate::batch::{Batch, StepOptions};
use crate::checkpoint::TokenizerStamp;
use crate::config::{Arch, ModelConfig};
use crate::data::{
    open_corpus, CheckedCorpus, CorpusSummary, Cursor, Loader, LoaderOptions, Order,
};
use crate::dist::Parallel;
use crate::metrics::EvalMetrics;
use crate::params::ParamStore;

/// A checked eval corpus and how to score it.
#[derive(Debug)]
pub struct Validator {
    pub settings: Validation,
    pub corpus: CorpusSummary,
    options: StepOptions,
    loader_options: LoaderOptions,
    /// Check the eval corpus's token files (during the first evaluation: every evaluation
    /// reads the same rows).
    pub verify: bool,
    verified: AtomicBool,
}

fn incompatible(path: &Path, what: String) -> TrainError {
    TrainError::Incompatible {
        path: path.to_path_buf(),
        what,
    }
}

impl Validator {
    /// Opens the eval corpus and checks it against the training corpus's kind and the model's
    /// tokenizer and vocabulary.
    pub fn prepare(
        settings: &Validation,
        model: &ModelConfig,
        tokenizer: &TokenizerStamp,
        train_kind: Kind,
        objective: &StepOptions,
        batch_rows: usize,
    ) -> Result<Validator, TrainError> {
        let dir = &settings.data;
        let (_, summary) = open_corpus(dir).map_err(|e| {
            incompatible(
                dir,
                format!("cannot open the eval corpus (--eval-data): {e}"),
            )
        })?;
        if summary.kind != train_kind {
            return Err(incompatible(
                dir,
                format!(
                    "the eval corpus (--eval-data) is `{}`, the training corpus `{}`: validation scores the training objective, so it needs a corpus of the same kind",
                    summary.kind.name(),
                    train_kind.name()
                ),
            ));
        }
        check_tokenizer(dir, model, tokenizer, &summary).map_err(|e| {
            incompatible(
                dir,
                format!("the eval corpus (--eval-data) does not fit the model: {e}"),
            )
        })?;
        let options = StepOptions {
            z_loss: 0.0,
            dropout: 0.0,
            dropout_seed: 0,
            ..*objective
        };
        let loader_options = LoaderOptions {
            epochs: Some(1),
            require_split: model.arch == Arch::Red,
            trim_trailing_padding: summary.kind == Kind::Packed
                && summary.tokenizer.pad_id != summary.tokenizer.eod_id,
            ..LoaderOptions::new(
                batch_rows.max(1),
                Order::Sequential,
                summary.tokenizer.pad_id,
            )
        };
        Ok(Validator {
            settings: settings.clone(),
            corpus: summary,
            options,
            loader_options,
            verify: true,
            verified: AtomicBool::new(false),
        })
    }

    /// Scores the eval corpus. With `resident` set, the backend's resident parameters are used
    /// (they are the training parameters); otherwise `params`. `parallel` shares the batches
    /// out among the ranks of a data-parallel job.
    pub fn evaluate(
        &self,
        step: u64,
        model: &ModelConfig,
        params: &ParamStore,
        backend: &mut dyn Backend,
        resident: bool,
        parallel: Parallel,
    ) -> Result<EvalMetrics, TrainError> {
        let dir = &self.settings.data;
        let (corpus, _) = open_corpus(dir)?;
        let verify = self.verify && !self.verified.load(Ordering::Acquire);
        let mut loader = Loader::spawn(
            Box::new(CheckedCorpus::new(corpus, verify)),
            self.loader_options.clone(),
            Cursor::default(),
        )?;
        // Per source: loss sum, scored tokens.
        let mut sums: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        let mut examples = 0u64;
        let mut index = 0usize;
        while let Some(loaded) = loader.next_batch()? {
            let mut batch = loaded.batch;
            if let Some(max) = self.settings.rows {
                let left = max.saturating_sub(examples) as usize;
                if left == 0 {
                    break;
                }
                if batch.rows > left {
                    batch = first_rows(batch, left);
                }
            }
            let mine = index % parallel.world_size == parallel.rank;
            index += 1;
            if !mine {
                // Another rank scores it; its sources still take their place in the sums.
                for source in &batch.source {
                    sums.entry(source.clone()).or_default();
                }
                examples += batch.rows as u64;
                continue;
            }
            let stats = match backend.resident().filter(|_| resident) {
                Some(device) => device.forward_loss_loaded(model, &batch, &self.options),
                None => backend.forward_loss(model, params, &batch, &self.options),
            }
            .map_err(|source| TrainError::Backend { step, source })?;
            for r in 0..batch.rows {
                let entry = sums.entry(batch.source[r].clone()).or_default();
                entry.0 += stats.row_loss.get(r).copied().unwrap_or(0.0);
                entry.1 += stats.row_tokens.get(r).copied().unwrap_or(0) as u64;
            }
            examples += batch.rows as u64;
        }
        if parallel.world_size > 1 {
            // Every rank holds the same sources in the same (sorted) order.
            let mut flat: Vec<f64> = sums.values().flat_map(|&(l, t)| [l, t as f64]).collect();
            backend
                .resident()
                .ok_or_else(|| TrainError::Parallel("evaluation needs the joined device".into()))?
                .all_reduce_sums(&mut flat)
                .map_err(|source| TrainError::Backend { step, source })?;
            for (sum, pair) in sums.values_mut().zip(flat.chunks_exact(2)) {
                *sum = (pair[0], pair[1] as u64);
            }
        }
        let (loss_sum, tokens) = sums
            .values()
            .fold((0.0, 0u64), |(l, t), s| (l + s.0, t + s.1));
        if tokens == 0 {
            return Err(incompatible(
                dir,
                "the eval corpus (--eval-data) has nothing to score".to_string(),
            ));
        }
        let sources: BTreeMap<String, f64> = sums
            .into_iter()
            .filter(|(_, (_, t))| *t > 0)
            .map(|(name, (l, t))| (name, l / t as f64))
            .collect();
        self.verified.store(true, Ordering::Release);
        let loss = loss_sum / tokens as f64;
        let source_avg_loss = sources.values().sum::<f64>() / sources.len() as f64;
        Ok(EvalMetrics {
            loss,
            source_avg_loss,
            ppl: loss.exp(),
            tokens,
            examples,
            sources,
            best: false,
        })
    }
}

/// The first `rows` rows of a batch.
fn first_rows(mut batch: Batch, rows: usize) -> Batch {
    batch.rows = rows;
    batch.tokens.truncate(rows * batch.seq);
    batch.prefix_len.truncate(rows);
    batch.length.truncate(rows);
    batch.doc_starts.truncate(rows);
    batch.source.truncate(rows);
    batch
}
