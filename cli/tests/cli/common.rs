//! Running the built `redpack` from the test modules: a command that must succeed (its stdout),
//! one that must fail with an error rather than a crash (its stderr), and `--json` output.

use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_redpack");

/// Runs `redpack ARGS` to completion.
pub fn redpack(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running redpack")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = redpack(args);
    assert!(
        out.status.success(),
        "redpack {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail with an error (exit code 1, or 2 for a usage error), never a
/// panic or a signal; returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = redpack(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "redpack {args:?} ended with {}:\n{stderr}",
        out.status
    );
    stderr
}

/// Runs a command that must succeed and print JSON; returns the parsed value.
pub fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("JSON on stdout")
}
