//! FLOPs, in two conventions side by side, per stack (a RedLLM token passes through only one of
//! its two stacks). A multiply-add counts 2 FLOPs; training (forward + backward) counts 3 × the
//! forward pass.
//!
//! **Detailed** ([`training_flops`], [`forward_flops`]): what the backends compute.
//!
//! ```text
//! F = 6 · P_enc · T_enc                      encoder: non-embedding params × encoder tokens
//!   + 6 · (P_dec − P_kv) · T_dec             decoder (DecLLM's only stack) × decoder tokens
//!   + 6 · P_kv · T_enc                       RedLLM cross-attention K, V × encoder tokens
//!   + 6 · V · d_model · T_scored             output logits (tied embedding) × scored tokens
//!   + 12 · d_attn · (L_enc · A_enc + L_dec · (A_self + A_cross))     attention
//! ```
//!
//! - `P_enc`, `P_dec`: `ModelConfig::stack_param_counts` without the embedding (norm gains
//!   included, negligible). The input embedding is a lookup and costs nothing.
//! - `P_kv = L_dec · 2 · d_model · d_attn` (`ModelConfig::cross_kv_params`, 0 for DecLLM): a
//!   RedLLM decoder layer's cross-attention K and V projections read the encoder's output, so
//!   they run once per encoder token, not per decoder token.
//! - Attention: per (query, key) pair and layer, `QKᵀ` and `PV` cost `2 · d_attn` FLOPs each
//!   forward, so `12 · d_attn` for training. `A` counts the pairs of the full rectangle
//!   (`len_q × len_k` per row, masked pairs included, as the dense kernels compute them):
//!   `A_enc = Σ k²`, `A_self = Σ m²`, `A_cross = Σ m · k` with `k` encoder and `m` decoder
//!   tokens per row. Softmax, norms and RoPE are not counted.
//!
//! **The paper's convention** ([`paper_training_flops`]): `6 · N · D` per stack,
//!
//! ```text
//! F_paper = 6 · P_enc · T_enc + 6 · P_dec · T_dec
//! ```
//!
//! with `N` every non-embedding parameter of the stack (attention Q, K, V, O, a RedLLM decoder's
//! cross-attention Q, K, V, O included, the FFN, the norm gains) and `D` the tokens read by that
//! stack. Nothing else counts: no attention term, no output logits (the tied embedding is not
//! a non-embedding parameter), and the cross-attention K, V are counted with the decoder's
//! tokens, as "a stack's parameters × the tokens through it" has it.
//!
//! **Inference** ([`inference_flops`]): a forward pass in the paper's convention, `2 · N` per
//! token per stack, except that the cross-attention K and V run once per encoder token:
//!
//! ```text
//! F_inf = 2 · P_enc · T_enc + 2 · (P_dec − P_kv) · T_dec + 2 · P_kv · T_enc
//! ```
//!
//! `T_dec` is what the decoder reads: DecLLM reads `n − 1` tokens of an `n`-token row (the last
//! token is only a target), RedLLM's decoder the `n − k` target positions after a `k`-token
//! input.

use crate::batch::{Batch, StepOptions};
use crate::config::{Arch, ModelConfig};

/// What one step pushes through each stack. `DecLLM` uses only the decoder fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackTokens {
    /// Tokens the encoder reads (RedLLM).
    pub encoder_tokens: u64,
    /// Tokens the decoder reads (DecLLM's stack or RedLLM's decoder).
    pub decoder_tokens: u64,
    /// Decoder tokens whose prediction is scored (logits are computed only for these).
    pub scored_tokens: u64,
    /// Σ over rows of encoder tokens².
    pub encoder_attn_pairs: u64,
    /// Σ over rows of decoder tokens².
    pub decoder_self_pairs: u64,
    /// Σ over rows of decoder tokens × encoder tokens (RedLLM).
    pub cross_attn_pairs: u64,
}

impl StackTokens {
    /// The counts for one batch, exactly as the backends process it (see `crate::batch`).
    pub fn from_batch(config: &ModelConfig, batch: &Batch, options: &StepOptions) -> StackTokens {
        let mut t = StackTokens::default();
        for r in 0..batch.rows {
            let n = batch.length.get(r).copied().unwrap_or(0) as u64;
            let k = (batch.prefix_len.get(r).copied().unwrap_or(0) as u64).min(n);
            match config.arch {
                Arch::Dec => {
                    let m = n.saturating_sub(1);
                    t.decoder_tokens += m;
                    t.decoder_self_pairs += m * m;
                    let first = if options.loss_on_prefix { 1 } else { k.max(1) };
                    t.scored_tokens += n.saturating_sub(first);
                }
                Arch::Red => {
                    let m = n - k;
                    t.encoder_tokens += k;
                    t.encoder_attn_pairs += k * k;
                    t.decoder_tokens += m;
                    t.decoder_self_pairs += m * m;
                    t.cross_attn_pairs += m * k;
                    t.scored_tokens += m;
                }
            }
        }
        t
    }

