//! `redpack study report DIR`: reads the study's runs, fits, judges the paper's findings, and
//! writes `DIR/report.md`, `DIR/report.json` and `DIR/plots/*.png` (each atomically).

use std::process::ExitCode;

use anyhow::Context;
use redpack_trainer::study::{markdown, report};

use super::plots;
use crate::cli::study::StudyReportArgs;

pub fn run(args: StudyReportArgs) -> anyhow::Result<ExitCode> {
    let mut report = report::build(&args.dir)?;
    report.plots = plots::write_all(&report, &args.dir.join("plots"))?;
    let text = markdown::render(&report);
    let md = args.dir.join("report.md");
    redpack_schemas::atomic::write_file(&md, text.as_bytes())
        .with_context(|| format!("{}: cannot write", md.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    let json_path = args.dir.join("report.json");
    redpack_schemas::atomic::write_file(&json_path, format!("{json}\n").as_bytes())
        .with_context(|| format!("{}: cannot write", json_path.display()))?;
    if args.json {
        println!("{json}");
    } else {
        println!(
            "{} runs ({} unfinished), {} plots: {}",
            report.runs.len(),
            report.unfinished.len(),
            report.plots.len(),
            md.display()
        );
        for f in &report.findings {
            println!("  {}: {}", f.verdict.text(), f.paper);
        }
    }
    Ok(ExitCode::SUCCESS)
}
