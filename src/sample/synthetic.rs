//! Large synthetic RedPajama corpora with planted duplicate clusters, for scale tests and
//! benchmarks (`redpack synth-corpus`).
//!
//! Documents are short generated prose written in the published layout: half the files as C4
//! (`c4/c4-train.NNNNN-of-01024.jsonl`, plain JSONL with `meta`), the rest as Common Crawl
//! (`common_crawl/2023-06/en_head_NNNN.json.gz.dedup.classifier.jsonl.zst`, zstd JSONL with the
//! flat cc_net fields). Files are written in parallel, one per task.
//!
//! Everything about document `i` is a pure function of the seed and `i`: its role (fresh, exact
//! copy, near copy) comes from a hash, its text and meta from an [`Rng`] seeded by the pair. A
//! copy regenerates its original from the original's index instead of reading it back, so the
//! files can be written in any order by any number of threads and still come out byte for byte
//! the same.
//!
//! Duplicate clusters: every `stride`-th document is a cluster head (always fresh); each copy
//! picks a head from an earlier file (with one file: an earlier line), so clusters span files,
//! and hence workers of a multi-machine build, and "the first in input order survives" keeps
//! the head. Exact copies may differ in spacing or letter case (which normalization removes);
//! near copies replace a few words so that the word 5-gram Jaccard similarity stays at or above
//! [`NEAR_MIN_JACCARD`].

mod prose;

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use redpack_schemas::{atomic, SchemaError};
use serde::{Deserialize, Serialize};

use super::text::Rng;
use prose::{write_json_string, write_prose};

/// The ground-truth summary written next to the data (not a data file: the input walk skips it).
pub const SUMMARY_FILE: &str = "synth.json";
/// Documents per file when `files` is not given.
pub const DOCS_PER_FILE: u64 = 100_000;
/// At most this many files (the file names have four or five digits).
pub const MAX_FILES: usize = 10_000;
/// Near copies keep at least this word 5-gram Jaccard similarity with their original (the
/// default MinHash LSH finds such pairs with probability above 0.99).
pub const NEAR_MIN_JACCARD: f64 = 0.88;
/// Mean number of copies per cluster head.
const MEAN_COPIES: f64 = 4.0;
/// The Common Crawl dump the cc files are placed in.
const DUMP: &str = "2023-06";
/// Replacement words of near copies; none occurs in the generator's word lists.
const REPLACEMENTS: &[&str] = &[
    "walrus",
    "origami",
    "zeppelin",
    "quasar",
    "marmalade",
    "tundra",
    "kazoo",
    "hammock",
];

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    pub docs: u64,
    /// Files to spread the documents over (default: one per [`DOCS_PER_FILE`] documents).
    pub files: Option<usize>,
    pub seed: u64,
    /// Words per fresh document, inclusive (sentences are whole, so a few more).
    pub words: (usize, usize),
    /// Fraction of all documents that are exact copies of an earlier one.
    pub exact_rate: f64,
    /// Fraction of all documents that are near copies of an earlier one.
    pub near_rate: f64,
}

impl SynthConfig {
    pub fn new(docs: u64) -> Self {
        SynthConfig {
            docs,
            files: None,
            seed: 0,
            words: (40, 120),
            exact_rate: 0.05,
            near_rate: 0.05,
        }
    }

