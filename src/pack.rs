//! Packing tokenized documents into examples and streaming them into a sink.
//!
//! - **Packed** (pretraining): documents are concatenated in order, each followed by the
//!   end-of-document token, and cut into non-overlapping `seq_len` sequences with a fixed prefix
//!   split. A document may run across sequences; the positions where a document starts inside a
//!   sequence are recorded. The final partial sequence is dropped or padded, and counted.
//! - **Examples** (instruction tuning): one example per (input, target) pair: the input
//!   truncated to `max_input_len`, then the target followed by the end-of-document token,
//!   truncated to `max_target_len`. When a target is truncated its end-of-document token is cut
//!   with it, so the model is never taught to stop in mid-answer. No packing (the study tuned
//!   without it); `prefix_len` is the stored input length.
//!
//! Token and example counts are attributed to sources as they are written, so the manifest's
//! per-source counts add up to the totals exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use redpack_schemas::{CorpusWriter, ExampleMeta, PackingStats, SchemaError};
use serde::{Deserialize, Serialize};

/// Where packed examples go: the corpus writer in a build, a recorder in tests.
pub trait ExampleSink {
    fn push_example(&mut self, tokens: &[u32], meta: ExampleMeta<'_>) -> Result<(), SchemaError>;
}

impl ExampleSink for CorpusWriter {
    fn push_example(&mut self, tokens: &[u32], meta: ExampleMeta<'_>) -> Result<(), SchemaError> {
        self.push(tokens, meta)
    }
}

/// An example as recorded by [`RecordingSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedExample {
    pub tokens: Vec<u32>,
    pub source: String,
    pub prefix_len: u32,
    pub doc_starts: Vec<u32>,
    pub origin: Option<String>,
}

/// A sink that keeps every example in memory (tests, small tools).
#[derive(Debug, Default)]
pub struct RecordingSink(pub Vec<RecordedExample>);

impl ExampleSink for RecordingSink {
    fn push_example(&mut self, tokens: &[u32], meta: ExampleMeta<'_>) -> Result<(), SchemaError> {
        self.0.push(RecordedExample {
            tokens: tokens.to_vec(),
            source: meta.source.to_string(),
            prefix_len: meta.prefix_len,
            doc_starts: meta.doc_starts.to_vec(),
            origin: meta.origin.map(str::to_string),
        });
        Ok(())
    }
}

/// What happens to the tokens left after the last full sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalPartial {
    /// Not written; counted as `dropped_tokens` / `dropped_sequences`.
    #[default]
    Drop,
    /// Filled with the padding token; counted as `padding_tokens`.
    Pad,
}

/// Tokens and examples written for one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceTally {
    pub tokens: u64,
    pub examples: u64,
}

/// One tokenized record ready to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizedContent {
    Text(Vec<u32>),
    Pair { input: Vec<u32>, target: Vec<u32> },
}

#[derive(Debug)]
struct OpenSequence {
    tokens: Vec<u32>,
    doc_starts: Vec<u32>,
    /// (source, tokens) runs in order, for attribution.
    spans: Vec<(Arc<str>, u64)>,
    source: Option<Arc<str>>,
    origin: Option<String>,
}

/// Concatenate-and-cut packing for pretraining corpora.
#[derive(Debug)]
pub struct SequencePacker {
    seq_len: usize,
    prefix_len: u32,
    eod_id: u32,
    pad_id: u32,
    final_partial: FinalPartial,
    open: OpenSequence,
    stats: PackingStats,
    tally: BTreeMap<Arc<str>, SourceTally>,
}

impl SequencePacker {
    pub fn new(
        seq_len: u32,
        prefix_len: u32,
        eod_id: u32,
        pad_id: u32,
        final_partial: FinalPartial,
    ) -> Self {
        SequencePacker {
            seq_len: seq_len.max(1) as usize,
            prefix_len,
            eod_id,
            pad_id,
            final_partial,
            open: OpenSequence {
                tokens: Vec::with_capacity(seq_len as usize),
                doc_starts: Vec::new(),
                spans: Vec::new(),
                source: None,
                origin: None,
            },
            stats: PackingStats::default(),
            tally: BTreeMap::new(),
        }
    }

