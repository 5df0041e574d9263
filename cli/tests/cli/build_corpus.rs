//! End-to-end tests of `redpack build-corpus`: real RedPajama / FLAN samples and real tokenizers
//! from `tests/fixtures`, and the generated sample corpus with planted duplicates and malformed
//! records.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use redpack::dedup::{DedupConfig, Deduper, Verdict};
use redpack::input::{self, FieldMap, FormatHint};
use redpack::pack::FinalPartial;
use redpack::pipeline::config::{FormatChoice, PackConfig};
use redpack::pipeline::{
    build, BuildError, BuildOptions, BuildReport, BuildSettings, Overrides, PipelineConfig,
};
use redpack::record::{Item, RejectReason};
use redpack::sample::{self, PlantKind};
use redpack_schemas::{Corpus, Manifest};

const ARXIV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/redpajama/arxiv/arxiv_sample.jsonl"
);
const CC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/redpajama/common_crawl/2020-16/en_head_0091.json.gz.dedup.classifier.jsonl.zst"
);
const FLAN_JSONL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/flan/cot_zs_opt_train.jsonl.gz"
);
const FLAN_PARQUET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/flan/cot_zsopt_data/part.0.parquet"
);
const GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt2.json"
);
const NEOX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt-neox-20b.json"
);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Settings for a build of `inputs` into `out` with `tokenizer`; `tweak` edits the pipeline.
fn settings(
    inputs: &[&str],
    out: &Path,
    tokenizer: &str,
    tweak: impl FnOnce(&mut PipelineConfig, &mut Overrides),
) -> BuildSettings {
    let mut config = PipelineConfig::default();
    let mut overrides = Overrides {
        inputs: inputs.iter().map(PathBuf::from).collect(),
        tokenizer: Some(PathBuf::from(tokenizer)),
        ..Overrides::default()
    };
    tweak(&mut config, &mut overrides);
    BuildSettings::resolve(config, overrides, out.to_path_buf()).expect("settings")
}

fn run(settings: &BuildSettings) -> BuildReport {
    build(settings, &BuildOptions::default()).unwrap_or_else(|e| panic!("build failed: {e}"))
}

/// Every token of a corpus, examples in order.
fn all_tokens(dir: &Path) -> Vec<Vec<u32>> {
    let corpus = Corpus::open(dir).expect("open corpus");
    (0..corpus.len())
        .map(|i| corpus.example(i).expect("example").tokens.iter().collect())
        .collect()
}

fn check_counts(manifest: &Manifest) {
    manifest
        .counts
        .check_invariant()
        .expect("overall invariant");
    for (name, counts) in &manifest.sources {
        counts
            .check_invariant()
            .unwrap_or_else(|e| panic!("source {name}: {e}"));
    }
    let tokens: u64 = manifest.sources.values().map(|c| c.tokens).sum();
    assert_eq!(tokens, manifest.counts.tokens);
}

/// The texts of a RedPajama JSONL file (plain or zstd), read independently of redpack.
fn texts(path: &str) -> Vec<String> {
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut raw)
        .unwrap();
    if path.ends_with(".zst") {
        raw = zstd::decode_all(&raw[..]).unwrap();
    }
    String::from_utf8(raw)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

fn reference_tokenizer(path: &str) -> tokenizers::Tokenizer {
    let mut tokenizer = tokenizers::Tokenizer::from_file(path).unwrap();
    tokenizer.set_encode_special_tokens(true);
    tokenizer
}

/// The first `n` records of the real arXiv sample, as `dir/arxiv/arxiv_head.jsonl` (keeps the
/// slow reference encodings of the fidelity tests short).
fn arxiv_head(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("arxiv").join("arxiv_head.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(ARXIV).unwrap();
    let head: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, head).unwrap();
    path
}