    /// The number of files: as asked, else one per [`DOCS_PER_FILE`], never more than docs.
    pub fn file_count(&self) -> usize {
        let files = self
            .files
            .unwrap_or_else(|| self.docs.div_ceil(DOCS_PER_FILE) as usize);
        files.clamp(1, self.docs.clamp(1, MAX_FILES as u64) as usize)
    }

    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |message: String| Err(SynthError::Config(message));
        let (min, max) = self.words;
        if self.docs == 0 {
            return bad("the document count must be at least 1".into());
        }
        if self.files.is_some_and(|f| f == 0 || f > MAX_FILES) {
            return bad(format!("the file count must be between 1 and {MAX_FILES}"));
        }
        if min < 20 || max < min || max > 100_000 {
            return bad(format!(
                "words {min}..{max}: need 20 <= MIN <= MAX <= 100000 (near copies need 20 words)"
            ));
        }
        let rates = [("exact", self.exact_rate), ("near", self.near_rate)];
        if let Some((name, rate)) = rates.iter().find(|(_, r)| !(0.0..=0.5).contains(r)) {
            return bad(format!("the {name} rate {rate} is not between 0 and 0.5"));
        }
        if self.exact_rate + self.near_rate > 0.5 {
            return bad("the exact and near rates add up to more than 0.5".into());
        }
        Ok(())
    }
}

/// One written file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthFile {
    /// Relative to the corpus directory, `/`-separated.
    pub path: String,
    pub docs: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// The ground truth of a generated corpus (`synth.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthSummary {
    pub docs: u64,
    pub files: usize,
    pub seed: u64,
    pub words: (usize, usize),
    pub exact_rate: f64,
    pub near_rate: f64,
    /// Planted exact copies (identical after normalization): an exact dedup removes these.
    pub exact_duplicates: u64,
    /// Planted near copies: a near dedup removes these.
    pub near_duplicates: u64,
    /// Bytes on disk, all files.
    pub bytes: u64,
    /// Bytes of document text (UTF-8, before JSON escaping).
    pub text_bytes: u64,
    pub file_list: Vec<SynthFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid {SUMMARY_FILE}: {source}")]
    Summary {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(
        "{dir} is not empty and holds no {SUMMARY_FILE} of an earlier synthetic corpus; \
         use a new or empty directory"
    )]
    NotEmpty { dir: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What document `i` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Fresh,
    Exact,
    Near,
}

/// Where every document goes and what it is; pure functions of the config.
#[derive(Debug, Clone)]
struct Layout {
    docs: u64,
    files: usize,
    c4_files: usize,
    seed: u64,
    words: (usize, usize),
    /// Every `stride`-th document is a cluster head.
    stride: u64,
    /// Probabilities of a non-head document of a later file being an exact / near copy.
    exact_p: f64,
    near_p: f64,
}