    /// Appends one document (its tokens; the EOD token is added here).
    pub fn push_document(
        &mut self,
        tokens: &[u32],
        source: &Arc<str>,
        origin: &str,
        sink: &mut dyn ExampleSink,
    ) -> Result<(), SchemaError> {
        self.stats.documents += 1;
        let eod = [self.eod_id];
        let mut first = true;
        for mut part in [tokens, &eod[..]] {
            while !part.is_empty() {
                let open = &mut self.open;
                if open.tokens.is_empty() {
                    open.source = Some(source.clone());
                    open.origin = Some(origin.to_string());
                } else if first {
                    open.doc_starts.push(open.tokens.len() as u32);
                }
                first = false;
                let take = (self.seq_len - open.tokens.len()).min(part.len());
                open.tokens.extend_from_slice(&part[..take]);
                match open.spans.last_mut() {
                    Some((last, n)) if Arc::ptr_eq(last, source) || **last == **source => {
                        *n += take as u64
                    }
                    _ => open.spans.push((source.clone(), take as u64)),
                }
                part = &part[take..];
                if open.tokens.len() == self.seq_len {
                    self.emit(sink, 0)?;
                }
            }
        }
        Ok(())
    }

    /// Writes (with `padding` pad tokens appended) and resets the open sequence.
    fn emit(&mut self, sink: &mut dyn ExampleSink, padding: usize) -> Result<(), SchemaError> {
        let open = &mut self.open;
        open.tokens.resize(open.tokens.len() + padding, self.pad_id);
        let source = open.source.clone().unwrap_or_else(|| Arc::from(""));
        sink.push_example(
            &open.tokens,
            ExampleMeta {
                source: &source,
                prefix_len: self.prefix_len,
                doc_starts: &open.doc_starts,
                origin: open.origin.as_deref(),
            },
        )?;
        let mut seen: Vec<&Arc<str>> = Vec::new();
        for (span_source, n) in &open.spans {
            let entry = self.tally.entry(span_source.clone()).or_default();
            entry.tokens += n;
            if !seen.iter().any(|s| ***s == **span_source) {
                entry.examples += 1;
                seen.push(span_source);
            }
        }
        self.stats.padding_tokens += padding as u64;
        open.tokens.clear();
        open.doc_starts.clear();
        open.spans.clear();
        open.source = None;
        open.origin = None;
        Ok(())
    }

    /// Handles the final partial sequence and returns the statistics and per-source tallies.
    pub fn finish(
        mut self,
        sink: &mut dyn ExampleSink,
    ) -> Result<(PackingStats, BTreeMap<Arc<str>, SourceTally>), SchemaError> {
        let left = self.open.tokens.len();
        if left > 0 {
            match self.final_partial {
                FinalPartial::Drop => {
                    self.stats.dropped_tokens += left as u64;
                    self.stats.dropped_sequences += 1;
                }
                FinalPartial::Pad => self.emit(sink, self.seq_len - left)?,
            }
        }
        Ok((self.stats, self.tally))
    }
}

/// One-example-per-pair packing for instruction-tuning corpora.
#[derive(Debug)]
pub struct ExamplePacker {
    max_input_len: usize,
    max_target_len: usize,
    eod_id: u32,
    row: Vec<u32>,
    stats: PackingStats,
    tally: BTreeMap<Arc<str>, SourceTally>,
}

impl ExamplePacker {
    pub fn new(max_input_len: u32, max_target_len: u32, eod_id: u32) -> Self {
        ExamplePacker {
            max_input_len: max_input_len as usize,
            max_target_len: max_target_len as usize,
            eod_id,
            row: Vec::new(),
            stats: PackingStats::default(),
            tally: BTreeMap::new(),
        }
    }

    /// Writes one (input, target) example.
    pub fn push_pair(
        &mut self,
        input: &[u32],
        target: &[u32],
        source: &Arc<str>,
        origin: &str,
        sink: &mut dyn ExampleSink,
    ) -> Result<(), SchemaError> {
        self.stats.documents += 1;
        let input_len = input.len().min(self.max_input_len);
        if input_len < input.len() {
            self.stats.truncated_inputs += 1;
        }
        self.row.clear();
        self.row.extend_from_slice(&input[..input_len]);
        let target_len = target.len().min(self.max_target_len);
        self.row.extend_from_slice(&target[..target_len]);
        if target.len() < self.max_target_len {
            self.row.push(self.eod_id);
        } else {
            // Target + EOD does not fit: the target is cut (or exactly fills the budget) and
            // the EOD is lost.
            self.stats.truncated_targets += 1;
        }
        sink.push_example(
            &self.row,
            ExampleMeta {
                source,
                prefix_len: input_len as u32,
                doc_starts: &[],
                origin: Some(origin),
            },
        )?;
        let entry = self.tally.entry(source.clone()).or_default();
        entry.tokens += self.row.len() as u64;
        entry.examples += 1;
        Ok(())
    }

    pub fn finish(self) -> (PackingStats, BTreeMap<Arc<str>, SourceTally>) {
        (self.stats, self.tally)
    }
}

/// The packer a corpus kind uses, behind one interface for the build.
#[derive(Debug)]
pub enum Packer {
    Sequences(SequencePacker),
    Examples(ExamplePacker),
}

