//! The CUDA backend's foundations, on cudarc with dynamic loading: the same binary builds with no
//! CUDA toolkit, driver or GPU, and finds the libraries at run time.
//!
//! What is here:
//! - `probe`: finds the driver, NVRTC and a device without panicking (cudarc panics on a missing
//!   library) and resolves `--device cpu|cuda|auto`.
//! - `nvrtc`: compiles the kernel sources to PTX for the device's architecture and caches the
//!   PTX on disk (keyed by source, architecture and NVRTC version).
//! - `kernels`: the `.cu` sources (f32 compute, bf16 stored as `u16`) and their entry points:
//!   RMSNorm (with gain and per-head), RoPE, SwiGLU, masked attention softmax, cross-entropy with
//!   z-loss over a logits chunk, embedding forward/backward, Adafactor.
//! - `launch` (with `launch_tokens` and `launch_adafactor`): loads every kernel on a device and
//!   launches each one with typed arguments, a method per kernel.
//!
//! What is not here yet: `CudaBackend`, the `Backend` implementation that runs a whole model
//! step (cuBLAS/cuBLASLt matrix products, bf16 mixed precision, the data path). Until it lands,
//! `redpack train --device cuda` stops with an error. The kernel parity tests in
//! `trainer/tests/cuda_kernels.rs` run only where a GPU is present.

pub mod kernels;
pub mod launch;
pub mod launch_adafactor;
pub mod launch_tokens;
pub mod nvrtc;
pub mod probe;
