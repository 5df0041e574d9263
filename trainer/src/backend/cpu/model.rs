//! Both architectures as sequences of residual blocks over token streams, forward then backward.
//!
//! Each stack (see `stack`) is an embedding lookup, residual blocks and a final RMSNorm.
//!
//! DecLLM: one stack over `Stream::dec_input`, causal (optionally bidirectional over the prefix),
//! logits from its output. RedLLM: the encoder stack (bidirectional) over the prefix, then the
//! decoder stack (causal self-attention, cross-attention to the encoder output, FFN) over the
//! shifted target; the gradient w.r.t. the encoder output is summed over all decoder layers
//! before the encoder's backward pass runs.

use super::attention::AttnShape;
use super::layers::{AttnSpec, BlockDims};
use super::loss::{logits_loss, LossGrads};
use super::stack::{stack_backward, stack_forward, StackEnv};
use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::{Arch, ModelConfig};
use crate::model::attention::DocIds;
use crate::model::rope::Rope;
use crate::model::stack::StackPlan;
use crate::model::stream::{scored_tokens, Scored, Stream};
use crate::params::ParamStore;

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

/// The logits and losses of the `scored` tokens of a decoder's output; when training, adds the
/// embedding's output-side gradient into `grads` and returns the gradient w.r.t. `hidden`.
fn score(
    hidden: &[f32],
    scored: &[Scored],
    config: &ModelConfig,
    params: &ParamStore,
    rows: usize,
    z_loss: f32,
    grads: Option<&mut ParamStore>,
) -> (ModelOutput, Vec<f32>) {
    let embed = &params.tensors[0].data;
    let mut d_hidden = Vec::new();
    let loss_grads = grads.map(|g| {
        d_hidden = vec![0.0f32; hidden.len()];
        LossGrads {
            embed: &mut g.tensors[0].data,
            hidden: &mut d_hidden,
        }
    });
    let (stats, token_ce) = logits_loss(
        hidden,
        embed,
        config.d_model,
        scored,
        rows,
        z_loss,
        loss_grads,
    );
    let mut token_losses = vec![Vec::new(); rows];
    for (s, ce) in scored.iter().zip(token_ce) {
        token_losses[s.row].push(ce);
    }
    let output = ModelOutput {
        stats,
        token_losses,
    };
    (output, d_hidden)
}

/// Forward (and, with `grads`, backward) of a whole model over a validated batch.
pub(crate) fn run_model(
    config: &ModelConfig,
    params: &ParamStore,
    batch: &Batch,
    options: &StepOptions,
    mut grads: Option<&mut ParamStore>,
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
    let (rows, z_loss) = (batch.rows, options.z_loss);
    match config.arch {
        Arch::Dec => {
            let stream = Stream::dec_input(batch);
            let bidirectional = |r: usize| match options.bidirectional_prefix {
                true => batch.prefix_len[r],
                false => 0,
            };
            let attn_rows = stream.self_rows(true, &bidirectional);
            let env = StackEnv {
                dims,
                params: &params.tensors,
                stream: &stream,
                self_spec: AttnSpec {
                    queries: &stream,
                    keys: &stream,
                    rows: &attn_rows,
                    docs: doc_ids(reset, &stream, &stream),
                    rope: &rope,
                    out_norm: false,
                },
                cross: None,
                dropout,
            };
            let plan = StackPlan::plain(1, config.layers, 0);
            let run = stack_forward(&env, &plan, training);
            let first_target = |r: usize| match options.loss_on_prefix {
                true => 1,
                false => batch.prefix_len[r],
            };
            let scored = scored_tokens(batch, &stream, first_target);
            let (output, d_out) = score(
                &run.output,
                &scored,
                config,
                params,
                rows,
                z_loss,
                grads.as_deref_mut(),
            );
            if let Some(grads) = grads {
                stack_backward(&env, &plan, &run, &d_out, &mut grads.tensors, None);
            }
            output
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
            let (output, d_out) = score(
                &dec_run.output,
                &scored,
                config,
                params,
                rows,
                z_loss,
                grads.as_deref_mut(),
            );
            if let Some(grads) = grads {
                let mut d_enc = vec![0.0f32; enc_run.output.len()];
                let tensors = &mut grads.tensors;
                stack_backward(
                    &dec_env,
                    &dec_plan,
                    &dec_run,
                    &d_out,
                    tensors,
                    Some(&mut d_enc),
                );
                stack_backward(&enc_env, &enc_plan, &enc_run, &d_enc, tensors, None);
            }
            output
        }
    }
}
