//! `redpack analyze-attention`: local attention probability and heat maps, on the CPU backend.

use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redpack_trainer::analysis::{write_outputs, LocalityJob, LocalityOptions};
use redpack_trainer::backend::cpu::CpuBackend;

use crate::cli::analyze_attention::AnalyzeAttentionArgs;

pub fn run(args: AnalyzeAttentionArgs) -> anyhow::Result<ExitCode> {
    crate::commands::train::check_threads(args.threads)?;
    let options = LocalityOptions {
        length: args.length,
        prefix_len: args.prefix_len,
        window: args.window,
        rows: args.rows,
    };
    let job = LocalityJob::prepare_checked(&args.checkpoint, &args.data, options, !args.no_verify)
        .context("cannot start the attention analysis")?;
    let backend = CpuBackend::new(args.threads).context("cannot start the CPU backend")?;
    let bar = ProgressBar::with_draw_target(Some(args.rows), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rows")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let result = job.run(&backend, |done| bar.set_position(done));
    bar.finish_and_clear();
    let (report, maps) = result.context("attention analysis failed")?;
    let report = write_outputs(report, &maps, &args.out).context("cannot write the analysis")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} (step {}, {}{}) on {}: {} rows of {} tokens, prefix {}, window {} ({} shorter rows skipped), {}",
        report.checkpoint.display(),
        report.step,
        report.arch,
        if report.bidirectional_prefix { " + BiAttn" } else { "" },
        report.data.display(),
        report.rows,
        report.length,
        report.prefix_len,
        report.window,
        report.skipped_short,
        report.backend,
    );
    println!("local attention probability (mean over rows, heads and queries):");
    for (name, kind) in &report.attention {
        let layers: Vec<String> = kind.layers.iter().map(|v| format!("{v:.4}")).collect();
        println!(
            "  {name:<13} all {:.4}  by layer [{}]  ({})",
            kind.overall,
            layers.join(", "),
            kind.queries
        );
    }
    println!(
        "wrote locality.json, locality.csv, locality_by_position.csv and {} heat maps to {}",
        report.heatmaps.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
