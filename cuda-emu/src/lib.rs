//! A CPU emulation of a CUDA device, for testing CUDA code on machines without a GPU driver.
//!
//! `cpp/fake_cuda.cpp` is a `libcuda.so` that runs the real kernel sources on the CPU emulator
//! (`cpp/cuda_emu.h`), with host memory as device memory; `cpp/fake_cublas.cpp` and
//! `fake_cublaslt.cpp` are a `libcublas.so` and a `libcublasLt.so` with the products a backend
//! calls of them; `cpp/fake_nccl.cpp` is a `libnccl.so.2` whose collectives run across processes
//! on one machine through shared memory. [`library_dir`] builds them with the host's C++ compiler and [`install`] loads
//! them before cudarc looks for the driver: cudarc opens each library by name, and the dynamic
//! loader hands back an already loaded library of that SONAME. So the code under test runs
//! unchanged (cudarc, its allocations, copies, launch arguments, grid sizes, cuBLAS leading
//! dimensions) and only the device underneath is a model. NVRTC is the real one: the PTX it
//! compiles must declare every entry the code asks for. A child process finds the same libraries
//! through `LD_LIBRARY_PATH` ([`library_dir`]).
//!
//! The kernels come from the caller ([`DeviceCode`]): the fake driver compiles them in and
//! launches them by name. [`compile_program`] builds a stand-alone C++ program on the same
//! emulator (a kernel check that includes `cuda_emu.h` and the kernel sources).
//!
//! On a machine with a driver nothing is loaded and the caller's code runs on the GPU.
//! `REDPACK_CUDA_EMULATION=asan` builds the emulation with AddressSanitizer and uses it even
//! where a driver is installed (for a process started with [`asan_runtime`] preloaded).
//!
//! The README lists what the emulation models and what it leaves out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// What to do where no C++ compiler is found: the message every failure of [`compiler`] ends
/// with.
pub const INSTALL_HINT: &str =
    "install one (`apt-get install g++`), or run `scripts/test`, which installs what the tests need";

/// One kernel source file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'a> {
    /// File stem: the source is compiled in as `<name>.cu`.
    pub name: &'a str,
    pub source: &'a str,
    pub entries: &'a [&'a str],
}

/// The device code the fake driver runs: helpers prepended to every source (as NVRTC is given
/// them), then each kernel source.
#[derive(Debug, Clone)]
pub struct DeviceCode<'a> {
    pub common: &'a str,
    pub kernels: Vec<Kernel<'a>>,
}

/// How the C++ is built: plain (`-O2`), or with AddressSanitizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Plain,
    AddressSanitizer,
}

/// `REDPACK_CUDA_EMULATION=asan`: the emulation built with AddressSanitizer, for a process
/// started with the sanitizer's runtime preloaded ([`asan_runtime`]).
pub const ASAN: &str = "asan";

/// The environment variable that selects the sanitized build ([`ASAN`]).
pub const MODE_VARIABLE: &str = "REDPACK_CUDA_EMULATION";

static INSTALLED: OnceLock<Result<bool, String>> = OnceLock::new();

/// Loads the emulation into this process, once (later calls return the first call's answer):
/// `Ok(true)` once the fake libraries are loaded, `Ok(false)` where a real driver is, `Err` with
/// why they could not be built or loaded. The libraries are built under `build_root`.
pub fn install(code: &DeviceCode, build_root: &Path) -> &'static Result<bool, String> {
    INSTALLED.get_or_init(|| {
        let Some((dir, kind)) = library_dir(code, build_root)? else {
            return Ok(false);
        };
        for lib in [
            "libcuda.so",
            "libcublas.so",
            "libcublasLt.so",
            "libnccl.so.2",
        ] {
            let path = dir.join(lib);
            // SAFETY: the fake libraries have no initializers beyond C++ statics, and stay
            // loaded for the process's life (forgotten below), as cudarc expects of a driver.
            let library = unsafe { libloading::Library::new(&path) }
                .map_err(|e| format!("loading {}: {e}", path.display()))?;
            std::mem::forget(library);
        }
        if !driver_present() {
            return Err("the fake libcuda.so is loaded but cudarc does not find it".into());
        }
        say(&format!(
            "CUDA runs on the CPU emulation of a GPU (cuda-emu/cpp/fake_cuda.cpp{})",
            if kind == Build::AddressSanitizer {
                ", under AddressSanitizer"
            } else {
                ""
            }
        ));
        Ok(true)
    })
}

