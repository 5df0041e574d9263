//! Progress bars for the build's stages: position, rate and a short message. Hidden when
//! stderr is not a terminal or with `--json`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A thin wrapper so the build does not depend on indicatif's API.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `stage` over `total` units of `unit` (`bytes` draws byte sizes).
    pub fn new(total: u64, visible: bool, stage: &str, unit: &str) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template = if unit == "bytes" {
            format!("{{spinner}} {stage:>8} [{{elapsed_precise}}] {{bar:30}} {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, eta {{eta}}) {{msg}}")
        } else {
            format!("{{spinner}} {stage:>8} [{{elapsed_precise}}] {{bar:30}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}")
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        if visible {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Progress { bar }
    }

    /// Moves the bar; an empty message keeps the last one.
    pub fn set(&self, position: u64, message: &str) {
        self.bar.set_position(position);
        if !message.is_empty() {
            self.bar.set_message(message.to_string());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
