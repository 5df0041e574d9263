//! The CUDA backend, on cudarc with dynamic loading: the same binary builds with no CUDA toolkit,
//! driver or GPU, and finds the libraries at run time.
//!
//! Its rooms, each depending only on those listed before it:
//! - `runtime`: finding the driver, NVRTC and a device without panicking (cudarc panics on a
//!   missing library), compiling the kernel sources to PTX with an on-disk cache (keyed by
//!   source, architecture and NVRTC version), and the opt-in time profile.
//! - `kernels`: the `.cu` sources (f32 compute, bf16 stored as `u16`) and their launchers:
//!   `CudaKernels` loads every kernel on a device and launches each one with typed arguments, a
//!   method per kernel; the fused attention's builds and their tuner.
//! - `blas`: cuBLAS (`cublasGemmEx`, strided batched) and cuBLASLt (a plan per shape) in
//!   row-major terms, f32 or bf16 operands with f32 accumulation, and every product the model
//!   runs as data (checked on the host against the CPU reference, `backend::parity`).
//! - `options`: `CudaOptions`, the backend's switches (the `REDPACK_CUDA_*` environment
//!   variables, read once by `open_backend`).
//! - `model`: `CudaBackend`, the `Backend` and `ResidentTraining` implementation: the device
//!   handles, a micro-batch's inputs built on the host and staged in pinned memory, the residual
//!   blocks and attention, and both architectures forward and backward, walking the same plan
//!   (`crate::model`) as the CPU backend step for step.
//! - `decode`: `CudaDecoder`, incremental decoding with key/value caches on the device
//!   (`crate::generate::Decoder`).
//!
//! `backend::open_backend` (in `backend/select.rs`) resolves `--device` and `--precision` into a
//! backend. The kernel and whole-model parity tests are `trainer/tests/cuda_kernels.rs`,
//! `cuda_attention.rs` and `cuda_model.rs`; the throughput benchmark is
//! `trainer/benches/cuda_step.rs` (`scripts/gpu-check.sh` runs them on a GPU machine, with the
//! PyTorch reference `trainer/benches/torch_ref.py`).

pub mod blas;
pub mod decode;
pub mod kernels;
pub mod model;
pub mod options;
pub mod runtime;

pub use model::CudaBackend;
pub use options::{CudaOptions, CudaOptionsError};
