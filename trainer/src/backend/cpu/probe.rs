//! A forward pass that hands every attention probability matrix to a reducer: the CPU side of
//! attention analysis (`crate::analysis`).
//!
//! It runs the same blocks as the training forward (`stack::stack_forward`, no dropout) with
//! the same projections, norms, RoPE and masks, but computes each (row, head)'s attention by
//! query blocks of `QUERY_BLOCK` rows: the probabilities of a block are shown to the reducer and
//! multiplied into the output, then dropped, so memory stays linear in the sequence length. The
//! training arithmetic is untouched; the stack outputs agree with the training forward to float
//! rounding (checked in the tests below).

use rayon::prelude::*;

use super::attention::{block_probabilities, head_view, AttnShape};
use super::layers::{AttnSpec, BlockDims, FfnWeights};
use super::matmul::{gemm, linear_forward, MatRef};
use super::ops::{group_rmsnorm_forward, rmsnorm_forward};
use super::CpuBackend;
use crate::backend::BackendError;
use crate::batch::{Batch, StepOptions};
use crate::config::{Arch, ModelConfig};
use crate::model::attention::AttnRow;
use crate::model::rope::Rope;
use crate::model::stack::{Block, StackPlan};
use crate::model::stream::Stream;
use crate::model::validate::{validate_batch, validate_options};
use crate::params::{ParamStore, Tensor};

/// Query rows per probability block.
pub const QUERY_BLOCK: usize = 256;

/// Which attention a probability matrix belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttnKind {
    /// DecLLM's self-attention, or RedLLM's decoder self-attention.
    DecoderSelf,
    /// RedLLM's encoder self-attention.
    EncoderSelf,
    /// RedLLM's decoder-to-encoder cross-attention.
    Cross,
}

/// One attention site of one batch row: where the probabilities come from and their shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnSite {
    pub kind: AttnKind,
    /// Layer within its stack, from 0.
    pub layer: usize,
    /// Batch row.
    pub row: usize,
    /// The mask: queries and keys of the row, causal or not.
    pub mask: AttnRow,
}

/// Consumes attention probabilities as the probe forward computes them.
///
/// For every site and head the probe calls `start`, then `block` for consecutive query blocks
/// in order (a block's probabilities are `rows x mask.k_len`, row-major, masked entries 0, a
/// query with no visible key all 0), and finally `finish` once per site with the partials of
/// every head in head order. Heads run in parallel; `finish` runs on the calling thread, so a
/// reducer's result does not depend on the thread count.
pub trait AttentionReducer: Send + Sync {
    type Partial: Send;
    fn start(&self, site: &AttnSite, head: usize) -> Self::Partial;
    fn block(
        &self,
        partial: &mut Self::Partial,
        site: &AttnSite,
        first_query: usize,
        probs: &[f32],
    );
    fn finish(&mut self, site: &AttnSite, heads: Vec<Self::Partial>);
}

/// Attention of every row and head by query blocks, each block shown to `reducer`; `out` is
/// overwritten.
#[allow(clippy::too_many_arguments)]
fn probe_attention<R: AttentionReducer>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    spec: &AttnSpec,
    kind: AttnKind,
    layer: usize,
    out: &mut [f32],
    reducer: &mut R,
) {
    let hd = shape.head_dim;
    let width = shape.n_heads * hd;
    out.fill(0.0);
    for (r, mask) in spec.rows.iter().enumerate() {
        let site = AttnSite {
            kind,
            layer,
            row: r,
            mask: *mask,
        };
        let shared: &R = reducer;
        let results: Vec<(R::Partial, Vec<f32>)> = (0..shape.n_heads)
            .into_par_iter()
            .map(|h| {
                let mut partial = shared.start(&site, h);
                let mut o = vec![0.0f32; mask.q_len * hd];
                let mut q0 = 0;
                while q0 < mask.q_len {
                    let rows = QUERY_BLOCK.min(mask.q_len - q0);
                    let p = block_probabilities(q, k, shape, mask, h, spec.docs, q0, rows);
                    shared.block(&mut partial, &site, q0, &p);
                    gemm(
                        1.0,
                        MatRef::new(&p, rows, mask.k_len),
                        head_view(v, shape, h, mask.k_start, mask.k_len),
                        0.0,
                        &mut o[q0 * hd..(q0 + rows) * hd],
                        hd,
                    );
                    q0 += rows;
                }
                (partial, o)
            })
            .collect();
        let mut partials = Vec::with_capacity(results.len());
        for (h, (partial, o)) in results.into_iter().enumerate() {
            for (t, block) in o.chunks(hd).enumerate() {
                let at = (mask.q_start + t) * width + h * hd;
                out[at..at + hd].copy_from_slice(block);
            }
            partials.push(partial);
        }
        reducer.finish(&site, partials);
    }
}

