//! The starting points of every target: the real-format fixtures of `tests/fixtures`, cut to a
//! few small records, and files in the corpus and checkpoint formats written by the library's
//! own writers. Built once per process.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use redpack::train_tokenizer::{self, TrainConfig};
use redpack_schemas::{
    CorpusInfo, CorpusWriter, Counts, ExampleMeta, Layout, PackingStats, TokenizerInfo,
    WriterOptions,
};
use redpack_trainer::checkpoint;
use redpack_trainer::config::ModelConfig;
use redpack_trainer::params::ParamStore;
use serde_json::json;

use crate::rng::Rng;

/// A set of files that form one input (a corpus directory, a checkpoint directory).
pub type FileSet = Vec<(String, Vec<u8>)>;

pub struct Seeds {
    /// The repository's `tests/fixtures`, the root the data manifests resolve against.
    pub fixtures: PathBuf,
    /// RedPajama JSONL (plain), a few records each with the text cut short.
    pub redpajama_jsonl: Vec<Vec<u8>>,
    /// FLAN JSONL (plain).
    pub flan_jsonl: Vec<Vec<u8>>,
    /// The fixtures as shipped, compressed.
    pub gzip: Vec<Vec<u8>>,
    pub zstd: Vec<Vec<u8>>,
    pub parquet: Vec<Vec<u8>>,
    /// A small trained byte-level BPE `tokenizer.json`.
    pub tokenizer: Vec<u8>,
    /// A packed and an examples corpus, several shards each.
    pub corpora: Vec<FileSet>,
    /// A DecLLM and a RedLLM checkpoint directory (`checkpoint.json`, `model.safetensors`).
    pub checkpoints: Vec<FileSet>,
    /// `data-manifests/*.toml`.
    pub data_manifests: Vec<Vec<u8>>,
    /// `pipelines/*.toml`.
    pub pipelines: Vec<Vec<u8>>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The first `records` lines of a JSONL text with every string cut to `keep` characters.
fn shorten(text: &[u8], records: usize, keep: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .take(records)
    {
        let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(line) else {
            continue;
        };
        for value in map.values_mut() {
            if let serde_json::Value::String(s) = value {
                *s = s.chars().take(keep).collect();
            }
        }
        out.extend(serde_json::to_vec(&map).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap_or_default()
}

impl Seeds {
    pub fn build(scratch: &Path) -> Result<Seeds, String> {
        let root = repo_root();
        let fixtures = root.join("tests/fixtures");
        let arxiv = read(&fixtures.join("redpajama/arxiv/arxiv_sample.jsonl"))?;
        let cc_path = fixtures
            .join("redpajama/common_crawl/2020-16/en_head_0091.json.gz.dedup.classifier.jsonl.zst");
        let cc_zst = read(&cc_path)?;
        let cc = zstd::decode_all(cc_zst.as_slice()).map_err(|e| e.to_string())?;
        let flan_gz = read(&fixtures.join("flan/cot_zs_opt_train.jsonl.gz"))?;
        let mut flan = Vec::new();
        flate2::read::MultiGzDecoder::new(flan_gz.as_slice())
            .read_to_end(&mut flan)
            .map_err(|e| e.to_string())?;
        let parquet = read(&fixtures.join("flan/cot_zsopt_data/part.0.parquet"))?;

        let redpajama_jsonl = vec![shorten(&arxiv, 4, 300), shorten(&cc, 6, 200)];
        let flan_jsonl = vec![shorten(&flan, 8, 200)];
        let gzip_seeds = vec![flan_gz, gzip(&redpajama_jsonl[0]), gzip(&flan_jsonl[0])];
        let zstd_seeds = vec![zstd(&redpajama_jsonl[1]), zstd(&flan_jsonl[0])];

        let text = String::from_utf8_lossy(&cc).into_owned();
        let config = TrainConfig {
            vocab_size: 300,
            min_frequency: 2,
            max_bytes: 1 << 20,
            ..TrainConfig::default()
        };
        let trained = train_tokenizer::train_bpe(text.lines().take(50), &config)
            .map_err(|e| e.to_string())?;
        let tokenizer = train_tokenizer::to_json(&trained)
            .map_err(|e| e.to_string())?
            .into_bytes();

        let corpora = vec![
            corpus(
                &scratch.join("packed"),
                &tokenizer,
                Layout::Packed {
                    seq_len: 16,
                    prefix_len: 8,
                },
            )?,
            corpus(
                &scratch.join("examples"),
                &tokenizer,
                Layout::Examples {
                    max_input_len: 12,
                    max_target_len: 6,
                },
            )?,
        ];
        let checkpoints = vec![
            checkpoint_files(&scratch.join("run-dec"), "dec")?,
            checkpoint_files(&scratch.join("run-red"), "red")?,
        ];
        let mut data_manifests = Vec::new();
        let mut pipelines = Vec::new();
        for (dir, out) in [
            ("data-manifests", &mut data_manifests),
            ("pipelines", &mut pipelines),
        ] {
            let mut names: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                .map_err(|e| format!("{dir}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            names.sort();
            for name in names {
                out.push(read(&name)?);
            }
        }
        Ok(Seeds {
            fixtures,
            redpajama_jsonl,
            flan_jsonl,
            gzip: gzip_seeds,
            zstd: zstd_seeds,
            parquet: vec![parquet],
            tokenizer,
            corpora,
            checkpoints,
            data_manifests,
            pipelines,
        })
    }
}

fn read_set(dir: &Path) -> Result<FileSet, String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

/// A small valid corpus: random ids, several shards, counts that satisfy every invariant.
fn corpus(dir: &Path, tokenizer: &[u8], layout: Layout) -> Result<FileSet, String> {
    let err = |e: redpack_schemas::SchemaError| e.to_string();
    let loaded = redpack::tokenize::DocTokenizer::from_bytes(
        Path::new("tokenizer.json"),
        tokenizer.to_vec(),
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    let vocab_size = loaded.vocab_size();
    let mut writer = CorpusWriter::create(
        dir,
        WriterOptions {
            layout,
            vocab_size,
            max_shard_tokens: 40,
        },
    )
    .map_err(err)?;
    let mut rng = Rng::new(7);
    let mut tokens = 0u64;
    let examples = 7u64;
    for i in 0..examples {
        let (len, prefix) = match layout {
            Layout::Packed {
                seq_len,
                prefix_len,
            } => (seq_len as usize, prefix_len),
            Layout::Examples { .. } => (3 + rng.below(14), 1 + rng.below(3) as u32),
        };
        let ids: Vec<u32> = (0..len)
            .map(|_| rng.below(vocab_size as usize) as u32)
            .collect();
        let starts: Vec<u32> = if len > 5 { vec![5] } else { Vec::new() };
        let origin = format!("input.jsonl:{}", i + 1);
        writer
            .push(
                &ids,
                ExampleMeta {
                    source: if i % 2 == 0 { "arxiv" } else { "github" },
                    prefix_len: prefix,
                    doc_starts: &starts,
                    origin: Some(&origin),
                },
            )
            .map_err(err)?;
        tokens += len as u64;
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer).map_err(|e| e.to_string())?;
    let counts = Counts {
        records_read: examples,
        kept: examples,
        tokens,
        examples,
        ..Counts::default()
    };
    let info = CorpusInfo {
        tokenizer: TokenizerInfo {
            file: "tokenizer.json".into(),
            sha256: redpack_schemas::hex(&sha256(tokenizer)),
            vocab_size,
            eod_id: loaded.eod_id(),
            pad_id: loaded.pad_id(),
            eod_token: loaded.eod_token().into(),
            pad_token: loaded.pad_token().into(),
        },
        build: json!({ "seed": 1 }),
        inputs: Vec::new(),
        counts: counts.clone(),
        sources: [("arxiv".to_string(), counts)].into_iter().collect(),
        packing: PackingStats::default(),
    };
    writer.finish(info).map_err(err)?;
    read_set(dir)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// A tiny checkpoint written by the trainer's own `checkpoint::save`.
fn checkpoint_files(run_dir: &Path, arch: &str) -> Result<FileSet, String> {
    let (layers, enc, dec) = if arch == "dec" { (1, 0, 0) } else { (0, 1, 1) };
    let model: ModelConfig = serde_json::from_value(json!({
        "arch": arch, "vocab_size": 40, "d_model": 8, "d_ffn": 16, "n_heads": 2,
        "head_dim": 4, "layers": layers, "encoder_layers": enc, "decoder_layers": dec,
        "rope_base": 10000.0, "norm_eps": 1e-6
    }))
    .map_err(|e| e.to_string())?;
    let params = ParamStore::init(&model, 1);
    let meta: checkpoint::CheckpointMeta = serde_json::from_value(json!({
        "format": checkpoint::FORMAT_NAME,
        "format_version": checkpoint::FORMAT_VERSION,
        "step": 3,
        "model": model,
        "optimizer": redpack_trainer::optim::adafactor::AdafactorConfig::default(),
        "cursor": { "epoch": 0, "position": 12 },
        "rng": { "seed": 1 },
        "tokenizer": { "sha256": "00", "vocab_size": 40, "eod_id": 0, "pad_id": 1 },
        "tokens_seen": 96,
        "flops_seen": 1.0e6,
        "settings": { "lr": 0.01 },
    }))
    .map_err(|e| e.to_string())?;
    let moments: Vec<(String, redpack_trainer::params::Tensor)> = params
        .iter()
        .take(2)
        .map(|(name, t)| (format!("optimizer.{name}.v"), t.clone()))
        .collect();
    let dir = checkpoint::save(run_dir, &meta, &params, &moments).map_err(|e| e.to_string())?;
    read_set(&dir)
}
