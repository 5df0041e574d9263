//! Launchers for the kernels over tokens and scores: the masked attention softmax, cross-entropy
//! with z-loss over a logits chunk, and the embedding lookup with its deterministic backward.

use std::collections::HashMap;

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::grid::{grid, grid_1d, LaunchError, Stored, NULL, THREADS, WARPS_PER_BLOCK};
use super::launch::CudaKernels;

/// Threads per block for the per-token cross-entropy reduction.
const CE_THREADS: u32 = 512;

/// The largest vocabulary `cross_entropy_fused` takes: `CE_PER_THREAD` (cross_entropy.cu) logits
/// in each of `CE_THREADS` threads' registers.
pub const CE_FUSED_VOCAB: usize = 64 * CE_THREADS as usize;

/// The padded layout of a batch of attention scores: `rows x heads x max_q x max_k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoresShape {
    pub rows: usize,
    pub heads: usize,
    pub max_q: usize,
    pub max_k: usize,
}

impl ScoresShape {
    /// Query lines (one softmax each).
    pub fn lines(&self) -> usize {
        self.rows * self.heads * self.max_q
    }
}

/// The tokens that share an id, linked in token order: `first[k]` starts chain k and `next[t]`
/// is the next token with t's id (-1 at the end). Built on the host from the batch's tokens for
/// the deterministic embedding backward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChains {
    pub first: Vec<i32>,
    pub next: Vec<i32>,
}

impl TokenChains {
    pub fn new(tokens: &[u32]) -> Self {
        let mut first = Vec::new();
        let mut next = vec![-1i32; tokens.len()];
        let mut link = |t: usize, previous: Option<usize>| match previous {
            Some(previous) => next[previous] = t as i32,
            None => first.push(t as i32),
        };
        // Ids below a small multiple of the token count (a vocabulary, or stream indices) take
        // a table indexed by id; any others a hash map. Both link the same chains.
        let span = tokens.iter().max().map_or(0, |&m| m as usize + 1);
        if span <= DENSE_IDS.max(4 * tokens.len()) {
            let mut last = vec![u32::MAX; span];
            for (t, &id) in tokens.iter().enumerate() {
                let slot = &mut last[id as usize];
                link(t, (*slot != u32::MAX).then_some(*slot as usize));
                *slot = t as u32;
            }
        } else {
            let mut last: HashMap<u32, usize> = HashMap::new();
            for (t, &id) in tokens.iter().enumerate() {
                link(t, last.insert(id, t));
            }
        }
        TokenChains { first, next }
    }
}

/// Ids up to this many always take `TokenChains`'s table (4 MiB of `u32`).
const DENSE_IDS: usize = 1 << 20;

impl CudaKernels {
    /// `probs = softmax(scale · scores + mask)` per query line. `rows_desc` has six `i32` per
    /// row (q_start, q_len, k_start, k_len, causal, bidirectional_prefix, as `AttnRow`); `docs`
    /// are the query and key streams' document ids, if documents reset attention.
    pub fn masked_softmax_forward(
        &self,
        scores: &CudaSlice<f32>,
        probs: &mut CudaSlice<f32>,
        rows_desc: &CudaSlice<i32>,
        docs: Option<(&CudaSlice<u32>, &CudaSlice<u32>)>,
        shape: ScoresShape,
        scale: f32,
    ) -> Result<(), LaunchError> {
        let dims = [shape.rows, shape.heads, shape.max_q, shape.max_k].map(|v| v as i32);
        let mut b = self.builder("masked_softmax_forward")?;
        b.arg(scores).arg(probs).arg(rows_desc);
        match docs {
            Some((q_doc, k_doc)) => b.arg(q_doc).arg(k_doc),
            None => b.arg(&NULL).arg(&NULL),
        };
        b.arg(&dims[0])
            .arg(&dims[1])
            .arg(&dims[2])
            .arg(&dims[3])
            .arg(&scale);
        let blocks = (shape.lines() as u32).div_ceil(WARPS_PER_BLOCK);
        self.run("masked_softmax_forward", &mut b, grid(blocks, 1, THREADS))
    }

