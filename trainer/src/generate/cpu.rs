//! Incremental decoding on the CPU: the f32 blocks of `crate::backend::cpu` run over the new
//! tokens only, attending to a per-row cache of the keys and values already computed.
//!
//! A row's self-attention cache holds, per attention block, the rotated and normalized keys and
//! the normalized values of every token read so far; a RedLLM row also holds each
//! cross-attention block's keys and values over the encoder output, computed once in `start`.
//! New tokens of all rows are stacked into one matrix for the projections and the FFN (one
//! product per weight per step, whatever the batch), and attention runs per token and head
//! against its own row's cache.

use std::sync::Arc;

use rayon::prelude::*;

use super::decoder::{DecodeMode, Decoder};
use super::GenerateError;
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cpu::layers::{ffn_block_forward, BlockDims, FfnWeights};
use crate::backend::cpu::matmul::linear_forward;
use crate::backend::cpu::ops::{group_rmsnorm_forward, rmsnorm_forward};
use crate::config::{Arch, ModelConfig};
use crate::model::rope::Rope;
use crate::model::stack::{Block, StackPlan};
use crate::model::stream::Stream;
use crate::params::ParamStore;

/// Keys (rotated) and values of one attention block, `tokens x (heads · head_dim)` each.
#[derive(Default, Clone)]
struct Kv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// One row's decoding state.
struct Row {
    /// Per self-attention block of the stack.
    self_kv: Vec<Kv>,
    /// Per cross-attention block (RedLLM's decoder); empty otherwise.
    cross_kv: Vec<Kv>,
    /// Tokens in the self-attention caches.
    len: usize,
    /// RoPE position of the first cached token.
    first_position: usize,
    /// Cached tokens below this index attend to each other bidirectionally.
    bidirectional: usize,
}

impl Row {
    fn new(self_blocks: usize, first_position: usize, bidirectional: usize) -> Row {
        Row {
            self_kv: vec![Kv::default(); self_blocks],
            cross_kv: Vec::new(),
            len: 0,
            first_position,
            bidirectional,
        }
    }

    /// How many cached keys the token at cache index `i` sees: a prefix of the cache.
    fn visible(&self, i: usize) -> usize {
        if i < self.bidirectional {
            self.bidirectional.max(i + 1)
        } else {
            i + 1
        }
    }
}

/// The model a decoder runs: weights, shapes, plans and RoPE tables.
struct Model {
    config: ModelConfig,
    params: Arc<ParamStore>,
    dims: BlockDims,
    rope: Rope,
    decoder: StackPlan,
    encoder: Option<StackPlan>,
}

impl Model {
    fn width(&self) -> usize {
        self.dims.attn.n_heads * self.dims.attn.head_dim
    }

    fn tensor(&self, i: usize) -> &[f32] {
        &self.params.tensors[i].data
    }

    /// `input · Wᵀ` normalized per head: `tokens x width`.
    fn project(&self, input: &[f32], weight: usize) -> Vec<f32> {
        let (d, da) = (self.dims.d_model, self.width());
        let tokens = input.len() / d;
        let mut out = vec![0.0; tokens * da];
        linear_forward(&mut out, input, self.tensor(weight), tokens, d, da, false);
        group_rmsnorm_forward(&out, self.dims.attn.head_dim, self.dims.eps).0
    }

    /// Keys and values of a key/value source (`tokens x d_model`) at `positions`.
    fn keys_values(&self, src: &[f32], block: usize, positions: &[u32]) -> Kv {
        let mut k = self.project(src, block + 2);
        self.rope
            .apply(&mut k, positions, self.dims.attn.head_dim, false);
        let v = self.project(src, block + 3);
        Kv { k, v }
    }

