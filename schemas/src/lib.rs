//! redpack-schemas: the on-disk contract between the corpus builder and the trainer.
//!
//! A corpus is a directory holding `manifest.json`, a copy of the tokenizer, and shards: each a
//! token file (`shard-NNNNN.tokens`: 32-byte header, little-endian ids) and an Arrow IPC example
//! index (`shard-NNNNN.index.arrow`). `README.md` beside this crate specifies the format
//! completely. [`CorpusWriter`] writes one; [`Corpus`] reads and verifies one.

pub mod atomic;
mod error;
mod index;
pub mod manifest;
mod mmap;
mod reader;
mod tokens;
mod verify;
mod writer;

pub use error::{Result, SchemaError};
pub use index::index_schema;
pub use manifest::{
    Counts, InputEntry, Kind, Layout, Manifest, PackingStats, ShardEntry, Split, SplitCounts,
    SplitName, TokenizerInfo, FORMAT_VERSION, MANIFEST_FILE, MAX_SEQ_LEN,
};
pub use mmap::Mmap;
pub use reader::{Corpus, Example};
pub use tokens::{
    TokenDtype, TokenSlice, TokensHeader, HEADER_BYTES, TOKENS_MAGIC, TOKENS_VERSION,
};
pub use verify::VerifyReport;
pub use writer::{
    hash_file, hex, remove_old_shards, shard_file_names, CorpusInfo, CorpusWriter, ExampleMeta,
    WriterOptions, DEFAULT_MAX_SHARD_TOKENS,
};