    /// Full-length pretraining rows: `rows` sequences of `seq` tokens, RedLLM split at
    /// `prefix_len` (the paper: `seq / 2`).
    pub fn packed(config: &ModelConfig, rows: usize, seq: usize, prefix_len: usize) -> StackTokens {
        let batch = Batch {
            rows,
            seq,
            tokens: Vec::new(),
            prefix_len: vec![prefix_len.min(seq); rows],
            length: vec![seq; rows],
            doc_starts: Vec::new(),
            source: Vec::new(),
        };
        let options = StepOptions {
            loss_on_prefix: true,
            ..StepOptions::default()
        };
        StackTokens::from_batch(config, &batch, &options)
    }

    /// Adds another micro-batch's counts.
    pub fn add(&mut self, other: &StackTokens) {
        self.encoder_tokens += other.encoder_tokens;
        self.decoder_tokens += other.decoder_tokens;
        self.scored_tokens += other.scored_tokens;
        self.encoder_attn_pairs += other.encoder_attn_pairs;
        self.decoder_self_pairs += other.decoder_self_pairs;
        self.cross_attn_pairs += other.cross_attn_pairs;
    }
}

/// Training FLOPs (forward + backward) of a step with these counts, detailed; the formula is in
/// the module docs.
pub fn training_flops(config: &ModelConfig, tokens: &StackTokens) -> f64 {
    let counts = config.stack_param_counts();
    let kv = f(config.cross_kv_params());
    let d_attn = f(config.d_attn() as u64);
    let (enc_layers, dec_layers) = match config.arch {
        Arch::Dec => (0.0, f(config.layers as u64)),
        Arch::Red => (
            f(config.encoder_layers as u64),
            f(config.decoder_layers as u64),
        ),
    };
    let dense = 6.0 * f(counts.encoder) * f(tokens.encoder_tokens)
        + 6.0 * (f(counts.decoder) - kv) * f(tokens.decoder_tokens)
        + 6.0 * kv * f(tokens.encoder_tokens)
        + 6.0 * f(counts.embedding) * f(tokens.scored_tokens);
    let attention = 12.0
        * d_attn
        * (enc_layers * f(tokens.encoder_attn_pairs)
            + dec_layers * (f(tokens.decoder_self_pairs) + f(tokens.cross_attn_pairs)));
    dense + attention
}

/// Forward-pass FLOPs of these counts, detailed: a third of [`training_flops`].
pub fn forward_flops(config: &ModelConfig, tokens: &StackTokens) -> f64 {
    training_flops(config, tokens) / 3.0
}

/// Training FLOPs in the paper's convention, `6 · N · D` per stack (module docs).
pub fn paper_training_flops(config: &ModelConfig, tokens: &StackTokens) -> f64 {
    let counts = config.stack_param_counts();
    6.0 * f(counts.encoder) * f(tokens.encoder_tokens)
        + 6.0 * f(counts.decoder) * f(tokens.decoder_tokens)
}

/// Inference FLOPs of these counts: `2 · N` per token per stack, the cross-attention K and V
/// once per encoder token (module docs). Divide by the rows for a per-example figure.
pub fn inference_flops(config: &ModelConfig, tokens: &StackTokens) -> f64 {
    let counts = config.stack_param_counts();
    let kv = f(config.cross_kv_params());
    2.0 * f(counts.encoder) * f(tokens.encoder_tokens)
        + 2.0 * (f(counts.decoder) - kv) * f(tokens.decoder_tokens)
        + 2.0 * kv * f(tokens.encoder_tokens)
}

/// Inference FLOPs of one example of `length` tokens whose input is its first `prefix_len`
/// (RedLLM's encoder part; DecLLM reads the same tokens causally).
pub fn inference_flops_per_example(config: &ModelConfig, length: usize, prefix_len: usize) -> f64 {
    let batch = Batch {
        rows: 1,
        seq: length,
        tokens: Vec::new(),
        prefix_len: vec![prefix_len.min(length)],
        length: vec![length],
        doc_starts: Vec::new(),
        source: Vec::new(),
    };
    inference_flops(
        config,
        &StackTokens::from_batch(config, &batch, &StepOptions::default()),
    )
}

fn f(x: u64) -> f64 {
    x as f64
}
