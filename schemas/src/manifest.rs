//! `manifest.json`: what a corpus holds, how it was built, and where every input record went.
//!
//! The manifest is written last; its presence is the commit point of a build. Maps are
//! `BTreeMap`s and nothing time- or machine-dependent is stored, so the same build writes the
//! same bytes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SchemaError};
use crate::tokens::TokenDtype;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT_NAME: &str = "redpack-corpus";
pub const FORMAT_VERSION: u32 = 1;

/// The two kinds of corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Fixed-length sequences of concatenated documents (pretraining).
    Packed,
    /// Variable-length input/target pairs (instruction tuning).
    Examples,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Packed => "packed",
            Kind::Examples => "examples",
        }
    }
}

/// The shape of a corpus's examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Layout {
    /// Every example is `seq_len` tokens, split at `prefix_len`.
    Packed { seq_len: u32, prefix_len: u32 },
    /// Input truncated to `max_input_len`, target to `max_target_len`; an example is the input
    /// followed by the target, split at the input's length.
    Examples {
        max_input_len: u32,
        max_target_len: u32,
    },
}

/// Longest example (packed row, or input plus target) a corpus may be built with. Far above any
/// context the study trains (2,048 tokens; 16,384 for evaluation), and low enough that a row
/// buffer always fits in memory.
pub const MAX_SEQ_LEN: u32 = 1 << 24;

