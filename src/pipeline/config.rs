//! The pipeline file (`pipelines/*.toml`) and its resolution, together with command-line
//! overrides, into one [`BuildSettings`] before any work starts. Nothing after resolution reads a
//! flag or the file.
//!
//! Every field of the file is optional; a missing one takes the default written in
//! `pipelines/default.toml`. Relative paths in the file are taken relative to the current
//! directory, like paths on the command line.

use std::path::{Path, PathBuf};

use redpack_schemas::{Layout, MAX_SEQ_LEN};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dedup::DedupConfig;
use crate::input::{FieldMap, FormatHint};
use crate::pack::FinalPartial;
use crate::train_tokenizer::TrainConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read pipeline file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid pipeline file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// `auto | redpajama | flan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    #[default]
    Auto,
    Redpajama,
    Flan,
}

impl FormatChoice {
    pub fn hint(self) -> FormatHint {
        match self {
            FormatChoice::Auto => FormatHint::Auto,
            FormatChoice::Redpajama => FormatHint::RedPajama,
            FormatChoice::Flan => FormatHint::Flan,
        }
    }
}

/// `[input]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Files, directories (read recursively, sorted) or glob patterns, in this order.
    pub paths: Vec<PathBuf>,
    /// A data manifest listing the input files (with sizes and checksums to verify).
    pub data_manifest: Option<PathBuf>,
    /// The directory a data manifest's paths are relative to (default: the current directory).
    pub data_root: Option<PathBuf>,
    pub format: FormatChoice,
    pub fields: FieldsConfig,
}

/// `[input.fields]`: JSON keys / Parquet columns to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldsConfig {
    pub text: String,
    pub input: String,
    pub target: String,
    pub task: Option<String>,
}

impl Default for FieldsConfig {
    fn default() -> Self {
        let map = FieldMap::default();
        FieldsConfig {
            text: map.text,
            input: map.input,
            target: map.target,
            task: map.task,
        }
    }
}

impl FieldsConfig {
    pub fn field_map(&self) -> FieldMap {
        FieldMap {
            text: self.text.clone(),
            input: self.input.clone(),
            target: self.target.clone(),
            task: self.task.clone(),
        }
    }
}

/// `[filter]`: records below these lengths are counted as `filtered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Minimum characters of text (FLAN: of the input and of the target, each), after trimming.
    pub min_chars: usize,
    /// Minimum whitespace-separated words (FLAN: of input and target together).
    pub min_words: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            min_chars: 1,
            min_words: 0,
        }
    }
}

/// `[tokenizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// A `tokenizer.json`. When absent, one is trained on the inputs with `[tokenizer.train]`.
    pub path: Option<PathBuf>,
    /// End-of-document token; by default the first of `[EOD]`, `<|endoftext|>`, `</s>`, ... found.
    pub eod_token: Option<String>,
    /// Padding token; by default `[PAD]`, `<pad>`, `<|padding|>`, else the EOD token.
    pub pad_token: Option<String>,
    /// Long documents are encoded in pieces of about this many bytes.
    pub chunk_bytes: usize,
    pub train: TrainConfig,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            path: None,
            eod_token: None,
            pad_token: None,
            chunk_bytes: crate::tokenize::DEFAULT_CHUNK_BYTES,
            train: TrainConfig::default(),
        }
    }
}

/// `[pack]`, selected by `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum PackConfig {
    Packed {
        #[serde(default = "default_seq_len")]
        seq_len: u32,
        /// Defaults to `seq_len / 2` (the study's fixed middle split).
        #[serde(default)]
        prefix_len: Option<u32>,
        #[serde(default)]
        final_partial: FinalPartial,
    },
    Examples {
        #[serde(default = "default_max_input_len")]
        max_input_len: u32,
        #[serde(default = "default_max_target_len")]
        max_target_len: u32,
    },
}

