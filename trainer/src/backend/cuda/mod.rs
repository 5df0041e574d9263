//! The CUDA backend, on cudarc with dynamic loading: the same binary builds with no CUDA toolkit,
//! driver or GPU, and finds the libraries at run time.
//!
//! What is here:
//! - `probe`: finds the driver, NVRTC and a device without panicking (cudarc panics on a missing
//!   library) and resolves `--device cpu|cuda|auto`.
//! - `nvrtc`: compiles the kernel sources to PTX for the device's architecture and caches the
//!   PTX on disk (keyed by source, architecture and NVRTC version).
//! - `kernels`: the `.cu` sources (f32 compute, bf16 stored as `u16`) and their entry points:
//!   RMSNorm (with gain and per-head), RoPE, SwiGLU, the fused ("flash") attention of the bf16
//!   mode, the masked attention softmax of the f32 mode, cross-entropy with z-loss over a logits
//!   chunk, embedding forward/backward, Adafactor, attention packing, residual add, scaling and
//!   dropout.
//! - `launch` (with `launch_tokens`, `launch_model`, `launch_flash` and `launch_adafactor`):
//!   loads every kernel on a device and launches each one with typed arguments, a method per
//!   kernel.
//! - `blas` and `products`: cuBLAS (`cublasGemmEx`, strided batched) in row-major terms, f32 or
//!   bf16 operands with f32 accumulation (`Precision`, `Operand`), and every product the model
//!   runs as data, checked on the host against the CPU reference through an emulation of cuBLAS.
//! - `backend` (with `device`, `layers`, `model`): `CudaBackend`, the `Backend` implementation:
//!   both architectures forward and backward, mirroring `cpu::layers` / `cpu::stack` /
//!   `cpu::model` step for step (fused attention in bf16, batched products in f32; logits in
//!   chunks; the same dropout masks as the CPU).
//! - `resident`: `ResidentTraining` for `CudaBackend`: parameters, gradients and Adafactor state
//!   stay on the GPU for a whole `redpack train` run.
//! - `inputs` and `staging`: a micro-batch's model inputs (streams, attention rows, scored
//!   tokens, RoPE tables) built on the host and packed into one word array; the `Stager` that
//!   builds them on the data loader's thread into pinned buffers, so a step's inputs reach the
//!   device in one asynchronous copy.
//! - `lt`: cuBLASLt products with a plan (descriptors and algorithm) cached per shape
//!   (`REDPACK_CUDA_BLAS=lt`).
//! - `profile`: an opt-in time table by kernel and product shape (`REDPACK_CUDA_PROFILE=1`).
//!
//! `backend::open_backend` (in `backend/select.rs`) resolves `--device` and `--precision` into a
//! backend. The kernel and whole-model parity tests are `trainer/tests/cuda_kernels.rs`,
//! `cuda_attention.rs` and `cuda_model.rs`; the throughput benchmark is
//! `trainer/benches/cuda_step.rs` (`scripts/gpu-check.sh` runs them on a GPU machine, with the
//! PyTorch reference `trainer/benches/torch_ref.py`).

mod attention;
mod backend;
pub mod blas;
mod device;
pub mod inputs;
pub mod kernels;
pub mod launch;
pub mod launch_adafactor;
pub mod launch_flash;
pub mod launch_model;
pub mod launch_tokens;
mod layers;
pub mod lt;
mod model;
pub mod nvrtc;
pub mod probe;
pub mod products;
pub mod profile;
mod resident;
mod staging;
mod stored;

pub use backend::CudaBackend;
pub use blas::Precision;
