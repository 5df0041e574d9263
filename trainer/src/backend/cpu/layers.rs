//! The residual blocks every layer is made of, forward and backward:
//! - attention block: `x + dropout(O · attn(norm_q(Q·n), norm_k(K·s), norm_v(V·s)))` with
//!   `n = rmsnorm(x) ⊙ gain`, `s = n` (self-attention) or the encoder output (cross-attention),
//!   per-head parameter-free RMSNorm on Q, K, V (before RoPE for Q and K) and, for RedLLM, on each
//!   head's output before `O`;
//! - FFN block: `x + dropout(down(silu(gate·n) ⊙ up·n))`.
//!
//! A DecLLM layer is attention + FFN, a RedLLM encoder layer the same without a causal mask, a
//! RedLLM decoder layer self-attention + cross-attention + FFN. Forward functions update the
//! residual stream in place and return what the backward pass needs; backward functions turn the
//! gradient w.r.t. the block's output into the gradient w.r.t. its input, in place, and add the
//! parameter gradients.

use super::attention::{attention_backward, attention_forward, AttnShape};
use super::matmul::{linear_backward_input, linear_backward_weight, linear_forward};
use super::ops::{
    group_rmsnorm_backward, group_rmsnorm_forward, rmsnorm_backward, rmsnorm_forward,
    swiglu_backward, swiglu_forward, Dropout,
};
use crate::model::attention::{AttnRow, DocIds};
use crate::model::rope::Rope;
use crate::model::stream::Stream;

/// Shapes and constants shared by all blocks of a model.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    pub d_model: usize,
    pub d_ffn: usize,
    pub attn: AttnShape,
    pub eps: f32,
}

/// An attention block's weights: pre-norm gain and Q, K, V, O in `[out, in]` layout.
pub struct AttnWeights<'a> {
    pub norm: &'a [f32],
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub o: &'a [f32],
}

/// Gradient buffers shaped like `AttnWeights`; backward adds into them.
pub struct AttnGrads<'a> {
    pub norm: &'a mut [f32],
    pub q: &'a mut [f32],
    pub k: &'a mut [f32],
    pub v: &'a mut [f32],
    pub o: &'a mut [f32],
}

/// An FFN block's weights: pre-norm gain and gate, up, down.
pub struct FfnWeights<'a> {
    pub norm: &'a [f32],
    pub gate: &'a [f32],
    pub up: &'a [f32],
    pub down: &'a [f32],
}

/// Gradient buffers shaped like `FfnWeights`.
pub struct FfnGrads<'a> {
    pub norm: &'a mut [f32],
    pub gate: &'a mut [f32],
    pub up: &'a mut [f32],
    pub down: &'a mut [f32],
}

/// How an attention block attends: the query and key streams (the same for self-attention), the
/// per-row masks and whether each head's output is normalized (RedLLM).
pub struct AttnSpec<'a> {
    pub queries: &'a Stream,
    pub keys: &'a Stream,
    pub rows: &'a [AttnRow],
    pub docs: DocIds<'a>,
    pub rope: &'a Rope,
    pub out_norm: bool,
}

/// What the attention block's backward pass needs.
pub struct AttnCache {
    xhat: Vec<f32>,
    inv: Vec<f32>,
    normed: Vec<f32>,
    q_inv: Vec<f32>,
    k_inv: Vec<f32>,
    v_hat: Vec<f32>,
    v_inv: Vec<f32>,
    q_rot: Vec<f32>,
    k_rot: Vec<f32>,
    o_in: Vec<f32>,
    o_inv: Option<Vec<f32>>,
}

