//! Shared helpers for the CUDA tests: the NVRTC requirement, the device (the GPU, else the CPU
//! emulation of one; a test fails where neither is found), uploads and downloads, and a parity
//! check that prints the worst mismatch.
#![allow(dead_code)]

pub mod emulation;

use std::io::Write;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use redpack_trainer::backend::cuda::kernels::CudaKernels;
use redpack_trainer::backend::cuda::runtime::nvrtc::{KernelCache, NVRTC_HINT};
use redpack_trainer::backend::cuda::runtime::probe::{self, CudaAvailability, CudaDeviceInfo};
use redpack_trainer::model::attention::AttnRow;
use redpack_trainer::rng::SplitMix64;

/// Fails (like the Python tests when numpy is missing) when NVRTC cannot be loaded: CI installs
/// it, so its absence is a broken setup, not a reason to skip.
pub fn require_nvrtc() {
    assert!(
        probe::nvrtc_present(),
        "NVRTC (libnvrtc.so.13) cannot be loaded. Run `scripts/test`, or {NVRTC_HINT}"
    );
}

/// What the CUDA tests run on: the GPU where a driver is installed, else the CPU emulation of
/// one (`emulation`). Fails the test, with what to install, where the emulation cannot be built.
pub fn detect() -> CudaAvailability {
    if let Err(reason) = emulation::install() {
        panic!("no CUDA device, and the CPU emulation of one cannot be used: {reason}");
    }
    probe::detect()
}

/// The device the CUDA tests run on; fails the test where there is none.
pub fn device(test: &str) -> CudaDeviceInfo {
    match detect() {
        CudaAvailability::Device(info) => info,
        other => panic!("{test}: no CUDA device ({other:?})"),
    }
}

/// Writes straight to stderr, past the test harness's capture, so the line is seen in the log.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Where the tests keep compiled kernels: `REDPACK_TEST_KERNEL_CACHE` when set, else a folder
/// under the target directory that every test process shares (entries are keyed by source,
/// architecture and NVRTC version, and written atomically). It is where `redpack train` keeps
/// them with `XDG_CACHE_HOME=<target>/tmp/xdg-cache`, as the CLI test runs it.
pub fn test_kernel_cache() -> std::path::PathBuf {
    std::env::var_os("REDPACK_TEST_KERNEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache/redpack/kernels")
        })
}

/// The tests' kernel cache with every kernel compiled for `arch`, once per process: without
/// this, tests that start at once would each compile the same sources.
pub fn kernel_cache(arch: &str) -> KernelCache {
    static WARM: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let cache = KernelCache::new(test_kernel_cache());
    let mut warm = WARM.lock().unwrap_or_else(|e| e.into_inner());
    if !warm.iter().any(|a| a == arch) {
        for kernel in redpack_trainer::backend::cuda::kernels::KERNELS {
            cache
                .ptx(kernel.name, &kernel.full_source(), arch)
                .unwrap_or_else(|e| panic!("compiling {}.cu for {arch}: {e}", kernel.name));
        }
        warm.push(arch.to_string());
    }
    cache
}

/// A device with every kernel loaded.
pub struct Gpu {
    pub stream: Arc<CudaStream>,
    pub kernels: CudaKernels,
}

/// The first GPU (or its emulation) with the kernels loaded.
pub fn gpu(test: &str) -> Gpu {
    let info = device(test);
    require_nvrtc();
    let context = CudaContext::new(info.ordinal).expect("CUDA context");
    let stream = context.default_stream();
    let kernels = CudaKernels::load(stream.clone(), &kernel_cache(&info.arch()), &info.arch())
        .unwrap_or_else(|e| panic!("loading kernels on {}: {e}", info.name));
    Gpu { stream, kernels }
}

impl Gpu {
    /// `x` rounded to bf16 on the device, as the model's bf16 copies are.
    pub fn bf16(&self, x: &CudaSlice<f32>) -> CudaSlice<u16> {
        let mut y = self.stream.alloc_zeros::<u16>(x.len()).expect("alloc");
        self.kernels.f32_to_bf16(x, &mut y).expect("f32 to bf16");
        y
    }

    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> CudaSlice<T> {
        self.stream.clone_htod(data).expect("upload")
    }

    pub fn download<T: DeviceRepr + Default + Clone>(&self, data: &CudaSlice<T>) -> Vec<T> {
        self.stream.clone_dtoh(data).expect("download")
    }

    pub fn zeros(&self, n: usize) -> CudaSlice<f32> {
        self.stream.alloc_zeros::<f32>(n).expect("alloc")
    }
}

/// `n` values from N(0, scale²).
pub fn randn(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.next_normal() as f32 * scale).collect()
}

/// Fails when `max |gpu − cpu| / max |cpu|` exceeds `tol`; prints the worst element either way.
pub fn assert_close(name: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{name}: lengths differ");
    let scale = cpu
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = if g.is_nan() != c.is_nan() {
            f64::INFINITY
        } else {
            (g as f64 - c as f64).abs() / scale
        };
        if err > worst || (err.is_nan() && !worst.is_nan()) {
            (worst, at) = (err, i);
        }
    }
    let line = format!(
        "{name}: worst relative mismatch {worst:.2e} at {at} (gpu {}, cpu {}), tolerance {tol:.0e}",
        gpu.get(at).copied().unwrap_or(0.0),
        cpu.get(at).copied().unwrap_or(0.0)
    );
    say(&line);
    assert!(worst <= tol, "{line}");
}

/// `out[i, j] = Σ_p a(i, p) · b(p, j)` for an `m x n` result, accumulated in f64: a host product
/// precise enough to stand in for the matmuls around a kernel.
pub fn product(
    m: usize,
    n: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    (0..m * n)
        .map(|at| {
            let (i, j) = (at / n, at % n);
            (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum::<f64>() as f32
        })
        .collect()
}

/// The CPU reference's attention probabilities for one (row, head): `softmax(scale · s + mask)`
/// with `AttnRow::allowed`, as `attention::probabilities` computes them.
pub fn reference_probs(
    scores: &[f32],
    row: &AttnRow,
    docs: Option<(&[u32], &[u32])>,
    scale: f32,
) -> Vec<f32> {
    let (lq, lk) = (row.q_len, row.k_len);
    let mut p = vec![0.0f32; lq * lk];
    for i in 0..lq {
        let s: Vec<f32> = (0..lk).map(|j| scale * scores[i * lk + j]).collect();
        let on: Vec<bool> = (0..lk).map(|j| row.allowed(i, j, docs)).collect();
        let max = (0..lk)
            .filter(|&j| on[j])
            .map(|j| s[j])
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            continue;
        }
        let e: Vec<f32> = (0..lk)
            .map(|j| if on[j] { (s[j] - max).exp() } else { 0.0 })
            .collect();
        let inv = 1.0 / e.iter().sum::<f32>();
        for j in 0..lk {
            p[i * lk + j] = e[j] * inv;
        }
    }
    p
}
