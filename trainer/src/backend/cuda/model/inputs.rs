//! A micro-batch's inputs for the GPU model, built on the host ahead of the step and packed into
//! one array of 32-bit words, so that they reach the device in one copy (from pinned memory,
//! `staging.rs`) instead of a dozen small ones spread through the step.
//!
//! The inputs are what the plan in `crate::model` derives from a batch: the token streams (tokens,
//! rows, positions, documents) with the embedding backward's chains, the attention rows, the scored
//! predictions and, per logits chunk, their stream indices, targets and chains. (The RoPE tables
//! depend only on the model and the sequence length; the backend keeps them on the device.)
//! Everything here is host code: `BatchInputs::build` runs on the data loader's thread (through the
//! stager) or, without one, on the training thread just before the step.
//!
//! Words hold `u32` values as they are and `i32` as their two's-complement bits (each part's
//! doc says which), so the device side reinterprets a part in place.

use crate::backend::cuda::kernels::TokenChains;
use crate::backend::BackendError;
use crate::batch::{Batch, StepOptions};
use crate::config::{Arch, ModelConfig};
use crate::model::attention::AttnRow;
use crate::model::stream::{scored_tokens, Scored, Stream};

/// Logits held at once: `chunk x vocab` f32 values (64 Mi, 256 MiB).
pub(super) const LOGITS_BUDGET: usize = 1 << 26;

/// Scored tokens per logits chunk for a vocabulary.
pub(super) fn chunk_len(vocab: usize) -> usize {
    (LOGITS_BUDGET / vocab.max(1)).clamp(1, 8192)
}

/// A range of the word array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Part {
    pub offset: usize,
    pub len: usize,
}

/// A token stream's parts (`crate::model::stream::Stream` and its `TokenChains`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParts {
    pub len: usize,
    pub tokens: Part,
    pub rows: Part,
    pub positions: Part,
    pub docs: Part,
    /// `i32` words.
    pub chain_first: Part,
    /// `i32` words.
    pub chain_next: Part,
}

/// Attention rows: six `i32` words per row (`AttnRow::fields`), and the longest query and key
/// spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsParts {
    pub desc: Part,
    pub rows: usize,
    pub max_q: usize,
    pub max_k: usize,
}

/// One logits chunk: the stream index and target of each scored token, and the chains of the
/// indices (`i32` words) for the scatter back into the hidden-state gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParts {
    pub index: Part,
    pub targets: Part,
    pub first: Part,
    pub next: Part,
}

/// The streams and attention rows of each architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelParts {
    /// Nothing is scored: the loss is empty and every gradient zero (nothing to upload).
    Empty,
    Dec {
        stream: StreamParts,
        rows: RowsParts,
    },
    Red {
        enc: StreamParts,
        dec: StreamParts,
        enc_rows: RowsParts,
        dec_rows: RowsParts,
        cross_rows: RowsParts,
    },
}

/// The options a batch's inputs depend on (dropout and z-loss do not change them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputOptions {
    pub loss_on_prefix: bool,
    pub bidirectional_prefix: bool,
}

impl From<&StepOptions> for InputOptions {
    fn from(o: &StepOptions) -> Self {
        InputOptions {
            loss_on_prefix: o.loss_on_prefix,
            bidirectional_prefix: o.bidirectional_prefix,
        }
    }
}

/// A micro-batch's model inputs in one word array.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchInputs {
    pub words: Vec<u32>,
    pub model: ModelParts,
    pub scored: Vec<Scored>,
    pub chunks: Vec<ChunkParts>,
    /// Positions the RoPE tables must cover (`batch.seq + 1`).
    pub positions: usize,
    /// Batch rows (for the per-row losses).
    pub rows: usize,
    /// What the inputs were built for, checked against the step that uses them.
    pub options: InputOptions,
    pub arch: Arch,
}

/// Appends typed arrays to the word array.
#[derive(Default)]
struct Packer {
    words: Vec<u32>,
}

impl Packer {
    fn push(&mut self, values: impl ExactSizeIterator<Item = u32>) -> Part {
        let part = Part {
            offset: self.words.len(),
            len: values.len(),
        };
        self.words.extend(values);
        part
    }

    fn u32s(&mut self, v: &[u32]) -> Part {
        self.push(v.iter().copied())
    }

    fn i32s(&mut self, v: &[i32]) -> Part {
        self.push(v.iter().map(|&x| x as u32))
    }

    fn stream(&mut self, s: &Stream) -> StreamParts {
        let chains = TokenChains::new(&s.tokens);
        StreamParts {
            len: s.len(),
            tokens: self.u32s(&s.tokens),
            rows: self.u32s(&s.rows),
            positions: self.u32s(&s.positions),
            docs: self.u32s(&s.docs),
            chain_first: self.i32s(&chains.first),
            chain_next: self.i32s(&chains.next),
        }
    }

