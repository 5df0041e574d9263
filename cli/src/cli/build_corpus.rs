//! `redpack build-corpus` flags. Resolved with the pipeline file into
//! `pipeline::BuildSettings` by `commands::build_corpus`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Input layout (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Decide per file from its path and first records.
    Auto,
    /// RedPajama V1 JSONL (plain, gzip or zstd).
    Redpajama,
    /// FLAN Parquet or JSONL input/target pairs.
    Flan,
}

/// Stream, dedup, tokenize and pack RedPajama V1 / FLAN into a corpus directory.
///
/// Without arguments, builds the built-in default: writes a small sample corpus in every real
/// layout to ./redpack-default/raw, trains a small tokenizer on it, and builds a packed and an
/// examples corpus next to it. Run again, it rebuilds them from the same sample; if the files in
/// ./redpack-default/raw were edited it stops and says so (--overwrite rewrites them).
#[derive(Debug, Clone, Default, Args)]
pub struct BuildCorpusArgs {
    /// Pipeline file (see pipelines/*.toml); every flag below overrides its setting.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Input file, directory (read recursively, sorted) or glob; repeat for more, read in order.
    #[arg(long = "input", value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    /// Data manifest listing the input files, with sizes and sha256 sums to verify (instead of
    /// --input).
    #[arg(long, value_name = "FILE", conflicts_with = "inputs")]
    pub data_manifest: Option<PathBuf>,
    /// Directory the data manifest's paths are relative to (default: the current directory).
    #[arg(long, value_name = "DIR", requires = "data_manifest")]
    pub data_root: Option<PathBuf>,
    /// Input layout. Without a pipeline file and --seq-len / --prefix-len, inputs that are all
    /// FLAN (input/target pairs: --format flan, or found so by auto) build an examples corpus.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// tokenizer.json to encode with (default: train a byte-level BPE on the inputs).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Output corpus directory (required with inputs; the default build uses ./redpack-default).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Tokens per packed sequence.
    #[arg(long, value_name = "N")]
    pub seq_len: Option<u32>,
    /// Where the encoder input ends in a packed sequence (default: seq_len / 2).
    #[arg(long, value_name = "N")]
    pub prefix_len: Option<u32>,
    /// Hold out N of the documents kept after dedup for an evaluation corpus in OUT/eval/
    /// (stratified by source, chosen by a keyed hash of each document's PATH:LINE).
    #[arg(long, value_name = "N")]
    pub eval_docs: Option<u64>,
    /// Tokens per row of the packed evaluation corpus (default: 8 x --seq-len).
    #[arg(long, value_name = "N", requires = "eval_docs")]
    pub eval_seq_len: Option<u32>,
    /// Worker threads (default, or 0: all cores). The output does not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Keep exact and near duplicates.
    #[arg(long)]
    pub no_dedup: bool,
    /// Shuffle documents deterministically with this seed (default: input order).
    #[arg(long, value_name = "N")]
    pub shuffle_seed: Option<u64>,
    /// Fail when more than this fraction of the records read is rejected.
    #[arg(long, value_name = "F")]
    pub max_rejected_fraction: Option<f64>,
    /// Resident memory bound, e.g. 4GiB or 512MiB (default 4GiB). Dedup keys and the
    /// shuffle spill to the work directory beyond it. The output does not depend on it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// Continue an interrupted build in --out: finished input files and partitions are kept,
    /// the rest is redone. Inputs or settings that changed since are an error.
    #[arg(long)]
    pub resume: bool,
    /// Bytes the external sorters may buffer before spilling (default: a quarter of
    /// --memory-limit). For tests of the spill paths.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, hide = true)]
    pub sort_budget: Option<u64>,
    /// Replace the corpus already in --out. Without it a rebuild over a corpus is refused. The
    /// corpus in place stays readable until the new one is completely written; a build that
    /// fails leaves it as it was. For the default build (no arguments), also rewrite
    /// ./redpack-default/raw when its files differ from the built-in sample.
    #[arg(long)]
    pub overwrite: bool,
    /// Write a corpus even when no example comes out (empty inputs, every record rejected or
    /// shorter than --seq-len); without it that is an error.
    #[arg(long)]
    pub allow_empty: bool,
    /// Keep the work directory (OUT/.redpack-work) after the build, for inspection.
    #[arg(long)]
    pub keep_work: bool,
    /// List the build's stages in order, one per line, and exit.
    #[arg(long, exclusive = true)]
    pub stages: bool,
    /// Show how far the build in --out has come (units done per stage) and exit.
    #[arg(long, requires = "out", conflicts_with = "stage")]
    pub status: bool,
    /// Run only this stage (plan, scan, dedup, tokenize, finish): worker --worker of
    /// --workers. Each stage refuses to start until the previous one is complete.
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,
    /// Workers sharing the stage (default: SLURM_ARRAY_TASK_COUNT, else 1).
    #[arg(long, value_name = "N", requires = "stage")]
    pub workers: Option<usize>,
    /// This worker's index, 0-based (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else
    /// JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs), else 0).
    #[arg(long, value_name = "I", requires = "stage")]
    pub worker: Option<usize>,
    /// Print the build report as JSON on stdout (no progress bar, no table).
    #[arg(long)]
    pub json: bool,
}

fn parse_size(text: &str) -> Result<u64, String> {
    redpack::pipeline::config::parse_byte_size(text)
}