impl Layout {
    /// Checks that the trainer can use every example of this layout, whichever architecture
    /// reads it: a row needs at least two tokens (one to condition on, one to score), and
    /// RedLLM needs a non-empty encoder input (the prefix, or an example's input) and a
    /// non-empty target. `Err` names the setting and its valid range.
    pub fn check_trainable(&self) -> std::result::Result<(), String> {
        match *self {
            Layout::Packed {
                seq_len,
                prefix_len,
            } => {
                if !(2..=MAX_SEQ_LEN).contains(&seq_len) {
                    return Err(format!(
                        "seq_len {seq_len} is outside 2..={MAX_SEQ_LEN}: a training row needs at \
                         least one token to condition on and one to score"
                    ));
                }
                if prefix_len == 0 || prefix_len >= seq_len {
                    return Err(format!(
                        "prefix_len {prefix_len} is outside 1..={} (1 to seq_len - 1): RedLLM \
                         needs at least one encoder input token and one target token per row",
                        seq_len - 1
                    ));
                }
            }
            Layout::Examples {
                max_input_len,
                max_target_len,
            } => {
                if max_input_len == 0 || max_target_len == 0 {
                    return Err(format!(
                        "max_input_len {max_input_len} and max_target_len {max_target_len} must \
                         both be at least 1: RedLLM needs an encoder input and a target"
                    ));
                }
                if u64::from(max_input_len) + u64::from(max_target_len) > u64::from(MAX_SEQ_LEN) {
                    return Err(format!(
                        "max_input_len {max_input_len} + max_target_len {max_target_len} exceeds \
                         {MAX_SEQ_LEN} tokens"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn kind(&self) -> Kind {
        match self {
            Layout::Packed { .. } => Kind::Packed,
            Layout::Examples { .. } => Kind::Examples,
        }
    }

    /// The longest example this layout allows.
    pub fn max_len(&self) -> u64 {
        match *self {
            Layout::Packed { seq_len, .. } => u64::from(seq_len),
            Layout::Examples {
                max_input_len,
                max_target_len,
            } => u64::from(max_input_len) + u64::from(max_target_len),
        }
    }
}

/// The tokenizer a corpus was encoded with. `file` is a copy inside the corpus directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// File name of the `tokenizer.json` copy, relative to the corpus directory.
    pub file: String,
    /// sha256 of that file, lowercase hex.
    pub sha256: String,
    pub vocab_size: u32,
    pub eod_id: u32,
    pub pad_id: u32,
    pub eod_token: String,
    pub pad_token: String,
}

/// One input file read by the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEntry {
    /// Path as given (relative to the input root where there is one).
    pub path: String,
    pub source: String,
    /// `redpajama-jsonl`, `redpajama-jsonl-zstd`, `flan-parquet`, ...
    pub format: String,
    pub bytes: u64,
    /// sha256 of the file when the build computed or verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub records_read: u64,
    /// Set when reading stopped early: what went wrong and how far the file was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

/// One shard: a token file and its example index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub tokens_file: String,
    pub tokens_bytes: u64,
    pub tokens_sha256: String,
    pub index_file: String,
    pub index_bytes: u64,
    pub index_sha256: String,
    pub examples: u64,
    /// Tokens stored in the shard, padding included.
    pub tokens: u64,
}

/// Where the records went. Invariant:
/// `records_read = kept + exact_duplicates + near_duplicates + filtered + rejected`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub records_read: u64,
    pub kept: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub filtered: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Tokens of kept records stored in the shards (padding and dropped tails excluded).
    pub tokens: u64,
    /// Examples (packed sequences or input/target rows) these records contributed to.
    pub examples: u64,
}

impl Counts {
    /// `Err` with a description when the record invariant does not hold.
    pub fn check_invariant(&self) -> std::result::Result<(), String> {
        // In u128: the fields come from a file and must not overflow the check.
        let accounted = u128::from(self.kept)
            + u128::from(self.exact_duplicates)
            + u128::from(self.near_duplicates)
            + u128::from(self.filtered)
            + u128::from(self.rejected);
        if accounted != u128::from(self.records_read) {
            return Err(format!(
                "records_read {} != kept {} + exact_duplicates {} + near_duplicates {} + filtered {} + rejected {} (= {accounted})",
                self.records_read, self.kept, self.exact_duplicates, self.near_duplicates, self.filtered, self.rejected
            ));
        }
        let by_reason: u128 = self
            .rejected_by_reason
            .values()
            .map(|&n| u128::from(n))
            .sum();
        if by_reason != u128::from(self.rejected) {
            return Err(format!(
                "rejected {} != sum of rejected_by_reason {by_reason}",
                self.rejected
            ));
        }
        Ok(())
    }

    /// Adds `other` into `self`, field by field.
    pub fn add(&mut self, other: &Counts) {
        // Saturating: counts read from a file may be anything; real counts never come near.
        self.records_read = self.records_read.saturating_add(other.records_read);
        self.kept = self.kept.saturating_add(other.kept);
        self.exact_duplicates = self.exact_duplicates.saturating_add(other.exact_duplicates);
        self.near_duplicates = self.near_duplicates.saturating_add(other.near_duplicates);
        self.filtered = self.filtered.saturating_add(other.filtered);
        self.rejected = self.rejected.saturating_add(other.rejected);
        for (reason, n) in &other.rejected_by_reason {
            let slot = self.rejected_by_reason.entry(reason.clone()).or_default();
            *slot = slot.saturating_add(*n);
        }
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.examples = self.examples.saturating_add(other.examples);
    }
}

/// What packing did beyond storing documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackingStats {
    /// Documents (or input/target pairs) packed.
    pub documents: u64,
    /// Padding tokens stored (a padded final sequence; padded example rows).
    pub padding_tokens: u64,
    /// Tokens of a final partial sequence that was dropped.
    pub dropped_tokens: u64,
    pub dropped_sequences: u64,
    /// Examples whose input / target was cut to the maximum length.
    pub truncated_inputs: u64,
    pub truncated_targets: u64,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `redpack-corpus`.
    pub format: String,
    pub format_version: u32,
    pub kind: Kind,
    pub layout: Layout,
    pub token_dtype: TokenDtype,
    /// Bytes before the first token in every token file.
    pub header_bytes: u32,
    pub tokenizer: TokenizerInfo,
    /// The resolved build configuration.
    pub build: serde_json::Value,
    pub inputs: Vec<InputEntry>,
    pub shards: Vec<ShardEntry>,
    pub counts: Counts,
    pub sources: BTreeMap<String, Counts>,
    pub packing: PackingStats,
    /// Set when the build held documents out for evaluation: which split this corpus is and
    /// how the kept documents were divided. Absent in corpora built without a split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// Which side of a train/evaluation split a corpus is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    Train,
    Eval,
}

impl SplitName {
    pub fn name(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Eval => "eval",
        }
    }
}

/// Kept documents on each side of the split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: u64,
    pub eval: u64,
}

/// A build's train/evaluation split, recorded the same in both corpora's manifests (except
/// `split` and `counterpart`). Invariant: per source and overall, `train + eval` equals the
/// manifest's `kept`; this corpus packed its side's documents (`packing.documents`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// This corpus's side.
    pub split: SplitName,
    /// The other side's corpus directory, relative to this one (`eval` from the training
    /// corpus, `..` from the evaluation corpus).
    pub counterpart: String,
    /// How documents were chosen for evaluation.
    pub selection: String,
    /// The key of the selection hash.
    pub key: u64,
    pub documents: SplitCounts,
    pub sources: BTreeMap<String, SplitCounts>,
}

impl Split {
    /// The documents on this corpus's side.
    pub fn this_side(&self) -> u64 {
        match self.split {
            SplitName::Train => self.documents.train,
            SplitName::Eval => self.documents.eval,
        }
    }

