//! A checkpoint opened for decoding or scoring (`redpack generate`, `redpack eval-tasks`): the
//! tokenizer it was trained with (the copy in the corpus its run read, `settings.data` in
//! checkpoint.json, or a file the user names, checked against the checkpoint's tokenizer sha256
//! either way) and the options `redpack_trainer::generate` opens it with.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use redpack_schemas::{hash_file, Manifest};
use redpack_trainer::backend::DeviceChoice;
use redpack_trainer::checkpoint::CheckpointMeta;
use redpack_trainer::generate::OpenOptions;

use super::train::check_threads;
use crate::cli::checkpoint_model::CheckpointModelArgs;
use crate::cli::train::DeviceArg;

/// The options to open the checkpoint with, `batch` sequences at a time, none longer than
/// `max_len`.
pub fn open_options(
    args: &CheckpointModelArgs,
    batch: usize,
    max_len: usize,
) -> anyhow::Result<OpenOptions> {
    check_threads(args.threads)?;
    Ok(OpenOptions {
        device: match args.device {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        },
        threads: args.threads,
        batch,
        max_len,
        verify: !args.no_verify,
    })
}

/// Loads the checkpoint's tokenizer; `explicit` (`--tokenizer FILE`) replaces the corpus copy.
pub fn load_tokenizer(
    checkpoint: &Path,
    meta: &CheckpointMeta,
    explicit: Option<&Path>,
) -> anyhow::Result<tokenizers::Tokenizer> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => corpus_tokenizer(checkpoint, &meta.settings)?,
    };
    let (_, sha) = hash_file(&path)
        .with_context(|| format!("{}: cannot read the tokenizer", path.display()))?;
    if sha != meta.tokenizer.sha256 {
        bail!(
            "{}: sha256 {sha} is not the tokenizer the checkpoint was trained with ({}); give that \
             tokenizer.json with --tokenizer",
            path.display(),
            meta.tokenizer.sha256
        );
    }
    tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}

/// The tokenizer copy of the corpus the run trained on.
fn corpus_tokenizer(checkpoint: &Path, settings: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let data = settings
        .get("data")
        .and_then(|d| d.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow!(
                "{}: checkpoint.json records no training corpus; give the tokenizer with --tokenizer",
                checkpoint.display()
            )
        })?;
    let manifest = Manifest::load(&data).with_context(|| {
        format!(
            "the checkpoint's training corpus {} is unreadable (give the tokenizer with --tokenizer)",
            data.display()
        )
    })?;
    Ok(data.join(&manifest.tokenizer.file))
}
