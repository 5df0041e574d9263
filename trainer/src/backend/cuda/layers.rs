//! The residual blocks on the GPU, forward and backward, step for step as `cpu::layers` and
//! `cpu::attention` (same order of operations, same parameter layout). Differences, all
//! rounding-level: the residual add is fused into the output projection (`beta = 1`) when there
//! is no dropout; per-head norms keep their input and `1/rms` instead of the normalized values
//! (the kernels recompute `x̂`); attention runs fused (`flash.cu`) in the bf16 mode, as padded
//! batched products over (row, head) in the f32 mode. In the bf16 mode, values whose readers all
//! read bf16 are stored so (`Kept`): product inputs, the FFN's gate, up and hidden gradient, and
//! the attention's projections, output and gradients.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use super::blas::{Operand, Output, Precision};
use super::device::{operand, Bf16Buf, Buf, Dev, DevRows, DevStream};
use super::launch_flash::{FlashShape, FlashVariant};
use super::launch_model::{PackShape, PackSide};
use super::launch_tokens::ScoresShape;
use super::products::AttnSizes;
use crate::backend::BackendError;

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

/// Shapes and constants shared by all blocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub d: usize,
    pub f: usize,
    pub heads: usize,
    pub hd: usize,
    pub eps: f32,
}

impl Dims {
    pub fn da(&self) -> usize {
        self.heads * self.hd
    }
}

/// RoPE tables on the device (`cpu::ops::Rope::tables`).
pub(super) struct DevRope {
    pub cos: Buf,
    pub sin: Buf,
}

/// How an attention block attends (`cpu::layers::AttnSpec`).
pub(super) struct DevAttn<'a> {
    pub queries: &'a DevStream,
    pub keys: &'a DevStream,
    pub rows: &'a DevRows,
    /// Reset at document boundaries (uses the streams' document ids).
    pub docs: bool,
    pub rope: &'a DevRope,
    pub out_norm: bool,
}

