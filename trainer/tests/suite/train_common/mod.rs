//! Shared helpers for the trainer's integration tests: small corpora written with the real
//! `CorpusWriter`, and settings for `tiny` runs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redpack_schemas::{
    CorpusInfo, CorpusWriter, Counts, ExampleMeta, Layout, PackingStats, TokenizerInfo,
    WriterOptions, DEFAULT_MAX_SHARD_TOKENS,
};
use redpack_trainer::config::Arch;
use redpack_trainer::run::{Mode, Recipe, TrainSettings};
use redpack_trainer::schedule::Schedule;

pub const VOCAB: u32 = 48;
pub const PAD: u32 = 0;
pub const EOD: u32 = 1;
pub const TOKENIZER_SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A token stream with structure a model can learn: each token determines the next, with a
/// few documents of different strides.
pub fn pattern(doc: u32, len: usize) -> Vec<u32> {
    let stride = 1 + doc % 5;
    (0..len as u32)
        .map(|i| 2 + (doc * 7 + i * stride) % (VOCAB - 2))
        .collect()
}

fn tokenizer(sha: &str) -> TokenizerInfo {
    TokenizerInfo {
        file: "tokenizer.json".to_string(),
        sha256: sha.to_string(),
        vocab_size: VOCAB,
        eod_id: EOD,
        pad_id: PAD,
        eod_token: "[EOD]".to_string(),
        pad_token: "[PAD]".to_string(),
    }
}

fn finish(writer: CorpusWriter, sha: &str) {
    writer
        .finish(CorpusInfo {
            tokenizer: tokenizer(sha),
            build: serde_json::json!({}),
            inputs: Vec::new(),
            counts: Counts::default(),
            sources: BTreeMap::new(),
            packing: PackingStats::default(),
        })
        .expect("finish corpus");
}

/// A packed corpus of `n` sequences of `seq` tokens split at `seq / 2`; sources alternate
/// between `web` and `code`.
pub fn packed_corpus(dir: &Path, n: usize, seq: u32) -> PathBuf {
    packed_corpus_with_sha(dir, n, seq, TOKENIZER_SHA)
}

pub fn packed_corpus_with_sha(dir: &Path, n: usize, seq: u32, sha: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut writer = CorpusWriter::create(
        dir,
        WriterOptions {
            layout: Layout::Packed {
                seq_len: seq,
                prefix_len: seq / 2,
            },
            vocab_size: VOCAB,
            max_shard_tokens: DEFAULT_MAX_SHARD_TOKENS,
        },
    )
    .expect("create corpus");
    for i in 0..n {
        let tokens = pattern(i as u32, seq as usize);
        writer
            .push(
                &tokens,
                ExampleMeta {
                    source: if i % 2 == 0 { "web" } else { "code" },
                    prefix_len: seq / 2,
                    doc_starts: &[],
                    origin: None,
                },
            )
            .expect("push");
    }
    finish(writer, sha);
    dir.to_path_buf()
}

/// An examples corpus: inputs of 3..8 tokens followed by targets of 2..5 tokens.
pub fn examples_corpus(dir: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut writer = CorpusWriter::create(
        dir,
        WriterOptions {
            layout: Layout::Examples {
                max_input_len: 8,
                max_target_len: 5,
            },
            vocab_size: VOCAB,
            max_shard_tokens: DEFAULT_MAX_SHARD_TOKENS,
        },
    )
    .expect("create corpus");
    for i in 0..n as u32 {
        let input = 3 + (i % 6) as usize;
        let target = 2 + (i % 4) as usize;
        let tokens = pattern(i, input + target);
        writer
            .push(
                &tokens,
                ExampleMeta {
                    source: "flan",
                    prefix_len: input as u32,
                    doc_starts: &[],
                    origin: None,
                },
            )
            .expect("push");
    }
    finish(writer, TOKENIZER_SHA);
    dir.to_path_buf()
}

/// Settings for a `tiny` run with a constant learning rate and the mode's other defaults.
pub fn tiny_settings(arch: Arch, mode: Mode, data: &Path, out: &Path, steps: u64) -> TrainSettings {
    let recipe = Recipe {
        arch: Some(arch),
        mode: Some(mode),
        size: Some("tiny".to_string()),
        steps: Some(steps),
        batch: Some(4),
        accum: Some(2),
        seed: Some(7),
        checkpoint_every: Some(3),
        schedule: Some(Schedule::Constant { lr: 0.01 }),
        ..Recipe::default()
    };
    TrainSettings::resolve(recipe, data.to_path_buf(), out.to_path_buf(), None, false)
        .expect("settings")
}
