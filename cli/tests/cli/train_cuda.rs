//! `redpack train` on the CUDA backend, end to end through the CLI: `--device auto` must take
//! the GPU, and a few steps of a tiny recipe must give the CPU run's losses (bf16 against f32,
//! so to bf16's precision) and leave a checkpoint. On a machine without a driver the GPU is the
//! CPU emulation of one (the `redpack-cuda-emu` crate, with the trainer's kernels), which the
//! child process finds on its `LD_LIBRARY_PATH`; without a C++ compiler to build it the test
//! fails, naming what to install.

use std::io::Write;
use std::path::Path;

use crate::common::{cuda_libraries, gpu_command};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs `redpack` with `args`, the emulation's folder (if any) first on `LD_LIBRARY_PATH`, and
/// the kernel cache the trainer tests share; returns stdout and stderr, failing on a non-zero
/// exit.
fn redpack(args: &[&str], libraries: Option<&Path>) -> (String, String) {
    let out = gpu_command(libraries)
        .args(args)
        .output()
        .expect("running redpack");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "redpack {args:?} failed ({}):\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

#[test]
fn train_on_the_gpu_through_the_cli_matches_the_cpu() {
    let libraries = cuda_libraries();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = root.join("corpus");
    redpack(&["build-corpus", "--out", corpus.to_str().unwrap()], None);
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/configs/decllm-tiny-pretrain.toml");
    let run = |device: &str| {
        let out = root.join(format!("run-{device}"));
        let (json, log) = redpack(
            &[
                "train",
                "--config",
                config.to_str().unwrap(),
                "--data",
                corpus.join("packed").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--steps",
                "3",
                "--batch",
                "2",
                "--device",
                device,
                "--json",
            ],
            libraries.as_deref(),
        );
        let result: serde_json::Value = serde_json::from_str(&json).expect("the --json result");
        (result, log)
    };
    let (gpu, gpu_log) = run("auto");
    assert!(
        gpu_log.contains("device: cuda:0"),
        "--device auto did not take the GPU:\n{gpu_log}"
    );
    let (cpu, _) = run("cpu");
    for key in ["first_loss", "last_loss"] {
        let (g, c) = (gpu[key].as_f64().unwrap(), cpu[key].as_f64().unwrap());
        say(&format!("{key}: gpu {g} cpu {c}"));
        assert!(
            (g - c).abs() <= 1e-2 * c.abs(),
            "{key}: gpu {g} against cpu {c}"
        );
    }
    assert_eq!(gpu["step"], 3);
    let checkpoint = Path::new(gpu["checkpoint"].as_str().expect("a checkpoint"));
    assert!(
        checkpoint.join("model.safetensors").exists(),
        "{}",
        checkpoint.display()
    );
}
