//! Incremental decoding on the GPU (`crate::generate::Decoder`): the weights uploaded once, the
//! keys and values of every row cached on the device, and per step only the new tokens run
//! through the blocks, in f32 (the CPU decoder's arithmetic, to rounding).
//!
//! The per-token work reuses the training kernels (embedding lookup, RMSNorm with and without a
//! gain, RoPE, SwiGLU) and cuBLAS for every projection; `decode.cu` adds appending keys and
//! values to the caches and attention of the new tokens against them (one warp per token and
//! head). Each self-attention block has one key and one value cache of `rows x capacity` slots
//! (`capacity` = the context + 1); RedLLM's cross-attention blocks hold the encoder output's
//! keys and values, computed once in `start`. The logits of the tokens the caller needs are
//! gathered on the device and copied back.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use super::blas::products;
use super::blas::{Blas, BlasEngine};
use super::kernels::{CudaKernels, DecodeRows};
use super::runtime::nvrtc::KernelCache;
use super::runtime::probe::{self, CudaAvailability, CudaDeviceInfo};
use crate::backend::Precision;
use crate::config::{Arch, ModelConfig};
use crate::generate::{DecodeMode, Decoder, GenerateError};
use crate::model::rope::Rope;
use crate::model::stack::{Block, StackPlan};
use crate::params::ParamStore;

type Buf = CudaSlice<f32>;

fn device<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> GenerateError + '_ {
    move |e| GenerateError::Model(format!("CUDA: {what}: {e}"))
}

/// A key and a value cache: `rows x capacity x heads·head_dim` each.
struct Cache {
    k: Buf,
    v: Buf,
    capacity: usize,
}

/// A row's place in the sequence.
#[derive(Debug, Clone, Copy)]
struct RowState {
    /// Tokens in the self-attention caches.
    len: usize,
    /// RoPE position of the first cached token.
    first_position: usize,
    /// Cached tokens below this index see each other.
    bidirectional: usize,
    /// Encoder tokens (RedLLM).
    encoder_len: usize,
}

impl RowState {
    fn visible(&self, i: usize) -> usize {
        if i < self.bidirectional {
            self.bidirectional.max(i + 1)
        } else {
            i + 1
        }
    }
}

/// The new tokens of one pass, on the device.
struct Pass {
    n: usize,
    tokens: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    /// Per token: cache slot (row · capacity + index) of its own key and value.
    slots: CudaSlice<u32>,
    rows: CudaSlice<u32>,
    /// Per token: self-attention keys it sees.
    keys: CudaSlice<u32>,
    /// Per token: encoder tokens of its row (RedLLM decoder).
    cross_keys: Option<CudaSlice<u32>>,
}

/// The CUDA decoder.
pub struct CudaDecoder {
    name: String,
    stream: Arc<CudaStream>,
    kernels: CudaKernels,
    blas: Blas,
    config: ModelConfig,
    mode: DecodeMode,
    params: Vec<Buf>,
    cos: Buf,
    sin: Buf,
    max_positions: usize,
    decoder: StackPlan,
    encoder: Option<StackPlan>,
    capacity: usize,
    rows: Vec<RowState>,
    self_caches: Vec<Cache>,
    cross_caches: Vec<Cache>,
    // Kept alive for the stream's lifetime.
    _context: Arc<CudaContext>,
}

impl CudaDecoder {
    /// Opens the first GPU with kernels from the default PTX cache (`open_backend`'s), for
    /// sequences up to `max_len` tokens.
    pub fn open(
        config: &ModelConfig,
        params: &ParamStore,
        mode: DecodeMode,
        max_len: usize,
    ) -> Result<CudaDecoder, GenerateError> {
        let info = match probe::detect() {
            CudaAvailability::Device(info) => info,
            CudaAvailability::NoDriver => {
                return Err(GenerateError::Model(
                    probe::ProbeError::NoDriver.to_string(),
                ))
            }
            CudaAvailability::NoDevice { reason } => {
                return Err(GenerateError::Model(
                    probe::ProbeError::NoDevice { reason }.to_string(),
                ))
            }
        };
        let dir = KernelCache::default_dir()
            .unwrap_or_else(|| std::env::temp_dir().join("redpack-kernels"));
        CudaDecoder::new(&info, &KernelCache::new(dir), config, params, mode, max_len)
    }

