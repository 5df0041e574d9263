//! Running the built `redpack` from the test modules: a command that must succeed (its stdout),
//! one that must fail with an error rather than a crash (its stderr), and `--json` output; and
//! the inputs many tests start from: files of the repository, the built-in sample built into a
//! corpus, tiny runs trained on it on the CPU, and the GPU a child process gets (a real one, or
//! the CPU emulation of CUDA with the trainer's kernels).

use std::path::{Path, PathBuf};
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

/// A file or folder of the repository, given from its root (`trainer/configs/...`).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Builds the built-in sample into `DIR/corpus`, in rows of `seq_len` tokens (the default when
/// `None`); returns that folder (`packed/` and `examples/` are in it).
pub fn sample_corpus(dir: &Path, seq_len: Option<u32>) -> PathBuf {
    let corpus = dir.join("corpus");
    let seq_len = seq_len.map(|n| n.to_string());
    let mut args = vec!["build-corpus", "--out", corpus.to_str().unwrap()];
    if let Some(n) = &seq_len {
        args.extend(["--seq-len", n.as_str()]);
    }
    ok(&args);
    corpus
}

/// Trains the recipe `trainer/configs/CONFIG` on `data` into `out` on the CPU: `steps` steps
/// at batch 2, then the `extra` flags.
pub fn train_tiny(config: &str, data: &Path, out: &Path, steps: u32, extra: &[&str]) {
    let config = repo_path("trainer/configs").join(config);
    let steps = steps.to_string();
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        &steps,
        "--batch",
        "2",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// A run of the recipe `CONFIG` trained for `steps` steps on the sample built at 64 tokens a
/// row under `dir`: `DIR/run`.
pub fn tiny_run(dir: &Path, config: &str, steps: u32) -> PathBuf {
    let corpus = sample_corpus(dir, Some(64));
    let run = dir.join("run");
    train_tiny(config, &corpus.join("packed"), &run, steps, &[]);
    run
}

/// The CPU emulation of CUDA with the trainer's kernels, built where the trainer's tests build
/// it (one build serves both): its library folder, or `None` on a machine with a real driver.
/// Without either the test fails, naming what to install.
pub fn cuda_libraries() -> Option<PathBuf> {
    use redpack_cuda_emu::{DeviceCode, Kernel};
    use redpack_trainer::backend::cuda::kernels::{COMMON, KERNELS};

    let code = DeviceCode {
        common: COMMON,
        kernels: KERNELS
            .iter()
            .map(|k| Kernel {
                name: k.name,
                source: k.source,
                entries: k.entries,
            })
            .collect(),
    };
    redpack_cuda_emu::library_dir(&code, Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("no CUDA device, and the CPU emulation of one: {e}"))
        .map(|(dir, _)| dir)
}

/// A `redpack` command that finds the GPU: the emulation's folder (if any) first on
/// `LD_LIBRARY_PATH`, and the kernel cache the trainer's tests share.
pub fn gpu_command(libraries: Option<&Path>) -> Command {
    let mut command = Command::new(BIN);
    command.env(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
    );
    if let Some(dir) = libraries {
        let old = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        command.env("LD_LIBRARY_PATH", format!("{}:{old}", dir.display()));
    }
    command
}