fn default_seq_len() -> u32 {
    2048
}
fn default_max_input_len() -> u32 {
    2048
}
fn default_max_target_len() -> u32 {
    512
}

impl PackConfig {
    /// An examples layout with the study's limits (inputs of 2048 tokens, targets of 512).
    pub fn examples() -> Self {
        PackConfig::Examples {
            max_input_len: default_max_input_len(),
            max_target_len: default_max_target_len(),
        }
    }
}

impl Default for PackConfig {
    fn default() -> Self {
        PackConfig::Packed {
            seq_len: default_seq_len(),
            prefix_len: None,
            final_partial: FinalPartial::Drop,
        }
    }
}

/// `[pack]` resolved for a build: the packed layout's prefix length is decided. Serializes as
/// [`PackConfig`] with `prefix_len` given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PackSettings {
    Packed {
        seq_len: u32,
        prefix_len: u32,
        final_partial: FinalPartial,
    },
    Examples {
        max_input_len: u32,
        max_target_len: u32,
    },
}

impl PackSettings {
    /// The corpus layout these settings write.
    pub fn layout(&self) -> Layout {
        match *self {
            PackSettings::Packed {
                seq_len,
                prefix_len,
                ..
            } => Layout::Packed {
                seq_len,
                prefix_len,
            },
            PackSettings::Examples {
                max_input_len,
                max_target_len,
            } => Layout::Examples {
                max_input_len,
                max_target_len,
            },
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub max_shard_tokens: u64,
    /// Examples of each reject reason written to `rejects.jsonl`.
    pub rejects_per_reason: usize,
    /// Fail the build when rejected / read exceeds this fraction.
    pub max_rejected_fraction: f64,
    /// Shuffle documents after dedup with this seed (off when absent). Holds every kept
    /// document's tokens in memory until the end (about 4 bytes per token).
    pub shuffle_seed: Option<u64>,
    /// Worker threads; 0 = all cores. Does not change the output.
    pub threads: usize,
    /// Resident memory the build may use, in bytes (a number, or a string such as "4GiB" or
    /// "512MB"). The external sorters get a quarter of it. Does not change the output.
    #[serde(deserialize_with = "byte_size", serialize_with = "serialize_bytes")]
    pub memory_limit: u64,
    /// Documents held out after dedup for an evaluation corpus in `OUT/eval/` (none when
    /// absent): chosen by a keyed hash of each document's origin, stratified by source in
    /// proportion to the kept documents (see [`super::split`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_docs: Option<u64>,
    /// Tokens per row of a packed evaluation corpus (default 8 x `seq_len`, so one evaluation
    /// corpus serves every context length up to it). Packed corpora only; resolved when
    /// `eval_docs` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_seq_len: Option<u32>,
}

/// The default `memory_limit`: 4 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// Parses a byte size: `123`, `64KiB`, `512MiB`, `4GiB`, `1TiB`, or with `KB`/`MB`/`GB`/`TB`
/// (powers of 1000), `K`/`M`/`G`/`T` (powers of 1024); case-insensitive, optional space.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid size {text:?}: expected a number with an optional unit such as 4GiB")
    })?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    Ok((value * multiplier) as u64)
}

fn byte_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Number(n) => Ok(n),
        Size::Text(text) => parse_byte_size(&text).map_err(serde::de::Error::custom),
    }
}

fn serialize_bytes<S: serde::Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(*value)
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            max_shard_tokens: redpack_schemas::DEFAULT_MAX_SHARD_TOKENS,
            rejects_per_reason: 20,
            max_rejected_fraction: 0.05,
            shuffle_seed: None,
            threads: 0,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            eval_docs: None,
            eval_seq_len: None,
        }
    }
}

/// A pipeline file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub input: InputConfig,
    pub filter: FilterConfig,
    pub dedup: DedupConfig,
    pub tokenizer: TokenizerConfig,
    pub pack: PackConfig,
    pub output: OutputConfig,
}

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses pipeline TOML; `path` only names it in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })
    }
}

