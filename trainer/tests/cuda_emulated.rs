//! The CUDA kernels' numerics without a GPU: `tests/emu/cuda_emu.h` models CUDA's execution
//! rules on the CPU (threads as fibers, barriers, warp shuffles, and the `mma.sync`, `ldmatrix`
//! and `cp.async` primitives of flash.cu), and the programs beside it compile the real kernel
//! sources with the host's C++ compiler and check them against references written out in f64.
//! This is what CI can check of the kernels' arithmetic and indexing; their speed, and anything
//! the model leaves out (memory ordering between blocks, the tensor cores' exact rounding), still
//! need the GPU tests (`cuda_kernels.rs`, `cuda_attention.rs`).
//!
//! Skips, visibly, where no C++ compiler is found (`CXX`, else `c++`, `g++`, `clang++`).

mod cuda_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cuda_support::emulation::compiler;

fn emu_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emu")
}

/// How a check program is built: plain, or under AddressSanitizer.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    Plain,
    AddressSanitizer,
}

/// Compiles `tests/emu/<name>.cpp` and runs it with `args`; fails with its output unless it
/// exits 0.
fn run_check(name: &str, build: Build, args: &[&str]) {
    let Some(cxx) = compiler() else {
        println!("SKIPPED: no C++ compiler for the CUDA emulator ({name})");
        return;
    };
    let source = emu_dir().join(format!("{name}.cpp"));
    let suffix = match build {
        Build::Plain => "",
        Build::AddressSanitizer => "-asan",
    };
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("emu-{name}{suffix}"));
    let mut command = Command::new(&cxx);
    command.args(["-std=c++17", "-Wall", "-Wextra", "-Wno-unknown-pragmas"]);
    // `_FORTIFY_SOURCE` would refuse the emulator's jumps between thread stacks; the kernels
    // read bf16 arrays through wider types, as CUDA code does.
    command.args(["-U_FORTIFY_SOURCE", "-fno-strict-aliasing"]);
    match build {
        Build::Plain => command.arg("-O2"),
        Build::AddressSanitizer => command.args(["-O1", "-g", "-fsanitize=address"]),
    };
    let compiled = command
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    let messages = String::from_utf8_lossy(&compiled.stderr);
    if !compiled.status.success() && build == Build::AddressSanitizer {
        // The plain build of the same source is a test of its own; here the sanitizer's
        // runtime is what is missing.
        println!("SKIPPED: {cxx} cannot build with -fsanitize=address ({name}):\n{messages}");
        return;
    }
    assert!(
        compiled.status.success(),
        "{cxx} could not build {}:\n{messages}",
        source.display()
    );
    assert!(
        !messages.contains("warning"),
        "{cxx} warns on {}:\n{messages}",
        source.display()
    );
    let ran = Command::new(&binary)
        .args(args)
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
    run_check("flash_check", Build::Plain, &[]);
}

#[test]
fn fused_attention_stays_inside_its_buffers_under_addresssanitizer() {
    // The emulator's memcheck: every global buffer is a host allocation and the dynamic shared
    // memory one of exactly the launch's size, so any read or write past one is reported with
    // its kernel source line. Head dim 128 with documents, one head, every build.
    run_check("flash_check", Build::AddressSanitizer, &["quick"]);
}

#[test]
fn norm_rope_swiglu_and_cross_entropy_kernels_match_on_the_emulator() {
    // head_norm_rope_bf16 and its backward against the norm, RoPE and conversion kernels they
    // replace, bit for bit; RMSNorm with a gain, SwiGLU and the cross-entropy against f64, and
    // their bf16 builds against the f32 ones rounded; then all again under AddressSanitizer.
    run_check("kernels_check", Build::Plain, &[]);
    run_check("kernels_check", Build::AddressSanitizer, &[]);
}

#[test]
fn multi_tensor_adafactor_matches_the_cpu_rule_on_the_emulator() {
    run_check("adafactor_check", Build::Plain, &[]);
}
