//! Tokenization with a Hugging Face `tokenizer.json`.
//!
//! Documents are encoded without the tokenizer's own special tokens (no BOS/CLS from a
//! post-processor); the pipeline appends the end-of-document token itself. Special-token strings
//! that appear *inside* a document (a web page quoting `<|endoftext|>`) are encoded as plain
//! text, so no document can forge a document boundary.
//!
//! **Encoders.** The tokenizer layouts corpora are built with (byte-level BPE with the GPT-2,
//! GPT-NeoX or Llama 3 split pattern, the ones [`crate::train_tokenizer`] writes, and
//! `Metaspace` BPE) are encoded by [`fast::FastEncoder`], which gives the `tokenizers` crate's
//! ids several times faster; any other file is encoded by the `tokenizers` crate.
//! [`DocTokenizer::encoder`] says which one a tokenizer uses, and why.
//!
//! **Long documents.** A text longer than `chunk_bytes` is cut into pieces before encoding and
//! the ids are concatenated. That keeps the cost linear in the length whatever the tokenizer
//! does inside one call, and lets one huge document use every thread. A cut is placed just
//! before a lone ASCII whitespace character between two non-whitespace characters, and only
//! where that position is a word boundary for the tokenizer, so the ids are identical to
//! encoding the whole text (the tests check this):
//! - GPT-2-pattern byte-level BPE: before a space, newline, tab or carriage return (a space only
//!   with `add_prefix_space`);
//! - Llama 3 pattern: before a space (a newline can join the punctuation before it);
//! - `Metaspace` with `split`: before a space (it becomes the `▁` that starts a word).
//!
//! Tokenizers outside these cases (`Metaspace` without `split`, added tokens mixing whitespace
//! and other characters, anything encoded by the `tokenizers` crate) are never cut.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub mod bpe;
pub mod fast;
pub mod pretok;

use fast::{FastEncoder, FastTables};

/// Default piece length for long documents.
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;

/// End-of-document tokens tried, in order, when the configuration names none.
pub const EOD_CANDIDATES: &[&str] = &["[EOD]", "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"];
/// Padding tokens tried, in order, when the configuration names none; the EOD token is used
/// when none exists (GPT-2 has no padding token).
pub const PAD_CANDIDATES: &[&str] = &["[PAD]", "<pad>", "<|padding|>"];

#[derive(Debug, Error)]
pub enum TokenizeError {
    #[error("{path}: cannot read tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error(
        "{path}: no end-of-document token found (tried {tried}); name one with `eod_token` in the \
         pipeline's [tokenizer] section"
    )]
    NoEod { path: PathBuf, tried: String },
    #[error("{path}: token {token:?} (configured as {role}) is not in the vocabulary")]
    UnknownToken {
        path: PathBuf,
        token: String,
        role: &'static str,
    },
    #[error("encoding failed: {message}")]
    Encode { message: String },
}

/// A loaded tokenizer with its end-of-document and padding ids.
pub struct DocTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    sha256: String,
    json: Vec<u8>,
    eod_id: u32,
    pad_id: u32,
    eod_token: String,
    pad_token: String,
    vocab_size: u32,
    chunk_bytes: usize,
    /// The fast encoder, or why it does not apply; built on first use, so loading a tokenizer
    /// only for its ids and checksum costs nothing more.
    fast: OnceLock<Result<FastEncoder, String>>,
}

impl std::fmt::Debug for DocTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocTokenizer")
            .field("path", &self.path)
            .field("eod", &(&self.eod_token, self.eod_id))
            .field("pad", &(&self.pad_token, self.pad_id))
            .field("vocab_size", &self.vocab_size)
            .field("encoder", &self.encoder())
            .finish()
    }
}

