//! The per-chunk work of a build: count and filter, dedup keys in parallel, dedup decisions in
//! input order, tokenize in parallel, then pack and write in input order (or hold for the
//! shuffle).

use std::sync::Arc;

use rayon::prelude::*;
use redpack_schemas::{CorpusWriter, ExampleMeta, SchemaError};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::build::BuildError;
use super::config::{BuildSettings, FilterConfig};
use super::rejects::RejectSampler;
use super::tally::{Outcome, Tally};
use crate::dedup::{DedupKeys, Deduper, Verdict};
use crate::pack::{ExampleSink, Packer, TokenizedContent};
use crate::record::{Content, Item, Record};
use crate::tokenize::DocTokenizer;

/// True when the record is too short to keep.
pub fn is_filtered(content: &Content, filter: &FilterConfig) -> bool {
    let short = |text: &str| text.trim().chars().take(filter.min_chars).count() < filter.min_chars;
    let words = |text: &str| text.split_whitespace().take(filter.min_words).count();
    match content {
        Content::Text(text) => short(text) || words(text) < filter.min_words,
        Content::Pair { input, target, .. } => {
            short(input) || short(target) || words(input) + words(target) < filter.min_words
        }
    }
}

/// Counts the examples that reach the writer.
pub struct CountingSink<'a> {
    pub writer: &'a mut CorpusWriter,
    pub examples: u64,
}

impl ExampleSink for CountingSink<'_> {
    fn push_example(&mut self, tokens: &[u32], meta: ExampleMeta<'_>) -> Result<(), SchemaError> {
        self.examples += 1;
        self.writer.push(tokens, meta)
    }
}

/// A kept, tokenized document waiting for the shuffle.
pub struct PendingDoc {
    pub key: u64,
    pub content: TokenizedContent,
    pub source: Arc<str>,
    pub origin: String,
}

/// The per-build state that the chunk loop updates.
pub struct Stages<'a> {
    pub settings: &'a BuildSettings,
    pub tokenizer: &'a DocTokenizer,
    pub pool: &'a rayon::ThreadPool,
    pub deduper: Deduper,
    pub tally: Tally,
    pub rejects: RejectSampler,
    pub packer: Packer,
    pub pending: Vec<PendingDoc>,
    pub kept_docs: u64,
    pub text_bytes: u64,
}

impl Stages<'_> {
    /// Takes one chunk of items through every stage.
    pub fn process(
        &mut self,
        items: Vec<Item>,
        sink: &mut CountingSink<'_>,
    ) -> Result<(), BuildError> {
        let mut candidates: Vec<Record> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::Reject(reject) => {
                    self.tally
                        .record(&reject.source, Outcome::Rejected(reject.reason));
                    self.rejects.offer(&reject);
                }
                Item::Record(record) => {
                    self.text_bytes += record.content.len_bytes() as u64;
                    if is_filtered(&record.content, &self.settings.filter) {
                        self.tally.record(&record.source, Outcome::Filtered);
                    } else {
                        candidates.push(record);
                    }
                }
            }
        }

        let dedup_on = self.settings.dedup.exact || self.settings.dedup.near;
        let keys: Vec<DedupKeys> = if dedup_on {
            let deduper = &self.deduper;
            self.pool.install(|| {
                candidates
                    .par_iter()
                    .map_init(String::new, |scratch, record| {
                        deduper.keys(&record.content, scratch)
                    })
                    .collect()
            })
        } else {
            Vec::new()
        };

        let mut kept = Vec::with_capacity(candidates.len());
        for (index, record) in candidates.into_iter().enumerate() {
            let verdict = match keys.get(index) {
                Some(keys) => self.deduper.decide(keys),
                None => Verdict::Unique,
            };
            let outcome = match verdict {
                Verdict::Unique => Outcome::Kept,
                Verdict::ExactDuplicate => Outcome::ExactDuplicate,
                Verdict::NearDuplicate => Outcome::NearDuplicate,
            };
            self.tally.record(&record.source, outcome);
            if outcome == Outcome::Kept {
                kept.push(record);
            }
        }

        let texts: Vec<&str> = kept
            .iter()
            .flat_map(|record| match &record.content {
                Content::Text(text) => [Some(text.as_str()), None],
                Content::Pair { input, target, .. } => {
                    [Some(input.as_str()), Some(target.as_str())]
                }
            })
            .flatten()
            .collect();
        let tokenizer = self.tokenizer;
        let mut ids = self
            .pool
            .install(|| tokenizer.encode_batch(&texts))?
            .into_iter();
        for record in &kept {
            let content = match record.content {
                Content::Text(_) => TokenizedContent::Text(ids.next().unwrap_or_default()),
                Content::Pair { .. } => TokenizedContent::Pair {
                    input: ids.next().unwrap_or_default(),
                    target: ids.next().unwrap_or_default(),
                },
            };
            let origin = record.place.to_string();
            match self.settings.output.shuffle_seed {
                Some(seed) => self.pending.push(PendingDoc {
                    key: xxh3_64_with_seed(&self.kept_docs.to_le_bytes(), seed),
                    content,
                    source: record.source.clone(),
                    origin,
                }),
                None => self.packer.push(&content, &record.source, &origin, sink)?,
            }
            self.kept_docs += 1;
        }
        Ok(())
    }
}
