//! Matrix products: cuBLAS (`cublasGemmEx`, strided batched) in row-major terms, f32 or bf16
//! operands with f32 accumulation.
//!
//! - `spec`: a product as data (shape, layouts, the column-major arguments, bounds), its operand
//!   and result types, and `BlasEngine`;
//! - `handle`: `Blas`, the cuBLAS handle (and the cuBLASLt one) that runs a product;
//! - `lt`: cuBLASLt products with a plan (descriptors and algorithm) cached per shape
//!   (`REDPACK_CUDA_BLAS=lt`);
//! - `products`: every product the model runs, as data.
//!
//! The products depend on `kernels` (the bf16 conversion of an operand) and `runtime`.

mod handle;
mod lt;
pub mod products;
mod spec;

pub use handle::Blas;
pub use spec::{
    check_bounds, column_major, BlasEngine, BlasError, ColumnMajor, GemmSpec, Layout, Operand,
    Output,
};
