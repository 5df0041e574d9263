//! What the model code on the GPU works with: the stream, the kernels and cuBLAS in one handle
//! (`Dev`), allocation and copy helpers, the linear-layer products in the CPU reference's terms
//! (`cpu::matmul`), and a batch's token streams and attention rows uploaded once per call.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, DriverError, ValidAsZeroBits};

use super::blas::{Blas, BlasError, Operand, Precision};
use super::launch::{CudaKernels, LaunchError};
use super::launch_tokens::TokenChains;
use super::products::{self, Product};
use crate::backend::cpu::attention::AttnRow;
use crate::backend::cpu::stream::Stream;
use crate::backend::BackendError;

pub(super) type Buf = CudaSlice<f32>;
/// bf16 values stored as `u16` (the top half of an f32).
pub(super) type Bf16Buf = CudaSlice<u16>;

/// What a product reads of `x`: its bf16 copy when there is one (`Dev::product_copy`), else `x`.
pub(super) fn operand<'a>(x: &'a Buf, copy: &'a Option<Bf16Buf>) -> Operand<'a> {
    match copy {
        Some(c) => Operand::Bf16(c),
        None => Operand::F32(x),
    }
}

impl From<LaunchError> for BackendError {
    fn from(e: LaunchError) -> Self {
        BackendError::Device(e.to_string())
    }
}

impl From<BlasError> for BackendError {
    fn from(e: BlasError) -> Self {
        BackendError::Device(e.to_string())
    }
}

impl From<DriverError> for BackendError {
    fn from(e: DriverError) -> Self {
        BackendError::Device(format!("CUDA driver: {e}"))
    }
}

/// The device handles one model run uses.
pub(super) struct Dev<'a> {
    pub stream: &'a Arc<CudaStream>,
    pub kernels: &'a CudaKernels,
    pub blas: &'a Blas,
    pub precision: Precision,
}

impl Dev<'_> {
    /// `n` zeros (`n` may not be 0: a zero-byte allocation is an error on the device).
    pub fn zeros(&self, n: usize) -> Result<Buf, BackendError> {
        self.zeros_of::<f32>(n)
    }

    pub fn zeros_of<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, BackendError> {
        if n == 0 {
            return Err(BackendError::Device(
                "internal: a zero-length device buffer was asked for".into(),
            ));
        }
        Ok(self.stream.alloc_zeros::<T>(n)?)
    }

    /// `n` values left as the allocator hands them over, for a buffer the next kernel or
    /// product overwrites completely (the big attention and logits buffers: zeroing them would
    /// cost as much memory traffic as using them).
    pub fn scratch(&self, n: usize) -> Result<Buf, BackendError> {
        if n == 0 {
            return Err(BackendError::Device(
                "internal: a zero-length device buffer was asked for".into(),
            ));
        }
        // SAFETY: f32 has no invalid bit patterns, and every caller writes all `n` values
        // before reading any (each call site names the kernel or product that does).
        Ok(unsafe { self.stream.alloc::<f32>(n) }?)
    }

    /// `x` rounded to bf16 (round to nearest even).
    pub fn bf16(&self, x: &Buf) -> Result<Bf16Buf, BackendError> {
        // SAFETY: the conversion kernel writes all `x.len()` values before anything reads them.
        let mut y = unsafe { self.stream.alloc::<u16>(x.len().max(1)) }?;
        self.kernels.f32_to_bf16(x, &mut y)?;
        Ok(y)
    }

    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, BackendError> {
        if data.is_empty() {
            return Err(BackendError::Device(
                "internal: an empty upload was asked for".into(),
            ));
        }
        Ok(self.stream.clone_htod(data)?)
    }

    pub fn copy(&self, x: &Buf) -> Result<Buf, BackendError> {
        Ok(self.stream.clone_dtod(x)?)
    }

    pub fn download(&self, x: &Buf) -> Result<Vec<f32>, BackendError> {
        Ok(self.stream.clone_dtoh(x)?)
    }

    /// Runs one product of `products`: `c = alpha · op(a) · op(b) + beta · c`.
    pub fn product<'a>(
        &self,
        (spec, la, lb): Product,
        a: impl Into<Operand<'a>>,
        b: impl Into<Operand<'a>>,
        c: &mut Buf,
    ) -> Result<(), BackendError> {
        Ok(self.blas.gemm(
            self.kernels,
            self.precision,
            spec,
            a.into(),
            la,
            b.into(),
            lb,
            c,
        )?)
    }

    /// A bf16 copy of `x` in the bf16 mode (for an operand several products read), `None` in the
    /// f32 mode; `operand` then picks what to hand a product.
    pub fn product_copy(&self, x: &Buf) -> Result<Option<Bf16Buf>, BackendError> {
        match self.precision {
            Precision::Bf16 => Ok(Some(self.bf16(x)?)),
            Precision::F32 => Ok(None),
        }
    }

    /// `out (m x n) (+)= x (m x k) · wᵀ` with `w` in `[n, k]` layout (`matmul::linear_forward`).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_forward<'a>(
        &self,
        out: &mut Buf,
        x: impl Into<Operand<'a>>,
        w: impl Into<Operand<'a>>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        self.product(products::linear_forward(m, k, n, accumulate), x, w, out)
    }

    /// `dx (m x k) (+)= dy (m x n) · w` (`matmul::linear_backward_input`).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_input<'a>(
        &self,
        dx: &mut Buf,
        dy: impl Into<Operand<'a>>,
        w: impl Into<Operand<'a>>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        self.product(
            products::linear_backward_input(m, k, n, accumulate),
            dy,
            w,
            dx,
        )
    }

    /// `dw (n x k) += dyᵀ · x` with `dy` `m x n`, `x` `m x k` (`matmul::linear_backward_weight`).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_weight<'a>(
        &self,
        dw: &mut Buf,
        dy: impl Into<Operand<'a>>,
        x: impl Into<Operand<'a>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), BackendError> {
        self.product(products::linear_backward_weight(m, k, n), dy, x, dw)
    }
}

