//! Streams examples into shards and finishes the corpus with its manifest.
//!
//! Each shard's token file is written under a temporary name, its header (which holds the token
//! count) patched at the end, fsynced and renamed; its index is written the same way. The manifest
//! comes last. A build that dies before `finish` leaves no `manifest.json`, so no reader mistakes
//! the directory for a corpus.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::atomic;
use crate::error::{Result, SchemaError};
use crate::index::IndexBuilder;
use crate::manifest::{
    Counts, InputEntry, Layout, Manifest, PackingStats, ShardEntry, Split, TokenizerInfo,
    FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE,
};
use crate::tokens::{TokenDtype, TokensHeader, HEADER_BYTES};

/// Default shard size: 2^29 tokens (1 GiB of u16 tokens).
pub const DEFAULT_MAX_SHARD_TOKENS: u64 = 1 << 29;

/// How to write a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    pub layout: Layout,
    /// Every stored id must be below this.
    pub vocab_size: u32,
    /// A shard is closed before an example would take it past this many tokens (a shard always
    /// holds at least one example).
    pub max_shard_tokens: u64,
}

/// One example as the writer takes it.
#[derive(Debug, Clone, Copy)]
pub struct ExampleMeta<'a> {
    pub source: &'a str,
    pub prefix_len: u32,
    /// Positions > 0 where a new document or segment starts, increasing.
    pub doc_starts: &'a [u32],
    /// `file:line` of the record the example starts with.
    pub origin: Option<&'a str>,
}

/// Everything the manifest holds that the writer does not know itself.
#[derive(Debug, Clone)]
pub struct CorpusInfo {
    pub tokenizer: TokenizerInfo,
    pub build: serde_json::Value,
    pub inputs: Vec<InputEntry>,
    pub counts: Counts,
    pub sources: BTreeMap<String, Counts>,
    pub packing: PackingStats,
}

/// The file names of shard `n`.
pub fn shard_file_names(n: usize) -> (String, String) {
    (
        format!("shard-{n:05}.tokens"),
        format!("shard-{n:05}.index.arrow"),
    )
}

struct OpenShard {
    number: usize,
    tmp: PathBuf,
    out: BufWriter<File>,
    tokens: u64,
    index: IndexBuilder,
}

/// Writes a corpus directory.
pub struct CorpusWriter {
    dir: PathBuf,
    options: WriterOptions,
    dtype: TokenDtype,
    shards: Vec<ShardEntry>,
    current: Option<OpenShard>,
    scratch: Vec<u8>,
}

