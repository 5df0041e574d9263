//! Compiling kernel sources to PTX with NVRTC, and the on-disk PTX cache.
//!
//! A source is compiled for a virtual architecture (`compute_90` for an `sm_90` device): the
//! driver JIT-compiles the PTX for the exact GPU when the module is loaded. The compiler log is
//! returned even on success, so callers (and the tests) can refuse warnings.
//!
//! The cache keeps one file per (source, architecture, NVRTC version), named by the sha256 of
//! the three, so a changed kernel or a new NVRTC never picks up stale PTX. Writes go to a
//! temporary file in the same folder and are renamed into place, so a crash never leaves a
//! truncated PTX file that looks valid.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::result as nvrtc;
use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};

use super::probe::nvrtc_present;

/// What to tell someone whose NVRTC is missing.
pub const NVRTC_HINT: &str =
    "install it with `python3 -m pip install \"nvidia-cuda-nvrtc==13.0.*\"` \
     and add the folder holding libnvrtc.so.13 (site-packages/nvidia/cu13/lib) to \
     LD_LIBRARY_PATH, as `.ci/run` does";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("NVRTC (libnvrtc.so) not found: {NVRTC_HINT}")]
    NvrtcMissing,
    #[error("kernel source {name} contains a NUL byte")]
    NulInSource { name: String },
    #[error("NVRTC {step} failed for {name}: {code:?}")]
    Nvrtc {
        name: String,
        step: &'static str,
        code: sys::nvrtcResult,
    },
    #[error("{name} does not compile for {arch}:\n{log}")]
    Compile {
        name: String,
        arch: String,
        log: String,
    },
    #[error("{path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// PTX and the compiler's log (empty when NVRTC had nothing to say).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ptx: String,
    pub log: String,
}

/// The NVRTC library version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), KernelError> {
    if !nvrtc_present() {
        return Err(KernelError::NvrtcMissing);
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library loads (checked above); both pointers are valid for writes.
    let code = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    code.result().map_err(|e| KernelError::Nvrtc {
        name: "nvrtcVersion".to_string(),
        step: "version query",
        code: e.0,
    })?;
    Ok((major, minor))
}

/// The virtual architecture NVRTC targets for a device architecture: `sm_90` -> `compute_90`.
pub fn virtual_arch(arch: &str) -> String {
    match arch.strip_prefix("sm_") {
        Some(number) => format!("compute_{number}"),
        None => arch.to_string(),
    }
}

/// Destroys the NVRTC program however compilation ends.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from nvrtcCreateProgram and is destroyed once, here. An error
        // while destroying leaks the program, which is all that can be done about it.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Compiles `source` (named `name` in messages) for `arch` (`sm_90`).
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Compiled, KernelError> {
    if !nvrtc_present() {
        return Err(KernelError::NvrtcMissing);
    }
    let step_error = |step: &'static str| {
        move |e: nvrtc::NvrtcError| KernelError::Nvrtc {
            name: name.to_string(),
            step,
            code: e.0,
        }
    };
    let src = CString::new(source).map_err(|_| KernelError::NulInSource {
        name: name.to_string(),
    })?;
    let file = CString::new(format!("{name}.cu")).map_err(|_| KernelError::NulInSource {
        name: name.to_string(),
    })?;
    let program = Program(nvrtc::create_program(&src, Some(&file)).map_err(step_error("create"))?);
    let options = [format!("--gpu-architecture={}", virtual_arch(arch))];
    // SAFETY: `program` is a live program handle; the options are plain strings.
    let compiled = unsafe { nvrtc::compile_program(program.0, &options) };
    // SAFETY: as above; the log exists whether or not compilation succeeded.
    let log = unsafe { nvrtc::get_program_log(program.0) }.map_err(step_error("log"))?;
    let log = c_chars_to_string(&log).trim().to_string();
    if compiled.is_err() {
        return Err(KernelError::Compile {
            name: name.to_string(),
            arch: arch.to_string(),
            log,
        });
    }
    // SAFETY: compilation succeeded, so the program holds PTX.
    let ptx = unsafe { nvrtc::get_ptx(program.0) }.map_err(step_error("get PTX"))?;
    Ok(Compiled {
        ptx: c_chars_to_string(&ptx),
        log,
    })
}

/// The cache file name for a source compiled for `arch` by NVRTC `version`.
pub fn cache_key(source: &str, arch: &str, version: (i32, i32)) -> String {
    let mut hash = Sha256::new();
    for part in [source, arch, &format!("nvrtc {}.{}", version.0, version.1)] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// PTX cached on disk, one file per cache key.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KernelCache { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/redpack/kernels`, else `~/.cache/redpack/kernels`; `None` when neither
    /// variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let non_empty = |v: &str| {
            std::env::var_os(v)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        let base =
            non_empty("XDG_CACHE_HOME").or_else(|| non_empty("HOME").map(|h| h.join(".cache")));
        base.map(|b| b.join("redpack").join("kernels"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PTX of `source` for `arch`, from the cache or compiled (and then stored). A cached
    /// file is only ever one that compiled without error; its log is not kept. A cached file
    /// with a NUL byte (which cudarc's module loader would panic on) is compiled anew.
    pub fn ptx(&self, name: &str, source: &str, arch: &str) -> Result<String, KernelError> {
        let key = cache_key(source, arch, nvrtc_version()?);
        let path = self.dir.join(format!("{name}-{key}.ptx"));
        match std::fs::read_to_string(&path) {
            Ok(ptx) if !ptx.contains('\0') => return Ok(ptx),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(KernelError::Cache { path, source }),
        }
        let compiled = compile(name, source, arch)?;
        write_atomic(&path, compiled.ptx.as_bytes())?;
        Ok(compiled.ptx)
    }
}

/// Writes a cache entry atomically; other processes may be writing the same entry at once.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| KernelError::Cache {
        path: dir.to_path_buf(),
        source,
    })?;
    redpack_schemas::atomic::write_file_shared(path, bytes).map_err(|e| match e {
        redpack_schemas::SchemaError::Io { path, source } => KernelError::Cache { path, source },
        other => KernelError::Cache {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_source_arch_and_version() {
        let base = cache_key("kernel", "sm_90", (13, 0));
        assert_eq!(base.len(), 64);
        assert_eq!(base, cache_key("kernel", "sm_90", (13, 0)));
        assert_ne!(base, cache_key("kernel ", "sm_90", (13, 0)));
        assert_ne!(base, cache_key("kernel", "sm_80", (13, 0)));
        assert_ne!(base, cache_key("kernel", "sm_90", (13, 1)));
        // Length prefixes keep the parts apart: moving a character across a boundary changes
        // the key.
        assert_ne!(cache_key("ab", "c", (13, 0)), cache_key("a", "bc", (13, 0)));
    }

    #[test]
    fn virtual_arch_maps_sm_to_compute() {
        assert_eq!(virtual_arch("sm_90"), "compute_90");
        assert_eq!(virtual_arch("compute_80"), "compute_80");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("k.ptx");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
