//! Throughput of `build-corpus` and of its tokenizer against the `tokenizers` crate.
//!
//! `cargo bench -p redpack --bench build_corpus` (release profile). On one input, in one run,
//! for the GPT-2 tokenizer and for a 32K `Metaspace` BPE trained here on the same text:
//! - the ceiling: `tokenizers` encode of every document, 1 and 2 threads, nothing else;
//! - the fast encoder redpack uses for these tokenizers, alone, 1 and 2 threads, and its ratio
//!   to the `tokenizers` encode at the same thread count;
//! - redpack end to end (read, filter, exact + near dedup, tokenize, pack, write) with 1 and 2
//!   threads: MB/s of text, documents/s, tokens/s, and the ratio to the ceiling;
//! - MinHash signature throughput, and the dedup keys spilled per million documents;
//! - the process's peak resident memory.
//!
//! The input is the real arXiv and Common Crawl samples of `tests/fixtures` plus generated
//! documents (words drawn from the arXiv text, so every document is distinct) up to about
//! `REDPACK_BENCH_MB` (default 8) MB.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use redpack::dedup::exact::fingerprint;
use redpack::dedup::minhash::{MinHashConfig, MinHasher};
use redpack::dedup::normalize::NormalizeConfig;
use redpack::pipeline::{build, BuildOptions, BuildSettings, Overrides, PipelineConfig};
use redpack::record::Content;
use redpack::tokenize::DocTokenizer;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::AddedToken;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn real_texts() -> Vec<String> {
    let arxiv = std::fs::read_to_string(format!("{SHARED}/redpajama/arxiv/arxiv_sample.jsonl"))
        .expect("arxiv sample");
    let mut cc = Vec::new();
    std::fs::File::open(format!(
        "{SHARED}/redpajama/common_crawl/2020-16/en_head_0091.json.gz.dedup.classifier.jsonl.zst"
    ))
    .and_then(|mut f| f.read_to_end(&mut cc))
    .expect("cc sample");
    let cc = String::from_utf8(zstd::decode_all(&cc[..]).expect("zstd")).expect("utf8");
    arxiv
        .lines()
        .chain(cc.lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

/// Real documents, then generated ones until `target_bytes`. Generated words follow the real
/// text's frequency ranking with a heavy skew toward frequent words (roughly Zipf-like), so the
/// tokenizer's word cache behaves as on natural text.
fn corpus(target_bytes: usize) -> Vec<String> {
    let mut docs = real_texts();
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for doc in &docs {
        for word in doc.split_whitespace() {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let vocabulary: Vec<String> = ranked.iter().map(|(w, _)| w.to_string()).collect();
    let mut state = 42u64;
    let mut total: usize = docs.iter().map(String::len).sum();
    let mut generated = Vec::new();
    while total < target_bytes {
        let words = 200 + (splitmix(&mut state) % 3000) as usize;
        let mut doc = String::new();
        for i in 0..words {
            let u = (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
            let rank = ((vocabulary.len() as f64) * u.powi(4)) as usize;
            doc.push_str(&vocabulary[rank.min(vocabulary.len() - 1)]);
            doc.push(if i % 17 == 16 { '\n' } else { ' ' });
        }
        total += doc.len();
        generated.push(doc);
    }
    docs.extend(generated);
    docs
}

fn write_jsonl(dir: &Path, docs: &[String]) -> PathBuf {
    let path = dir.join("c4").join("c4-train.00000-of-01024.jsonl");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut out = String::new();
    for doc in docs {
        out.push_str(&serde_json::json!({ "text": doc, "meta": {} }).to_string());
        out.push('\n');
    }
    std::fs::write(&path, out).expect("write input");
    path
}

/// Seconds and tokens to encode every document with `encode` on `threads` threads.
fn encode_all(
    docs: &[String],
    threads: usize,
    encode: impl Fn(&str) -> usize + Sync,
) -> (f64, u64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let started = Instant::now();
    let tokens: u64 = pool.install(|| {
        docs.par_iter()
            .with_max_len(1)
            .map(|d| encode(d.as_str()) as u64)
            .sum()
    });
    (started.elapsed().as_secs_f64(), tokens)
}

/// A 32K `Metaspace` BPE (SentencePiece-style word boundaries) trained on `docs`, with
/// `[EOD]`, `[PAD]` and `<unk>`.
fn train_metaspace(docs: &[String], path: &Path) {
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(32_000)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            ["[EOD]", "[PAD]", "<unk>"]
                .iter()
                .map(|t| AddedToken::from(t.to_string(), true))
                .collect(),
        )
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let model = BPE::builder()
        .unk_token("<unk>".to_string())
        .build()
        .expect("bpe");
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer
        .train(&mut trainer, docs.iter())
        .expect("train metaspace");
    tokenizer.save(path, false).expect("save metaspace");
}

fn build_once(
    input: &Path,
    tokenizer: &Path,
    threads: usize,
) -> (f64, redpack::pipeline::BuildReport) {
    let out = tempfile::tempdir().expect("tempdir");
    let overrides = Overrides {
        inputs: vec![input.to_path_buf()],
        tokenizer: Some(tokenizer.to_path_buf()),
        threads: Some(threads),
        ..Overrides::default()
    };
    let settings = BuildSettings::resolve(
        PipelineConfig::default(),
        overrides,
        out.path().to_path_buf(),
    )
    .expect("settings");
    let started = Instant::now();
    let report = build(&settings, &BuildOptions::default()).expect("build");
    (started.elapsed().as_secs_f64(), report)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let target_mb: usize = std::env::var("REDPACK_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let docs = corpus(target_mb << 20);
    let bytes: usize = docs.iter().map(String::len).sum();
    let mb = bytes as f64 / 1e6;
    println!(
        "input: {} documents, {:.1} MB of text; {} cores",
        docs.len(),
        mb,
        num_cpus()
    );
    let data = tempfile::tempdir().expect("tempdir");
    let input = write_jsonl(data.path(), &docs);
    let metaspace_path = data.path().join("metaspace-32k.json");
    train_metaspace(&docs, &metaspace_path);
    let tokenizers_list = [
        (
            "gpt2",
            PathBuf::from(format!("{SHARED}/tokenizers/gpt2.json")),
        ),
        ("metaspace-32k", metaspace_path),
    ];
    // Best of `REPEATS` runs each, interleaved, to damp noise from other processes.
    const REPEATS: usize = 3;
    for (name, path) in &tokenizers_list {
        let tokenizer = DocTokenizer::from_file(path, None, None).expect("tokenizer");
        println!();
        println!(
            "tokenizer {name} ({} ids): {}",
            tokenizer.vocab_size(),
            tokenizer.encoder()
        );
        println!(
            "{:<36} {:>8} {:>9} {:>10} {:>12} {:>10} {:>10}",
            "", "seconds", "MB/s", "docs/s", "tokens/s", "vs crate", "per thread"
        );
        let fast = tokenizer.fast().expect("the fast encoder applies");
        let mut one_thread = [0.0f64; 3];
        for threads in [1, 2] {
            let mut best = [(f64::INFINITY, 0u64); 3];
            let mut report = None;
            for _ in 0..REPEATS {
                let runs = [
                    encode_all(&docs, threads, |d| {
                        tokenizer.encode_reference(d).map_or(0, |ids| ids.len())
                    }),
                    encode_all(&docs, threads, |d| fast.encode(d).len()),
                ];
                for (slot, run) in best.iter_mut().zip(runs) {
                    if run.0 < slot.0 {
                        *slot = run;
                    }
                }
                let (seconds, built) = build_once(&input, path, threads);
                if seconds < best[2].0 {
                    best[2] = (seconds, built.counts.tokens);
                    report = Some(built);
                }
            }
            let report = report.expect("at least one build");
            let ceiling = best[0].1 as f64 / best[0].0;
            let labels = [
                format!("tokenizers encode, {threads} thread(s)"),
                format!("fast encoder, {threads} thread(s)"),
                format!("redpack build-corpus, {threads} thread(s)"),
            ];
            for (i, label) in labels.iter().enumerate() {
                let (seconds, tokens) = best[i];
                let rate = tokens as f64 / seconds;
                if threads == 1 {
                    one_thread[i] = rate;
                }
                let docs_per_s = if i == 2 {
                    report.counts.records_read as f64 / seconds
                } else {
                    docs.len() as f64 / seconds
                };
                println!(
                    "{:<36} {:>8.2} {:>9.2} {:>10.0} {:>12.0} {:>9.2}x {:>9.2}x",
                    label,
                    seconds,
                    mb / seconds,
                    docs_per_s,
                    rate,
                    rate / ceiling,
                    rate / one_thread[i] / threads as f64
                );
            }
            let stages: Vec<String> = report
                .throughput
                .stages
                .iter()
                .map(|s| format!("{} {:.3}", s.stage, s.seconds))
                .collect();
            println!("  build-corpus seconds per stage: {}", stages.join(", "));
        }
    }
    println!();
    println!(
        "vs crate: tokens/s over the tokenizers crate's encode at the same thread count (build-corpus: its \
         tokens include one end-of-document token per document); per thread: tokens/s over \
         threads x the 1-thread rate"
    );
    println!(
        "peak resident memory after the builds: {:.0} MiB (input text held by the benchmark included)",
        peak_rss_mib()
    );

    // MinHash signatures (normalization included), one thread.
    let normalize = NormalizeConfig::default();
    let hasher = MinHasher::new(&MinHashConfig::default());
    let started = Instant::now();
    let mut scratch = String::new();
    let mut signatures = 0usize;
    for doc in &docs {
        normalize.normalize_into(doc, &mut scratch);
        signatures += usize::from(hasher.signature(&scratch).is_some());
    }
    let seconds = started.elapsed().as_secs_f64();
    println!();
    println!(
        "MinHash signatures (normalize + 5-gram, 112 lanes), 1 thread: {:.1} MB/s, {:.0} docs/s ({signatures} docs)",
        mb / seconds,
        docs.len() as f64 / seconds
    );
    let started = Instant::now();
    for doc in &docs {
        std::hint::black_box(fingerprint(
            &Content::Text(doc.clone()),
            &normalize,
            &mut scratch,
        ));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "exact fingerprints (normalize + xxh3-128), 1 thread: {:.1} MB/s",
        mb / seconds
    );

    // What the out-of-core dedup writes per document instead of holding it: one fingerprint
    // record and one record per band, sorted on disk (see `cli/benches/scale.py` for memory and
    // time at millions of documents).
    let config = MinHashConfig::default();
    let per_doc = 24 + 18 * config.bands;
    println!(
        "dedup keys spilled per million documents: {:.0} MiB ({per_doc} bytes each: a 24-byte fingerprint record + {} band records of 18 bytes); with verify_threshold, {:.0} MiB more of signatures",
        (per_doc as f64) * 1e6 / (1024.0 * 1024.0),
        config.bands,
        (8 + 4 * config.num_hashes()) as f64 * 1e6 / (1024.0 * 1024.0)
    );
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
