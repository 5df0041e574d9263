//! What the model code on the GPU works with: the stream, the kernels and cuBLAS in one handle
//! (`Dev`), allocation and copy helpers, the linear-layer products in the CPU reference's terms
//! (its `matmul`), and a micro-batch's inputs (`inputs::BatchInputs`) copied up in one
//! transfer.

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, DeviceRepr, DriverError, PinnedHostSlice, ValidAsZeroBits,
};

use super::inputs::{BatchInputs, ModelParts, Part, RowsParts, StreamParts};
use crate::backend::cuda::blas::products::{self, Product};
use crate::backend::cuda::blas::{Blas, BlasError, Operand, Output};
use crate::backend::cuda::kernels::{CudaKernels, LaunchError};
use crate::backend::cuda::options::CudaOptions;
use crate::backend::{BackendError, Precision};

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
    pub options: &'a CudaOptions,
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
        c: impl Into<Output<'a>>,
    ) -> Result<(), BackendError> {
        Ok(self.blas.gemm(
            self.kernels,
            self.precision,
            spec,
            a.into(),
            la,
            b.into(),
            lb,
            c.into(),
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
        out: impl Into<Output<'a>>,
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
        dx: impl Into<Output<'a>>,
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
        dw: impl Into<Output<'a>>,
        dy: impl Into<Operand<'a>>,
        x: impl Into<Operand<'a>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), BackendError> {
        self.product(products::linear_backward_weight(m, k, n), dy, x, dw)
    }
}

/// Where a micro-batch's packed input words are: pinned host memory filled ahead of the step
/// (`staging.rs`), or an ordinary vector (built on the training thread, or when pinned memory
/// could not be had).
pub(super) enum Words<'a> {
    Pinned(&'a PinnedHostSlice<u32>),
    Host(&'a [u32]),
}

/// A token stream (`crate::model::stream::Stream`) on the device, with the embedding backward's
/// chains.
pub(super) struct DevStream {
    pub len: usize,
    pub tokens: CudaSlice<u32>,
    pub rows: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    pub docs: CudaSlice<u32>,
    pub chain_first: CudaSlice<i32>,
    pub chain_next: CudaSlice<i32>,
}

/// Attention rows (`crate::model::attention::AttnRow`) on the device: six `i32` per row, and the
/// longest query and key spans (the padded batched layout's sizes).
pub(super) struct DevRows {
    pub desc: CudaSlice<i32>,
    pub rows: usize,
    pub max_q: usize,
    pub max_k: usize,
}

/// One logits chunk's scored tokens on the device (`inputs::ChunkParts`).
pub(super) struct DevChunk {
    pub len: usize,
    pub index: CudaSlice<u32>,
    pub targets: CudaSlice<u32>,
    pub first: CudaSlice<i32>,
    pub next: CudaSlice<i32>,
}

/// The device copies of a micro-batch's inputs (`inputs::BatchInputs`), per architecture (one
/// per micro-batch, so the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum DevModel {
    Dec {
        stream: DevStream,
        rows: DevRows,
    },
    Red {
        enc: DevStream,
        dec: DevStream,
        enc_rows: DevRows,
        dec_rows: DevRows,
        cross_rows: DevRows,
    },
}

pub(super) struct DevInputs {
    pub model: DevModel,
    pub chunks: Vec<DevChunk>,
}

/// The word array on the device, and typed copies of its parts.
struct Arena<'d> {
    dev: &'d Dev<'d>,
    words: CudaSlice<u32>,
}

impl Arena<'_> {
    /// A device copy of `part`'s words as `T` (`u32` or `i32`: 4-byte values whose words hold
    /// their bits). The copy stays on the device.
    fn take<T: DeviceRepr>(&self, part: Part) -> Result<CudaSlice<T>, BackendError> {
        const { assert!(std::mem::size_of::<T>() == 4) };
        let end = part.offset + part.len;
        if part.len == 0 || end > self.words.len() {
            return Err(BackendError::Device(format!(
                "internal: input part {}..{end} of {} words",
                part.offset,
                self.words.len()
            )));
        }
        let view = self.words.slice(part.offset..end);
        // SAFETY: every `T` here is a 4-byte type for which any bit pattern is valid, and the
        // view has exactly `part.len` words.
        let view = unsafe { view.transmute::<T>(part.len) }.ok_or_else(|| {
            BackendError::Device("internal: an input part does not fit its words".into())
        })?;
        // SAFETY: the copy below writes all `part.len` values before anything reads them.
        let mut out = unsafe { self.dev.stream.alloc::<T>(part.len) }?;
        self.dev.stream.memcpy_dtod(&view, &mut out)?;
        Ok(out)
    }

    fn stream(&self, p: &StreamParts) -> Result<DevStream, BackendError> {
        Ok(DevStream {
            len: p.len,
            tokens: self.take(p.tokens)?,
            rows: self.take(p.rows)?,
            positions: self.take(p.positions)?,
            docs: self.take(p.docs)?,
            chain_first: self.take(p.chain_first)?,
            chain_next: self.take(p.chain_next)?,
        })
    }

    fn rows(&self, p: &RowsParts) -> Result<DevRows, BackendError> {
        Ok(DevRows {
            desc: self.take(p.desc)?,
            rows: p.rows,
            max_q: p.max_q,
            max_k: p.max_k,
        })
    }
}

impl DevInputs {
    /// Copies the words to the device in one transfer (asynchronous from pinned memory) and
    /// splits them into the typed buffers the model reads (device-to-device copies, on the
    /// same stream). `None` when nothing is scored (there is nothing to upload).
    pub fn upload(
        dev: &Dev,
        inputs: &BatchInputs,
        words: Words<'_>,
    ) -> Result<Option<DevInputs>, BackendError> {
        if inputs.model == ModelParts::Empty {
            return Ok(None);
        }
        let n = match words {
            Words::Pinned(p) => p.len(),
            Words::Host(w) => w.len(),
        };
        if n < inputs.words.len() || n == 0 {
            return Err(BackendError::Device(format!(
                "internal: {n} staged words for {} words of inputs",
                inputs.words.len()
            )));
        }
        // SAFETY: the copy below writes the first `n` words; parts read only below
        // `inputs.words.len() <= n`.
        let mut device = unsafe { dev.stream.alloc::<u32>(n) }?;
        match words {
            Words::Pinned(p) => dev.stream.memcpy_htod(p, &mut device)?,
            Words::Host(w) => dev.stream.memcpy_htod(w, &mut device)?,
        }
        let arena = Arena { dev, words: device };
        let model = match &inputs.model {
            ModelParts::Empty => return Ok(None),
            ModelParts::Dec { stream, rows } => DevModel::Dec {
                stream: arena.stream(stream)?,
                rows: arena.rows(rows)?,
            },
            ModelParts::Red {
                enc,
                dec,
                enc_rows,
                dec_rows,
                cross_rows,
            } => DevModel::Red {
                enc: arena.stream(enc)?,
                dec: arena.stream(dec)?,
                enc_rows: arena.rows(enc_rows)?,
                dec_rows: arena.rows(dec_rows)?,
                cross_rows: arena.rows(cross_rows)?,
            },
        };
        let chunks = inputs
            .chunks
            .iter()
            .map(|c| {
                Ok(DevChunk {
                    len: c.index.len,
                    index: arena.take(c.index)?,
                    targets: arena.take(c.targets)?,
                    first: arena.take(c.first)?,
                    next: arena.take(c.next)?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(Some(DevInputs { model, chunks }))
    }
}
