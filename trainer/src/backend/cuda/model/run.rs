//! Both architectures on the GPU, composed as the CPU reference's `model` and `stack` compose
//! them: the same streams, attention rows, scored tokens, block order, parameter indices and
//! dropout sites, all from the plan in `crate::model` (the host builds the streams, `inputs.rs`,
//! and they reach the device in one copy before the step). Nothing in a step waits for the
//! device until the losses are read back after the last backward launch.

use super::device::{operand, Bf16Buf, Buf, Dev, DevChunk, DevInputs, DevModel, DevStream, Words};
use super::dims::{DevAttn, DevRope, Dims, DropSite};
use super::inputs::{chunk_len, BatchInputs};
use super::layers::{
    attention_block_backward, attention_block_forward, ffn_block_backward, ffn_block_forward,
    AttnCache, FfnCache,
};
use super::stored::{Kept, LogZ, StreamGrad, Weights};
use crate::backend::cuda::blas::{products, Operand};
use crate::backend::cuda::kernels::CE_FUSED_VOCAB;
use crate::backend::cuda::options::CrossEntropyKernels;
use crate::backend::{BackendError, Precision};
use crate::batch::{LossStats, StepOptions};
use crate::config::ModelConfig;
use crate::model::stack::{Block, StackPlan as Plan};
use crate::model::stream::Scored;

enum Cache {
    Attn(Box<AttnCache>),
    Ffn(Box<FfnCache>),
}

/// A stack's forward state.
struct StackRun {
    output: Buf,
    caches: Vec<Cache>,
    x_final: Buf,
    inv_final: Buf,
}

/// What a stack's blocks share.
struct StackEnv<'a> {
    dims: Dims,
    params: &'a [Buf],
    /// The bf16 copies of the weight matrices (`weight_copies`), by parameter index.
    copies: &'a [Option<Bf16Buf>],
    stream: &'a DevStream,
    self_spec: DevAttn<'a>,
    cross: Option<(DevAttn<'a>, &'a Buf)>,
    dropout: Option<(f32, u64)>,
}

impl StackEnv<'_> {
    /// Parameters `i..i + len` with their bf16 copies: one block's.
    fn weights(&self, i: usize, len: usize) -> Weights<'_> {
        Weights {
            f32: self.params,
            bf16: self.copies,
        }
        .slice(i, len)
    }

    fn dropout(&self, plan: &Plan, block: usize) -> Option<DropSite> {
        self.dropout.map(|(p, seed)| DropSite {
            p,
            seed,
            site: plan.dropout_site(block),
        })
    }
}

fn missing_cross() -> BackendError {
    BackendError::BadModel("a cross-attention block in a stack without an encoder".into())
}

fn stack_forward(
    dev: &Dev,
    env: &StackEnv,
    plan: &Plan,
    training: bool,
) -> Result<StackRun, BackendError> {
    let d = env.dims.d;
    let n = env.stream.len;
    let mut x = dev.scratch(n * d)?; // embedding_forward writes every value
    dev.kernels
        .embedding_forward(&env.params[0], &env.stream.tokens, &mut x, d)?;
    let mut caches = Vec::new();
    for (b, block) in plan.blocks.iter().enumerate() {
        let dropout = env.dropout(plan, b);
        let cache = match *block {
            Block::SelfAttn(i) => Cache::Attn(Box::new(attention_block_forward(
                dev,
                &env.dims,
                env.weights(i, 5),
                &mut x,
                None,
                &env.self_spec,
                dropout,
            )?)),
            Block::CrossAttn(i) => {
                let (spec, kv) = env.cross.as_ref().ok_or_else(missing_cross)?;
                Cache::Attn(Box::new(attention_block_forward(
                    dev,
                    &env.dims,
                    env.weights(i, 5),
                    &mut x,
                    Some(kv),
                    spec,
                    dropout,
                )?))
            }
            Block::Ffn(i) => Cache::Ffn(Box::new(ffn_block_forward(
                dev,
                &env.dims,
                env.weights(i, 4),
                &mut x,
                env.stream,
                dropout,
            )?)),
        };
        if training {
            caches.push(cache);
        }
    }
    let mut output = dev.scratch(n * d)?; // rmsnorm_forward writes every row
    let mut inv_final = dev.scratch(n)?;
    dev.kernels.rmsnorm_forward(
        &x,
        Some(&env.params[plan.final_norm]),
        &mut output,
        &mut inv_final,
        n,
        d,
        env.dims.eps,
        None,
    )?;
    Ok(StackRun {
        output,
        caches,
        x_final: x,
        inv_final,
    })
}

