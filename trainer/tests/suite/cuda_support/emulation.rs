//! The CPU emulation of a CUDA device (the `redpack-cuda-emu` crate) with the trainer's kernels
//! compiled in: where no driver is installed, the CUDA tests run the backend's code unchanged on
//! it. Its libraries are built under the target directory, where the CLI's test finds them too.

use std::path::Path;

use redpack_cuda_emu::{DeviceCode, Kernel};
use redpack_trainer::backend::cuda::kernels::{COMMON, KERNELS};
use redpack_trainer::backend::cuda::runtime::probe;

pub use redpack_cuda_emu::{active, asan_runtime, compile_program, Build, ASAN, MODE_VARIABLE};

/// The backend's kernel sources, as it embeds them.
pub fn device_code() -> DeviceCode<'static> {
    DeviceCode {
        common: COMMON,
        kernels: KERNELS
            .iter()
            .map(|k| Kernel {
                name: k.name,
                source: k.source,
                entries: k.entries,
            })
            .collect(),
    }
}

/// Where the emulation's libraries and programs are built.
pub fn build_root() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// Loads the emulation into this process where no driver is (once): `Ok(true)` when the CUDA
/// tests run on it, `Ok(false)` on a real GPU, `Err` with why it could not be built.
pub fn install() -> &'static Result<bool, String> {
    static WARMING: std::sync::Once = std::sync::Once::new();
    WARMING.call_once(|| {
        // The emulation is an H100 (sm_90): NVRTC compiles the kernels for it on another thread
        // while the C++ compiler builds the emulation, instead of after it.
        if !redpack_cuda_emu::driver_present() && probe::nvrtc_present() {
            std::thread::spawn(|| super::kernel_cache("sm_90"));
        }
    });
    redpack_cuda_emu::install(&device_code(), build_root())
}
