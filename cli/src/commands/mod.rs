//! Command implementations. `main` owns exit codes; each command returns `anyhow::Result`.

pub mod analyze_attention;
pub mod build_corpus;
pub mod checkpoint_model;
pub mod eval;
pub mod eval_tasks;
pub mod export;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod study;
pub mod synth;
pub mod train;
pub mod train_tokenizer;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Runs the CLI and maps the outcome to an exit code: 0 on success, 1 on error, 0 quietly when
/// stdout was closed early (`redpack inspect … | head`).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", render_error(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::BuildCorpus(args) => build_corpus::run(args),
        Command::TrainTokenizer(args) => train_tokenizer::run(args),
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::AnalyzeAttention(args) => analyze_attention::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::SynthCorpus(args) => synth::run(args),
        Command::Study(args) => study::run(args),
        Command::Export(args) => export::run(args),
        Command::Generate(args) => generate::run(args),
        Command::EvalTasks(args) => eval_tasks::run(args),
    }
}

/// The error and its causes joined by ": ". A cause whose text is already in what precedes it
/// is left out: library errors name their source in their own message (`{path}: {source}`)
/// and also return it as `source()`, which `{:#}` would print a second time.
pub fn render_error(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// True when the error chain contains an I/O broken-pipe error.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
