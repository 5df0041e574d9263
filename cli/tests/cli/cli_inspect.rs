//! `redpack inspect` run as a user runs it: the built binary on corpora written in a temporary
//! directory with the real GPT-2 tokenizer.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use redpack_schemas::{
    hash_file, CorpusInfo, CorpusWriter, Counts, ExampleMeta, InputEntry, Layout, PackingStats,
    TokenizerInfo, WriterOptions,
};

const BIN: &str = env!("CARGO_BIN_EXE_redpack");
const GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt2.json"
);
const EOD: u32 = 50256;
const SEQ_LEN: u32 = 32;
const PREFIX_LEN: u32 = 16;

const DOCUMENTS: [(&str, &str); 6] = [
    ("wikipedia", "The quick brown fox jumps over the lazy dog near the quiet river bank."),
    ("book", "It was a bright cold day in April, and the clocks were striking thirteen."),
    ("wikipedia", "Photosynthesis converts light energy into chemical energy stored in glucose molecules inside plant cells."),
    ("book", "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about a little."),
    ("wikipedia", "The Rhine flows from the Swiss Alps through Germany and the Netherlands to the North Sea."),
    ("book", "All happy families are alike; each unhappy family is unhappy in its own way, wrote the novelist."),
];

fn inspect(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("inspect")
        .args(args)
        .output()
        .expect("run redpack")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tokenizer_info(dir: &Path) -> TokenizerInfo {
    let copy = dir.join("tokenizer.json");
    fs::copy(GPT2, &copy).expect("copy gpt2.json (tests/fixtures/tokenizers)");
    let (_, sha256) = hash_file(&copy).unwrap();
    TokenizerInfo {
        file: "tokenizer.json".into(),
        sha256,
        vocab_size: 50257,
        eod_id: EOD,
        pad_id: EOD,
        eod_token: "<|endoftext|>".into(),
        pad_token: "<|endoftext|>".into(),
    }
}

/// A packed corpus of the documents above (each followed by EOD), cut into 32-token sequences
/// split at 16, two sequences per shard, the final partial sequence dropped. Returns the
/// sequences as written.
fn packed_corpus(dir: &Path) -> Vec<Vec<u32>> {
    let tokenizer = tokenizers::Tokenizer::from_file(GPT2).expect("load gpt2.json");
    // The token stream with, for every token, the document it came from.
    let mut stream: Vec<(u32, usize)> = Vec::new();
    for (d, (_, doc)) in DOCUMENTS.iter().enumerate() {
        let ids = tokenizer
            .encode(*doc, false)
            .expect("encode")
            .get_ids()
            .to_vec();
        stream.extend(ids.into_iter().chain([EOD]).map(|id| (id, d)));
    }
    let options = WriterOptions {
        layout: Layout::Packed {
            seq_len: SEQ_LEN,
            prefix_len: PREFIX_LEN,
        },
        vocab_size: 50257,
        max_shard_tokens: 2 * u64::from(SEQ_LEN),
    };
    let mut writer = CorpusWriter::create(dir, options).unwrap();
    let mut sources: BTreeMap<String, Counts> = BTreeMap::new();
    let mut written = Vec::new();
    let full = stream.len() / SEQ_LEN as usize;
    for (n, chunk) in stream.chunks_exact(SEQ_LEN as usize).enumerate() {
        let ids: Vec<u32> = chunk.iter().map(|&(id, _)| id).collect();
        let doc_starts: Vec<u32> = (1..chunk.len())
            .filter(|&i| chunk[i].1 != chunk[i - 1].1)
            .map(|i| i as u32)
            .collect();
        let source = DOCUMENTS[chunk[0].1].0;
        let origin = format!("sample.jsonl:{}", chunk[0].1 + 1);
        let meta = ExampleMeta {
            source,
            prefix_len: PREFIX_LEN,
            doc_starts: &doc_starts,
            origin: Some(&origin),
        };
        writer.push(&ids, meta).unwrap();
        sources.entry(source.into()).or_default().examples += 1;
        for &(_, d) in chunk {
            sources.entry(DOCUMENTS[d].0.into()).or_default().tokens += 1;
        }
        written.push(ids);
        assert!(n < full);
    }
    for (source, _) in DOCUMENTS {
        let c = sources.entry(source.into()).or_default();
        c.records_read += 1;
        c.kept += 1;
    }
    let book = sources.entry("book".into()).or_default();
    book.records_read += 1;
    book.rejected += 1;
    book.rejected_by_reason.insert("empty_text".into(), 1);
    let mut counts = Counts::default();
    sources.values().for_each(|c| counts.add(c));
    let dropped = (stream.len() % SEQ_LEN as usize) as u64;
    let info = CorpusInfo {
        tokenizer: tokenizer_info(dir),
        build: serde_json::json!({"pack": {"seq_len": SEQ_LEN}}),
        inputs: vec![InputEntry {
            path: "sample.jsonl".into(),
            source: "mixed".into(),
            format: "redpajama-jsonl".into(),
            bytes: 1234,
            sha256: None,
            records_read: 7,
            fault: Some("line 8: unterminated string; read up to byte 1234".into()),
        }],
        counts,
        sources,
        packing: PackingStats {
            documents: DOCUMENTS.len() as u64,
            dropped_tokens: dropped,
            dropped_sequences: u64::from(dropped > 0),
            ..PackingStats::default()
        },
    };
    writer.finish(info).unwrap();
    written
}

fn corpus_dir() -> (tempfile::TempDir, PathBuf, Vec<Vec<u32>>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("corpus");
    let written = packed_corpus(&dir);
    (tmp, dir, written)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn summary_shows_kind_counts_sources_and_histograms() {
    let (_tmp, dir, written) = corpus_dir();
    let out = inspect(&[s(&dir)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("kind       packed: 32-token sequences split at 16"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("examples   {}", written.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains("tokenizer  tokenizer.json sha256"),
        "{stdout}"
    );
    assert!(stdout.contains("vocab 50,257"), "{stdout}");
    assert!(stdout.contains("  book"), "{stdout}");
    assert!(stdout.contains("  wikipedia"), "{stdout}");
    assert!(stdout.contains("empty_text"), "{stdout}");
    assert!(stdout.contains("example length (tokens)"), "{stdout}");
    assert!(stdout.contains("prefix length"), "{stdout}");
    assert!(stdout.contains("1 with faults"), "{stdout}");
    assert!(stdout.contains("unterminated string"), "{stdout}");
}

#[test]
fn json_summary_parses_and_carries_the_manifest_counts() {
    let (_tmp, dir, written) = corpus_dir();
    let out = inspect(&[s(&dir), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["kind"], "packed");
    assert_eq!(json["examples"], written.len() as u64);
    assert_eq!(json["counts"]["examples"], written.len() as u64);
    assert_eq!(json["counts"]["records_read"], 7);
    assert_eq!(json["counts"]["rejected_by_reason"]["empty_text"], 1);
    assert_eq!(json["sources"]["book"]["rejected"], 1);
    assert_eq!(
        json["tokens_stored"],
        (written.len() * SEQ_LEN as usize) as u64
    );
    assert_eq!(json["length"]["min"], SEQ_LEN);
    assert_eq!(json["prefix_length"]["max"], PREFIX_LEN);
}

#[test]
fn show_decodes_text_and_marks_the_prefix_and_documents() {
    let (_tmp, dir, written) = corpus_dir();
    let out = inspect(&[s(&dir), "--show", "0..2"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("═══ example 0 │ shard 0 row 0 │ source wikipedia │ origin sample.jsonl:1"),
        "{stdout}"
    );
    assert!(stdout.contains("═══ example 1"), "{stdout}");
    assert!(!stdout.contains("═══ example 2"), "{stdout}");
    assert!(stdout.contains("The quick brown fox"), "{stdout}");
    assert!(
        stdout.contains("──── prefix ends (16 tokens) ────"),
        "{stdout}"
    );
    assert!(stdout.contains("⟦doc⟧It was a bright cold day"), "{stdout}");
    assert!(
        stdout.contains("<|endoftext|>⟦doc⟧Photosynthesis"),
        "{stdout}"
    );
    assert!(written.len() > 2);
}

#[test]
fn raw_prints_token_ids() {
    let (_tmp, dir, written) = corpus_dir();
    let out = inspect(&[s(&dir), "--show", "1", "--raw"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let prefix: Vec<String> = written[1][..PREFIX_LEN as usize]
        .iter()
        .map(u32::to_string)
        .collect();
    let ids: Vec<String> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("────"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(ids, prefix, "{stdout}");
}

#[test]
fn show_out_of_range_fails_clearly() {
    let (_tmp, dir, written) = corpus_dir();
    let out = inspect(&[s(&dir), "--show", &written.len().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("out of range"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn verify_passes_on_a_good_corpus_and_names_the_bad_shard() {
    let (_tmp, dir, written) = corpus_dir();
    let out = inspect(&[s(&dir), "--verify"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shards = written.len().div_ceil(2);
    assert!(
        stdout.contains(&format!(
            "verified: {shards} shards, {} examples, {} tokens, all checksums and invariants hold",
            written.len(),
            written.len() * SEQ_LEN as usize
        )),
        "{stdout}"
    );

    // Flip one token byte in the second shard: sizes agree, only the checksum can tell.
    let path = dir.join("shard-00001.tokens");
    let mut bytes = fs::read(&path).unwrap();
    bytes[40] ^= 0x04;
    fs::write(&path, bytes).unwrap();
    let out = inspect(&[s(&dir), "--verify"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("shard 1 of"), "{stderr}");
    assert!(stderr.contains("shard-00001.tokens"), "{stderr}");
    assert!(stderr.contains("sha256"), "{stderr}");
    assert!(out.stdout.is_empty());

    // A tokenizer that is not the one the ids came from is caught too.
    let (_tmp, dir, _) = corpus_dir();
    fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    let out = inspect(&[s(&dir), "--verify"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tokenizer.json: sha256"), "{stderr}");
}

/// A one-shard corpus of `n` sequences of arbitrary ids, for output volume rather than content.
fn large_corpus(dir: &Path, n: u32) {
    let options = WriterOptions {
        layout: Layout::Packed {
            seq_len: SEQ_LEN,
            prefix_len: PREFIX_LEN,
        },
        vocab_size: 50257,
        max_shard_tokens: u64::MAX,
    };
    let mut writer = CorpusWriter::create(dir, options).unwrap();
    for i in 0..n {
        let ids: Vec<u32> = (0..SEQ_LEN)
            .map(|j| 10_000 + (i * 31 + j * 7) % 40_000)
            .collect();
        let meta = ExampleMeta {
            source: "c4",
            prefix_len: PREFIX_LEN,
            doc_starts: &[],
            origin: None,
        };
        writer.push(&ids, meta).unwrap();
    }
    let counts = Counts {
        records_read: u64::from(n),
        kept: u64::from(n),
        tokens: u64::from(n * SEQ_LEN),
        examples: u64::from(n),
        ..Counts::default()
    };
    let info = CorpusInfo {
        tokenizer: tokenizer_info(dir),
        build: serde_json::json!({}),
        inputs: vec![],
        counts,
        sources: BTreeMap::new(),
        packing: PackingStats::default(),
    };
    writer.finish(info).unwrap();
}

#[test]
fn a_closed_pipe_exits_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("large");
    // About 1 MB of ids: far more than a pipe buffer holds, so the writer must hit the closed
    // pipe while output is still pending.
    large_corpus(&dir, 6000);
    let mut child = Command::new(BIN)
        .args(["inspect", s(&dir), "--show", "0..", "--raw"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let stdout = child.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert!(first.starts_with("═══ example 0"), "{first}");
    // The reader is dropped here: the pipe is closed with output still pending.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn a_directory_without_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = inspect(&[s(tmp.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("manifest.json is missing"), "{stderr}");
    assert!(stderr.contains(s(tmp.path())), "{stderr}");
}

#[test]
fn examples_summary_reports_truncation_and_target_lengths() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("flan");
    let options = WriterOptions {
        layout: Layout::Examples {
            max_input_len: 8,
            max_target_len: 4,
        },
        vocab_size: 50257,
        max_shard_tokens: 1000,
    };
    let mut writer = CorpusWriter::create(&dir, options).unwrap();
    let lengths = [(8u32, 4u32), (3, 2), (5, 1), (8, 3)];
    for (input, target) in lengths {
        let ids: Vec<u32> = (0..input + target).map(|i| 100 + i).collect();
        let meta = ExampleMeta {
            source: "cot",
            prefix_len: input,
            doc_starts: &[],
            origin: Some("cot.jsonl.gz:1"),
        };
        writer.push(&ids, meta).unwrap();
    }
    let tokens: u32 = lengths.iter().map(|(i, t)| i + t).sum();
    let counts = Counts {
        records_read: 4,
        kept: 4,
        tokens: u64::from(tokens),
        examples: 4,
        ..Counts::default()
    };
    let info = CorpusInfo {
        tokenizer: tokenizer_info(&dir),
        build: serde_json::json!({}),
        inputs: vec![],
        counts,
        sources: BTreeMap::new(),
        packing: PackingStats {
            documents: 4,
            truncated_inputs: 2,
            truncated_targets: 1,
            ..PackingStats::default()
        },
    };
    writer.finish(info).unwrap();
    let out = inspect(&[s(&dir)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("kind       examples: input ≤ 8 tokens, then target ≤ 4"),
        "{stdout}"
    );
    assert!(
        stdout.contains("truncation 2 inputs (50.00%) and 1 targets (25.00%)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target length (tokens after the split)"),
        "{stdout}"
    );
    let out = inspect(&[s(&dir), "--verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
