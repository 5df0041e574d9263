//! The fuzz targets: one per reader of untrusted bytes. Each writes a mutated case into a folder
//! (`prepare`) and runs the reader on it (`check`). The invariant is the same for all: the reader
//! returns `Ok` or a typed error; it never panics, aborts or hangs (the driver watches for those).

use std::path::Path;

use redpack::input::{self, Compression, FieldMap, FormatHint, InputFile, InputFormat};
use redpack_schemas::{Corpus, Manifest, MANIFEST_FILE};

use crate::mutate;
use crate::rng::Rng;
use crate::seeds::{self, FileSet, Seeds};

/// Whether the reader accepted the case (`Ok`) or refused it with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused,
}

impl<T, E> From<&Result<T, E>> for Verdict {
    fn from(r: &Result<T, E>) -> Verdict {
        if r.is_ok() {
            Verdict::Accepted
        } else {
            Verdict::Refused
        }
    }
}

type Prepare = fn(&mut Rng, &Seeds, &Path) -> std::io::Result<()>;
type Check = fn(&Seeds, &Path) -> Verdict;

pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    pub prepare: Prepare,
    pub check: Check,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "jsonl",
        about: "plain JSONL inputs (RedPajama and FLAN), format detection and discovery",
        prepare: prepare_jsonl,
        check: check_jsonl,
    },
    Target {
        name: "jsonl-gz",
        about: "gzipped JSONL inputs",
        prepare: prepare_gzip,
        check: check_gzip,
    },
    Target {
        name: "jsonl-zst",
        about: "zstd JSONL inputs",
        prepare: prepare_zstd,
        check: check_zstd,
    },
    Target {
        name: "parquet",
        about: "FLAN Parquet inputs",
        prepare: prepare_parquet,
        check: check_parquet,
    },
    Target {
        name: "tokens",
        about: "corpus token files (open, every example, verify, inspect summary)",
        prepare: prepare_tokens,
        check: check_corpus,
    },
    Target {
        name: "index",
        about: "corpus Arrow example indexes",
        prepare: prepare_index,
        check: check_corpus,
    },
    Target {
        name: "manifest",
        about: "corpus manifest.json",
        prepare: prepare_manifest,
        check: check_corpus,
    },
    Target {
        name: "checkpoint",
        about: "checkpoint.json and model.safetensors (the trainer's load_meta and load)",
        prepare: prepare_checkpoint,
        check: check_checkpoint,
    },
    Target {
        name: "tokenizer",
        about: "tokenizer.json (load, encode)",
        prepare: prepare_tokenizer,
        check: check_tokenizer,
    },
    Target {
        name: "data-manifest",
        about: "data manifests (load, resolve with checksums, fetch plan)",
        prepare: prepare_data_manifest,
        check: check_data_manifest,
    },
    Target {
        name: "pipeline",
        about: "pipeline files (load, resolve into build settings)",
        prepare: prepare_pipeline,
        check: check_pipeline,
    },
];

pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

// ---- inputs -------------------------------------------------------------------------------

/// A JSONL text mutated line-wise (one record's fields edited) or byte-wise.
fn mutate_jsonl(rng: &mut Rng, seeds: &Seeds) -> Vec<u8> {
    let pool: Vec<&Vec<u8>> = seeds
        .redpajama_jsonl
        .iter()
        .chain(&seeds.flan_jsonl)
        .collect();
    let mut data = rng.pick(&pool).to_vec();
    let other = rng.pick(&pool).to_vec();
    if rng.one_in(2) {
        let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        let at = rng.below(lines.len());
        if let Some(edited) = mutate::json(rng, &lines[at]) {
            lines[at] = edited;
        }
        if rng.one_in(4) {
            let extra = rng
                .pick(&[&b""[..], b"\r", b"   ", b"null", b"[]", b"{}"])
                .to_vec();
            lines.insert(rng.below(lines.len() + 1), extra);
        }
        data = lines.join(&b'\n');
        if rng.one_in(3) {
            mutate::bytes(rng, &mut data, &other);
        }
    } else {
        mutate::bytes(rng, &mut data, &other);
    }
    data
}

