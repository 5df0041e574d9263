//! The synthetic corpus generator against the real build: the planted duplicates are found
//! (recall) and little else is removed (precision), in one process and split over workers.

use std::path::{Path, PathBuf};
use std::process::Command;

use redpack::pipeline::{
    build, run_stage, BuildOptions, BuildSettings, Overrides, PipelineConfig, Stage, StageOutcome,
};
use redpack::sample::synthetic::{read_summary, write_synthetic, SynthConfig, SynthSummary};
use redpack_schemas::Counts;

const GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt2.json"
);
const BIN: &str = env!("CARGO_BIN_EXE_redpack");

fn generate(dir: &Path) -> SynthSummary {
    let config = SynthConfig {
        files: Some(6),
        seed: 11,
        ..SynthConfig::new(3000)
    };
    write_synthetic(dir, &config).expect("synthetic corpus")
}

fn settings(input: &Path, out: &Path) -> BuildSettings {
    let overrides = Overrides {
        inputs: vec![input.to_path_buf()],
        tokenizer: Some(PathBuf::from(GPT2)),
        ..Overrides::default()
    };
    BuildSettings::resolve(PipelineConfig::default(), overrides, out.to_path_buf())
        .expect("settings")
}

/// Recall of both kinds of planted copies, and at most a few documents removed beyond them.
fn check_dedup(counts: &Counts, truth: &SynthSummary) {
    assert_eq!(counts.records_read, truth.docs);
    assert_eq!(counts.rejected, 0);
    assert!(
        counts.exact_duplicates >= truth.exact_duplicates,
        "exact: found {} of {} planted",
        counts.exact_duplicates,
        truth.exact_duplicates
    );
    assert!(
        counts.near_duplicates as f64 >= 0.9 * truth.near_duplicates as f64,
        "near: found {} of {} planted",
        counts.near_duplicates,
        truth.near_duplicates
    );
    let removed = counts.exact_duplicates + counts.near_duplicates;
    let planted = truth.exact_duplicates + truth.near_duplicates;
    assert!(
        removed <= planted + 3,
        "removed {removed} documents for {planted} planted copies"
    );
}

#[test]
fn build_finds_the_planted_duplicates() {
    let data = tempfile::tempdir().unwrap();
    let truth = generate(data.path());
    assert_eq!(truth.files, 6);
    assert!(truth.exact_duplicates > 80 && truth.near_duplicates > 80);
    let out = tempfile::tempdir().unwrap();
    let report = build(&settings(data.path(), out.path()), &BuildOptions::default())
        .unwrap_or_else(|e| panic!("build failed: {e}"));
    check_dedup(&report.counts, &truth);
    assert_eq!(report.sources["c4"].records_read, truth.docs / 2);
    assert_eq!(report.sources["common_crawl"].records_read, truth.docs / 2);
}

#[test]
fn clusters_across_workers_are_found_like_in_one_process() {
    let data = tempfile::tempdir().unwrap();
    let truth = generate(data.path());
    let out = tempfile::tempdir().unwrap();
    let settings = settings(data.path(), out.path());
    let options = BuildOptions::default();
    let workers = 3;
    let mut finished = None;
    for stage in Stage::ALL {
        for worker in 0..workers {
            match run_stage(&settings, &options, stage, worker, workers) {
                Ok(StageOutcome::Finished(report)) => finished = Some(report),
                Ok(StageOutcome::Stage(_)) => {}
                Err(e) => panic!("stage {} worker {worker}: {e}", stage.name()),
            }
        }
    }
    let report = finished.expect("the finish stage reports");
    check_dedup(&report.counts, &truth);
}

#[test]
fn cli_writes_the_summary_and_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let run = Command::new(BIN)
        .args(["synth-corpus", "--docs", "500", "--files", "2", "--json"])
        .args(["--words", "30..50", "--seed", "3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let summary = read_summary(&out).unwrap();
    assert_eq!(printed["docs"], 500);
    assert_eq!(printed["exact_duplicates"], summary.exact_duplicates);
    assert_eq!(summary.words, (30, 50));
    assert!(out.join(&summary.file_list[1].path).exists());

    let refused = Command::new(BIN)
        .args(["synth-corpus", "--docs", "10", "--words", "5..10", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("need 20 <= MIN"), "{stderr}");
}
