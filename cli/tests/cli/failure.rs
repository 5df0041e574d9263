//! Failure semantics of `build-corpus`, `inspect` and the other corpus commands under hostile
//! input: a failed or refused build leaves the corpus in place, input that yields nothing is an
//! error, settings and numbers are checked where they are given, and no value crashes a command.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use redpack_schemas::Manifest;

const ARXIV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/redpajama/arxiv/arxiv_sample.jsonl"
);
const FLAN_JSONL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/flan/cot_zs_opt_train.jsonl.gz"
);
const GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt2.json"
);

fn redpack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redpack"))
        .args(args)
        .output()
        .expect("run redpack")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn succeeds(output: Output) -> Output {
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

/// Asserts a refusal: exit code 1, no panic, and every one of `words` in the message.
#[track_caller]
fn refused(output: &Output, words: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    for word in words {
        assert!(text.contains(word), "{word:?} not in: {text}");
    }
}

/// The first `n` records of the arXiv sample, as a small RedPajama input.
fn arxiv_head(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("redpajama").join("arxiv").join("head.jsonl");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = fs::read_to_string(ARXIV).unwrap();
    let head: Vec<&str> = text.lines().take(n).collect();
    fs::write(&path, head.join("\n") + "\n").unwrap();
    path
}

/// Every file directly in a corpus folder, by name.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect()
}

fn build<'a>(input: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "build-corpus",
        "--input",
        input,
        "--out",
        out,
        "--tokenizer",
        GPT2,
    ];
    if !extra.contains(&"--seq-len") {
        args.extend(["--seq-len", "128"]);
    }
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_failed_or_refused_rebuild_leaves_the_corpus_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let input = arxiv_head(dir.path(), 4);
    let input = input.to_str().unwrap();
    let out = dir.path().join("corpus");
    let out_str = out.to_str().unwrap();
    succeeds(redpack(&build(input, out_str, &[])));
    let before = snapshot(&out);
    let intact = |what: &str| {
        assert_eq!(snapshot(&out), before, "{what}: the corpus changed");
        succeeds(redpack(&["inspect", out_str, "--verify"]));
    };

    // A rebuild needs --overwrite.
    refused(
        &redpack(&build(input, out_str, &[])),
        &["already holds a corpus", "--overwrite"],
    );
    intact("without --overwrite");
    // Inputs and the tokenizer are checked before anything is touched.
    refused(
        &redpack(&build("no-such-file.jsonl", out_str, &["--overwrite"])),
        &["no-such-file.jsonl", "does not exist"],
    );
    intact("a missing input");
    let mut args = build(input, out_str, &["--overwrite"]);
    args[6] = "no-such-tokenizer.json";
    assert_eq!(args[5], "--tokenizer");
    refused(&redpack(&args), &["no-such-tokenizer.json"]);
    intact("a missing tokenizer");
    // A failure late in the build (too many rejects, found only when everything is read).
    let bad = dir.path().join("bad.jsonl");
    fs::write(&bad, "{\"text\": \"fine\"}\nnot json\n").unwrap();
    let mut args = build(input, out_str, &["--overwrite", "--input"]);
    args.push(bad.to_str().unwrap());
    args.extend(["--max-rejected-fraction", "0"]);
    // The rejects of the failed build are kept aside, not over the corpus's own.
    refused(
        &redpack(&args),
        &[
            "rejected",
            ".redpack-work/staged/rejects.jsonl",
            "no corpus was written",
        ],
    );
    intact("too many rejects");

    // With --overwrite and good inputs the new corpus replaces the old one entirely.
    succeeds(redpack(&build(
        input,
        out_str,
        &["--overwrite", "--seq-len", "64"],
    )));
    let manifest = Manifest::load(&out).unwrap();
    assert_eq!(
        manifest.layout,
        redpack_schemas::Layout::Packed {
            seq_len: 64,
            prefix_len: 32
        }
    );
    succeeds(redpack(&["inspect", out_str, "--verify"]));
    assert!(!out.join(".redpack-work").exists());
}

