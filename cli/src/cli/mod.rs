//! Command-line definitions: clap derive structs only, doc comments as help. Settings are resolved
//! from these (and pipeline files) in `commands/` before any work starts.

use clap::{Parser, Subcommand};

pub mod analyze_attention;
pub mod build_corpus;
pub mod checkpoint_model;
pub mod eval_tasks;
pub mod export;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod study;
pub mod synth;
pub mod train;
pub mod train_tokenizer;

pub use build_corpus::BuildCorpusArgs;
pub use fetch::FetchArgs;
pub use inspect::InspectArgs;
pub use train::{EvalArgs, TrainArgs};
pub use train_tokenizer::TrainTokenizerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "redpack",
    version,
    about = "Training-ready shards from RedPajama V1 and FLAN; RedLLM and DecLLM training on them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream, dedup, tokenize and pack RedPajama V1 / FLAN into a corpus directory (no
    /// arguments: build the built-in sample into ./redpack-default).
    BuildCorpus(BuildCorpusArgs),
    /// Train a byte-level BPE tokenizer ([EOD], [PAD]) on RedPajama / FLAN inputs.
    TrainTokenizer(TrainTokenizerArgs),
    /// Pretrain or finetune RedLLM / DecLLM from a corpus.
    Train(Box<TrainArgs>),
    /// Score a checkpoint on a corpus: loss and perplexity, overall and per source.
    Eval(EvalArgs),
    /// Local attention probability and attention heat maps of a checkpoint on a corpus (CPU).
    AnalyzeAttention(analyze_attention::AnalyzeAttentionArgs),
    /// Summarize, decode or verify a corpus directory.
    Inspect(InspectArgs),
    /// Download the files a data manifest lists: parallel, resumable, size- and
    /// sha256-verified.
    Fetch(FetchArgs),
    /// Write a large synthetic RedPajama corpus with planted duplicate clusters (benchmarks).
    SynthCorpus(synth::SynthCorpusArgs),
    /// Run a study (a grid of pretraining and finetuning runs with their evaluations) from a
    /// study file, and report it: fits, plots and the paper's findings.
    Study(study::StudyArgs),
    /// Write a checkpoint as a Hugging Face transformers model, or a corpus as a Megatron-LM
    /// indexed dataset.
    Export(export::ExportArgs),
    /// Generate text from a checkpoint: KV-cache decoding, greedy or sampled, one prompt or a
    /// JSONL file of them.
    Generate(generate::GenerateArgs),
    /// Score a checkpoint on the paper's downstream tasks (few-shot, multiple choice,
    /// generative and translation), per task and on average.
    EvalTasks(eval_tasks::EvalTasksArgs),
}
