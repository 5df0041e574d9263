//! How the GPU model stores its values in each precision mode: activations in the mode's product
//! type (`Kept`: f32, or bf16 where every reader reads bf16), the stream gradient between blocks
//! with its bf16 copy (`StreamGrad`), a block's weights with their bf16 copies (`Weights`), and
//! where the cross-entropy gradient gets log Z (`LogZ`).

use cudarc::driver::CudaSlice;

use super::device::{operand, Bf16Buf, Buf, Dev};
use crate::backend::cuda::blas::{Operand, Output};
use crate::backend::{BackendError, Precision};

/// A block's parameters (in checkpoint order: the norm's gain, then the weight matrices) and,
/// in the bf16 mode, the bf16 copies of the matrices that the products read, made once per
/// micro-batch for the forward and backward passes (`None` in the f32 mode).
#[derive(Clone, Copy)]
pub(super) struct Weights<'a> {
    pub f32: &'a [Buf],
    pub bf16: &'a [Option<Bf16Buf>],
}

impl<'a> Weights<'a> {
    /// Parameters `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> Weights<'a> {
        Weights {
            f32: &self.f32[start..start + len],
            bf16: &self.bf16[start..start + len],
        }
    }

    /// What a product reads of parameter `i`: its bf16 copy if it has one.
    pub fn op(&self, i: usize) -> Operand<'a> {
        operand(&self.f32[i], &self.bf16[i])
    }
}

impl std::ops::Index<usize> for Weights<'_> {
    type Output = Buf;

    fn index(&self, i: usize) -> &Buf {
        &self.f32[i]
    }
}

/// The gradient w.r.t. a residual stream between blocks (`dx`) and, in the bf16 mode, its bf16
/// copy, written by the norm backward that last updated `dx` for the next block's products
/// (`None` once taken, or in the f32 mode). `copy_next` says whether another block follows to
/// read one (the stack's first block hands `dx` to the embedding, which reads f32).
pub(super) struct StreamGrad {
    pub dx: Buf,
    pub copy: Option<Bf16Buf>,
    pub copy_next: bool,
}

impl StreamGrad {
    /// What the products read of the gradient w.r.t. a block's branch: the bf16 copy of `dy`,
    /// the branch's dropped-out gradient if there is one, else `dx`, whose copy is taken if the
    /// norm backward left one. `None` in the f32 mode.
    pub(super) fn take_product_copy(
        &mut self,
        dev: &Dev,
        dropped: Option<&Buf>,
    ) -> Result<Option<Bf16Buf>, BackendError> {
        match (dropped, self.copy.take()) {
            (Some(dy), _) => dev.product_copy(dy),
            (None, Some(copy)) => Ok(Some(copy)),
            (None, None) => dev.product_copy(&self.dx),
        }
    }

    /// Adds the backward of a norm (`dy` w.r.t. its output; `x` its input, `inv` its `1/rms`)
    /// into `dx`, leaving the bf16 copy of the result in the bf16 mode if `copy_next`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_norm_backward(
        &mut self,
        dev: &Dev,
        dy: &Buf,
        x: &Buf,
        inv: &Buf,
        gain: &Buf,
        rows: usize,
        width: usize,
    ) -> Result<(), BackendError> {
        let mut copy = match (dev.precision, self.copy_next) {
            // SAFETY: rmsnorm_backward writes every value of the copy.
            (Precision::Bf16, true) => Some(unsafe { dev.stream.alloc::<u16>(self.dx.len()) }?),
            _ => None,
        };
        dev.kernels.rmsnorm_backward(
            dy,
            x,
            inv,
            Some(gain),
            &mut self.dx,
            rows,
            width,
            copy.as_mut(),
        )?;
        self.copy = copy;
        Ok(())
    }
}

