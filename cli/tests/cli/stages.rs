//! The staged build: workers on "many machines" (concurrent processes sharing the output
//! directory), crash-safe resume after `kill -9`, and the errors of misuse. Every comparison is
//! byte for byte against the one-process build of the same inputs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REDPACK: &str = env!("CARGO_BIN_EXE_redpack");
const GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt2.json"
);

/// The generated sample's RedPajama part: 10 files in every real layout, with exact and near
/// duplicates across files, malformed records and a truncated zstd file.
fn sample_inputs(dir: &Path) -> PathBuf {
    redpack::sample::write_sample(dir, 7).expect("sample");
    dir.join(redpack::sample::REDPAJAMA_ROOT)
}

fn redpack(args: &[&str]) -> Command {
    let mut command = Command::new(REDPACK);
    command.args(args);
    for var in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
    ] {
        command.env_remove(var);
    }
    command
}

fn base_args<'a>(input: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "build-corpus",
        "--input",
        input,
        "--out",
        out,
        "--tokenizer",
        GPT2,
        "--seq-len",
        "128",
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

fn check(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    output
}

/// Every file of a corpus directory (the work directory excluded), by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read corpus dir") {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() {
            files.insert(name, fs::read(entry.path()).unwrap());
        }
    }
    assert!(
        files.contains_key("manifest.json"),
        "{dir:?} has no manifest"
    );
    files
}

fn assert_same(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: different files"
    );
    for (name, bytes) in a {
        assert!(bytes == &b[name], "{what}: {name} differs");
    }
}

fn one_process(input: &str, out: &Path, extra: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let out_str = out.to_str().unwrap();
    check(
        redpack(&base_args(input, out_str, extra)).output().unwrap(),
        "one-process build",
    );
    snapshot(out)
}

/// Runs every stage with `workers` concurrent worker processes per parallel stage.
fn staged(input: &str, out: &Path, workers: usize, extra: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let out_str = out.to_str().unwrap();
    for stage in ["plan", "scan", "dedup", "tokenize", "finish"] {
        let count = workers.to_string();
        let parallel = matches!(stage, "scan" | "dedup" | "tokenize");
        let n = if parallel { workers } else { 1 };
        let children: Vec<(usize, Child)> = (0..n)
            .map(|worker| {
                let index = worker.to_string();
                let mut args = base_args(input, out_str, extra);
                args.extend(["--stage", stage]);
                if parallel {
                    args.extend(["--workers", count.as_str(), "--worker", index.as_str()]);
                }
                let child = redpack(&args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (worker, child)
            })
            .collect();
        for (worker, child) in children {
            check(
                child.wait_with_output().unwrap(),
                &format!("stage {stage} worker {worker}/{workers}"),
            );
        }
    }
    assert!(
        !out.join(".redpack-work").exists(),
        "finish removes the work directory"
    );
    snapshot(out)
}

#[test]
fn stages_are_listed_in_order() {
    let output = check(
        redpack(&["build-corpus", "--stages"]).output().unwrap(),
        "--stages",
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, ["plan", "scan", "dedup", "tokenize", "finish"]);
}

#[test]
fn any_number_of_workers_gives_the_one_process_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let input = input.to_str().unwrap();
    for (round, extra) in [&[][..], &["--shuffle-seed", "3"][..]]
        .into_iter()
        .enumerate()
    {
        let reference = one_process(input, &dir.path().join(format!("single-{round}")), extra);
        let manifest: serde_json::Value =
            serde_json::from_slice(&reference["manifest.json"]).unwrap();
        let counts = &manifest["counts"];
        assert!(counts["exact_duplicates"].as_u64().unwrap() > 0, "{counts}");
        assert!(counts["near_duplicates"].as_u64().unwrap() > 0, "{counts}");
        for workers in [1, 2, 3] {
            let out = dir.path().join(format!("staged-{round}-{workers}"));
            // Eight threads make each worker scan and tokenize two files at once.
            let mut extra = extra.to_vec();
            if workers == 2 {
                extra.extend(["--threads", "8"]);
            }
            let got = staged(input, &out, workers, &extra);
            assert_same(&reference, &got, &format!("{workers} workers {extra:?}"));
        }
    }
}