    /// A decoder on the device `info` describes, compiling kernels into (or taking them from)
    /// `cache`; uploads the parameters.
    pub fn new(
        info: &CudaDeviceInfo,
        cache: &KernelCache,
        config: &ModelConfig,
        params: &ParamStore,
        mode: DecodeMode,
        max_len: usize,
    ) -> Result<CudaDecoder, GenerateError> {
        config
            .validate()
            .map_err(|e| GenerateError::Model(e.to_string()))?;
        params
            .check_matches(config)
            .map_err(|e| GenerateError::Model(format!("parameters: {e}")))?;
        if config.head_dim > super::kernels::DECODE_MAX_HEAD_DIM {
            return Err(GenerateError::Model(format!(
                "decoding on CUDA takes head dims up to {}, the model has {}",
                super::kernels::DECODE_MAX_HEAD_DIM,
                config.head_dim
            )));
        }
        let context = CudaContext::new(info.ordinal).map_err(device("opening a context"))?;
        // SAFETY: all work of this decoder runs on its one stream, so cudarc's per-buffer events
        // for cross-stream synchronization are never needed.
        unsafe { context.disable_event_tracking() };
        let stream = context.default_stream();
        let kernels = CudaKernels::load(stream.clone(), cache, &info.arch())
            .map_err(device("loading the kernels"))?;
        let blas =
            Blas::with_engine(stream.clone(), BlasEngine::GemmEx).map_err(device("cuBLAS"))?;
        let upload = |data: &[f32]| stream.clone_htod(data).map_err(device("uploading"));
        let params = params
            .tensors
            .iter()
            .map(|t| upload(&t.data))
            .collect::<Result<Vec<_>, _>>()?;
        let max_positions = max_len + 1;
        let rope = Rope::new(config.head_dim, config.rope_base, max_positions);
        let (cos, sin) = rope.tables();
        let (cos, sin) = (upload(cos)?, upload(sin)?);
        let (decoder, encoder) = match config.arch {
            Arch::Dec => (StackPlan::plain(1, config.layers, 0), None),
            Arch::Red => {
                let encoder = StackPlan::plain(1, config.encoder_layers, 1);
                let decoder =
                    StackPlan::red_decoder(encoder.final_norm + 1, config.decoder_layers, 2);
                (decoder, Some(encoder))
            }
        };
        Ok(CudaDecoder {
            name: format!("cuda:{} ({}, f32)", info.ordinal, info.name),
            stream,
            kernels,
            blas,
            config: config.clone(),
            mode,
            params,
            cos,
            sin,
            max_positions,
            decoder,
            encoder,
            capacity: max_positions,
            rows: Vec::new(),
            self_caches: Vec::new(),
            cross_caches: Vec::new(),
            _context: context,
        })
    }

    fn da(&self) -> usize {
        self.config.n_heads * self.config.head_dim
    }

    fn alloc(&self, n: usize) -> Result<Buf, GenerateError> {
        self.stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(device("allocating"))
    }

    fn upload_u32(&self, data: &[u32]) -> Result<CudaSlice<u32>, GenerateError> {
        self.stream.clone_htod(data).map_err(device("uploading"))
    }

    /// `out (m x n) (+)= x (m x k) · Wᵀ` for parameter `w`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        out: &mut Buf,
        x: &Buf,
        w: usize,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<(), GenerateError> {
        let (spec, la, lb) = products::linear_forward(m, k, n, accumulate);
        self.blas
            .gemm(
                &self.kernels,
                Precision::F32,
                spec,
                x.into(),
                la,
                (&self.params[w]).into(),
                lb,
                out.into(),
            )
            .map_err(device("product"))
    }

    /// RMSNorm of `groups x width` values, with parameter `gain` or per group without one.
    fn norm(
        &self,
        x: &Buf,
        gain: Option<usize>,
        groups: usize,
        width: usize,
    ) -> Result<Buf, GenerateError> {
        let mut y = self.alloc(groups * width)?;
        let mut inv = self.alloc(groups)?;
        self.kernels
            .rmsnorm_forward(
                x,
                gain.map(|g| &self.params[g]),
                &mut y,
                &mut inv,
                groups,
                width,
                self.config.norm_eps,
                None,
            )
            .map_err(device("rmsnorm"))?;
        Ok(y)
    }

