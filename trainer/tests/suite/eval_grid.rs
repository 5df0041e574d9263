//! Evaluation over (length, prefix) grids: every pair equals an independent numpy forward pass
//! (`tests/python/eval_reference.py`, which reads only the checkpoint and the corpus files) for
//! RedLLM, DecLLM, DecLLM + BiAttn and DecLLM with document resets; the checkpoint's attention
//! is the one evaluated; short rows are skipped and counted; bad grids fail naming the limit; the
//! CUDA backend (a GPU, or the CPU emulation of one) gives the CPU's numbers at every pair.

use super::cuda_support::{self, say};
use super::train_common::{self, examples_corpus, tiny_settings, EOD, PAD, TOKENIZER_SHA};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use redpack_schemas::{
    CorpusInfo, CorpusWriter, Counts, ExampleMeta, Layout, PackingStats, TokenizerInfo,
    WriterOptions, DEFAULT_MAX_SHARD_TOKENS,
};
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::cuda::{CudaBackend, CudaOptions};
use redpack_trainer::backend::{Backend, Precision};
use redpack_trainer::config::Arch;
use redpack_trainer::eval::grid::{write_positions, GridJob, GridOptions, GridReport};
use redpack_trainer::eval::{EvalError, EvalJob, EvalOptions};
use redpack_trainer::metrics::Quiet;
use redpack_trainer::run::{Mode, TrainRun};

const SEQ: u32 = 32;

/// A packed corpus of rows of `SEQ` tokens from three sources of unequal size: two rows end in
/// padding (20 and 27 real tokens), some rows hold several documents.
fn grid_corpus(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut writer = CorpusWriter::create(
        dir,
        WriterOptions {
            layout: Layout::Packed {
                seq_len: SEQ,
                prefix_len: SEQ / 2,
            },
            vocab_size: train_common::VOCAB,
            max_shard_tokens: DEFAULT_MAX_SHARD_TOKENS,
        },
    )
    .unwrap();
    let sources = ["web", "code", "web", "book", "web", "code", "web", "web"];
    for (i, source) in sources.iter().enumerate() {
        let mut tokens = train_common::pattern(i as u32, SEQ as usize);
        let real = match i {
            3 => 20,
            6 => 27,
            _ => SEQ as usize,
        };
        for t in tokens.iter_mut().skip(real) {
            *t = PAD;
        }
        let doc_starts: &[u32] = match i {
            1 => &[9],
            4 => &[5, 17],
            _ => &[],
        };
        for &s in doc_starts {
            tokens[s as usize - 1] = EOD;
        }
        writer
            .push(
                &tokens,
                ExampleMeta {
                    source,
                    prefix_len: SEQ / 2,
                    doc_starts,
                    origin: None,
                },
            )
            .unwrap();
    }
    writer
        .finish(CorpusInfo {
            tokenizer: TokenizerInfo {
                file: "tokenizer.json".to_string(),
                sha256: TOKENIZER_SHA.to_string(),
                vocab_size: train_common::VOCAB,
                eod_id: EOD,
                pad_id: PAD,
                eod_token: "[EOD]".to_string(),
                pad_token: "[PAD]".to_string(),
            },
            build: serde_json::json!({}),
            inputs: Vec::new(),
            counts: Counts::default(),
            sources: BTreeMap::new(),
            packing: PackingStats::default(),
        })
        .unwrap();
    dir.to_path_buf()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Red,
    Dec,
    DecBiAttn,
    DecReset,
}

/// A checkpoint of a 2-step `tiny` run of `kind` (DecLLM + BiAttn finetunes on an examples
/// corpus with the same tokenizer; the others pretrain on `packed`).
fn trained(root: &Path, kind: Kind, packed: &Path) -> PathBuf {
    let out = root.join(format!("{kind:?}"));
    let settings = match kind {
        Kind::Red => tiny_settings(Arch::Red, Mode::Pretrain, packed, &out, 2),
        Kind::Dec => tiny_settings(Arch::Dec, Mode::Pretrain, packed, &out, 2),
        Kind::DecReset => {
            let mut s = tiny_settings(Arch::Dec, Mode::Pretrain, packed, &out, 2);
            s.objective.reset_at_doc_boundaries = true;
            s
        }
        Kind::DecBiAttn => {
            let examples = examples_corpus(&root.join("examples"), 16);
            let mut s = tiny_settings(Arch::Dec, Mode::Finetune, &examples, &out, 2);
            s.objective.bidirectional_prefix = true;
            s
        }
    };
    let outcome = TrainRun::prepare(settings)
        .unwrap()
        .run(&mut CpuBackend::new(Some(1)).unwrap(), &mut Quiet)
        .unwrap();
    outcome.final_checkpoint
}

