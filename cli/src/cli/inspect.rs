//! `redpack inspect` arguments.

use std::path::PathBuf;

use clap::Args;

use redpack::inspect::ExampleRange;

/// Summarize, decode or verify a corpus directory.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    redpack inspect out/corpus                 summary: counts, sources, length histograms\n  \
    redpack inspect out/corpus --show 10..13   decode examples 10, 11, 12\n  \
    redpack inspect out/corpus --verify        recompute checksums, check every invariant")]
pub struct InspectArgs {
    /// The corpus directory (the one holding manifest.json).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Print examples, decoded with the corpus's tokenizer: `7`, `10..13` (end excluded),
    /// `10..=12`, `10..`. The prefix/target split and document starts (⟦doc⟧) are marked.
    #[arg(long, value_name = "RANGE")]
    pub show: Option<ExampleRange>,

    /// With --show: print token ids instead of decoded text.
    #[arg(long, requires = "show")]
    pub raw: bool,

    /// Recompute every checksum and check every structural invariant; exit 1 naming the first
    /// bad shard and what is wrong.
    #[arg(long, conflicts_with = "show")]
    pub verify: bool,

    /// Print the summary (or, with --verify, the verification report) as JSON on stdout.
    #[arg(long, conflicts_with = "show")]
    pub json: bool,
}
