//! The cross-language check: `tests/python/read_corpus.py` reads a written corpus with
//! `numpy.memmap` and `pyarrow.ipc.open_file` only, and must see exactly what was written.
//!
//! Missing Python or modules fail the test (CI installs them); a silent skip would let the format
//! drift away from what Python readers can load.

use std::path::Path;
use std::process::Command;

use redpack_schemas::*;
use serde_json::Value;

use crate::harness::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/python/read_corpus.py"
);
const INSTALL_HINT: &str = "run `python3 -m pip install -r tests/python/requirements.txt` \
     (from the repository root) to install numpy and pyarrow";

fn python_ready() {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, pyarrow.ipc"])
        .output();
    match probe {
        Err(e) => {
            panic!("python3 could not be started ({e}); install Python 3, then {INSTALL_HINT}")
        }
        Ok(out) if !out.status.success() => panic!(
            "python3 lacks numpy or pyarrow: {}\n{INSTALL_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => {}
    }
}

fn read_with_python(dir: &Path) -> Value {
    python_ready();
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(dir)
        .output()
        .expect("run read_corpus.py");
    assert!(
        out.status.success(),
        "read_corpus.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("read_corpus.py prints JSON")
}

/// Checks Python's view of `dir` against the examples that were written into it.
fn compare(dir: &Path, manifest: &Manifest, written: &[Written]) {
    let seen = read_with_python(dir);
    assert_eq!(seen["kind"], manifest.kind.name());
    assert_eq!(seen["token_dtype"], manifest.token_dtype.name());
    assert_eq!(seen["header_bytes"], HEADER_BYTES as u64);
    assert_eq!(
        seen["counts"],
        serde_json::to_value(&manifest.counts).unwrap()
    );
    let shards = seen["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), manifest.shards.len());
    let mut examples = Vec::new();
    for (shard, entry) in shards.iter().zip(&manifest.shards) {
        assert_eq!(shard["tokens_file"], entry.tokens_file.as_str());
        assert_eq!(shard["header"]["version"], 1);
        assert_eq!(
            shard["header"]["width"],
            manifest.token_dtype.width() as u64
        );
        assert_eq!(shard["header"]["tokens"], entry.tokens);
        assert_eq!(shard["header"]["reserved_zero"], true);
        assert_eq!(shard["index_format_version"], "1");
        assert_eq!(shard["sha256_ok"], true, "{}", entry.tokens_file);
        let types = &shard["index_types"];
        assert_eq!(types["offset"], "uint64");
        assert_eq!(types["length"], "uint32");
        assert_eq!(types["prefix_len"], "uint32");
        assert_eq!(
            types["source"],
            "dictionary<values=string, indices=int32, ordered=0>"
        );
        assert_eq!(types["origin"], "string");
        // Offsets are in tokens from the start of the shard's token data, back to back.
        let mut next = 0u64;
        let offsets = shard["columns"]["offset"].as_array().unwrap();
        let lengths = shard["columns"]["length"].as_array().unwrap();
        for (offset, length) in offsets.iter().zip(lengths) {
            assert_eq!(offset.as_u64(), Some(next));
            next += length.as_u64().unwrap();
        }
        assert_eq!(next, entry.tokens);
        examples.extend(shard["examples"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(examples.len(), written.len());
    for (i, (got, want)) in examples.iter().zip(written).enumerate() {
        let tokens: Vec<u32> = serde_json::from_value(got["tokens"].clone()).unwrap();
        assert_eq!(tokens, want.tokens, "example {i}");
        assert_eq!(got["prefix_len"], want.prefix_len, "example {i}");
        assert_eq!(got["source"], want.source.as_str(), "example {i}");
        let starts: Vec<u32> = serde_json::from_value(got["doc_starts"].clone()).unwrap();
        assert_eq!(starts, want.doc_starts, "example {i}");
        assert_eq!(
            got["origin"].as_str(),
            want.origin.as_deref(),
            "example {i}"
        );
    }
}

/// Examples with ids near the top of `vocab`, a few sources, some documents starts and origins.
fn examples(n: u32, vocab: u32, packed: Option<(u32, u32)>) -> Vec<Written> {
    let mut rng = Rng::new(u64::from(vocab) ^ u64::from(n));
    (0..n)
        .map(|i| {
            let (len, prefix_len) = packed.unwrap_or_else(|| {
                let input = rng.range(1, 12) as u32;
                (input + rng.range(1, 5) as u32, input)
            });
            Written {
                tokens: (0..len)
                    .map(|_| (vocab - 1) - rng.range(0, 300) as u32)
                    .collect(),
                prefix_len,
                source: ["wikipedia", "stackexchange", "book"][i as usize % 3].into(),
                doc_starts: (1..len).filter(|_| rng.chance(1, 6)).collect(),
                origin: (i % 4 != 0).then(|| format!("in/{i}.jsonl:{}", i * 3 + 1)),
            }
        })
        .collect()
}

#[test]
fn python_reads_a_packed_u16_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let written = examples(23, 65_536, Some((16, 8)));
    let layout = Layout::Packed {
        seq_len: 16,
        prefix_len: 8,
    };
    let manifest = write_corpus(dir.path(), layout, 65_536, 100, &written);
    assert_eq!(manifest.token_dtype, TokenDtype::U16);
    assert!(manifest.shards.len() > 1, "the test wants several shards");
    compare(dir.path(), &manifest, &written);
}

#[test]
fn python_reads_an_examples_u32_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let written = examples(31, 100_000, None);
    let layout = Layout::Examples {
        max_input_len: 12,
        max_target_len: 5,
    };
    let manifest = write_corpus(dir.path(), layout, 100_000, 64, &written);
    assert_eq!(manifest.token_dtype, TokenDtype::U32);
    assert!(manifest.shards.len() > 1, "the test wants several shards");
    compare(dir.path(), &manifest, &written);
}