    fn rows(&mut self, rows: &[AttnRow]) -> Result<RowsParts, BackendError> {
        let mut desc = Vec::with_capacity(rows.len() * 6);
        for r in rows {
            for v in r.fields() {
                desc.push(i32::try_from(v).map_err(|_| {
                    BackendError::BadBatch(format!("attention span {v} exceeds i32"))
                })?);
            }
        }
        Ok(RowsParts {
            desc: self.i32s(&desc),
            rows: rows.len(),
            max_q: rows.iter().map(|r| r.q_len).max().unwrap_or(0),
            max_k: rows.iter().map(|r| r.k_len).max().unwrap_or(0),
        })
    }
}

impl BatchInputs {
    /// The inputs of `batch` (validated by the caller against `config`), derived as the CPU
    /// backend derives them (`crate::model`).
    pub fn build(
        config: &ModelConfig,
        batch: &Batch,
        options: InputOptions,
    ) -> Result<BatchInputs, BackendError> {
        let mut p = Packer::default();
        let (model, scored) = match config.arch {
            Arch::Dec => {
                let stream = Stream::dec_input(batch);
                let scored = scored_tokens(batch, &stream, |r| match options.loss_on_prefix {
                    true => 1,
                    false => batch.prefix_len[r],
                });
                if scored.is_empty() {
                    (ModelParts::Empty, scored)
                } else {
                    let bidirectional = |r: usize| match options.bidirectional_prefix {
                        true => batch.prefix_len[r],
                        false => 0,
                    };
                    let rows = p.rows(&stream.self_rows(true, &bidirectional))?;
                    let stream = p.stream(&stream);
                    (ModelParts::Dec { stream, rows }, scored)
                }
            }
            Arch::Red => {
                let enc_stream = Stream::encoder_input(batch);
                let dec_stream = Stream::red_decoder_input(batch);
                let scored = scored_tokens(batch, &dec_stream, |r| batch.prefix_len[r]);
                if scored.is_empty() {
                    (ModelParts::Empty, scored)
                } else {
                    let enc_rows = p.rows(&enc_stream.self_rows(false, &|_| 0))?;
                    let dec_rows = p.rows(&dec_stream.self_rows(true, &|_| 0))?;
                    let cross_rows = p.rows(&dec_stream.cross_rows(&enc_stream))?;
                    let enc = p.stream(&enc_stream);
                    let dec = p.stream(&dec_stream);
                    let model = ModelParts::Red {
                        enc,
                        dec,
                        enc_rows,
                        dec_rows,
                        cross_rows,
                    };
                    (model, scored)
                }
            }
        };
        let mut chunks = Vec::new();
        if model != ModelParts::Empty {
            for chunk in scored.chunks(chunk_len(config.vocab_size)) {
                let index: Vec<u32> = chunk.iter().map(|s| s.index as u32).collect();
                let targets: Vec<u32> = chunk.iter().map(|s| s.target).collect();
                let chains = TokenChains::new(&index);
                chunks.push(ChunkParts {
                    index: p.u32s(&index),
                    targets: p.u32s(&targets),
                    first: p.i32s(&chains.first),
                    next: p.i32s(&chains.next),
                });
            }
        }
        Ok(BatchInputs {
            words: p.words,
            model,
            scored,
            chunks,
            positions: batch.seq + 1,
            rows: batch.rows,
            options,
            arch: config.arch,
        })
    }