fn grid(
    checkpoint: &Path,
    data: &Path,
    lengths: &[usize],
    prefixes: &[usize],
    batch_rows: usize,
) -> Result<GridReport, EvalError> {
    let mut cpu = CpuBackend::new(Some(2)).unwrap();
    grid_on(&mut cpu, checkpoint, data, lengths, prefixes, batch_rows)
}

fn grid_on(
    backend: &mut dyn Backend,
    checkpoint: &Path,
    data: &Path,
    lengths: &[usize],
    prefixes: &[usize],
    batch_rows: usize,
) -> Result<GridReport, EvalError> {
    let job = GridJob::prepare(
        checkpoint,
        data,
        GridOptions {
            lengths: lengths.to_vec(),
            prefix_lens: prefixes.to_vec(),
            batch_rows,
            max_rows: None,
        },
    )?;
    job.run(backend, |_| {})
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The numpy reference's JSON; fails (does not skip) when python3 or numpy is missing.
fn reference(
    checkpoint: &Path,
    data: &Path,
    lengths: &[usize],
    prefixes: &[usize],
) -> serde_json::Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/eval_reference.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(checkpoint)
        .arg(data)
        .args(["--lengths", &join(lengths), "--prefix-len", &join(prefixes)])
        .output()
        .expect("python3 runs (CI installs numpy and pyarrow: tests/python/requirements.txt)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "eval_reference.py failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(&stdout).expect("reference prints JSON")
}

fn close(what: &str, ours: f64, theirs: f64) {
    let rel = (ours - theirs).abs() / theirs.abs().max(1e-12);
    assert!(
        rel <= 1e-5,
        "{what}: redpack {ours} vs reference {theirs} (relative {rel:e})"
    );
}

fn assert_matches_reference(report: &GridReport, reference: &serde_json::Value, label: &str) {
    let cells = reference["results"].as_array().unwrap();
    assert_eq!(report.results.len(), cells.len(), "{label}: pairs");
    for (ours, theirs) in report.results.iter().zip(cells) {
        let at = format!("{label} L={} k={}", ours.length, ours.prefix_len);
        assert_eq!(
            ours.length as u64,
            theirs["length"].as_u64().unwrap(),
            "{at}"
        );
        assert_eq!(
            ours.prefix_len as u64,
            theirs["prefix_len"].as_u64().unwrap(),
            "{at}"
        );
        assert_eq!(ours.rows, theirs["rows"].as_u64().unwrap(), "{at}: rows");
        assert_eq!(
            ours.skipped_short,
            theirs["skipped_short"].as_u64().unwrap(),
            "{at}: skipped"
        );
        close(
            &format!("{at}: pooled loss"),
            ours.overall.loss,
            theirs["loss"].as_f64().unwrap(),
        );
        close(
            &format!("{at}: source-average loss"),
            ours.source_average.loss,
            theirs["source_average_loss"].as_f64().unwrap(),
        );
        close(
            &format!("{at}: source-average ppl"),
            ours.source_average.ppl,
            theirs["source_average_ppl"].as_f64().unwrap(),
        );
        let sources = theirs["sources"].as_object().unwrap();
        assert_eq!(ours.sources.len(), sources.len(), "{at}: sources");
        for (name, score) in &ours.sources {
            let other = &sources[name];
            assert_eq!(
                score.tokens,
                other["tokens"].as_u64().unwrap(),
                "{at} {name}"
            );
            assert_eq!(
                score.examples,
                other["rows"].as_u64().unwrap(),
                "{at} {name}"
            );
            close(
                &format!("{at} {name}: loss"),
                score.loss,
                other["loss"].as_f64().unwrap(),
            );
        }
        let buckets = theirs["positions"].as_array().unwrap();
        assert_eq!(ours.positions.len(), buckets.len(), "{at}: buckets");
        for (b, other) in ours.positions.iter().zip(buckets) {
            let lo = 1usize << other["bucket"].as_u64().unwrap();
            assert_eq!(b.first, lo.max(ours.prefix_len), "{at}: bucket start");
            assert_eq!(b.end, (2 * lo).min(ours.length), "{at}: bucket end");
            assert_eq!(
                b.tokens,
                other["tokens"].as_u64().unwrap(),
                "{at}: bucket tokens"
            );
            close(
                &format!("{at}: mean log-prob of [{}, {})", b.first, b.end),
                b.mean_logprob,
                other["mean_logprob"].as_f64().unwrap(),
            );
        }
    }
}

#[test]
fn every_pair_matches_the_numpy_reference_for_every_architecture() {
    let root = tempfile::tempdir().unwrap();
    let data = grid_corpus(&root.path().join("corpus"));
    let lengths = [12, 24, 32];
    let prefixes = [1, 5, 11];
    for kind in [Kind::Red, Kind::Dec, Kind::DecBiAttn, Kind::DecReset] {
        let checkpoint = trained(root.path(), kind, &data);
        // Batches of 3 rows: short rows fall in different batches than long ones.
        let report = grid(&checkpoint, &data, &lengths, &prefixes, 3).unwrap();
        let expected = reference(&report.checkpoint, &data, &lengths, &prefixes);
        assert_matches_reference(&report, &expected, &format!("{kind:?}"));
        // L = 12 scores every row; L = 24 skips the row of 20 tokens, L = 32 also the one of 27.
        let cell = |l: usize, k: usize| {
            report
                .results
                .iter()
                .find(|c| c.length == l && c.prefix_len == k)
                .unwrap()
        };
        assert_eq!((cell(12, 5).rows, cell(12, 5).skipped_short), (8, 0));
        assert_eq!((cell(24, 5).rows, cell(24, 5).skipped_short), (7, 1));
        assert_eq!((cell(32, 11).rows, cell(32, 11).skipped_short), (6, 2));
        assert_eq!(cell(32, 11).overall.tokens, 6 * 21);
        assert!(
            !cell(32, 11).sources.contains_key("book"),
            "its only row is short"
        );
        // Sources of unequal size: the source average is not the pooled loss.
        let c = cell(12, 1);
        assert_eq!(c.sources["web"].examples, 5);
        assert!((c.source_average.loss - c.overall.loss).abs() > 0.0);
        // Another batch size scores the same rows and tokens to rounding.
        let by_eight = grid(&checkpoint, &data, &lengths, &prefixes, 8).unwrap();
        for (a, b) in by_eight.results.iter().zip(&report.results) {
            assert_eq!((a.rows, a.skipped_short), (b.rows, b.skipped_short));
            assert_eq!(a.overall.tokens, b.overall.tokens);
            assert!((a.overall.loss - b.overall.loss).abs() <= 1e-9 * b.overall.loss.abs());
        }
    }
}

#[test]
fn a_bidirectional_prefix_checkpoint_is_scored_with_its_attention() {
    let root = tempfile::tempdir().unwrap();
    let data = grid_corpus(&root.path().join("corpus"));
    let checkpoint = trained(root.path(), Kind::DecBiAttn, &data);
    let report = grid(&checkpoint, &data, &[32], &[11], 4).unwrap();
    assert!(
        report.attention.contains("bidirectional over the prefix"),
        "{}",
        report.attention
    );
    // The same parameters recorded as a causal run score differently.
    let resolved = report.checkpoint.clone();
    let causal = root.path().join("causal");
    std::fs::create_dir_all(&causal).unwrap();
    for entry in std::fs::read_dir(&resolved).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), causal.join(entry.file_name())).unwrap();
    }
    let meta_path = causal.join("checkpoint.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["settings"]["objective"]["bidirectional_prefix"], true);
    meta["settings"]["objective"]["bidirectional_prefix"] = false.into();
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    let as_causal = grid(&causal, &data, &[32], &[11], 4).unwrap();
    assert_eq!(as_causal.attention, "causal");
    let (bi, ca) = (
        report.results[0].overall.loss,
        as_causal.results[0].overall.loss,
    );
    assert!((bi - ca).abs() > 1e-6, "bidirectional {bi} vs causal {ca}");
    // The single-prefix evaluation uses the checkpoint's attention too, and scores the same
    // tokens as the grid at the full row length.
    let single = |ckpt: &Path| {
        EvalJob::prepare(
            ckpt,
            &data,
            EvalOptions {
                prefix_len: Some(11),
                ..EvalOptions::default()
            },
        )
        .unwrap()
        .run(&mut CpuBackend::new(Some(2)).unwrap(), |_| {})
        .unwrap()
    };
    let bi_single = single(&resolved);
    let full_rows = report.results[0].overall.tokens;
    assert!(
        bi_single.overall.tokens > full_rows,
        "padded rows are scored too"
    );
    // The grid scores only full rows: compare on a source without a padded row.
    let name = "code";
    close(
        &format!("{name}: single-prefix eval vs grid"),
        bi_single.sources[name].loss,
        report.results[0].sources[name].loss,
    );
    close(
        &format!("{name}: causal single-prefix eval vs grid"),
        single(&causal).sources[name].loss,
        as_causal.results[0].sources[name].loss,
    );
    // A packed corpus without a prefix is scored on the rows' targets for a bidirectional
    // checkpoint (scoring every next token would read tokens the prefix already sees).
    let own = EvalJob::prepare(&resolved, &data, EvalOptions::default())
        .unwrap()
        .run(&mut CpuBackend::new(Some(2)).unwrap(), |_| {})
        .unwrap();
    assert_eq!(own.sources["code"].tokens, 2 * (SEQ as u64 / 2));
}