/// A token stream (`cpu::stream::Stream`) on the device, with the embedding backward's chains.
pub(super) struct DevStream {
    pub len: usize,
    pub tokens: CudaSlice<u32>,
    pub rows: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    pub docs: CudaSlice<u32>,
    pub chain_first: CudaSlice<i32>,
    pub chain_next: CudaSlice<i32>,
}

impl DevStream {
    /// Uploads a non-empty stream.
    pub fn upload(dev: &Dev, s: &Stream) -> Result<DevStream, BackendError> {
        let chains = TokenChains::new(&s.tokens);
        Ok(DevStream {
            len: s.len(),
            tokens: dev.upload(&s.tokens)?,
            rows: dev.upload(&s.rows)?,
            positions: dev.upload(&s.positions)?,
            docs: dev.upload(&s.docs)?,
            chain_first: dev.upload(&chains.first)?,
            chain_next: dev.upload(&chains.next)?,
        })
    }
}

/// Attention rows (`cpu::attention::AttnRow`) on the device: six `i32` per row, and the longest
/// query and key spans (the padded batched layout's sizes).
pub(super) struct DevRows {
    pub desc: CudaSlice<i32>,
    pub rows: usize,
    pub max_q: usize,
    pub max_k: usize,
}

impl DevRows {
    pub fn upload(dev: &Dev, rows: &[AttnRow]) -> Result<DevRows, BackendError> {
        let mut desc = Vec::with_capacity(rows.len() * 6);
        for r in rows {
            for v in r.fields() {
                desc.push(i32::try_from(v).map_err(|_| {
                    BackendError::BadBatch(format!("attention span {v} exceeds i32"))
                })?);
            }
        }
        Ok(DevRows {
            desc: dev.upload(&desc)?,
            rows: rows.len(),
            max_q: rows.iter().map(|r| r.q_len).max().unwrap_or(0),
            max_k: rows.iter().map(|r| r.k_len).max().unwrap_or(0),
        })
    }
}
