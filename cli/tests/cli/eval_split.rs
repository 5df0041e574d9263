//! The held-out evaluation split of `build-corpus --eval-docs N`: inputs written here with
//! planted exact and near copies, built by the `redpack` binary, then checked from the corpus
//! files alone: the split is disjoint from training and no copy of an evaluation document is
//! left in training (token sequences searched in the shards), the counts are stratified by
//! source, the bytes do not depend on threads or workers, both manifests agree and verify, and
//! misuse is an error that names the numbers.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use redpack::tokenize::DocTokenizer;
use redpack_schemas::{Corpus, Kind, Layout, Manifest, SplitCounts, SplitName};

const REDPACK: &str = env!("CARGO_BIN_EXE_redpack");
const GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizers/gpt2.json"
);

/// Originals per source: 60, 30 and 10 (so 20 held out split 12 / 6 / 2 exactly).
const SOURCES: [(&str, usize); 3] = [("alpha", 60), ("beta", 30), ("gamma", 10)];

/// How a planted copy differs from its original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    Identical,
    Case,
    Whitespace,
    /// One word replaced near the end (word 5-gram Jaccard about 0.93).
    Near,
}

/// One record written to the inputs.
#[derive(Debug, Clone)]
struct Doc {
    text: String,
    /// For a planted copy: the original's index in the list and how it differs.
    copy_of: Option<(usize, Copy)>,
}

/// A small deterministic generator (the tests must not depend on a crate's RNG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn word(&mut self) -> String {
        let len = 3 + self.next() % 6;
        (0..len)
            .map(|_| char::from(b'a' + (self.next() % 26) as u8))
            .collect()
    }
}