    /// `Err` with a description when the split does not account for the kept documents.
    pub fn check_invariant(
        &self,
        counts: &Counts,
        sources: &BTreeMap<String, Counts>,
    ) -> std::result::Result<(), String> {
        let documents = self.documents;
        if u128::from(documents.train) + u128::from(documents.eval) != u128::from(counts.kept) {
            return Err(format!(
                "split: train {} + eval {} != kept {}",
                documents.train, documents.eval, counts.kept
            ));
        }
        let mut sum = SplitCounts::default();
        for (name, side) in &self.sources {
            let kept = sources.get(name).map_or(0, |c| c.kept);
            if u128::from(side.train) + u128::from(side.eval) != u128::from(kept) {
                return Err(format!(
                    "split: source {name}: train {} + eval {} != kept {kept}",
                    side.train, side.eval
                ));
            }
            sum.train = sum.train.saturating_add(side.train);
            sum.eval = sum.eval.saturating_add(side.eval);
        }
        if let Some((name, c)) = sources
            .iter()
            .find(|(name, c)| c.kept > 0 && !self.sources.contains_key(*name))
        {
            return Err(format!(
                "split: source {name} has {} kept documents but no split entry",
                c.kept
            ));
        }
        if sum != documents {
            return Err(format!(
                "split: the sources' train {} / eval {} do not add up to train {} / eval {}",
                sum.train, sum.eval, documents.train, documents.eval
            ));
        }
        Ok(())
    }
}

impl Manifest {
    /// Reads and parses `dir/manifest.json`, checking the format name and version.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SchemaError::NotACorpus {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(SchemaError::io(&path, e)),
        };
        // Check the version before the full schema, so an old reader says "upgrade" rather than
        // "missing field".
        let head: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| SchemaError::corrupt(&path, format!("invalid JSON: {e}")))?;
        if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(SchemaError::corrupt(
                &path,
                format!("not a redpack manifest (\"format\" is not \"{FORMAT_NAME}\")"),
            ));
        }
        let version = head.get("format_version").and_then(|v| v.as_u64());
        if version != Some(u64::from(FORMAT_VERSION)) {
            return Err(SchemaError::UnsupportedVersion {
                path,
                found: version.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest = serde_json::from_value(head).map_err(|e| {
            SchemaError::corrupt(&path, format!("manifest does not match the format: {e}"))
        })?;
        manifest
            .check_fields()
            .map_err(|what| SchemaError::corrupt(&path, what))?;
        Ok(manifest)
    }

    /// Checks what the manifest says about itself: every file it names is a plain file name
    /// inside the corpus folder (no path separator, no `..`, not absolute), the kind agrees with
    /// the layout, the token width with the vocabulary, the special ids lie in the vocabulary.
    pub fn check_fields(&self) -> std::result::Result<(), String> {
        let mut names = vec![("tokenizer.file".to_string(), self.tokenizer.file.as_str())];
        for (i, shard) in self.shards.iter().enumerate() {
            names.push((format!("shards[{i}].tokens_file"), &shard.tokens_file));
            names.push((format!("shards[{i}].index_file"), &shard.index_file));
        }
        for (field, name) in names {
            if !is_plain_file_name(name) {
                return Err(format!(
                    "{field} {name:?} is not a file name inside the corpus folder (paths that \
                     leave the folder are refused)"
                ));
            }
        }
        if let Some(split) = &self.split {
            let expected = match split.split {
                SplitName::Train => "eval",
                SplitName::Eval => "..",
            };
            if split.counterpart != expected {
                return Err(format!(
                    "split.counterpart {:?} is not {expected:?} (the {} side's counterpart)",
                    split.counterpart,
                    split.split.name()
                ));
            }
        }
        if self.kind != self.layout.kind() {
            return Err(format!(
                "kind {:?} disagrees with the layout, which is {:?}",
                self.kind.name(),
                self.layout.kind().name()
            ));
        }
        let vocab = self.tokenizer.vocab_size;
        if vocab == 0 {
            return Err("tokenizer.vocab_size is 0".into());
        }
        let width = TokenDtype::for_vocab(vocab);
        if self.token_dtype != width {
            return Err(format!(
                "token_dtype {} does not match tokenizer.vocab_size {vocab} (which needs {})",
                self.token_dtype.name(),
                width.name()
            ));
        }
        for (field, id) in [
            ("eod_id", self.tokenizer.eod_id),
            ("pad_id", self.tokenizer.pad_id),
        ] {
            if id >= vocab {
                return Err(format!(
                    "tokenizer.{field} {id} is not below tokenizer.vocab_size {vocab}"
                ));
            }
        }
        Ok(())
    }

    /// The manifest as written: pretty JSON with a trailing newline.
    pub fn to_json_bytes(&self) -> std::result::Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// A single normal path component: what the writer uses for every file of a corpus.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !std::path::Path::new(name).is_absolute()
}
