//! Command implementations. `main` owns exit codes; each command returns `anyhow::Result`.

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
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::BuildCorpus => not_implemented("build-corpus"),
        Command::Train => not_implemented("train"),
        Command::Eval => not_implemented("eval"),
        Command::Inspect => not_implemented("inspect"),
    }
}

fn not_implemented(name: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`redpack {name}` is not implemented yet")
}

/// True when the error chain contains an I/O broken-pipe error.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
