//! `redpack eval-tasks` flags, resolved into `redpack_trainer::tasks` settings by
//! `commands::eval_tasks`.

use std::path::PathBuf;

use clap::Args;

use super::checkpoint_model::CheckpointModelArgs;

#[derive(Debug, Args)]
pub struct EvalTasksArgs {
    /// Checkpoint directory, a file inside one, or a run directory (its latest healthy
    /// checkpoint).
    #[arg(long, value_name = "RUN")]
    pub checkpoint: PathBuf,
    /// Comma-separated tasks, or `paper` for all of them: boolq, hellaswag, rte, arc_easy,
    /// arc_challenge, anli_r1, anli_r2, anli_r3, commonsense_qa, strategyqa, triviaqa,
    /// unifiedqa, mmlu, gsm8k, bbh, wmt_en_de, wmt_en_zh (`anli`, `arc`, `wmt`: their group).
    #[arg(long, value_name = "LIST", default_value = "paper")]
    pub tasks: String,
    /// Demonstrations per prompt: `paper` (5; BBH 3, GSM8K 8, CommonsenseQA 7, StrategyQA 6) or
    /// a number for every task.
    #[arg(long, value_name = "paper|N", default_value = "paper")]
    pub shots: String,
    /// The folder holding the tasks' files, as `redpack fetch --manifest
    /// data-manifests/eval-tasks.toml --out DIR` lays them out.
    #[arg(long, value_name = "DIR")]
    pub data_root: PathBuf,
    /// Evaluate only the first N examples of each task.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Seed of the demonstration draws.
    #[arg(long, value_name = "S", default_value_t = 1234)]
    pub seed: u64,
    /// Examples sent to the model together (1 to 4096).
    #[arg(long, value_name = "B", default_value_t = 8)]
    pub batch: usize,
    /// The longest sequence (prompt and answer) the model is run on; longer prompts lose their
    /// first tokens (counted as `truncated`).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub max_len: usize,
    #[command(flatten)]
    pub model: CheckpointModelArgs,
    /// Print the report as JSON: settings, per task `task`, `scoring`, `examples`, `shots`,
    /// `groups`, `acc`/`acc_norm` (multiple choice), `exact_match` (generative), `chrf`
    /// (translation), `score`, `truncated`; `average` and `examples` over the tasks.
    #[arg(long)]
    pub json: bool,
}