/// Writes `alpha.jsonl`, `beta.jsonl`, `gamma.jsonl` (sources by file name) into `dir`: the
/// originals first, then copies of every other original: identical, case and whitespace
/// variants, and near copies, half at the end of the original's file and half at the end of
/// `gamma.jsonl` (another source). Returns every record, originals first.
fn write_inputs(dir: &Path) -> Vec<Doc> {
    fs::create_dir_all(dir).unwrap();
    let mut rng = Lcg(2510_26622);
    let mut docs: Vec<(usize, Doc)> = Vec::new();
    for (s, &(name, count)) in SOURCES.iter().enumerate() {
        for i in 0..count {
            let words: Vec<String> = (0..150).map(|_| rng.word()).collect();
            let text = format!("{name}doc{i} {}", words.join(" "));
            docs.push((
                s,
                Doc {
                    text,
                    copy_of: None,
                },
            ));
        }
    }
    let originals = docs.len();
    let mut copies: Vec<(usize, Doc)> = Vec::new();
    for index in 0..originals {
        if index % 2 == 1 {
            continue;
        }
        let (source, original) = &docs[index];
        let kind = [
            Copy::Identical,
            Copy::Near,
            Copy::Case,
            Copy::Near,
            Copy::Whitespace,
        ][(index / 2) % 5];
        let text = match kind {
            Copy::Identical => original.text.clone(),
            Copy::Case => original.text.to_uppercase(),
            Copy::Whitespace => original.text.replace(' ', "  \n "),
            Copy::Near => {
                let mut words: Vec<&str> = original.text.split(' ').collect();
                let at = words.len() - 3;
                words[at] = "replacedword";
                words.join(" ")
            }
        };
        let target = if (index / 2) % 2 == 0 { *source } else { 2 };
        copies.push((
            target,
            Doc {
                text,
                copy_of: Some((index, kind)),
            },
        ));
    }
    docs.extend(copies);
    for (s, &(name, _)) in SOURCES.iter().enumerate() {
        let lines: Vec<String> = docs
            .iter()
            .filter(|(source, _)| *source == s)
            .map(|(_, d)| serde_json::json!({ "text": d.text }).to_string())
            .collect();
        fs::write(dir.join(format!("{name}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
    docs.into_iter().map(|(_, d)| d).collect()
}

/// A pipeline with short packed rows whose last row is padded (nothing is dropped, so every
/// document's tokens are in one corpus or the other).
fn write_pipeline(dir: &Path) -> PathBuf {
    let path = dir.join("split.toml");
    fs::write(
        &path,
        "[input]\nformat = \"redpajama\"\n\n[pack]\ntype = \"packed\"\nseq_len = 64\nfinal_partial = \"pad\"\n",
    )
    .unwrap();
    path
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

fn check(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    output
}

fn build_args(input: &Path, pipeline: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "build-corpus",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--tokenizer",
        GPT2,
        "--eval-docs",
        "20",
        "--eval-seq-len",
        "256",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn build(input: &Path, pipeline: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let args = build_args(input, pipeline, out, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = check(redpack(&args).output().unwrap(), "build-corpus");
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

/// Every stage in turn, the parallel ones by `workers` concurrent processes.
fn staged(input: &Path, pipeline: &Path, out: &Path, workers: usize) {
    for stage in ["plan", "scan", "dedup", "tokenize", "finish"] {
        let parallel = matches!(stage, "scan" | "dedup" | "tokenize");
        let count = workers.to_string();
        let children: Vec<Child> = (0..if parallel { workers } else { 1 })
            .map(|worker| {
                let index = worker.to_string();
                let mut extra = vec!["--stage", stage];
                if parallel {
                    extra.extend(["--workers", count.as_str(), "--worker", index.as_str()]);
                }
                let args = build_args(input, pipeline, out, &extra);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                redpack(&args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            check(child.wait_with_output().unwrap(), &format!("stage {stage}"));
        }
    }
}

/// Every file of a corpus and of its evaluation corpus, by relative path.
fn snapshot(out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for (prefix, dir) in [("", out.to_path_buf()), ("eval/", out.join("eval"))] {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                files.insert(name, fs::read(entry.path()).unwrap());
            }
        }
    }
    assert!(files.contains_key("manifest.json") && files.contains_key("eval/manifest.json"));
    files
}

/// All rows of a corpus, and their tokens concatenated in order.
fn rows(dir: &Path) -> (Vec<Vec<u32>>, Vec<u32>) {
    let corpus = Corpus::open(dir).unwrap();
    let rows: Vec<Vec<u32>> = (0..corpus.len())
        .map(|i| corpus.example(i).unwrap().tokens.to_vec())
        .collect();
    let stream = rows.concat();
    (rows, stream)
}

fn occurrences(stream: &[u32], needle: &[u32]) -> usize {
    if needle.is_empty() || needle.len() > stream.len() {
        return 0;
    }
    stream
        .windows(needle.len())
        .filter(|w| w[0] == needle[0] && *w == needle)
        .count()
}

fn verify(dir: &Path) {
    check(
        redpack(&["inspect", dir.to_str().unwrap(), "--verify", "--json"])
            .output()
            .unwrap(),
        &format!("inspect --verify {}", dir.display()),
    );
}

#[test]
fn the_split_is_disjoint_stratified_and_leaves_no_copy_in_training() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let docs = write_inputs(&input);
    let pipeline = write_pipeline(dir.path());
    let out = dir.path().join("out");
    let report = build(&input, &pipeline, &out, &["--threads", "2"]);

    // Dedup removed exactly the planted copies.
    let exact = docs
        .iter()
        .filter(|d| matches!(d.copy_of, Some((_, k)) if k != Copy::Near))
        .count() as u64;
    let near = docs
        .iter()
        .filter(|d| matches!(d.copy_of, Some((_, Copy::Near))))
        .count() as u64;
    assert_eq!(report["counts"]["exact_duplicates"], exact);
    assert_eq!(report["counts"]["near_duplicates"], near);
    let originals: usize = SOURCES.iter().map(|s| s.1).sum();
    assert_eq!(report["counts"]["kept"], originals as u64);

    // Both manifests record the split and point to each other.
    let train = Manifest::load(&out).unwrap();
    let eval_dir = out.join("eval");
    let eval = Manifest::load(&eval_dir).unwrap();
    let train_split = train.split.clone().expect("training split");
    let eval_split = eval.split.clone().expect("evaluation split");
    assert_eq!(train_split.split, SplitName::Train);
    assert_eq!(eval_split.split, SplitName::Eval);
    assert_eq!(
        Manifest::load(&out.join(&train_split.counterpart)).unwrap(),
        eval
    );
    assert_eq!(
        Manifest::load(&eval_dir.join(&eval_split.counterpart)).unwrap(),
        train
    );
    assert_eq!(train_split.documents, eval_split.documents);
    assert_eq!(train_split.sources, eval_split.sources);
    // Stratified: 20 of 100 kept, in proportion 60 / 30 / 10.
    let expected: BTreeMap<String, SplitCounts> =
        [("alpha", 48, 12), ("beta", 24, 6), ("gamma", 8, 2)]
            .into_iter()
            .map(|(name, train, eval)| (name.to_string(), SplitCounts { train, eval }))
            .collect();
    assert_eq!(train_split.sources, expected);
    assert_eq!(
        train_split.documents,
        SplitCounts {
            train: 80,
            eval: 20
        }
    );
    // kept = train + eval, in both manifests' accounting; each packed its own side.
    assert_eq!(train.counts.kept, 100);
    assert_eq!(eval.counts.kept, 100);
    assert_eq!(train.packing.documents, 80);
    assert_eq!(eval.packing.documents, 20);
    assert_eq!(
        eval.layout,
        Layout::Packed {
            seq_len: 256,
            prefix_len: 32
        }
    );
    assert_eq!(report["eval"]["split"]["documents"]["eval"], 20);
    verify(&out);
    verify(&eval_dir);
    // The trainer's data code opens the evaluation corpus like any other.
    let (_, summary) = redpack_trainer::data::open_corpus(&eval_dir).unwrap();
    assert_eq!(summary.kind, Kind::Packed);
    assert_eq!(summary.max_row_len(), 256);

    // Every original is on exactly one side; no planted copy (exact or near) of a held-out
    // document is left in training, nor in the evaluation corpus.
    let tokenizer = DocTokenizer::from_file(Path::new(GPT2), None, None).unwrap();
    let (_, train_stream) = rows(&out);
    let (_, eval_stream) = rows(&eval_dir);
    let encoded: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| tokenizer.encode(&d.text).unwrap())
        .collect();
    let mut held_out = vec![false; docs.len()];
    for (index, doc) in docs.iter().enumerate().filter(|(_, d)| d.copy_of.is_none()) {
        let in_train = occurrences(&train_stream, &encoded[index]);
        let in_eval = occurrences(&eval_stream, &encoded[index]);
        assert_eq!(
            in_train + in_eval,
            1,
            "original #{index} is in train {in_train} and eval {in_eval} times: {}",
            &doc.text[..20]
        );
        held_out[index] = in_eval == 1;
    }
    assert_eq!(held_out.iter().filter(|h| **h).count(), 20);
    let mut copies_of_held_out = BTreeMap::<&str, usize>::new();
    for (index, doc) in docs.iter().enumerate() {
        let Some((original, kind)) = doc.copy_of else {
            continue;
        };
        if kind != Copy::Identical {
            // A variant's own tokens are in neither corpus (dedup removed it).
            assert_eq!(
                occurrences(&train_stream, &encoded[index]),
                0,
                "copy #{index} ({kind:?}) in training"
            );
            assert_eq!(
                occurrences(&eval_stream, &encoded[index]),
                0,
                "copy #{index} ({kind:?}) in eval"
            );
        }
        if held_out[original] {
            // The original's text is not in training either (identical copies included).
            assert_eq!(occurrences(&train_stream, &encoded[original]), 0);
            *copies_of_held_out
                .entry(if kind == Copy::Near { "near" } else { "exact" })
                .or_default() += 1;
        }
    }
    // The test means something: held-out documents had planted copies of both kinds.
    assert!(
        copies_of_held_out.get("near").is_some_and(|n| *n >= 1)
            && copies_of_held_out.get("exact").is_some_and(|n| *n >= 1),
        "{copies_of_held_out:?}"
    );
}

#[test]
fn the_split_does_not_depend_on_threads_workers_or_resume() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_inputs(&input);
    let pipeline = write_pipeline(dir.path());
    let one = dir.path().join("one");
    build(&input, &pipeline, &one, &["--threads", "1"]);
    let two = dir.path().join("two");
    build(&input, &pipeline, &two, &["--threads", "2"]);
    let workers = dir.path().join("workers");
    staged(&input, &pipeline, &workers, 2);
    // Interrupted after dedup (two stages run by hand), then resumed in one process.
    let resumed = dir.path().join("resumed");
    for stage in ["plan", "scan", "dedup"] {
        let args = build_args(&input, &pipeline, &resumed, &["--stage", stage]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(redpack(&args).output().unwrap(), stage);
    }
    build(&input, &pipeline, &resumed, &["--resume", "--threads", "2"]);
    let (a, b, c) = (snapshot(&one), snapshot(&two), snapshot(&workers));
    let d = snapshot(&resumed);
    for (other, what) in [
        (&b, "--threads 2"),
        (&c, "2 staged workers"),
        (&d, "a build resumed after dedup"),
    ] {
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>(),
            "{what}"
        );
        for (name, bytes) in &a {
            assert!(
                bytes == &other[name],
                "{what}: {name} differs from --threads 1"
            );
        }
    }
    // A rebuild without the split (over the corpus, so --overwrite) removes the old evaluation
    // corpus.
    let args = build_args(&input, &pipeline, &one, &["--overwrite"]);
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !matches!(*a, "--eval-docs" | "20" | "--eval-seq-len" | "256"))
        .collect();
    check(
        redpack(&args).output().unwrap(),
        "rebuild without the split",
    );
    assert!(Manifest::load(&one).unwrap().split.is_none());
    assert!(!one.join("eval").join("manifest.json").exists());
}

#[test]
fn an_examples_corpus_gets_a_validation_split_with_the_same_limits() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir_all(&input).unwrap();
    let mut rng = Lcg(7);
    for (name, count) in [("taska", 24), ("taskb", 8)] {
        let lines: Vec<String> = (0..count)
            .map(|i| {
                let words: Vec<String> = (0..30).map(|_| rng.word()).collect();
                serde_json::json!({
                    "inputs": format!("{name} question {i}: {}", words.join(" ")),
                    "targets": format!("answer {i} {}", rng.word()),
                })
                .to_string()
            })
            .collect();
        fs::write(input.join(format!("{name}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
    let pipeline = dir.path().join("flan.toml");
    fs::write(
        &pipeline,
        "[input]\nformat = \"flan\"\n\n[dedup]\nnear = false\n\n[pack]\ntype = \"examples\"\nmax_input_len = 16\nmax_target_len = 8\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = [
        "build-corpus",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--tokenizer",
        GPT2,
        "--eval-docs",
        "8",
        "--json",
    ];
    check(redpack(&args).output().unwrap(), "examples build");
    let eval_dir = out.join("eval");
    let train = Manifest::load(&out).unwrap();
    let eval = Manifest::load(&eval_dir).unwrap();
    assert_eq!(eval.kind, Kind::Examples);
    assert_eq!(eval.layout, train.layout);
    let split = eval.split.clone().unwrap();
    assert_eq!(split.sources["taska"], SplitCounts { train: 18, eval: 6 });
    assert_eq!(split.sources["taskb"], SplitCounts { train: 6, eval: 2 });
    let (train_rows, _) = rows(&out);
    let (eval_rows, _) = rows(&eval_dir);
    assert_eq!((train_rows.len(), eval_rows.len()), (24, 8));
    for row in &eval_rows {
        assert!(row.len() <= 24, "a row longer than the limits");
        assert!(
            !train_rows.contains(row),
            "an evaluation example is also in training"
        );
    }
    verify(&out);
    verify(&eval_dir);
    // A tampered split count is caught by --verify.
    let path = eval_dir.join("manifest.json");
    let mut value: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    value["split"]["documents"]["eval"] = serde_json::json!(9);
    fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    let output = redpack(&["inspect", eval_dir.to_str().unwrap(), "--verify"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("split") && stderr.contains("kept"),
        "{stderr}"
    );
}

#[test]
fn misuse_is_an_error_that_names_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_inputs(&input);
    let pipeline = write_pipeline(dir.path());
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "build-corpus",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--tokenizer",
            GPT2,
        ];
        args.extend_from_slice(extra);
        let output = redpack(&args).output().unwrap();
        assert!(!output.status.success(), "{extra:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let err = run(&["--eval-docs", "101"]);
    assert!(
        err.contains("--eval-docs 101") && err.contains("100 documents kept"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists());
    // The earlier stages' work is kept: a smaller split resumes with only `finish` to run.
    let args = [
        "build-corpus",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--tokenizer",
        GPT2,
        "--eval-docs",
        "20",
        "--eval-seq-len",
        "256",
        "--resume",
        "--json",
    ];
    check(
        redpack(&args).output().unwrap(),
        "resume with a smaller split",
    );
    let manifest = Manifest::load(&out).unwrap();
    assert_eq!(manifest.split.unwrap().documents.eval, 20);
    assert_eq!(manifest.build["output"]["eval_docs"], 20);
    // The same bytes as a fresh build with those settings.
    let fresh = dir.path().join("fresh");
    build(&input, &pipeline, &fresh, &[]);
    assert!(
        snapshot(&out) == snapshot(&fresh),
        "the resumed split differs from a fresh one"
    );
    let err = run(&["--eval-docs", "0"]);
    assert!(err.contains("at least 1"), "{err}");
    let err = run(&["--eval-docs", "5", "--eval-seq-len", "16"]);
    assert!(
        err.contains("eval_seq_len 16") && err.contains("prefix length 32"),
        "{err}"
    );
    let err = run(&["--eval-seq-len", "128"]);
    assert!(err.contains("--eval-docs"), "{err}");
}