/// Forward of an attention block; `kv` is the key/value source for cross-attention (`None` =
/// self-attention on the normalized input).
pub fn attention_block_forward(
    dims: &BlockDims,
    w: &AttnWeights,
    x: &mut [f32],
    kv: Option<&[f32]>,
    spec: &AttnSpec,
    dropout: Option<Dropout>,
) -> AttnCache {
    let (d, da, hd) = (
        dims.d_model,
        dims.attn.n_heads * dims.attn.head_dim,
        dims.attn.head_dim,
    );
    let n = x.len() / d;
    let (normed, xhat, inv) = rmsnorm_forward(x, w.norm, dims.eps);
    let src: &[f32] = kv.unwrap_or(&normed);
    let nk = src.len() / d;
    let project = |input: &[f32], weight: &[f32], tokens: usize| {
        let mut out = vec![0.0; tokens * da];
        linear_forward(&mut out, input, weight, tokens, d, da, false);
        group_rmsnorm_forward(&out, hd, dims.eps)
    };
    let (mut q_rot, q_inv) = project(&normed, w.q, n);
    let (mut k_rot, k_inv) = project(src, w.k, nk);
    let (v_hat, v_inv) = project(src, w.v, nk);
    spec.rope
        .apply(&mut q_rot, &spec.queries.positions, hd, false);
    spec.rope.apply(&mut k_rot, &spec.keys.positions, hd, false);
    let mut o = vec![0.0; n * da];
    attention_forward(
        &q_rot, &k_rot, &v_hat, dims.attn, spec.rows, spec.docs, &mut o,
    );
    let (o_in, o_inv) = if spec.out_norm {
        let (o_hat, o_inv) = group_rmsnorm_forward(&o, hd, dims.eps);
        (o_hat, Some(o_inv))
    } else {
        (o, None)
    };
    let mut y = vec![0.0; n * d];
    linear_forward(&mut y, &o_in, w.o, n, da, d, false);
    if let Some(dropout) = dropout {
        dropout.apply(&mut y, &spec.queries.rows, &spec.queries.positions);
    }
    for (a, b) in x.iter_mut().zip(&y) {
        *a += b;
    }
    AttnCache {
        xhat,
        inv,
        normed,
        q_inv,
        k_inv,
        v_hat,
        v_inv,
        q_rot,
        k_rot,
        o_in,
        o_inv,
    }
}

