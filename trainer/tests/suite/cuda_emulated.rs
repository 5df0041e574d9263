//! The CUDA kernels' numerics without a GPU: the `redpack-cuda-emu` crate's `cuda_emu.h` models
//! CUDA's execution rules on the CPU (threads as fibers, barriers, warp shuffles, and the
//! `mma.sync`, `ldmatrix` and `cp.async` primitives of flash.cu), and the programs in
//! `tests/kernel_checks` compile the real kernel sources on it with the host's C++ compiler and
//! check them against references written out in f64. This is what CI can check of the kernels'
//! arithmetic and indexing; their speed, and anything the model leaves out (memory ordering
//! between blocks, the tensor cores' exact rounding), still need the GPU tests (`cuda_kernels`,
//! `cuda_attention`).
//!
//! Fails, naming what to install, where no C++ compiler is found (`CXX`, else `c++`, `g++`,
//! `clang++`) or it cannot build with AddressSanitizer.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cuda_support::emulation::{build_root, compile_program, Build};

fn checks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernel_checks")
}

/// Compiles `tests/kernel_checks/<name>.cpp` and runs it with `args`; fails with its output
/// unless it builds without a warning and exits 0.
fn run_check(name: &str, build: Build, args: &[&str]) {
    let source = checks_dir().join(format!("{name}.cpp"));
    let suffix = match build {
        Build::Plain => "",
        Build::AddressSanitizer => "-asan",
    };
    let binary = build_root().join(format!("emu-{name}{suffix}"));
    let messages =
        compile_program(&source, &binary, build).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        !messages.contains("warning"),
        "warnings on {}:\n{messages}",
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
