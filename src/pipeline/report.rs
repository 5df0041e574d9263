//! What a build reports: the [`BuildReport`] (printed as JSON with `--json`) and the summary
//! table printed at the end of a build.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use redpack_schemas::{Counts, PackingStats, Split, TokenizerInfo};
use serde::Serialize;

use crate::inspect::counts_table;

/// The outcome of one build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub out_dir: String,
    /// `packed` or `examples`.
    pub kind: String,
    pub counts: Counts,
    pub sources: BTreeMap<String, Counts>,
    pub packing: PackingStats,
    pub tokenizer: TokenizerInfo,
    /// What encoded the documents: the fast encoder's kind, or the `tokenizers` crate and why.
    pub encoder: String,
    /// Whether the tokenizer was trained by this build.
    pub tokenizer_trained: bool,
    pub shards: usize,
    pub input_files: usize,
    /// Input files that could not be read to their end: path and what happened.
    pub faults: Vec<String>,
    /// `rejects.jsonl` in the output directory, when anything was rejected.
    pub rejects_file: Option<String>,
    pub throughput: Throughput,
    /// Bytes of dedup keys (fingerprints and band keys) the scan wrote to the work directory.
    pub dedup_work_bytes: u64,
    /// The held-out evaluation corpus, when the build made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<Box<EvalReport>>,
}

/// The evaluation corpus of a build with `eval_docs` (`OUT/eval/`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub out_dir: String,
    /// `packed` or `examples`.
    pub kind: String,
    /// Tokens per row of a packed evaluation corpus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<u32>,
    pub counts: Counts,
    pub sources: BTreeMap<String, Counts>,
    pub packing: PackingStats,
    pub shards: usize,
    /// The split as both manifests record it (this one's side: `eval`).
    pub split: Split,
}

/// Wall-clock throughput of a build (tokenizer training excluded).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    pub seconds: f64,
    /// Input bytes read from disk.
    pub input_bytes: u64,
    /// Text bytes of the records read (decompressed).
    pub text_bytes: u64,
    pub threads: usize,
    pub text_mb_per_s: f64,
    pub records_per_s: f64,
    pub tokens_per_s: f64,
    /// Wall-clock seconds of each stage, in order (`load` is reading the configuration and the
    /// tokenizer before the plan); a resumed build counts only the work it ran.
    pub stages: Vec<StageSeconds>,
}

/// Wall-clock seconds one stage of a build took.
#[derive(Debug, Clone, Serialize)]
pub struct StageSeconds {
    pub stage: &'static str,
    pub seconds: f64,
}

impl Throughput {
    pub fn new(
        seconds: f64,
        input_bytes: u64,
        text_bytes: u64,
        records: u64,
        tokens: u64,
        threads: usize,
    ) -> Self {
        let per_s = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        Throughput {
            seconds,
            input_bytes,
            text_bytes,
            threads,
            text_mb_per_s: per_s(text_bytes as f64 / 1e6),
            records_per_s: per_s(records as f64),
            tokens_per_s: per_s(tokens as f64),
            stages: Vec::new(),
        }
    }
}

impl BuildReport {
    /// A human-readable summary: per-source table, packing, rejects, faults and throughput.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} corpus in {}: {} examples, {} tokens, {} shard(s)",
            self.kind, self.out_dir, self.counts.examples, self.counts.tokens, self.shards
        );
        let _ = writeln!(
            out,
            "tokenizer: {} (vocab {}, eod {:?} = {}, pad {:?} = {}){}",
            self.tokenizer.file,
            self.tokenizer.vocab_size,
            self.tokenizer.eod_token,
            self.tokenizer.eod_id,
            self.tokenizer.pad_token,
            self.tokenizer.pad_id,
            if self.tokenizer_trained {
                ", trained by this build"
            } else {
                ""
            }
        );
        out.push_str(&counts_table(&self.counts, &self.sources));
        if !self.counts.rejected_by_reason.is_empty() {
            let reasons: Vec<String> = self
                .counts
                .rejected_by_reason
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            let _ = writeln!(out, "rejected: {}", reasons.join(", "));
        }
        if let Some(file) = &self.rejects_file {
            let _ = writeln!(out, "examples of each reject reason: {file}");
        }
        for fault in &self.faults {
            let _ = writeln!(out, "file fault: {fault}");
        }
        let p = &self.packing;
        let _ = writeln!(
            out,
            "packing: {} documents, {} padding tokens, {} dropped tokens in {} sequence(s), {} inputs and {} targets truncated",
            p.documents, p.padding_tokens, p.dropped_tokens, p.dropped_sequences, p.truncated_inputs, p.truncated_targets
        );
        if let Some(eval) = &self.eval {
            let d = eval.split.documents;
            let _ = writeln!(
                out,
                "evaluation split: {} of {} kept documents held out to {} ({} corpus{}: {} examples, {} tokens, {} shard(s))",
                d.eval,
                d.train + d.eval,
                eval.out_dir,
                eval.kind,
                eval.seq_len.map(|l| format!(" of {l}-token rows")).unwrap_or_default(),
                eval.counts.examples,
                eval.counts.tokens,
                eval.shards
            );
            let per_source: Vec<String> = eval
                .split
                .sources
                .iter()
                .map(|(name, side)| format!("{name} {}/{}", side.eval, side.train + side.eval))
                .collect();
            let _ = writeln!(out, "held out per source: {}", per_source.join(", "));
            if eval.counts.examples == 0 {
                let _ = writeln!(
                    out,
                    "warning: the evaluation corpus has no rows: its {} tokens do not fill one row{}",
                    eval.packing.dropped_tokens,
                    eval.seq_len.map(|l| format!(" of {l} (lower --eval-seq-len or raise --eval-docs)")).unwrap_or_default()
                );
            }
        }
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "{:.2} s on {} thread(s): {:.2} MB/s of text, {:.0} records/s, {:.0} tokens/s; dedup keys {:.1} MiB",
            t.seconds,
            t.threads,
            t.text_mb_per_s,
            t.records_per_s,
            t.tokens_per_s,
            self.dedup_work_bytes as f64 / (1024.0 * 1024.0)
        );
        if !t.stages.is_empty() {
            let stages: Vec<String> = t
                .stages
                .iter()
                .map(|s| format!("{} {:.2}", s.stage, s.seconds))
                .collect();
            let _ = writeln!(out, "seconds per stage: {}", stages.join(", "));
        }
        out
    }
}
