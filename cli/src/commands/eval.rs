//! `redpack eval`: loss and perplexity of a checkpoint on a corpus, overall and per source; with
//! `--lengths`, several `--prefix-len` or `--positions`, over a grid of (length, prefix) pairs
//! (`redpack_trainer::eval::grid`).

use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redpack_trainer::eval::grid::{self, GridJob, GridOptions, GridReport};
use redpack_trainer::eval::{EvalJob, EvalOptions};
use redpack_trainer::run::memory;

use super::train::backend_for;
use crate::cli::train::EvalArgs;

/// The most rows `--batch` may put in one forward pass.
const MAX_EVAL_BATCH: usize = 4096;

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if !(1..=MAX_EVAL_BATCH).contains(&args.batch) {
        anyhow::bail!(
            "--batch must be in [1, {MAX_EVAL_BATCH}] rows, got {}",
            args.batch
        );
    }
    if !args.lengths.is_empty() || args.prefix_len.len() > 1 || args.positions.is_some() {
        return run_grid(args);
    }
    let mut backend = backend_for(args.device, args.threads, args.precision)?;
    let options = EvalOptions {
        prefix_len: args.prefix_len.first().copied(),
        batch_rows: args.batch.max(1),
        max_examples: args.max_examples,
    };
    let job = EvalJob::prepare_checked(&args.checkpoint, &args.data, options, !args.no_verify)
        .context("cannot start the evaluation")?;
    memory::check_forward(
        &job.model,
        args.batch,
        job.corpus.max_row_len(),
        backend.free_device_memory(),
    )
    .context("cannot start the evaluation")?;
    let checkpoint = job.checkpoint.clone();
    let step = job.step;
    let total = args
        .max_examples
        .map_or(job.corpus.examples, |m| m.min(job.corpus.examples));
    let bar = progress_bar(total, "examples");
    let report = job.run(backend.as_mut(), |done| bar.set_position(done));
    bar.finish_and_clear();
    let report = report.context("evaluation failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} (step {step}) on {}",
        checkpoint.display(),
        args.data.display()
    );
    if let Some(k) = report.prefix_len {
        println!("scored positions >= {k}");
    }
    println!(
        "{:<24} {:>10} {:>12} {:>12}",
        "source", "loss", "ppl", "tokens"
    );
    for (name, score) in &report.sources {
        println!(
            "{:<24} {:>10.4} {:>12.3} {:>12}",
            name, score.loss, score.ppl, score.tokens
        );
    }
    println!(
        "{:<24} {:>10.4} {:>12.3} {:>12}",
        "all", report.overall.loss, report.overall.ppl, report.overall.tokens
    );
    println!(
        "FLOPs per example: {:.4e} inference (paper: 2 N per token per stack), {:.4e} forward (detailed)",
        report.inference_flops_per_example, report.forward_flops_per_example
    );
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Every (length, prefix) pair.
fn run_grid(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if args.prefix_len.is_empty() {
        anyhow::bail!(
            "--lengths and --positions need --prefix-len (the first scored position, e.g. \
             --prefix-len 1,1024)"
        );
    }
    if let Some(path) = &args.positions {
        grid::check_positions_path(path)?;
    }
    let mut backend = backend_for(args.device, args.threads, args.precision)?;
    let options = GridOptions {
        lengths: args.lengths.clone(),
        prefix_lens: args.prefix_len.clone(),
        batch_rows: args.batch.max(1),
        max_rows: args.max_examples,
    };
    let job = GridJob::prepare_checked(&args.checkpoint, &args.data, options, !args.no_verify)
        .context("cannot start the evaluation")?;
    let longest = args.lengths.iter().copied().max();
    memory::check_forward(
        &job.model,
        args.batch,
        longest.unwrap_or(job.corpus.max_row_len()),
        backend.free_device_memory(),
    )
    .context("cannot start the evaluation")?;
    let total = args
        .max_examples
        .map_or(job.corpus.examples, |m| m.min(job.corpus.examples));
    let bar = progress_bar(total, "rows");
    let report = job.run(backend.as_mut(), |done| bar.set_position(done));
    bar.finish_and_clear();
    let report = report.context("evaluation failed")?;
    if let Some(path) = &args.positions {
        grid::write_positions(&report, path)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_grid(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn number(x: f64, precision: usize) -> String {
    if x.is_finite() {
        format!("{x:.precision$}")
    } else {
        "-".to_string()
    }
}

fn print_grid(report: &GridReport) {
    println!(
        "{} (step {}) on {}",
        report.checkpoint.display(),
        report.step,
        report.data.display()
    );
    println!("arch: {:?}; attention: {}", report.arch, report.attention);
    println!("scored: {}", report.scored);
    println!("source average: {}", report.source_average);
    for cell in &report.results {
        println!();
        println!(
            "L = {}, k = {}: {} rows scored, {} shorter than L skipped",
            cell.length, cell.prefix_len, cell.rows, cell.skipped_short
        );
        println!(
            "  {:<24} {:>10} {:>12} {:>12}",
            "source", "loss", "ppl", "tokens"
        );
        for (name, score) in &cell.sources {
            println!(
                "  {:<24} {:>10} {:>12} {:>12}",
                name,
                number(score.loss, 4),
                number(score.ppl, 3),
                score.tokens
            );
        }
        println!(
            "  {:<24} {:>10} {:>12} {:>12}",
            "all (token-pooled)",
            number(cell.overall.loss, 4),
            number(cell.overall.ppl, 3),
            cell.overall.tokens
        );
        println!(
            "  {:<24} {:>10} {:>12}",
            "source average",
            number(cell.source_average.loss, 4),
            number(cell.source_average.ppl, 3)
        );
    }
    if let Some(bytes) = report.peak_rss_bytes {
        println!();
        println!("peak memory: {:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    }
}
