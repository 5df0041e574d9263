//! `redpack synth-corpus` arguments. Resolved into `sample::synthetic::SynthConfig` by
//! `commands::synth`.

use std::path::PathBuf;

use clap::Args;

/// Write a large synthetic RedPajama corpus (C4 and Common Crawl layouts) with planted exact
/// and near duplicate clusters, for scale tests and benchmarks.
///
/// Copies are placed in later files than their originals, so clusters span the workers of a
/// multi-machine build. DIR/synth.json records what was planted. The same seed gives the same
/// bytes whatever the number of threads.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    redpack synth-corpus --out synth-1m --docs 1000000\n  \
    redpack build-corpus --input synth-1m --out out-1m --tokenizer tests/fixtures/tokenizers/gpt2.json")]
pub struct SynthCorpusArgs {
    /// Directory to write (new, empty, or holding an earlier synthetic corpus, which is replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Documents in all, planted copies included.
    #[arg(long, value_name = "N")]
    pub docs: u64,
    /// Files to spread them over (default: one per 100000 documents); half C4, half Common
    /// Crawl.
    #[arg(long, value_name = "F")]
    pub files: Option<usize>,
    /// Seed; the same seed gives the same bytes.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Words per document, MIN..MAX (MIN at least 20).
    #[arg(long, value_name = "MIN..MAX", default_value = "40..120", value_parser = parse_words)]
    pub words: (usize, usize),
    /// Fraction of documents that are exact copies (after whitespace and case normalization)
    /// of an earlier one.
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    pub exact_rate: f64,
    /// Fraction of documents that are near copies (word 5-gram Jaccard >= 0.88) of an earlier
    /// one.
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    pub near_rate: f64,
    /// Print the summary (what synth.json holds, plus timing) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `MIN..MAX` (or `MIN..=MAX`, or one number) as an inclusive word range.
fn parse_words(text: &str) -> Result<(usize, usize), String> {
    let number = |s: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("{text:?} is not MIN..MAX (e.g. 40..120)"))
    };
    match text.split_once("..") {
        Some((min, max)) => Ok((number(min)?, number(max.trim_start_matches('='))?)),
        None => number(text).map(|n| (n, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_words;

    #[test]
    fn word_ranges_parse() {
        assert_eq!(parse_words("40..120"), Ok((40, 120)));
        assert_eq!(parse_words("40..=120"), Ok((40, 120)));
        assert_eq!(parse_words("80"), Ok((80, 80)));
        assert!(parse_words("40-120").is_err());
    }
}
