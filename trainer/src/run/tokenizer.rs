//! The checks that a model and a corpus share a tokenizer and vocabulary, for training,
//! validation and evaluation.

use std::path::Path;

use super::TrainError;
use crate::checkpoint::TokenizerStamp;
use crate::config::ModelConfig;
use crate::data::CorpusSummary;

fn incompatible(path: &Path, what: impl Into<String>) -> TrainError {
    TrainError::Incompatible {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Fails unless the checkpoint's tokenizer is the corpus's and its vocabulary covers the corpus.
pub fn check_tokenizer(
    checkpoint_dir: &Path,
    model: &ModelConfig,
    stamp: &TokenizerStamp,
    corpus: &CorpusSummary,
) -> Result<(), TrainError> {
    if stamp.sha256 != corpus.tokenizer.sha256 {
        return Err(incompatible(
            checkpoint_dir,
            format!(
                "tokenizer mismatch: the checkpoint was trained with tokenizer sha256 {}, the corpus {} was encoded with {}",
                stamp.sha256,
                corpus.dir.display(),
                corpus.tokenizer.sha256
            ),
        ));
    }
    check_vocab(checkpoint_dir, model, corpus)
}

pub(super) fn check_vocab(
    place: &Path,
    model: &ModelConfig,
    corpus: &CorpusSummary,
) -> Result<(), TrainError> {
    if corpus.tokenizer.vocab_size as usize > model.vocab_size {
        return Err(incompatible(
            place,
            format!(
                "the corpus vocabulary ({}) is larger than the model's ({})",
                corpus.tokenizer.vocab_size, model.vocab_size
            ),
        ));
    }
    Ok(())
}