/// An attention block's forward (as `layers::attention_block_forward`, without dropout), its
/// attention computed by `probe_attention`.
#[allow(clippy::too_many_arguments)]
fn probe_attention_block<R: AttentionReducer>(
    dims: &BlockDims,
    t: &[Tensor],
    x: &mut [f32],
    kv: Option<&[f32]>,
    spec: &AttnSpec,
    kind: AttnKind,
    layer: usize,
    reducer: &mut R,
) {
    let (d, hd) = (dims.d_model, dims.attn.head_dim);
    let da = dims.attn.n_heads * hd;
    let (norm, wq, wk, wv, wo) = (&t[0].data, &t[1].data, &t[2].data, &t[3].data, &t[4].data);
    let n = x.len() / d;
    let (normed, _, _) = rmsnorm_forward(x, norm, dims.eps);
    let src: &[f32] = kv.unwrap_or(&normed);
    let nk = src.len() / d;
    let project = |input: &[f32], weight: &[f32], tokens: usize| {
        let mut out = vec![0.0; tokens * da];
        linear_forward(&mut out, input, weight, tokens, d, da, false);
        group_rmsnorm_forward(&out, hd, dims.eps)
    };
    let (mut q_rot, _) = project(&normed, wq, n);
    let (mut k_rot, _) = project(src, wk, nk);
    let (v_hat, _) = project(src, wv, nk);
    spec.rope
        .apply(&mut q_rot, &spec.queries.positions, hd, false);
    spec.rope.apply(&mut k_rot, &spec.keys.positions, hd, false);
    let mut o = vec![0.0; n * da];
    probe_attention(
        &q_rot, &k_rot, &v_hat, dims.attn, spec, kind, layer, &mut o, reducer,
    );
    let o_in = if spec.out_norm {
        group_rmsnorm_forward(&o, hd, dims.eps).0
    } else {
        o
    };
    let mut y = vec![0.0; n * d];
    linear_forward(&mut y, &o_in, wo, n, da, d, false);
    for (a, b) in x.iter_mut().zip(&y) {
        *a += b;
    }
}

/// One stack's forward (as `stack::stack_forward`, without dropout); returns its final-normed
/// output. Self-attention blocks report as `self_kind`, cross-attention blocks as `Cross`.
#[allow(clippy::too_many_arguments)]
fn probe_stack<R: AttentionReducer>(
    dims: &BlockDims,
    params: &[Tensor],
    stream: &Stream,
    plan: &StackPlan,
    self_spec: &AttnSpec,
    self_kind: AttnKind,
    cross: Option<(&AttnSpec, &[f32])>,
    reducer: &mut R,
) -> Vec<f32> {
    let d = dims.d_model;
    let embed = &params[0].data;
    let mut x = vec![0.0f32; stream.len() * d];
    for (dst, &tok) in x.chunks_mut(d).zip(&stream.tokens) {
        dst.copy_from_slice(&embed[tok as usize * d..(tok as usize + 1) * d]);
    }
    let (mut self_layer, mut cross_layer) = (0, 0);
    for block in &plan.blocks {
        match *block {
            Block::SelfAttn(i) => {
                probe_attention_block(
                    dims,
                    &params[i..i + 5],
                    &mut x,
                    None,
                    self_spec,
                    self_kind,
                    self_layer,
                    reducer,
                );
                self_layer += 1;
            }
            Block::CrossAttn(i) => {
                let (spec, kv) = cross.expect("cross-attention block without an encoder");
                probe_attention_block(
                    dims,
                    &params[i..i + 5],
                    &mut x,
                    Some(kv),
                    spec,
                    AttnKind::Cross,
                    cross_layer,
                    reducer,
                );
                cross_layer += 1;
            }
            Block::Ffn(i) => {
                let t = &params[i..i + 4];
                let w = FfnWeights {
                    norm: &t[0].data,
                    gate: &t[1].data,
                    up: &t[2].data,
                    down: &t[3].data,
                };
                super::layers::ffn_block_forward(dims, &w, &mut x, stream, None);
            }
        }
    }
    rmsnorm_forward(&x, &params[plan.final_norm].data, dims.eps).0
}

