//! `redpack study` end to end on `studies/smoke.toml` (the built-in generated corpus, 2 sizes x 2
//! architectures, a few steps): a study stopped after some runs and one stopped inside a run
//! continue where they stopped (the interrupted run bit for bit), the report's plots are valid
//! PNGs, the fits follow the runs' numbers, a changed study file is refused naming the run, and
//! `--emit slurm` writes the array job; downstream tasks added later re-evaluate every run and
//! give the scores `redpack eval-tasks` gives.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{json, ok, redpack};

fn smoke() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../studies/smoke.toml")
}

fn statuses(summary: &Value) -> Vec<(String, String)> {
    summary["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn alpha(report: &Value, fits: &str, arch: &str) -> f64 {
    report[fits]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["arch"] == arch)
        .unwrap()["fit"]["alpha"]
        .as_f64()
        .unwrap()
}

#[test]
fn smoke_study_stops_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let out_s = out.to_str().unwrap();
    let study = smoke();
    let study_s = study.to_str().unwrap();

    // A study stopped after 3 runs.
    let first = json(&[
        "study",
        "run",
        study_s,
        "--out",
        out_s,
        "--max-runs",
        "3",
        "--json",
    ]);
    let total = first["total_runs"].as_u64().unwrap() as usize;
    assert_eq!(total, 11);
    let done = statuses(&first);
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|(_, s)| s == "trained"), "{done:?}");
    assert_eq!(done[0].0, "pre-dec-xs");
    let partial = json(&["study", "report", out_s, "--json"]);
    assert_eq!(partial["runs"].as_array().unwrap().len(), 3);
    assert_eq!(partial["unfinished"].as_array().unwrap().len(), total - 3);

    // A kill inside pre-dec-xs after its step-2 checkpoint: the step-4 checkpoint and the
    // study's markers are gone, the metrics still hold steps 3 and 4.
    let run = out.join("runs/pre-dec-xs");
    let before = losses(&run.join("metrics.jsonl"));
    assert_eq!(before.len(), 4);
    let final_weights =
        std::fs::read(run.join("checkpoints/step-00000004/model.safetensors")).unwrap();
    std::fs::remove_dir_all(run.join("checkpoints/step-00000004")).unwrap();
    std::fs::remove_file(run.join("study-done.json")).unwrap();
    std::fs::remove_file(run.join("study-eval.json")).unwrap();

    let second = json(&["study", "run", study_s, "--out", out_s, "--json"]);
    let s = statuses(&second);
    assert_eq!(s.len(), total);
    assert_eq!(s[0], ("pre-dec-xs".into(), "resumed".into()));
    assert_eq!(s[1].1, "finished");
    assert_eq!(s[2].1, "finished");
    assert!(s[3..].iter().all(|(_, st)| st == "trained"), "{s:?}");
    // The resumed run is the uninterrupted one, bit for bit.
    assert_eq!(losses(&run.join("metrics.jsonl")), before);
    assert_eq!(
        std::fs::read(run.join("checkpoints/step-00000004/model.safetensors")).unwrap(),
        final_weights
    );

    // The report: every plot a valid PNG of the documented size.
    let report = json(&["study", "report", out_s, "--json"]);
    assert!(report["unfinished"].as_array().unwrap().is_empty());
    let plots: Vec<&str> = report["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        plots,
        [
            "ppl_vs_params.png",
            "ppl_vs_flops.png",
            "isoflop.png",
            "length_extrapolation.png",
            "locality.png",
            "finetune.png"
        ]
    );
    for plot in &plots {
        let file = std::fs::File::open(out.join("plots").join(plot)).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap_or_else(|e| panic!("{plot}: {e}"));
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), (960, 640), "{plot}");
        // Drawn on: not a blank canvas.
        assert!(pixels.iter().any(|&b| b < 128), "{plot} is blank");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("proves that the path works"), "{md}");
    assert!(md.contains("| pre-red-s | RedLLM | s |"), "{md}");
    assert!(md.contains("![PPL against training FLOPs](plots/ppl_vs_flops.png)"));
    let verdicts: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts.len(), 9);
    // Two sizes: no fit-based finding has a verdict.
    assert_eq!(verdicts[1], "not_enough_points");

    // The fit follows the runs' numbers: double one run's training FLOPs.
    let red_flops = alpha(&report, "flops_fits", "red");
    let red_params = alpha(&report, "params_fits", "red");
    let metrics = out.join("runs/pre-red-s/metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last_mut().unwrap();
    last["paper_flops_seen"] = Value::from(last["paper_flops_seen"].as_f64().unwrap() * 2.0);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&metrics, text).unwrap();
    let changed = json(&["study", "report", out_s, "--json"]);
    let new_flops = alpha(&changed, "flops_fits", "red");
    assert!(
        (new_flops - red_flops).abs() > 1e-6,
        "{red_flops} -> {new_flops}"
    );
    assert_eq!(alpha(&changed, "params_fits", "red"), red_params);

    // A changed study file is refused, naming the run and the change.
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/configs");
    let edited = std::fs::read_to_string(&study)
        .unwrap()
        .replace("../trainer/configs", recipes.to_str().unwrap())
        .replace("steps = 4\n", "steps = 5\n");
    let edited_path = dir.path().join("edited.toml");
    std::fs::write(&edited_path, edited).unwrap();
    let refused = redpack(&[
        "study",
        "run",
        edited_path.to_str().unwrap(),
        "--out",
        out_s,
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("run pre-dec-xs"), "{err}");
    assert!(err.contains("settings.steps: 4 -> 5"), "{err}");

    // --emit slurm: one task per run, finetuning after pretraining.
    ok(&["study", "run", study_s, "--out", out_s, "--emit", "slurm"]);
    let runs = std::fs::read_to_string(out.join("slurm/runs.txt")).unwrap();
    assert_eq!(runs.lines().count(), total);
    let submit = std::fs::read_to_string(out.join("slurm/submit.sh")).unwrap();
    assert!(submit.contains("--array=0-7 study.sbatch"), "{submit}");
    assert!(
        submit.contains("--dependency=afterok:${PRE}_2 "),
        "{submit}"
    );

    // Downstream tasks added to the study: every run is evaluated again (nothing retrained),
    // scaling and finetuning runs are scored on the tasks, isoFLOP runs are not.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/eval-tasks");
    let with_tasks = std::fs::read_to_string(&study)
        .unwrap()
        .replace("../trainer/configs", recipes.to_str().unwrap())
        + &format!(
            "\n[tasks]\ndata_root = {:?}\ntasks = \"boolq,arc_easy,gsm8k\"\nshots = [\"0\", \"1\"]\nlimit = 2\nbatch = 4\n",
            fixtures.to_str().unwrap()
        );
    let tasks_path = dir.path().join("tasks.toml");
    std::fs::write(&tasks_path, with_tasks).unwrap();
    let tasks_s = tasks_path.to_str().unwrap();
    let before = losses(&run.join("metrics.jsonl"));
    let third = json(&["study", "run", tasks_s, "--out", out_s, "--json"]);
    let s = statuses(&third);
    assert!(s.iter().all(|(_, st)| st == "re-evaluated"), "{s:?}");
    assert_eq!(losses(&run.join("metrics.jsonl")), before);
    for (name, _) in &s {
        let file = out.join("runs").join(name).join("study-tasks.json");
        assert_eq!(file.exists(), !name.starts_with("iso-"), "{name}");
    }
    // The study's scores are those `redpack eval-tasks` gives the same checkpoint.
    let scored: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/ft-red-s/study-tasks.json")).unwrap(),
    )
    .unwrap();
    let checkpoint = scored["checkpoint"].as_str().unwrap();
    assert!(checkpoint.ends_with("best"), "{checkpoint}");
    for (i, shots) in ["0", "1"].iter().enumerate() {
        let direct = json(&[
            "eval-tasks",
            "--checkpoint",
            checkpoint,
            "--data-root",
            fixtures.to_str().unwrap(),
            "--tasks",
            "boolq,arc_easy,gsm8k",
            "--shots",
            shots,
            "--limit",
            "2",
            "--batch",
            "4",
            "--seed",
            "1234",
            "--device",
            "cpu",
            "--json",
        ]);
        assert_eq!(direct["tasks"].as_array().unwrap().len(), 3);
        let result = &scored["results"][i];
        assert_eq!(result["shots"], *shots);
        assert_eq!(result["tasks"], direct["tasks"], "{shots} shots");
        assert_eq!(result["average"], direct["average"], "{shots} shots");
    }
    let report = json(&["study", "report", out_s, "--json"]);
    let plots = report["plots"].as_array().unwrap();
    assert!(plots.iter().any(|p| p == "tasks.png"), "{plots:?}");
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 11, "{ids:?}");
    assert!(ids.contains(&"zero_shot_pretrained") && ids.contains(&"tasks_finetune_red"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## 7. Downstream tasks"), "{md}");
    assert!(md.contains("| ft-red-s | RedLLM | s | 1 |"), "{md}");

    // Task files missing from data_root fail the study before any run.
    let empty = dir.path().join("no-tasks");
    std::fs::create_dir_all(&empty).unwrap();
    let missing = std::fs::read_to_string(&tasks_path).unwrap().replace(
        &format!("data_root = {:?}", fixtures.to_str().unwrap()),
        &format!("data_root = {:?}", empty.to_str().unwrap()),
    );
    std::fs::write(&tasks_path, missing).unwrap();
    let refused = redpack(&["study", "run", tasks_s, "--out", out_s]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("tasks.data_root"), "{err}");
    assert!(err.contains("boolq"), "{err}");
}