/// Whether [`install`] has loaded the emulation into this process.
pub fn active() -> bool {
    matches!(INSTALLED.get(), Some(Ok(true)))
}

/// Whether cudarc finds a CUDA driver library (a real one, or the emulation once loaded).
pub fn driver_present() -> bool {
    // SAFETY: only opens and closes the shared library by name (dlopen/dlclose); no symbol is
    // called. A failed open is reported as `false`.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The folder of the emulation's libraries, built under `build_root` if need be, for this
/// process to load or for a child process's `LD_LIBRARY_PATH`: `None` where a real driver is
/// (unless `REDPACK_CUDA_EMULATION=asan` asks for the sanitized emulation), `Err` without a C++
/// compiler or when the build fails (with the compiler's messages).
pub fn library_dir(
    code: &DeviceCode,
    build_root: &Path,
) -> Result<Option<(PathBuf, Build)>, String> {
    let kind = if std::env::var(MODE_VARIABLE).is_ok_and(|v| v == ASAN) {
        Build::AddressSanitizer
    } else {
        Build::Plain
    };
    if kind == Build::Plain && driver_present() {
        return Ok(None);
    }
    let cxx = compiler()?;
    let dir = build(code, build_root, &cxx, kind)
        .map_err(|e| format!("building the CUDA emulation: {e}"))?;
    Ok(Some((dir, kind)))
}

/// The AddressSanitizer runtime of the C++ compiler, to preload into a process that loads the
/// sanitized emulation; `Err` with what to install where there is none.
pub fn asan_runtime() -> Result<PathBuf, String> {
    let cxx = compiler()?;
    let out = Command::new(&cxx)
        .arg("-print-file-name=libasan.so")
        .output()
        .map_err(|e| format!("running {cxx}: {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Without the library the compiler prints the bare name back.
    if path.is_absolute() && path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{cxx} has no AddressSanitizer runtime (libasan.so): install g++ \
             (`apt-get install g++` brings it), or run `scripts/test`"
        ))
    }
}

/// The emulator's C++ sources (`cuda_emu.h`, the fake libraries), for a program's include path.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cpp")
}

/// The host's C++ compiler: `CXX`, else the first of `c++`, `g++` and `clang++` that runs;
/// `Err` naming what to install where none does.
pub fn compiler() -> Result<String, String> {
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from));
    candidates
        .into_iter()
        .find(|cxx| {
            Command::new(cxx)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            format!(
                "no C++ compiler (CXX, c++, g++, clang++) to build the CUDA emulation: \
                 {INSTALL_HINT}"
            )
        })
}

/// Flags every build on the emulator needs.
fn emulator_flags(command: &mut Command, kind: Build) {
    match kind {
        Build::Plain => command.arg("-O2"),
        Build::AddressSanitizer => command.args(["-O1", "-g", "-fsanitize=address"]),
    };
    command
        // `_FORTIFY_SOURCE` would refuse the emulator's jumps between thread stacks.
        .arg("-U_FORTIFY_SOURCE")
        // The kernels read bf16 arrays through wider types, as CUDA code does.
        .arg("-fno-strict-aliasing");
}

/// Compiles the stand-alone program `source` (C++17, warnings on, `cuda_emu.h` on the include
/// path) into `output`. Returns the compiler's messages (warnings included) on success; `Err`
/// without a compiler, or with the messages when the build fails.
pub fn compile_program(source: &Path, output: &Path, kind: Build) -> Result<String, String> {
    let cxx = compiler()?;
    let mut command = Command::new(&cxx);
    command.args(["-std=c++17", "-Wall", "-Wextra", "-Wno-unknown-pragmas"]);
    emulator_flags(&mut command, kind);
    let compiled = command
        .arg("-I")
        .arg(source_dir())
        .arg("-o")
        .arg(output)
        .arg(source)
        .output()
        .map_err(|e| format!("running {cxx}: {e}"))?;
    let messages = String::from_utf8_lossy(&compiled.stderr).into_owned();
    if !compiled.status.success() {
        let hint = if kind == Build::AddressSanitizer {
            " (with -fsanitize=address: `apt-get install g++` brings its runtime)"
        } else {
            ""
        };
        return Err(format!(
            "{cxx} could not build {}{hint}:\n{messages}",
            source.display()
        ));
    }
    Ok(messages)
}