fn prepare_jsonl(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("input.jsonl"), mutate_jsonl(rng, seeds))
}

fn prepare_compressed(
    rng: &mut Rng,
    seeds: &Seeds,
    dir: &Path,
    name: &str,
    pool: &[Vec<u8>],
    compress: fn(&[u8]) -> Vec<u8>,
) -> std::io::Result<()> {
    let data = if rng.one_in(2) {
        compress(&mutate_jsonl(rng, seeds))
    } else {
        let mut data = rng.pick(pool).clone();
        let other = rng.pick(pool).clone();
        mutate::bytes(rng, &mut data, &other);
        data
    };
    std::fs::write(dir.join(name), data)
}

fn prepare_gzip(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    prepare_compressed(rng, seeds, dir, "input.jsonl.gz", &seeds.gzip, seeds::gzip)
}

fn prepare_zstd(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    prepare_compressed(rng, seeds, dir, "input.jsonl.zst", &seeds.zstd, seeds::zstd)
}

fn prepare_parquet(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    let mut data = rng.pick(&seeds.parquet).clone();
    // Most of a Parquet file's structure is in its footer: aim half the mutations there.
    if rng.one_in(2) && data.len() > 64 {
        let footer_start = data.len() - data.len().min(4096);
        let mut tail = data.split_off(footer_start);
        let mut body = std::mem::take(&mut data);
        let len = tail.len();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(len.saturating_sub(8));
            tail[at] ^= 1 << rng.below(8);
        }
        body.extend(tail);
        data = body;
    } else {
        let other = data.clone();
        mutate::bytes(rng, &mut data, &other);
    }
    std::fs::write(dir.join("part.parquet"), data)
}

/// Reads every item of `path` as each format in `formats`, then discovery and detection.
fn read_input(path: &Path, formats: &[InputFormat]) -> Verdict {
    let mut verdict = Verdict::Accepted;
    for &format in formats {
        for fields in [FieldMap::default(), FieldMap::flan_jsonl()] {
            let file = InputFile {
                path: path.to_path_buf(),
                display: "input".into(),
                source: "fuzz".into(),
                format,
                sha256: None,
            };
            match input::open(&file, &fields) {
                Ok(mut stream) => {
                    for item in stream.by_ref() {
                        std::hint::black_box(item);
                    }
                    if stream.fault().is_some() {
                        verdict = Verdict::Refused;
                    }
                    std::hint::black_box(stream.bytes_read());
                }
                Err(_) => verdict = Verdict::Refused,
            }
        }
    }
    let _ = std::hint::black_box(input::detect_format(path, FormatHint::Auto));
    let _ = std::hint::black_box(input::discover(&[path.to_path_buf()], FormatHint::Auto));
    verdict
}

fn check_jsonl(_: &Seeds, dir: &Path) -> Verdict {
    read_input(
        &dir.join("input.jsonl"),
        &[
            InputFormat::RedPajamaJsonl(Compression::None),
            InputFormat::FlanJsonl(Compression::None),
        ],
    )
}

fn check_gzip(_: &Seeds, dir: &Path) -> Verdict {
    read_input(
        &dir.join("input.jsonl.gz"),
        &[
            InputFormat::RedPajamaJsonl(Compression::Gzip),
            InputFormat::FlanJsonl(Compression::Gzip),
        ],
    )
}

fn check_zstd(_: &Seeds, dir: &Path) -> Verdict {
    read_input(
        &dir.join("input.jsonl.zst"),
        &[
            InputFormat::RedPajamaJsonl(Compression::Zstd),
            InputFormat::FlanJsonl(Compression::Zstd),
        ],
    )
}

fn check_parquet(_: &Seeds, dir: &Path) -> Verdict {
    read_input(&dir.join("part.parquet"), &[InputFormat::FlanParquet])
}

// ---- corpora ------------------------------------------------------------------------------

