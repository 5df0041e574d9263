//! `redpack train`, `eval` and `analyze-attention` when things go wrong, through the CLI: a
//! diverging run exits non-zero naming a good checkpoint, absurd numbers are refused with a
//! message (never an abort), a run directory is never replaced or resumed by mistake, and a
//! flipped byte in a checkpoint or a token file is an error naming the file.

use std::path::{Path, PathBuf};

use crate::common::{fails, ok};

fn recipe(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../trainer/configs")
        .join(name)
        .display()
        .to_string()
}

/// The built-in sample corpus; returns its packed corpus.
fn corpus(root: &Path) -> PathBuf {
    let out = root.join("corpus");
    ok(&["build-corpus", "--out", out.to_str().unwrap()]);
    out.join("packed")
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let config = recipe("decllm-tiny-pretrain.toml");
    let mut args: Vec<String> = [
        "train",
        "--config",
        &config,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `train` with batches of 2 sequences.
fn train2(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = train(data, out, extra);
    args.extend(["--batch".to_string(), "2".to_string()]);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_diverging_run_exits_non_zero_and_names_a_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    // At a learning rate of 1e3 the loss jumps from ln(vocab) to hundreds at step 2.
    let run = dir.path().join("run");
    let args = train(
        &data,
        &run,
        &["--steps", "12", "--lr", "1e3", "--checkpoint-every", "1"],
    );
    let err = fails(&strs(&args));
    assert!(err.contains("training stopped: step 2: the loss"), "{err}");
    assert!(err.contains("loss spike"), "{err}");
    assert!(
        err.contains("step-00000001 is marked unhealthy") && err.contains("No good checkpoint"),
        "{err}"
    );
    let meta =
        std::fs::read_to_string(run.join("checkpoints/step-00000001/checkpoint.json")).unwrap();
    assert!(meta.contains("\"healthy\": false"), "{meta}");
    // Nothing to resume from: --resume says so.
    let mut resume = args.clone();
    resume.push("--resume".into());
    let err = fails(&strs(&resume));
    assert!(err.contains("marked unhealthy"), "{err}");

    // Without the spike check the activations overflow: the loss turns NaN instead of settling
    // at ln(vocab) with a zero gradient.
    let run = dir.path().join("no-spike-check");
    let args = train(
        &data,
        &run,
        &[
            "--steps",
            "12",
            "--lr",
            "1e3",
            "--checkpoint-every",
            "1",
            "--spike-factor",
            "0",
        ],
    );
    let err = fails(&strs(&args));
    assert!(
        err.contains("is not finite") || err.contains("collapsed"),
        "{err}"
    );
    assert!(err.contains("The last good checkpoint is"), "{err}");

    // A healthy run's checkpoints say so.
    let run = dir.path().join("healthy");
    ok(&strs(&train2(&data, &run, &["--steps", "2"])));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/step-00000002/checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["health"]["healthy"], true);
    assert!(meta["health"]["loss"].as_f64().unwrap() > 0.0);
    assert_eq!(meta["model_sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn absurd_numbers_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let run = dir.path().join("run");
    for (flags, needle) in [
        (&["--batch", "16000000"][..], "GiB"),
        (&["--batch", "100000000"][..], "--batch"),
        (&["--d-model", "4000000000"][..], "GiB"),
        (
            &["--heads", "100000000", "--head-dim", "100000000"][..],
            "memory",
        ),
        (&["--layers", "1000000000000"][..], "GiB"),
        (&["--steps", "18446744073709551615"][..], "steps"),
        (&["--accum", "18446744073709551615"][..], "accum"),
        (
            &["--batch-tokens", "18446744073709551615"][..],
            "--batch-tokens",
        ),
        (&["--spike-factor", "1"][..], "--spike-factor"),
        (&["--threads", "5000"][..], "--threads"),
    ] {
        let mut args = train(&data, &run, flags);
        for (flag, value) in [("--steps", "1"), ("--batch", "2")] {
            if !flags.iter().any(|f| f.starts_with(flag)) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        let err = fails(&strs(&args));
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert!(!run.join("checkpoints").exists(), "{flags:?}");
    }
    ok(&strs(&train2(&data, &run, &["--steps", "1"])));
    for flags in [&["--batch", "0"][..], &["--batch", "100000"][..]] {
        let mut args = vec!["eval", "--checkpoint", run.to_str().unwrap()];
        args.extend(["--data", data.to_str().unwrap(), "--device", "cpu"]);
        args.extend(flags);
        let err = fails(&args);
        assert!(err.contains("--batch must be in [1, 4096]"), "{err}");
    }
}

#[test]
fn run_directories_are_never_replaced_or_resumed_by_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let run = dir.path().join("run");
    let err = fails(&strs(&train2(&data, &run, &["--steps", "2", "--resume"])));
    assert!(err.contains("no run here to continue"), "{err}");
    ok(&strs(&train2(&data, &run, &["--steps", "2"])));
    let model = run.join("checkpoints/step-00000002/model.safetensors");
    let before = std::fs::read(&model).unwrap();
    let err = fails(&strs(&train2(&data, &run, &["--steps", "2"])));
    assert!(err.contains("--overwrite"), "{err}");
    // Another corpus (the examples one would be refused by kind; a rebuilt packed one with
    // another sequence length is another corpus).
    let other = dir.path().join("other");
    ok(&[
        "build-corpus",
        "--input",
        dir.path()
            .join("corpus/raw/redpajama-data-1T")
            .to_str()
            .unwrap(),
        "--tokenizer",
        dir.path().join("corpus/tokenizer.json").to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
        "--seq-len",
        "64",
    ]);
    let err = fails(&strs(&train2(&other, &run, &["--steps", "3", "--resume"])));
    assert!(err.contains("manifest.json has sha256"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), before);
    ok(&strs(&train2(&data, &run, &["--steps", "3", "--resume"])));
    ok(&strs(&train2(
        &data,
        &run,
        &["--steps", "1", "--overwrite"],
    )));
    assert!(!model.exists());
    assert!(run.join("checkpoints/step-00000001").is_dir());
}

/// Flips the lowest bit of the byte `from_end` bytes before the end of `path`.
fn flip(path: &Path, from_end: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - from_end;
    bytes[at] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let run = dir.path().join("run");
    ok(&strs(&train2(&data, &run, &["--steps", "1"])));
    let ckpt = run.join("checkpoints/step-00000001");
    let model = ckpt.join("model.safetensors");
    flip(&model, 3);
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--checkpoint", run.to_str().unwrap()];
        args.extend(["--data", data.to_str().unwrap(), "--device", "cpu"]);
        args.extend(["--max-examples", "2"]);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let err = fails(&strs(&eval(&[])));
    assert!(
        err.contains(&model.display().to_string()) && err.contains("sha256"),
        "{err}"
    );
    let analyze = |extra: &[&str]| {
        let out = dir.path().join("analysis");
        let mut args = vec!["analyze-attention", "--checkpoint", run.to_str().unwrap()];
        args.extend(["--data", data.to_str().unwrap(), "--length", "16"]);
        args.extend(["--prefix-len", "8", "--rows", "1", "--out"]);
        args.push(out.to_str().unwrap());
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let err = fails(&strs(&analyze(&[])));
    assert!(err.contains(&model.display().to_string()), "{err}");
    let err = fails(&strs(&train2(&data, &run, &["--steps", "2", "--resume"])));
    assert!(err.contains(&model.display().to_string()), "{err}");
    ok(&strs(&eval(&["--no-verify"])));
    ok(&strs(&analyze(&["--no-verify"])));

    // Token files: the low bit of each shard's last token's low byte (u16 tokens).
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["token_dtype"], "u16");
    let shards = manifest["shards"].as_array().unwrap();
    for shard in shards {
        flip(&data.join(shard["tokens_file"].as_str().unwrap()), 2);
    }
    let fresh = dir.path().join("fresh");
    let err = fails(&strs(&train2(&data, &fresh, &["--steps", "1"])));
    assert!(
        err.contains(&data.display().to_string()) && err.contains(".tokens: sha256"),
        "{err}"
    );
    ok(&strs(&train2(
        &data,
        &fresh,
        &["--steps", "1", "--no-verify"],
    )));
}

#[test]
fn train_help_documents_the_health_policy_and_the_checks() {
    let help = ok(&["train", "--help"]);
    for needle in [
        "--spike-factor",
        "ln(vocab)",
        "--allow-zero-grad",
        "marked unhealthy",
        "--no-verify",
        "--overwrite",
        "--resume",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