impl CorpusWriter {
    /// Prepares `dir` (created if missing). A previous corpus there is unpublished first: its
    /// manifest is removed before anything else, then its shards.
    pub fn create(dir: &Path, options: WriterOptions) -> Result<CorpusWriter> {
        if let Layout::Packed {
            seq_len,
            prefix_len,
        } = options.layout
        {
            if seq_len == 0 || prefix_len > seq_len {
                return Err(SchemaError::InvalidExample(format!(
                    "packed layout needs 0 < seq_len and prefix_len <= seq_len (got {seq_len}, {prefix_len})"
                )));
            }
        }
        if options.vocab_size == 0 {
            return Err(SchemaError::InvalidExample("vocab_size is 0".into()));
        }
        fs::create_dir_all(dir).map_err(|e| SchemaError::io(dir, e))?;
        let manifest = dir.join(MANIFEST_FILE);
        match fs::remove_file(&manifest) {
            Ok(()) => atomic::sync_dir(&manifest)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SchemaError::io(&manifest, e)),
        }
        remove_old_shards(dir)?;
        Ok(CorpusWriter {
            dir: dir.to_path_buf(),
            dtype: TokenDtype::for_vocab(options.vocab_size),
            options,
            shards: Vec::new(),
            current: None,
            scratch: Vec::new(),
        })
    }

    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// Appends one example. Checks it against the layout and the vocabulary.
    pub fn push(&mut self, tokens: &[u32], meta: ExampleMeta<'_>) -> Result<()> {
        self.check(tokens, &meta)?;
        let len = tokens.len() as u64;
        let full = self
            .current
            .as_ref()
            .is_some_and(|s| s.index.len() > 0 && s.tokens + len > self.options.max_shard_tokens);
        if full {
            self.close_shard()?;
        }
        if self.current.is_none() {
            self.open_shard()?;
        }
        let dtype = self.dtype;
        let scratch = &mut self.scratch;
        scratch.clear();
        match dtype {
            TokenDtype::U16 => tokens
                .iter()
                .for_each(|&t| scratch.extend_from_slice(&(t as u16).to_le_bytes())),
            TokenDtype::U32 => tokens
                .iter()
                .for_each(|&t| scratch.extend_from_slice(&t.to_le_bytes())),
        }
        let shard = self
            .current
            .as_mut()
            .ok_or_else(|| SchemaError::InvalidExample("no open shard".into()))?;
        shard
            .out
            .write_all(scratch)
            .map_err(|e| SchemaError::io(&shard.tmp, e))?;
        shard.index.push(
            shard.tokens,
            tokens.len() as u32,
            meta.prefix_len,
            meta.source,
            meta.doc_starts,
            meta.origin,
        );
        shard.tokens += len;
        Ok(())
    }

    fn check(&self, tokens: &[u32], meta: &ExampleMeta<'_>) -> Result<()> {
        let len = tokens.len() as u64;
        if len == 0 || len > u64::from(u32::MAX) {
            return Err(SchemaError::InvalidExample(format!(
                "example length {len} is not in 1..=u32::MAX"
            )));
        }
        if let Layout::Packed {
            seq_len,
            prefix_len,
        } = self.options.layout
        {
            if len != u64::from(seq_len) || meta.prefix_len != prefix_len {
                return Err(SchemaError::InvalidExample(format!(
                    "packed example has length {len} and prefix {} (layout: {seq_len}, {prefix_len})",
                    meta.prefix_len
                )));
            }
        } else if len > self.options.layout.max_len() {
            return Err(SchemaError::InvalidExample(format!(
                "example length {len} exceeds the layout's maximum {}",
                self.options.layout.max_len()
            )));
        }
        if u64::from(meta.prefix_len) > len {
            return Err(SchemaError::InvalidExample(format!(
                "prefix_len {} exceeds length {len}",
                meta.prefix_len
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t >= self.options.vocab_size) {
            return Err(SchemaError::InvalidExample(format!(
                "token id {bad} is not below vocab_size {}",
                self.options.vocab_size
            )));
        }
        let increasing = meta.doc_starts.windows(2).all(|w| w[0] < w[1]);
        let in_range = meta.doc_starts.iter().all(|&p| p > 0 && u64::from(p) < len);
        if !increasing || !in_range {
            return Err(SchemaError::InvalidExample(format!(
                "doc_starts {:?} must increase strictly within 1..{len}",
                meta.doc_starts
            )));
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let number = self.shards.len();
        let (tokens_name, _) = shard_file_names(number);
        let tmp = atomic::temp_path(&self.dir.join(tokens_name));
        let file = File::create(&tmp).map_err(|e| SchemaError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Placeholder header; the real one (with the count) is written on close.
        out.write_all(&[0u8; HEADER_BYTES])
            .map_err(|e| SchemaError::io(&tmp, e))?;
        self.current = Some(OpenShard {
            number,
            tmp,
            out,
            tokens: 0,
            index: IndexBuilder::default(),
        });
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        let Some(shard) = self.current.take() else {
            return Ok(());
        };
        let (tokens_name, index_name) = shard_file_names(shard.number);
        let tokens_path = self.dir.join(&tokens_name);
        let tmp = shard.tmp;
        let mut file = shard
            .out
            .into_inner()
            .map_err(|e| SchemaError::io(&tmp, e.into_error()))?;
        let header = TokensHeader {
            dtype: self.dtype,
            tokens: shard.tokens,
        };
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header.encode()))
            .and_then(|_| file.sync_all())
            .map_err(|e| SchemaError::io(&tmp, e))?;
        drop(file);
        let (tokens_bytes, tokens_sha256) = hash_file(&tmp)?;
        atomic::commit(&tmp, &tokens_path)?;

        let examples = shard.index.len() as u64;
        let index_path = self.dir.join(&index_name);
        let batch = shard
            .index
            .finish()
            .map_err(|e| SchemaError::corrupt(&index_path, format!("building index: {e}")))?;
        let bytes = encode_ipc(&batch)
            .map_err(|e| SchemaError::corrupt(&index_path, format!("encoding index: {e}")))?;
        atomic::write_file(&index_path, &bytes)?;
        self.shards.push(ShardEntry {
            tokens_file: tokens_name,
            tokens_bytes,
            tokens_sha256,
            index_file: index_name,
            index_bytes: bytes.len() as u64,
            index_sha256: hex(&Sha256::digest(&bytes)),
            examples,
            tokens: shard.tokens,
        });
        Ok(())
    }

    /// Closes the last shard and writes the manifest (the commit point).
    pub fn finish(self, info: CorpusInfo) -> Result<Manifest> {
        self.finish_with_split(info, None)
    }

    /// [`CorpusWriter::finish`] for one side of a train/evaluation split.
    pub fn finish_with_split(mut self, info: CorpusInfo, split: Option<Split>) -> Result<Manifest> {
        self.close_shard()?;
        let manifest = Manifest {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            kind: self.options.layout.kind(),
            layout: self.options.layout,
            token_dtype: self.dtype,
            header_bytes: HEADER_BYTES as u32,
            tokenizer: info.tokenizer,
            build: info.build,
            inputs: info.inputs,
            shards: std::mem::take(&mut self.shards),
            counts: info.counts,
            sources: info.sources,
            packing: info.packing,
            split,
        };
        let path = self.dir.join(MANIFEST_FILE);
        let bytes = manifest
            .to_json_bytes()
            .map_err(|e| SchemaError::corrupt(&path, format!("serializing manifest: {e}")))?;
        atomic::write_file(&path, &bytes)?;
        Ok(manifest)
    }
}

fn encode_ipc(
    batch: &arrow_array::RecordBatch,
) -> std::result::Result<Vec<u8>, arrow_schema::ArrowError> {
    let mut bytes = Vec::new();
    {
        let mut writer = arrow_ipc::writer::FileWriter::try_new(&mut bytes, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// Removes shard files (and their temporaries) left by an earlier build in `dir`.
/// Removes the shard files (and leftover temporaries) of `dir`, nothing else.
pub fn remove_old_shards(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| SchemaError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SchemaError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let bare = name.trim_start_matches('.');
        let ours = bare.starts_with("shard-")
            && (bare.ends_with(".tokens")
                || bare.ends_with(".index.arrow")
                || bare.ends_with(".tokens.tmp")
                || bare.ends_with(".index.arrow.tmp"));
        if ours {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| SchemaError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Size and sha256 (lowercase hex) of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| SchemaError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| SchemaError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}