impl Packer {
    /// Packs one record. A pair in a packed corpus becomes one document: its input tokens
    /// followed by its target tokens. A plain document in an examples corpus becomes an
    /// example with an empty input.
    pub fn push(
        &mut self,
        content: &TokenizedContent,
        source: &Arc<str>,
        origin: &str,
        sink: &mut dyn ExampleSink,
    ) -> Result<(), SchemaError> {
        match (self, content) {
            (Packer::Sequences(p), TokenizedContent::Text(ids)) => {
                p.push_document(ids, source, origin, sink)
            }
            (Packer::Sequences(p), TokenizedContent::Pair { input, target }) => {
                let joined: Vec<u32> = input.iter().chain(target).copied().collect();
                p.push_document(&joined, source, origin, sink)
            }
            (Packer::Examples(p), TokenizedContent::Pair { input, target }) => {
                p.push_pair(input, target, source, origin, sink)
            }
            (Packer::Examples(p), TokenizedContent::Text(ids)) => {
                p.push_pair(&[], ids, source, origin, sink)
            }
        }
    }

    pub fn finish(
        self,
        sink: &mut dyn ExampleSink,
    ) -> Result<(PackingStats, BTreeMap<Arc<str>, SourceTally>), SchemaError> {
        match self {
            Packer::Sequences(p) => p.finish(sink),
            Packer::Examples(p) => Ok(p.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOD: u32 = 0;
    const PAD: u32 = 1;

    fn src(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn packs_documents_across_sequences() {
        let mut sink = RecordingSink::default();
        let mut packer = SequencePacker::new(4, 2, EOD, PAD, FinalPartial::Drop);
        let (a, b) = (src("a"), src("b"));
        packer
            .push_document(&[10, 11], &a, "f:1", &mut sink)
            .unwrap();
        packer
            .push_document(&[20, 21, 22, 23], &b, "f:2", &mut sink)
            .unwrap();
        packer.push_document(&[30], &a, "f:3", &mut sink).unwrap();
        let (stats, tally) = packer.finish(&mut sink).unwrap();
        let seqs: Vec<&Vec<u32>> = sink.0.iter().map(|e| &e.tokens).collect();
        assert_eq!(seqs, [&vec![10, 11, EOD, 20], &vec![21, 22, 23, EOD]]);
        assert_eq!(sink.0[0].doc_starts, [3]);
        assert_eq!(sink.0[0].source, "a");
        assert_eq!(sink.0[1].doc_starts, Vec::<u32>::new());
        assert_eq!(sink.0[1].origin.as_deref(), Some("f:2"));
        assert_eq!(stats.documents, 3);
        assert_eq!(stats.dropped_tokens, 2);
        assert_eq!(stats.dropped_sequences, 1);
        assert_eq!(
            tally[&a],
            SourceTally {
                tokens: 3,
                examples: 1
            }
        );
        assert_eq!(
            tally[&b],
            SourceTally {
                tokens: 5,
                examples: 2
            }
        );
    }

    #[test]
    fn pads_the_final_sequence_when_asked() {
        let mut sink = RecordingSink::default();
        let mut packer = SequencePacker::new(4, 2, EOD, PAD, FinalPartial::Pad);
        packer
            .push_document(&[5, 6, 7, 8, 9], &src("x"), "f:1", &mut sink)
            .unwrap();
        let (stats, tally) = packer.finish(&mut sink).unwrap();
        assert_eq!(sink.0[1].tokens, [9, EOD, PAD, PAD]);
        assert_eq!(stats.padding_tokens, 2);
        assert_eq!(tally[&src("x")].tokens, 6);
    }

    #[test]
    fn examples_truncate_and_count() {
        let mut sink = RecordingSink::default();
        let mut packer = ExamplePacker::new(3, 3, EOD);
        let s = src("flan");
        packer
            .push_pair(&[1, 2], &[7, 8], &s, "f:0", &mut sink)
            .unwrap();
        packer
            .push_pair(&[1, 2, 3, 4], &[7, 8, 9], &s, "f:1", &mut sink)
            .unwrap();
        let (stats, tally) = packer.finish();
        assert_eq!(sink.0[0].tokens, [1, 2, 7, 8, EOD]);
        assert_eq!(sink.0[0].prefix_len, 2);
        assert_eq!(sink.0[1].tokens, [1, 2, 3, 7, 8, 9]);
        assert_eq!(sink.0[1].prefix_len, 3);
        assert_eq!(stats.truncated_inputs, 1);
        assert_eq!(stats.truncated_targets, 1);
        assert_eq!(
            tally[&s],
            SourceTally {
                tokens: 11,
                examples: 2
            }
        );
    }
}