fn write_set(dir: &Path, files: &FileSet) -> std::io::Result<()> {
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

/// Writes a seed corpus with one of its files (chosen by `suffix`) mutated byte-wise. Usually
/// the manifest's size and sha256 of that file are then set to match, so the reader gets past
/// the checksum to the structure behind it.
fn prepare_corpus_file(
    rng: &mut Rng,
    seeds: &Seeds,
    dir: &Path,
    suffix: &str,
) -> std::io::Result<()> {
    let mut files = rng.pick(&seeds.corpora).clone();
    let candidates: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].0.ends_with(suffix))
        .collect();
    if candidates.is_empty() {
        return write_set(dir, &files);
    }
    let which = *rng.pick(&candidates);
    let other = files[*rng.pick(&candidates)].1.clone();
    mutate::bytes(rng, &mut files[which].1, &other);
    if !rng.one_in(4) {
        let (name, bytes) = files[which].clone();
        repair_manifest(&mut files, &name, &bytes);
    }
    write_set(dir, &files)
}

/// Sets the manifest's size and sha256 of `name` to those of `bytes`.
fn repair_manifest(files: &mut FileSet, name: &str, bytes: &[u8]) {
    let Some(slot) = files.iter_mut().find(|(n, _)| n == MANIFEST_FILE) else {
        return;
    };
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&slot.1) else {
        return;
    };
    let sha = {
        use sha2::Digest;
        redpack_schemas::hex(&sha2::Sha256::digest(bytes))
    };
    if let Some(shards) = doc.get_mut("shards").and_then(|s| s.as_array_mut()) {
        for shard in shards {
            for (file, size, sum) in [
                ("tokens_file", "tokens_bytes", "tokens_sha256"),
                ("index_file", "index_bytes", "index_sha256"),
            ] {
                if shard.get(file).and_then(|f| f.as_str()) == Some(name) {
                    shard[size] = serde_json::json!(bytes.len());
                    shard[sum] = serde_json::json!(sha);
                }
            }
        }
    }
    if let Ok(text) = serde_json::to_vec_pretty(&doc) {
        slot.1 = text;
    }
}

fn prepare_tokens(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    prepare_corpus_file(rng, seeds, dir, ".tokens")
}

fn prepare_index(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    prepare_corpus_file(rng, seeds, dir, ".index.arrow")
}

fn prepare_manifest(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    let mut files = rng.pick(&seeds.corpora).clone();
    if let Some(slot) = files.iter_mut().find(|(n, _)| n == MANIFEST_FILE) {
        if rng.one_in(4) {
            let other = slot.1.clone();
            mutate::bytes(rng, &mut slot.1, &other);
        } else if let Some(edited) = mutate::json(rng, &slot.1) {
            slot.1 = edited;
        }
    }
    write_set(dir, &files)
}

/// Everything train, eval and inspect do with a corpus before using its tokens.
fn check_corpus(_: &Seeds, dir: &Path) -> Verdict {
    let _ = std::hint::black_box(Manifest::load(dir));
    let corpus = match Corpus::open(dir) {
        Ok(c) => c,
        Err(_) => return Verdict::Refused,
    };
    let mut verdict = Verdict::Accepted;
    for i in 0..corpus.len().min(10_000) {
        match corpus.example(i) {
            Ok(ex) => {
                std::hint::black_box(ex.tokens.max());
            }
            Err(_) => verdict = Verdict::Refused,
        }
    }
    if corpus.verify(|_| {}).is_err() {
        verdict = Verdict::Refused;
    }
    if let Ok(summary) = redpack::inspect::Summary::of(&corpus) {
        let _ = summary.render(&mut std::io::sink());
    }
    verdict
}

// ---- checkpoints --------------------------------------------------------------------------