#[test]
fn the_default_build_runs_twice_and_never_overwrites_edited_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("default");
    let out_str = out.to_str().unwrap();
    let args = ["build-corpus", "--out", out_str, "--tokenizer", GPT2];
    succeeds(redpack(&args));
    // An unchanged sample is reused: the second run rebuilds both corpora from it.
    succeeds(redpack(&args));
    for kind in ["packed", "examples"] {
        succeeds(redpack(&[
            "inspect",
            &format!("{out_str}/{kind}"),
            "--verify",
        ]));
    }
    let edited = out
        .join("raw")
        .join(redpack::sample::REDPAJAMA_ROOT)
        .join("book")
        .join("book.jsonl");
    if !edited.exists() {
        let listing = fs::read_dir(edited.parent().unwrap())
            .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>());
        panic!("no {}: {listing:?}", edited.display());
    }
    fs::write(&edited, "{\"text\": \"my own edit\"}\n").unwrap();
    let name = edited.file_name().unwrap().to_string_lossy().into_owned();
    refused(
        &redpack(&args),
        &["is not the built-in sample", &name, "--overwrite"],
    );
    assert_eq!(
        fs::read_to_string(&edited).unwrap(),
        "{\"text\": \"my own edit\"}\n",
        "the edit is kept"
    );
    let mut again = args.to_vec();
    again.push("--overwrite");
    succeeds(redpack(&again));
    assert_ne!(
        fs::read_to_string(&edited).unwrap(),
        "{\"text\": \"my own edit\"}\n"
    );
}

#[test]
fn an_unreadable_input_file_counts_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("flan").join("junk.parquet");
    fs::create_dir_all(junk.parent().unwrap()).unwrap();
    fs::write(&junk, b"PAR1 random bytes, not a parquet file at all PAR1").unwrap();
    let out = dir.path().join("out");
    let out_str = out.to_str().unwrap();
    let junk_str = junk.to_str().unwrap();
    // Alone, the file is all there is: 1 of 1 records rejected.
    let output = redpack(&[
        "build-corpus",
        "--input",
        junk_str,
        "--tokenizer",
        GPT2,
        "--out",
        out_str,
    ]);
    refused(&output, &["1 of 1 records were rejected"]);
    // Beside a good file it is a warning on stderr and a reject in the manifest.
    let output = succeeds(redpack(&[
        "build-corpus",
        "--input",
        FLAN_JSONL,
        "--input",
        junk_str,
        "--format",
        "flan",
        "--tokenizer",
        GPT2,
        "--out",
        out_str,
        "--max-rejected-fraction",
        "0.5",
    ]));
    let text = stderr(&output);
    assert!(
        text.contains("warning:") && text.contains("junk.parquet"),
        "{text}"
    );
    let manifest = Manifest::load(&out).unwrap();
    assert_eq!(
        manifest.counts.rejected_by_reason.get("unreadable_file"),
        Some(&1)
    );
    let entry = manifest
        .inputs
        .iter()
        .find(|i| i.path.ends_with("junk.parquet"))
        .unwrap();
    assert!(entry.fault.as_deref().unwrap().contains("Parquet"));
}

#[test]
fn an_empty_corpus_is_an_error_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("redpajama").join("c4").join("empty.jsonl");
    fs::create_dir_all(empty.parent().unwrap()).unwrap();
    fs::write(&empty, "").unwrap();
    let out = dir.path().join("out");
    let (empty, out_str) = (empty.to_str().unwrap(), out.to_str().unwrap());
    refused(
        &redpack(&build(empty, out_str, &[])),
        &["empty corpus", "no records", "--allow-empty"],
    );
    assert!(!out.join("manifest.json").exists());
    let input = arxiv_head(dir.path(), 2);
    refused(
        &redpack(&build(
            input.to_str().unwrap(),
            out_str,
            &["--seq-len", "1000000"],
        )),
        &[
            "empty corpus",
            "fewer than one --seq-len 1000000",
            "--allow-empty",
        ],
    );
    succeeds(redpack(&build(empty, out_str, &["--allow-empty"])));
    assert_eq!(Manifest::load(&out).unwrap().counts.examples, 0);
}

#[test]
fn settings_the_trainer_cannot_use_are_refused_with_the_valid_range() {
    let dir = tempfile::tempdir().unwrap();
    let input = arxiv_head(dir.path(), 1);
    let input = input.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    for (extra, words) in [
        (&["--seq-len", "1"][..], &["seq_len 1 is outside 2..="][..]),
        (&["--seq-len", "8", "--prefix-len", "8"], &["1..=7"]),
        (&["--seq-len", "8", "--prefix-len", "0"], &["1..=7"]),
        (&["--seq-len", "4294967295"], &["outside 2..="]),
    ] {
        refused(&redpack(&build(input, out, extra)), words);
    }
    assert!(
        !Path::new(out).exists(),
        "nothing is written for bad settings"
    );
}

