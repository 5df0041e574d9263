//! The kernels: the `.cu` sources (f32 compute, bf16 stored as `u16`) and their launchers.
//!
//! - `sources`: the sources embedded at build time and the entry points each defines: RMSNorm
//!   (with gain and per-head), RoPE, SwiGLU, the fused ("flash") attention of the bf16 mode, the
//!   masked attention softmax of the f32 mode, cross-entropy with z-loss over a logits chunk,
//!   embedding forward/backward, Adafactor, attention packing, residual add and dropout;
//! - `grid`: the launch error, launch configurations and what every launcher shares;
//! - `launch`: `CudaKernels`, every kernel loaded on a device, with the launchers of the norm,
//!   RoPE, SwiGLU, conversion and residual kernels (a method per kernel, typed arguments);
//! - `launch_tokens`, `launch_model`, `launch_flash`, `launch_adafactor`: the launchers of the
//!   kernels over tokens and scores, attention packing, the fused attention and the Adafactor
//!   update;
//! - `launch_decode`: attention against a key/value cache and appending to it (`decode.cu`,
//!   incremental decoding);
//! - `flash_builds`: the fused attention's builds and shapes, and the tuner that picks a build
//!   per kernel and shape (`REDPACK_CUDA_FLASH=auto`).
//!
//! The kernels depend on `runtime` (NVRTC, profiling) only.

mod flash_builds;
mod grid;
mod launch;
mod launch_adafactor;
mod launch_decode;
mod launch_flash;
mod launch_model;
mod launch_tokens;
mod sources;

pub use flash_builds::{FlashShape, FlashVariant, FLASH_HEAD_DIMS};
pub use grid::{LaunchError, Stored};
pub use launch::CudaKernels;
pub use launch_adafactor::{
    AdafactorStep, AdafactorTensor, DeviceMoment, MomentShape, MultiTensorAdafactor,
};
pub use launch_decode::{DecodeRows, DECODE_MAX_HEAD_DIM};
pub use launch_flash::DocStreams;
pub use launch_model::{PackShape, PackSide};
pub use launch_tokens::{ScoresShape, TokenChains, CE_FUSED_VOCAB};
pub use sources::{source_of, KernelSource, COMMON, KERNELS};