    /// The `u32` words of `part`.
    pub fn u32s(&self, part: Part) -> &[u32] {
        &self.words[part.offset..part.offset + part.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i32s(inputs: &BatchInputs, part: Part) -> Vec<i32> {
        inputs.u32s(part).iter().map(|&w| w as i32).collect()
    }

    fn check_stream(inputs: &BatchInputs, parts: &StreamParts, s: &Stream) {
        assert_eq!(parts.len, s.len());
        assert_eq!(inputs.u32s(parts.tokens), s.tokens.as_slice());
        assert_eq!(inputs.u32s(parts.rows), s.rows.as_slice());
        assert_eq!(inputs.u32s(parts.positions), s.positions.as_slice());
        assert_eq!(inputs.u32s(parts.docs), s.docs.as_slice());
        let chains = TokenChains::new(&s.tokens);
        assert_eq!(i32s(inputs, parts.chain_first), chains.first);
        assert_eq!(i32s(inputs, parts.chain_next), chains.next);
    }

    fn check_rows(inputs: &BatchInputs, parts: &RowsParts, rows: &[AttnRow]) {
        let want: Vec<i32> = rows
            .iter()
            .flat_map(|r| r.fields().into_iter().map(|v| v as i32))
            .collect();
        assert_eq!(i32s(inputs, parts.desc), want);
        assert_eq!(parts.rows, rows.len());
        assert_eq!(parts.max_q, rows.iter().map(|r| r.q_len).max().unwrap());
        assert_eq!(parts.max_k, rows.iter().map(|r| r.k_len).max().unwrap());
    }

    /// A batch of rows of different lengths, prefixes and document starts.
    fn batch(vocab: usize) -> Batch {
        let mut b = Batch::random_full(3, 12, vocab, 7);
        b.length = vec![12, 7, 9];
        b.prefix_len = vec![4, 2, 5];
        b.doc_starts = vec![vec![6], vec![], vec![3, 7]];
        b
    }

    #[test]
    fn decllm_inputs_are_the_cpu_models_streams_rows_and_scored_tokens() {
        let mut config = ModelConfig::preset(Arch::Dec, "tiny", 50).unwrap();
        // A vocabulary of 2^23 makes logits chunks of 8 tokens, so the scored tokens span
        // several (the inputs need only the size, no parameters).
        config.vocab_size = 1 << 23;
        assert_eq!(chunk_len(config.vocab_size), 8);
        let b = batch(50);
        for (loss_on_prefix, bidirectional_prefix) in [(true, false), (false, true)] {
            let options = InputOptions {
                loss_on_prefix,
                bidirectional_prefix,
            };
            let inputs = BatchInputs::build(&config, &b, options).unwrap();
            let stream = Stream::dec_input(&b);
            let ModelParts::Dec { stream: sp, rows } = inputs.model else {
                panic!("not DecLLM parts: {:?}", inputs.model);
            };
            check_stream(&inputs, &sp, &stream);
            let bidi = |r: usize| {
                if bidirectional_prefix {
                    b.prefix_len[r]
                } else {
                    0
                }
            };
            check_rows(&inputs, &rows, &stream.self_rows(true, &bidi));
            let want = scored_tokens(&b, &stream, |r| {
                if loss_on_prefix {
                    1
                } else {
                    b.prefix_len[r]
                }
            });
            assert_eq!(inputs.scored, want);
            assert_eq!(inputs.chunks.len(), want.len().div_ceil(8));
            assert!(inputs.chunks.len() > 1);
            for (c, chunk) in inputs.chunks.iter().zip(want.chunks(8)) {
                let index: Vec<u32> = chunk.iter().map(|s| s.index as u32).collect();
                assert_eq!(inputs.u32s(c.index), index.as_slice());
                let targets: Vec<u32> = chunk.iter().map(|s| s.target).collect();
                assert_eq!(inputs.u32s(c.targets), targets.as_slice());
                let chains = TokenChains::new(&index);
                assert_eq!(i32s(&inputs, c.first), chains.first);
                assert_eq!(i32s(&inputs, c.next), chains.next);
            }
            assert_eq!(inputs.positions, b.seq + 1);
            assert_eq!(inputs.options, options);
        }
    }

    #[test]
    fn redllm_inputs_are_the_cpu_models_streams_and_rows() {
        let config = ModelConfig::preset(Arch::Red, "tiny", 50).unwrap();
        let b = batch(50);
        let options = InputOptions {
            loss_on_prefix: false,
            bidirectional_prefix: false,
        };
        let inputs = BatchInputs::build(&config, &b, options).unwrap();
        let ModelParts::Red {
            enc,
            dec,
            enc_rows,
            dec_rows,
            cross_rows,
        } = inputs.model
        else {
            panic!("not RedLLM parts: {:?}", inputs.model);
        };
        let (es, ds) = (Stream::encoder_input(&b), Stream::red_decoder_input(&b));
        check_stream(&inputs, &enc, &es);
        check_stream(&inputs, &dec, &ds);
        check_rows(&inputs, &enc_rows, &es.self_rows(false, &|_| 0));
        check_rows(&inputs, &dec_rows, &ds.self_rows(true, &|_| 0));
        check_rows(&inputs, &cross_rows, &ds.cross_rows(&es));
        assert_eq!(inputs.scored, scored_tokens(&b, &ds, |r| b.prefix_len[r]));
        // Every part lies inside the words, and the parts tile them without overlap.
        let mut parts: Vec<Part> = [enc, dec]
            .iter()
            .flat_map(|s| {
                [
                    s.tokens,
                    s.rows,
                    s.positions,
                    s.docs,
                    s.chain_first,
                    s.chain_next,
                ]
            })
            .chain([enc_rows.desc, dec_rows.desc, cross_rows.desc])
            .chain(
                inputs
                    .chunks
                    .iter()
                    .flat_map(|c| [c.index, c.targets, c.first, c.next]),
            )
            .collect();
        parts.sort_by_key(|p| p.offset);
        let mut end = 0;
        for p in parts {
            assert_eq!(p.offset, end, "parts tile the words");
            end += p.len;
        }
        assert_eq!(end, inputs.words.len());
    }

    #[test]
    fn a_batch_with_nothing_scored_has_no_inputs_to_upload() {
        let config = ModelConfig::preset(Arch::Dec, "tiny", 50).unwrap();
        let mut b = batch(50);
        // Every row scores from its prefix on, and each prefix covers the whole row.
        b.prefix_len = b.length.clone();
        let options = InputOptions {
            loss_on_prefix: false,
            bidirectional_prefix: false,
        };
        let inputs = BatchInputs::build(&config, &b, options).unwrap();
        assert_eq!(inputs.model, ModelParts::Empty);
        assert!(inputs.words.is_empty() && inputs.chunks.is_empty());
    }

    #[test]
    fn logits_chunks_hold_at_most_the_budget() {
        assert_eq!(chunk_len(32768), 2048);
        assert_eq!(chunk_len(32000), 2097);
        assert_eq!(chunk_len(1), 8192);
        assert_eq!(chunk_len(1 << 30), 1);
    }
}
