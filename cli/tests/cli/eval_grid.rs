//! `redpack eval` over (length, prefix) pairs through the CLI, on a tiny RedLLM trained on the
//! built-in sample: the `--json` report's documented keys, the positions file, the text table,
//! a single `--prefix-len` keeping the single report, and bad grids failing with the limit.

use std::path::Path;

use crate::common::{fails, ok};

#[test]
fn eval_over_lengths_and_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = root.join("corpus");
    ok(&[
        "build-corpus",
        "--out",
        corpus.to_str().unwrap(),
        "--seq-len",
        "128",
    ]);
    let data = corpus.join("packed");
    let data = data.to_str().unwrap();
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/configs/redllm-tiny-pretrain.toml");
    let run = root.join("run");
    let run = run.to_str().unwrap();
    ok(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data,
        "--out",
        run,
        "--steps",
        "2",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--json",
    ]);
    let positions = root.join("positions.csv");
    let json = ok(&[
        "eval",
        "--checkpoint",
        run,
        "--data",
        data,
        "--lengths",
        "64,128",
        "--prefix-len",
        "1,32",
        "--max-rows",
        "3",
        "--positions",
        positions.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(report["arch"], "red");
    for key in [
        "checkpoint",
        "step",
        "data",
        "attention",
        "scored",
        "source_average",
    ] {
        assert!(report.get(key).is_some(), "{key} missing from {report}");
    }
    assert_eq!(report["rows_read"], 3);
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
    let results = report["results"].as_array().unwrap();
    let pairs: Vec<(u64, u64)> = results
        .iter()
        .map(|c| {
            (
                c["length"].as_u64().unwrap(),
                c["prefix_len"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs, vec![(64, 1), (64, 32), (128, 1), (128, 32)]);
    for cell in results {
        let (l, k) = (
            cell["length"].as_u64().unwrap(),
            cell["prefix_len"].as_u64().unwrap(),
        );
        let rows = cell["rows"].as_u64().unwrap();
        assert_eq!(rows + cell["skipped_short"].as_u64().unwrap(), 3);
        assert_eq!(cell["overall"]["tokens"].as_u64().unwrap(), rows * (l - k));
        for key in ["loss", "ppl", "tokens", "examples"] {
            assert!(
                cell["overall"].get(key).is_some(),
                "{key} missing from {cell}"
            );
        }
        let avg = &cell["source_average"];
        assert!(avg["loss"].as_f64().unwrap() > 0.0);
        assert!(avg["ppl"].as_f64().unwrap() > 1.0);
        assert!(!cell["sources"].as_object().unwrap().is_empty());
        assert!(!cell["positions"].as_array().unwrap().is_empty());
    }
    let csv = std::fs::read_to_string(&positions).unwrap();
    assert!(csv.starts_with("length,prefix_len,first,end,tokens,mean_logprob\n"));
    assert!(csv.lines().any(|l| l.starts_with("128,32,32,64,")), "{csv}");

    let text = ok(&[
        "eval",
        "--checkpoint",
        run,
        "--data",
        data,
        "--lengths",
        "128",
        "--prefix-len",
        "32",
        "--max-rows",
        "2",
        "--device",
        "cpu",
    ]);
    for needle in [
        "L = 128, k = 32",
        "all (token-pooled)",
        "source average",
        "peak memory",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    // One --prefix-len and no --lengths: the single report, as before.
    let single: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        "--checkpoint",
        run,
        "--data",
        data,
        "--prefix-len",
        "32",
        "--max-examples",
        "2",
        "--device",
        "cpu",
        "--json",
    ]))
    .unwrap();
    for key in ["loss", "ppl", "tokens", "examples", "sources", "prefix_len"] {
        assert!(single.get(key).is_some(), "{key} missing from {single}");
    }
    assert!(single.get("results").is_none());

    let base = [
        "eval",
        "--checkpoint",
        run,
        "--data",
        data,
        "--device",
        "cpu",
    ];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let e = fails(&with(&base, &["--lengths", "256", "--prefix-len", "1"]));
    assert!(
        e.contains("--lengths 256") && e.contains("128 tokens"),
        "{e}"
    );
    let e = fails(&with(&base, &["--lengths", "64", "--prefix-len", "64"]));
    assert!(e.contains("limit is 63"), "{e}");
    let e = fails(&with(&base, &["--lengths", "64"]));
    assert!(e.contains("need --prefix-len"), "{e}");
    let bad = root.join("positions.txt");
    let e = fails(&with(
        &base,
        &[
            "--lengths",
            "64",
            "--prefix-len",
            "1",
            "--positions",
            bad.to_str().unwrap(),
        ],
    ));
    assert!(e.contains(".csv or .jsonl"), "{e}");
}