/// Dropout on one residual branch: probability, seed and site (`cpu::ops::Dropout`).
#[derive(Debug, Clone, Copy)]
pub(super) struct DropSite {
    pub p: f32,
    pub seed: u64,
    pub site: u64,
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
    fn take_product_copy(
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
        dev.kernels.rmsnorm_backward_copying(
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

/// An attention block's five tensors (norm, q, k, v, o) or their gradients.
pub(super) struct AttnCache {
    x_in: Buf,
    inv: Buf,
    normed: Kept,
    /// The Q, K and V projections before their per-head norms (bf16 for the fused attention,
    /// whose kernels read them so), and their `1/rms`.
    q_raw: Kept,
    q_inv: Buf,
    k_raw: Kept,
    k_inv: Buf,
    v_raw: Kept,
    v_inv: Buf,
    /// What the attention's backward pass needs of Q, K and V.
    attn: AttnKept,
    /// The attention output before the per-head norm (RedLLM only; bf16 from the fused
    /// attention) and its `1/rms`.
    o_raw: Option<(Kept, Buf)>,
    o_in: Kept,
}

pub(super) struct FfnCache {
    x_in: Buf,
    inv: Buf,
    normed: Kept,
    gate: Kept,
    up: Kept,
    hidden: Kept,
}

/// The attention inputs kept for the backward pass: for the fused kernels their bf16 copies and
/// the per-query log-sum-exp (so the backward pass recomputes no forward), else the f32 values.
pub(super) enum AttnKept {
    Fused {
        q: Bf16Buf,
        k: Bf16Buf,
        v: Bf16Buf,
        lse: Buf,
    },
    Batched {
        q: Buf,
        k: Buf,
        v: Buf,
    },
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
    fn mixed(what: &str) -> BackendError {
        BackendError::Device(format!("internal: {what} of two types"))
    }

    /// The f32 values, for a path that keeps them so.
    fn f32(&self) -> Result<&Buf, BackendError> {
        match self {
            Kept::F32(x) => Ok(x),
            Kept::Bf16(_) => Err(BackendError::Device(
                "internal: a bf16 activation where f32 was kept".into(),
            )),
        }
    }

    /// The bf16 values, for a path that keeps them so.
    fn bf16(&self) -> Result<&Bf16Buf, BackendError> {
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
    fn rmsnorm(
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
            Kept::F32(y) => k.rmsnorm_forward_keeping(x, gain, y, inv, rows, width, eps, keep)?,
            Kept::Bf16(y) => k.rmsnorm_forward_keeping(x, gain, y, inv, rows, width, eps, keep)?,
        }
        Ok(y)
    }

    /// A residual block's input norm: `(x_in, normed)`, where `x_in` is the copy of the stream
    /// `x` that the backward pass reads (the norm's kernel writes it as it reads `x`).
    fn block_norm(
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

    fn len(&self) -> usize {
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

/// `input (tokens x d) · wᵀ`, the raw Q, K or V projection (`tokens x heads·head_dim`).
fn projection(
    dev: &Dev,
    dims: &Dims,
    input: Operand<'_>,
    w: Operand<'_>,
    tokens: usize,
) -> Result<Buf, BackendError> {
    let (d, da) = (dims.d, dims.da());
    let mut raw = dev.scratch(tokens * da)?; // the product (beta 0) writes it all
    dev.linear_forward(&mut raw, input, w, tokens, d, da, false)?;
    Ok(raw)
}

/// `(raw, x̂, 1/rms)` of a projection normalized per head.
fn project(
    dev: &Dev,
    dims: &Dims,
    input: Operand<'_>,
    w: Operand<'_>,
    tokens: usize,
) -> Result<(Kept, Buf, Buf), BackendError> {
    let raw = projection(dev, dims, input, w, tokens)?;
    let mut hat = dev.scratch(tokens * dims.da())?; // rmsnorm_forward writes every group
    let mut inv = dev.scratch(tokens * dims.heads)?;
    dev.kernels.rmsnorm_forward(
        &raw,
        None,
        &mut hat,
        &mut inv,
        tokens * dims.heads,
        dims.hd,
        dims.eps,
    )?;
    Ok((Kept::F32(raw), hat, inv))
}

/// `project` for the fused attention: the product writes the projection in bf16, then the
/// per-head norm and, with `rope` (positions and tables), the rotation run in one kernel that
/// writes the bf16 copy the attention kernels read; no f32 values are stored. Returns the
/// projection, `1/rms` per head and the copy.
fn project_bf16(
    dev: &Dev,
    dims: &Dims,
    input: Operand<'_>,
    w: Operand<'_>,
    tokens: usize,
    rope: Option<(&CudaSlice<u32>, &DevRope)>,
) -> Result<(Kept, Buf, Bf16Buf), BackendError> {
    let (d, da) = (dims.d, dims.da());
    // SAFETY: the product (beta 0) writes it all.
    let mut raw = unsafe { dev.stream.alloc::<u16>(tokens * da) }?;
    dev.linear_forward(&mut raw, input, w, tokens, d, da, false)?;
    // The kernel writes every group's `inv` and every value of `out`.
    let mut inv = dev.scratch(tokens * dims.heads)?;
    // SAFETY: head_norm_rope_bf16 writes every value.
    let mut out = unsafe { dev.stream.alloc::<u16>(tokens * dims.da()) }?;
    let tables = rope.map(|(positions, r)| (positions, &r.cos, &r.sin));
    dev.kernels.head_norm_rope_bf16(
        &raw, &mut out, &mut inv, tables, dims.heads, dims.hd, dims.eps,
    )?;
    Ok((Kept::Bf16(raw), inv, out))
}

/// Adds a branch's output `y` (`tokens x d`) into the stream `x`, through dropout if any.
fn add_branch(
    dev: &Dev,
    x: &mut Buf,
    mut y: Buf,
    stream: &DevStream,
    width: usize,
    dropout: Option<DropSite>,
) -> Result<(), BackendError> {
    if let Some(dr) = dropout {
        dev.kernels.dropout_apply(
            &mut y,
            &stream.rows,
            &stream.positions,
            width,
            dr.p,
            dr.seed,
            dr.site,
        )?;
    }
    dev.kernels.add_inplace(x, &y)?;
    Ok(())
}

/// The gradient w.r.t. a branch's output: `dx` itself, or a dropped-out copy.
fn branch_grad(
    dev: &Dev,
    dx: &Buf,
    stream: &DevStream,
    width: usize,
    dropout: Option<DropSite>,
) -> Result<Option<Buf>, BackendError> {
    let Some(dr) = dropout else { return Ok(None) };
    let mut dy = dev.copy(dx)?;
    dev.kernels.dropout_apply(
        &mut dy,
        &stream.rows,
        &stream.positions,
        width,
        dr.p,
        dr.seed,
        dr.site,
    )?;
    Ok(Some(dy))
}

/// The padded shapes of the query and key sides.
fn pack_shapes(dims: &Dims, rows: &DevRows) -> (PackShape, PackShape) {
    let shape = |max_len, side| PackShape {
        rows: rows.rows,
        heads: dims.heads,
        head_dim: dims.hd,
        max_len,
        side,
    };
    (
        shape(rows.max_q, PackSide::Queries),
        shape(rows.max_k, PackSide::Keys),
    )
}

/// The batched products' sizes: one (row, head) per batch entry, padded to the longest span.
fn attn_sizes(dims: &Dims, rows: &DevRows) -> AttnSizes {
    AttnSizes {
        batch: rows.rows * dims.heads,
        max_q: rows.max_q,
        max_k: rows.max_k,
        head_dim: dims.hd,
    }
}

/// Padded Q, K, V and the probabilities `P` of every (row, head).
struct Probs {
    qp: Buf,
    kp: Buf,
    vp: Buf,
    p: Buf,
}

fn probabilities(
    dev: &Dev,
    dims: &Dims,
    spec: &DevAttn,
    q: &Buf,
    k: &Buf,
    v: &Buf,
) -> Result<Probs, BackendError> {
    let rows = spec.rows;
    let (qs, ks) = pack_shapes(dims, rows);
    let (mq, mk, hd) = (rows.max_q, rows.max_k, dims.hd);
    let batch = rows.rows * dims.heads;
    // Scratch buffers below: each is written whole by the pack kernel (padding included), the
    // batched product (beta 0) or the softmax kernel (every line) that follows it.
    let mut qp = dev.scratch(qs.len())?;
    let mut kp = dev.scratch(ks.len())?;
    let mut vp = dev.scratch(ks.len())?;
    dev.kernels.attn_pack(q, &mut qp, &rows.desc, qs)?;
    dev.kernels.attn_pack(k, &mut kp, &rows.desc, ks)?;
    dev.kernels.attn_pack(v, &mut vp, &rows.desc, ks)?;
    // S = Q Kᵀ per (row, head), unscaled: the softmax kernel applies the scale.
    let sizes = attn_sizes(dims, rows);
    let mut s = dev.scratch(batch * mq * mk)?;
    dev.product(sizes.scores(), &qp, &kp, &mut s)?;
    let mut p = dev.scratch(batch * mq * mk)?;
    let docs = spec.docs.then_some((&spec.queries.docs, &spec.keys.docs));
    let shape = ScoresShape {
        rows: rows.rows,
        heads: dims.heads,
        max_q: mq,
        max_k: mk,
    };
    let scale = 1.0 / (hd as f32).sqrt();
    dev.kernels
        .masked_softmax_forward(&s, &mut p, &rows.desc, docs, shape, scale)?;
    Ok(Probs { qp, kp, vp, p })
}

fn fused_attention(dev: &Dev, dims: &Dims) -> bool {
    super::launch_flash::fused_attention(dev.precision, dims.hd)
}

fn flash_shape(dims: &Dims, rows: &DevRows) -> FlashShape {
    FlashShape {
        rows: rows.rows,
        heads: dims.heads,
        head_dim: dims.hd,
        max_q: rows.max_q,
        max_k: rows.max_k,
        variant: FlashVariant::from_env(),
        tune: super::launch_flash::tuning_from_env(),
    }
}

/// The fused forward over bf16 copies of Q, K, V: the (bf16) output stream and the per-query
/// log-sum-exp.
fn flash_forward(
    dev: &Dev,
    dims: &Dims,
    spec: &DevAttn,
    (q, k, v): (&Bf16Buf, &Bf16Buf, &Bf16Buf),
) -> Result<(Bf16Buf, Buf), BackendError> {
    let rows = spec.rows;
    let shape = flash_shape(dims, rows);
    let mut o = dev.zeros_of::<u16>(spec.queries.len * dims.da())?;
    // Read back only for queries inside a row, which the kernel writes.
    let mut lse = dev.scratch(shape.lines().max(1))?;
    let docs = spec.docs.then_some((&spec.queries.docs, &spec.keys.docs));
    dev.kernels
        .flash_forward(q, k, v, &rows.desc, docs, shape, &mut o, &mut lse)?;
    Ok((o, lse))
}

/// Zeroed gradients for Q (query stream) and K, V (key stream): tokens outside every row keep
/// a zero gradient.
fn zero_qkv_grads<T: DeviceRepr + ValidAsZeroBits>(
    dev: &Dev,
    dims: &Dims,
    spec: &DevAttn,
) -> Result<[CudaSlice<T>; 3], BackendError> {
    let da = dims.da();
    Ok([
        dev.zeros_of(spec.queries.len * da)?,
        dev.zeros_of(spec.keys.len * da)?,
        dev.zeros_of(spec.keys.len * da)?,
    ])
}

/// The fused backward: the bf16 gradients w.r.t. Q, K and V from the forward's bf16 inputs, its
/// log-sum-exp and (bf16) output, and the (bf16) output gradient.
fn flash_backward(
    dev: &Dev,
    dims: &Dims,
    spec: &DevAttn,
    (q, k, v): (&Bf16Buf, &Bf16Buf, &Bf16Buf),
    lse: &Buf,
    o: &Bf16Buf,
    dob: &Bf16Buf,
) -> Result<(Bf16Buf, Bf16Buf, Bf16Buf), BackendError> {
    let [mut dq, mut dk, mut dv] = zero_qkv_grads::<u16>(dev, dims, spec)?;
    let rows = spec.rows;
    if rows.max_q == 0 || rows.max_k == 0 {
        return Ok((dq, dk, dv));
    }
    let shape = flash_shape(dims, rows);
    let mut delta = dev.scratch(shape.lines())?; // every line written
    dev.kernels
        .flash_delta(dob, o, &rows.desc, shape, &mut delta)?;
    let docs = spec.docs.then_some((&spec.queries.docs, &spec.keys.docs));
    dev.kernels.flash_backward(
        q,
        k,
        v,
        dob,
        lse,
        &delta,
        &rows.desc,
        docs,
        shape,
        (&mut dq, &mut dk, &mut dv),
    )?;
    Ok((dq, dk, dv))
}

/// `softmax(Q Kᵀ / sqrt(head_dim) + mask) V` (`cpu::attention::attention_forward`).
fn attention_forward(
    dev: &Dev,
    dims: &Dims,
    spec: &DevAttn,
    q: &Buf,
    k: &Buf,
    v: &Buf,
) -> Result<Buf, BackendError> {
    let rows = spec.rows;
    let mut o = dev.zeros(spec.queries.len * dims.da())?;
    if rows.max_q == 0 || rows.max_k == 0 {
        return Ok(o);
    }
    let (qs, _) = pack_shapes(dims, rows);
    let pr = probabilities(dev, dims, spec, q, k, v)?;
    let sizes = attn_sizes(dims, rows);
    let mut op = dev.scratch(qs.len())?;
    dev.product(sizes.output(), &pr.p, &pr.vp, &mut op)?;
    dev.kernels.attn_unpack(&op, &mut o, &rows.desc, qs)?;
    Ok(o)
}

/// Gradients w.r.t. Q, K, V given `d_o` (`cpu::attention::attention_backward`); the
/// probabilities are recomputed, as on the CPU.
fn attention_backward(
    dev: &Dev,
    dims: &Dims,
    spec: &DevAttn,
    q: &Buf,
    k: &Buf,
    v: &Buf,
    d_o: &Buf,
) -> Result<(Buf, Buf, Buf), BackendError> {
    let [mut dq, mut dk, mut dv] = zero_qkv_grads::<f32>(dev, dims, spec)?;
    let rows = spec.rows;
    if rows.max_q == 0 || rows.max_k == 0 {
        return Ok((dq, dk, dv));
    }
    let (qs, ks) = pack_shapes(dims, rows);
    let (mq, mk, hd) = (rows.max_q, rows.max_k, dims.hd);
    let batch = rows.rows * dims.heads;
    let pr = probabilities(dev, dims, spec, q, k, v)?;
    // Scratch: written whole by the pack kernel, the products and the softmax backward.
    let mut dop = dev.scratch(qs.len())?;
    dev.kernels.attn_pack(d_o, &mut dop, &rows.desc, qs)?;
    // dP = dO Vᵀ
    let sizes = attn_sizes(dims, rows);
    let mut dp = dev.scratch(batch * mq * mk)?;
    dev.product(sizes.d_probs(), &dop, &pr.vp, &mut dp)?;
    // dV = Pᵀ dO
    let mut dvp = dev.scratch(ks.len())?;
    dev.product(sizes.d_values(), &pr.p, &dop, &mut dvp)?;
    drop(dop);
    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)), w.r.t. the unscaled scores.
    let mut ds = dev.scratch(batch * mq * mk)?;
    let shape = ScoresShape {
        rows: rows.rows,
        heads: dims.heads,
        max_q: mq,
        max_k: mk,
    };
    let scale = 1.0 / (hd as f32).sqrt();
    dev.kernels
        .masked_softmax_backward(&pr.p, &dp, &mut ds, shape, scale)?;
    drop(dp);
    // dQ = dS K, dK = dSᵀ Q
    let mut dqp = dev.scratch(qs.len())?;
    dev.product(sizes.d_queries(), &ds, &pr.kp, &mut dqp)?;
    let mut dkp = dev.scratch(ks.len())?;
    dev.product(sizes.d_keys(), &ds, &pr.qp, &mut dkp)?;
    dev.kernels.attn_unpack(&dqp, &mut dq, &rows.desc, qs)?;
    dev.kernels.attn_unpack(&dkp, &mut dk, &rows.desc, ks)?;
    dev.kernels.attn_unpack(&dvp, &mut dv, &rows.desc, ks)?;
    Ok((dq, dk, dv))
}

/// Forward of an attention block (`cpu::layers::attention_block_forward`); `w` holds the
/// block's five tensors, `kv` the encoder output for cross-attention.
pub(super) fn attention_block_forward(
    dev: &Dev,
    dims: &Dims,
    w: Weights<'_>,
    x: &mut Buf,
    kv: Option<&Buf>,
    spec: &DevAttn,
    dropout: Option<DropSite>,
) -> Result<AttnCache, BackendError> {
    let (d, da, hd, heads) = (dims.d, dims.da(), dims.hd, dims.heads);
    let n = spec.queries.len;
    let nk = spec.keys.len;
    let mut inv = dev.scratch(n)?; // rmsnorm_forward writes every row
    let (x_in, normed) = Kept::block_norm(dev, x, &w[0], &mut inv, n, d, dims.eps)?;
    let kv_copy = match kv {
        Some(src) => dev.product_copy(src)?,
        None => None,
    };
    let src = match kv {
        Some(src) => operand(src, &kv_copy),
        None => normed.operand(),
    };
    let rope = spec.rope;
    let (q_raw, q_inv, k_raw, k_inv, v_raw, v_inv, o, attn);
    if fused_attention(dev, dims) {
        let (queries, keys) = (&spec.queries.positions, &spec.keys.positions);
        let (q, k, v);
        (q_raw, q_inv, q) = project_bf16(
            dev,
            dims,
            normed.operand(),
            w.op(1),
            n,
            Some((queries, rope)),
        )?;
        (k_raw, k_inv, k) = project_bf16(dev, dims, src, w.op(2), nk, Some((keys, rope)))?;
        (v_raw, v_inv, v) = project_bf16(dev, dims, src, w.op(3), nk, None)?;
        drop(kv_copy);
        let (out, lse) = flash_forward(dev, dims, spec, (&q, &k, &v))?;
        o = Kept::Bf16(out);
        attn = AttnKept::Fused { q, k, v, lse };
    } else {
        let (mut q_rot, mut k_rot, v_hat);
        (q_raw, q_rot, q_inv) = project(dev, dims, normed.operand(), w.op(1), n)?;
        (k_raw, k_rot, k_inv) = project(dev, dims, src, w.op(2), nk)?;
        (v_raw, v_hat, v_inv) = project(dev, dims, src, w.op(3), nk)?;
        drop(kv_copy);
        for (x, positions) in [
            (&mut q_rot, &spec.queries.positions),
            (&mut k_rot, &spec.keys.positions),
        ] {
            dev.kernels
                .rope_apply(x, positions, &rope.cos, &rope.sin, heads, hd, false)?;
        }
        o = Kept::F32(attention_forward(dev, dims, spec, &q_rot, &k_rot, &v_hat)?);
        attn = AttnKept::Batched {
            q: q_rot,
            k: k_rot,
            v: v_hat,
        };
    }
    let (o_raw, o_in) = match (spec.out_norm, o) {
        (true, o) => {
            let mut o_inv = dev.scratch(n * heads)?; // the norm's kernel writes every group
            let o_hat = match &o {
                // SAFETY: head_norm_rope_bf16 writes every value.
                Kept::Bf16(raw) => Kept::Bf16({
                    let mut hat = unsafe { dev.stream.alloc::<u16>(raw.len()) }?;
                    dev.kernels.head_norm_rope_bf16(
                        raw, &mut hat, &mut o_inv, None, heads, hd, dims.eps,
                    )?;
                    hat
                }),
                Kept::F32(raw) => {
                    Kept::rmsnorm(dev, raw, None, &mut o_inv, n * heads, hd, dims.eps, None)?
                }
            };
            (Some((o, o_inv)), o_hat)
        }
        (false, Kept::F32(o)) => (None, Kept::new(dev, o)?),
        (false, o) => (None, o),
    };
    if dropout.is_some() {
        let mut y = dev.scratch(n * d)?; // the product (beta 0) writes it all
        dev.linear_forward(&mut y, o_in.operand(), w.op(4), n, da, d, false)?;
        add_branch(dev, x, y, spec.queries, d, dropout)?;
    } else {
        dev.linear_forward(x, o_in.operand(), w.op(4), n, da, d, true)?;
    }
    Ok(AttnCache {
        x_in,
        inv,
        normed,
        q_raw,
        q_inv,
        k_raw,
        k_inv,
        v_raw,
        v_inv,
        attn,
        o_raw,
        o_in,
    })
}

/// The backward of `project_bf16`'s norm and rotation: the bf16 gradient w.r.t. the projection
/// `raw` from `grad`, the gradient w.r.t. the attention's input copy.
fn head_grad_bf16(
    dev: &Dev,
    dims: &Dims,
    grad: &Bf16Buf,
    raw: &Kept,
    inv: &Buf,
    rope: Option<(&CudaSlice<u32>, &DevRope)>,
) -> Result<Kept, BackendError> {
    let raw = raw.bf16()?;
    // SAFETY: head_norm_rope_backward_bf16 writes every value.
    let mut out = unsafe { dev.stream.alloc::<u16>(raw.len()) }?;
    let tables = rope.map(|(positions, r)| (positions, &r.cos, &r.sin));
    dev.kernels
        .head_norm_rope_backward_bf16(grad, raw, inv, tables, &mut out, dims.heads, dims.hd)?;
    Ok(Kept::Bf16(out))
}

/// `dx (tokens x hd·heads) = backward of the per-head norm` given the gradient w.r.t. `x̂`.
fn head_norm_backward(
    dev: &Dev,
    dims: &Dims,
    grad: &Buf,
    raw: &Buf,
    inv: &Buf,
    tokens: usize,
) -> Result<Buf, BackendError> {
    let mut out = dev.zeros(tokens * dims.da())?;
    dev.kernels
        .rmsnorm_backward(grad, raw, inv, None, &mut out, tokens * dims.heads, dims.hd)?;
    Ok(out)
}

/// Backward of `attention_block_forward`: `dx` holds the gradient w.r.t. the block output and
/// becomes the gradient w.r.t. its input (with its bf16 copy, in the bf16 mode); `g` are the block's five gradient buffers; for
/// cross-attention `kv` is the encoder output and its gradient, added into.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_block_backward(
    dev: &Dev,
    dims: &Dims,
    w: Weights<'_>,
    g: &mut [Buf],
    cache: &AttnCache,
    dx: &mut StreamGrad,
    kv: Option<(&Buf, &mut Buf)>,
    spec: &DevAttn,
    dropout: Option<DropSite>,
) -> Result<(), BackendError> {
    let (d, da, hd, heads) = (dims.d, dims.da(), dims.hd, dims.heads);
    let n = spec.queries.len;
    let nk = spec.keys.len;
    let [g_norm, g_q, g_k, g_v, g_o] = g else {
        return Err(BackendError::BadModel(
            "an attention block owns exactly 5 tensors".into(),
        ));
    };
    let dropped = branch_grad(dev, &dx.dx, spec.queries, d, dropout)?;
    let dy_copy = dx.take_product_copy(dev, dropped.as_ref())?;
    let dy: &Buf = dropped.as_ref().unwrap_or(&dx.dx);
    let dy_op = operand(dy, &dy_copy);
    dev.linear_backward_weight(g_o, dy_op, cache.o_in.operand(), n, da, d)?;
    // The gradient w.r.t. the attention output: straight from the product in bf16 for the
    // fused attention (whose kernels, and RedLLM's output norm before them, read bf16), else f32.
    let fused = matches!(cache.attn, AttnKept::Fused { .. });
    // SAFETY (both): the product (beta 0) writes it all.
    let mut d_o = match fused {
        true => Kept::Bf16(unsafe { dev.stream.alloc::<u16>(n * da) }?),
        false => Kept::F32(dev.scratch(n * da)?),
    };
    dev.linear_backward_input(d_o.as_output(), dy_op, w.op(4), n, da, d, false)?;
    drop(dy_copy);
    drop(dropped);
    if let Some((o_raw, o_inv)) = &cache.o_raw {
        d_o = match &d_o {
            Kept::Bf16(grad) => head_grad_bf16(dev, dims, grad, o_raw, o_inv, None)?,
            Kept::F32(grad) => {
                Kept::F32(head_norm_backward(dev, dims, grad, o_raw.f32()?, o_inv, n)?)
            }
        };
    }
    let rope = spec.rope;
    let (queries, keys) = (&spec.queries.positions, &spec.keys.positions);
    // The gradients w.r.t. the projections, kept as the products read them.
    let (dq, dk, dv) = match &cache.attn {
        AttnKept::Fused { q, k, v, lse } => {
            // delta = rowsum(dO ⊙ O) wants the attention output: RedLLM keeps it (before its
            // per-head norm), DecLLM's is the output projection's input.
            let o = match &cache.o_raw {
                Some((raw, _)) => raw.bf16()?,
                None => cache.o_in.bf16()?,
            };
            let dob = match d_o {
                Kept::Bf16(dob) => dob,
                Kept::F32(d_o) => dev.bf16(&d_o)?,
            };
            let (dq, dk, dv) = flash_backward(dev, dims, spec, (q, k, v), lse, o, &dob)?;
            drop(dob);
            // RoPE and the per-head norms backwards, straight into the bf16 copies.
            (
                head_grad_bf16(
                    dev,
                    dims,
                    &dq,
                    &cache.q_raw,
                    &cache.q_inv,
                    Some((queries, rope)),
                )?,
                head_grad_bf16(
                    dev,
                    dims,
                    &dk,
                    &cache.k_raw,
                    &cache.k_inv,
                    Some((keys, rope)),
                )?,
                head_grad_bf16(dev, dims, &dv, &cache.v_raw, &cache.v_inv, None)?,
            )
        }
        AttnKept::Batched { q, k, v } => {
            let (mut dq, mut dk, dv) = attention_backward(dev, dims, spec, q, k, v, d_o.f32()?)?;
            drop(d_o);
            let kernels = dev.kernels;
            kernels.rope_apply(&mut dq, queries, &rope.cos, &rope.sin, heads, hd, true)?;
            kernels.rope_apply(&mut dk, keys, &rope.cos, &rope.sin, heads, hd, true)?;
            let (q_raw, k_raw, v_raw) =
                (cache.q_raw.f32()?, cache.k_raw.f32()?, cache.v_raw.f32()?);
            let dq = head_norm_backward(dev, dims, &dq, q_raw, &cache.q_inv, n)?;
            let dk = head_norm_backward(dev, dims, &dk, k_raw, &cache.k_inv, nk)?;
            let dv = head_norm_backward(dev, dims, &dv, v_raw, &cache.v_inv, nk)?;
            (
                Kept::new(dev, dq)?,
                Kept::new(dev, dk)?,
                Kept::new(dev, dv)?,
            )
        }
    };
    let (dq_op, dk_op, dv_op) = (dq.operand(), dk.operand(), dv.operand());
    let mut d_normed = dev.scratch(n * d)?; // the dq product (beta 0) writes it all
    let normed = cache.normed.operand();
    dev.linear_backward_weight(g_q, dq_op, normed, n, d, da)?;
    dev.linear_backward_input(&mut d_normed, dq_op, w.op(1), n, d, da, false)?;
    match kv {
        None => {
            dev.linear_backward_weight(g_k, dk_op, normed, n, d, da)?;
            dev.linear_backward_weight(g_v, dv_op, normed, n, d, da)?;
            dev.linear_backward_input(&mut d_normed, dk_op, w.op(2), n, d, da, true)?;
            dev.linear_backward_input(&mut d_normed, dv_op, w.op(3), n, d, da, true)?;
        }
        Some((src, d_src)) => {
            let src_copy = dev.product_copy(src)?;
            let src_op = operand(src, &src_copy);
            dev.linear_backward_weight(g_k, dk_op, src_op, nk, d, da)?;
            dev.linear_backward_weight(g_v, dv_op, src_op, nk, d, da)?;
            dev.linear_backward_input(&mut *d_src, dk_op, w.op(2), nk, d, da, true)?;
            dev.linear_backward_input(d_src, dv_op, w.op(3), nk, d, da, true)?;
        }
    }
    dx.add_norm_backward(dev, &d_normed, &cache.x_in, &cache.inv, &w[0], n, d)?;
    dev.kernels
        .rmsnorm_gain_backward(&d_normed, &cache.x_in, &cache.inv, g_norm, n)?;
    Ok(())
}

/// Forward of a SwiGLU FFN block (`cpu::layers::ffn_block_forward`); `w` = norm, gate, up, down.
pub(super) fn ffn_block_forward(
    dev: &Dev,
    dims: &Dims,
    w: Weights<'_>,
    x: &mut Buf,
    stream: &DevStream,
    dropout: Option<DropSite>,
) -> Result<FfnCache, BackendError> {
    let (d, f) = (dims.d, dims.f);
    let n = stream.len;
    let mut inv = dev.scratch(n)?; // rmsnorm_forward writes every row
    let (x_in, normed) = Kept::block_norm(dev, x, &w[0], &mut inv, n, d, dims.eps)?;
    // SAFETY: the products (beta 0) write them all.
    let (mut gate, mut up) = unsafe { (Kept::output(dev, n * f)?, Kept::output(dev, n * f)?) };
    dev.linear_forward(gate.as_output(), normed.operand(), w.op(1), n, d, f, false)?;
    dev.linear_forward(up.as_output(), normed.operand(), w.op(2), n, d, f, false)?;
    let hidden = Kept::swiglu(dev, &gate, &up)?;
    if dropout.is_some() {
        let mut y = dev.scratch(n * d)?; // the product (beta 0) writes it all
        dev.linear_forward(&mut y, hidden.operand(), w.op(3), n, f, d, false)?;
        add_branch(dev, x, y, stream, d, dropout)?;
    } else {
        dev.linear_forward(x, hidden.operand(), w.op(3), n, f, d, true)?;
    }
    Ok(FfnCache {
        x_in,
        inv,
        normed,
        gate,
        up,
        hidden,
    })
}

/// Backward of `ffn_block_forward` (conventions of `attention_block_backward`).
#[allow(clippy::too_many_arguments)]
pub(super) fn ffn_block_backward(
    dev: &Dev,
    dims: &Dims,
    w: Weights<'_>,
    g: &mut [Buf],
    cache: &FfnCache,
    dx: &mut StreamGrad,
    stream: &DevStream,
    dropout: Option<DropSite>,
) -> Result<(), BackendError> {
    let (d, f) = (dims.d, dims.f);
    let n = stream.len;
    let [g_norm, g_gate, g_up, g_down] = g else {
        return Err(BackendError::BadModel(
            "an FFN block owns exactly 4 tensors".into(),
        ));
    };
    let dropped = branch_grad(dev, &dx.dx, stream, d, dropout)?;
    let dy_copy = dx.take_product_copy(dev, dropped.as_ref())?;
    let dy: &Buf = dropped.as_ref().unwrap_or(&dx.dx);
    let dy_op = operand(dy, &dy_copy);
    dev.linear_backward_weight(g_down, dy_op, cache.hidden.operand(), n, f, d)?;
    // SAFETY: the product (beta 0) writes it all.
    let mut dh = unsafe { Kept::output(dev, n * f) }?;
    dev.linear_backward_input(dh.as_output(), dy_op, w.op(3), n, f, d, false)?;
    drop(dy_copy);
    drop(dropped);
    let (dgate, dup) = Kept::swiglu_grads(dev, &dh, &cache.gate, &cache.up)?;
    drop(dh);
    let (dgate_op, dup_op) = (dgate.operand(), dup.operand());
    dev.linear_backward_weight(g_gate, dgate_op, cache.normed.operand(), n, d, f)?;
    dev.linear_backward_weight(g_up, dup_op, cache.normed.operand(), n, d, f)?;
    let mut d_normed = dev.scratch(n * d)?; // the dgate product (beta 0) writes it all
    dev.linear_backward_input(&mut d_normed, dgate_op, w.op(1), n, d, f, false)?;
    dev.linear_backward_input(&mut d_normed, dup_op, w.op(2), n, d, f, true)?;
    dx.add_norm_backward(dev, &d_normed, &cache.x_in, &cache.inv, &w[0], n, d)?;
    dev.kernels
        .rmsnorm_gain_backward(&d_normed, &cache.x_in, &cache.inv, g_norm, n)?;
    Ok(())
}
