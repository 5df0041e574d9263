//! `redpack train-tokenizer` flags.

use std::path::PathBuf;

use clap::Args;

use super::build_corpus::FormatArg;

/// Train a byte-level BPE tokenizer (with [EOD] and [PAD]) on RedPajama / FLAN inputs.
#[derive(Debug, Clone, Args)]
pub struct TrainTokenizerArgs {
    /// Input file, directory (recursive, sorted) or glob; repeat for more.
    #[arg(long = "input", value_name = "PATH", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Input layout (default: detect per file).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Vocabulary entries, special tokens included.
    #[arg(long, value_name = "N", default_value_t = 32768)]
    pub vocab_size: usize,
    /// Pairs seen fewer times are never merged.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub min_frequency: u64,
    /// Train on at most this many bytes of text (the first records in input order).
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub max_bytes: u64,
    /// Worker threads (default, or 0: all cores). The result does not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Where to write tokenizer.json.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}
