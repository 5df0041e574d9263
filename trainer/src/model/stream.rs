//! Token streams: the tokens one stack reads, the rows of a batch packed one after another with
//! the padding dropped, each token with its row, RoPE position and document index.
//!
//! For a row with `k = prefix_len` and `n = length` (see `crate::batch`):
//! - DecLLM reads tokens `[0, n-1)` at positions `0..n-1` and predicts tokens `[1, n)`;
//! - the RedLLM encoder reads tokens `[0, k)` at positions `0..k`;
//! - the RedLLM decoder reads tokens `[k-1, n-1)` at positions `k..n` and predicts `[k, n)`.
//!
//! A token's document index counts the `doc_starts` at or before the index of the *token it
//! reads*, so with resets a prediction of a document's first token sees only the previous
//! document's end (the end-of-document token), as in a DecLLM.

use super::attention::AttnRow;
use crate::batch::Batch;

/// The tokens one stack reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    pub tokens: Vec<u32>,
    pub rows: Vec<u32>,
    pub positions: Vec<u32>,
    pub docs: Vec<u32>,
    /// Per batch row: first token in the stream and how many.
    pub ranges: Vec<(usize, usize)>,
}

/// A token whose prediction is scored: its index in the decoder stream and the target id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scored {
    pub index: usize,
    pub row: usize,
    pub target: u32,
}

impl Stream {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Builds a stream by reading, from each row, token indices `first(row)..end(row)` at
    /// positions shifted by `shift(row)` (position = token index + shift).
    fn build(batch: &Batch, span: impl Fn(usize) -> (usize, usize, usize)) -> Stream {
        let mut s = Stream::default();
        for r in 0..batch.rows {
            let (first, end, shift) = span(r);
            let row = batch.row(r);
            let mut starts: Vec<u32> = batch.doc_starts.get(r).cloned().unwrap_or_default();
            starts.sort_unstable();
            s.ranges.push((s.tokens.len(), end.saturating_sub(first)));
            for (t, &token) in row.iter().enumerate().take(end).skip(first) {
                s.tokens.push(token);
                s.rows.push(r as u32);
                s.positions.push((t + shift) as u32);
                s.docs
                    .push(starts.partition_point(|&b| b as usize <= t) as u32);
            }
        }
        s
    }

    /// DecLLM input: tokens `[0, n-1)` at positions `0..n-1`.
    pub fn dec_input(batch: &Batch) -> Stream {
        Stream::build(batch, |r| (0, batch.length[r].saturating_sub(1), 0))
    }

    /// RedLLM encoder input: tokens `[0, k)` at positions `0..k`.
    pub fn encoder_input(batch: &Batch) -> Stream {
        Stream::build(batch, |r| (0, batch.prefix_len[r], 0))
    }

    /// RedLLM decoder input: tokens `[k-1, n-1)` at positions `k..n` (`k >= 1` is validated
    /// before).
    pub fn red_decoder_input(batch: &Batch) -> Stream {
        Stream::build(batch, |r| {
            let k = batch.prefix_len[r];
            (k.saturating_sub(1), batch.length[r].saturating_sub(1), 1)
        })
    }

    /// Self-attention rows over this stream.
    pub fn self_rows(
        &self,
        causal: bool,
        bidirectional_prefix: &dyn Fn(usize) -> usize,
    ) -> Vec<AttnRow> {
        self.ranges
            .iter()
            .enumerate()
            .map(|(r, &(start, len))| AttnRow {
                q_start: start,
                q_len: len,
                k_start: start,
                k_len: len,
                causal,
                bidirectional_prefix: if causal { bidirectional_prefix(r) } else { 0 },
            })
            .collect()
    }

    /// Cross-attention rows: this stream's queries over `keys`' tokens of the same row.
    pub fn cross_rows(&self, keys: &Stream) -> Vec<AttnRow> {
        self.ranges
            .iter()
            .zip(&keys.ranges)
            .map(|(&(q_start, q_len), &(k_start, k_len))| AttnRow {
                q_start,
                q_len,
                k_start,
                k_len,
                causal: false,
                bidirectional_prefix: 0,
            })
            .collect()
    }
}

/// The scored predictions of the decoder stream `stream` (built by `dec_input` or
/// `red_decoder_input`): stream token `t` of a row predicts the row's next token. `first_target`
/// gives, per row, the first token index whose prediction is scored.
pub fn scored_tokens(
    batch: &Batch,
    stream: &Stream,
    first_target: impl Fn(usize) -> usize,
) -> Vec<Scored> {
    let mut out = Vec::new();
    for (r, &(start, len)) in stream.ranges.iter().enumerate() {
        let row = batch.row(r);
        let n = batch.length[r];
        // The row's stream tokens predict the `len` tokens ending at n-1.
        let first_predicted = n - len;
        let first = first_target(r).max(first_predicted);
        for (target_index, &target) in row.iter().enumerate().take(n).skip(first) {
            out.push(Scored {
                index: start + (target_index - first_predicted),
                row: r,
                target,
            });
        }
    }
    out
}
