//! `redpack analyze-attention` end to end: the default corpus, two-step `tiny` runs of both
//! architectures, the JSON on stdout and the files in `--out`, and the errors for bad flags.

use std::path::Path;

use crate::common::{fails, ok};

#[test]
fn analyze_attention_writes_the_report_and_heat_maps() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = root.join("corpus");
    ok(&["build-corpus", "--out", corpus.to_str().unwrap()]);
    let data = corpus.join("packed");
    let data = data.to_str().unwrap();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/configs");
    for (arch, kinds) in [
        ("decllm", vec!["decoder_self"]),
        ("redllm", vec!["cross", "decoder_self", "encoder_self"]),
    ] {
        let config = configs.join(format!("{arch}-tiny-pretrain.toml"));
        let run = root.join(format!("run-{arch}"));
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
        ]);
        let out = root.join(format!("analysis-{arch}"));
        let args = |extra: &[&'static str]| -> Vec<String> {
            let mut v: Vec<String> = [
                "analyze-attention",
                "--checkpoint",
                run,
                "--data",
                data,
                "--out",
                out.to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let run_args = args(&[
            "--length",
            "64",
            "--prefix-len",
            "16",
            "--rows",
            "2",
            "--json",
        ]);
        let refs: Vec<&str> = run_args.iter().map(|s| s.as_str()).collect();
        let json: serde_json::Value = serde_json::from_str(&ok(&refs)).expect("--json output");
        assert_eq!(json["rows"], 2);
        assert_eq!(json["window"], 5);
        let names: Vec<&str> = json["attention"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(names, kinds, "{arch}");
        for kind in json["attention"].as_object().unwrap().values() {
            let overall = kind["overall"].as_f64().unwrap();
            assert!((0.0..=1.0 + 1e-5).contains(&overall), "{arch}: {overall}");
            assert!(kind["max_row_sum_error"].as_f64().unwrap() <= 1e-5);
        }
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("locality.json")).unwrap()).unwrap();
        assert_eq!(on_disk, json);
        assert!(out.join("locality.csv").exists());
        assert!(out.join("locality_by_position.csv").exists());
        let maps = json["heatmaps"].as_array().unwrap();
        assert!(!maps.is_empty());
        for map in maps {
            let bytes = std::fs::read(out.join(map["file"].as_str().unwrap())).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        }
        // The table names every attention kind.
        let table_args = args(&["--length", "64", "--prefix-len", "16", "--rows", "1"]);
        let refs: Vec<&str> = table_args.iter().map(|s| s.as_str()).collect();
        let table = ok(&refs);
        for kind in &kinds {
            assert!(table.contains(kind), "{table}");
        }
        for (extra, message) in [
            (
                &["--length", "257", "--prefix-len", "16"][..],
                "--length 257 is above the row length",
            ),
            (
                &["--length", "64", "--prefix-len", "64"][..],
                "--prefix-len 64 must be below --length 64",
            ),
            (
                &["--length", "64", "--prefix-len", "16", "--window", "0"][..],
                "--window must be at least 1",
            ),
        ] {
            let bad = args(extra);
            let refs: Vec<&str> = bad.iter().map(|s| s.as_str()).collect();
            let err = fails(&refs);
            assert!(err.contains(message), "{extra:?}: {err}");
        }
    }
}
