//! The progress line while a build runs: input bytes and their rate, records per second and
//! duplicates so far. Hidden when stderr is not a terminal or with `--json`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A thin wrapper so the build does not depend on indicatif's API.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    /// `total_bytes` is the size of the inputs on disk; `visible` false hides the bar.
    pub fn new(total_bytes: u64, visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total_bytes), target);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        ) {
            bar.set_style(style);
        }
        if visible {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    /// Updates the position and the message.
    pub fn update(&self, bytes: u64, records: u64, duplicates: u64, rejected: u64) {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(bytes);
        self.bar.set_message(format!(
            "{records} records ({:.0}/s), {duplicates} duplicates, {rejected} rejected",
            records as f64 / seconds
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
