//! redpack: turn RedPajama V1 and FLAN into training-ready shards, train RedLLM and DecLLM on them.
//!
//! The library holds the corpus pipeline (input readers, dedup, tokenization, packing) and the
//! command implementations; the shard format lives in `redpack-schemas` and the trainer in
//! `redpack-trainer`.

pub mod cli;
pub mod commands;
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