/// Backward through a stack given the gradient w.r.t. its output (the CPU reference's
/// `stack_backward`).
fn stack_backward(
    dev: &Dev,
    env: &StackEnv,
    plan: &Plan,
    run: &StackRun,
    d_out: &Buf,
    grads: &mut [Buf],
    mut d_kv: Option<&mut Buf>,
) -> Result<(), BackendError> {
    let d = env.dims.d;
    let n = env.stream.len;
    let mut dx = StreamGrad {
        dx: dev.zeros(n * d)?,
        copy: None,
        copy_next: !plan.blocks.is_empty(),
    };
    let fnorm = plan.final_norm;
    dx.add_norm_backward(
        dev,
        d_out,
        &run.x_final,
        &run.inv_final,
        &env.params[fnorm],
        n,
        d,
    )?;
    dev.kernels
        .rmsnorm_gain_backward(d_out, &run.x_final, &run.inv_final, &mut grads[fnorm], n)?;
    for (b, (block, cache)) in plan.blocks.iter().zip(&run.caches).enumerate().rev() {
        let dropout = env.dropout(plan, b);
        // The first block's input gradient goes to the embedding: no bf16 copy of it.
        dx.copy_next = b > 0;
        match (*block, cache) {
            (Block::SelfAttn(i), Cache::Attn(cache)) => attention_block_backward(
                dev,
                &env.dims,
                env.weights(i, 5),
                &mut grads[i..i + 5],
                cache,
                &mut dx,
                None,
                &env.self_spec,
                dropout,
            )?,
            (Block::CrossAttn(i), Cache::Attn(cache)) => {
                let (spec, kv) = env.cross.as_ref().ok_or_else(missing_cross)?;
                let d_kv = d_kv.as_deref_mut().ok_or_else(missing_cross)?;
                attention_block_backward(
                    dev,
                    &env.dims,
                    env.weights(i, 5),
                    &mut grads[i..i + 5],
                    cache,
                    &mut dx,
                    Some((kv, d_kv)),
                    spec,
                    dropout,
                )?
            }
            (Block::Ffn(i), Cache::Ffn(cache)) => ffn_block_backward(
                dev,
                &env.dims,
                env.weights(i, 4),
                &mut grads[i..i + 4],
                cache,
                &mut dx,
                env.stream,
                dropout,
            )?,
            _ => {
                return Err(BackendError::BadModel(
                    "internal: a block and its cache differ in kind".into(),
                ))
            }
        }
    }
    // The embedding lookup's backward, in token order per vocabulary row.
    dev.kernels.embedding_backward(
        &dx.dx,
        &env.stream.tokens,
        &env.stream.chain_first,
        &env.stream.chain_next,
        &mut grads[0],
        d,
    )?;
    Ok(())
}

/// Each logits chunk's cross-entropy and z-loss values, on the device until `Losses::read`.
struct Losses(Vec<(Buf, Buf)>);

impl Losses {
    /// Reads the values back (this waits for the device) and sums them per row as
    /// the CPU reference's `logits_loss` does.
    fn read(
        &self,
        dev: &Dev,
        config: &ModelConfig,
        scored: &[Scored],
        rows: usize,
    ) -> Result<LossStats, BackendError> {
        let mut stats = LossStats {
            row_loss: vec![0.0; rows],
            row_tokens: vec![0; rows],
            row_token_loss: vec![Vec::new(); rows],
            ..LossStats::default()
        };
        for (chunk, (ce, z)) in scored.chunks(chunk_len(config.vocab_size)).zip(&self.0) {
            let ce_h = dev.download(ce)?;
            let z_h = dev.download(z)?;
            for ((s, &ce), &z) in chunk.iter().zip(&ce_h).zip(&z_h) {
                stats.loss_sum += ce as f64;
                stats.z_loss_sum += z as f64;
                stats.tokens += 1;
                stats.row_loss[s.row] += ce as f64;
                stats.row_tokens[s.row] += 1;
                stats.row_token_loss[s.row].push(ce as f64);
            }
        }
        Ok(stats)
    }
}