/// A 64-bit mix of a seed, a salt and an index (SplitMix64's finalizer).
fn mix(seed: u64, salt: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(salt.wrapping_mul(0xD6E8_FEB8_6659_FD93))
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const ROLE_SALT: u64 = 1;
const DOC_SALT: u64 = 2;

impl Layout {
    fn new(config: &SynthConfig) -> Self {
        let files = config.file_count();
        let rate = config.exact_rate + config.near_rate;
        let stride = if rate > 0.0 {
            ((MEAN_COPIES / rate).round() as u64).max(2)
        } else {
            u64::MAX
        };
        // Copies can only be in files after the first (with one file: anywhere) and never at a
        // head, so the documents that may be copies are drawn more often to meet the rates.
        let later = if files > 1 {
            (files - 1) as f64 / files as f64
        } else {
            1.0
        };
        let eligible = later * (1.0 - 1.0 / stride as f64);
        let scale = if rate > 0.0 {
            (1.0 / eligible).min(1.0 / rate)
        } else {
            0.0
        };
        Layout {
            docs: config.docs,
            files,
            c4_files: files / 2,
            seed: config.seed,
            words: config.words,
            stride,
            exact_p: config.exact_rate * scale,
            near_p: config.near_rate * scale,
        }
    }

    /// The documents of file `file`: indexes `start..end`.
    fn file_docs(&self, file: usize) -> (u64, u64) {
        let at = |f: usize| (u128::from(self.docs) * f as u128 / self.files as u128) as u64;
        (at(file), at(file + 1))
    }

    /// Relative path of file `file`; the order of indexes is the sorted order of paths.
    fn file_path(&self, file: usize) -> String {
        if file < self.c4_files {
            format!("c4/c4-train.{file:05}-of-01024.jsonl")
        } else {
            let part = file - self.c4_files;
            format!("common_crawl/{DUMP}/en_head_{part:04}.json.gz.dedup.classifier.jsonl.zst")
        }
    }

    fn role(&self, index: u64, file: usize) -> Role {
        if index.is_multiple_of(self.stride) || (file == 0 && self.files > 1) {
            return Role::Fresh;
        }
        let u = (mix(self.seed, ROLE_SALT, index) >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.exact_p {
            Role::Exact
        } else if u < self.exact_p + self.near_p {
            Role::Near
        } else {
            Role::Fresh
        }
    }

    /// A cluster head before document `index` of `file`: in an earlier file when there is one.
    fn pick_head(&self, index: u64, file: usize, rng: &mut Rng) -> u64 {
        let end = if self.files > 1 {
            self.file_docs(file).0
        } else {
            index
        };
        let heads = end.div_ceil(self.stride);
        (rng.next_u64() % heads.max(1)) * self.stride
    }

    fn doc_rng(&self, index: u64) -> Rng {
        Rng::new(mix(self.seed, DOC_SALT, index))
    }

    /// The text of fresh document `index` (also what its copies are made from).
    fn fresh_text(&self, index: u64, out: &mut String) -> Rng {
        let mut rng = self.doc_rng(index);
        let words = rng.range(self.words.0, self.words.1);
        write_prose(&mut rng, words, out);
        rng
    }
}

/// Writes the corpus into `dir` (created if needed). A directory holding an earlier synthetic
/// corpus is reused (its files are replaced); any other non-empty directory is refused.
pub fn write_synthetic(dir: &Path, config: &SynthConfig) -> Result<SynthSummary, SynthError> {
    config.validate()?;
    prepare_dir(dir)?;
    let layout = Layout::new(config);
    let file_list = (0..layout.files)
        .into_par_iter()
        .map(|file| write_file(dir, &layout, file))
        .collect::<Result<Vec<_>, _>>()?;
    let summary = SynthSummary {
        docs: config.docs,
        files: layout.files,
        seed: config.seed,
        words: config.words,
        exact_rate: config.exact_rate,
        near_rate: config.near_rate,
        exact_duplicates: file_list.iter().map(|f| f.0.exact_duplicates).sum(),
        near_duplicates: file_list.iter().map(|f| f.0.near_duplicates).sum(),
        bytes: file_list.iter().map(|f| f.0.bytes).sum(),
        text_bytes: file_list.iter().map(|f| f.1).sum(),
        file_list: file_list.into_iter().map(|f| f.0).collect(),
    };
    let path = dir.join(SUMMARY_FILE);
    let json = serde_json::to_vec_pretty(&summary).map_err(|source| SynthError::Summary {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, |out| out.write_all(&json))?;
    Ok(summary)
}

/// Reads `dir/synth.json`.
pub fn read_summary(dir: &Path) -> Result<SynthSummary, SynthError> {
    let path = dir.join(SUMMARY_FILE);
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| SynthError::Summary { path, source })
}

/// Creates `dir`, or clears the files of the earlier synthetic corpus it holds.
fn prepare_dir(dir: &Path) -> Result<(), SynthError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    if dir.join(SUMMARY_FILE).exists() {
        for file in read_summary(dir)?.file_list {
            let path = dir.join(&file.path);
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(&path)(err));
                }
                _ => {}
            }
        }
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    if entries.next().is_some() {
        return Err(SynthError::NotEmpty {
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// Writes `path` through a hidden temporary file in the same folder, then renames it
/// ([`atomic`]).
fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), SynthError> {
    let temp = atomic::temp_path(path);
    let file = std::fs::File::create(&temp).map_err(io_error(&temp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    body(&mut out).map_err(io_error(&temp))?;
    let file = out
        .into_inner()
        .map_err(|err| io_error(&temp)(err.into_error()))?;
    file.sync_all().map_err(io_error(&temp))?;
    drop(file);
    atomic::commit(&temp, path).map_err(|err| match err {
        SchemaError::Io { path, source } => SynthError::Io { path, source },
        other => io_error(path)(std::io::Error::other(other)),
    })
}

/// Writes one file; returns it and its text bytes.
fn write_file(dir: &Path, layout: &Layout, file: usize) -> Result<(SynthFile, u64), SynthError> {
    let relative = layout.file_path(file);
    let path = dir.join(&relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let mut counts = SynthFile {
        path: relative,
        docs: 0,
        exact_duplicates: 0,
        near_duplicates: 0,
        bytes: 0,
    };
    let mut text_bytes = 0;
    let zstd = file >= layout.c4_files;
    write_atomic(&path, |out| {
        if zstd {
            let mut encoder = zstd::stream::write::Encoder::new(out, 3)?;
            write_docs(layout, file, &mut encoder, &mut counts, &mut text_bytes)?;
            encoder.finish()?.flush()
        } else {
            write_docs(layout, file, out, &mut counts, &mut text_bytes)
        }
    })?;
    counts.bytes = std::fs::metadata(&path).map_err(io_error(&path))?.len();
    Ok((counts, text_bytes))
}

/// Generates the documents of `file` as JSON lines into `out`.
fn write_docs(
    layout: &Layout,
    file: usize,
    out: &mut impl Write,
    counts: &mut SynthFile,
    text_bytes: &mut u64,
) -> std::io::Result<()> {
    let (start, end) = layout.file_docs(file);
    let cc = file >= layout.c4_files;
    let part = file.saturating_sub(layout.c4_files);
    let mut original = String::new();
    let mut text = String::new();
    let mut chunk = String::with_capacity((1 << 20) + (1 << 16));
    for index in start..end {
        let mut rng = match layout.role(index, file) {
            Role::Fresh => layout.fresh_text(index, &mut text),
            role => {
                let mut rng = layout.doc_rng(index);
                let head = layout.pick_head(index, file, &mut rng);
                layout.fresh_text(head, &mut original);
                if role == Role::Exact {
                    exact_copy(&original, &mut rng, &mut text);
                    counts.exact_duplicates += 1;
                } else {
                    near_copy(&original, index, &mut rng, &mut text);
                    counts.near_duplicates += 1;
                }
                rng
            }
        };
        *text_bytes += text.len() as u64;
        chunk.push_str("{\"text\": ");
        write_json_string(&text, &mut chunk);
        if cc {
            let prob = 5000 + rng.below(5000);
            let line = index - start;
            let _ = write!(
                chunk,
                ", \"pred_label\": \"__label__wiki\", \"pred_label_prob\": 0.{prob}, \
                 \"wiki_prob\": 0.{prob}, \"source\": \"cc/{DUMP}/en_head_{part:04}.json.gz/line{line}\"}}"
            );
        } else {
            let _ = write!(
                chunk,
                ", \"meta\": {{\"timestamp\": \"2019-{:02}-{:02}T{:02}:{:02}:{:02}Z\", \
                 \"url\": \"https://www.{}.com/{}/{}\", \"language\": \"en\", \"source\": \"c4\"}}}}",
                1 + rng.below(12),
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.hex(8),
                rng.hex(4),
                rng.next_u64() % 1_000_000
            );
        }
        chunk.push('\n');
        counts.docs += 1;
        if chunk.len() >= 1 << 20 {
            out.write_all(chunk.as_bytes())?;
            chunk.clear();
        }
    }
    out.write_all(chunk.as_bytes())
}

/// An exact copy of `original`: identical, respaced, upper-cased, or both.
fn exact_copy(original: &str, rng: &mut Rng, out: &mut String) {
    out.clear();
    let kind = rng.below(4);
    if kind == 0 {
        out.push_str(original);
        return;
    }
    let spaced = kind != 2;
    if spaced {
        out.push_str("  ");
    }
    for (i, word) in original.split(' ').enumerate() {
        if i > 0 {
            out.push_str(if spaced && rng.chance(20) {
                " \t "
            } else {
                " "
            });
        }
        if kind == 1 {
            out.push_str(word);
        } else {
            out.extend(word.chars().map(|c| c.to_ascii_uppercase()));
        }
    }
    if spaced {
        out.push_str(" \n");
    }
}

/// A near copy of `original`: a few words replaced so that at most the fraction of word
/// 5-grams [`NEAR_MIN_JACCARD`] allows changes. The replacements end in `tag` (the copy's
/// index), so two near copies of one original never coincide (which would make one an exact
/// duplicate of the other). Returns the number of changed 5-grams.
fn near_copy(original: &str, tag: u64, rng: &mut Rng, out: &mut String) -> usize {
    let words: Vec<(usize, usize)> = original
        .split_ascii_whitespace()
        .map(|w| {
            let start = w.as_ptr() as usize - original.as_ptr() as usize;
            (start, start + w.len())
        })
        .collect();
    let n = words.len();
    let shingles = n.saturating_sub(4).max(1);
    // Replacing a word changes the 5-grams that contain it: 5 in the middle, `i + 1` for the
    // word at index `i < 4` of the start. J = (m - c) / (m + c) for c changed of m 5-grams.
    let ratio = (1.0 - NEAR_MIN_JACCARD) / (1.0 + NEAR_MIN_JACCARD);
    let budget = ((shingles as f64 * ratio) as usize).max(1);
    let middle = if n >= 20 { budget / 5 } else { 0 };
    let mut changes: Vec<usize> = Vec::with_capacity(middle + 1);
    if n >= 20 {
        // Evenly spaced in 8..=n-5, at least 5 apart, so no 5-gram holds two changes.
        let span = (n - 13) / (middle + 1);
        for t in 0..middle {
            let at = 8 + span * (t + 1) - rng.below(span.clamp(1, 5));
            changes.push(at.min(n - 5));
        }
    }
    let mut changed = 5 * changes.len();
    let rest = budget - changed;
    if rest > 0 && n >= 9 {
        // The word at index `i < 4` is in `i + 1` 5-grams.
        changes.insert(0, rest.min(4) - 1);
        changed += rest.min(4);
    } else if changes.is_empty() {
        changes.push(n.saturating_sub(1));
        changed += 1;
    }
    out.clear();
    let mut at = 0;
    for &i in &changes {
        let Some(&(start, end)) = words.get(i) else {
            continue;
        };
        out.push_str(&original[at..start]);
        out.push_str(REPLACEMENTS[rng.below(REPLACEMENTS.len())]);
        let _ = write!(out, "{tag}");
        // Keep the sentence's punctuation.
        if let Some(last) = original[start..end]
            .chars()
            .last()
            .filter(|c| !c.is_alphanumeric())
        {
            out.push(last);
        }
        at = end;
    }
    out.push_str(&original[at..]);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::jaccard_5grams;

    fn normalized(text: &str) -> String {
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    }

    fn small(docs: u64, files: usize) -> SynthConfig {
        SynthConfig {
            files: Some(files),
            seed: 7,
            exact_rate: 0.1,
            near_rate: 0.1,
            ..SynthConfig::new(docs)
        }
    }

    fn write_with_threads(dir: &Path, config: &SynthConfig, threads: usize) -> SynthSummary {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| write_synthetic(dir, config))
            .unwrap()
    }

    #[test]
    fn same_seed_same_bytes_whatever_the_thread_count() {
        let config = small(2000, 5);
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = write_with_threads(one.path(), &config, 1);
        let b = write_with_threads(two.path(), &config, 2);
        assert_eq!(a, b);
        assert_eq!(a.file_list.len(), 5);
        for file in &a.file_list {
            let read = |dir: &Path| std::fs::read(dir.join(&file.path)).unwrap();
            assert!(read(one.path()) == read(two.path()), "{}", file.path);
        }
        let other = write_with_threads(two.path(), &SynthConfig { seed: 8, ..config }, 2);
        assert_ne!(a.bytes, other.bytes);
        assert_eq!(read_summary(two.path()).unwrap(), other);
    }

    #[test]
    fn planted_rates_are_met_and_copies_sit_in_later_files() {
        let config = small(20_000, 4);
        let layout = Layout::new(&config);
        let (mut exact, mut near) = (0u64, 0u64);
        for file in 0..layout.files {
            let (start, end) = layout.file_docs(file);
            for index in start..end {
                match layout.role(index, file) {
                    Role::Fresh => continue,
                    Role::Exact => exact += 1,
                    Role::Near => near += 1,
                }
                let head = layout.pick_head(index, file, &mut layout.doc_rng(index));
                assert!(head < start, "doc {index} of file {file} copies {head}");
                assert_eq!(layout.role(head, 0), Role::Fresh);
            }
        }
        for count in [exact, near] {
            assert!((1700..=2300).contains(&count), "{exact} exact, {near} near");
        }
    }

    #[test]
    fn copies_are_what_they_claim() {
        let layout = Layout::new(&small(1000, 2));
        let mut original = String::new();
        let mut copy = String::new();
        for index in 0..300 {
            let mut rng = layout.fresh_text(index, &mut original);
            let words = original.split_whitespace().count();
            assert!((40..140).contains(&words), "{words} words");
            exact_copy(&original, &mut rng, &mut copy);
            assert_eq!(normalized(&copy), normalized(&original));
            let changed = near_copy(&original, index, &mut rng, &mut copy);
            let jaccard = jaccard_5grams(&original, &copy);
            let m = (words - 4) as f64;
            let expected = (m - changed as f64) / (m + changed as f64);
            // Exact unless the original repeats a 5-gram (rare), which the formula ignores.
            assert!(
                (jaccard - expected).abs() < 0.005,
                "{jaccard} vs {expected}"
            );
            assert!(
                (NEAR_MIN_JACCARD - 0.005..1.0).contains(&jaccard),
                "{jaccard}"
            );
        }
    }

    /// The crate's own MinHash LSH (default settings) pairs nearly every near copy with its
    /// original: they share a band key.
    #[test]
    fn near_copies_share_an_lsh_band_with_their_original() {
        use crate::dedup::lsh::band_keys;
        use crate::dedup::minhash::{MinHashConfig, MinHasher};
        let config = MinHashConfig::default();
        let hasher = MinHasher::new(&config);
        let signature = |text: &str| hasher.signature(&normalized(text)).unwrap();
        let layout = Layout::new(&small(1000, 2));
        let (mut original, mut copy, mut found) = (String::new(), String::new(), 0);
        let trials = 1000;
        for index in 0..trials {
            let mut rng = layout.fresh_text(index, &mut original);
            near_copy(&original, index, &mut rng, &mut copy);
            let (a, b) = (signature(&original), signature(&copy));
            let keys: std::collections::HashSet<_> = band_keys(&a, config.rows).collect();
            if band_keys(&b, config.rows).any(|key| keys.contains(&key)) {
                found += 1;
            }
        }
        assert!(
            found >= trials * 98 / 100,
            "{found} of {trials} near copies found"
        );
    }

    #[test]
    fn bad_settings_and_foreign_directories_are_refused() {
        let bad = [
            SynthConfig::new(0),
            SynthConfig {
                words: (5, 10),
                ..SynthConfig::new(10)
            },
            SynthConfig {
                near_rate: 0.6,
                ..SynthConfig::new(10)
            },
            SynthConfig {
                files: Some(0),
                ..SynthConfig::new(10)
            },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(SynthError::Config(_))));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = write_synthetic(dir.path(), &SynthConfig::new(10)).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }
}
