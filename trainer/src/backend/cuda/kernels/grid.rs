//! What every launcher shares: the launch error, launch configurations, the element types
//! kernels store, and the null pointer for a kernel's optional arguments.

use cudarc::driver::{DriverError, LaunchConfig};

use super::super::runtime::nvrtc::KernelError;

/// Threads per block for element-wise kernels, and warps per block for one-warp-per-row kernels
/// (`NORM_WARPS` in norm.cu).
pub(super) const THREADS: u32 = 256;
pub(super) const WARPS_PER_BLOCK: u32 = THREADS / 32;

/// Why a kernel could not be loaded or launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("CUDA driver error while {what}: {source}")]
    Driver { what: String, source: DriverError },
    #[error("kernel {0} is not loaded")]
    Missing(&'static str),
    #[error("{0}")]
    Unsupported(String),
}

/// Turns a driver error into a `LaunchError` that says what was being done.
pub(super) fn driver(what: impl Into<String>) -> impl FnOnce(DriverError) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Driver { what, source }
}

/// An element type kernels built in two output types write: f32, or bf16 stored as `u16` (the
/// `_bf16` entry points, whose values are those of the f32 ones rounded as `f32_to_bf16`).
pub trait Stored: cudarc::driver::DeviceRepr {
    /// This type's entry point of a kernel, given the f32 and the bf16 one.
    fn entry(f32_entry: &'static str, bf16_entry: &'static str) -> &'static str;
}

impl Stored for f32 {
    fn entry(f32_entry: &'static str, _: &'static str) -> &'static str {
        f32_entry
    }
}

impl Stored for u16 {
    fn entry(_: &'static str, bf16_entry: &'static str) -> &'static str {
        bf16_entry
    }
}

/// A 1-D launch over `n` items, `THREADS` per block.
pub(super) fn grid_1d(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads of an element-wise kernel over `n` values that takes 16 bytes of each array per
/// thread (`Lanes` in common.cuh: 4 f32 or 8 bf16).
pub(super) fn vector_threads<T>(n: usize) -> usize {
    n.div_ceil(16 / std::mem::size_of::<T>())
}

/// `x · y` blocks of `threads` threads.
pub(super) fn grid(x: u32, y: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x.max(1), y.max(1), 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Passed for a kernel's nullable pointer argument.
pub(super) static NULL: u64 = 0;
