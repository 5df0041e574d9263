//! The residual blocks on the GPU, forward and backward, step for step as the CPU reference's
//! `layers` and `attention` (same order of operations, same parameter layout). Differences, all
//! rounding-level: the residual add is fused into the output projection (`beta = 1`) when there
//! is no dropout; per-head norms keep their input and `1/rms` instead of the normalized values
//! (the kernels recompute `x̂`); attention itself (`attention.rs`) runs fused in the bf16 mode,
//! as padded batched products over (row, head) in the f32 mode. In the bf16 mode, values whose
//! readers all read bf16 are stored so (`stored::Kept`): product inputs, the FFN's gate, up and
//! hidden gradient, and the attention's projections, output and gradients.

use cudarc::driver::CudaSlice;

use super::attention::{
    attention_backward, attention_forward, flash_backward, flash_forward, fused_attention,
};
use super::device::{operand, Bf16Buf, Buf, Dev, DevStream};
use super::dims::{DevAttn, DevRope, Dims, DropSite};
use super::stored::{Kept, StreamGrad, Weights};
use crate::backend::cuda::blas::Operand;
use crate::backend::BackendError;

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
        None,
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

/// Forward of an attention block (the CPU reference's `attention_block_forward`); `w` holds the
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
    dev.kernels.rmsnorm_backward(
        grad,
        raw,
        inv,
        None,
        &mut out,
        tokens * dims.heads,
        dims.hd,
        None,
    )?;
    Ok(out)
}

/// Backward of `attention_block_forward`: `dx` holds the gradient w.r.t. the block output and
/// becomes the gradient w.r.t. its input (with its bf16 copy, in the bf16 mode); `g` are the
/// block's five gradient buffers; for cross-attention `kv` is the encoder output and its
/// gradient, added into.
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
            // The fused path's output gradient is bf16 from its product (and output norm).
            let dob = d_o.bf16()?;
            let (dq, dk, dv) = flash_backward(dev, dims, spec, (q, k, v), lse, o, dob)?;
            drop(d_o);
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

/// Forward of a SwiGLU FFN block (the CPU reference's `ffn_block_forward`); `w` = norm, gate, up,
/// down.
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
