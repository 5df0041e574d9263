//! `redpack fetch --manifest FILE --out DIR [--only SUBSET…] [--jobs N] [--json]`: plan the
//! downloads from the data manifest, run them with a progress bar on a terminal, print a
//! summary (or the JSON report), exit 1 when any file failed.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::fetch::FetchArgs;
use redpack::fetch::{self, Backoff, FetchItem, FetchOptions, FetchReport, FileReport, Status};
use redpack::input::datamanifest::DataManifest;

pub fn run(args: FetchArgs) -> anyhow::Result<ExitCode> {
    if args.jobs == 0 {
        return Err(anyhow!("--jobs must be at least 1"));
    }
    let options = FetchOptions {
        jobs: args.jobs,
        retries: args.retries,
        backoff: Backoff {
            first: Duration::from_millis(args.retry_delay_ms),
            max: Duration::from_secs(60),
        },
        ..FetchOptions::default()
    };
    let manifest = DataManifest::load(&args.manifest)?;
    let manifest_dir = args.manifest.parent().unwrap_or(Path::new("."));
    let items = fetch::plan(&manifest, manifest_dir, &args.only)
        .with_context(|| format!("{}: cannot plan the downloads", args.manifest.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let progress = Progress::new(&items, !args.json && io::stderr().is_terminal());
    let report = fetch::fetch(&items, &args.out, &options, &progress);
    progress.bar.finish_and_clear();

    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        // Serialize first, then write, so that a closed pipe surfaces as an io::Error.
        let text = serde_json::to_string_pretty(&report)?;
        writeln!(out, "{text}")?;
    } else {
        summary(&report, &args.out, &mut out)?;
    }
    out.flush()?;
    if report.failed > 0 {
        // The failures are listed above (or in the JSON); say so on stderr too.
        let names: Vec<&str> = report.failures().map(|f| f.path.as_str()).collect();
        eprintln!(
            "error: {} of {} files failed: {}",
            report.failed,
            report.files.len(),
            names.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(report: &FetchReport, dir: &Path, out: &mut dyn Write) -> io::Result<()> {
    let unverified = report
        .files
        .iter()
        .filter(|f| f.status == Status::Skipped && !f.verified)
        .count();
    writeln!(
        out,
        "{}: {} downloaded ({}), {} already there{}, {} failed",
        dir.display(),
        report.downloaded,
        human_bytes(report.bytes_received),
        report.skipped,
        if unverified > 0 {
            format!(" ({unverified} with no size or sha256 listed, not verified)")
        } else {
            String::new()
        },
        report.failed
    )?;
    for file in &report.files {
        if let Some(reason) = &file.replaced {
            writeln!(out, "  downloaded again: {}: {reason}", file.path)?;
        }
    }
    for file in report.failures() {
        let reason = file.error.as_deref().unwrap_or("unknown error");
        writeln!(out, "  failed: {reason}")?;
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The progress bar: bytes on disk out of the listed total (bytes so far when some sizes are
/// not listed), and files finished out of all.
struct Progress {
    bar: ProgressBar,
    files: usize,
    done: AtomicUsize,
    failed: AtomicUsize,
}

impl Progress {
    fn new(items: &[FetchItem], visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let total: Option<u64> = items.iter().map(|item| item.size).sum();
        let bar = ProgressBar::with_draw_target(total, target);
        let template = if total.is_some() {
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}"
        } else {
            "{spinner} [{elapsed_precise}] {bytes} ({bytes_per_sec}) {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        if visible {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        let progress = Progress {
            bar,
            files: items.len(),
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        };
        progress.update_message();
        progress
    }

    fn update_message(&self) {
        let failed = self.failed.load(Ordering::Relaxed);
        self.bar.set_message(format!(
            "{}/{} files{}",
            self.done.load(Ordering::Relaxed),
            self.files,
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        ));
    }
}

impl fetch::Observer for Progress {
    fn bytes(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn discarded(&self, bytes: u64) {
        self.bar.dec(bytes);
    }

    fn finished(&self, file: &FileReport) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if file.status == Status::Failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.update_message();
    }

    fn note(&self, message: &str) {
        // Above the bar when it is drawn; plain stderr otherwise (println on a hidden bar
        // prints nothing).
        if self.bar.is_hidden() {
            eprintln!("{message}");
        } else {
            self.bar.println(message);
        }
    }
}
