//! The `redpack` binary: parse the command line, run, decide the exit code.
//!
//! - [`cli`]: the command line's clap definitions (doc comments are the help text);
//! - [`commands`]: one module per subcommand, resolving settings from the arguments and calling
//!   the `redpack` library (corpus pipeline, fetch, inspect) or `redpack-trainer`;
//! - [`progress`]: the terminal progress bars (indicatif) the build reports through.

mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

fn main() -> ExitCode {
    commands::main()
}
