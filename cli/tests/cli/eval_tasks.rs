//! `redpack eval-tasks` through the CLI, on a tiny DecLLM trained on the built-in sample and the
//! task fixtures (`tests/fixtures/eval-tasks/`): every task of the paper at its shot count, the
//! `--json` report's keys and example counts, the same numbers on a rerun, the table, and clear
//! errors (a task name, `--shots`, a data root without the task's files).

use crate::common::{fails, json, ok, repo_path, tiny_run};

fn fixtures() -> String {
    repo_path("tests/fixtures/eval-tasks")
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn eval_tasks_scores_a_trained_run_on_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run = tiny_run(root, "decllm-tiny-pretrain.toml", 2);
    let run = run.to_str().unwrap();
    let data_root = fixtures();
    let base = [
        "eval-tasks",
        "--checkpoint",
        run,
        "--data-root",
        &data_root,
        "--device",
        "cpu",
        "--max-len",
        "96",
        "--limit",
        "2",
    ];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();

    let args = with(&["--tasks", "paper", "--shots", "paper", "--json"]);
    let report = json(&args);
    for key in [
        "checkpoint",
        "data_root",
        "shots",
        "limit",
        "model",
        "seed",
        "tasks",
        "average",
        "examples",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report}");
    }
    let tasks = report["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "boolq",
            "hellaswag",
            "rte",
            "arc_easy",
            "arc_challenge",
            "anli_r1",
            "anli_r2",
            "anli_r3",
            "commonsense_qa",
            "strategyqa",
            "triviaqa",
            "unifiedqa",
            "mmlu",
            "gsm8k",
            "bbh",
            "wmt_en_de",
            "wmt_en_zh"
        ]
    );
    let shots = [5, 5, 5, 5, 5, 5, 5, 5, 7, 6, 5, 5, 5, 8, 3, 5, 5];
    let mut total = 0.0;
    for (task, shots) in tasks.iter().zip(shots) {
        let name = task["task"].as_str().unwrap();
        assert_eq!(task["examples"], 2, "{name}");
        assert_eq!(task["shots"], shots, "{name}");
        let score = task["score"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&score), "{name}: {score}");
        match task["scoring"].as_str().unwrap() {
            "multiple_choice" => {
                let acc = task["acc"].as_f64().unwrap();
                assert!([0.0, 0.5, 1.0].contains(&acc), "{name}: acc {acc}");
                assert!(task["acc_norm"].is_number());
                assert_eq!(score, 100.0 * acc);
            }
            "generate" => {
                let em = task["exact_match"].as_f64().unwrap();
                assert_eq!(score, 100.0 * em, "{name}");
            }
            "translate" => assert_eq!(task["chrf"].as_f64().unwrap(), score, "{name}"),
            other => panic!("{name}: scoring {other}"),
        }
        // Five-shot prompts do not fit in 96 tokens: every prompt lost its first tokens.
        assert_eq!(task["truncated"], 2, "{name}");
        total += score;
    }
    assert_eq!(report["examples"], 34);
    let average = report["average"].as_f64().unwrap();
    assert!((average - total / 17.0).abs() < 1e-9, "{average}");
    assert!(
        report["model"].as_str().unwrap().contains("step"),
        "{report}"
    );

    // The same settings give the same numbers.
    let again = json(&args);
    assert_eq!(again["tasks"], report["tasks"]);

    // The table: a header, one line per task, the average.
    let table = ok(&with(&["--tasks", "boolq,wmt_en_zh", "--shots", "0"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[1].starts_with("task") && lines[1].contains("acc_norm"));
    assert!(lines[2].starts_with("boolq") && lines[2].contains("multiple_choice"));
    assert!(lines[3].starts_with("wmt_en_zh") && lines[3].contains("translate"));
    assert!(
        lines[4].starts_with("average over 2 tasks (4 examples)"),
        "{table}"
    );

    // Errors name what is wrong.
    assert!(fails(&with(&["--tasks", "boolq,squad"])).contains("unknown task \"squad\""));
    assert!(fails(&with(&["--shots", "many"])).contains("--shots must be `paper` or a number"));
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let stderr = fails(&[
        "eval-tasks",
        "--checkpoint",
        run,
        "--data-root",
        empty.to_str().unwrap(),
        "--tasks",
        "gsm8k",
    ]);
    assert!(
        stderr.contains("gsm8k/main/test-*.parquet")
            && stderr.contains("redpack fetch --manifest data-manifests/eval-tasks.toml"),
        "{stderr}"
    );
}

/// A RedLLM (prompt to the encoder, answer decoded) runs the multiple-choice, generative and
/// translation paths too.
#[test]
fn eval_tasks_runs_a_redllm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run = tiny_run(root, "redllm-tiny-pretrain.toml", 2);
    let run = run.to_str().unwrap();
    let data_root = fixtures();
    let report = json(&[
        "eval-tasks",
        "--checkpoint",
        run,
        "--data-root",
        &data_root,
        "--device",
        "cpu",
        "--max-len",
        "96",
        "--tasks",
        "arc_easy,gsm8k,wmt_en_de",
        "--shots",
        "1",
        "--json",
    ]);
    assert!(
        report["model"].as_str().unwrap().contains("RedLLM"),
        "{report}"
    );
    let tasks = report["tasks"].as_array().unwrap();
    let scorings: Vec<&str> = tasks
        .iter()
        .map(|t| t["scoring"].as_str().unwrap())
        .collect();
    assert_eq!(scorings, ["multiple_choice", "generate", "translate"]);
    let examples: Vec<u64> = tasks
        .iter()
        .map(|t| t["examples"].as_u64().unwrap())
        .collect();
    assert_eq!(examples, [2, 3, 3]);
    assert_eq!(report["examples"], 8);
}

#[test]
fn fetch_reads_the_eval_tasks_manifest_with_a_subset_per_task() {
    let manifest = repo_path("data-manifests/eval-tasks.toml");
    let out = tempfile::tempdir().unwrap();
    let stderr = fails(&[
        "fetch",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--only",
        "squad",
    ]);
    let known = "anli_r1, anli_r2, anli_r3, arc_challenge, arc_easy, bbh, boolq, \
                 commonsense_qa, gsm8k, hellaswag, mmlu, rte, strategyqa, triviaqa, unifiedqa, \
                 wmt_en_de, wmt_en_zh";
    assert!(
        stderr.contains("--only squad: no such subset") && stderr.contains(known),
        "{stderr}"
    );
}