/// Backward of `attention_block_forward`. `dx` holds the gradient w.r.t. the block output and
/// becomes the gradient w.r.t. its input; for cross-attention the gradient w.r.t. `kv` is added
/// into `d_kv`.
#[allow(clippy::too_many_arguments)]
pub fn attention_block_backward(
    dims: &BlockDims,
    w: &AttnWeights,
    g: &mut AttnGrads,
    cache: &AttnCache,
    dx: &mut [f32],
    kv: Option<(&[f32], &mut [f32])>,
    spec: &AttnSpec,
    dropout: Option<Dropout>,
) {
    let (d, da, hd) = (
        dims.d_model,
        dims.attn.n_heads * dims.attn.head_dim,
        dims.attn.head_dim,
    );
    let n = dx.len() / d;
    let mut dy = dx.to_vec();
    if let Some(dropout) = dropout {
        dropout.apply(&mut dy, &spec.queries.rows, &spec.queries.positions);
    }
    linear_backward_weight(g.o, &dy, &cache.o_in, n, da, d);
    let mut d_o = vec![0.0; n * da];
    linear_backward_input(&mut d_o, &dy, w.o, n, da, d, false);
    drop(dy);
    if let Some(o_inv) = &cache.o_inv {
        group_rmsnorm_backward(&mut d_o, &cache.o_in, o_inv, hd);
    }
    let nk = cache.k_rot.len() / da;
    let mut dq = vec![0.0; n * da];
    let mut dk = vec![0.0; nk * da];
    let mut dv = vec![0.0; nk * da];
    attention_backward(
        &cache.q_rot,
        &cache.k_rot,
        &cache.v_hat,
        &d_o,
        dims.attn,
        spec.rows,
        spec.docs,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    drop(d_o);
    // RoPE is a rotation: its backward, and the way back to the pre-rotation values, is the
    // inverse rotation.
    for (grad, rotated, inv, positions) in [
        (&mut dq, &cache.q_rot, &cache.q_inv, &spec.queries.positions),
        (&mut dk, &cache.k_rot, &cache.k_inv, &spec.keys.positions),
    ] {
        spec.rope.apply(grad, positions, hd, true);
        let mut hat = rotated.clone();
        spec.rope.apply(&mut hat, positions, hd, true);
        group_rmsnorm_backward(grad, &hat, inv, hd);
    }
    group_rmsnorm_backward(&mut dv, &cache.v_hat, &cache.v_inv, hd);
    let mut d_normed = vec![0.0; n * d];
    linear_backward_weight(g.q, &dq, &cache.normed, n, d, da);
    linear_backward_input(&mut d_normed, &dq, w.q, n, d, da, false);
    match kv {
        None => {
            linear_backward_weight(g.k, &dk, &cache.normed, n, d, da);
            linear_backward_weight(g.v, &dv, &cache.normed, n, d, da);
            linear_backward_input(&mut d_normed, &dk, w.k, n, d, da, true);
            linear_backward_input(&mut d_normed, &dv, w.v, n, d, da, true);
        }
        Some((src, d_src)) => {
            linear_backward_weight(g.k, &dk, src, nk, d, da);
            linear_backward_weight(g.v, &dv, src, nk, d, da);
            linear_backward_input(d_src, &dk, w.k, nk, d, da, true);
            linear_backward_input(d_src, &dv, w.v, nk, d, da, true);
        }
    }
    rmsnorm_backward(&d_normed, &cache.xhat, &cache.inv, w.norm, g.norm, dx);
}

/// What the FFN block's backward pass needs.
pub struct FfnCache {
    xhat: Vec<f32>,
    inv: Vec<f32>,
    normed: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    hidden: Vec<f32>,
}

/// Forward of a SwiGLU FFN block; `stream` gives the dropout coordinates.
pub fn ffn_block_forward(
    dims: &BlockDims,
    w: &FfnWeights,
    x: &mut [f32],
    stream: &Stream,
    dropout: Option<Dropout>,
) -> FfnCache {
    let (d, f) = (dims.d_model, dims.d_ffn);
    let n = x.len() / d;
    let (normed, xhat, inv) = rmsnorm_forward(x, w.norm, dims.eps);
    let mut gate = vec![0.0; n * f];
    let mut up = vec![0.0; n * f];
    linear_forward(&mut gate, &normed, w.gate, n, d, f, false);
    linear_forward(&mut up, &normed, w.up, n, d, f, false);
    let hidden = swiglu_forward(&gate, &up);
    let mut y = vec![0.0; n * d];
    linear_forward(&mut y, &hidden, w.down, n, f, d, false);
    if let Some(dropout) = dropout {
        dropout.apply(&mut y, &stream.rows, &stream.positions);
    }
    for (a, b) in x.iter_mut().zip(&y) {
        *a += b;
    }
    FfnCache {
        xhat,
        inv,
        normed,
        gate,
        up,
        hidden,
    }
}

/// Backward of `ffn_block_forward` (same conventions as `attention_block_backward`).
pub fn ffn_block_backward(
    dims: &BlockDims,
    w: &FfnWeights,
    g: &mut FfnGrads,
    cache: &FfnCache,
    dx: &mut [f32],
    stream: &Stream,
    dropout: Option<Dropout>,
) {
    let (d, f) = (dims.d_model, dims.d_ffn);
    let n = dx.len() / d;
    let mut dy = dx.to_vec();
    if let Some(dropout) = dropout {
        dropout.apply(&mut dy, &stream.rows, &stream.positions);
    }
    linear_backward_weight(g.down, &dy, &cache.hidden, n, f, d);
    let mut dh = vec![0.0; n * f];
    linear_backward_input(&mut dh, &dy, w.down, n, f, d, false);
    drop(dy);
    let (dgate, dup) = swiglu_backward(&dh, &cache.gate, &cache.up);
    drop(dh);
    linear_backward_weight(g.gate, &dgate, &cache.normed, n, d, f);
    linear_backward_weight(g.up, &dup, &cache.normed, n, d, f);
    let mut d_normed = vec![0.0; n * d];
    linear_backward_input(&mut d_normed, &dgate, w.gate, n, d, f, false);
    linear_backward_input(&mut d_normed, &dup, w.up, n, d, f, true);
    rmsnorm_backward(&d_normed, &cache.xhat, &cache.inv, w.norm, g.norm, dx);
}