/// Settings that command-line flags can override (each `None` = keep the file's value).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub inputs: Vec<PathBuf>,
    pub data_manifest: Option<PathBuf>,
    pub data_root: Option<PathBuf>,
    pub format: Option<FormatChoice>,
    pub tokenizer: Option<PathBuf>,
    pub seq_len: Option<u32>,
    pub prefix_len: Option<u32>,
    pub threads: Option<usize>,
    pub no_dedup: bool,
    pub shuffle_seed: Option<u64>,
    pub max_rejected_fraction: Option<f64>,
    pub memory_limit: Option<u64>,
    pub eval_docs: Option<u64>,
    pub eval_seq_len: Option<u32>,
}

/// Rows of a packed evaluation corpus per training row when `eval_seq_len` is not given.
pub const EVAL_SEQ_LEN_FACTOR: u32 = 8;

/// Most worker threads a build starts (`threads`; 0 means one per core).
pub const MAX_THREADS: usize = 1024;

/// Everything a build needs, resolved and validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildSettings {
    pub input: InputConfig,
    pub filter: FilterConfig,
    pub dedup: DedupConfig,
    pub tokenizer: TokenizerConfig,
    pub pack: PackSettings,
    pub output: OutputConfig,
    #[serde(skip)]
    pub out: PathBuf,
}

