//! `redpack train` and `redpack eval` flags. Resolved with the recipe file into
//! `redpack_trainer::run::TrainSettings` by `commands::train`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Model architecture (`--arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    /// DecLLM: decoder-only, causal LM.
    Dec,
    /// RedLLM: encoder-decoder, prefix LM.
    Red,
}

/// Training mode (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Pretraining on a packed corpus (RedPajama).
    Pretrain,
    /// Instruction tuning on an examples corpus (FLAN).
    Finetune,
}

/// Where the model runs (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when a GPU is usable (driver, NVRTC and a device found), else the CPU, with a log
    /// line that says why.
    #[default]
    Auto,
    /// The f32 CPU reference backend.
    Cpu,
    /// An NVIDIA GPU (the first one).
    Cuda,
}

/// How the CUDA backend computes matrix products (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// bf16 operands, f32 accumulation; f32 weights, optimizer state and everything else.
    Bf16,
    /// f32 everywhere (slower; for checking against the CPU).
    F32,
}

/// Pretrain or finetune RedLLM / DecLLM from a corpus.
///
/// Settings come from the mode's defaults (the paper's recipe), then --config, then these flags.
/// The run directory gets metrics.jsonl (one JSON object per step) and checkpoints/step-N/.
#[derive(Debug, Clone, Args)]
#[command(after_help = redpack_trainer::backend::CUDA_ENVIRONMENT)]
pub struct TrainArgs {
    /// Recipe file (see trainer/configs/*.toml); flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Architecture (required unless the recipe sets it).
    #[arg(long, value_enum)]
    pub arch: Option<ArchArg>,
    /// Mode: pretrain needs a packed corpus, finetune an examples corpus.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Corpus directory (from `redpack build-corpus`).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Run directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Model size: tiny, small, 150m, 1b, 2b, 4b, 8b.
    #[arg(long, value_name = "NAME")]
    pub size: Option<String>,
    /// Model width, over the size preset (likewise the dimension flags below; the recipe's
    /// `[model]` table sets them too, plus rope_base and norm_eps). With --resume or --init the
    /// model is the checkpoint's and a dimension given here must match it.
    #[arg(long, value_name = "N")]
    pub d_model: Option<usize>,
    /// SwiGLU hidden width.
    #[arg(long, value_name = "N")]
    pub d_ffn: Option<usize>,
    /// Attention heads.
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// Width of each head (even, for rotary embeddings).
    #[arg(long, value_name = "N")]
    pub head_dim: Option<usize>,
    /// DecLLM layers; for RedLLM, the layers of each stack.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// RedLLM encoder layers (over --layers).
    #[arg(long, value_name = "N")]
    pub encoder_layers: Option<usize>,
    /// RedLLM decoder layers (over --layers).
    #[arg(long, value_name = "N")]
    pub decoder_layers: Option<usize>,
    /// Optimizer steps (the run's end; the cosine schedule decays to it).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Sequences per optimizer step.
    #[arg(long, value_name = "N", conflicts_with = "batch_tokens")]
    pub batch: Option<u64>,
    /// Tokens per optimizer step (converted to sequences of the corpus's longest row).
    #[arg(long, value_name = "N")]
    pub batch_tokens: Option<u64>,
    /// Micro-batches per step (gradient accumulation); must divide the batch.
    #[arg(long, value_name = "N")]
    pub accum: Option<u64>,
    /// Peak learning rate (the constant rate when finetuning).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Seed of initialization, data order and dropout.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Write a checkpoint every N steps (and always at the end).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Keep only the newest N checkpoints (0: keep all).
    #[arg(long, value_name = "N")]
    pub keep_checkpoints: Option<u64>,
    /// Clip the global gradient norm to this value.
    #[arg(long, value_name = "X")]
    pub grad_clip: Option<f64>,
    /// z-loss coefficient (default: 1e-4 pretraining, 0 finetuning).
    #[arg(long, value_name = "X")]
    pub z_loss: Option<f32>,
    /// Dropout (default: 0 pretraining, 0.05 finetuning).
    #[arg(long, value_name = "P")]
    pub dropout: Option<f32>,
    /// DecLLM: bidirectional attention over the input part ("DecLLM + BiAttn").
    #[arg(long)]
    pub bidirectional_prefix: bool,
    /// Reset attention at document boundaries (off in the paper).
    #[arg(long)]
    pub reset_attention: bool,
    /// Start from this checkpoint's weights with a fresh optimizer (a checkpoint or run dir).
    #[arg(long, value_name = "CKPT")]
    pub init: Option<PathBuf>,
    /// Continue the run in --out from its latest healthy checkpoint (an error when there is
    /// none). The corpus (its manifest's sha256), tokenizer, model, seed, batch and accumulation
    /// must be the run's.
    #[arg(long)]
    pub resume: bool,
    /// Replace the run already in --out (its checkpoints and metrics are removed once the new
    /// run has passed its checks). Without it, a new run into a run directory is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Health policy: stop when a step's loss exceeds X times its baseline, the larger of
    /// ln(vocab) and a moving average of the earlier losses (decay 0.9); 0 turns the check off
    /// [default: 3; recipe: [health] spike_factor]. A non-finite loss, gradient norm or update
    /// always stops the run, and so does a gradient norm of 0 (<= 1e-12) while the loss is above
    /// 1e-3 unless --allow-zero-grad. A stopped run exits 1 naming the last good checkpoint; the
    /// checkpoint of the step before the failed one is marked unhealthy (its weights produced
    /// the failure) and is never resumed from.
    #[arg(long, value_name = "X")]
    pub spike_factor: Option<f64>,
    /// Go on when the gradient norm collapses to 0 while the loss is not about 0 (recipe:
    /// [health] stop_on_zero_grad = false).
    #[arg(long)]
    pub allow_zero_grad: bool,
    /// Skip the integrity checks: the sha256 of each token file (checked once per shard, before
    /// training on it) and of the checkpoint loaded by --resume or --init.
    #[arg(long)]
    pub no_verify: bool,
    /// Validate on this corpus while training (same kind and tokenizer as --data, e.g. the
    /// `eval/` split of build-corpus --eval-docs): its loss goes into metrics.jsonl, and a
    /// finetuning run keeps its best checkpoint as checkpoints/best. Recipe: [eval] data.
    #[arg(long, value_name = "DIR")]
    pub eval_data: Option<PathBuf>,
    /// Validate after every N steps and after the last [default: --checkpoint-every].
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Score only the first M rows of the eval corpus [default: all].
    #[arg(long, value_name = "M")]
    pub eval_rows: Option<u64>,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Matrix-product precision on CUDA (default bf16); the CPU computes in f32 only.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// CPU threads (0 or default: all cores). Results do not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Data-parallel training, one process per GPU, launched by torchrun (WORLD_SIZE, RANK,
    /// LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or Slurm (SLURM_NTASKS, SLURM_PROCID,
    /// SLURM_LOCALID, SLURM_JOB_NODELIST): how the ranks find rank 0, file:PATH (a file on a
    /// shared filesystem) or tcp:HOST:PORT [default: MASTER_ADDR:MASTER_PORT, or the job's
    /// first node and port 29500].
    #[arg(long, value_name = "file:PATH|tcp:HOST:PORT")]
    pub rendezvous: Option<String>,
    /// Seconds the ranks wait for each other at the rendezvous.
    #[arg(long, value_name = "S", default_value_t = 600)]
    pub rendezvous_timeout: u64,
    /// Seconds a rank may stay behind a collective the other ranks wait in (or no rank issue
    /// a collective) before the job stops with an error naming it: a hung rank. Longer than the
    /// slowest step, evaluation or checkpoint.
    #[arg(long, value_name = "S", default_value_t = 1800)]
    pub hang_timeout: u64,
    /// Seconds a rank may send no heartbeat (one a second, from a thread of its own) before the
    /// job stops with an error naming it: a stopped or frozen process.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub heartbeat_timeout: u64,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Score a checkpoint on a corpus: loss and perplexity, overall and per source.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Checkpoint directory, a file inside one, or a run directory (its latest checkpoint).
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// Corpus directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Context lengths L, comma-separated: each row is cut to its first L tokens (shorter rows
    /// are skipped and counted) and every (L, --prefix-len) pair is scored. Each L is at most the
    /// corpus's row length.
    #[arg(long, value_name = "L,...", value_delimiter = ',')]
    pub lengths: Vec<usize>,
    /// Prefix lengths k, comma-separated: score positions >= k given everything before, for
    /// either architecture (RedLLM encodes [0, k)), so that RedLLM and DecLLM numbers compare.
    /// One value without --lengths scores whole rows; default: each corpus's own objective.
    #[arg(long, value_name = "K,...", value_delimiter = ',')]
    pub prefix_len: Vec<usize>,
    /// Write the mean log-probability of the true token by position (buckets [2^b, 2^(b+1)))
    /// for every (L, k) pair: CSV (`.csv`) or JSON Lines (`.jsonl`). Selects the grid
    /// evaluation (at the corpus's row length when --lengths is absent).
    #[arg(long, value_name = "FILE")]
    pub positions: Option<PathBuf>,
    /// Rows per forward pass (1 to 4096).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub batch: usize,
    /// Score only the first N examples (rows, in corpus order).
    #[arg(long, value_name = "N", visible_alias = "max-rows")]
    pub max_examples: Option<u64>,
    /// Skip the integrity checks: the sha256 of the checkpoint's model.safetensors and of each
    /// token file read.
    #[arg(long)]
    pub no_verify: bool,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Matrix-product precision on CUDA (default bf16); the CPU computes in f32 only.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// CPU threads (0 or default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print the report as JSON: `{"loss", "ppl", "tokens", "sources": {...}, ...}`, or in grid
    /// mode (--lengths, several --prefix-len, or --positions) `{"arch", "attention", "scored",
    /// "source_average", "rows_read", "results": [...], "peak_rss_bytes", ...}`.
    #[arg(long)]
    pub json: bool,
}
