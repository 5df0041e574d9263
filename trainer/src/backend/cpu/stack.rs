//! One stack (DecLLM's, RedLLM's encoder or decoder): embedding lookup, residual blocks, final
//! RMSNorm, forward and backward.
//!
//! The blocks, their parameter indices and dropout sites come from the stack's plan
//! (`crate::model::stack::StackPlan`).

use super::layers::{
    attention_block_backward, attention_block_forward, ffn_block_backward, ffn_block_forward,
    AttnCache, AttnGrads, AttnSpec, AttnWeights, BlockDims, FfnCache, FfnGrads, FfnWeights,
};
use super::ops::{rmsnorm_backward, rmsnorm_forward, Dropout};
use crate::model::stack::{Block, StackPlan};
use crate::model::stream::Stream;
use crate::params::Tensor;

fn attn_weights(t: &[Tensor]) -> AttnWeights<'_> {
    AttnWeights {
        norm: &t[0].data,
        q: &t[1].data,
        k: &t[2].data,
        v: &t[3].data,
        o: &t[4].data,
    }
}

fn attn_grads(t: &mut [Tensor]) -> AttnGrads<'_> {
    let [norm, q, k, v, o] = t else {
        unreachable!("attention blocks own exactly 5 tensors")
    };
    AttnGrads {
        norm: &mut norm.data,
        q: &mut q.data,
        k: &mut k.data,
        v: &mut v.data,
        o: &mut o.data,
    }
}

fn ffn_weights(t: &[Tensor]) -> FfnWeights<'_> {
    FfnWeights {
        norm: &t[0].data,
        gate: &t[1].data,
        up: &t[2].data,
        down: &t[3].data,
    }
}

fn ffn_grads(t: &mut [Tensor]) -> FfnGrads<'_> {
    let [norm, gate, up, down] = t else {
        unreachable!("FFN blocks own exactly 4 tensors")
    };
    FfnGrads {
        norm: &mut norm.data,
        gate: &mut gate.data,
        up: &mut up.data,
        down: &mut down.data,
    }
}

pub(super) enum BlockCache {
    Attn(AttnCache),
    Ffn(FfnCache),
}

/// A stack's forward state: its final-normed output and, when training, what backward needs.
pub(super) struct StackRun {
    pub output: Vec<f32>,
    caches: Vec<BlockCache>,
    xhat: Vec<f32>,
    inv: Vec<f32>,
}

/// Everything a stack's blocks share for one batch.
pub(super) struct StackEnv<'a> {
    pub dims: BlockDims,
    pub params: &'a [Tensor],
    pub stream: &'a Stream,
    pub self_spec: AttnSpec<'a>,
    /// Cross-attention spec and the encoder output (RedLLM decoder only).
    pub cross: Option<(AttnSpec<'a>, &'a [f32])>,
    /// Dropout probability and seed, when training with dropout.
    pub dropout: Option<(f32, u64)>,
}

impl StackEnv<'_> {
    fn dropout(&self, plan: &StackPlan, block: usize) -> Option<Dropout> {
        self.dropout.map(|(p, seed)| Dropout {
            p,
            seed,
            site: plan.dropout_site(block),
        })
    }
}

