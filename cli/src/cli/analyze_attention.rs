//! `redpack analyze-attention` arguments.

use std::path::PathBuf;

use clap::Args;

/// The paper's "local attention probability" of a checkpoint on a corpus, per attention kind
/// and layer, and heat maps of one row's attention (CPU).
#[derive(Debug, Args)]
pub struct AnalyzeAttentionArgs {
    /// Checkpoint directory, a file inside one, or a run directory (its latest checkpoint).
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// Corpus directory; each analysed row is the first --length tokens of one of its rows.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Row length L (at most the corpus's row length; shorter rows are skipped).
    #[arg(long, value_name = "L")]
    pub length: usize,
    /// Prefix length k (1 <= k < L): RedLLM's encoder reads [0, k); for both architectures the
    /// decoder queries that predict tokens [k, L) are reported.
    #[arg(long, value_name = "K")]
    pub prefix_len: usize,
    /// Keys at distance < W from the query are local (cross-attention: the last W encoder
    /// positions).
    #[arg(long, value_name = "W", default_value_t = 5)]
    pub window: usize,
    /// Rows to analyse: the first N rows of at least L tokens, in corpus order.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub rows: u64,
    /// Directory for locality.json, locality.csv, locality_by_position.csv and the heat-map
    /// PNGs of the first row.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// CPU threads (0 or default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Skip the integrity checks: the sha256 of the checkpoint's model.safetensors and of each
    /// token file read.
    #[arg(long)]
    pub no_verify: bool,
}