    /// Runs the stack `plan` over `tokens[i]` appended to `rows[i]` (self-attention caches
    /// extended in place) and returns the final-normed output of every new token, in order.
    fn run_stack(
        &self,
        plan: &StackPlan,
        rows: &mut [&mut Row],
        tokens: &[&[u32]],
        out_norm: bool,
    ) -> Result<Vec<f32>, GenerateError> {
        let (d, da) = (self.dims.d_model, self.width());
        let embed = self.tensor(0);
        let mut x = Vec::new();
        let mut positions = Vec::new();
        // Per new token: (list index of its row, cache index).
        let mut owner = Vec::new();
        for (li, (row, toks)) in rows.iter().zip(tokens).enumerate() {
            for (t, &tok) in toks.iter().enumerate() {
                let tok = tok as usize;
                if tok >= self.config.vocab_size {
                    return Err(GenerateError::Token {
                        token: tok as u64,
                        vocab: self.config.vocab_size,
                    });
                }
                let position = row.first_position + row.len + t;
                if position >= self.rope.max_positions() {
                    return Err(GenerateError::TooLong {
                        position,
                        limit: self.rope.max_positions(),
                    });
                }
                x.extend_from_slice(&embed[tok * d..(tok + 1) * d]);
                positions.push(position as u32);
                owner.push((li, row.len + t));
            }
        }
        let (mut self_i, mut cross_i) = (0, 0);
        for block in &plan.blocks {
            match *block {
                Block::SelfAttn(i) => {
                    let normed = rmsnorm_forward(&x, self.tensor(i), self.dims.eps).0;
                    let mut q = self.project(&normed, i + 1);
                    self.rope
                        .apply(&mut q, &positions, self.dims.attn.head_dim, false);
                    let kv = self.keys_values(&normed, i, &positions);
                    let mut at = 0;
                    for (row, toks) in rows.iter_mut().zip(tokens) {
                        let span = at * da..(at + toks.len()) * da;
                        let cache = &mut row.self_kv[self_i];
                        cache.k.extend_from_slice(&kv.k[span.clone()]);
                        cache.v.extend_from_slice(&kv.v[span]);
                        at += toks.len();
                    }
                    let views: Vec<&Row> = rows.iter().map(|r| &**r).collect();
                    let o = self.attend(&q, &owner, |li, i| {
                        let row = views[li];
                        (&row.self_kv[self_i], row.visible(i))
                    });
                    self.attention_output(&mut x, o, i, out_norm);
                    self_i += 1;
                }
                Block::CrossAttn(i) => {
                    let normed = rmsnorm_forward(&x, self.tensor(i), self.dims.eps).0;
                    let mut q = self.project(&normed, i + 1);
                    self.rope
                        .apply(&mut q, &positions, self.dims.attn.head_dim, false);
                    let views: Vec<&Row> = rows.iter().map(|r| &**r).collect();
                    let o = self.attend(&q, &owner, |li, _| {
                        let kv = &views[li].cross_kv[cross_i];
                        (kv, kv.k.len() / da)
                    });
                    self.attention_output(&mut x, o, i, true);
                    cross_i += 1;
                }
                Block::Ffn(i) => {
                    let w = FfnWeights {
                        norm: self.tensor(i),
                        gate: self.tensor(i + 1),
                        up: self.tensor(i + 2),
                        down: self.tensor(i + 3),
                    };
                    ffn_block_forward(&self.dims, &w, &mut x, &Stream::default(), None);
                }
            }
        }
        for (row, toks) in rows.iter_mut().zip(tokens) {
            row.len += toks.len();
        }
        Ok(rmsnorm_forward(&x, self.tensor(plan.final_norm), self.dims.eps).0)
    }

