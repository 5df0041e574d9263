//! Training a byte-level BPE tokenizer with the `tokenizers` crate's trainer.
//!
//! The study used a 32K subword vocabulary without naming it; redpack trains its own on the
//! input when no `tokenizer.json` is given. The result is a GPT-2-style byte-level BPE (no
//! unknown tokens: every byte is in the alphabet) with two special tokens, `[EOD]` (id 0) and
//! `[PAD]` (id 1). Training is deterministic: word counts are sums and the trainer breaks ties
//! between equally frequent pairs by the pair itself, so the same texts give the same file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::input::{self, FieldMap, InputFile};
use crate::record::{Content, Item};

/// `[tokenizer.train]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Vocabulary entries including the special tokens.
    pub vocab_size: usize,
    /// Pairs seen fewer times are never merged.
    pub min_frequency: u64,
    pub eod_token: String,
    pub pad_token: String,
    /// Trainer input is capped at this many bytes of text (the first records in input order),
    /// which bounds training time and memory (the texts are held while training) on large
    /// corpora.
    pub max_bytes: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            vocab_size: 32768,
            min_frequency: 2,
            eod_token: "[EOD]".to_string(),
            pad_token: "[PAD]".to_string(),
            max_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("tokenizer training failed: {message}")]
    Train { message: String },
    #[error("vocab_size {vocab_size} is too small: it must exceed the 256 byte tokens plus the special tokens")]
    VocabTooSmall { vocab_size: usize },
    #[error("vocab_size {vocab_size} is too large: at most {MAX_VOCAB} entries are supported")]
    VocabTooLarge { vocab_size: usize },
    #[error("no text to train a tokenizer on: the inputs hold no readable records")]
    NoText,
    #[error("{path}: cannot write tokenizer: {message}")]
    Write { path: PathBuf, message: String },
}

/// Largest vocabulary `train_bpe` builds: far above any used in practice (the study's is 32,768)
/// and small enough that the trainer's tables fit in memory.
pub const MAX_VOCAB: usize = 1 << 22;

/// Trains a byte-level BPE tokenizer on `texts` (in order).
pub fn train_bpe<I, S>(texts: I, config: &TrainConfig) -> Result<Tokenizer, TrainError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    if config.vocab_size <= 258 {
        return Err(TrainError::VocabTooSmall {
            vocab_size: config.vocab_size,
        });
    }
    if config.vocab_size > MAX_VOCAB {
        return Err(TrainError::VocabTooLarge {
            vocab_size: config.vocab_size,
        });
    }
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(config.eod_token.clone(), true),
            AddedToken::from(config.pad_token.clone(), true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|err| TrainError::Train {
            message: err.to_string(),
        })?;
    Ok(tokenizer)
}

/// Collects training text from input files in order (documents; FLAN inputs and targets as
/// separate texts), up to `max_bytes`. Rejected records and unreadable files are skipped here:
/// the build reports them.
pub fn texts_from_inputs(files: &[InputFile], fields: &FieldMap, max_bytes: u64) -> Vec<String> {
    let mut texts = Vec::new();
    let mut total = 0u64;
    for file in files {
        let Ok(stream) = input::open(file, fields) else {
            continue;
        };
        for item in stream {
            let Item::Record(record) = item else { continue };
            total += record.content.len_bytes() as u64;
            match record.content {
                Content::Text(text) => texts.push(text),
                Content::Pair { input, target, .. } => {
                    texts.push(input);
                    texts.push(target);
                }
            }
            if total >= max_bytes {
                return texts;
            }
        }
    }
    texts
}

/// Trains on the inputs' text (see [`texts_from_inputs`]).
pub fn train_on_inputs(
    files: &[InputFile],
    fields: &FieldMap,
    config: &TrainConfig,
) -> Result<Tokenizer, TrainError> {
    let texts = texts_from_inputs(files, fields, config.max_bytes);
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(TrainError::NoText);
    }
    train_bpe(texts.into_iter(), config)
}

/// Serializes a tokenizer to `tokenizer.json` form (pretty, stable key order).
pub fn to_json(tokenizer: &Tokenizer) -> Result<String, TrainError> {
    tokenizer.to_string(true).map_err(|err| TrainError::Train {
        message: err.to_string(),
    })
}

/// Writes `tokenizer` to `path` atomically.
pub fn save(tokenizer: &Tokenizer, path: &Path) -> Result<(), TrainError> {
    let json = to_json(tokenizer)?;
    redpack_schemas::atomic::write_file(path, json.as_bytes()).map_err(|err| TrainError::Write {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        (0..300)
            .map(|i| {
                format!(
                    "document {i} says hello world, the quick brown fox {} jumps.",
                    i % 17
                )
            })
            .collect()
    }

    #[test]
    fn trains_with_special_tokens_deterministically() {
        let config = TrainConfig {
            vocab_size: 400,
            ..TrainConfig::default()
        };
        let train_with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| train_bpe(corpus().into_iter(), &config).unwrap())
        };
        let (a, b) = (train_with(1), train_with(2));
        assert_eq!(to_json(&a).unwrap(), to_json(&b).unwrap());
        assert_eq!(a.token_to_id("[EOD]"), Some(0));
        assert_eq!(a.token_to_id("[PAD]"), Some(1));
        assert!(a.get_vocab_size(true) <= 400);
        let ids = a.encode("hello world ünïcode", false).unwrap();
        let decoded = a.decode(ids.get_ids(), false).unwrap();
        assert_eq!(decoded, "hello world ünïcode");
    }

    #[test]
    fn rejects_tiny_vocabularies() {
        let config = TrainConfig {
            vocab_size: 100,
            ..TrainConfig::default()
        };
        assert!(matches!(
            train_bpe(corpus().into_iter(), &config),
            Err(TrainError::VocabTooSmall { .. })
        ));
    }
}