#[test]
fn bad_grids_fail_naming_the_limit() {
    let root = tempfile::tempdir().unwrap();
    let data = grid_corpus(&root.path().join("corpus"));
    let checkpoint = trained(root.path(), Kind::Red, &data);
    let err = |lengths: &[usize], prefixes: &[usize]| match grid(
        &checkpoint,
        &data,
        lengths,
        prefixes,
        4,
    ) {
        Ok(_) => panic!("{lengths:?} x {prefixes:?} was accepted"),
        Err(e) => e.to_string(),
    };
    let e = err(&[16, 64], &[1]);
    assert!(e.contains("--lengths 64") && e.contains("32 tokens"), "{e}");
    let e = err(&[16, 32], &[1, 16]);
    assert!(
        e.contains("--prefix-len 16") && e.contains("limit is 15"),
        "{e}"
    );
    let e = err(&[16], &[0, 4]);
    assert!(e.contains("at least 1"), "{e}");
    let e = err(&[16], &[]);
    assert!(e.contains("--prefix-len"), "{e}");
    // An examples corpus (rows of 5 to 13 tokens): its first 5 rows are all below 13 tokens.
    let examples = examples_corpus(&root.path().join("examples"), 16);
    let job = GridJob::prepare(
        &checkpoint,
        &examples,
        GridOptions {
            lengths: vec![13],
            prefix_lens: vec![4],
            batch_rows: 2,
            max_rows: Some(5),
        },
    )
    .unwrap();
    let e = job
        .run(&mut CpuBackend::new(Some(1)).unwrap(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no row is at least 13 tokens long"), "{e}");
}

#[test]
fn positions_are_written_as_csv_or_jsonl() {
    let root = tempfile::tempdir().unwrap();
    let data = grid_corpus(&root.path().join("corpus"));
    let checkpoint = trained(root.path(), Kind::Dec, &data);
    let report = grid(&checkpoint, &data, &[16, 32], &[1, 9], 8).unwrap();
    let csv = root.path().join("pos.csv");
    write_positions(&report, &csv).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "length,prefix_len,first,end,tokens,mean_logprob");
    // L=16, k=1: buckets [1,2) [2,4) [4,8) [8,16); k=9: [9,16). L=32 adds [16,32).
    assert_eq!(lines.len(), 1 + 4 + 1 + 5 + 2);
    assert!(lines[1].starts_with("16,1,1,2,8,"), "{}", lines[1]);
    assert!(lines[5].starts_with("16,9,9,16,56,"), "{}", lines[5]);
    let jsonl = root.path().join("pos.jsonl");
    write_positions(&report, &jsonl).unwrap();
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["length"], 16);
    assert_eq!(first["first"], 1);
    assert!(first["mean_logprob"].as_f64().unwrap() < 0.0);
    let err = write_positions(&report, &root.path().join("pos.txt")).unwrap_err();
    assert!(err.to_string().contains(".csv or .jsonl"), "{err}");
    // The bucket means pool to the cell's loss.
    for cell in &report.results {
        let (sum, n) = cell.positions.iter().fold((0.0, 0), |(s, n), b| {
            (s + b.mean_logprob * b.tokens as f64, n + b.tokens)
        });
        assert_eq!(n, cell.overall.tokens);
        close("pooled positions", -sum / n as f64, cell.overall.loss);
    }
}

