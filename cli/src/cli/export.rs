//! `redpack export` arguments. Resolved in `commands::export`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Take a checkpoint or a corpus to other tools.
///
/// `--format hf` writes a checkpoint as a Hugging Face transformers model directory (config.json,
/// model.safetensors, tokenizer files and the modeling code, loaded with trust_remote_code=True:
/// DecLLM by AutoModelForCausalLM, RedLLM by AutoModelForSeq2SeqLM). `--format megatron` writes a
/// corpus as a Megatron-LM indexed dataset, PREFIX.bin and PREFIX.idx.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    redpack export --checkpoint runs/decllm --format hf --out decllm-hf\n  \
    redpack export --corpus redpack-default/packed --format megatron --out megatron/redpajama")]
pub struct ExportArgs {
    /// What to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The checkpoint to export (`--format hf`): a checkpoint directory, or a run directory
    /// (its latest healthy checkpoint).
    #[arg(long, value_name = "RUN", required_if_eq("format", "hf"))]
    pub checkpoint: Option<PathBuf>,
    /// The corpus to export (`--format megatron`).
    #[arg(long, value_name = "DIR", required_if_eq("format", "megatron"))]
    pub corpus: Option<PathBuf>,
    /// The model directory (hf) or the output prefix, without .bin/.idx (megatron).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// hf: the corpus whose tokenizer.json goes with the model (default: the training corpus
    /// the checkpoint's settings name); it must be the tokenizer the model was trained with.
    #[arg(long, value_name = "DIR")]
    pub tokenizer_corpus: Option<PathBuf>,
    /// hf: also write the CPU backend's log-probabilities on a fixed probe batch to FILE (JSON),
    /// the numbers the exported model must reproduce (tests/python/check_hf_export.py).
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// hf: replace an existing model directory.
    #[arg(long)]
    pub overwrite: bool,
    /// hf: skip the check of the checkpoint's weights against its recorded sha256.
    #[arg(long)]
    pub no_verify: bool,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A Hugging Face transformers model directory (from --checkpoint).
    Hf,
    /// A Megatron-LM indexed dataset, PREFIX.bin + PREFIX.idx (from --corpus).
    Megatron,
}