    /// Per new token and head: softmax over the first `count` keys of its cache (`keys(list
    /// index, cache index)` gives the cache and `count`), times the values.
    fn attend<'a>(
        &self,
        q: &[f32],
        owner: &[(usize, usize)],
        keys: impl Fn(usize, usize) -> (&'a Kv, usize) + Sync,
    ) -> Vec<f32> {
        let (heads, hd) = (self.dims.attn.n_heads, self.dims.attn.head_dim);
        let da = heads * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0.0f32; q.len()];
        out.par_chunks_mut(da)
            .zip(q.par_chunks(da))
            .zip(owner.par_iter())
            .for_each(|((out, q), &(li, i))| {
                let (kv, count) = keys(li, i);
                let mut p = vec![0.0f32; count];
                for h in 0..heads {
                    let qh = &q[h * hd..(h + 1) * hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in p.iter_mut().enumerate() {
                        let kh = &kv.k[j * da + h * hd..j * da + (h + 1) * hd];
                        *s = qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0f32;
                    for s in p.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    let oh = &mut out[h * hd..(h + 1) * hd];
                    for (j, s) in p.iter().enumerate() {
                        let w = s * inv;
                        let vh = &kv.v[j * da + h * hd..j * da + (h + 1) * hd];
                        for (o, v) in oh.iter_mut().zip(vh) {
                            *o += w * v;
                        }
                    }
                }
            });
        out
    }

    /// `x += O · o` (with each head's output normalized first when `out_norm`).
    fn attention_output(&self, x: &mut [f32], o: Vec<f32>, block: usize, out_norm: bool) {
        let (d, da) = (self.dims.d_model, self.width());
        let o = match out_norm {
            true => group_rmsnorm_forward(&o, self.dims.attn.head_dim, self.dims.eps).0,
            false => o,
        };
        let tokens = x.len() / d;
        linear_forward(x, &o, self.tensor(block + 4), tokens, da, d, true);
    }

    /// Logits of hidden states `tokens x d_model` with the tied embedding, one row per token.
    fn logits(&self, hidden: &[f32]) -> Vec<Vec<f32>> {
        let (d, v) = (self.dims.d_model, self.config.vocab_size);
        let tokens = hidden.len() / d;
        let mut out = vec![0.0f32; tokens * v];
        linear_forward(&mut out, hidden, self.tensor(0), tokens, d, v, false);
        let scale = 1.0 / (d as f32).sqrt();
        out.chunks(v.max(1))
            .map(|row| row.iter().map(|l| l * scale).collect())
            .collect()
    }
}

/// The CPU decoder: the model, a rayon pool and the rows being decoded.
pub struct CpuDecoder {
    model: Model,
    mode: DecodeMode,
    pool: rayon::ThreadPool,
    rows: Vec<Row>,
}

impl CpuDecoder {
    /// A decoder for `config` with `params`, for sequences up to `max_len` tokens (prompt and
    /// output), on `threads` threads (`None` or 0: one per core).
    pub fn new(
        config: &ModelConfig,
        params: Arc<ParamStore>,
        mode: DecodeMode,
        max_len: usize,
        threads: Option<usize>,
    ) -> Result<CpuDecoder, GenerateError> {
        config
            .validate()
            .map_err(|e| GenerateError::Model(e.to_string()))?;
        params
            .check_matches(config)
            .map_err(|e| GenerateError::Model(format!("parameters: {e}")))?;
        let mut builder =
            rayon::ThreadPoolBuilder::new().thread_name(|i| format!("redpack-decode-{i}"));
        if let Some(n) = threads {
            builder = builder.num_threads(n);
        }
        let pool = builder
            .build()
            .map_err(|e| GenerateError::Model(format!("cannot start CPU threads: {e}")))?;
        let (decoder, encoder) = match config.arch {
            Arch::Dec => (StackPlan::plain(1, config.layers, 0), None),
            Arch::Red => {
                let encoder = StackPlan::plain(1, config.encoder_layers, 1);
                let decoder =
                    StackPlan::red_decoder(encoder.final_norm + 1, config.decoder_layers, 2);
                (decoder, Some(encoder))
            }
        };
        let model = Model {
            config: config.clone(),
            dims: BlockDims {
                d_model: config.d_model,
                d_ffn: config.d_ffn,
                attn: AttnShape {
                    n_heads: config.n_heads,
                    head_dim: config.head_dim,
                },
                eps: config.norm_eps,
            },
            // RedLLM's decoder reads position n for a row of n tokens.
            rope: Rope::new(config.head_dim, config.rope_base, max_len + 1),
            params,
            decoder,
            encoder,
        };
        Ok(CpuDecoder {
            model,
            mode,
            pool,
            rows: Vec::new(),
        })
    }