    /// `normed · W[block + which]ᵀ` normalized per head, rotated at `positions` if given.
    fn head_projection(
        &self,
        normed: &Buf,
        block: usize,
        which: usize,
        tokens: usize,
        positions: Option<&CudaSlice<u32>>,
    ) -> Result<Buf, GenerateError> {
        let (d, da) = (self.config.d_model, self.da());
        let (heads, hd) = (self.config.n_heads, self.config.head_dim);
        let mut p = self.alloc(tokens * da)?;
        self.linear(&mut p, normed, block + which, tokens, d, da, false)?;
        let mut p = self.norm(&p, None, tokens * heads, hd)?;
        if let Some(positions) = positions {
            self.kernels
                .rope_apply(&mut p, positions, &self.cos, &self.sin, heads, hd, false)
                .map_err(device("rope"))?;
        }
        Ok(p)
    }

    /// Runs `plan` over the pass's tokens (self-attention caches `caches`, one per self block,
    /// extended in place) and returns the final-normed output, `n x d_model`.
    fn run_stack(
        &self,
        plan: &StackPlan,
        caches: &mut [Cache],
        cross: &[Cache],
        pass: &Pass,
        out_norm: bool,
    ) -> Result<Buf, GenerateError> {
        let (d, f, da) = (self.config.d_model, self.config.d_ffn, self.da());
        let (heads, hd, n) = (self.config.n_heads, self.config.head_dim, pass.n);
        let mut x = self.alloc(n * d)?;
        self.kernels
            .embedding_forward(&self.params[0], &pass.tokens, &mut x, d)
            .map_err(device("embedding"))?;
        let (mut self_i, mut cross_i) = (0, 0);
        for block in &plan.blocks {
            match *block {
                Block::SelfAttn(i) => {
                    let normed = self.norm(&x, Some(i), n, d)?;
                    let q = self.head_projection(&normed, i, 1, n, Some(&pass.positions))?;
                    let k = self.head_projection(&normed, i, 2, n, Some(&pass.positions))?;
                    let v = self.head_projection(&normed, i, 3, n, None)?;
                    let cache = &mut caches[self_i];
                    for (src, dst) in [(&k, &mut cache.k), (&v, &mut cache.v)] {
                        self.kernels
                            .decode_cache_append(src, dst, &pass.slots, da)
                            .map_err(device("cache append"))?;
                    }
                    let rows = DecodeRows {
                        token_row: &pass.rows,
                        token_keys: &pass.keys,
                        capacity: cache.capacity,
                    };
                    let mut o = self.alloc(n * da)?;
                    self.kernels
                        .decode_attention(&q, &cache.k, &cache.v, &rows, &mut o, heads, hd)
                        .map_err(device("attention"))?;
                    self.attention_output(&mut x, o, i, n, out_norm)?;
                    self_i += 1;
                }
                Block::CrossAttn(i) => {
                    let normed = self.norm(&x, Some(i), n, d)?;
                    let q = self.head_projection(&normed, i, 1, n, Some(&pass.positions))?;
                    let cache = &cross[cross_i];
                    let keys = pass.cross_keys.as_ref().ok_or_else(|| {
                        GenerateError::Model("internal: cross-attention without an encoder".into())
                    })?;
                    let rows = DecodeRows {
                        token_row: &pass.rows,
                        token_keys: keys,
                        capacity: cache.capacity,
                    };
                    let mut o = self.alloc(n * da)?;
                    self.kernels
                        .decode_attention(&q, &cache.k, &cache.v, &rows, &mut o, heads, hd)
                        .map_err(device("attention"))?;
                    self.attention_output(&mut x, o, i, n, true)?;
                    cross_i += 1;
                }
                Block::Ffn(i) => {
                    let normed = self.norm(&x, Some(i), n, d)?;
                    let mut gate = self.alloc(n * f)?;
                    let mut up = self.alloc(n * f)?;
                    self.linear(&mut gate, &normed, i + 1, n, d, f, false)?;
                    self.linear(&mut up, &normed, i + 2, n, d, f, false)?;
                    let mut h = self.alloc(n * f)?;
                    self.kernels
                        .swiglu_forward(&gate, &up, &mut h)
                        .map_err(device("swiglu"))?;
                    self.linear(&mut x, &h, i + 3, n, f, d, true)?;
                }
            }
        }
        self.norm(&x, Some(plan.final_norm), n, d)
    }