/// What the probe forward returns besides what it showed the reducer: the final-normed output
/// of the stack that feeds the logits (DecLLM's stack, RedLLM's decoder).
pub struct ProbeOutput {
    pub decoder_output: Vec<f32>,
}

impl CpuBackend {
    /// Forward only over a batch, showing every attention probability matrix to `reducer`:
    /// DecLLM's self-attention (causal, bidirectional over each row's prefix when
    /// `options.bidirectional_prefix`), RedLLM's encoder self-attention, decoder self-attention
    /// and cross-attention, with the masks and streams of the training forward
    /// (`crate::model::stream`). Dropout is off.
    pub fn attention_probe<R: AttentionReducer>(
        &self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
        reducer: &mut R,
    ) -> Result<ProbeOutput, BackendError> {
        config
            .validate()
            .map_err(|e| BackendError::BadModel(e.to_string()))?;
        params
            .check_matches(config)
            .map_err(|e| BackendError::BadModel(format!("parameters: {e}")))?;
        validate_batch(config, batch)?;
        validate_options(config, options)?;
        Ok(self
            .pool
            .install(|| probe_model(config, params, batch, options, reducer)))
    }
}

fn probe_model<R: AttentionReducer>(
    config: &ModelConfig,
    params: &ParamStore,
    batch: &Batch,
    options: &StepOptions,
    reducer: &mut R,
) -> ProbeOutput {
    let dims = BlockDims {
        d_model: config.d_model,
        d_ffn: config.d_ffn,
        attn: AttnShape {
            n_heads: config.n_heads,
            head_dim: config.head_dim,
        },
        eps: config.norm_eps,
    };
    let rope = Rope::new(config.head_dim, config.rope_base, batch.seq + 1);
    let reset = options.reset_at_doc_boundaries;
    match config.arch {
        Arch::Dec => {
            let stream = Stream::dec_input(batch);
            let bidirectional = |r: usize| match options.bidirectional_prefix {
                true => batch.prefix_len[r],
                false => 0,
            };
            let rows = stream.self_rows(true, &bidirectional);
            let spec = AttnSpec {
                queries: &stream,
                keys: &stream,
                rows: &rows,
                docs: reset.then_some((stream.docs.as_slice(), stream.docs.as_slice())),
                rope: &rope,
                out_norm: false,
            };
            let plan = StackPlan::plain(1, config.layers, 0);
            let decoder_output = probe_stack(
                &dims,
                &params.tensors,
                &stream,
                &plan,
                &spec,
                AttnKind::DecoderSelf,
                None,
                reducer,
            );
            ProbeOutput { decoder_output }
        }
        Arch::Red => {
            let enc = Stream::encoder_input(batch);
            let dec = Stream::red_decoder_input(batch);
            let enc_rows = enc.self_rows(false, &|_| 0);
            let dec_rows = dec.self_rows(true, &|_| 0);
            let cross_rows = dec.cross_rows(&enc);
            let enc_spec = AttnSpec {
                queries: &enc,
                keys: &enc,
                rows: &enc_rows,
                docs: reset.then_some((enc.docs.as_slice(), enc.docs.as_slice())),
                rope: &rope,
                out_norm: true,
            };
            let enc_plan = StackPlan::plain(1, config.encoder_layers, 1);
            let enc_out = probe_stack(
                &dims,
                &params.tensors,
                &enc,
                &enc_plan,
                &enc_spec,
                AttnKind::EncoderSelf,
                None,
                reducer,
            );
            let dec_spec = AttnSpec {
                queries: &dec,
                keys: &dec,
                rows: &dec_rows,
                docs: reset.then_some((dec.docs.as_slice(), dec.docs.as_slice())),
                rope: &rope,
                out_norm: true,
            };
            let cross_spec = AttnSpec {
                queries: &dec,
                keys: &enc,
                rows: &cross_rows,
                docs: reset.then_some((dec.docs.as_slice(), enc.docs.as_slice())),
                rope: &rope,
                out_norm: true,
            };
            let dec_plan =
                StackPlan::red_decoder(enc_plan.final_norm + 1, config.decoder_layers, 2);
            let decoder_output = probe_stack(
                &dims,
                &params.tensors,
                &dec,
                &dec_plan,
                &dec_spec,
                AttnKind::DecoderSelf,
                Some((&cross_spec, &enc_out)),
                reducer,
            );
            ProbeOutput { decoder_output }
        }
    }
}