/// Logits, cross-entropy and z-loss of the scored tokens (the CPU reference's `logits_loss`), in
/// chunks (`inputs::chunk_len`) so that `chunk x vocab` logits are the most ever held. With
/// `d_embed`, adds the embedding's output-side gradient and returns the gradient w.r.t. `hidden`.
/// The losses stay on the device (`Losses`), so the backward launches follow without a wait.
#[allow(clippy::too_many_arguments)]
fn score(
    dev: &Dev,
    config: &ModelConfig,
    embed_op: Operand<'_>,
    mut d_embed: Option<&mut Buf>,
    hidden: &Buf,
    hidden_tokens: usize,
    chunks: &[DevChunk],
    z_loss: f32,
) -> Result<(Losses, Option<Buf>), BackendError> {
    let (d, vocab) = (config.d_model, config.vocab_size);
    let scale = 1.0 / (d as f32).sqrt();
    let mut d_hidden = match d_embed {
        Some(_) => Some(dev.zeros(hidden_tokens * d)?),
        None => None,
    };
    let mut losses = Vec::new();
    for chunk in chunks {
        let c = chunk.len;
        // Scratch: the gather writes all of `h`, the product (beta 0) all of the logits.
        let mut h = dev.scratch(c * d)?;
        dev.kernels
            .embedding_forward(hidden, &chunk.index, &mut h, d)?;
        // logits (c x vocab) = h · Eᵀ · d^-0.5
        let mut logits = dev.scratch(c * vocab)?;
        let h_copy = dev.product_copy(&h)?;
        let h_op = operand(&h, &h_copy);
        dev.product(
            products::logits(c, vocab, d, scale),
            h_op,
            embed_op,
            &mut logits,
        )?;
        let mut log_z = dev.zeros(c)?;
        let mut ce = dev.zeros(c)?;
        let mut z = dev.zeros(c)?;
        let backward = d_embed.is_some() && d_hidden.is_some();
        // G = d(ce + z)/d(h · Eᵀ), in the products' type (written as bf16 straight away in the
        // bf16 mode: the products are its only readers). With `REDPACK_CUDA_CE=fused`, in a
        // training step whose vocabulary fits, the losses and G come from one kernel.
        let g = if backward
            && vocab <= CE_FUSED_VOCAB
            && dev.options.cross_entropy == CrossEntropyKernels::Fused
        {
            let sums = LogZ::Fused((&mut log_z, &mut ce, &mut z));
            let targets = &chunk.targets;
            Some(Kept::cross_entropy_grad(
                dev, &logits, targets, sums, vocab, z_loss, scale,
            )?)
        } else {
            dev.kernels.cross_entropy_forward(
                &logits,
                &chunk.targets,
                &mut log_z,
                &mut ce,
                &mut z,
                vocab,
                z_loss,
            )?;
            match backward {
                true => Some(Kept::cross_entropy_grad(
                    dev,
                    &logits,
                    &chunk.targets,
                    LogZ::Known(&log_z),
                    vocab,
                    z_loss,
                    scale,
                )?),
                false => None,
            }
        };
        losses.push((ce, z));
        drop(logits);
        let (Some(g), Some(de), Some(dh_all)) = (g, d_embed.as_deref_mut(), d_hidden.as_mut())
        else {
            continue;
        };
        let g_op = g.operand();
        // dh (c x d) = G · E
        let mut dh = dev.scratch(c * d)?; // the product (beta 0) writes it all
        dev.product(
            products::logits_d_hidden(c, vocab, d),
            g_op,
            embed_op,
            &mut dh,
        )?;
        // dE (vocab x d) += Gᵀ · h
        dev.product(products::logits_d_embed(c, vocab, d), g_op, h_op, de)?;
        // Scatter into the scored rows of d_hidden (each at most once per chunk).
        dev.kernels
            .embedding_backward(&dh, &chunk.index, &chunk.first, &chunk.next, dh_all, d)?;
    }
    Ok((Losses(losses), d_hidden))
}

/// The bf16 copies of the weight matrices (every 2-D parameter, by index; `None` for the
/// norms' gains and in the f32 mode).
fn weight_copies(
    dev: &Dev,
    config: &ModelConfig,
    params: &[Buf],
) -> Result<Vec<Option<Bf16Buf>>, BackendError> {
    let shapes = crate::params::param_shapes(config);
    if shapes.len() != params.len() {
        return Err(BackendError::BadModel(format!(
            "{} parameter tensors for a model of {}",
            params.len(),
            shapes.len()
        )));
    }
    params
        .iter()
        .zip(&shapes)
        .map(|(p, (_, shape))| match (dev.precision, shape.len()) {
            (Precision::Bf16, 2) => Ok(Some(dev.bf16(p)?)),
            _ => Ok(None),
        })
        .collect()
}

fn no_hidden_gradient() -> BackendError {
    BackendError::Device("internal: no hidden-state gradient".into())
}