impl BuildSettings {
    /// Applies `overrides` to `config` and checks the result.
    pub fn resolve(
        mut config: PipelineConfig,
        overrides: Overrides,
        out: PathBuf,
    ) -> Result<Self, ConfigError> {
        if !overrides.inputs.is_empty() {
            config.input.paths = overrides.inputs;
        }
        if overrides.data_manifest.is_some() {
            config.input.data_manifest = overrides.data_manifest;
        }
        if overrides.data_root.is_some() {
            config.input.data_root = overrides.data_root;
        }
        if let Some(format) = overrides.format {
            config.input.format = format;
        }
        if overrides.tokenizer.is_some() {
            config.tokenizer.path = overrides.tokenizer;
        }
        if let Some(threads) = overrides.threads {
            config.output.threads = threads;
        }
        if overrides.no_dedup {
            config.dedup.exact = false;
            config.dedup.near = false;
        }
        if overrides.shuffle_seed.is_some() {
            config.output.shuffle_seed = overrides.shuffle_seed;
        }
        if let Some(limit) = overrides.memory_limit {
            config.output.memory_limit = limit;
        }
        if config.output.memory_limit < 64 << 20 {
            return Err(ConfigError::Invalid(format!(
                "memory_limit must be at least 64MiB (got {} bytes)",
                config.output.memory_limit
            )));
        }
        if let Some(fraction) = overrides.max_rejected_fraction {
            config.output.max_rejected_fraction = fraction;
        }
        let pack = match config.pack {
            PackConfig::Packed {
                seq_len,
                prefix_len,
                final_partial,
            } => {
                let seq_len = overrides.seq_len.unwrap_or(seq_len);
                // A prefix from the file belongs to the file's sequence length: a new sequence
                // length without a new prefix takes the default prefix, half the sequence.
                let prefix_len = match overrides.prefix_len {
                    Some(prefix) => prefix,
                    None => prefix_len
                        .filter(|_| overrides.seq_len.is_none())
                        .unwrap_or(seq_len / 2),
                };
                Layout::Packed {
                    seq_len,
                    prefix_len,
                }
                .check_trainable()
                .map_err(|why| ConfigError::Invalid(format!("--seq-len / --prefix-len: {why}")))?;
                PackSettings::Packed {
                    seq_len,
                    prefix_len,
                    final_partial,
                }
            }
            PackConfig::Examples {
                max_input_len,
                max_target_len,
            } => {
                if overrides.seq_len.is_some() || overrides.prefix_len.is_some() {
                    return Err(ConfigError::Invalid(
                        "--seq-len / --prefix-len apply to packed corpora, but the pipeline's [pack] type is \"examples\"".into(),
                    ));
                }
                Layout::Examples {
                    max_input_len,
                    max_target_len,
                }
                .check_trainable()
                .map_err(ConfigError::Invalid)?;
                PackSettings::Examples {
                    max_input_len,
                    max_target_len,
                }
            }
        };
        if overrides.eval_docs.is_some() {
            config.output.eval_docs = overrides.eval_docs;
        }
        if overrides.eval_seq_len.is_some() {
            config.output.eval_seq_len = overrides.eval_seq_len;
        }
        config.output.eval_seq_len = resolve_eval(&config.output, &pack)?;
        if config.output.max_shard_tokens == 0 {
            return Err(ConfigError::Invalid(
                "max_shard_tokens must be at least 1 (the tokens one shard holds; default 2^29)"
                    .into(),
            ));
        }
        if config.output.threads > MAX_THREADS {
            return Err(ConfigError::Invalid(format!(
                "threads {} is above {MAX_THREADS}; 0 means all cores",
                config.output.threads
            )));
        }
        let fraction = config.output.max_rejected_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(ConfigError::Invalid(format!(
                "max_rejected_fraction must be within 0..=1 (got {fraction})"
            )));
        }
        let minhash = &config.dedup.minhash;
        if config.dedup.near && (minhash.bands == 0 || minhash.rows == 0 || minhash.bands > 1024) {
            return Err(ConfigError::Invalid(format!(
                "dedup.minhash needs 1..=1024 bands and at least 1 row (got {} x {})",
                minhash.bands, minhash.rows
            )));
        }
        if config.input.data_manifest.is_some() && !config.input.paths.is_empty() {
            return Err(ConfigError::Invalid(
                "give either a data manifest (with --data-root) or input paths, not both".into(),
            ));
        }
        if config.input.paths.is_empty() && config.input.data_manifest.is_none() {
            return Err(ConfigError::Invalid(
                "no input: give --input PATH (or --data-manifest FILE, or [input] paths in the pipeline file)".into(),
            ));
        }
        Ok(BuildSettings {
            input: config.input,
            filter: config.filter,
            dedup: config.dedup,
            tokenizer: config.tokenizer,
            pack,
            output: config.output,
            out,
        })
    }

    /// The configuration recorded in the manifest: everything that shapes the output, nothing
    /// that does not (thread count, output directory).
    pub fn recipe(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(output) = value.get_mut("output").and_then(|o| o.as_object_mut()) {
            output.remove("threads");
            output.remove("memory_limit");
        }
        value
    }
}

/// `recipe` without the evaluation split's settings (`output.eval_docs`, `output.eval_seq_len`):
/// what the stages before `finish` depend on. A resumed build, or a worker, may change the split
/// since only `finish` makes it.
pub fn recipe_before_finish(recipe: &serde_json::Value) -> serde_json::Value {
    let mut value = recipe.clone();
    if let Some(output) = value.get_mut("output").and_then(|o| o.as_object_mut()) {
        output.remove("eval_docs");
        output.remove("eval_seq_len");
    }
    value
}

