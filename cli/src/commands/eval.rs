//! `redpack eval`: loss and perplexity of a checkpoint on a corpus, overall and per source.

use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redpack_trainer::eval::{EvalJob, EvalOptions};

use super::train::backend_for;
use crate::cli::train::EvalArgs;

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let mut backend = backend_for(args.device, args.threads, args.precision)?;
    let options = EvalOptions {
        prefix_len: args.prefix_len,
        batch_rows: args.batch.max(1),
        max_examples: args.max_examples,
    };
    let job = EvalJob::prepare(&args.checkpoint, &args.data, options)
        .context("cannot start the evaluation")?;
    let checkpoint = job.checkpoint.clone();
    let step = job.step;
    let total = args
        .max_examples
        .map_or(job.corpus.examples, |m| m.min(job.corpus.examples));
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} examples")
    {
        bar.set_style(style.progress_chars("=> "));
    }
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
