//! Both architectures as sequences of residual blocks over token streams, forward then backward.
//!
//! A stack (DecLLM's, RedLLM's encoder or decoder) is: embedding lookup, blocks, final RMSNorm.
//! The parameter order of `crate::params` is walked by index: each attention block owns 5
//! consecutive tensors (norm, q, k, v, o), each FFN block 4 (norm, gate, up, down).
//!
//! DecLLM: one stack over `Stream::dec_input`, causal (optionally bidirectional over the prefix),
//! logits from its output. RedLLM: the encoder stack (bidirectional) over the prefix, then the
//! decoder stack (causal self-attention, cross-attention to the encoder output, FFN) over the
//! shifted target; the gradient w.r.t. the encoder output is summed over all decoder layers
//! before the encoder's backward pass runs.

use super::attention::{AttnRow, AttnShape, DocIds};
use super::layers::{
    attention_block_backward, attention_block_forward, ffn_block_backward, ffn_block_forward,
    AttnCache, AttnGrads, AttnSpec, AttnWeights, BlockDims, FfnCache, FfnGrads, FfnWeights,
};
use super::loss::{logits_loss, LossGrads};
use super::ops::{rmsnorm_backward, rmsnorm_forward, Dropout, Rope};
use super::stream::{scored_tokens, Scored, Stream};
use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::{Arch, ModelConfig};
use crate::params::{ParamStore, Tensor};

/// One residual block of a stack and the index of its first tensor.
#[derive(Debug, Clone, Copy)]
enum Block {
    SelfAttn(usize),
    CrossAttn(usize),
    Ffn(usize),
}

/// The blocks of one stack in order, where its final norm lives and its dropout site prefix.
struct StackPlan {
    blocks: Vec<Block>,
    final_norm: usize,
    id: u64,
}

impl StackPlan {
    /// DecLLM's layers, or RedLLM's encoder (`first` = index of the first layer tensor).
    fn plain(first: usize, layers: usize, id: u64) -> StackPlan {
        let blocks = (0..layers)
            .flat_map(|i| {
                [
                    Block::SelfAttn(first + 9 * i),
                    Block::Ffn(first + 9 * i + 5),
                ]
            })
            .collect();
        StackPlan {
            blocks,
            final_norm: first + 9 * layers,
            id,
        }
    }

    /// RedLLM's decoder.
    fn red_decoder(first: usize, layers: usize, id: u64) -> StackPlan {
        let blocks = (0..layers)
            .flat_map(|i| {
                let base = first + 14 * i;
                [
                    Block::SelfAttn(base),
                    Block::CrossAttn(base + 5),
                    Block::Ffn(base + 10),
                ]
            })
            .collect();
        StackPlan {
            blocks,
            final_norm: first + 14 * layers,
            id,
        }
    }
}

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

enum BlockCache {
    Attn(AttnCache),
    Ffn(FfnCache),
}

/// A stack's forward state: its final-normed output and, when training, what backward needs.
struct StackRun {
    output: Vec<f32>,
    caches: Vec<BlockCache>,
    xhat: Vec<f32>,
    inv: Vec<f32>,
}

/// Everything a stack's blocks share for one batch.
struct StackEnv<'a> {
    dims: BlockDims,
    params: &'a [Tensor],
    stream: &'a Stream,
    self_spec: AttnSpec<'a>,
    /// Cross-attention spec and the encoder output (RedLLM decoder only).
    cross: Option<(AttnSpec<'a>, &'a [f32])>,
    dropout: Option<(f32, u64)>,
}

impl StackEnv<'_> {
    fn dropout(&self, plan: &StackPlan, block: usize) -> Option<Dropout> {
        self.dropout.map(|(p, seed)| Dropout {
            p,
            seed,
            site: (plan.id << 32) | block as u64,
        })
    }
}

