//! The CUDA kernels' numerics without a GPU: `tests/emu/cuda_emu.h` models CUDA's execution
//! rules on the CPU (threads as fibers, barriers, warp shuffles, and the `mma.sync`, `ldmatrix`
//! and `cp.async` primitives of flash.cu), and the programs beside it compile the real kernel
//! sources with the host's C++ compiler and check them against references written out in f64.
//! This is what CI can check of the kernels' arithmetic and indexing; their speed, and anything
//! the model leaves out (memory ordering between blocks, the tensor cores' exact rounding), still
//! need the GPU tests (`cuda_kernels.rs`, `cuda_attention.rs`).
//!
//! Skips, visibly, where no C++ compiler is found (`CXX`, else `c++`, `g++`, `clang++`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn emu_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emu")
}

fn compiler() -> Option<String> {
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from));
    candidates.into_iter().find(|cxx| {
        Command::new(cxx)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Compiles `tests/emu/<name>.cpp` and runs it; fails with its output unless it exits 0.
fn run_check(name: &str) {
    let Some(cxx) = compiler() else {
        println!("SKIPPED: no C++ compiler for the CUDA emulator ({name})");
        return;
    };
    let source = emu_dir().join(format!("{name}.cpp"));
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("emu-{name}"));
    // `_FORTIFY_SOURCE` would refuse the emulator's jumps between thread stacks.
    let compiled = Command::new(&cxx)
        .args(["-O2", "-std=c++17", "-U_FORTIFY_SOURCE", "-Wall", "-Wextra"])
        .arg("-Wno-unknown-pragmas")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    assert!(
        compiled.status.success(),
        "{cxx} could not build {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&compiled.stderr)
    );
    let warnings = String::from_utf8_lossy(&compiled.stderr);
    assert!(
        !warnings.contains("warning"),
        "{cxx} warns on {}:\n{warnings}",
        source.display()
    );
    let ran = Command::new(&binary)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    let stdout = String::from_utf8_lossy(&ran.stdout);
    println!("{stdout}");
    assert!(
        ran.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        ran.status,
        String::from_utf8_lossy(&ran.stderr)
    );
}

#[test]
fn fused_attention_matches_f64_attention_on_the_emulator() {
    run_check("flash_check");
}

#[test]
fn multi_tensor_adafactor_matches_the_cpu_rule_on_the_emulator() {
    run_check("adafactor_check");
}
