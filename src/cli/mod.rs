//! Command-line definitions: clap derive structs only, doc comments as help. Settings are resolved
//! from these (and pipeline files) in `commands/` before any work starts.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "redpack", version, about = "Training-ready shards from RedPajama V1 and FLAN; RedLLM and DecLLM training on them")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream, dedup, tokenize and pack RedPajama V1 / FLAN into a corpus directory.
    BuildCorpus,
    /// Pretrain or finetune RedLLM / DecLLM from a corpus.
    Train,
    /// Score a checkpoint on a corpus: loss and perplexity, overall and per source.
    Eval,
    /// Summarize, decode or verify a corpus directory.
    Inspect,
}