#[test]
fn spilling_sorters_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let input = input.to_str().unwrap();
    let extra = ["--shuffle-seed", "11"];
    let reference = one_process(input, &dir.path().join("roomy"), &extra);
    // A budget of a few KiB: the scan, dedup and shuffle sorters all spill runs to disk.
    let tight = one_process(
        input,
        &dir.path().join("tight"),
        &[
            "--shuffle-seed",
            "11",
            "--sort-budget",
            "4KiB",
            "--threads",
            "1",
        ],
    );
    assert_same(&reference, &tight, "spilled");
}

#[test]
fn a_stage_waits_for_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let input = input.to_str().unwrap();
    let out = dir.path().join("out");
    let out_str = out.to_str().unwrap();
    let stage = |stage: &str, extra: &[&str]| {
        let mut args = base_args(input, out_str, extra);
        args.extend(["--stage", stage]);
        redpack(&args).output().unwrap()
    };
    let early = stage("scan", &["--workers", "2", "--worker", "0"]);
    assert!(!early.status.success());
    let text = String::from_utf8_lossy(&early.stderr);
    assert!(
        text.contains("stage scan cannot start") && text.contains("plan"),
        "{text}"
    );

    check(stage("plan", &[]), "plan");
    check(
        stage("scan", &["--workers", "2", "--worker", "0"]),
        "scan 0/2",
    );
    let blocked = stage("dedup", &["--workers", "2", "--worker", "1"]);
    assert!(!blocked.status.success());
    let text = String::from_utf8_lossy(&blocked.stderr);
    assert!(
        text.contains("stage dedup cannot start: stage scan is incomplete"),
        "{text}"
    );
    assert!(text.contains("not done yet"), "{text}");

    // Slurm's array variables pick the worker; the other half of the scan then completes it.
    let mut args = base_args(input, out_str, &[]);
    args.extend(["--stage", "scan"]);
    let slurm = redpack(&args)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&check(slurm, "slurm").stdout).unwrap();
    assert_eq!(report["worker"], 1);
    assert_eq!(report["workers"], 2);
    check(stage("dedup", &[]), "dedup after a complete scan");
    let status = check(
        redpack(&["build-corpus", "--out", out_str, "--status", "--json"])
            .output()
            .unwrap(),
        "status",
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let line = |name: &str| {
        let stages = status["stages"].as_array().unwrap();
        let line = stages.iter().find(|s| s["stage"] == name).unwrap();
        (
            line["done"].as_u64().unwrap(),
            line["units"].as_u64().unwrap(),
        )
    };
    let (scanned, files) = line("scan");
    assert_eq!(scanned, files);
    assert_eq!(line("tokenize").0, 0);
    assert_eq!(status["complete"], false);

    // Planning a different build over this one is refused, naming what differs.
    let replan = stage("plan", &["--no-dedup"]);
    assert!(!replan.status.success());
    let text = String::from_utf8_lossy(&replan.stderr);
    assert!(
        text.contains("already holds the plan of a different build"),
        "{text}"
    );

    // Different settings than the plan's are refused.
    let other = stage("tokenize", &["--no-dedup"]);
    assert!(!other.status.success());
    let text = String::from_utf8_lossy(&other.stderr);
    assert!(text.contains("differ from the plan"), "{text}");

    // An input deleted between stages is named.
    let victim = Path::new(input).join("arxiv");
    let first = fs::read_dir(&victim)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::remove_file(&first).unwrap();
    let gone = stage("tokenize", &[]);
    assert!(!gone.status.success());
    let text = String::from_utf8_lossy(&gone.stderr);
    assert!(
        text.contains(first.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
    assert!(!out.join("manifest.json").exists());
}

#[test]
fn a_second_build_in_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let out = dir.path().join("out");
    let locks = out.join(".redpack-work").join("locks");
    fs::create_dir_all(&locks).unwrap();
    let held = fs::File::create(locks.join("build.lock")).unwrap();
    held.lock().unwrap();
    let args = base_args(input.to_str().unwrap(), out.to_str().unwrap(), &[]);
    let output = redpack(&args).output().unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("in use by another build"), "{text}");
    drop(held);
    check(
        redpack(&args).output().unwrap(),
        "after the lock is released",
    );
}

