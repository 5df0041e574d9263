//! Opens a corpus: memory-maps every shard, validates it against the manifest, and gives O(1)
//! access to example `i` across shards as borrowed token slices.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_buffer::Buffer;
use sha2::{Digest, Sha256};

use crate::error::{Result, SchemaError};
use crate::index::IndexColumns;
use crate::manifest::{Manifest, ShardEntry};
use crate::mmap::Mmap;
use crate::tokens::{typed_tokens, TokenSlice, TokensHeader, HEADER_BYTES};
use crate::writer::hex;

/// One example, borrowed from the maps.
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    pub tokens: TokenSlice<'a>,
    /// Tokens before the split: `tokens[..prefix_len]` is the input, the rest the target.
    pub prefix_len: u32,
    pub source: &'a str,
    /// Positions > 0 where a new document or segment starts.
    pub doc_starts: &'a [u32],
    /// `file:line` of the record the example starts with, when recorded.
    pub origin: Option<&'a str>,
    pub shard: usize,
    /// Row within the shard.
    pub row: usize,
}

/// An open shard: its token map and decoded index.
pub(crate) struct Shard {
    pub tokens_path: PathBuf,
    pub index_path: PathBuf,
    pub tokens_map: Mmap,
    pub header: TokensHeader,
    pub index: IndexColumns,
}

impl Shard {
    pub(crate) fn tokens(&self) -> Result<TokenSlice<'_>> {
        let bytes = self
            .tokens_map
            .as_slice()
            .get(HEADER_BYTES..)
            .unwrap_or(&[]);
        typed_tokens(&self.tokens_path, self.header.dtype, bytes)
    }
}

/// A corpus opened for reading.
pub struct Corpus {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<Shard>,
    /// `starts[s]` = global index of shard `s`'s first example; one extra entry = total.
    starts: Vec<u64>,
}

impl std::fmt::Debug for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corpus")
            .field("dir", &self.dir)
            .field("kind", &self.manifest.kind)
            .field("shards", &self.shards.len())
            .field("examples", &self.len())
            .finish()
    }
}

impl Corpus {
    /// Opens `dir`. Checks every token header and file size, and every index (its sha256, which
    /// is cheap, then its columns) against the manifest. Token checksums are left to `verify`.
    pub fn open(dir: &Path) -> Result<Corpus> {
        let manifest = Manifest::load(dir)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = vec![0u64];
        for entry in &manifest.shards {
            let shard = open_shard(dir, &manifest, entry)?;
            let total = starts.last().copied().unwrap_or(0) + shard.index.len() as u64;
            starts.push(total);
            shards.push(shard);
        }
        Ok(Corpus {
            dir: dir.to_path_buf(),
            manifest,
            shards,
            starts,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Path of the corpus's `tokenizer.json` copy.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.tokenizer.file)
    }

    /// Number of examples across all shards.
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    pub(crate) fn shard(&self, s: usize) -> &Shard {
        &self.shards[s]
    }

    /// Example `i` (global, across shards). Bounds are checked against the token file, so a
    /// corrupt index yields an error, never an out-of-bounds read.
    pub fn example(&self, i: u64) -> Result<Example<'_>> {
        if i >= self.len() {
            return Err(SchemaError::OutOfRange {
                index: i,
                len: self.len(),
            });
        }
        // The last start <= i (starts is sorted; empty shards share a start).
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        let row = (i - self.starts[s]) as usize;
        self.shard_example(s, row)
    }

    /// Example `row` of shard `s`.
    pub fn shard_example(&self, s: usize, row: usize) -> Result<Example<'_>> {
        let shard = self.shards.get(s).ok_or(SchemaError::OutOfRange {
            index: s as u64,
            len: self.shards.len() as u64,
        })?;
        let bad = |what: String| SchemaError::corrupt(&shard.index_path, what);
        let index = &shard.index;
        if row >= index.len() {
            return Err(bad(format!(
                "row {row} past the index's {} rows",
                index.len()
            )));
        }
        let offset = index.offset.values()[row];
        let length = index.length.values()[row];
        let prefix_len = index.prefix_len.values()[row];
        let end = offset.checked_add(u64::from(length));
        if end.is_none_or(|end| end > shard.header.tokens) {
            return Err(bad(format!(
                "row {row}: tokens [{offset}, +{length}) run past the token file's {} tokens",
                shard.header.tokens
            )));
        }
        if prefix_len > length {
            return Err(bad(format!(
                "row {row}: prefix_len {prefix_len} > length {length}"
            )));
        }
        let all = shard.tokens()?;
        let tokens = all
            .slice(offset as usize, (offset + u64::from(length)) as usize)
            .ok_or_else(|| bad(format!("row {row}: token range out of bounds")))?;
        let source = index
            .source(row)
            .ok_or_else(|| bad(format!("row {row}: source key outside the dictionary")))?;
        let doc_starts = index
            .doc_starts(row)
            .ok_or_else(|| bad(format!("row {row}: doc_starts offsets out of bounds")))?;
        Ok(Example {
            tokens,
            prefix_len,
            source,
            doc_starts,
            origin: index.origin(row),
            shard: s,
            row,
        })
    }
}

