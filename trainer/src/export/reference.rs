//! The numbers an exported model must reproduce: the CPU backend's log-probability of every
//! scored token of a fixed probe batch (two rows of different lengths, token ids drawn from a
//! seeded generator below the tokenizer's vocabulary).
//!
//! What is scored follows the trainer: a DecLLM scores every next token (from token 1), a
//! "DecLLM + BiAttn" the tokens after the prefix (the prefix attends to itself bidirectionally),
//! a RedLLM the tokens after the prefix (the prefix is the encoder input; the decoder reads the
//! prefix's last token and then the targets, at positions continuing the encoder's).

use serde::{Deserialize, Serialize};

use super::ExportError;
use crate::backend::cpu::CpuBackend;
use crate::batch::{Batch, StepOptions};
use crate::checkpoint::Checkpoint;
use crate::config::Arch;
use crate::eval::AttentionMode;
use crate::rng::SplitMix64;

/// The probe rows: (length, prefix length).
const PROBE_ROWS: [(usize, usize); 2] = [(24, 9), (13, 5)];
/// Seed of the probe's token ids.
const PROBE_SEED: u64 = 0x5EED_2026;

/// One probe row and its reference scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRow {
    pub tokens: Vec<u32>,
    /// Tokens before the split: the encoder input (RedLLM), the bidirectional part (BiAttn).
    pub prefix_len: usize,
    /// The first scored token: `logprobs[i]` is ln p(tokens[first_target + i] | before it).
    pub first_target: usize,
    pub logprobs: Vec<f64>,
}

/// The reference file (`--reference` of `redpack export`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// `dec` or `red`.
    pub arch: String,
    pub bidirectional_prefix: bool,
    pub step: u64,
    pub rows: Vec<ReferenceRow>,
}

/// The probe batch for a vocabulary of `vocab` ids.
pub fn probe_batch(vocab: u32, pad_id: u32) -> Batch {
    let mut rng = SplitMix64::new(PROBE_SEED);
    let seq = PROBE_ROWS.iter().map(|r| r.0).max().unwrap_or(0);
    let mut tokens = vec![pad_id; PROBE_ROWS.len() * seq];
    for (r, &(len, _)) in PROBE_ROWS.iter().enumerate() {
        for t in &mut tokens[r * seq..r * seq + len] {
            *t = rng.below(u64::from(vocab.max(1))) as u32;
        }
    }
    Batch {
        rows: PROBE_ROWS.len(),
        seq,
        tokens,
        prefix_len: PROBE_ROWS.iter().map(|r| r.1).collect(),
        length: PROBE_ROWS.iter().map(|r| r.0).collect(),
        doc_starts: vec![Vec::new(); PROBE_ROWS.len()],
        source: vec![String::new(); PROBE_ROWS.len()],
    }
}

/// The CPU forward's log-probabilities of the probe batch under `checkpoint`.
pub fn reference(checkpoint: &Checkpoint) -> Result<Reference, ExportError> {
    let meta = &checkpoint.meta;
    let attention = AttentionMode::of_checkpoint(meta);
    let batch = probe_batch(
        meta.tokenizer.vocab_size.min(meta.model.vocab_size as u32),
        meta.tokenizer.pad_id,
    );
    let loss_on_prefix = meta.model.arch == Arch::Dec && !attention.bidirectional_prefix;
    let options = StepOptions {
        bidirectional_prefix: attention.bidirectional_prefix,
        loss_on_prefix,
        ..StepOptions::default()
    };
    let backend = CpuBackend::new(None).map_err(|e| ExportError::Backend(e.to_string()))?;
    let losses = backend
        .token_losses(&meta.model, &checkpoint.params, &batch, &options)
        .map_err(|e| ExportError::Backend(e.to_string()))?;
    let rows = losses
        .into_iter()
        .enumerate()
        .map(|(r, ce)| {
            let first_target = if loss_on_prefix {
                1
            } else {
                batch.prefix_len[r]
            };
            ReferenceRow {
                tokens: batch.row(r).to_vec(),
                prefix_len: batch.prefix_len[r],
                first_target,
                logprobs: ce.into_iter().map(|c| -c).collect(),
            }
        })
        .collect();
    Ok(Reference {
        arch: meta.model.arch.name().to_string(),
        bidirectional_prefix: attention.bidirectional_prefix,
        step: meta.step,
        rows,
    })
}