/// Writes straight to stderr, past the test harness's capture, so the line is seen in the log.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The generated part of the fake driver: the emulator, the kernel sources exactly as the
/// caller gives them, and the list of entry points.
fn kernels_include(code: &DeviceCode) -> String {
    let mut out = String::from("#pragma once\n#include \"cuda_emu.h\"\n");
    out.push_str(&format!("#line 1 \"common.cuh\"\n{}\n", code.common));
    for kernel in &code.kernels {
        out.push_str(&format!(
            "#line 1 \"{}.cu\"\n{}\n",
            kernel.name, kernel.source
        ));
    }
    out.push_str("#define REDPACK_FAKE_ENTRIES(E)");
    for kernel in &code.kernels {
        for entry in kernel.entries {
            out.push_str(&format!(" E({entry})"));
        }
    }
    out.push('\n');
    out
}

/// Builds the four libraries (once per content: a folder named by the hash of everything that
/// goes into them) and returns their folder.
fn build(code: &DeviceCode, build_root: &Path, cxx: &str, kind: Build) -> Result<PathBuf, String> {
    let include = kernels_include(code);
    let read = |name: &str| {
        std::fs::read(source_dir().join(name)).map_err(|e| format!("reading cpp/{name}: {e}"))
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
        "fake_nccl.cpp",
    ] {
        hash.update(read(name)?);
    }
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = build_root.join(format!("fake-cuda-{key}"));
    if dir.join("libcublasLt.so").exists() {
        return Ok(dir);
    }
    // Built in a folder of this process, then renamed into place, so that processes running
    // at once never load a half-written library.
    let work = build_root.join(format!("fake-cuda-{key}.{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    std::fs::write(work.join("fake_kernels.inc"), include)
        .map_err(|e| format!("writing the kernel list: {e}"))?;
    let compile = |source: &str, lib: &str, extra: &[&Path]| -> Result<(), String> {
        let mut command = Command::new(cxx);
        command.args(["-std=c++17", "-fPIC", "-shared", "-w"]);
        emulator_flags(&mut command, kind);
        command
            .arg("-I")
            .arg(&work)
            .arg("-I")
            .arg(source_dir())
            .arg(format!("-Wl,-soname,{lib}"))
            .arg("-o")
            .arg(work.join(lib))
            .arg(source_dir().join(source))
            .args(extra);
        let out = command
            .output()
            .map_err(|e| format!("running {cxx}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cxx} could not build {lib} from cpp/{source}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    compile("fake_cuda.cpp", "libcuda.so", &[])?;
    let driver = work.join("libcuda.so");
    compile("fake_cublas.cpp", "libcublas.so", &[driver.as_path()])?;
    compile("fake_cublaslt.cpp", "libcublasLt.so", &[driver.as_path()])?;
    compile("fake_nccl.cpp", "libnccl.so.2", &[])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_include_has_every_source_and_entry() {
        let code = DeviceCode {
            common: "// common",
            kernels: vec![
                Kernel {
                    name: "a",
                    source: "// a",
                    entries: &["a_one", "a_two"],
                },
                Kernel {
                    name: "b",
                    source: "// b",
                    entries: &["b_one"],
                },
            ],
        };
        let include = kernels_include(&code);
        let common = include.find("#line 1 \"common.cuh\"\n// common").unwrap();
        let a = include.find("#line 1 \"a.cu\"\n// a").unwrap();
        let b = include.find("#line 1 \"b.cu\"\n// b").unwrap();
        assert!(common < a && a < b, "{include}");
        assert!(
            include.ends_with("#define REDPACK_FAKE_ENTRIES(E) E(a_one) E(a_two) E(b_one)\n"),
            "{include}"
        );
    }

    #[test]
    fn the_emulator_sources_are_where_the_build_reads_them() {
        for name in [
            "cuda_emu.h",
            "fake_cuda.cpp",
            "fake_gemm.h",
            "fake_cublas.cpp",
            "fake_cublaslt.cpp",
            "fake_nccl.cpp",
        ] {
            assert!(source_dir().join(name).is_file(), "{name}");
        }
    }
}