/// Waits until `ready` holds (polling), then kills the child with SIGKILL.
fn kill_when(mut child: Child, ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // finished before the kill point
        }
        if ready() {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    panic!("kill point never reached");
}

fn count_files(dir: &Path, ext: &str) -> usize {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn killed_builds_resume_to_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let input = input.to_str().unwrap();
    let extra = ["--shuffle-seed", "5", "--threads", "1"];
    let reference = one_process(input, &dir.path().join("reference"), &extra);
    let out = dir.path().join("out");
    let out_str = out.to_str().unwrap();
    let work = out.join(".redpack-work");
    type Point = Box<dyn Fn() -> bool>;
    let points: Vec<(&str, Point)> = vec![
        ("after the plan", {
            let w = work.clone();
            Box::new(move || w.join("plan.json").exists())
        }),
        ("mid scan", {
            let w = work.clone();
            Box::new(move || count_files(&w.join("scan"), "json") >= 3)
        }),
        ("mid dedup", {
            let w = work.clone();
            Box::new(move || count_files(&w.join("dedup"), "json") >= 1)
        }),
        ("mid tokenize", {
            let w = work.clone();
            Box::new(move || count_files(&w.join("tokens"), "json") >= 4)
        }),
        ("in finish", {
            let w = work.clone();
            Box::new(move || w.join("staged").join(".shard-00000.tokens.tmp").exists())
        }),
    ];
    let mut killed = 0;
    for (name, ready) in points {
        let _ = fs::remove_dir_all(&out);
        let child = redpack(&base_args(input, out_str, &extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if kill_when(child, ready) {
            killed += 1;
            // The manifest is the commit point: if the kill came after it, the corpus is whole.
            if out.join("manifest.json").exists() {
                check(
                    redpack(&["inspect", out_str, "--verify"]).output().unwrap(),
                    &format!("{name}: a corpus with a manifest verifies"),
                );
            }
        }
        let mut args = base_args(input, out_str, &extra);
        args.push("--resume");
        check(redpack(&args).output().unwrap(), &format!("resume {name}"));
        assert_same(&reference, &snapshot(&out), &format!("resumed {name}"));
    }
    assert!(
        killed >= 3,
        "only {killed} kill points were reached in time"
    );
}

#[test]
fn a_changed_input_stops_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let out = dir.path().join("out");
    let (input_str, out_str) = (input.to_str().unwrap(), out.to_str().unwrap());
    let mut args = base_args(input_str, out_str, &[]);
    args.extend(["--stage", "plan"]);
    check(redpack(&args).output().unwrap(), "plan");
    let c4 = input.join("c4");
    let file = fs::read_dir(&c4).unwrap().next().unwrap().unwrap().path();
    let mut text = fs::read(&file).unwrap();
    text.extend_from_slice(b"{\"text\": \"one more line\", \"meta\": {}}\n");
    fs::write(&file, text).unwrap();
    let mut args = base_args(input_str, out_str, &[]);
    args.push("--resume");
    let output = redpack(&args).output().unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("changed since the interrupted run"), "{text}");
    assert!(
        text.contains(file.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
}

/// The out-of-core dedup (group heads over sorted keys) against the streaming reference
/// (`Deduper`: exact index, then an LSH index of the survivors), record by record in input
/// order, with and without Jaccard verification of the candidates.
#[test]
fn out_of_core_dedup_equals_the_streaming_rule() {
    use redpack::dedup::{Deduper, Verdict};
    use redpack::pipeline::config::FormatChoice;
    use redpack::pipeline::scan::is_filtered;
    use redpack::pipeline::{build, BuildOptions, BuildSettings, Overrides, PipelineConfig};
    use redpack::record::Item;

    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let mut near_counts = Vec::new();
    for verify in [None, Some(0.9)] {
        let mut config = PipelineConfig::default();
        config.dedup.minhash.verify_threshold = verify;
        // Looser bands than the default find more candidates, so verification has work to do.
        config.dedup.minhash.bands = 28;
        config.dedup.minhash.rows = 4;
        let overrides = Overrides {
            inputs: vec![input.clone()],
            tokenizer: Some(PathBuf::from(GPT2)),
            format: Some(FormatChoice::Redpajama),
            ..Overrides::default()
        };
        let out = dir.path().join(format!("out-{verify:?}"));
        let settings = BuildSettings::resolve(config, overrides, out).unwrap();
        let report = build(&settings, &BuildOptions::default()).unwrap();

        let files = redpack::input::discover(
            std::slice::from_ref(&input),
            redpack::input::FormatHint::RedPajama,
        )
        .unwrap();
        let fields = settings.input.fields.field_map();
        let mut deduper = Deduper::new(settings.dedup);
        let mut scratch = String::new();
        let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for file in &files {
            for item in redpack::input::open(file, &fields).unwrap() {
                let Item::Record(record) = item else { continue };
                if is_filtered(&record.content, &settings.filter) {
                    continue;
                }
                let keys = deduper.keys(&record.content, &mut scratch);
                let entry = expected.entry(record.source.to_string()).or_default();
                match deduper.decide(&keys) {
                    Verdict::ExactDuplicate => entry.0 += 1,
                    Verdict::NearDuplicate => entry.1 += 1,
                    Verdict::Unique => {}
                }
            }
        }
        let got: BTreeMap<String, (u64, u64)> = report
            .sources
            .iter()
            .map(|(name, c)| (name.clone(), (c.exact_duplicates, c.near_duplicates)))
            .filter(|(_, counts)| *counts != (0, 0))
            .collect();
        expected.retain(|_, counts| *counts != (0, 0));
        assert_eq!(got, expected, "verify {verify:?}");
        near_counts.push(report.counts.near_duplicates);
    }
    assert!(
        near_counts[1] < near_counts[0],
        "verification removes candidates: {near_counts:?}"
    );
}

/// A full disk (simulated: the scan's temporary key file is a link to `/dev/full`, where every
/// write fails with ENOSPC) stops the build with the path and the OS error, leaves no manifest,
/// and a resume once there is room finishes with the same bytes as an undisturbed build.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_reported_and_the_build_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let input = input.to_str().unwrap();
    let reference = one_process(input, &dir.path().join("reference"), &[]);
    let out = dir.path().join("out");
    let out_str = out.to_str().unwrap();
    let mut plan = base_args(input, out_str, &[]);
    plan.extend(["--stage", "plan"]);
    check(redpack(&plan).output().unwrap(), "plan");
    let scan = out.join(".redpack-work").join("scan");
    let full = scan.join(".000003.band.tmp");
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();

    let mut resume = base_args(input, out_str, &[]);
    resume.push("--resume");
    let output = redpack(&resume).output().unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains(".000003.band.tmp"), "{text}");
    assert!(!out.join("manifest.json").exists());
    assert!(
        !scan.join("000003.json").exists(),
        "the failed unit is not marked done"
    );

    fs::remove_file(&full).unwrap();
    check(redpack(&resume).output().unwrap(), "resume with room");
    assert_same(&reference, &snapshot(&out), "after the full disk");

    // Nothing is left to resume: a finished corpus is not rebuilt behind the user's back.
    let again = redpack(&resume).output().unwrap();
    assert!(!again.status.success());
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(text.contains("holds a finished corpus"), "{text}");
}

/// An input edited between the scan and the tokenize stage, even with its size and mtime put
/// back, is caught by the checksum instead of mixing two versions of the file.
#[test]
fn an_input_edited_between_stages_is_caught_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_inputs(&dir.path().join("raw"));
    let out = dir.path().join("out");
    let (input_str, out_str) = (input.to_str().unwrap(), out.to_str().unwrap());
    let stage = |name: &str| {
        let mut args = base_args(input_str, out_str, &[]);
        args.extend(["--stage", name]);
        redpack(&args).output().unwrap()
    };
    for name in ["plan", "scan", "dedup"] {
        check(stage(name), name);
    }
    let file = fs::read_dir(input.join("wikipedia"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let mut bytes = fs::read(&file).unwrap();
    let at = bytes.iter().position(|&b| b == b'e').unwrap();
    bytes[at] = b'E';
    fs::write(&file, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let output = stage("tokenize");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("changed during the build") && text.contains("checksum"),
        "{text}"
    );
    assert!(
        text.contains(file.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
}
