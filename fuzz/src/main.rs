//! `redpack-fuzz`: structure-aware fuzzing of every reader of untrusted bytes, on stable Rust.
//!
//! ```text
//! redpack-fuzz list
//! redpack-fuzz TARGET|all --seconds N [--seed S] [--out DIR] [--timeout-ms MS] [--memory-mb MB]
//! redpack-fuzz replay TARGET CASE_DIR
//! ```
//!
//! A run is a supervisor and a worker process. The worker builds the seeds (real-format fixtures
//! and files written by the library's own writers), then repeatedly writes a mutated case and
//! runs the target's reader on it on an executor thread, under `catch_unwind` and a per-case
//! timeout. A panic is recorded and the run goes on; a hang ends the worker after recording the
//! case; an abort (failed allocation, stack overflow) kills the worker, and the supervisor
//! records the case it was running and starts a new worker. The worker runs under a virtual
//! memory limit so that a runaway allocation fails instead of exhausting the machine. Every
//! finding is a folder under `OUT/findings/` that `replay` runs again.

mod driver;
mod mutate;
mod rng;
mod seeds;
mod targets;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match driver::run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("redpack-fuzz: {message}");
            ExitCode::from(2)
        }
    }
}