fn prepare_checkpoint(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    let mut files = rng.pick(&seeds.checkpoints).clone();
    let meta = files.iter().position(|(n, _)| n.ends_with(".json"));
    let model = files.iter().position(|(n, _)| n.ends_with(".safetensors"));
    match (rng.below(5), meta, model) {
        (0 | 1, Some(m), _) => {
            if let Some(edited) = mutate::json(rng, &files[m].1) {
                files[m].1 = edited;
            }
        }
        (2, Some(m), _) => {
            let other = files[m].1.clone();
            mutate::bytes(rng, &mut files[m].1, &other);
        }
        (3, _, Some(t)) => {
            // The safetensors header is JSON after its 8-byte length: edit one field of it.
            let bytes = &files[t].1;
            let n = bytes
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
                .unwrap_or(0);
            if let Some(header) = bytes.get(8..8 + n) {
                if let Some(edited) = mutate::json(rng, header) {
                    let mut out = (edited.len() as u64).to_le_bytes().to_vec();
                    out.extend(edited);
                    out.extend(&bytes[8 + n..]);
                    files[t].1 = out;
                }
            }
        }
        (_, _, Some(t)) => {
            let other = files[t].1.clone();
            mutate::bytes(rng, &mut files[t].1, &other);
        }
        _ => {}
    }
    write_set(dir, &files)
}

fn check_checkpoint(_: &Seeds, dir: &Path) -> Verdict {
    use redpack_trainer::checkpoint;
    let _ = std::hint::black_box(checkpoint::load_meta(dir));
    let loaded = checkpoint::load(dir, true);
    Verdict::from(&loaded)
}

// ---- tokenizer, data manifests, pipeline files --------------------------------------------

fn prepare_tokenizer(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    let mut data = seeds.tokenizer.clone();
    if rng.one_in(3) {
        let other = data.clone();
        mutate::bytes(rng, &mut data, &other);
    } else if let Some(edited) = mutate::json(rng, &data) {
        data = edited;
    }
    std::fs::write(dir.join("tokenizer.json"), data)
}

fn check_tokenizer(_: &Seeds, dir: &Path) -> Verdict {
    use redpack::tokenize::DocTokenizer;
    let loaded = DocTokenizer::from_file(&dir.join("tokenizer.json"), None, None);
    if let Ok(tok) = &loaded {
        let text = "The quick brown fox.\n  Ünïcödé [EOD] [PAD] \u{0} 1234567890 \t\r\n";
        let _ = std::hint::black_box(tok.encode(text));
        let _ = std::hint::black_box(tok.encode_batch(&[text, "", "x"]));
    }
    Verdict::from(&loaded)
}

fn mutate_toml(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = rng.pick(pool).clone();
    if rng.one_in(3) {
        let other = rng.pick(pool).clone();
        mutate::bytes(rng, &mut data, &other);
    } else if let Some(edited) = mutate::toml(rng, &data) {
        data = edited;
    }
    data
}

fn prepare_data_manifest(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("manifest.toml"),
        mutate_toml(rng, &seeds.data_manifests),
    )
}

fn check_data_manifest(seeds: &Seeds, dir: &Path) -> Verdict {
    use redpack::input::datamanifest::DataManifest;
    let manifest = match DataManifest::load(&dir.join("manifest.toml")) {
        Ok(m) => m,
        Err(_) => return Verdict::Refused,
    };
    let resolved = manifest.resolve(&seeds.fixtures, FormatHint::Auto, true);
    let _ = std::hint::black_box(redpack::fetch::plan::plan(&manifest, dir, &[]));
    Verdict::from(&resolved)
}

fn prepare_pipeline(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("pipeline.toml"),
        mutate_toml(rng, &seeds.pipelines),
    )
}

fn check_pipeline(_: &Seeds, dir: &Path) -> Verdict {
    use redpack::pipeline::{BuildSettings, Overrides, PipelineConfig};
    let config = match PipelineConfig::load(&dir.join("pipeline.toml")) {
        Ok(c) => c,
        Err(_) => return Verdict::Refused,
    };
    let overrides = Overrides {
        inputs: vec![dir.join("input.jsonl")],
        ..Overrides::default()
    };
    let settings = BuildSettings::resolve(config, overrides, dir.join("out"));
    if let Ok(s) = &settings {
        std::hint::black_box(s.recipe());
    }
    Verdict::from(&settings)
}
