//! The seam between the decoding loop and a device: a `Decoder` holds a batch of rows, each with
//! its key/value cache, and turns new tokens into next-token logits.
//!
//! What a row's cache means (k = prompt length):
//! - DecLLM: the prompt's tokens at positions `0..k` (attending bidirectionally among themselves
//!   for a "DecLLM + BiAttn" checkpoint), then every appended token at the next position,
//!   causally;
//! - RedLLM: the encoder reads the prompt once at positions `0..k` and every cross-attention
//!   layer's keys and values are computed from its output once; the decoder starts with the
//!   prompt's last token at position `k` (the training stream: the decoder reads tokens
//!   `[k-1, n-1)` at positions `k..n`), then every appended token at the next position.
//!
//! Either way the logits after `start` predict the prompt's next token, and the logits of an
//! appended token predict the one after it, exactly as a full forward pass over the whole row
//! (`crate::batch`) would compute them.

use super::GenerateError;

/// A device's incremental decoder.
pub trait Decoder {
    /// A short name for logs (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    /// Drops every row and starts one per prompt (each at least one token): runs the prompts and
    /// returns, per row, the `vocab` logits that predict the token after the prompt.
    fn start(&mut self, prompts: &[&[u32]]) -> Result<Vec<Vec<f32>>, GenerateError>;

    /// Appends `tokens[i]` to row `rows[i]` (rows distinct, each list non-empty) and returns,
    /// per listed row, the logits after each appended token (`tokens[i].len() x vocab`).
    fn extend(&mut self, rows: &[usize], tokens: &[&[u32]])
        -> Result<Vec<Vec<f32>>, GenerateError>;
}

/// The attention of a model's decoder, as the checkpoint was trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeMode {
    /// DecLLM + BiAttn: the prompt's tokens attend to each other bidirectionally.
    pub bidirectional_prompt: bool,
}