    fn attention_output(
        &self,
        x: &mut Buf,
        o: Buf,
        block: usize,
        n: usize,
        out_norm: bool,
    ) -> Result<(), GenerateError> {
        let (d, da) = (self.config.d_model, self.da());
        let o = match out_norm {
            true => self.norm(&o, None, n * self.config.n_heads, self.config.head_dim)?,
            false => o,
        };
        self.linear(x, &o, block + 4, n, da, d, true)
    }

    /// The pass appending `tokens[i]` to row `rows[i]` of `states`.
    fn pass(
        &self,
        states: &[RowState],
        rows: &[usize],
        tokens: &[&[u32]],
        capacity: usize,
    ) -> Result<Pass, GenerateError> {
        let mut ids = Vec::new();
        let (mut positions, mut slots, mut row_ids, mut keys, mut cross) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&r, toks) in rows.iter().zip(tokens) {
            let s = &states[r];
            for (t, &tok) in toks.iter().enumerate() {
                if tok as usize >= self.config.vocab_size {
                    return Err(GenerateError::Token {
                        token: tok as u64,
                        vocab: self.config.vocab_size,
                    });
                }
                let index = s.len + t;
                let position = s.first_position + index;
                if position >= self.max_positions || index >= capacity {
                    return Err(GenerateError::TooLong {
                        position,
                        limit: self.max_positions,
                    });
                }
                ids.push(tok);
                positions.push(position as u32);
                slots.push((r * capacity + index) as u32);
                row_ids.push(r as u32);
                // Bidirectional tokens see the whole prompt, which this pass appends in full.
                keys.push(s.visible(index) as u32);
                cross.push(s.encoder_len as u32);
            }
        }
        Ok(Pass {
            n: ids.len(),
            tokens: self.upload_u32(&ids)?,
            positions: self.upload_u32(&positions)?,
            slots: self.upload_u32(&slots)?,
            rows: self.upload_u32(&row_ids)?,
            keys: self.upload_u32(&keys)?,
            cross_keys: match self.encoder.is_some() {
                true => Some(self.upload_u32(&cross)?),
                false => None,
            },
        })
    }

    fn caches(
        &self,
        plan: &StackPlan,
        rows: usize,
        capacity: usize,
    ) -> Result<Vec<Cache>, GenerateError> {
        let blocks = plan
            .blocks
            .iter()
            .filter(|b| matches!(b, Block::SelfAttn(_)))
            .count();
        (0..blocks)
            .map(|_| {
                Ok(Cache {
                    k: self.alloc(rows * capacity * self.da())?,
                    v: self.alloc(rows * capacity * self.da())?,
                    capacity,
                })
            })
            .collect()
    }

    /// Logits of rows `which` of `hidden` (`n x d_model`), copied back.
    fn logits(&self, hidden: &Buf, which: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        let (d, v) = (self.config.d_model, self.config.vocab_size);
        let which_dev = self.upload_u32(which)?;
        let mut picked = self.alloc(which.len() * d)?;
        // The embedding lookup kernel is a row gather.
        self.kernels
            .embedding_forward(hidden, &which_dev, &mut picked, d)
            .map_err(device("gather"))?;
        let mut logits = self.alloc(which.len() * v)?;
        let (spec, la, lb) = products::logits(which.len(), v, d, 1.0 / (d as f32).sqrt());
        self.blas
            .gemm(
                &self.kernels,
                Precision::F32,
                spec,
                (&picked).into(),
                la,
                (&self.params[0]).into(),
                lb,
                (&mut logits).into(),
            )
            .map_err(device("logits"))?;
        let host = self
            .stream
            .clone_dtoh(&logits)
            .map_err(device("copying logits"))?;
        Ok(host.chunks(v).map(|c| c.to_vec()).collect())
    }
}