fn open_shard(dir: &Path, manifest: &Manifest, entry: &ShardEntry) -> Result<Shard> {
    let tokens_path = dir.join(&entry.tokens_file);
    let index_path = dir.join(&entry.index_file);
    check_inside(dir, &tokens_path)?;
    check_inside(dir, &index_path)?;
    let tokens_map = Mmap::open(&tokens_path)?;
    let header = TokensHeader::decode(&tokens_path, tokens_map.as_slice())?;
    if header.dtype != manifest.token_dtype {
        return Err(SchemaError::corrupt(
            &tokens_path,
            format!(
                "token dtype {} disagrees with the manifest's {}",
                header.dtype.name(),
                manifest.token_dtype.name()
            ),
        ));
    }
    if header.tokens != entry.tokens || tokens_map.len() as u64 != entry.tokens_bytes {
        return Err(SchemaError::corrupt(
            &tokens_path,
            format!(
                "file has {} tokens in {} bytes; the manifest says {} tokens in {} bytes",
                header.tokens,
                tokens_map.len(),
                entry.tokens,
                entry.tokens_bytes
            ),
        ));
    }
    if manifest.header_bytes as usize != HEADER_BYTES {
        return Err(SchemaError::corrupt(
            dir.join(crate::manifest::MANIFEST_FILE),
            format!(
                "header_bytes {} is not {HEADER_BYTES}",
                manifest.header_bytes
            ),
        ));
    }
    let index_map = Mmap::open(&index_path)?;
    if index_map.len() as u64 != entry.index_bytes {
        return Err(SchemaError::corrupt(
            &index_path,
            format!(
                "index is {} bytes; the manifest says {}",
                index_map.len(),
                entry.index_bytes
            ),
        ));
    }
    // The index is small beside the tokens: checking its hash on every open means the Arrow
    // decoder only ever sees bytes the writer produced.
    let digest = hex(&Sha256::digest(index_map.as_slice()));
    if digest != entry.index_sha256 {
        return Err(SchemaError::corrupt(
            &index_path,
            format!(
                "sha256 {digest} does not match the manifest's {} (the file changed or is damaged)",
                entry.index_sha256
            ),
        ));
    }
    let index = decode_index(&index_path, index_map)?;
    if index.len() as u64 != entry.examples {
        return Err(SchemaError::corrupt(
            &index_path,
            format!(
                "index has {} rows; the manifest says {} examples",
                index.len(),
                entry.examples
            ),
        ));
    }
    Ok(Shard {
        tokens_path,
        index_path,
        tokens_map,
        header,
        index,
    })
}

/// Refuses a corpus file that is a symbolic link to somewhere outside the corpus folder (the
/// manifest's own names are plain file names; see [`Manifest::check_fields`]).
pub(crate) fn check_inside(dir: &Path, path: &Path) -> Result<()> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Ok(());
    }
    let root = dir.canonicalize().map_err(|e| SchemaError::io(dir, e))?;
    let target = path.canonicalize().map_err(|e| SchemaError::io(path, e))?;
    if target.starts_with(&root) {
        Ok(())
    } else {
        Err(SchemaError::corrupt(
            path,
            format!(
                "is a symbolic link to {}, outside the corpus folder {}; corpus files must lie \
                 inside it",
                target.display(),
                root.display()
            ),
        ))
    }
}

/// Decodes an Arrow IPC file without copying: the arrays borrow the map through `Buffer`.
///
/// Arrow's decoder asserts instead of returning errors on some damaged files (buffers past
/// their block, misaligned buffers); the blocks are checked first ([`check_block`]) and any
/// assertion left is caught here and reported as a damaged index, so a reader never panics on
/// a file.
fn decode_index(path: &Path, map: Mmap) -> Result<IndexColumns> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_index_unguarded(path, map)
    }))
    .unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_string());
        Err(SchemaError::corrupt(
            path,
            format!("damaged Arrow index (the decoder failed: {message})"),
        ))
    })
}