    fn start_rows(&self, prompts: &[&[u32]]) -> Result<(Vec<Row>, Vec<f32>), GenerateError> {
        let m = &self.model;
        let self_blocks = |plan: &StackPlan| {
            plan.blocks
                .iter()
                .filter(|b| matches!(b, Block::SelfAttn(_)))
                .count()
        };
        let n_self = self_blocks(&m.decoder);
        match &m.encoder {
            None => {
                let mut rows: Vec<Row> = prompts
                    .iter()
                    .map(|p| {
                        let bidirectional = if self.mode.bidirectional_prompt {
                            p.len()
                        } else {
                            0
                        };
                        Row::new(n_self, 0, bidirectional)
                    })
                    .collect();
                let mut refs: Vec<&mut Row> = rows.iter_mut().collect();
                let hidden = m.run_stack(&m.decoder, &mut refs, prompts, false)?;
                Ok((rows, last_of_each(&hidden, prompts, m.dims.d_model)))
            }
            Some(encoder) => {
                let mut enc_rows: Vec<Row> = prompts
                    .iter()
                    .map(|p| Row::new(self_blocks(encoder), 0, p.len()))
                    .collect();
                let mut refs: Vec<&mut Row> = enc_rows.iter_mut().collect();
                let enc_out = m.run_stack(encoder, &mut refs, prompts, true)?;
                let d = m.dims.d_model;
                let mut rows = Vec::with_capacity(prompts.len());
                let mut at = 0;
                for p in prompts {
                    let src = &enc_out[at * d..(at + p.len()) * d];
                    let positions: Vec<u32> = (0..p.len() as u32).collect();
                    let mut row = Row::new(n_self, p.len(), 0);
                    row.cross_kv = m
                        .decoder
                        .blocks
                        .iter()
                        .filter_map(|b| match *b {
                            Block::CrossAttn(i) => Some(m.keys_values(src, i, &positions)),
                            _ => None,
                        })
                        .collect();
                    rows.push(row);
                    at += p.len();
                }
                let firsts: Vec<[u32; 1]> = prompts.iter().map(|p| [p[p.len() - 1]]).collect();
                let firsts: Vec<&[u32]> = firsts.iter().map(|f| &f[..]).collect();
                let mut refs: Vec<&mut Row> = rows.iter_mut().collect();
                let hidden = m.run_stack(&m.decoder, &mut refs, &firsts, true)?;
                Ok((rows, hidden))
            }
        }
    }
}

/// The hidden state of each prompt's last token.
fn last_of_each(hidden: &[f32], prompts: &[&[u32]], d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(prompts.len() * d);
    let mut end = 0;
    for p in prompts {
        end += p.len();
        out.extend_from_slice(&hidden[(end - 1) * d..end * d]);
    }
    out
}

impl Decoder for CpuDecoder {
    fn name(&self) -> String {
        format!("cpu ({} threads)", self.pool.current_num_threads())
    }

    fn start(&mut self, prompts: &[&[u32]]) -> Result<Vec<Vec<f32>>, GenerateError> {
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(GenerateError::EmptyPrompt { index: i });
        }
        self.rows.clear();
        let (rows, last) = self.pool.install(|| self.start_rows(prompts))?;
        self.rows = rows;
        Ok(self.pool.install(|| self.model.logits(&last)))
    }

    fn extend(
        &mut self,
        rows: &[usize],
        tokens: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let mut slots: Vec<Option<&mut Row>> = self.rows.iter_mut().map(Some).collect();
        let mut picked = Vec::with_capacity(rows.len());
        for &r in rows {
            let row = slots
                .get_mut(r)
                .and_then(Option::take)
                .ok_or_else(|| GenerateError::Model(format!("row {r} is not being decoded")))?;
            picked.push(row);
        }
        let model = &self.model;
        let out_norm = model.config.arch == Arch::Red;
        let hidden = self
            .pool
            .install(|| model.run_stack(&model.decoder, &mut picked, tokens, out_norm))?;
        let logits = self.pool.install(|| model.logits(&hidden));
        let v = model.config.vocab_size;
        let mut out = Vec::with_capacity(rows.len());
        let mut at = 0;
        for toks in tokens {
            let mut flat = Vec::with_capacity(toks.len() * v);
            for l in &logits[at..at + toks.len()] {
                flat.extend_from_slice(l);
            }
            out.push(flat);
            at += toks.len();
        }
        Ok(out)
    }
}
