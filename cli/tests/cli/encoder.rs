//! `build-corpus` names the encoder it tokenizes with: the fast encoder for the fixture
//! tokenizers, the `tokenizers` crate (and why) for a file the fast encoder does not support.

use std::process::Command;

const ARXIV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/redpajama/arxiv/arxiv_sample.jsonl"
);
const GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt2.json"
);

fn build_stdout(tokenizer: &str, out: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_redpack"))
        .args([
            "build-corpus",
            "--input",
            ARXIV,
            "--tokenizer",
            tokenizer,
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn build_corpus_names_its_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = build_stdout(GPT2, &dir.path().join("fast"));
    assert!(
        stdout.contains("encoder: fast byte-level BPE (GPT-2 split pattern)\n"),
        "{stdout}"
    );
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(GPT2).unwrap()).unwrap();
    json["normalizer"] = serde_json::json!({"type": "Lowercase"});
    let lowercase = dir.path().join("lowercase.json");
    std::fs::write(&lowercase, serde_json::to_vec(&json).unwrap()).unwrap();
    let stdout = build_stdout(lowercase.to_str().unwrap(), &dir.path().join("crate"));
    assert!(
        stdout.contains(
            "encoder: tokenizers crate (the fast encoder does not support: normalizer Lowercase)\n"
        ),
        "{stdout}"
    );
}
