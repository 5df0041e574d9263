//! The CPU emulation of a CUDA device for the GPU tests, on machines without a driver (CI, and
//! this project's development machine).
//!
//! `tests/emu/fake_cuda.cpp` is a `libcuda.so` that runs the real kernel sources on the CPU
//! emulator (`tests/emu/cuda_emu.h`), with host memory as device memory;
//! `tests/emu/fake_cublas.cpp` and `fake_cublaslt.cpp` are a `libcublas.so` and a
//! `libcublasLt.so` with what the backend calls of them. They are built here with the host's
//! C++ compiler and loaded before cudarc looks for the driver: cudarc opens each library by
//! name, and the dynamic loader hands back an already loaded library of that SONAME. So the
//! backend's Rust code runs unchanged (cudarc, its allocations, copies, launch arguments, grid
//! sizes, cuBLAS leading dimensions) and only the device underneath is a model. NVRTC is the
//! real one: the PTX it compiles must declare every entry the backend asks for. A child process
//! (the CLI) finds the same libraries through `LD_LIBRARY_PATH` (`library_dir`).
//!
//! On a machine with a driver nothing is loaded and the tests run on the GPU. Set
//! `REDPACK_CUDA_EMULATION=0` to skip the GPU tests instead of emulating.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use redpack_trainer::backend::cuda::kernels::{COMMON, KERNELS};
use redpack_trainer::backend::cuda::runtime::probe;
use sha2::{Digest, Sha256};

use super::say;

/// Whether the tests in this process run on the emulation: `Ok(true)` once the fake libraries
/// are loaded, `Ok(false)` where a real driver is (or emulation is turned off), `Err` with why
/// they could not be built.
pub fn install() -> &'static Result<bool, String> {
    static INSTALLED: OnceLock<Result<bool, String>> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let Some((dir, kind)) = library_dir()? else {
            return Ok(false);
        };
        for lib in ["libcuda.so", "libcublas.so", "libcublasLt.so"] {
            let path = dir.join(lib);
            // SAFETY: the fake libraries have no initializers beyond C++ statics, and stay
            // loaded for the process's life (forgotten below), as cudarc expects of a driver.
            let library = unsafe { libloading::Library::new(&path) }
                .map_err(|e| format!("loading {}: {e}", path.display()))?;
            std::mem::forget(library);
        }
        if !probe::driver_present() {
            return Err("the fake libcuda.so is loaded but cudarc does not find it".into());
        }
        say(&format!(
            "CUDA tests run on the CPU emulation of a GPU (tests/emu/fake_cuda.cpp{})",
            if kind == Build::AddressSanitizer {
                ", under AddressSanitizer"
            } else {
                ""
            }
        ));
        Ok(true)
    })
}

/// The folder of the emulation's libraries, built if need be, for this process to load or for
/// a child process's `LD_LIBRARY_PATH`: `None` where a real driver is (or emulation is turned
/// off), `Err` without a C++ compiler. A build that fails panics: that is a broken test, not a
/// reason to skip.
pub fn library_dir() -> Result<Option<(PathBuf, Build)>, String> {
    let mode = std::env::var("REDPACK_CUDA_EMULATION").unwrap_or_default();
    if mode == "0" || probe::driver_present() {
        return Ok(None);
    }
    let Some(cxx) = compiler() else {
        return Err("no C++ compiler (CXX, c++, g++, clang++) to build the emulation".into());
    };
    let kind = if mode == ASAN {
        Build::AddressSanitizer
    } else {
        Build::Plain
    };
    let dir = build(&cxx, kind).unwrap_or_else(|e| panic!("building the CUDA emulation: {e}"));
    Ok(Some((dir, kind)))
}

/// `REDPACK_CUDA_EMULATION=asan`: the emulation built with AddressSanitizer, for a process
/// started with the sanitizer's runtime preloaded (`asan_runtime`).
pub const ASAN: &str = "asan";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Plain,
    AddressSanitizer,
}

/// The AddressSanitizer runtime of the C++ compiler, to preload into a test process that loads
/// the sanitized emulation; `None` without a compiler or a runtime.
pub fn asan_runtime() -> Option<PathBuf> {
    let cxx = compiler()?;
    let out = Command::new(cxx)
        .arg("-print-file-name=libasan.so")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Without the library the compiler prints the bare name back.
    (path.is_absolute() && path.exists()).then_some(path)
}