impl DocTokenizer {
    /// Loads `path`; `eod_token` / `pad_token` override the automatic choice.
    pub fn from_file(
        path: &Path,
        eod_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self, TokenizeError> {
        Self::from_bytes(path, read(path)?, eod_token, pad_token)
    }

    /// Loads a tokenizer from its JSON bytes; `path` only names it in messages.
    pub fn from_bytes(
        path: &Path,
        json: Vec<u8>,
        eod_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self, TokenizeError> {
        let inner = parse(path, &json)?;
        Self::assemble(path, json, inner, eod_token, pad_token)
    }

    /// [`Self::from_file`] for a caller about to encode: the fast encoder's tables are built on
    /// a second thread while the `tokenizers` crate parses the file, instead of after it.
    pub fn from_file_to_encode(
        path: &Path,
        eod_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self, TokenizeError> {
        Self::from_bytes_to_encode(path, read(path)?, eod_token, pad_token)
    }

    /// [`Self::from_bytes`] for a caller about to encode (see [`Self::from_file_to_encode`]).
    pub fn from_bytes_to_encode(
        path: &Path,
        json: Vec<u8>,
        eod_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self, TokenizeError> {
        let (tables, inner) = std::thread::scope(|scope| {
            let tables = scope.spawn(|| FastTables::from_json(&json));
            let inner = parse(path, &json);
            let tables = tables
                .join()
                .unwrap_or_else(|_| Err("internal error: building its tables panicked".into()));
            (tables, inner)
        });
        let tokenizer = Self::assemble(path, json, inner?, eod_token, pad_token)?;
        let fast = tables.and_then(|tables| FastEncoder::new(tables, &tokenizer.inner));
        // The cell is new and unshared: it cannot be set already.
        let _ = tokenizer.fast.set(fast);
        Ok(tokenizer)
    }

    /// The tokenizer of `json`, already parsed by the `tokenizers` crate as `inner`.
    fn assemble(
        path: &Path,
        json: Vec<u8>,
        mut inner: tokenizers::Tokenizer,
        eod_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self, TokenizeError> {
        inner.set_encode_special_tokens(true);
        let lookup = |token: &str, role: &'static str| {
            inner
                .token_to_id(token)
                .map(|id| (token.to_string(), id))
                .ok_or_else(|| TokenizeError::UnknownToken {
                    path: path.to_path_buf(),
                    token: token.to_string(),
                    role,
                })
        };
        let (eod_token, eod_id) = match eod_token {
            Some(token) => lookup(token, "eod_token")?,
            None => first_present(&inner, EOD_CANDIDATES).ok_or_else(|| TokenizeError::NoEod {
                path: path.to_path_buf(),
                tried: EOD_CANDIDATES.join(", "),
            })?,
        };
        let (pad_token, pad_id) = match pad_token {
            Some(token) => lookup(token, "pad_token")?,
            None => {
                first_present(&inner, PAD_CANDIDATES).unwrap_or_else(|| (eod_token.clone(), eod_id))
            }
        };
        // The largest id in use, not the base vocabulary size: added tokens can sit above it.
        let max_id = inner.get_vocab(true).values().copied().max().unwrap_or(0);
        let sha256 = hex(&Sha256::digest(&json));
        Ok(DocTokenizer {
            inner,
            path: path.to_path_buf(),
            sha256,
            json,
            eod_id,
            pad_id,
            eod_token,
            pad_token,
            vocab_size: max_id.saturating_add(1),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            fast: OnceLock::new(),
        })
    }

    /// Sets the piece length for long documents (at least 1 KiB).
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes.max(1024);
        self
    }

    pub fn eod_id(&self) -> u32 {
        self.eod_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn eod_token(&self) -> &str {
        &self.eod_token
    }
    pub fn pad_token(&self) -> &str {
        &self.pad_token
    }
    /// One more than the largest token id.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
    /// Hex sha256 of the tokenizer.json bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// The tokenizer.json bytes, to copy into a corpus.
    pub fn json(&self) -> &[u8] {
        &self.json
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The encoder in use, in one line: the fast encoder's kind, or the `tokenizers` crate and
    /// what the fast encoder does not support in this file.
    pub fn encoder(&self) -> String {
        match self.fast_or_reason() {
            Ok(fast) => fast.describe().to_string(),
            Err(reason) => {
                format!("tokenizers crate (the fast encoder does not support: {reason})")
            }
        }
    }

    /// The fast encoder, when it applies to this tokenizer.
    pub fn fast(&self) -> Option<&FastEncoder> {
        self.fast_or_reason().ok()
    }

    fn fast_or_reason(&self) -> Result<&FastEncoder, &str> {
        self.fast
            .get_or_init(|| FastEncoder::from_json(&self.json, &self.inner))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Encodes one piece of text as is (no chunking, no EOD).
    pub fn encode_piece(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        match self.fast() {
            Some(fast) => Ok(fast.encode(text)),
            None => self.encode_reference(text),
        }
    }

    /// Encodes one piece of text with the `tokenizers` crate, whatever the encoder in use.
    pub fn encode_reference(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.inner
            .encode_fast(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|err| TokenizeError::Encode {
                message: err.to_string(),
            })
    }

    /// Encodes one document (chunked when long, sequentially; no EOD appended).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        let mut ids = Vec::new();
        for piece in self.pieces(text) {
            ids.extend(self.encode_piece(piece)?);
        }
        Ok(ids)
    }

    /// Encodes many documents on the current rayon pool, returning ids in input order. Long
    /// documents are split first and their pieces encoded in parallel too, so one huge document
    /// does not leave the other threads idle.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizeError> {
        let pieces: Vec<(usize, &str)> = texts
            .iter()
            .enumerate()
            .flat_map(|(doc, text)| self.pieces(text).into_iter().map(move |piece| (doc, piece)))
            .collect();
        let encoded: Vec<Result<Vec<u32>, TokenizeError>> = pieces
            .par_iter()
            .with_max_len(1)
            .map(|(_, piece)| self.encode_piece(piece))
            .collect();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); texts.len()];
        for ((doc, _), ids) in pieces.iter().zip(encoded) {
            let ids = ids?;
            if out[*doc].is_empty() {
                out[*doc] = ids;
            } else {
                out[*doc].extend(ids);
            }
        }
        Ok(out)
    }

    /// The pieces `text` is encoded in: cut only where that gives identical ids.
    pub fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        match self.fast() {
            Some(fast) if !fast.cut_bytes().is_empty() => {
                split_for_encoding(text, self.chunk_bytes, fast.cut_bytes())
            }
            _ => vec![text],
        }
    }
}

/// The bytes of the tokenizer file `path`.
fn read(path: &Path) -> Result<Vec<u8>, TokenizeError> {
    std::fs::read(path).map_err(|err| TokenizeError::Load {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// `json` parsed by the `tokenizers` crate; `path` names it in the error.
fn parse(path: &Path, json: &[u8]) -> Result<tokenizers::Tokenizer, TokenizeError> {
    // `tokenizers` panics (an `expect`) on some malformed files instead of returning an
    // error; a bad tokenizer file must be an error naming the file.
    let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(json))
        .unwrap_or_else(|_| Err("malformed tokenizer.json (the parser gave up on it)".into()));
    parsed.map_err(|err| TokenizeError::Load {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

fn first_present(inner: &tokenizers::Tokenizer, candidates: &[&str]) -> Option<(String, u32)> {
    candidates
        .iter()
        .find_map(|token| inner.token_to_id(token).map(|id| (token.to_string(), id)))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True when a piece may start at byte `p`: a single whitespace byte of `cut_bytes` between
/// two characters that are not whitespace. Cutting inside a whitespace run would split the
/// whitespace-run tokens some vocabularies add (GPT-NeoX has tokens for 2 to 24 spaces).
fn is_cut(text: &str, p: usize, cut_bytes: &[u8]) -> bool {
    let bytes = text.as_bytes();
    if p == 0 || !bytes.get(p).is_some_and(|b| cut_bytes.contains(b)) {
        return false;
    }
    let next_ok = text
        .get(p + 1..)
        .and_then(|rest| rest.chars().next())
        .is_some_and(|next| !next.is_whitespace());
    let previous_ok = text
        .get(..p)
        .and_then(|before| before.chars().next_back())
        .is_some_and(|previous| !previous.is_whitespace());
    next_ok && previous_ok
}

/// Splits `text` into pieces of about `chunk_bytes`, each but the first starting with a lone
/// byte of `cut_bytes` (ASCII whitespace) between non-whitespace characters (see the module
/// docs). Linear in the length: each byte is examined at most twice.
pub fn split_for_encoding<'t>(text: &'t str, chunk_bytes: usize, cut_bytes: &[u8]) -> Vec<&'t str> {
    let chunk_bytes = chunk_bytes.max(1);
    let mut pieces = Vec::new();
    let mut start = 0;
    while text.len() - start > chunk_bytes {
        let target = start + chunk_bytes;
        let backward = (start + 1..=target)
            .rev()
            .find(|&p| is_cut(text, p, cut_bytes));
        let cut =
            backward.or_else(|| (target + 1..text.len()).find(|&p| is_cut(text, p, cut_bytes)));
        match cut {
            Some(p) => {
                pieces.push(&text[start..p]);
                start = p;
            }
            None => break,
        }
    }
    pieces.push(&text[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizers")
            .join(name)
    }

    #[test]
    fn split_points_are_whitespace_before_text() {
        let text = "alpha beta\n\ngamma  delta epsilon";
        let all = b" \n\t\r";
        let pieces = split_for_encoding(text, 6, all);
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces, ["alpha", " beta\n\ngamma  delta", " epsilon"]);
        assert_eq!(split_for_encoding("nospaceatall", 4, all), ["nospaceatall"]);
        assert_eq!(split_for_encoding("", 4, all), [""]);
        assert_eq!(split_for_encoding("a\nb c", 1, b" "), ["a\nb", " c"]);
    }

    #[test]
    fn chooses_eod_and_pad_tokens() {
        let gpt2 = DocTokenizer::from_file(&shared("gpt2.json"), None, None).unwrap();
        assert_eq!(gpt2.eod_token(), "<|endoftext|>");
        assert_eq!(gpt2.eod_id(), 50256);
        assert_eq!(gpt2.pad_id(), 50256);
        assert_eq!(gpt2.vocab_size(), 50257);
        let err = DocTokenizer::from_file(&shared("gpt2.json"), Some("[NOPE]"), None).unwrap_err();
        assert!(err.to_string().contains("[NOPE]"), "{err}");
    }

    #[test]
    fn chunked_encoding_equals_whole_encoding() {
        let arxiv = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/redpajama/arxiv/arxiv_sample.jsonl"),
        )
        .unwrap();
        let line = arxiv.lines().next().unwrap();
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = value["text"].as_str().unwrap();
        let mut end = 20_000.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        for name in ["gpt2.json", "gpt-neox-20b.json"] {
            let tokenizer = DocTokenizer::from_file(&shared(name), None, None)
                .unwrap()
                .with_chunk_bytes(1024);
            let whole = tokenizer.encode_piece(text).unwrap();
            assert_eq!(tokenizer.encode(text).unwrap(), whole, "{name}");
            let batch = tokenizer.encode_batch(&[text, "short one", text]).unwrap();
            assert_eq!(batch[0], whole);
            assert_eq!(batch[1], tokenizer.encode_piece("short one").unwrap());
            assert_eq!(batch[2], whole);
        }
    }

    #[test]
    fn special_token_text_is_not_a_boundary() {
        let gpt2 = DocTokenizer::from_file(&shared("gpt2.json"), None, None).unwrap();
        let ids = gpt2.encode("a <|endoftext|> b").unwrap();
        assert!(!ids.contains(&gpt2.eod_id()));
    }
}