/// Where the cross-entropy gradient gets each token's log Z: from `cross_entropy_forward`, run
/// before, or computed in the same launch, which also writes the forward pass's `(log_z, ce,
/// z)` (a vocabulary of at most `launch_tokens::CE_FUSED_VOCAB`).
pub(super) enum LogZ<'a> {
    Known(&'a Buf),
    Fused((&'a mut Buf, &'a mut Buf, &'a mut Buf)),
}

/// An activation in the mode's product type: in the f32 mode the values themselves, in the bf16
/// mode only a bf16 copy (made once, read by every product and kernel that needs it, half the
/// memory). Used where nothing needs more than bf16 precision: values only products read, and
/// the FFN's gate, up and hidden gradient, which products write and SwiGLU reads.
pub(super) enum Kept {
    F32(Buf),
    Bf16(Bf16Buf),
}

impl Kept {
    pub fn new(dev: &Dev, x: Buf) -> Result<Kept, BackendError> {
        Ok(match dev.product_copy(&x)? {
            Some(copy) => Kept::Bf16(copy),
            None => Kept::F32(x),
        })
    }

    pub fn operand(&self) -> Operand<'_> {
        match self {
            Kept::F32(x) => Operand::F32(x),
            Kept::Bf16(x) => Operand::Bf16(x),
        }
    }

    /// This buffer as a product's result (cuBLAS writes the bf16 one rounded).
    pub fn as_output(&mut self) -> Output<'_> {
        match self {
            Kept::F32(x) => Output::F32(x),
            Kept::Bf16(x) => Output::Bf16(x),
        }
    }

    /// The internal error for kernel operands of mixed types (the mode fixes one type).
    pub(super) fn mixed(what: &str) -> BackendError {
        BackendError::Device(format!("internal: {what} of two types"))
    }

    /// The f32 values, for a path that keeps them so.
    pub(super) fn f32(&self) -> Result<&Buf, BackendError> {
        match self {
            Kept::F32(x) => Ok(x),
            Kept::Bf16(_) => Err(BackendError::Device(
                "internal: a bf16 activation where f32 was kept".into(),
            )),
        }
    }

    /// The bf16 values, for a path that keeps them so.
    pub(super) fn bf16(&self) -> Result<&Bf16Buf, BackendError> {
        match self {
            Kept::Bf16(x) => Ok(x),
            Kept::F32(_) => Err(BackendError::Device(
                "internal: an f32 activation where bf16 was kept".into(),
            )),
        }
    }

    /// An output of `n` values in the mode's product type, for a kernel built in both (its
    /// `_bf16` build writes the same values rounded, so in the bf16 mode no f32 copy is
    /// written, read back and converted).
    ///
    /// # Safety
    /// The caller's kernel must write all `n` values before anything reads them.
    pub(super) unsafe fn output(dev: &Dev, n: usize) -> Result<Kept, BackendError> {
        Ok(match dev.precision {
            Precision::Bf16 => Kept::Bf16(unsafe { dev.stream.alloc::<u16>(n) }?),
            Precision::F32 => Kept::F32(dev.scratch(n)?),
        })
    }

    /// RMSNorm of `rows` rows of `x` (with `gain`, if any), keeping `inv` for the backward pass,
    /// and copying `x` into `keep` (if given) as it reads it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rmsnorm(
        dev: &Dev,
        x: &Buf,
        gain: Option<&Buf>,
        inv: &mut Buf,
        rows: usize,
        width: usize,
        eps: f32,
        keep: Option<&mut Buf>,
    ) -> Result<Kept, BackendError> {
        // SAFETY: rmsnorm_forward writes every row.
        let mut y = unsafe { Kept::output(dev, rows * width) }?;
        let k = dev.kernels;
        match &mut y {
            Kept::F32(y) => k.rmsnorm_forward(x, gain, y, inv, rows, width, eps, keep)?,
            Kept::Bf16(y) => k.rmsnorm_forward(x, gain, y, inv, rows, width, eps, keep)?,
        }
        Ok(y)
    }

    /// A residual block's input norm: `(x_in, normed)`, where `x_in` is the copy of the stream
    /// `x` that the backward pass reads (the norm's kernel writes it as it reads `x`).
    pub(super) fn block_norm(
        dev: &Dev,
        x: &Buf,
        gain: &Buf,
        inv: &mut Buf,
        rows: usize,
        width: usize,
        eps: f32,
    ) -> Result<(Buf, Kept), BackendError> {
        let mut x_in = dev.scratch(x.len())?; // the norm's kernel copies every row
        let normed = Kept::rmsnorm(dev, x, Some(gain), inv, rows, width, eps, Some(&mut x_in))?;
        Ok((x_in, normed))
    }

    /// `silu(gate) · up`.
    pub fn swiglu(dev: &Dev, gate: &Kept, up: &Kept) -> Result<Kept, BackendError> {
        // SAFETY: swiglu_forward writes every value.
        let mut h = unsafe { Kept::output(dev, gate.len()) }?;
        let k = dev.kernels;
        match (gate, up, &mut h) {
            (Kept::F32(g), Kept::F32(u), Kept::F32(h)) => k.swiglu_forward(g, u, h)?,
            (Kept::Bf16(g), Kept::Bf16(u), Kept::Bf16(h)) => k.swiglu_forward(g, u, h)?,
            _ => return Err(Kept::mixed("SwiGLU inputs")),
        }
        Ok(h)
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Kept::F32(x) => x.len(),
            Kept::Bf16(x) => x.len(),
        }
    }

    /// The cross-entropy (with z-loss) gradient w.r.t. a chunk's raw logits (`targets.len() x
    /// vocab`), times `grad_scale`, given `log_z` from the forward pass, or computing the forward
    /// pass's values in the same launch, which reads the logits once (`LogZ::Fused`).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_grad(
        dev: &Dev,
        logits: &Buf,
        targets: &CudaSlice<u32>,
        log_z: LogZ<'_>,
        vocab: usize,
        z_loss: f32,
        grad_scale: f32,
    ) -> Result<Kept, BackendError> {
        // SAFETY: both kernels write all `tokens x vocab` values.
        let mut g = unsafe { Kept::output(dev, targets.len() * vocab) }?;
        let k = dev.kernels;
        let (lg, t, scale) = (logits, targets, grad_scale);
        match (&mut g, log_z) {
            (Kept::F32(g), LogZ::Known(lz)) => {
                k.cross_entropy_backward(lg, g, t, lz, vocab, z_loss, scale)?
            }
            (Kept::Bf16(g), LogZ::Known(lz)) => {
                k.cross_entropy_backward(lg, g, t, lz, vocab, z_loss, scale)?
            }
            (Kept::F32(g), LogZ::Fused(sums)) => {
                k.cross_entropy_fused(lg, t, sums, g, vocab, z_loss, scale)?
            }
            (Kept::Bf16(g), LogZ::Fused(sums)) => {
                k.cross_entropy_fused(lg, t, sums, g, vocab, z_loss, scale)?
            }
        }
        Ok(g)
    }

    /// SwiGLU's gradients w.r.t. gate and up, given `dh`.
    pub fn swiglu_grads(
        dev: &Dev,
        dh: &Kept,
        gate: &Kept,
        up: &Kept,
    ) -> Result<(Kept, Kept), BackendError> {
        let n = dh.len();
        // SAFETY: swiglu_backward writes every value of both.
        let (mut dgate, mut dup) = unsafe { (Kept::output(dev, n)?, Kept::output(dev, n)?) };
        let k = dev.kernels;
        match (dh, gate, up, &mut dgate, &mut dup) {
            (Kept::F32(d), Kept::F32(g), Kept::F32(u), Kept::F32(dg), Kept::F32(du)) => {
                k.swiglu_backward(d, g, u, dg, du)?
            }
            (Kept::Bf16(d), Kept::Bf16(g), Kept::Bf16(u), Kept::Bf16(dg), Kept::Bf16(du)) => {
                k.swiglu_backward(d, g, u, dg, du)?
            }
            _ => return Err(Kept::mixed("SwiGLU backward operands")),
        }
        Ok((dgate, dup))
    }
}
