//! The `redpack` binary: parse the command line, run, decide the exit code. Nothing else.

use std::process::ExitCode;

fn main() -> ExitCode {
    redpack::commands::main()
}
