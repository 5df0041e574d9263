//! A corpus as a Megatron-LM indexed dataset: `PREFIX.bin` (every sequence's token ids, one after
//! another) and `PREFIX.idx`, the index Megatron-LM and NeMo memory-map.
//!
//! The index, all integers little-endian:
//! - the 9-byte magic `MMIDIDX\0\0`, the version (u64, 1) and the token dtype code (u8: 8 =
//!   uint16, 4 = int32);
//! - the number of sequences S (u64) and the number of document indices D (u64);
//! - S sequence lengths in tokens (i32), S byte offsets of the sequences in `.bin` (i64), and the
//!   D document indices (i64): document `d` is sequences `[idx[d], idx[d+1])`, `idx[0] = 0`,
//!   `idx[D-1] = S`.
//!
//! Each example of the corpus is one sequence and one document: a packed row as it is, an
//! input/target example as its input followed by its target (the whole row). Megatron's GPT
//! dataset concatenates sequences and cuts its own training windows, so the rows' boundaries only
//! matter to tools that read sequences one by one.
//!
//! Both files are written to temporary names in the target's folder, fsynced, then renamed
//! (`.bin` first), so a reader never finds a truncated pair under the final names.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use redpack_schemas::{atomic, Corpus, TokenDtype};

use super::ExportError;

/// The index file's magic.
pub const INDEX_MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
/// The index format version Megatron-LM writes and reads.
pub const INDEX_VERSION: u64 = 1;
/// Megatron's dtype code for uint16 token ids.
pub const DTYPE_UINT16: u8 = 8;
/// Megatron's dtype code for int32 token ids (Megatron has no uint32).
pub const DTYPE_INT32: u8 = 4;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MegatronSummary {
    pub bin: PathBuf,
    pub idx: PathBuf,
    pub sequences: u64,
    pub tokens: u64,
    /// The dtype code of the token ids (`DTYPE_UINT16` or `DTYPE_INT32`).
    pub dtype_code: u8,
}

/// `PREFIX.bin` and `PREFIX.idx`.
pub fn megatron_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    (with(".bin"), with(".idx"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the corpus in `corpus_dir` as `PREFIX.bin` / `PREFIX.idx`.
pub fn export_megatron(corpus_dir: &Path, prefix: &Path) -> Result<MegatronSummary, ExportError> {
    let corpus = Corpus::open(corpus_dir)?;
    let manifest = corpus.manifest();
    let (dtype_code, width) = match manifest.token_dtype {
        TokenDtype::U16 => (DTYPE_UINT16, 2u64),
        TokenDtype::U32 => (DTYPE_INT32, 4u64),
    };
    let (bin_path, idx_path) = megatron_paths(prefix);
    if prefix.file_name().is_none() {
        return Err(ExportError::Invalid(format!(
            "{}: the output prefix needs a file name (PREFIX.bin and PREFIX.idx are written)",
            prefix.display()
        )));
    }
    if let Some(parent) = prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let bin_tmp = atomic::temp_path(&bin_path);
    let idx_tmp = atomic::temp_path(&idx_path);
    let written = write_pair(&corpus, dtype_code, width, &bin_tmp, &idx_tmp);
    let (sequences, tokens) = match written {
        Ok(counts) => counts,
        Err(e) => {
            // Leave nothing half-written behind; the error that matters is the one above.
            let _ = std::fs::remove_file(&bin_tmp);
            let _ = std::fs::remove_file(&idx_tmp);
            return Err(e);
        }
    };
    atomic::commit(&bin_tmp, &bin_path)?;
    atomic::commit(&idx_tmp, &idx_path)?;
    Ok(MegatronSummary {
        bin: bin_path,
        idx: idx_path,
        sequences,
        tokens,
        dtype_code,
    })
}

/// Writes the data file and the index to the temporary paths; returns (sequences, tokens).
fn write_pair(
    corpus: &Corpus,
    dtype_code: u8,
    width: u64,
    bin_tmp: &Path,
    idx_tmp: &Path,
) -> Result<(u64, u64), ExportError> {
    let file = File::create(bin_tmp).map_err(io(bin_tmp))?;
    let mut bin = BufWriter::with_capacity(1 << 20, file);
    let count = corpus.len();
    let mut lengths: Vec<i32> = Vec::with_capacity(count as usize);
    let mut pointers: Vec<i64> = Vec::with_capacity(count as usize);
    let mut offset: u64 = 0;
    let mut tokens: u64 = 0;
    for i in 0..count {
        let example = corpus.example(i)?;
        let len = example.tokens.len();
        let len32 = i32::try_from(len).map_err(|_| {
            ExportError::Invalid(format!(
                "example {i}: {len} tokens do not fit Megatron's int32 sequence length"
            ))
        })?;
        let pointer = i64::try_from(offset).map_err(|_| {
            ExportError::Invalid(format!("example {i}: byte offset {offset} overflows int64"))
        })?;
        lengths.push(len32);
        pointers.push(pointer);
        for id in example.tokens.iter() {
            if dtype_code == DTYPE_UINT16 {
                let id = u16::try_from(id).map_err(|_| {
                    ExportError::Invalid(format!("example {i}: token id {id} does not fit uint16"))
                })?;
                bin.write_all(&id.to_le_bytes()).map_err(io(bin_tmp))?;
            } else {
                let id = i32::try_from(id).map_err(|_| {
                    ExportError::Invalid(format!("example {i}: token id {id} does not fit int32"))
                })?;
                bin.write_all(&id.to_le_bytes()).map_err(io(bin_tmp))?;
            }
        }
        offset += len as u64 * width;
        tokens += len as u64;
    }
    let file = bin.into_inner().map_err(|e| ExportError::Io {
        path: bin_tmp.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(bin_tmp))?;
    drop(file);

    let mut index = Vec::with_capacity(34 + 12 * lengths.len() + 8 * (lengths.len() + 1));
    index.extend_from_slice(INDEX_MAGIC);
    index.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    index.push(dtype_code);
    index.extend_from_slice(&count.to_le_bytes());
    index.extend_from_slice(&(count + 1).to_le_bytes());
    for len in &lengths {
        index.extend_from_slice(&len.to_le_bytes());
    }
    for pointer in &pointers {
        index.extend_from_slice(&pointer.to_le_bytes());
    }
    for doc in 0..=count {
        index.extend_from_slice(&(doc as i64).to_le_bytes());
    }
    let mut file = File::create(idx_tmp).map_err(io(idx_tmp))?;
    file.write_all(&index).map_err(io(idx_tmp))?;
    file.sync_all().map_err(io(idx_tmp))?;
    Ok((count, tokens))
}
