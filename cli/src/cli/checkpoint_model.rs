//! The flags that open a checkpoint for decoding or scoring, shared by `redpack generate` and
//! `redpack eval-tasks` (resolved by `commands::checkpoint_model`).

use std::path::PathBuf;

use clap::Args;

use super::train::DeviceArg;

#[derive(Debug, Args)]
pub struct CheckpointModelArgs {
    /// The tokenizer.json to encode and decode with (default: the copy in the training corpus
    /// the checkpoint records); its sha256 must be the checkpoint's.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Skip the check of the checkpoint's model.safetensors against its sha256.
    #[arg(long)]
    pub no_verify: bool,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// CPU threads (0 or default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
