//! The types every stage of the build shares: the build's error and how to run it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redpack_schemas::SchemaError;
use thiserror::Error;

use super::config::BuildSettings;
use super::progress::ProgressSink;
use crate::extsort::SpillError;
use crate::input::datamanifest::ManifestError;
use crate::input::InputError;
use crate::tokenize::TokenizeError;
use crate::train_tokenizer::TrainError;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    DataManifest(#[from] ManifestError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Spill(SpillError),
    #[error(transparent)]
    Split(#[from] super::split::SplitError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Work { path: PathBuf, message: String },
    #[error(
        "{path}: {format} has documents, not input/target pairs, but the pipeline builds an \
         \"examples\" corpus; use --format flan or a pipeline with [pack] type = \"packed\""
    )]
    LayoutMismatch { path: PathBuf, format: String },
    #[error("cannot start {threads} worker threads: {message}")]
    Threads { threads: usize, message: String },
    #[error(
        "{rejected} of {read} records were rejected ({percent:.2}%), more than \
         --max-rejected-fraction {limit} allows; the first of each reason are in {rejects}; no \
         corpus was written"
    )]
    TooManyRejects {
        rejected: u64,
        read: u64,
        percent: f64,
        limit: f64,
        rejects: PathBuf,
    },
    #[error("{path}: the input changed during the build ({detail}); its earlier results cannot be used: rebuild without --resume")]
    InputChanged { path: PathBuf, detail: String },
    #[error(
        "cannot resume the build in {dir}: {why}; rebuild without --resume (or use another --out)"
    )]
    ResumeMismatch { dir: PathBuf, why: String },
    #[error("stage {stage} cannot start: stage {previous} is incomplete: {detail}")]
    StageIncomplete {
        stage: &'static str,
        previous: &'static str,
        detail: String,
    },
    #[error("stage {stage} cannot start: {why}")]
    StageMismatch { stage: &'static str, why: String },
    #[error("{dir} is in use by another build or worker (lock {lock} is held); wait for it or use another --out")]
    Busy { dir: PathBuf, lock: PathBuf },
    #[error(
        "{dir} already holds a corpus; pass --overwrite to replace it (it stays readable until \
         the new one is complete), or choose another --out"
    )]
    CorpusExists { dir: PathBuf },
    #[error(
        "the build yields an empty corpus: {why} ({read} records read, {kept} kept); pass \
         --allow-empty to write it anyway; the corpus in place, if any, was left as it was"
    )]
    EmptyCorpus { read: u64, kept: u64, why: String },
    #[error("internal error: record counts do not add up: {0}")]
    Invariant(String),
}

impl BuildError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How to run a build (nothing here changes the output).
#[derive(Clone, Default)]
pub struct BuildOptions {
    /// Where the stages report their progress (none: nowhere).
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// Continue an interrupted build in the same output directory, skipping finished units.
    pub resume: bool,
    /// Keep the work directory after the manifest is written (for inspection).
    pub keep_work: bool,
    /// Bytes the external sorters may hold in all (default: a quarter of the memory limit).
    pub sort_budget: Option<usize>,
    /// Replace a corpus already in the output directory (without it, that is an error).
    pub overwrite: bool,
    /// Write a corpus with no examples instead of failing.
    pub allow_empty: bool,
}

impl std::fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("progress", &self.progress.is_some())
            .field("resume", &self.resume)
            .field("keep_work", &self.keep_work)
            .field("sort_budget", &self.sort_budget)
            .field("overwrite", &self.overwrite)
            .field("allow_empty", &self.allow_empty)
            .finish()
    }
}

impl BuildOptions {
    pub(crate) fn sort_budget(&self, settings: &BuildSettings) -> usize {
        self.sort_budget
            .unwrap_or((settings.output.memory_limit / 4) as usize)
    }
}
