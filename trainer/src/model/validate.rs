//! Batch validation: everything about a batch and its step options that the model math relies
//! on, checked before either backend runs it.

use crate::batch::{Batch, StepOptions};
use crate::config::{Arch, ModelConfig};

/// Why a batch (or its step options) does not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BatchError(pub String);

/// Checks everything about a batch the model math relies on.
pub fn validate_batch(config: &ModelConfig, batch: &Batch) -> Result<(), BatchError> {
    let bad = |msg: String| Err(BatchError(msg));
    if batch.tokens.len() != batch.rows * batch.seq {
        return bad(format!(
            "{} token ids for {} rows of {}",
            batch.tokens.len(),
            batch.rows,
            batch.seq
        ));
    }
    if batch.prefix_len.len() != batch.rows || batch.length.len() != batch.rows {
        return bad(format!(
            "{} rows but {} prefix lengths and {} lengths",
            batch.rows,
            batch.prefix_len.len(),
            batch.length.len()
        ));
    }
    if !batch.doc_starts.is_empty() && batch.doc_starts.len() != batch.rows {
        return bad(format!(
            "{} rows but {} document-start lists",
            batch.rows,
            batch.doc_starts.len()
        ));
    }
    for r in 0..batch.rows {
        let (k, n) = (batch.prefix_len[r], batch.length[r]);
        if n > batch.seq {
            return bad(format!(
                "row {r}: length {n} exceeds the row size {}",
                batch.seq
            ));
        }
        if k > n {
            return bad(format!("row {r}: prefix_len {k} exceeds length {n}"));
        }
        if config.arch == Arch::Red && n > 0 && k == 0 {
            return bad(format!(
                "row {r}: RedLLM needs prefix_len >= 1 (the encoder input)"
            ));
        }
        if let Some((i, &t)) = batch
            .row(r)
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= config.vocab_size)
        {
            return bad(format!(
                "row {r}, token {i}: id {t} is outside the vocabulary of {}",
                config.vocab_size
            ));
        }
    }
    Ok(())
}

/// Checks the step options against the model.
pub fn validate_options(config: &ModelConfig, options: &StepOptions) -> Result<(), BatchError> {
    let bad = |msg: String| Err(BatchError(msg));
    if !(0.0..1.0).contains(&options.dropout) {
        return bad(format!(
            "dropout must be in [0, 1), got {}",
            options.dropout
        ));
    }
    if !(options.z_loss.is_finite() && options.z_loss >= 0.0) {
        return bad(format!("z_loss must be >= 0, got {}", options.z_loss));
    }
    if config.arch == Arch::Dec && options.bidirectional_prefix && options.loss_on_prefix {
        return bad(
            "bidirectional_prefix with loss_on_prefix would score prefix tokens the model can already see"
                .into(),
        );
    }
    Ok(())
}