fn stack_forward(env: &StackEnv, plan: &StackPlan, training: bool) -> StackRun {
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
fn stack_backward(
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

/// Document ids of a query and a key stream when attention resets at document boundaries.
fn doc_ids<'a>(reset: bool, queries: &'a Stream, keys: &'a Stream) -> DocIds<'a> {
    reset.then_some((queries.docs.as_slice(), keys.docs.as_slice()))
}

/// What a model run returns: the loss sums and each scored token's cross-entropy, per row in
/// target order.
pub(crate) struct ModelOutput {
    pub stats: LossStats,
    pub token_losses: Vec<Vec<f64>>,
}

fn output(rows: usize, scored: &[Scored], (stats, token_ce): (LossStats, Vec<f64>)) -> ModelOutput {
    let mut token_losses = vec![Vec::new(); rows];
    for (s, ce) in scored.iter().zip(token_ce) {
        token_losses[s.row].push(ce);
    }
    ModelOutput {
        stats,
        token_losses,
    }
}

/// Forward (and, with `grads`, backward) of a whole model over a validated batch.
pub(crate) fn run_model(
    config: &ModelConfig,
    params: &ParamStore,
    batch: &Batch,
    options: &StepOptions,
    grads: Option<&mut ParamStore>,
) -> ModelOutput {
    let training = grads.is_some();
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
    let dropout =
        (training && options.dropout > 0.0).then_some((options.dropout, options.dropout_seed));
    let reset = options.reset_at_doc_boundaries;
    let embed = &params.tensors[0].data;
    match config.arch {
        Arch::Dec => {
            let stream = Stream::dec_input(batch);
            let bidir = |r: usize| {
                if options.bidirectional_prefix {
                    batch.prefix_len[r]
                } else {
                    0
                }
            };
            let rows: Vec<AttnRow> = stream.self_rows(true, &bidir);
            let env = StackEnv {
                dims,
                params: &params.tensors,
                stream: &stream,
                self_spec: AttnSpec {
                    queries: &stream,
                    keys: &stream,
                    rows: &rows,
                    docs: doc_ids(reset, &stream, &stream),
                    rope: &rope,
                    out_norm: false,
                },
                cross: None,
                dropout,
            };
            let plan = StackPlan::plain(1, config.layers, 0);
            let run = stack_forward(&env, &plan, training);
            let first_target = |r: usize| {
                if options.loss_on_prefix {
                    1
                } else {
                    batch.prefix_len[r]
                }
            };
            let scored = scored_tokens(batch, &stream, first_target);
            let Some(grads) = grads else {
                let result = logits_loss(
                    &run.output,
                    embed,
                    dims.d_model,
                    &scored,
                    batch.rows,
                    options.z_loss,
                    None,
                );
                return output(batch.rows, &scored, result);
            };
            let mut d_out = vec![0.0f32; run.output.len()];
            let result = logits_loss(
                &run.output,
                embed,
                dims.d_model,
                &scored,
                batch.rows,
                options.z_loss,
                Some(LossGrads {
                    embed: &mut grads.tensors[0].data,
                    hidden: &mut d_out,
                }),
            );
            stack_backward(&env, &plan, &run, &d_out, &mut grads.tensors, None);
            output(batch.rows, &scored, result)
        }
        Arch::Red => {
            let enc_stream = Stream::encoder_input(batch);
            let dec_stream = Stream::red_decoder_input(batch);
            let enc_rows = enc_stream.self_rows(false, &|_| 0);
            let dec_rows = dec_stream.self_rows(true, &|_| 0);
            let cross_rows = dec_stream.cross_rows(&enc_stream);
            let enc_env = StackEnv {
                dims,
                params: &params.tensors,
                stream: &enc_stream,
                self_spec: AttnSpec {
                    queries: &enc_stream,
                    keys: &enc_stream,
                    rows: &enc_rows,
                    docs: doc_ids(reset, &enc_stream, &enc_stream),
                    rope: &rope,
                    out_norm: true,
                },
                cross: None,
                dropout,
            };
            let enc_plan = StackPlan::plain(1, config.encoder_layers, 1);
            let enc_run = stack_forward(&enc_env, &enc_plan, training);
            let dec_env = StackEnv {
                dims,
                params: &params.tensors,
                stream: &dec_stream,
                self_spec: AttnSpec {
                    queries: &dec_stream,
                    keys: &dec_stream,
                    rows: &dec_rows,
                    docs: doc_ids(reset, &dec_stream, &dec_stream),
                    rope: &rope,
                    out_norm: true,
                },
                cross: Some((
                    AttnSpec {
                        queries: &dec_stream,
                        keys: &enc_stream,
                        rows: &cross_rows,
                        docs: doc_ids(reset, &dec_stream, &enc_stream),
                        rope: &rope,
                        out_norm: true,
                    },
                    &enc_run.output,
                )),
                dropout,
            };
            let dec_plan =
                StackPlan::red_decoder(enc_plan.final_norm + 1, config.decoder_layers, 2);
            let dec_run = stack_forward(&dec_env, &dec_plan, training);
            let scored = scored_tokens(batch, &dec_stream, |r| batch.prefix_len[r]);
            let Some(grads) = grads else {
                let result = logits_loss(
                    &dec_run.output,
                    embed,
                    dims.d_model,
                    &scored,
                    batch.rows,
                    options.z_loss,
                    None,
                );
                return output(batch.rows, &scored, result);
            };
            let mut d_out = vec![0.0f32; dec_run.output.len()];
            let result = logits_loss(
                &dec_run.output,
                embed,
                dims.d_model,
                &scored,
                batch.rows,
                options.z_loss,
                Some(LossGrads {
                    embed: &mut grads.tensors[0].data,
                    hidden: &mut d_out,
                }),
            );
            let mut d_enc = vec![0.0f32; enc_run.output.len()];
            stack_backward(
                &dec_env,
                &dec_plan,
                &dec_run,
                &d_out,
                &mut grads.tensors,
                Some(&mut d_enc),
            );
            stack_backward(
                &enc_env,
                &enc_plan,
                &enc_run,
                &d_enc,
                &mut grads.tensors,
                None,
            );
            output(batch.rows, &scored, result)
        }
    }
}