/// Forward (and, with `grads`, backward: gradients are *added* into `grads`) of a whole model
/// over a micro-batch whose inputs were built from a batch the caller validated. `params` and
/// `grads` are in checkpoint order; `words` holds `inputs.words` (staged in pinned memory, or
/// the vector itself); `rope` covers at least `inputs.positions` positions.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_model(
    dev: &Dev,
    config: &ModelConfig,
    params: &[Buf],
    inputs: &BatchInputs,
    words: Words<'_>,
    rope: &DevRope,
    options: &StepOptions,
    grads: Option<&mut [Buf]>,
) -> Result<LossStats, BackendError> {
    if inputs.arch != config.arch || inputs.options != options.into() {
        return Err(BackendError::Device(
            "internal: the batch's inputs were built for another model or options".into(),
        ));
    }
    let training = grads.is_some();
    let dims = Dims {
        d: config.d_model,
        f: config.d_ffn,
        heads: config.n_heads,
        hd: config.head_dim,
        eps: config.norm_eps,
    };
    let dropout =
        (training && options.dropout > 0.0).then_some((options.dropout, options.dropout_seed));
    let reset = options.reset_at_doc_boundaries;
    let Some(staged) = DevInputs::upload(dev, inputs, words)? else {
        // Nothing is scored: the loss is empty and every gradient is zero.
        return Ok(LossStats {
            row_loss: vec![0.0; inputs.rows],
            row_tokens: vec![0; inputs.rows],
            row_token_loss: vec![Vec::new(); inputs.rows],
            ..LossStats::default()
        });
    };
    // The scored tokens' losses (and, training, the gradient w.r.t. the top stack's output).
    // Every product reads the weight matrices (the embedding's in the logits) in bf16: rounded
    // once here for the forward and backward passes, not once per product.
    let copies = weight_copies(dev, config, params)?;
    let score = |output: &Buf, stream: &DevStream, d_embed: Option<&mut Buf>| {
        score(
            dev,
            config,
            operand(&params[0], &copies[0]),
            d_embed,
            output,
            stream.len,
            &staged.chunks,
            options.z_loss,
        )
    };
    let losses = match &staged.model {
        DevModel::Dec { stream, rows } => {
            let env = StackEnv {
                dims,
                params,
                copies: &copies,
                stream,
                self_spec: DevAttn {
                    queries: stream,
                    keys: stream,
                    rows,
                    docs: reset,
                    rope,
                    out_norm: false,
                },
                cross: None,
                dropout,
            };
            let plan = Plan::plain(1, config.layers, 0);
            let run = stack_forward(dev, &env, &plan, training)?;
            match grads {
                None => score(&run.output, stream, None)?.0,
                Some(grads) => {
                    let (losses, d_out) = score(&run.output, stream, Some(&mut grads[0]))?;
                    let d_out = d_out.ok_or_else(no_hidden_gradient)?;
                    stack_backward(dev, &env, &plan, &run, &d_out, grads, None)?;
                    losses
                }
            }
        }
        DevModel::Red {
            enc,
            dec,
            enc_rows,
            dec_rows,
            cross_rows,
        } => {
            let enc_env = StackEnv {
                dims,
                params,
                copies: &copies,
                stream: enc,
                self_spec: DevAttn {
                    queries: enc,
                    keys: enc,
                    rows: enc_rows,
                    docs: reset,
                    rope,
                    out_norm: true,
                },
                cross: None,
                dropout,
            };
            let enc_plan = Plan::plain(1, config.encoder_layers, 1);
            let enc_run = stack_forward(dev, &enc_env, &enc_plan, training)?;
            let dec_env = StackEnv {
                dims,
                params,
                copies: &copies,
                stream: dec,
                self_spec: DevAttn {
                    queries: dec,
                    keys: dec,
                    rows: dec_rows,
                    docs: reset,
                    rope,
                    out_norm: true,
                },
                cross: Some((
                    DevAttn {
                        queries: dec,
                        keys: enc,
                        rows: cross_rows,
                        docs: reset,
                        rope,
                        out_norm: true,
                    },
                    &enc_run.output,
                )),
                dropout,
            };
            let dec_plan = Plan::red_decoder(enc_plan.final_norm + 1, config.decoder_layers, 2);
            let dec_run = stack_forward(dev, &dec_env, &dec_plan, training)?;
            match grads {
                None => score(&dec_run.output, dec, None)?.0,
                Some(grads) => {
                    let (losses, d_out) = score(&dec_run.output, dec, Some(&mut grads[0]))?;
                    let d_out = d_out.ok_or_else(no_hidden_gradient)?;
                    let mut d_enc = dev.zeros(enc.len * dims.d)?;
                    stack_backward(
                        dev,
                        &dec_env,
                        &dec_plan,
                        &dec_run,
                        &d_out,
                        grads,
                        Some(&mut d_enc),
                    )?;
                    stack_backward(dev, &enc_env, &enc_plan, &enc_run, &d_enc, grads, None)?;
                    losses
                }
            }
        }
    };
    losses.read(dev, config, &inputs.scored, inputs.rows)
}
