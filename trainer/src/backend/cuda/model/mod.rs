//! `CudaBackend` and the model on the GPU.
//!
//! - `backend`: `CudaBackend`, the `Backend` trait on one GPU (resident parameter and gradient
//!   buffers, RoPE tables, validation as on the CPU);
//! - `collective`: data parallelism: the NCCL communicator on the backend's stream, gradients
//!   summed over the ranks in buckets;
//! - `resident` and `optimizer`: `ResidentTraining` for `CudaBackend`, with the Adafactor state
//!   on the device;
//! - `device`: the handles one model run uses (`Dev`), allocation and copy helpers, the linear
//!   products, and a micro-batch's inputs copied up in one transfer;
//! - `inputs` and `staging`: a micro-batch's model inputs (streams, attention rows, scored
//!   tokens) built on the host from the plan in `crate::model` and packed into one word array;
//!   the `Stager` that builds them on the data loader's thread into pinned buffers;
//! - `run`: both architectures forward and backward, walking the stack plans;
//! - `layers`, `attention`, `dims` and `stored`: the residual blocks, attention (fused in bf16,
//!   batched products in f32), their shared shapes, and the values kept for the backward pass.

mod attention;
mod backend;
mod collective;
mod device;
mod dims;
pub mod inputs;
mod layers;
mod optimizer;
mod resident;
mod run;
mod staging;
mod stored;

pub use backend::CudaBackend;