fn decode_index_unguarded(path: &Path, map: Mmap) -> Result<IndexColumns> {
    let bad = |what: String| SchemaError::corrupt(path, what);
    let buffer = Buffer::from(bytes::Bytes::from_owner(map));
    let len = buffer.len();
    if len < 10 {
        return Err(bad("index file too short for an Arrow IPC footer".into()));
    }
    let trailer: [u8; 10] = buffer[len - 10..]
        .try_into()
        .map_err(|_| bad("unreadable footer".into()))?;
    let footer_len = arrow_ipc::reader::read_footer_length(trailer)
        .map_err(|e| bad(format!("not an Arrow IPC file: {e}")))?;
    let footer_start = (len - 10)
        .checked_sub(footer_len)
        .ok_or_else(|| bad("Arrow footer length exceeds the file".into()))?;
    let footer = arrow_ipc::root_as_footer(&buffer[footer_start..len - 10])
        .map_err(|e| bad(format!("invalid Arrow footer: {e}")))?;
    let schema = footer
        .schema()
        .ok_or_else(|| bad("Arrow footer has no schema".into()))?;
    let schema = arrow_ipc::convert::try_fb_to_schema(schema)
        .map_err(|e| bad(format!("Arrow schema: {e}")))?;
    let schema = Arc::new(schema);
    let mut decoder = arrow_ipc::reader::FileDecoder::new(schema, footer.version());
    let block_bytes = |block: &arrow_ipc::Block| -> Result<Buffer> {
        let start = usize::try_from(block.offset()).ok();
        let size = usize::try_from(block.metaDataLength())
            .ok()
            .zip(usize::try_from(block.bodyLength()).ok())
            .and_then(|(m, b)| m.checked_add(b));
        match (start, size) {
            (Some(start), Some(size)) if start.checked_add(size).is_some_and(|e| e <= len) => {
                Ok(buffer.slice_with_length(start, size))
            }
            _ => Err(bad("Arrow block points past the end of the file".into())),
        }
    };
    for block in footer.dictionaries().iter().flatten() {
        let data = block_bytes(block)?;
        check_block(block, &data).map_err(bad)?;
        decoder
            .read_dictionary(block, &data)
            .map_err(|e| bad(format!("Arrow dictionary: {e}")))?;
    }
    let blocks: Vec<arrow_ipc::Block> = footer
        .recordBatches()
        .map(|b| b.iter().copied().collect())
        .unwrap_or_default();
    if blocks.len() != 1 {
        return Err(bad(format!(
            "index must hold exactly one record batch, found {}",
            blocks.len()
        )));
    }
    let data = block_bytes(&blocks[0])?;
    check_block(&blocks[0], &data).map_err(bad)?;
    let batch = decoder
        .read_record_batch(&blocks[0], &data)
        .map_err(|e| bad(format!("Arrow record batch: {e}")))?
        .ok_or_else(|| bad("Arrow record batch is empty".into()))?;
    IndexColumns::from_batch(&batch).map_err(bad)
}

/// Checks one IPC block before Arrow decodes it: its message parses and every buffer it names
/// lies inside the block's body. Arrow's decoder slices those buffers unchecked and panics on
/// one that runs past the body, so a damaged index whose manifest checksum was updated to match
/// would otherwise bring the reader down instead of being reported.
fn check_block(block: &arrow_ipc::Block, data: &Buffer) -> std::result::Result<(), String> {
    let meta_len = usize::try_from(block.metaDataLength())
        .ok()
        .filter(|&m| m >= 8 && m <= data.len())
        .ok_or_else(|| {
            format!(
                "Arrow block metadata length {} is outside its block",
                block.metaDataLength()
            )
        })?;
    let body_len = (data.len() - meta_len) as u64;
    let skip = if data[..4] == [0xff; 4] { 8 } else { 4 };
    let message = arrow_ipc::root_as_message(&data[skip..])
        .map_err(|e| format!("invalid Arrow message: {e}"))?;
    let buffers = match message.header_type() {
        arrow_ipc::MessageHeader::RecordBatch => {
            message.header_as_record_batch().and_then(|b| b.buffers())
        }
        arrow_ipc::MessageHeader::DictionaryBatch => message
            .header_as_dictionary_batch()
            .and_then(|d| d.data())
            .and_then(|b| b.buffers()),
        other => return Err(format!("unexpected Arrow message type {other:?}")),
    };
    for (i, b) in buffers.iter().flatten().enumerate() {
        let inside = u64::try_from(b.offset())
            .ok()
            .zip(u64::try_from(b.length()).ok())
            .and_then(|(o, l)| o.checked_add(l))
            .is_some_and(|end| end <= body_len);
        if !inside {
            return Err(format!(
                "Arrow buffer {i} (offset {}, length {}) runs past its block's body of {body_len} bytes",
                b.offset(),
                b.length()
            ));
        }
    }
    Ok(())
}
