//! The built-in sample corpus behind `redpack build-corpus` with no arguments.
//!
//! [`write_sample`] writes, into a directory, a small corpus in every real layout redpack reads
//! (RedPajama V1 as distributed by Together, FLAN as exported by its
//! collection scripts): all RedPajama V1 subsets as plain JSONL,
//! common_crawl as zstd JSONL with flat records, FLAN as Parquet and as gzipped JSONL. It plants
//! what the pipeline must handle (`meta` in its four forms, exact duplicates with whitespace and
//! case variations, near duplicates, one malformed record of each kind, a zstd file cut short)
//! and returns a [`SampleReport`] that says exactly what was planted, so tests can check every
//! count. The same seed gives byte-identical files.

mod flan;
mod meta;
mod redpajama;
pub mod synthetic;
mod text;
mod words;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::record::RejectReason;

pub use text::Rng;

/// Where the RedPajama part is written, below the sample directory (the published layout).
pub const REDPAJAMA_ROOT: &str = "redpajama-data-1T/v1.0.0";
/// Where the FLAN part is written.
pub const FLAN_ROOT: &str = "flan";

/// How a planted duplicate differs from its original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlantKind {
    /// Byte-identical text.
    Identical,
    /// Same words, different spacing and line breaks.
    Whitespace,
    /// Same text in other letter case.
    Case,
    /// A few words changed (word 5-gram Jaccard ≥ 0.8).
    Near,
    /// A FLAN example whose (input, target) pair repeats an earlier one.
    FlanPair,
}

/// A record as the input reader will place it: path relative to the sample directory, and
/// 1-based line (JSONL) or 0-based row (Parquet).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SamplePlace {
    pub file: String,
    pub line: u64,
}

/// One planted duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Planted {
    pub kind: PlantKind,
    pub original: SamplePlace,
    pub copy: SamplePlace,
    /// Word 5-gram Jaccard similarity of copy and original after lowercasing (1.0 for exact).
    pub jaccard: f64,
}

/// One written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleFile {
    /// Relative to the sample directory, `/`-separated.
    pub path: String,
    pub source: String,
    /// Readable records (documents or examples), duplicates included.
    pub records: u64,
    /// Malformed lines or rows, which the reader rejects.
    pub rejects: u64,
    /// True when the file is cut short (its reader reports a fault).
    pub truncated: bool,
}

/// What [`write_sample`] wrote and planted.
#[derive(Debug, Clone, Default)]
pub struct SampleReport {
    pub root: PathBuf,
    pub files: Vec<SampleFile>,
    /// Readable RedPajama documents, planted copies and the empty one included.
    pub documents: u64,
    /// Readable FLAN examples, duplicates included.
    pub examples: u64,
    /// Documents whose text is empty (to be filtered, not rejected).
    pub empty_documents: u64,
    pub planted: Vec<Planted>,
    /// Expected rejects by reason.
    pub rejects: BTreeMap<RejectReason, u64>,
    /// How many documents carry `meta` as object, JSON string, Python repr, or not at all.
    pub meta_forms: BTreeMap<&'static str, u64>,
    pub bytes: u64,
}

impl SampleReport {
    /// Number of planted duplicates of `kind`.
    pub fn planted_count(&self, kind: PlantKind) -> u64 {
        self.planted.iter().filter(|p| p.kind == kind).count() as u64
    }

    /// Planted exact duplicates of documents (identical, whitespace or case variants).
    pub fn exact_duplicates(&self) -> u64 {
        [PlantKind::Identical, PlantKind::Whitespace, PlantKind::Case]
            .into_iter()
            .map(|kind| self.planted_count(kind))
            .sum()
    }

    /// Total expected rejects.
    pub fn total_rejects(&self) -> u64 {
        self.rejects.values().sum()
    }

    /// Files cut short.
    pub fn truncated_files(&self) -> u64 {
        self.files.iter().filter(|f| f.truncated).count() as u64
    }

    fn add_reject(&mut self, reason: RejectReason) {
        *self.rejects.entry(reason).or_default() += 1;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: writing Parquet: {message}")]
    Parquet { path: PathBuf, message: String },
}

/// Writes the sample corpus into `dir` (created if needed; existing sample files are replaced).
pub fn write_sample(dir: &Path, seed: u64) -> Result<SampleReport, SampleError> {
    let mut report = SampleReport {
        root: dir.to_owned(),
        ..SampleReport::default()
    };
    let mut rng = Rng::new(seed);
    redpajama::write(dir, &mut rng, &mut report)?;
    flan::write(dir, &mut rng, &mut report)?;
    Ok(report)
}

/// Writes `bytes` to `dir/relative`, creating folders, and counts them in the report.
fn write_file(
    dir: &Path,
    relative: &str,
    bytes: &[u8],
    report: &mut SampleReport,
) -> Result<(), SampleError> {
    let path = dir.join(relative);
    let io = |source| SampleError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, bytes).map_err(io)?;
    report.bytes += bytes.len() as u64;
    Ok(())
}

/// Word 5-gram Jaccard similarity after lowercasing and splitting on whitespace.
pub fn jaccard_5grams(a: &str, b: &str) -> f64 {
    fn shingles(text: &str) -> std::collections::HashSet<Vec<String>> {
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        words.windows(5).map(<[String]>::to_vec).collect()
    }
    let (a, b) = (shingles(a), shingles(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}
