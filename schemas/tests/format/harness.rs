//! Shared helpers: a seeded PRNG, corpus builders, and surgical edits of written files.
//!
//! The corruption tests damage one thing at a time while keeping everything else consistent
//! (for instance rewriting an index and then fixing the manifest's checksum for it), so each test
//! reaches the check it is about instead of tripping over an earlier one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt64Type};
use arrow_array::{ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use redpack_schemas::{
    hash_file, CorpusInfo, CorpusWriter, Counts, ExampleMeta, Layout, Manifest, PackingStats,
    TokenizerInfo, WriterOptions, MANIFEST_FILE,
};

/// SplitMix64: tiny, seeded, and the same on every platform, so a failing case can be replayed
/// from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.next_u64() % denominator < numerator
    }
}

/// One example as a test wrote it, to compare with what the reader returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub tokens: Vec<u32>,
    pub prefix_len: u32,
    pub source: String,
    pub doc_starts: Vec<u32>,
    pub origin: Option<String>,
}

impl Written {
    pub fn meta(&self) -> ExampleMeta<'_> {
        ExampleMeta {
            source: &self.source,
            prefix_len: self.prefix_len,
            doc_starts: &self.doc_starts,
            origin: self.origin.as_deref(),
        }
    }
}

/// A minimal `tokenizer.json` (word-level) with ids `0..vocab_size`: `[EOD]` is 0, `[PAD]` 1.
pub fn tokenizer_json(vocab_size: u32) -> Vec<u8> {
    let mut vocab = serde_json::Map::new();
    for id in 0..vocab_size {
        let token = match id {
            0 => "[EOD]".to_string(),
            1 => "[PAD]".to_string(),
            _ => format!("t{id}"),
        };
        vocab.insert(token, id.into());
    }
    let added: Vec<serde_json::Value> = ["[EOD]", "[PAD]"]
        .iter()
        .enumerate()
        .map(|(id, content)| serde_json::json!({"id": id, "content": content, "special": true}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[PAD]"},
    }))
    .expect("tokenizer JSON")
}

/// Writes [`tokenizer_json`] into a corpus folder, where [`tokenizer_info`] says it is.
pub fn place_tokenizer(dir: &Path, vocab_size: u32) {
    fs::create_dir_all(dir).expect("corpus dir");
    fs::write(dir.join("tokenizer.json"), tokenizer_json(vocab_size)).expect("write tokenizer");
}

pub fn tokenizer_info(vocab_size: u32) -> TokenizerInfo {
    use sha2::Digest;
    TokenizerInfo {
        file: "tokenizer.json".into(),
        sha256: redpack_schemas::hex(&sha2::Sha256::digest(tokenizer_json(vocab_size))),
        vocab_size,
        eod_id: 0,
        pad_id: 1,
        eod_token: "[EOD]".into(),
        pad_token: "[PAD]".into(),
    }
}

/// Manifest content consistent with `examples`: one kept record per example, all tokens counted
/// as document tokens (no padding), per-source counts that add up.
pub fn info_for(vocab_size: u32, examples: &[Written]) -> CorpusInfo {
    let mut sources: BTreeMap<String, Counts> = BTreeMap::new();
    for ex in examples {
        let c = sources.entry(ex.source.clone()).or_default();
        c.records_read += 1;
        c.kept += 1;
        c.tokens += ex.tokens.len() as u64;
        c.examples += 1;
    }
    let mut counts = Counts::default();
    for c in sources.values() {
        counts.add(c);
    }
    CorpusInfo {
        tokenizer: tokenizer_info(vocab_size),
        build: serde_json::json!({"test": true}),
        inputs: vec![],
        counts,
        sources,
        packing: PackingStats {
            documents: examples.len() as u64,
            ..PackingStats::default()
        },
    }
}

/// Writes `examples` into `dir` and returns the manifest.
pub fn write_corpus(
    dir: &Path,
    layout: Layout,
    vocab_size: u32,
    max_shard_tokens: u64,
    examples: &[Written],
) -> Manifest {
    let options = WriterOptions {
        layout,
        vocab_size,
        max_shard_tokens,
    };
    let mut writer = CorpusWriter::create(dir, options).expect("create writer");
    place_tokenizer(dir, vocab_size);
    for ex in examples {
        writer.push(&ex.tokens, ex.meta()).expect("push example");
    }
    writer
        .finish(info_for(vocab_size, examples))
        .expect("finish corpus")
}