/// Checks the evaluation split's settings; returns the evaluation rows' length (packed
/// corpora with a split only).
fn resolve_eval(output: &OutputConfig, pack: &PackSettings) -> Result<Option<u32>, ConfigError> {
    let Some(docs) = output.eval_docs else {
        if output.eval_seq_len.is_some() {
            return Err(ConfigError::Invalid(
                "eval_seq_len (--eval-seq-len) needs eval_docs (--eval-docs N)".into(),
            ));
        }
        return Ok(None);
    };
    if docs == 0 {
        return Err(ConfigError::Invalid(
            "eval_docs (--eval-docs) must be at least 1; leave it out for no evaluation split"
                .into(),
        ));
    }
    match *pack {
        PackSettings::Packed {
            seq_len,
            prefix_len,
            ..
        } => {
            let eval_seq_len = match output.eval_seq_len {
                Some(len) => len,
                None => seq_len.checked_mul(EVAL_SEQ_LEN_FACTOR).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "the default eval_seq_len, {EVAL_SEQ_LEN_FACTOR} x seq_len {seq_len}, \
                         does not fit 32 bits; give --eval-seq-len"
                    ))
                })?,
            };
            if eval_seq_len <= prefix_len || eval_seq_len > MAX_SEQ_LEN {
                return Err(ConfigError::Invalid(format!(
                    "eval_seq_len {eval_seq_len} is outside {}..={MAX_SEQ_LEN}: the evaluation \
                     rows keep the prefix length {prefix_len} and need a target after it",
                    prefix_len + 1
                )));
            }
            Ok(Some(eval_seq_len))
        }
        PackSettings::Examples { .. } => {
            if output.eval_seq_len.is_some() {
                return Err(ConfigError::Invalid(
                    "eval_seq_len (--eval-seq-len) applies to packed corpora; an examples \
                     corpus's evaluation split keeps the training limits (max_input_len, \
                     max_target_len)"
                        .into(),
                ));
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder refuses what the trainer cannot use, naming the valid range.
    #[test]
    fn layouts_the_trainer_cannot_use_are_refused() {
        let resolve = |config: PipelineConfig, seq_len, prefix_len| {
            let overrides = Overrides {
                inputs: vec!["x".into()],
                seq_len,
                prefix_len,
                ..Overrides::default()
            };
            BuildSettings::resolve(config, overrides, "o".into()).map(|s| s.pack)
        };
        let packed = PipelineConfig::default;
        for (seq, prefix, wanted) in [
            (Some(1), None, "seq_len 1 is outside 2..=16777216"),
            (Some(0), None, "seq_len 0 is outside 2..=16777216"),
            (Some(u32::MAX), None, "outside 2..=16777216"),
            (Some(8), Some(8), "prefix_len 8 is outside 1..=7"),
            (Some(8), Some(0), "prefix_len 0 is outside 1..=7"),
            (Some(8), Some(u32::MAX), "is outside 1..=7"),
        ] {
            let err = resolve(packed(), seq, prefix).unwrap_err().to_string();
            assert!(err.contains(wanted), "{seq:?}/{prefix:?}: {err}");
        }
        assert!(resolve(packed(), Some(2), Some(1)).is_ok());
        let examples = |input: u32, target: u32| {
            PipelineConfig::parse(
                Path::new("f.toml"),
                &format!(
                    "[pack]\ntype = \"examples\"\nmax_input_len = {input}\nmax_target_len = {target}\n"
                ),
            )
            .unwrap()
        };
        let err = resolve(examples(0, 5), None, None).unwrap_err().to_string();
        assert!(err.contains("max_input_len 0"), "{err}");
        let err = resolve(examples(u32::MAX, u32::MAX), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds 16777216 tokens"), "{err}");
        let mut config = packed();
        config.output.max_shard_tokens = 0;
        let err = resolve(config, None, None).unwrap_err().to_string();
        assert!(err.contains("max_shard_tokens must be at least 1"), "{err}");
        let mut config = packed();
        config.output.threads = usize::MAX;
        let err = resolve(config, None, None).unwrap_err().to_string();
        assert!(err.contains("0 means all cores"), "{err}");
    }

    #[test]
    fn shipped_pipelines_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        for name in ["default.toml", "redpajama-v1.toml", "flan.toml"] {
            PipelineConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = PipelineConfig::parse(
            Path::new("t.toml"),
            "[pack]\ntype = \"packed\"\nseq_len = 1024\nprefix_len = 100\n[output]\nthreads = 3\n",
        )
        .unwrap();
        let overrides = Overrides {
            inputs: vec!["x".into()],
            seq_len: Some(64),
            no_dedup: true,
            ..Overrides::default()
        };
        let settings = BuildSettings::resolve(file, overrides, "out".into()).unwrap();
        assert_eq!(
            settings.pack,
            PackSettings::Packed {
                seq_len: 64,
                prefix_len: 32,
                final_partial: FinalPartial::Drop
            }
        );
        assert!(!settings.dedup.exact && !settings.dedup.near);
        assert_eq!(settings.output.threads, 3);
        assert!(settings.recipe()["output"].get("threads").is_none());
    }

    #[test]
    fn the_paper_pipeline_holds_out_79k_documents() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let config = PipelineConfig::load(&dir.join("redpajama-v1.toml")).unwrap();
        let overrides = Overrides {
            inputs: vec!["x".into()],
            ..Overrides::default()
        };
        let settings = BuildSettings::resolve(config, overrides, "o".into()).unwrap();
        assert_eq!(settings.output.eval_docs, Some(79_000));
        assert_eq!(settings.output.eval_seq_len, Some(16_384));
        assert_eq!(settings.recipe()["output"]["eval_seq_len"], 16_384);
    }

    #[test]
    fn eval_split_settings() {
        let packed = |eval_docs, eval_seq_len, seq_len| {
            let overrides = Overrides {
                inputs: vec!["x".into()],
                seq_len,
                eval_docs,
                eval_seq_len,
                ..Overrides::default()
            };
            BuildSettings::resolve(PipelineConfig::default(), overrides, "o".into())
        };
        // Without a split nothing is recorded, so the recipe (and the manifest) are unchanged.
        let none = packed(None, None, Some(64)).unwrap();
        assert!(none.recipe()["output"].get("eval_docs").is_none());
        assert!(none.recipe()["output"].get("eval_seq_len").is_none());
        let default_len = packed(Some(5), None, Some(64)).unwrap();
        assert_eq!(default_len.output.eval_seq_len, Some(512));
        let given = packed(Some(5), Some(100), Some(64)).unwrap();
        assert_eq!(given.output.eval_seq_len, Some(100));
        for (docs, len, wanted) in [
            (Some(0), None, "at least 1"),
            (None, Some(100), "needs eval_docs"),
            (Some(5), Some(10), "outside 33..=16777216"),
            (
                Some(5),
                Some(32),
                "keep the prefix length 32 and need a target",
            ),
            (Some(5), Some(u32::MAX), "outside 33..=16777216"),
        ] {
            let err = packed(docs, len, Some(64)).unwrap_err().to_string();
            assert!(err.contains(wanted), "{err}");
        }
        let examples =
            PipelineConfig::parse(Path::new("f.toml"), "[pack]\ntype = \"examples\"\n").unwrap();
        let overrides = Overrides {
            inputs: vec!["x".into()],
            eval_docs: Some(3),
            ..Overrides::default()
        };
        let settings =
            BuildSettings::resolve(examples.clone(), overrides.clone(), "o".into()).unwrap();
        assert_eq!(settings.output.eval_seq_len, None);
        let err = BuildSettings::resolve(
            examples,
            Overrides {
                eval_seq_len: Some(9),
                ..overrides
            },
            "o".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("packed corpora"), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        let err =
            PipelineConfig::parse(Path::new("p.toml"), "[pack]\ntype = \"rows\"\n").unwrap_err();
        assert!(err.to_string().contains("p.toml"), "{err}");
        let overrides = Overrides {
            inputs: vec!["x".into()],
            seq_len: Some(8),
            prefix_len: Some(9),
            ..Overrides::default()
        };
        let err =
            BuildSettings::resolve(PipelineConfig::default(), overrides, "o".into()).unwrap_err();
        assert!(err.to_string().contains("prefix_len"), "{err}");
        let err =
            BuildSettings::resolve(PipelineConfig::default(), Overrides::default(), "o".into())
                .unwrap_err();
        assert!(err.to_string().contains("--input"), "{err}");
    }
}
