//! `redpack fetch` arguments. Resolved into `fetch::FetchOptions` by `commands::fetch`.

use std::path::PathBuf;

use clap::Args;

/// Download the files a data manifest lists: in parallel, resuming partial files, verifying
/// sizes and sha256 sums.
///
/// Each file is written to NAME.part and renamed to NAME only once it verifies, so an
/// interrupted run leaves no truncated file under a real name; running again resumes the .part
/// files and skips the files that are already there and verify.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    redpack fetch --manifest data-manifests/redpajama-v1.toml --out rp --only arxiv\n      \
    the arXiv files of RedPajama V1 (name the subset's published urls.txt list in the\n      \
    manifest with urls_file first)\n  \
    redpack fetch --manifest mine.toml --out data --jobs 8 --json\n      \
    eight at a time, the report as JSON on stdout")]
pub struct FetchArgs {
    /// The data manifest listing the files (data-manifests/*.toml): each `[[files]]` entry is
    /// fetched from its `url`, else `url_prefix` + `path`; each subset's `urls_file` adds its
    /// URLs.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,

    /// Directory to download into; paths in the manifest are relative to it (use it as
    /// `--data-root` for build-corpus).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Fetch only this subset's files; repeat for more.
    #[arg(long = "only", value_name = "SUBSET")]
    pub only: Vec<String>,

    /// Files downloaded at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,

    /// Failed requests in a row after which a file is given up (a download that does not
    /// verify counts as one).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,

    /// Wait before the first retry, in milliseconds; doubles after each failure, at most 60 s.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub retry_delay_ms: u64,

    /// Print the report (files downloaded, skipped and failed, with reasons) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