/// Whether this process's CUDA tests run on the emulation (slow: tests may pick smaller cases).
pub fn active() -> bool {
    matches!(install(), Ok(true))
}

/// `trainer/tests/emu`, from the trainer's tests or the CLI's (which include this file by
/// path).
fn emu_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = manifest.join("tests/emu");
    if own.join("fake_cuda.cpp").exists() {
        own
    } else {
        manifest.join("../trainer/tests/emu")
    }
}

/// The host's C++ compiler: `CXX`, else the first of `c++`, `g++` and `clang++` that runs.
pub fn compiler() -> Option<String> {
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

/// The generated part of the fake driver: the emulator, the kernel sources exactly as the
/// backend embeds them, and the list of entry points.
fn kernels_include() -> String {
    let mut out = String::from("#pragma once\n#include \"cuda_emu.h\"\n");
    out.push_str(&format!("#line 1 \"common.cuh\"\n{COMMON}\n"));
    for kernel in KERNELS {
        out.push_str(&format!(
            "#line 1 \"{}.cu\"\n{}\n",
            kernel.name, kernel.source
        ));
    }
    out.push_str("#define REDPACK_FAKE_ENTRIES(E)");
    for kernel in KERNELS {
        for entry in kernel.entries {
            out.push_str(&format!(" E({entry})"));
        }
    }
    out.push('\n');
    out
}

/// Builds the two libraries (once per content: a folder named by the hash of everything that
/// goes into them) and returns their folder.
fn build(cxx: &str, kind: Build) -> Result<PathBuf, String> {
    let include = kernels_include();
    let read = |name: &str| {
        std::fs::read(emu_dir().join(name)).map_err(|e| format!("reading tests/emu/{name}: {e}"))
    };
    let mut hash = Sha256::new();
    hash.update(cxx.as_bytes());
    hash.update(format!("{kind:?}").as_bytes());
    hash.update(include.as_bytes());
    for name in [
        "cuda_emu.h",
        "fake_cuda.cpp",
        "fake_gemm.h",
        "fake_cublas.cpp",
        "fake_cublaslt.cpp",
    ] {
        hash.update(read(name)?);
    }
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-cuda-{key}"));
    if dir.join("libcublasLt.so").exists() {
        return Ok(dir);
    }
    // Built in a folder of this process, then renamed into place, so that test processes
    // running at once never load a half-written library.
    let work = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fake-cuda-{key}.{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    std::fs::write(work.join("fake_kernels.inc"), include)
        .map_err(|e| format!("writing the kernel list: {e}"))?;
    let compile = |source: &str, lib: &str, extra: &[&Path]| -> Result<(), String> {
        let mut command = Command::new(cxx);
        command.args(["-std=c++17", "-fPIC", "-shared", "-w"]);
        match kind {
            Build::Plain => command.arg("-O2"),
            Build::AddressSanitizer => command.args(["-O1", "-g", "-fsanitize=address"]),
        };
        command
            // `_FORTIFY_SOURCE` would refuse the emulator's jumps between thread stacks.
            .arg("-U_FORTIFY_SOURCE")
            // The kernels read bf16 arrays through wider types, as CUDA code does.
            .arg("-fno-strict-aliasing")
            .arg("-I")
            .arg(&work)
            .arg("-I")
            .arg(emu_dir())
            .arg(format!("-Wl,-soname,{lib}"))
            .arg("-o")
            .arg(work.join(lib))
            .arg(emu_dir().join(source))
            .args(extra);
        let out = command
            .output()
            .map_err(|e| format!("running {cxx}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cxx} could not build {lib} from tests/emu/{source}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    compile("fake_cuda.cpp", "libcuda.so", &[])?;
    let driver = work.join("libcuda.so");
    compile("fake_cublas.cpp", "libcublas.so", &[driver.as_path()])?;
    compile("fake_cublaslt.cpp", "libcublasLt.so", &[driver.as_path()])?;
    match std::fs::rename(&work, &dir) {
        Ok(()) => Ok(dir),
        // Another process got there first: use its build.
        Err(_) if dir.join("libcublasLt.so").exists() => {
            let _ = std::fs::remove_dir_all(&work);
            Ok(dir)
        }
        Err(e) => Err(format!("moving the build into {}: {e}", dir.display())),
    }
}