/// A small packed corpus (seq_len 8, prefix 4, vocab 1000) of `n` examples, 2 per shard.
pub fn small_packed(dir: &Path, n: u32) -> Vec<Written> {
    let examples: Vec<Written> = (0..n)
        .map(|i| Written {
            tokens: (0..8).map(|j| (i * 8 + j) % 1000).collect(),
            prefix_len: 4,
            source: if i % 2 == 0 { "arxiv" } else { "c4" }.into(),
            doc_starts: vec![3],
            origin: Some(format!("a.jsonl:{}", i + 1)),
        })
        .collect();
    let layout = Layout::Packed {
        seq_len: 8,
        prefix_len: 4,
    };
    write_corpus(dir, layout, 1000, 16, &examples);
    examples
}

pub fn load_manifest(dir: &Path) -> Manifest {
    Manifest::load(dir).expect("load manifest")
}

/// Writes `manifest` back as the writer would (pretty JSON, trailing newline).
pub fn save_manifest(dir: &Path, manifest: &Manifest) {
    let bytes = manifest.to_json_bytes().expect("serialize manifest");
    fs::write(dir.join(MANIFEST_FILE), bytes).expect("write manifest");
}

/// Applies `edit` to the manifest as a JSON value (for edits the typed struct cannot express).
pub fn edit_manifest_json(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(MANIFEST_FILE);
    let mut value: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("read manifest")).expect("parse manifest");
    edit(&mut value);
    fs::write(&path, serde_json::to_vec_pretty(&value).expect("serialize")).expect("write");
}

/// Records the current size and sha256 of shard `s`'s token and index files in the manifest, so a
/// deliberately edited file still passes the open-time checksum and reaches deeper checks.
pub fn reseal_shard(dir: &Path, s: usize) {
    let mut manifest = load_manifest(dir);
    let entry = &mut manifest.shards[s];
    let (bytes, sha) = hash_file(&dir.join(&entry.tokens_file)).expect("hash tokens");
    entry.tokens_bytes = bytes;
    entry.tokens_sha256 = sha;
    let (bytes, sha) = hash_file(&dir.join(&entry.index_file)).expect("hash index");
    entry.index_bytes = bytes;
    entry.index_sha256 = sha;
    save_manifest(dir, &manifest);
}

pub fn shard_path(dir: &Path, s: usize, tokens: bool) -> PathBuf {
    let manifest = load_manifest(dir);
    let entry = &manifest.shards[s];
    dir.join(if tokens {
        &entry.tokens_file
    } else {
        &entry.index_file
    })
}

/// Applies `edit` to bytes of a file in place.
pub fn edit_bytes(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("read file");
    edit(&mut bytes);
    fs::write(path, bytes).expect("write file");
}

/// The numeric index columns of one shard, editable, and written back as a new IPC file.
pub struct IndexEdit {
    pub offset: Vec<u64>,
    pub length: Vec<u32>,
    pub prefix_len: Vec<u32>,
}

/// Rewrites shard `s`'s index with `edit` applied to its numeric columns (other columns kept),
/// then reseals the shard so only the edited values are wrong.
pub fn rewrite_index(dir: &Path, s: usize, edit: impl FnOnce(&mut IndexEdit)) {
    let path = shard_path(dir, s, false);
    let file = fs::File::open(&path).expect("open index");
    let mut reader = arrow_ipc::reader::FileReader::try_new(file, None).expect("read index");
    let batch = reader.next().expect("one batch").expect("batch decodes");
    let u64s = |name: &str| -> Vec<u64> {
        batch
            .column_by_name(name)
            .expect(name)
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec()
    };
    let u32s = |name: &str| -> Vec<u32> {
        batch
            .column_by_name(name)
            .expect(name)
            .as_primitive::<UInt32Type>()
            .values()
            .to_vec()
    };
    let mut columns = IndexEdit {
        offset: u64s("offset"),
        length: u32s("length"),
        prefix_len: u32s("prefix_len"),
    };
    edit(&mut columns);
    let schema = batch.schema();
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    for (i, field) in schema.fields().iter().enumerate() {
        match field.name().as_str() {
            "offset" => arrays[i] = Arc::new(UInt64Array::from(columns.offset.clone())),
            "length" => arrays[i] = Arc::new(UInt32Array::from(columns.length.clone())),
            "prefix_len" => arrays[i] = Arc::new(UInt32Array::from(columns.prefix_len.clone())),
            _ => {}
        }
    }
    let batch = RecordBatch::try_new(schema.clone(), arrays).expect("rebuild batch");
    let mut bytes = Vec::new();
    {
        let mut writer =
            arrow_ipc::writer::FileWriter::try_new(&mut bytes, &schema).expect("ipc writer");
        writer.write(&batch).expect("write batch");
        writer.finish().expect("finish ipc");
    }
    fs::write(&path, bytes).expect("write index");
    reseal_shard(dir, s);
}

/// Every file of a directory with its bytes, sorted by name.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("dir entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read file"),
            )
        })
        .collect()
}
