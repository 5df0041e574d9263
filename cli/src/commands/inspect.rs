//! `redpack inspect DIR [--show RANGE [--raw] | --verify] [--json]`.
//!
//! All output goes through one buffered, locked stdout with `write!`, so a closed pipe
//! (`inspect … | head`) surfaces as an `io::Error` that `main` turns into a quiet exit 0, where
//! `println!` would panic.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redpack_schemas::{hash_file, Corpus, MANIFEST_FILE};

use crate::cli::inspect::InspectArgs;
use redpack::inspect::{write_example, ExampleRange, ShowError, Summary, TokenView};

/// What one invocation does, resolved from the flags before any work.
enum Mode {
    Summary { json: bool },
    Show { range: ExampleRange, raw: bool },
    Verify { json: bool },
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mode = match (args.show, args.verify) {
        (Some(range), _) => Mode::Show {
            range,
            raw: args.raw,
        },
        (None, true) => Mode::Verify { json: args.json },
        (None, false) => Mode::Summary { json: args.json },
    };
    let corpus = Corpus::open(&args.dir)
        .with_context(|| format!("cannot open corpus {}", args.dir.display()))?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match mode {
        Mode::Summary { json } => summary(&corpus, json, &mut out)?,
        Mode::Show { range, raw } => show(&corpus, range, raw, &mut out)?,
        Mode::Verify { json } => verify(&corpus, json, &mut out)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn summary(corpus: &Corpus, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let summary = Summary::of(corpus).context("reading the example index")?;
    if json {
        // Serialize first, then write: serde_json's writer errors hide the io::Error that the
        // broken-pipe check looks for.
        let text = serde_json::to_string_pretty(&summary)?;
        writeln!(out, "{text}")?;
    } else {
        summary.render(out)?;
    }
    Ok(())
}

fn show(
    corpus: &Corpus,
    range: ExampleRange,
    raw: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let range = range.resolve(corpus.len()).map_err(|e| anyhow!(e))?;
    let tokenizer = if raw {
        None
    } else {
        Some(load_tokenizer(corpus)?)
    };
    let view = match &tokenizer {
        Some(t) => TokenView::Text(t),
        None => TokenView::Ids,
    };
    for i in range {
        let example = corpus.example(i)?;
        write_example(out, i, &example, &view).map_err(|e| match e {
            // Keep the io::Error itself in the chain for the broken-pipe check.
            ShowError::Io(io) => anyhow::Error::from(io),
            other => anyhow::Error::from(other),
        })?;
    }
    Ok(())
}

/// Loads the corpus's own tokenizer copy, warning when it is not the file the manifest names.
fn load_tokenizer(corpus: &Corpus) -> anyhow::Result<tokenizers::Tokenizer> {
    let path = corpus.tokenizer_path();
    let (_, sha) = hash_file(&path).context(
        "the corpus's tokenizer is unreadable (use --raw to print token ids without it)",
    )?;
    let want = &corpus.manifest().tokenizer.sha256;
    if &sha != want {
        eprintln!(
            "warning: {}: sha256 {sha} differs from the manifest's {want}; decoded text may be wrong",
            path.display()
        );
    }
    tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}

fn verify(corpus: &Corpus, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let shards = corpus.num_shards();
    let bar = progress_bar(shards as u64);
    let mut done = 0usize;
    let result = corpus.verify(|s| {
        done = s + 1;
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let report = result.map_err(|e| {
        let manifest = corpus.manifest();
        let place = match manifest.shards.get(done) {
            Some(entry) => format!(
                "shard {done} of {shards} ({}, {})",
                entry.tokens_file, entry.index_file
            ),
            None => format!("{} counts", corpus.dir().join(MANIFEST_FILE).display()),
        };
        anyhow!(e).context(format!("verification failed at {place}"))
    })?;
    // The tokenizer copy is part of the corpus too: ids mean nothing without the exact file.
    let tokenizer = corpus.tokenizer_path();
    let (_, sha) = hash_file(&tokenizer).context("verification failed at the tokenizer")?;
    let want = &corpus.manifest().tokenizer.sha256;
    if &sha != want {
        anyhow::bail!(
            "verification failed at the tokenizer: {}: sha256 {sha} does not match the manifest's {want}",
            tokenizer.display()
        );
    }
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "verified": true,
            "shards": report.shards,
            "examples": report.examples,
            "tokens": report.tokens,
            "bytes_hashed": report.bytes_hashed,
        }))?;
        writeln!(out, "{text}")?;
    } else {
        writeln!(
            out,
            "verified: {} shards, {} examples, {} tokens, all checksums and invariants hold",
            report.shards, report.examples, report.tokens
        )?;
    }
    Ok(())
}

/// A bar over shards on stderr, hidden when stderr is not a terminal (tests, CI, pipes).
fn progress_bar(shards: u64) -> ProgressBar {
    let target = if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(shards), target);
    if let Ok(style) =
        ProgressStyle::with_template("verifying {bar:30} {pos}/{len} shards [{elapsed_precise}]")
    {
        bar.set_style(style);
    }
    bar
}
