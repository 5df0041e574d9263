//! Attention itself on the GPU, between the projections and the output product: fused
//! (`flash.cu`, the bf16 mode, for the head dimensions it is built for), or as padded batched
//! products over (row, head) with the masked softmax kernel (the f32 mode), forward and backward
//! as the CPU reference's `attention`.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use super::device::{Bf16Buf, Buf, Dev, DevRows};
use super::dims::{DevAttn, Dims};
use crate::backend::cuda::blas::products::AttnSizes;
use crate::backend::cuda::kernels::{FlashShape, PackShape, PackSide, ScoresShape};
use crate::backend::BackendError;

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

pub(super) fn fused_attention(dev: &Dev, dims: &Dims) -> bool {
    dev.options.fused_attention(dev.precision, dims.hd)
}

fn flash_shape(dev: &Dev, dims: &Dims, rows: &DevRows) -> FlashShape {
    FlashShape {
        rows: rows.rows,
        heads: dims.heads,
        head_dim: dims.hd,
        max_q: rows.max_q,
        max_k: rows.max_k,
        variant: dev.options.flash,
        tune: dev.options.flash_auto,
    }
}

/// The fused forward over bf16 copies of Q, K, V: the (bf16) output stream and the per-query
/// log-sum-exp.
pub(super) fn flash_forward(
    dev: &Dev,
    dims: &Dims,
    spec: &DevAttn,
    (q, k, v): (&Bf16Buf, &Bf16Buf, &Bf16Buf),
) -> Result<(Bf16Buf, Buf), BackendError> {
    let rows = spec.rows;
    let shape = flash_shape(dev, dims, rows);
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
pub(super) fn flash_backward(
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
    let shape = flash_shape(dev, dims, rows);
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

/// `softmax(Q Kᵀ / sqrt(head_dim) + mask) V` (the CPU reference's `attention_forward`).
pub(super) fn attention_forward(
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

/// Gradients w.r.t. Q, K, V given `d_o` (the CPU reference's `attention_backward`); the
/// probabilities are recomputed, as on the CPU.
pub(super) fn attention_backward(
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
