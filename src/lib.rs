//! redpack: turn RedPajama V1 and FLAN into training-ready corpora.
//!
//! The library is the corpus side: it reads inputs, removes duplicates, tokenizes, packs and
//! writes corpora, downloads inputs and summarizes corpora. It prints nothing and draws nothing:
//! errors are typed and the build reports progress through
//! [`pipeline::ProgressSink`]. The command line is the `redpack-cli` crate (binary `redpack`),
//! the corpus format `redpack-schemas`, training `redpack-trainer`.
//!
//! - [`input`]: find input files, tell their layout, stream them as records;
//! - [`record`]: what readers emit: records with provenance, rejects with their reason;
//! - [`dedup`]: exact and near-duplicate (MinHash LSH) removal;
//! - [`extsort`]: external sorting of fixed-size records, for dedup and the shuffle;
//! - [`tokenize`]: documents to token ids with a Hugging Face `tokenizer.json`;
//! - [`train_tokenizer`]: a byte-level BPE tokenizer trained on the inputs;
//! - [`pack`]: token streams into packed sequences or input/target examples;
//! - [`pipeline`]: the staged build that ties these together (`build-corpus`);
//! - [`sample`]: the built-in sample corpus and the synthetic benchmark corpus;
//! - [`fetch`]: download the files of a data manifest, resumably and verified;
//! - [`inspect`]: summaries of a corpus and its examples, decoded or as ids.

pub mod dedup;
pub mod extsort;
pub mod fetch;
pub mod input;
pub mod inspect;
pub mod pack;
pub mod pipeline;
pub mod record;
pub mod sample;
pub mod tokenize;
pub mod train_tokenizer;