/// With dedup and shuffle off, the token stream is each document's encoding (by the
/// `tokenizers` crate, called directly) plus the EOD id, in input order, then padding.
fn check_fidelity(tokenizer_path: &str, eod_token: &str) {
    let data = tempdir();
    let arxiv = arxiv_head(data.path(), 6);
    let dir = tempdir();
    let settings = settings(
        &[arxiv.to_str().unwrap(), CC],
        dir.path(),
        tokenizer_path,
        |config, overrides| {
            overrides.no_dedup = true;
            overrides.seq_len = Some(512);
            config.tokenizer.chunk_bytes = 4096;
            config.pack = PackConfig::Packed {
                seq_len: 2048,
                prefix_len: None,
                final_partial: FinalPartial::Pad,
            };
        },
    );
    let report = run(&settings);
    let reference = reference_tokenizer(tokenizer_path);
    let eod = reference.token_to_id(eod_token).unwrap();
    assert_eq!(report.tokenizer.eod_id, eod);
    let mut expected = Vec::new();
    for text in texts(arxiv.to_str().unwrap()).into_iter().chain(texts(CC)) {
        expected.extend_from_slice(reference.encode(text.as_str(), false).unwrap().get_ids());
        expected.push(eod);
    }
    let stream: Vec<u32> = all_tokens(dir.path()).concat();
    assert_eq!(stream.len() % 512, 0);
    assert_eq!(&stream[..expected.len()], &expected[..], "{tokenizer_path}");
    assert!(stream[expected.len()..]
        .iter()
        .all(|&t| t == report.tokenizer.pad_id));
    let manifest = Manifest::load(dir.path()).unwrap();
    check_counts(&manifest);
    assert_eq!(manifest.counts.records_read, 26);
    assert_eq!(manifest.counts.kept, 26);
    assert_eq!(manifest.counts.tokens, expected.len() as u64);
    assert_eq!(manifest.sources["arxiv"].records_read, 6);
    assert_eq!(manifest.sources["common_crawl"].records_read, 20);
}

#[test]
fn token_stream_equals_documents_plus_eod_gpt2() {
    check_fidelity(GPT2, "<|endoftext|>");
}

#[test]
fn token_stream_equals_documents_plus_eod_neox() {
    check_fidelity(NEOX, "<|endoftext|>");
}

#[test]
fn packed_sequences_split_and_record_boundaries() {
    let dir = tempdir();
    let settings = settings(&[CC], dir.path(), GPT2, |_, overrides| {
        overrides.seq_len = Some(128);
        overrides.prefix_len = Some(100);
    });
    let report = run(&settings);
    let corpus = Corpus::open(dir.path()).unwrap();
    let mut starts = 0;
    for i in 0..corpus.len() {
        let example = corpus.example(i).unwrap();
        assert_eq!(example.tokens.len(), 128);
        assert_eq!(example.prefix_len, 100);
        for &start in example.doc_starts {
            assert_eq!(example.tokens.get(start as usize - 1), Some(50256));
        }
        starts += example.doc_starts.len();
    }
    assert!(starts > 0);
    assert_eq!(report.packing.dropped_sequences, 1);
    assert!(report.packing.dropped_tokens > 0 && report.packing.dropped_tokens < 128);
    check_counts(&Manifest::load(dir.path()).unwrap());
}

#[test]
fn flan_examples_from_parquet_and_jsonl() {
    let dir = tempdir();
    let settings = settings(
        &[FLAN_PARQUET, FLAN_JSONL],
        dir.path(),
        GPT2,
        |config, overrides| {
            config.pack = PackConfig::Examples {
                max_input_len: 64,
                max_target_len: 16,
            };
            config.dedup.near = false;
            overrides.format = Some(FormatChoice::Flan);
        },
    );
    let report = run(&settings);
    let manifest = Manifest::load(dir.path()).unwrap();
    check_counts(&manifest);
    assert_eq!(manifest.counts.records_read, 800);
    assert_eq!(manifest.counts.examples, manifest.counts.kept);
    assert!(report.packing.truncated_inputs > 0);
    // The first JSONL record, checked against an independent encoding.
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(FLAN_JSONL).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let reference = reference_tokenizer(GPT2);
    let input = reference
        .encode(first["inputs"].as_str().unwrap(), false)
        .unwrap();
    let target = reference
        .encode(first["targets"].as_str().unwrap(), false)
        .unwrap();
    let mut expected: Vec<u32> = input.get_ids().iter().take(64).copied().collect();
    let prefix = expected.len() as u32;
    let mut target: Vec<u32> = target.get_ids().to_vec();
    target.push(50256);
    expected.extend(target.into_iter().take(16));
    let corpus = Corpus::open(dir.path()).unwrap();
    let found = (0..corpus.len())
        .map(|i| corpus.example(i).unwrap())
        .find(|e| {
            e.origin
                .is_some_and(|o| o.ends_with("cot_zs_opt_train.jsonl.gz:1"))
        })
        .expect("first JSONL record is kept");
    assert_eq!(found.tokens.iter().collect::<Vec<_>>(), expected);
    assert_eq!(found.prefix_len, prefix);
}

fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn output_is_identical_for_one_and_two_threads() {
    let sample_dir = tempdir();
    sample::write_sample(sample_dir.path(), 7).unwrap();
    let rp = sample_dir.path().join(sample::REDPAJAMA_ROOT);
    let mut outputs = Vec::new();
    for threads in [1, 2] {
        let out = tempdir();
        let settings = settings(
            &[rp.to_str().unwrap(), CC],
            out.path(),
            GPT2,
            |config, overrides| {
                overrides.threads = Some(threads);
                overrides.shuffle_seed = Some(11);
                overrides.seq_len = Some(64);
                config.output.max_shard_tokens = 20_000;
                config.output.max_rejected_fraction = 1.0;
                config.tokenizer.chunk_bytes = 2048;
            },
        );
        let report = run(&settings);
        assert!(report.shards > 1);
        outputs.push((out, dir_files(&settings.out)));
    }
    assert_eq!(
        outputs[0].1.keys().collect::<Vec<_>>(),
        outputs[1].1.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &outputs[0].1 {
        assert!(
            &outputs[1].1[name] == bytes,
            "{name} differs between 1 and 2 threads"
        );
    }
}

#[test]
fn sample_duplicates_rejects_and_faults_are_counted() {
    let sample_dir = tempdir();
    let planted = sample::write_sample(sample_dir.path(), 3).unwrap();
    let out = tempdir();
    let settings = settings(
        &[sample_dir.path().to_str().unwrap()],
        out.path(),
        GPT2,
        |config, _| {
            config.output.max_rejected_fraction = 1.0;
            config.output.rejects_per_reason = 1;
        },
    );
    let report = run(&settings);
    let manifest = Manifest::load(out.path()).unwrap();
    check_counts(&manifest);
    let counts = &manifest.counts;
    assert_eq!(
        counts.records_read,
        planted.documents + planted.examples + planted.total_rejects()
    );
    let expected_rejects: BTreeMap<String, u64> = planted
        .rejects
        .iter()
        .map(|(reason, n)| (reason.as_str().to_string(), *n))
        .collect();
    assert_eq!(counts.rejected_by_reason, expected_rejects);
    assert_eq!(report.faults.len() as u64, planted.truncated_files());
    assert_eq!(
        counts.exact_duplicates,
        planted.exact_duplicates() + planted.planted_count(PlantKind::FlanPair)
    );
    // Near dedup is checked on the RedPajama part (FLAN templates legitimately overlap).
    let flan_sources: HashSet<&str> = manifest
        .inputs
        .iter()
        .filter(|i| i.format.contains("flan"))
        .map(|i| i.source.as_str())
        .collect();
    let found: u64 = manifest
        .sources
        .iter()
        .filter(|(name, _)| !flan_sources.contains(name.as_str()))
        .map(|(_, c)| c.near_duplicates)
        .sum();
    let near = planted.planted_count(PlantKind::Near);
    assert!(found as f64 >= 0.9 * near as f64, "{found} of {near}");
    assert!(found <= near, "{found} > planted {near}");
    assert!(counts.filtered >= planted.empty_documents);
    let rejects = std::fs::read_to_string(out.path().join("rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), expected_rejects.len());
}

#[test]
fn near_dedup_finds_planted_copies_and_nothing_else() {
    let sample_dir = tempdir();
    let planted = sample::write_sample(sample_dir.path(), 5).unwrap();
    let files = input::discover(
        &[sample_dir.path().join(sample::REDPAJAMA_ROOT)],
        FormatHint::RedPajama,
    )
    .unwrap();
    let mut deduper = Deduper::new(DedupConfig::default());
    let mut scratch = String::new();
    let mut flagged = HashSet::new();
    for file in &files {
        for item in input::open(file, &FieldMap::default()).unwrap() {
            let Item::Record(record) = item else { continue };
            let keys = deduper.keys(&record.content, &mut scratch);
            if deduper.decide(&keys) == Verdict::NearDuplicate {
                flagged.insert((record.place.file.to_string(), record.place.line));
            }
        }
    }
    let near: Vec<_> = planted
        .planted
        .iter()
        .filter(|p| p.kind == PlantKind::Near)
        .collect();
    assert!(near.iter().all(|p| p.jaccard >= 0.8));
    let found = near
        .iter()
        .filter(|p| {
            flagged
                .iter()
                .any(|(file, line)| p.copy.file.ends_with(file.as_str()) && *line == p.copy.line)
        })
        .count();
    assert!(
        found as f64 >= 0.9 * near.len() as f64,
        "found {found} of {}",
        near.len()
    );
    for (file, line) in &flagged {
        assert!(
            near.iter()
                .any(|p| p.copy.file.ends_with(file.as_str()) && *line == p.copy.line),
            "{file}:{line} merged but is not a planted near copy"
        );
    }
}

/// The token stream checked by an independent client: Python's `tokenizers` and numpy.
#[test]
fn python_tokenizers_agree_with_the_corpus() {
    let data = tempdir();
    let arxiv = arxiv_head(data.path(), 4);
    let dir = tempdir();
    let settings = settings(
        &[arxiv.to_str().unwrap()],
        dir.path(),
        NEOX,
        |config, overrides| {
            overrides.no_dedup = true;
            overrides.seq_len = Some(1024);
            config.pack = PackConfig::Packed {
                seq_len: 1024,
                prefix_len: None,
                final_partial: FinalPartial::Pad,
            };
        },
    );
    run(&settings);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/check_tokens.py"
    );
    let output = Command::new("python3")
        .args([
            script,
            dir.path().to_str().unwrap(),
            NEOX,
            arxiv.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs (CI installs numpy and tokenizers)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check_tokens.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("ok: 4 documents"), "{stdout}");
}

/// A file with one malformed line of each kind between good ones, and a zstd file cut short.
fn write_malformed(dir: &Path) -> (PathBuf, PathBuf) {
    let jsonl = dir.join("c4").join("c4-train.00000-of-01024.jsonl");
    std::fs::create_dir_all(jsonl.parent().unwrap()).unwrap();
    let good = |i: usize| {
        format!("{{\"text\": \"good document number {i} with a few words\", \"meta\": {{}}}}\n")
    };
    let mut bytes = Vec::new();
    for (i, bad) in [
        &b"{\"text\": \"unterminated\n"[..],
        b"{\"text\": \"bad \xff utf8\"}\n",
        b"{\"meta\": {}}\n",
        b"{\"text\": 42}\n",
        b"[1, 2, 3]\n",
        b"{\"text\": \"   \"}\n",
    ]
    .iter()
    .enumerate()
    {
        bytes.extend(good(i).as_bytes());
        bytes.extend(*bad);
    }
    bytes.extend(good(99).as_bytes());
    std::fs::write(&jsonl, bytes).unwrap();

    let zst = dir
        .join("common_crawl")
        .join("2019-30")
        .join("en_head_0000.json.gz.dedup.classifier.jsonl.zst");
    std::fs::create_dir_all(zst.parent().unwrap()).unwrap();
    // Enough text for several zstd blocks, so that records before the cut can be decoded.
    let lines: String = (0..4000)
        .map(|i| {
            format!(
                "{{\"text\": \"crawl page {i} about topic {} and item {}\", \"source\": \"cc\"}}\n",
                i * 7919 % 1000,
                i * 104_729 % 997
            )
        })
        .collect();
    let compressed = zstd::encode_all(lines.as_bytes(), 3).unwrap();
    std::fs::write(&zst, &compressed[..compressed.len() * 2 / 3]).unwrap();
    (jsonl, zst)
}

#[test]
fn malformed_records_are_counted_and_neighbours_kept() {
    let data = tempdir();
    let (jsonl, zst) = write_malformed(data.path());
    let out = tempdir();
    let settings = settings(
        &[jsonl.to_str().unwrap(), zst.to_str().unwrap()],
        out.path(),
        GPT2,
        |config, _| {
            config.output.max_rejected_fraction = 1.0;
        },
    );
    let report = run(&settings);
    let manifest = Manifest::load(out.path()).unwrap();
    check_counts(&manifest);
    let c4 = &manifest.sources["c4"];
    assert_eq!(c4.records_read, 13);
    assert_eq!(c4.kept, 7, "every good neighbour is kept");
    assert_eq!(c4.filtered, 1, "the blank document");
    let reasons: Vec<&str> = c4.rejected_by_reason.keys().map(String::as_str).collect();
    assert_eq!(
        reasons,
        [
            RejectReason::InvalidJson.as_str(),
            RejectReason::InvalidUtf8.as_str(),
            RejectReason::MissingField.as_str(),
            RejectReason::NonStringField.as_str(),
            RejectReason::NotAnObject.as_str(),
        ]
    );
    let cc = &manifest.sources["common_crawl"];
    assert!(
        cc.kept > 0 && cc.records_read < 4000,
        "records before the cut are kept: {} of {}",
        cc.kept,
        cc.records_read
    );
    assert_eq!(report.faults.len(), 1);
    assert!(
        report.faults[0].contains("en_head_0000"),
        "{}",
        report.faults[0]
    );
    let entry = manifest
        .inputs
        .iter()
        .find(|i| i.source == "common_crawl")
        .unwrap();
    assert!(entry.fault.is_some());
    let rejects = std::fs::read_to_string(out.path().join("rejects.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!(first["reason"], "invalid_json");
    assert_eq!(first["line"], 2);
    assert!(first["file"]
        .as_str()
        .unwrap()
        .ends_with("c4-train.00000-of-01024.jsonl"));
}

#[test]
fn too_many_rejects_fail_the_build_without_a_manifest() {
    let data = tempdir();
    let (jsonl, _) = write_malformed(data.path());
    let out = tempdir();
    let settings = settings(
        &[jsonl.to_str().unwrap()],
        out.path(),
        GPT2,
        |_, overrides| {
            overrides.max_rejected_fraction = Some(0.1);
        },
    );
    let err = build(&settings, &BuildOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::TooManyRejects {
                rejected: 5,
                read: 13,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--max-rejected-fraction"), "{err}");
    assert!(!out.path().join("manifest.json").exists());
    assert!(out.path().join("rejects.jsonl").exists());
}

fn redpack() -> Command {
    Command::new(env!("CARGO_BIN_EXE_redpack"))
}

#[test]
fn cli_default_build_makes_both_corpora() {
    let out = tempdir();
    let output = redpack()
        .args([
            "build-corpus",
            "--json",
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["packed"]["kind"], "packed");
    assert_eq!(report["examples"]["kind"], "examples");
    for kind in ["packed", "examples"] {
        let manifest = Manifest::load(&out.path().join(kind)).unwrap();
        check_counts(&manifest);
        assert!(manifest.counts.examples > 10, "{kind}");
        assert_eq!(manifest.tokenizer.eod_token, "[EOD]");
    }
    assert!(out.path().join("tokenizer.json").exists());
}

#[test]
fn cli_requires_out_and_reports_bad_flags() {
    let output = redpack()
        .args(["build-corpus", "--input", ARXIV])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--out"));
    let out = tempdir();
    let output = redpack()
        .args([
            "build-corpus",
            "--input",
            ARXIV,
            "--tokenizer",
            GPT2,
            "--seq-len",
            "8",
            "--prefix-len",
            "9",
        ])
        .args(["--out", out.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("prefix_len"));
}

#[test]
fn cli_train_tokenizer_writes_a_usable_tokenizer() {
    let out = tempdir();
    let path = out.path().join("tok.json");
    let output = redpack()
        .args([
            "train-tokenizer",
            "--input",
            FLAN_JSONL,
            "--vocab-size",
            "600",
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tokenizer = tokenizers::Tokenizer::from_file(&path).unwrap();
    assert_eq!(tokenizer.token_to_id("[EOD]"), Some(0));
    assert!(tokenizer.get_vocab_size(true) <= 600);
}

#[test]
fn data_manifest_inputs_are_verified_and_read() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let manifest_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data-manifests/sample.toml");
    let out = tempdir();
    let good = settings(&[], out.path(), GPT2, |config, overrides| {
        overrides.data_manifest = Some(PathBuf::from(manifest_path));
        overrides.data_root = Some(PathBuf::from(root));
        config.dedup.near = false;
    });
    run(&good);
    let manifest = Manifest::load(out.path()).unwrap();
    check_counts(&manifest);
    assert_eq!(manifest.inputs.len(), 4);
    assert_eq!(manifest.counts.records_read, 20 + 20 + 400 + 400);
    // The verified checksums travel into the corpus manifest's provenance.
    for input in &manifest.inputs {
        let sha = input.sha256.as_deref().unwrap_or_default();
        let actual = redpack_schemas::hash_file(&Path::new(root).join(&input.path))
            .unwrap()
            .1;
        assert_eq!(sha, actual, "{}", input.path);
    }

    // A copy of the tree with one byte changed fails before anything is built.
    let copy = tempdir();
    for entry in [
        "redpajama/arxiv/arxiv_sample.jsonl",
        "redpajama/common_crawl/2020-16/en_head_0091.json.gz.dedup.classifier.jsonl.zst",
        "flan/cot_zs_opt_train.jsonl.gz",
        "flan/cot_zsopt_data/part.0.parquet",
    ] {
        let to = copy.path().join(entry);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(root).join(entry), &to).unwrap();
    }
    let arxiv = copy.path().join("redpajama/arxiv/arxiv_sample.jsonl");
    let mut bytes = std::fs::read(&arxiv).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&arxiv, bytes).unwrap();
    let out = tempdir();
    let bad = settings(&[], out.path(), GPT2, |_, overrides| {
        overrides.data_manifest = Some(PathBuf::from(manifest_path));
        overrides.data_root = Some(copy.path().to_path_buf());
    });
    let err = build(&bad, &BuildOptions::default()).unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    assert!(!out.path().join("manifest.json").exists());
}

#[test]
fn shuffle_reorders_documents_and_keeps_every_one() {
    let mut streams = Vec::new();
    for seed in [None, Some(3)] {
        let out = tempdir();
        let settings = settings(&[CC], out.path(), GPT2, |config, overrides| {
            overrides.no_dedup = true;
            overrides.shuffle_seed = seed;
            config.pack = PackConfig::Packed {
                seq_len: 64,
                prefix_len: None,
                final_partial: FinalPartial::Pad,
            };
        });
        run(&settings);
        let stream: Vec<u32> = all_tokens(out.path()).concat();
        let mut docs: Vec<Vec<u32>> = stream
            .split_inclusive(|&t| t == 50256)
            .map(<[u32]>::to_vec)
            // Padding is the EOD id in GPT-2: skip the one-token "documents" it makes.
            .filter(|d| d.len() > 1 && d.last() == Some(&50256))
            .collect();
        let order = docs.clone();
        docs.sort();
        streams.push((order, docs));
    }
    assert_eq!(streams[0].0.len(), 20);
    assert_ne!(streams[0].0, streams[1].0, "the seed reorders documents");
    assert_eq!(streams[0].1, streams[1].1, "the same documents either way");
}
