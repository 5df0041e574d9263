//! `redpack export`: tiny checkpoints of both architectures (and DecLLM + BiAttn) as Hugging Face
//! model directories, checked against the checkpoint and against the CPU backend's
//! log-probabilities by `tests/python/check_hf_export.py` (numpy; also with transformers where
//! PyTorch is importable, and through the lm-evaluation-harness where that is); corpora as Megatron-LM indexed datasets, read back by the independent
//! reader `tests/python/read_megatron.py` and compared with the corpus's own tokens.

use std::path::{Path, PathBuf};
use std::process::Command;

use redpack_schemas::{
    Corpus, CorpusInfo, CorpusWriter, Counts, ExampleMeta, Layout, PackingStats, TokenizerInfo,
    WriterOptions,
};
use serde_json::Value;
use sha2::Digest;

use crate::common::{fails, json, ok, repo_path, sample_corpus, train_tiny};

const INSTALL_HINT: &str = "run `python3 -m pip install -r tests/python/requirements.txt` \
     (from the repository root) to install numpy";

fn script(name: &str) -> PathBuf {
    repo_path("tests/python").join(name)
}

/// Runs a Python script that must succeed; returns its stdout.
fn python(args: &[&Path]) -> String {
    let out = Command::new("python3")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 could not be started ({e}); {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 {args:?} failed:\n{stderr}\n(if numpy is missing: {INSTALL_HINT})"
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Whether PyTorch and transformers can be imported (the device script has them; CI does not).
fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the lm-evaluation-harness can be imported.
fn lm_eval_available() -> bool {
    Command::new("python3")
        .args(["-c", "import lm_eval, accelerate, torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Exports `run`, checks the directory against the checkpoint and the reference log-probs.
fn export_and_check(run: &Path, root: &Path, name: &str, corpus: &Path, torch: bool) -> Value {
    let out = root.join(format!("{name}-hf"));
    let reference = root.join(format!("{name}-reference.json"));
    let report = json(&[
        "export",
        "--checkpoint",
        s(run),
        "--format",
        "hf",
        "--out",
        s(&out),
        "--reference",
        s(&reference),
        "--json",
    ]);
    let checkpoint = PathBuf::from(report["checkpoint"].as_str().unwrap());
    let meta = read_json(&checkpoint.join("checkpoint.json"));
    let config = read_json(&out.join("config.json"));
    let model = &meta["model"];
    for (hf, ours) in [
        ("vocab_size", "vocab_size"),
        ("hidden_size", "d_model"),
        ("intermediate_size", "d_ffn"),
        ("num_attention_heads", "n_heads"),
        ("head_dim", "head_dim"),
        ("rope_theta", "rope_base"),
        ("rms_norm_eps", "norm_eps"),
        ("arch", "arch"),
    ] {
        assert_eq!(config[hf], model[ours], "{name}: config.json {hf}");
    }
    if model["arch"] == "red" {
        assert_eq!(config["num_encoder_layers"], model["encoder_layers"]);
        assert_eq!(config["num_decoder_layers"], model["decoder_layers"]);
        assert_eq!(config["is_encoder_decoder"], true);
        assert_eq!(config["attention_output_norm"], true);
    } else {
        assert_eq!(config["num_hidden_layers"], model["layers"]);
        assert_eq!(config["is_encoder_decoder"], false);
        assert_eq!(config["attention_output_norm"], false);
    }
    assert_eq!(config["eos_token_id"], meta["tokenizer"]["eod_id"]);
    assert_eq!(config["pad_token_id"], meta["tokenizer"]["pad_id"]);
    assert_eq!(config["redpack_step"], meta["step"]);
    let tokenizer = std::fs::read(out.join("tokenizer.json")).unwrap();
    assert_eq!(
        tokenizer,
        std::fs::read(corpus.join("tokenizer.json")).unwrap(),
        "{name}: tokenizer.json is the corpus's"
    );
    let stdout = python(&[&script("check_hf_export.py"), &out, &reference]);
    assert!(stdout.starts_with("ok: numpy"), "{stdout}");
    if torch {
        let stdout = python(&[
            &script("check_hf_export.py"),
            &out,
            &reference,
            "--torch".as_ref(),
        ]);
        assert!(stdout.contains("ok: transformers generate"), "{stdout}");
    }
    if torch && lm_eval_available() {
        let stdout = python(&[&script("check_lm_eval.py"), &out]);
        assert!(stdout.starts_with("ok: lm-evaluation-harness"), "{stdout}");
    }
    config
}

#[test]
fn hf_exports_reproduce_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = sample_corpus(root, Some(64));
    let packed = corpus.join("packed");
    let examples = corpus.join("examples");
    let torch = torch_available();
    if !torch {
        eprintln!("PyTorch or transformers not importable: the transformers check runs in scripts/gpu-check.sh");
    }

    let dec = root.join("dec");
    train_tiny("decllm-tiny-pretrain.toml", &packed, &dec, 3, &[]);
    let config = export_and_check(&dec, root, "dec", &packed, torch);
    assert_eq!(
        config["auto_map"]["AutoModelForCausalLM"],
        "modeling_redpack.RedpackForCausalLM"
    );
    assert_eq!(config["bidirectional_prefix"], false);

    let red = root.join("red");
    train_tiny("redllm-tiny-pretrain.toml", &packed, &red, 3, &[]);
    let config = export_and_check(&red, root, "red", &packed, torch);
    assert_eq!(
        config["auto_map"]["AutoModelForSeq2SeqLM"],
        "modeling_redpack.RedpackForSeq2SeqLM"
    );

    let biattn = root.join("biattn");
    train_tiny(
        "decllm-tiny-finetune.toml",
        &examples,
        &biattn,
        3,
        &["--bidirectional-prefix"],
    );
    let config = export_and_check(&biattn, root, "biattn", &examples, torch);
    assert_eq!(config["bidirectional_prefix"], true);
    // The bidirectional prefix changes the scores: the reference is not a causal model's.
    let reference = read_json(&root.join("biattn-reference.json"));
    assert_eq!(reference["bidirectional_prefix"], true);
    assert_eq!(reference["rows"][0]["first_target"], 9);

    // The check notices a misplaced tensor: the first layer's two norm gains swapped.
    let swapped = root.join("swapped-hf");
    std::fs::create_dir_all(&swapped).unwrap();
    for entry in std::fs::read_dir(root.join("dec-hf")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, swapped.join(path.file_name().unwrap())).unwrap();
    }
    swap_tensors(
        &swapped.join("model.safetensors"),
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    );
    let out = Command::new("python3")
        .arg(script("check_hf_export.py"))
        .arg(&swapped)
        .arg(root.join("dec-reference.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("differ from the reference"),
        "{stderr}"
    );

    // An existing directory is replaced only with --overwrite; the export is deterministic.
    let out = root.join("dec-hf");
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let err = fails(&[
        "export",
        "--checkpoint",
        s(&dec),
        "--format",
        "hf",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("--overwrite"), "{err}");
    ok(&[
        "export",
        "--checkpoint",
        s(&dec),
        "--format",
        "hf",
        "--out",
        s(&out),
        "--overwrite",
    ]);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    assert!(!root.join(".dec-hf.tmp").exists() && !root.join(".dec-hf.old").exists());

    // A tokenizer other than the training one is refused, naming the file.
    let other = root.join("other");
    let tokenizer = repo_path("tests/fixtures/tokenizers/gpt2.json");
    let redpajama = repo_path("tests/fixtures/redpajama");
    ok(&[
        "build-corpus",
        "--input",
        s(&redpajama),
        "--tokenizer",
        s(&tokenizer),
        "--out",
        s(&other),
    ]);
    let err = fails(&[
        "export",
        "--checkpoint",
        s(&dec),
        "--format",
        "hf",
        "--out",
        s(&root.join("mismatch")),
        "--tokenizer-corpus",
        s(&other),
    ]);
    assert!(err.contains("tokenizer") && err.contains("sha256"), "{err}");
    assert!(!root.join("mismatch").exists());
}

/// Swaps two tensors of a safetensors file by swapping their entries in its JSON header.
fn swap_tensors(path: &Path, a: &str, b: &str) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (ta, tb) = (header.remove(a).unwrap(), header.remove(b).unwrap());
    header.insert(a.to_string(), tb);
    header.insert(b.to_string(), ta);
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Every example's tokens, from the corpus reader.
fn corpus_tokens(dir: &Path) -> Vec<Vec<u32>> {
    let corpus = Corpus::open(dir).unwrap();
    (0..corpus.len())
        .map(|i| corpus.example(i).unwrap().tokens.to_vec())
        .collect()
}

#[test]
fn megatron_export_reads_back_as_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = sample_corpus(root, Some(64));
    for name in ["packed", "examples"] {
        let data = corpus.join(name);
        let prefix = root.join("megatron").join(name);
        let report = json(&[
            "export",
            "--corpus",
            s(&data),
            "--format",
            "megatron",
            "--out",
            s(&prefix),
            "--json",
        ]);
        let want = corpus_tokens(&data);
        assert_eq!(report["sequences"], want.len());
        assert_eq!(report["dtype"], "uint16");
        let read: Value =
            serde_json::from_str(&python(&[&script("read_megatron.py"), &prefix])).unwrap();
        assert_eq!(read["dtype"], "uint16");
        let got: Vec<Vec<u32>> = serde_json::from_value(read["sequences"].clone()).unwrap();
        assert_eq!(got, want, "{name}: the sequences are the corpus's examples");
        let docs: Vec<u64> = serde_json::from_value(read["document_indices"].clone()).unwrap();
        assert_eq!(docs, (0..=want.len() as u64).collect::<Vec<_>>());

        // Deterministic: a second export writes the same bytes.
        let idx = std::fs::read(prefix.with_extension("idx")).unwrap();
        let bin = std::fs::read(prefix.with_extension("bin")).unwrap();
        let again = root.join("again").join(name);
        ok(&[
            "export",
            "--corpus",
            s(&data),
            "--format",
            "megatron",
            "--out",
            s(&again),
        ]);
        assert_eq!(std::fs::read(again.with_extension("idx")).unwrap(), idx);
        assert_eq!(std::fs::read(again.with_extension("bin")).unwrap(), bin);
        assert!(!root
            .join("megatron")
            .join(format!(".{name}.bin.tmp"))
            .exists());
    }

    // A broken index is refused by the reader with the reason.
    let prefix = root.join("megatron").join("packed");
    let idx = prefix.with_extension("idx");
    let mut bytes = std::fs::read(&idx).unwrap();
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&idx, bytes).unwrap();
    let out = Command::new("python3")
        .arg(script("read_megatron.py"))
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the header implies"));

    // Usage errors: a corpus export needs --corpus, and not --checkpoint.
    let err = fails(&["export", "--format", "megatron", "--out", s(&prefix)]);
    assert!(err.contains("--corpus"), "{err}");
    let err = fails(&["export", "--format", "hf", "--out", s(&root.join("x"))]);
    assert!(err.contains("--checkpoint"), "{err}");
    let err = fails(&[
        "export",
        "--corpus",
        s(&root.join("missing")),
        "--format",
        "megatron",
        "--out",
        s(&prefix),
    ]);
    assert!(err.contains("missing"), "{err}");
}

/// A corpus whose vocabulary needs 32-bit ids (70,000 word-level tokens): three packed rows of 8
/// tokens with ids above 65,535.
fn write_u32_corpus(dir: &Path) -> Vec<Vec<u32>> {
    const VOCAB: u32 = 70_000;
    let vocab: serde_json::Map<String, Value> = (0..VOCAB)
        .map(|id| {
            let token = match id {
                0 => "[EOD]".to_string(),
                1 => "[PAD]".to_string(),
                _ => format!("t{id}"),
            };
            (token, Value::from(id))
        })
        .collect();
    let tokenizer = serde_json::to_vec(&serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "[EOD]", "special": true},
            {"id": 1, "content": "[PAD]", "special": true},
        ],
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[PAD]"},
    }))
    .unwrap();
    let layout = Layout::Packed {
        seq_len: 8,
        prefix_len: 4,
    };
    let options = WriterOptions {
        layout,
        vocab_size: VOCAB,
        max_shard_tokens: 1 << 20,
    };
    let mut writer = CorpusWriter::create(dir, options).unwrap();
    std::fs::write(dir.join("tokenizer.json"), &tokenizer).unwrap();
    let rows: Vec<Vec<u32>> = (0..3u32)
        .map(|i| (0..8).map(|j| 65_530 + i * 1000 + j).collect())
        .collect();
    for row in &rows {
        let meta = ExampleMeta {
            source: "c4",
            prefix_len: 4,
            doc_starts: &[],
            origin: None,
        };
        writer.push(row, meta).unwrap();
    }
    let counts = Counts {
        records_read: 3,
        kept: 3,
        tokens: 24,
        examples: 3,
        ..Counts::default()
    };
    let info = CorpusInfo {
        tokenizer: TokenizerInfo {
            file: "tokenizer.json".into(),
            sha256: redpack_schemas::hex(&sha2::Sha256::digest(&tokenizer)),
            vocab_size: VOCAB,
            eod_id: 0,
            pad_id: 1,
            eod_token: "[EOD]".into(),
            pad_token: "[PAD]".into(),
        },
        build: serde_json::json!({"test": true}),
        inputs: vec![],
        counts: counts.clone(),
        sources: [("c4".to_string(), counts)].into_iter().collect(),
        packing: PackingStats {
            documents: 3,
            ..PackingStats::default()
        },
    };
    writer.finish(info).unwrap();
    rows
}

#[test]
fn megatron_export_of_a_large_vocabulary_is_int32() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let want = write_u32_corpus(&corpus);
    assert_eq!(corpus_tokens(&corpus), want);
    let prefix = dir.path().join("wide");
    let report = json(&[
        "export",
        "--corpus",
        s(&corpus),
        "--format",
        "megatron",
        "--out",
        s(&prefix),
        "--json",
    ]);
    assert_eq!(report["dtype"], "int32");
    assert_eq!(report["tokens"], 24);
    let read: Value =
        serde_json::from_str(&python(&[&script("read_megatron.py"), &prefix])).unwrap();
    assert_eq!(read["dtype"], "int32");
    let got: Vec<Vec<u32>> = serde_json::from_value(read["sequences"].clone()).unwrap();
    assert_eq!(got, want);
    assert_eq!(
        std::fs::metadata(prefix.with_extension("bin"))
            .unwrap()
            .len(),
        24 * 4
    );
}