/// Zero and huge values of every numeric flag end in a clear error (or a normal run), never a
/// panic or an abort.
#[test]
fn hostile_numbers_never_crash_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let input = arxiv_head(dir.path(), 2);
    let input = input.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let max = u64::MAX.to_string();
    let cases: Vec<Vec<&str>> = vec![
        build(input, out, &["--threads", &max]),
        build(input, out, &["--eval-docs", "0"]),
        build(input, out, &["--eval-docs", &max, "--eval-seq-len", &max]),
        build(input, out, &["--max-rejected-fraction", "NaN"]),
        build(input, out, &["--max-rejected-fraction", "-1"]),
        build(input, out, &["--memory-limit", "0"]),
        build(input, out, &["--prefix-len", &max]),
        vec![
            "train-tokenizer",
            "--input",
            input,
            "--out",
            out,
            "--vocab-size",
            &max,
        ],
        vec![
            "train-tokenizer",
            "--input",
            input,
            "--out",
            out,
            "--vocab-size",
            "0",
        ],
        vec![
            "train-tokenizer",
            "--input",
            input,
            "--out",
            out,
            "--threads",
            &max,
        ],
        vec!["synth-corpus", "--out", out, "--docs", "0"],
        vec!["synth-corpus", "--out", out, "--docs", "5", "--files", "0"],
        vec![
            "synth-corpus",
            "--out",
            out,
            "--docs",
            "5",
            "--words",
            "0..18446744073709551615",
        ],
        vec![
            "synth-corpus",
            "--out",
            out,
            "--docs",
            "5",
            "--exact-rate",
            "NaN",
        ],
        vec!["fetch", "--manifest", input, "--out", out, "--jobs", "0"],
    ];
    for args in cases {
        let output = redpack(&args);
        let text = stderr(&output);
        assert!(
            matches!(output.status.code(), Some(1 | 2)),
            "{args:?}: exit {:?}: {text}",
            output.status.code()
        );
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

#[test]
fn error_causes_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = arxiv_head(dir.path(), 1);
    let out = dir.path().join("out");
    let missing = dir.path().join("missing.json");
    let mut args = build(input.to_str().unwrap(), out.to_str().unwrap(), &[]);
    args[6] = missing.to_str().unwrap();
    let output = redpack(&args);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
    assert_eq!(text.matches("missing.json").count(), 1, "{text}");
}

#[test]
fn flan_inputs_found_by_auto_build_an_examples_corpus() {
    let dir = tempfile::tempdir().unwrap();
    // A path that does not say FLAN: the records' keys do.
    let input = dir.path().join("data").join("part-0.jsonl.gz");
    fs::create_dir_all(input.parent().unwrap()).unwrap();
    fs::copy(FLAN_JSONL, &input).unwrap();
    let out = dir.path().join("out");
    let (input, out) = (input.to_str().unwrap(), out.to_str().unwrap());
    succeeds(redpack(&[
        "build-corpus",
        "--input",
        input,
        "--tokenizer",
        GPT2,
        "--out",
        out,
    ]));
    let manifest = Manifest::load(Path::new(out)).unwrap();
    assert_eq!(manifest.kind, redpack_schemas::Kind::Examples);
    assert!(manifest.counts.examples > 100);
    // Each example is one input/target pair, split at the input's end.
    let corpus = redpack_schemas::Corpus::open(Path::new(out)).unwrap();
    let first = corpus.example(0).unwrap();
    assert!(first.prefix_len > 0 && (first.prefix_len as usize) < first.tokens.len());
}

#[cfg(unix)]
#[test]
fn a_non_utf8_input_name_is_named_not_blamed_on_the_plan() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir_all(&input).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.jsonl");
    fs::write(input.join(name), "{\"text\": \"some words here\"}\n").unwrap();
    let out = dir.path().join("out");
    let output = redpack(&build(input.to_str().unwrap(), out.to_str().unwrap(), &[]));
    refused(&output, &["caf", "not valid UTF-8", "rename it"]);
    assert!(
        !stderr(&output).contains("plan.json"),
        "{}",
        stderr(&output)
    );
    assert!(!out.exists(), "nothing is written");
}