    /// `dscores = scale · P ⊙ (dP − rowsum(P ⊙ dP))`, the gradient w.r.t. the unscaled scores.
    pub fn masked_softmax_backward(
        &self,
        probs: &CudaSlice<f32>,
        dprobs: &CudaSlice<f32>,
        dscores: &mut CudaSlice<f32>,
        shape: ScoresShape,
        scale: f32,
    ) -> Result<(), LaunchError> {
        let (lines, max_k) = (shape.lines() as i32, shape.max_k as i32);
        let mut b = self.builder("masked_softmax_backward")?;
        b.arg(probs).arg(dprobs).arg(dscores);
        b.arg(&lines).arg(&max_k).arg(&scale);
        let blocks = (lines as u32).div_ceil(WARPS_PER_BLOCK);
        self.run("masked_softmax_backward", &mut b, grid(blocks, 1, THREADS))
    }

    /// Per token of a `tokens x vocab` logits chunk: `log_z`, `ce` and `z` (`z_loss · logZ²`).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_forward(
        &self,
        logits: &CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        log_z: &mut CudaSlice<f32>,
        ce: &mut CudaSlice<f32>,
        z: &mut CudaSlice<f32>,
        vocab: usize,
        z_loss: f32,
    ) -> Result<(), LaunchError> {
        let (tokens, vocab) = (targets.len() as i32, vocab as i32);
        let mut b = self.builder("cross_entropy_forward")?;
        b.arg(logits).arg(targets).arg(log_z).arg(ce).arg(z);
        b.arg(&tokens).arg(&vocab).arg(&z_loss);
        self.run(
            "cross_entropy_forward",
            &mut b,
            grid(tokens as u32, 1, CE_THREADS),
        )
    }

    /// `grad` (`tokens x vocab`, f32 or bf16) = `(softmax · (1 + 2 z_loss logZ) − onehot) ·
    /// grad_scale` of the logits chunk, which is left as it is.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_backward<T: Stored>(
        &self,
        logits: &CudaSlice<f32>,
        grad: &mut CudaSlice<T>,
        targets: &CudaSlice<u32>,
        log_z: &CudaSlice<f32>,
        vocab: usize,
        z_loss: f32,
        grad_scale: f32,
    ) -> Result<(), LaunchError> {
        let name = T::entry("cross_entropy_backward", "cross_entropy_backward_bf16");
        let (tokens, vocab) = (targets.len() as i32, vocab as i32);
        let mut b = self.builder(name)?;
        b.arg(logits).arg(grad).arg(targets).arg(log_z);
        b.arg(&tokens).arg(&vocab).arg(&z_loss).arg(&grad_scale);
        // 4 logits per thread (cross_entropy.cu)
        let cfg = grid((vocab as u32).div_ceil(4 * THREADS), tokens as u32, THREADS);
        self.run(name, &mut b, cfg)
    }

    /// `cross_entropy_forward` and `cross_entropy_backward` in one launch that reads the logits
    /// once (the same bits): for a training step's chunk, with `vocab <= CE_FUSED_VOCAB`.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_fused<T: Stored>(
        &self,
        logits: &CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        (log_z, ce, z): (
            &mut CudaSlice<f32>,
            &mut CudaSlice<f32>,
            &mut CudaSlice<f32>,
        ),
        grad: &mut CudaSlice<T>,
        vocab: usize,
        z_loss: f32,
        grad_scale: f32,
    ) -> Result<(), LaunchError> {
        if vocab > CE_FUSED_VOCAB {
            return Err(LaunchError::Unsupported(format!(
                "cross_entropy_fused: a vocabulary of {vocab} (at most {CE_FUSED_VOCAB})"
            )));
        }
        let name = T::entry("cross_entropy_fused", "cross_entropy_fused_bf16");
        let (tokens, vocab) = (targets.len() as i32, vocab as i32);
        let mut b = self.builder(name)?;
        b.arg(logits)
            .arg(targets)
            .arg(log_z)
            .arg(ce)
            .arg(z)
            .arg(grad);
        b.arg(&tokens).arg(&vocab).arg(&z_loss).arg(&grad_scale);
        self.run(name, &mut b, grid(tokens as u32, 1, CE_THREADS))
    }

    /// `out[t] = embed[tokens[t]]`, rows of `d`.
    pub fn embedding_forward(
        &self,
        embed: &CudaSlice<f32>,
        tokens: &CudaSlice<u32>,
        out: &mut CudaSlice<f32>,
        d: usize,
    ) -> Result<(), LaunchError> {
        let (n, d32) = (tokens.len() as i32, d as i32);
        let mut b = self.builder("embedding_forward")?;
        b.arg(embed).arg(tokens).arg(out).arg(&n).arg(&d32);
        self.run("embedding_forward", &mut b, grid_1d(tokens.len() * d))
    }

    /// Adds `dx` (`tokens x d`) into the rows of `d_embed` its tokens index, in token order;
    /// `first`/`next` are a `TokenChains` of the same tokens, on the device.
    pub fn embedding_backward(
        &self,
        dx: &CudaSlice<f32>,
        tokens: &CudaSlice<u32>,
        first: &CudaSlice<i32>,
        next: &CudaSlice<i32>,
        d_embed: &mut CudaSlice<f32>,
        d: usize,
    ) -> Result<(), LaunchError> {
        let (chains, d32) = (first.len() as i32, d as i32);
        let mut b = self.builder("embedding_backward")?;
        b.arg(dx)
            .arg(tokens)
            .arg(first)
            .arg(next)
            .arg(&chains)
            .arg(&d32)
            .arg(d_embed);
        let cfg = grid(chains as u32, (d as u32).div_ceil(THREADS), THREADS);
        self.run("embedding_backward", &mut b, cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_chains_link_equal_ids_in_order() {
        let chains = TokenChains::new(&[5, 7, 5, 9, 7, 5]);
        assert_eq!(chains.first, vec![0, 1, 3]);
        assert_eq!(chains.next, vec![2, 4, 5, -1, -1, -1]);
    }

    #[test]
    fn walking_the_chains_matches_the_cpu_scatter_order() {
        // The CPU reference adds token rows into embedding rows in token order; the chains must
        // visit, for each id, exactly its tokens in that order.
        let tokens = [3u32, 1, 3, 3, 0, 1, 2, 0];
        let chains = TokenChains::new(&tokens);
        let mut visited = Vec::new();
        for &start in &chains.first {
            let (id, mut order) = (tokens[start as usize], Vec::new());
            let mut t = start;
            while t >= 0 {
                assert_eq!(tokens[t as usize], id);
                order.push(t as usize);
                t = chains.next[t as usize];
            }
            let expected: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i] == id).collect();
            assert_eq!(order, expected);
            visited.extend(order);
        }
        visited.sort_unstable();
        assert_eq!(visited, (0..tokens.len()).collect::<Vec<_>>());
    }

    /// The chains as the definition says: per id, its tokens in order.
    fn reference(tokens: &[u32]) -> TokenChains {
        let mut first = Vec::new();
        let mut next = vec![-1i32; tokens.len()];
        for (t, &id) in tokens.iter().enumerate() {
            if let Some(k) = tokens[t + 1..].iter().position(|&x| x == id) {
                next[t] = (t + 1 + k) as i32;
            }
            if !tokens[..t].contains(&id) {
                first.push(t as i32);
            }
        }
        TokenChains { first, next }
    }

    #[test]
    fn chains_link_each_ids_tokens_in_order_with_the_table_or_the_map() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let cases: Vec<Vec<u32>> = vec![
            vec![],
            vec![7],
            vec![5, 5, 5],
            (0..300).map(|_| rng.below(40) as u32).collect(),
            // Ids far above 4x the count and DENSE_IDS: the hash map.
            (0..300)
                .map(|_| [3, u32::MAX, 1 << 30][rng.below(3) as usize])
                .collect(),
        ];
        for tokens in cases {
            assert_eq!(TokenChains::new(&tokens), reference(&tokens), "{tokens:?}");
        }
    }
}
