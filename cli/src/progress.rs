//! Progress bars for the build's stages: position, rate and a short message, drawn on stderr
//! (indicatif hides them when stderr is not a terminal). The build reports through
//! [`redpack::pipeline::ProgressSink`]; `--json` builds pass no sink.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redpack::pipeline::{ProgressSink, StageProgress};

/// Draws one bar per stage on stderr.
#[derive(Debug, Default)]
pub struct Bars;

impl ProgressSink for Bars {
    fn stage(&self, stage: &str, total: u64, unit: &str) -> Box<dyn StageProgress> {
        Box::new(Bar::new(total, stage, unit))
    }

    fn note(&self, line: &str) {
        println!("{line}");
    }
}

/// A bar for one stage.
#[derive(Debug)]
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar for `stage` over `total` units of `unit` (`bytes` draws byte sizes).
    fn new(total: u64, stage: &str, unit: &str) -> Self {
        let target = ProgressDrawTarget::stderr_with_hz(4);
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template = if unit == "bytes" {
            format!("{{spinner}} {stage:>8} [{{elapsed_precise}}] {{bar:30}} {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, eta {{eta}}) {{msg}}")
        } else {
            format!("{{spinner}} {stage:>8} [{{elapsed_precise}}] {{bar:30}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}")
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(250));
        Bar { bar }
    }
}

impl StageProgress for Bar {
    /// Moves the bar; an empty message keeps the last one.
    fn set(&self, position: u64, message: &str) {
        self.bar.set_position(position);
        if !message.is_empty() {
            self.bar.set_message(message.to_string());
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