#[test]
fn cuda_grid_matches_the_cpu_at_every_pair() {
    let test = "cuda_grid_matches_the_cpu_at_every_pair";
    let info = cuda_support::device(test);
    cuda_support::require_nvrtc();
    let cache = cuda_support::kernel_cache(&info.arch());
    let options = CudaOptions::from_env().expect("REDPACK_CUDA_* variables");
    let start = |precision| match CudaBackend::new(&info, precision, &cache, options) {
        Ok(b) => b,
        Err(e) => panic!("cannot start the CUDA backend on {}: {e}", info.name),
    };
    let mut gpu = start(Precision::F32);
    // bf16 products and the fused attention kernel (eval's default on a GPU; tiny's head_dim 32
    // has a build): within 2e-3, bf16's precision.
    let mut bf16 = start(Precision::Bf16);
    let root = tempfile::tempdir().unwrap();
    let data = grid_corpus(&root.path().join("corpus"));
    let (lengths, prefixes) = ([12, 32], [1, 11]);
    for kind in [Kind::Red, Kind::Dec, Kind::DecBiAttn, Kind::DecReset] {
        let checkpoint = trained(root.path(), kind, &data);
        let cpu = grid(&checkpoint, &data, &lengths, &prefixes, 3).unwrap();
        let on_gpu = grid_on(&mut gpu, &checkpoint, &data, &lengths, &prefixes, 3).unwrap();
        for (g, c) in on_gpu.results.iter().zip(&cpu.results) {
            let at = format!("{kind:?} L={} k={}", c.length, c.prefix_len);
            assert_eq!((g.length, g.prefix_len), (c.length, c.prefix_len));
            assert_eq!((g.rows, g.skipped_short), (c.rows, c.skipped_short), "{at}");
            assert_eq!(g.overall.tokens, c.overall.tokens, "{at}");
            close(
                &format!("{at}: GPU pooled loss"),
                g.overall.loss,
                c.overall.loss,
            );
            close(
                &format!("{at}: GPU source average"),
                g.source_average.loss,
                c.source_average.loss,
            );
            for (name, score) in &c.sources {
                close(
                    &format!("{at} {name}: GPU loss"),
                    g.sources[name].loss,
                    score.loss,
                );
            }
            assert_eq!(g.positions.len(), c.positions.len(), "{at}");
            for (gb, cb) in g.positions.iter().zip(&c.positions) {
                assert_eq!((gb.first, gb.end, gb.tokens), (cb.first, cb.end, cb.tokens));
                close(
                    &format!("{at}: GPU log-prob of [{}, {})", cb.first, cb.end),
                    gb.mean_logprob,
                    cb.mean_logprob,
                );
            }
        }
        let mixed = grid_on(&mut bf16, &checkpoint, &data, &lengths, &prefixes, 3).unwrap();
        for (g, c) in mixed.results.iter().zip(&cpu.results) {
            let (a, b) = (g.overall.loss, c.overall.loss);
            assert_eq!(g.overall.tokens, c.overall.tokens);
            say(&format!(
                "{kind:?} L={} k={}: bf16 {a} vs CPU {b}",
                c.length, c.prefix_len
            ));
            assert!(
                (a - b).abs() <= 2e-3 * b.abs(),
                "{kind:?} L={} k={}: bf16 loss {a} vs CPU {b}",
                c.length,
                c.prefix_len
            );
        }
    }
}
