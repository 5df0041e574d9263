//! Token files: a 32-byte header, then little-endian token ids.
//!
//! ```text
//! offset size field
//!      0    8 magic        b"RPTOKENS"
//!      8    4 version      u32 LE, currently 1
//!     12    4 dtype width  u32 LE, 2 (u16 tokens) or 4 (u32 tokens)
//!     16    8 token count  u64 LE
//!     24    8 reserved     zero
//!     32    … tokens       token count × width bytes, little-endian
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SchemaError};

pub const TOKENS_MAGIC: [u8; 8] = *b"RPTOKENS";
pub const TOKENS_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 32;

/// How token ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// `u16` when every id of a `vocab_size` vocabulary fits, else `u32`.
    pub fn for_vocab(vocab_size: u32) -> TokenDtype {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    fn from_width(width: u32) -> Option<TokenDtype> {
        match width {
            2 => Some(TokenDtype::U16),
            4 => Some(TokenDtype::U32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenDtype::U16 => "u16",
            TokenDtype::U32 => "u32",
        }
    }
}

/// A parsed token-file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokensHeader {
    pub dtype: TokenDtype,
    pub tokens: u64,
}

impl TokensHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(&TOKENS_MAGIC);
        out[8..12].copy_from_slice(&TOKENS_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(self.dtype.width() as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.tokens.to_le_bytes());
        out
    }

    /// Parses and checks the header at the start of `bytes` (the whole file), including that the
    /// file is exactly as long as the header says.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<TokensHeader> {
        if bytes.len() < HEADER_BYTES {
            return Err(SchemaError::corrupt(
                path,
                format!(
                    "token file is {} bytes, shorter than its {HEADER_BYTES}-byte header (truncated)",
                    bytes.len()
                ),
            ));
        }
        if bytes[0..8] != TOKENS_MAGIC {
            return Err(SchemaError::corrupt(
                path,
                "wrong magic: not a redpack token file",
            ));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        if version != TOKENS_VERSION {
            return Err(SchemaError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: TOKENS_VERSION,
            });
        }
        let width = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default());
        let dtype = TokenDtype::from_width(width).ok_or_else(|| {
            SchemaError::corrupt(path, format!("token width {width} is neither 2 nor 4"))
        })?;
        let tokens = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
        let expected = tokens
            .checked_mul(dtype.width() as u64)
            .and_then(|b| b.checked_add(HEADER_BYTES as u64));
        if expected != Some(bytes.len() as u64) {
            return Err(SchemaError::corrupt(
                path,
                format!(
                    "header says {tokens} {} tokens ({} bytes with header) but the file has {} bytes (truncated or padded)",
                    dtype.name(),
                    expected.map_or_else(|| "overflowing".to_string(), |b| b.to_string()),
                    bytes.len()
                ),
            ));
        }
        Ok(TokensHeader { dtype, tokens })
    }
}

/// A borrowed run of token ids, in the file's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSlice<'a> {
    U16(&'a [u16]),
    U32(&'a [u32]),
}

impl<'a> TokenSlice<'a> {
    pub fn len(&self) -> usize {
        match self {
            TokenSlice::U16(s) => s.len(),
            TokenSlice::U32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u32> {
        match self {
            TokenSlice::U16(s) => s.get(i).map(|&t| u32::from(t)),
            TokenSlice::U32(s) => s.get(i).copied(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        let (a, b) = match *self {
            TokenSlice::U16(s) => (Some(s.iter().map(|&t| u32::from(t))), None),
            TokenSlice::U32(s) => (None, Some(s.iter().copied())),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }

    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_into(&mut out);
        out
    }

    /// Appends the ids to `out` (widened to `u32`).
    pub fn extend_into(&self, out: &mut Vec<u32>) {
        match self {
            TokenSlice::U16(s) => out.extend(s.iter().map(|&t| u32::from(t))),
            TokenSlice::U32(s) => out.extend_from_slice(s),
        }
    }

    /// The sub-run `[start, end)`, or `None` when out of bounds.
    pub fn slice(&self, start: usize, end: usize) -> Option<TokenSlice<'a>> {
        match *self {
            TokenSlice::U16(s) => s.get(start..end).map(TokenSlice::U16),
            TokenSlice::U32(s) => s.get(start..end).map(TokenSlice::U32),
        }
    }

    /// The largest id, `None` when empty.
    pub fn max(&self) -> Option<u32> {
        match self {
            TokenSlice::U16(s) => s.iter().max().map(|&t| u32::from(t)),
            TokenSlice::U32(s) => s.iter().max().copied(),
        }
    }
}

/// Views the token bytes after the header as a typed slice. Fails (never panics) when the bytes
/// are misaligned or not a whole number of tokens.
pub(crate) fn typed_tokens<'a>(
    path: &Path,
    dtype: TokenDtype,
    bytes: &'a [u8],
) -> Result<TokenSlice<'a>> {
    if cfg!(target_endian = "big") {
        return Err(SchemaError::corrupt(
            path,
            "token files are little-endian and this reader maps them directly; big-endian hosts are not supported",
        ));
    }
    let cast_err =
        |e: bytemuck::PodCastError| SchemaError::corrupt(path, format!("token bytes: {e:?}"));
    Ok(match dtype {
        TokenDtype::U16 => TokenSlice::U16(bytemuck::try_cast_slice(bytes).map_err(cast_err)?),
        TokenDtype::U32 => TokenSlice::U32(bytemuck::try_cast_slice(bytes).map_err(cast_err)?),
    })
}