impl Decoder for CudaDecoder {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn start(&mut self, prompts: &[&[u32]]) -> Result<Vec<Vec<f32>>, GenerateError> {
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(GenerateError::EmptyPrompt { index: i });
        }
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<usize> = (0..prompts.len()).collect();
        self.rows.clear();
        self.self_caches = self.caches(&self.decoder, prompts.len(), self.capacity)?;
        let mut ends = Vec::new();
        let mut at = 0u32;
        match self.encoder.as_ref() {
            None => {
                let states: Vec<RowState> = prompts
                    .iter()
                    .map(|p| RowState {
                        len: 0,
                        first_position: 0,
                        bidirectional: if self.mode.bidirectional_prompt {
                            p.len()
                        } else {
                            0
                        },
                        encoder_len: 0,
                    })
                    .collect();
                let pass = self.pass(&states, &rows, prompts, self.capacity)?;
                let mut caches = std::mem::take(&mut self.self_caches);
                let hidden = self.run_stack(&self.decoder, &mut caches, &[], &pass, false);
                self.self_caches = caches;
                let hidden = hidden?;
                for p in prompts {
                    at += p.len() as u32;
                    ends.push(at - 1);
                }
                self.rows = states
                    .into_iter()
                    .zip(prompts)
                    .map(|(s, p)| RowState { len: p.len(), ..s })
                    .collect();
                self.logits(&hidden, &ends)
            }
            Some(encoder) => {
                let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
                let enc_states: Vec<RowState> = prompts
                    .iter()
                    .map(|p| RowState {
                        len: 0,
                        first_position: 0,
                        bidirectional: p.len(),
                        encoder_len: 0,
                    })
                    .collect();
                let mut enc_caches = self.caches(encoder, prompts.len(), longest)?;
                let pass = self.pass(&enc_states, &rows, prompts, longest)?;
                let enc_pass = Pass {
                    cross_keys: None,
                    ..pass
                };
                let enc_out = self.run_stack(encoder, &mut enc_caches, &[], &enc_pass, true)?;
                drop(enc_caches);
                // Each cross-attention block's keys and values over the encoder output, at the
                // encoder positions, into slots row · longest + index.
                let mut cross = Vec::new();
                for block in &self.decoder.blocks {
                    if let Block::CrossAttn(i) = *block {
                        let k = self.head_projection(
                            &enc_out,
                            i,
                            2,
                            enc_pass.n,
                            Some(&enc_pass.positions),
                        )?;
                        let v = self.head_projection(&enc_out, i, 3, enc_pass.n, None)?;
                        let mut cache = Cache {
                            k: self.alloc(prompts.len() * longest * self.da())?,
                            v: self.alloc(prompts.len() * longest * self.da())?,
                            capacity: longest,
                        };
                        for (src, dst) in [(&k, &mut cache.k), (&v, &mut cache.v)] {
                            self.kernels
                                .decode_cache_append(src, dst, &enc_pass.slots, self.da())
                                .map_err(device("cache append"))?;
                        }
                        cross.push(cache);
                    }
                }
                self.cross_caches = cross;
                let states: Vec<RowState> = prompts
                    .iter()
                    .map(|p| RowState {
                        len: 0,
                        first_position: p.len(),
                        bidirectional: 0,
                        encoder_len: p.len(),
                    })
                    .collect();
                let firsts: Vec<[u32; 1]> = prompts.iter().map(|p| [p[p.len() - 1]]).collect();
                let firsts: Vec<&[u32]> = firsts.iter().map(|f| &f[..]).collect();
                let pass = self.pass(&states, &rows, &firsts, self.capacity)?;
                let mut caches = std::mem::take(&mut self.self_caches);
                let hidden =
                    self.run_stack(&self.decoder, &mut caches, &self.cross_caches, &pass, true);
                self.self_caches = caches;
                let hidden = hidden?;
                self.rows = states
                    .into_iter()
                    .map(|s| RowState { len: 1, ..s })
                    .collect();
                let all: Vec<u32> = (0..prompts.len() as u32).collect();
                self.logits(&hidden, &all)
            }
        }
    }

    fn extend(
        &mut self,
        rows: &[usize],
        tokens: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let mut seen = vec![false; self.rows.len()];
        for &r in rows {
            if r >= self.rows.len() || std::mem::replace(&mut seen[r], true) {
                return Err(GenerateError::Model(format!(
                    "row {r} is not being decoded"
                )));
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let pass = self.pass(&self.rows, rows, tokens, self.capacity)?;
        let out_norm = self.config.arch == Arch::Red;
        let mut caches = std::mem::take(&mut self.self_caches);
        let hidden = self.run_stack(
            &self.decoder,
            &mut caches,
            &self.cross_caches,
            &pass,
            out_norm,
        );
        self.self_caches = caches;
        let hidden = hidden?;
        for (&r, toks) in rows.iter().zip(tokens) {
            self.rows[r].len += toks.len();
        }
        let all: Vec<u32> = (0..pass.n as u32).collect();
        let logits = self.logits(&hidden, &all)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut at = 0;
        for toks in tokens {
            out.push(logits[at..at + toks.len()].concat());
            at += toks.len();
        }
        Ok(out)
    }
}
