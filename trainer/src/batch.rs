//! A batch as the backends consume it: rows of token ids, each with its prefix split.
//!
//! Row `r` holds `length[r]` real tokens in `tokens[r * seq .. r * seq + length[r]]`, padded with
//! the corpus's padding id up to `seq`. The first `prefix_len[r]` tokens are the input (RedLLM's
//! encoder input; DecLLM's prompt when finetuning), the rest is the target.
//!
//! What each architecture computes from a row (k = prefix_len, n = length):
//! - DecLLM: the decoder reads tokens `[0, n-1)` and predicts tokens `[1, n)`. The loss covers the
//!   predictions of tokens `[1, n)` when `StepOptions::loss_on_prefix` is set (causal-LM
//!   pretraining), else only of tokens `[k, n)` (finetuning; evaluation at a fixed prefix).
//! - RedLLM: the encoder reads tokens `[0, k)` at positions `0..k`; the decoder reads tokens
//!   `[k-1, n-1)` at positions `k..n` (continuous positions) and predicts tokens `[k, n)`.

/// One (micro-)batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Number of rows (B).
    pub rows: usize,
    /// Padded row length (T).
    pub seq: usize,
    /// `rows * seq` token ids, row-major.
    pub tokens: Vec<u32>,
    /// Per row: number of input (prefix) tokens, `1 <= prefix_len <= length` for RedLLM.
    pub prefix_len: Vec<usize>,
    /// Per row: number of real (non-padding) tokens.
    pub length: Vec<usize>,
    /// Per row: positions (< length) where a new document or packed segment starts, other than
    /// 0. Used only when attention resets at document boundaries.
    pub doc_starts: Vec<Vec<u32>>,
    /// Per row: the example's source name, for per-source evaluation.
    pub source: Vec<String>,
}

impl Batch {
    /// `rows` full rows of `seq` uniformly random token ids below `vocab` (seeded), the prefix
    /// split in the middle, one document per row: the synthetic batch the step benchmarks time.
    pub fn random_full(rows: usize, seq: usize, vocab: usize, seed: u64) -> Batch {
        let mut rng = crate::rng::SplitMix64::new(seed);
        Batch {
            rows,
            seq,
            tokens: (0..rows * seq)
                .map(|_| rng.below(vocab as u64) as u32)
                .collect(),
            prefix_len: vec![seq / 2; rows],
            length: vec![seq; rows],
            doc_starts: vec![Vec::new(); rows],
            source: vec![String::new(); rows],
        }
    }

    /// The tokens of row `r`, padding excluded.
    pub fn row(&self, r: usize) -> &[u32] {
        let start = r * self.seq;
        &self.tokens[start..start + self.length[r]]
    }
}

/// How a step treats a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOptions {
    /// z-loss coefficient: adds `z_loss * log(Z)^2` per scored token (1e-4 in pretraining).
    pub z_loss: f32,
    /// Dropout probability on residual-branch outputs (0.05 in finetuning, 0 in pretraining).
    pub dropout: f32,
    /// Seed for dropout masks; the trainer derives it from the run seed and the step.
    pub dropout_seed: u64,
    /// DecLLM only: bidirectional attention among the prefix tokens ("DecLLM + BiAttn").
    pub bidirectional_prefix: bool,
    /// Reset attention at document boundaries (`Batch::doc_starts`): a token attends only within
    /// its own document. Off by default, as in the paper.
    pub reset_at_doc_boundaries: bool,
    /// DecLLM only: score every next-token prediction (causal-LM pretraining) instead of only the
    /// target part.
    pub loss_on_prefix: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            z_loss: 0.0,
            dropout: 0.0,
            dropout_seed: 0,
            bidirectional_prefix: false,
            reset_at_doc_boundaries: false,
            loss_on_prefix: false,
        }
    }
}

/// What a forward pass reports. Sums, not means, so micro-batches combine exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossStats {
    /// Sum over scored tokens of the cross-entropy (natural log).
    pub loss_sum: f64,
    /// Sum over scored tokens of `z_loss * log(Z)^2` (0 when z-loss is off).
    pub z_loss_sum: f64,
    /// Number of scored tokens.
    pub tokens: usize,
    /// Per row: cross-entropy sum and scored-token count (for per-source evaluation).
    pub row_loss: Vec<f64>,
    pub row_tokens: Vec<usize>,
    /// Per row: each scored token's cross-entropy in target order (for the log-probability by
    /// position in evaluation).
    pub row_token_loss: Vec<Vec<f64>>,
}