/// Forward through a stack; keeps the block caches only when `training`.
pub(super) fn stack_forward(env: &StackEnv, plan: &StackPlan, training: bool) -> StackRun {
    let d = env.dims.d_model;
    let embed = &env.params[0].data;
    let mut x = vec![0.0f32; env.stream.len() * d];
    for (dst, &tok) in x.chunks_mut(d).zip(&env.stream.tokens) {
        dst.copy_from_slice(&embed[tok as usize * d..(tok as usize + 1) * d]);
    }
    let mut caches = Vec::new();
    for (b, block) in plan.blocks.iter().enumerate() {
        let dropout = env.dropout(plan, b);
        let cache = match *block {
            Block::SelfAttn(i) => {
                let w = attn_weights(&env.params[i..i + 5]);
                BlockCache::Attn(attention_block_forward(
                    &env.dims,
                    &w,
                    &mut x,
                    None,
                    &env.self_spec,
                    dropout,
                ))
            }
            Block::CrossAttn(i) => {
                let (spec, kv) = env
                    .cross
                    .as_ref()
                    .expect("cross-attention block without an encoder");
                let w = attn_weights(&env.params[i..i + 5]);
                BlockCache::Attn(attention_block_forward(
                    &env.dims,
                    &w,
                    &mut x,
                    Some(kv),
                    spec,
                    dropout,
                ))
            }
            Block::Ffn(i) => {
                let w = ffn_weights(&env.params[i..i + 4]);
                BlockCache::Ffn(ffn_block_forward(
                    &env.dims, &w, &mut x, env.stream, dropout,
                ))
            }
        };
        if training {
            caches.push(cache);
        }
    }
    let (output, xhat, inv) = rmsnorm_forward(&x, &env.params[plan.final_norm].data, env.dims.eps);
    StackRun {
        output,
        caches,
        xhat,
        inv,
    }
}

/// Backward through a stack given the gradient w.r.t. its final-normed output; adds into
/// `grads` (the embedding's input-side gradient included) and, for a decoder, into `d_kv`.
pub(super) fn stack_backward(
    env: &StackEnv,
    plan: &StackPlan,
    run: &StackRun,
    d_out: &[f32],
    grads: &mut [Tensor],
    mut d_kv: Option<&mut [f32]>,
) {
    let d = env.dims.d_model;
    let mut dx = vec![0.0f32; d_out.len()];
    {
        let gain = &env.params[plan.final_norm].data;
        rmsnorm_backward(
            d_out,
            &run.xhat,
            &run.inv,
            gain,
            &mut grads[plan.final_norm].data,
            &mut dx,
        );
    }
    for (b, (block, cache)) in plan.blocks.iter().zip(&run.caches).enumerate().rev() {
        let dropout = env.dropout(plan, b);
        match (*block, cache) {
            (Block::SelfAttn(i), BlockCache::Attn(cache)) => {
                let w = attn_weights(&env.params[i..i + 5]);
                let mut g = attn_grads(&mut grads[i..i + 5]);
                attention_block_backward(
                    &env.dims,
                    &w,
                    &mut g,
                    cache,
                    &mut dx,
                    None,
                    &env.self_spec,
                    dropout,
                );
            }
            (Block::CrossAttn(i), BlockCache::Attn(cache)) => {
                let (spec, kv) = env
                    .cross
                    .as_ref()
                    .expect("cross-attention block without an encoder");
                let d_kv = d_kv
                    .as_deref_mut()
                    .expect("cross-attention backward without d_kv");
                let w = attn_weights(&env.params[i..i + 5]);
                let mut g = attn_grads(&mut grads[i..i + 5]);
                attention_block_backward(
                    &env.dims,
                    &w,
                    &mut g,
                    cache,
                    &mut dx,
                    Some((kv, d_kv)),
                    spec,
                    dropout,
                );
            }
            (Block::Ffn(i), BlockCache::Ffn(cache)) => {
                let w = ffn_weights(&env.params[i..i + 4]);
                let mut g = ffn_grads(&mut grads[i..i + 4]);
                ffn_block_backward(&env.dims, &w, &mut g, cache, &mut dx, env.stream, dropout);
            }
            _ => unreachable!("block and cache kinds always match"),
        }
    }
    // The embedding lookup's backward: scatter-add in token order.
    let d_embed = &mut grads[0].data;
    for (src, &tok) in dx.chunks(d).zip(&env.stream.tokens) {
        for (a, b) in d_embed[tok as usize * d..(tok as usize + 1) * d]
            .iter_mut()
            .zip(src)
        {
            *a += b;
        }
    }
}
