//! `redpack generate` flags, resolved into `redpack_trainer::generate` options by
//! `commands::generate`.

use std::path::PathBuf;

use clap::{ArgGroup, Args};

use super::checkpoint_model::CheckpointModelArgs;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "prompts"])))]
pub struct GenerateArgs {
    /// Checkpoint directory, a file inside one, or a run directory (its latest healthy
    /// checkpoint).
    #[arg(long, value_name = "RUN")]
    pub checkpoint: PathBuf,
    /// One prompt.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// JSON Lines, one prompt per line: `{"prompt": "...", "stop": ["..."]}` (`stop`
    /// optional: stop sequences, kept in the output). Blank lines are skipped.
    #[arg(long, value_name = "FILE.jsonl")]
    pub prompts: Option<PathBuf>,
    /// At most this many new tokens per prompt.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Greedy decoding: the most likely token at every step (the default).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "seed"])]
    pub greedy: bool,
    /// Sample from softmax(logits / T) instead of decoding greedily.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// With --temperature: sample only among the most likely tokens whose probability reaches P.
    #[arg(long, value_name = "P", requires = "temperature")]
    pub top_p: Option<f32>,
    /// With --temperature: the seed of the draws (the same seed gives the same text).
    #[arg(long, value_name = "S", requires = "temperature")]
    pub seed: Option<u64>,
    /// Prompts decoded together (1 to 4096).
    #[arg(long, value_name = "B", default_value_t = 8)]
    pub batch: usize,
    /// The longest sequence (prompt and output) the model is run on.
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub max_len: usize,
    #[command(flatten)]
    pub model: CheckpointModelArgs,
    /// Print one JSON object per prompt: `{"index", "prompt", "completion", "prompt_tokens",
    /// "tokens", "stop"}` (`stop`: `eod`, `stop` or `length`).
    #[arg(long)]
    pub json: bool,
}
