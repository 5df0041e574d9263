//! `redpack synth-corpus --out DIR --docs N …`: write a synthetic corpus with planted
//! duplicates, then print a one-line summary (or JSON).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::cli::synth::SynthCorpusArgs;
use redpack::sample::synthetic::{write_synthetic, SynthConfig, SynthSummary};

/// The JSON printed with `--json`: the ground truth plus how long it took.
#[derive(Serialize)]
struct Printed<'a> {
    #[serde(flatten)]
    summary: &'a SynthSummary,
    seconds: f64,
    docs_per_s: f64,
    threads: usize,
}

pub fn run(args: SynthCorpusArgs) -> anyhow::Result<ExitCode> {
    let config = SynthConfig {
        docs: args.docs,
        files: args.files,
        seed: args.seed,
        words: args.words,
        exact_rate: args.exact_rate,
        near_rate: args.near_rate,
    };
    let started = Instant::now();
    let summary = write_synthetic(&args.out, &config)
        .with_context(|| format!("writing a synthetic corpus to {}", args.out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let printed = Printed {
        summary: &summary,
        seconds,
        docs_per_s: summary.docs as f64 / seconds.max(1e-9),
        threads: rayon::current_num_threads(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&printed)?);
    } else {
        println!(
            "{}: {} documents in {} files, {:.1} MB ({:.1} MB of text); planted {} exact and {} near duplicates; {:.1} s, {:.0} docs/s on {} threads",
            args.out.display(),
            summary.docs,
            summary.files,
            summary.bytes as f64 / 1e6,
            summary.text_bytes as f64 / 1e6,
            summary.exact_duplicates,
            summary.near_duplicates,
            seconds,
            printed.docs_per_s,
            printed.threads
        );
    }
    Ok(ExitCode::SUCCESS)
}
