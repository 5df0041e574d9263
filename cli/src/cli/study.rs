//! `redpack study`: the paper's comparisons from one study file.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Args)]
pub struct StudyArgs {
    #[command(subcommand)]
    pub command: StudyCommand,
}

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Run every run of a study (pretraining, evaluation, finetuning), skipping finished runs and
    /// resuming an interrupted one; or write a Slurm array job that does (`--emit slurm`).
    Run(StudyRunArgs),
    /// Write DIR/report.md, DIR/report.json and DIR/plots/ from a study's finished runs.
    Report(StudyReportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmitArg {
    /// An array job: one task per run, finetuning after its pretraining run.
    Slurm,
}

#[derive(Debug, Args)]
pub struct StudyRunArgs {
    /// The study file (see studies/README.md).
    pub study: PathBuf,
    /// The study's folder: corpus (when the study builds it), runs/, report.
    #[arg(long)]
    pub out: PathBuf,
    /// Run only this run of the grid (what each Slurm task does).
    #[arg(long, value_name = "RUN")]
    pub only: Option<String>,
    /// Write a job for a cluster into OUT/slurm instead of running.
    #[arg(long, value_enum)]
    pub emit: Option<EmitArg>,
    /// Stop after training this many runs (a rerun continues).
    #[arg(long, value_name = "N")]
    pub max_runs: Option<usize>,
    /// Print a JSON summary of the runs on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StudyReportArgs {
    /// The study's folder (`--out` of `redpack study run`).
    pub dir: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
