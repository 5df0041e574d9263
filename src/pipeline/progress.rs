//! How the build reports its progress: each stage opens a [`StageProgress`] through the
//! caller's [`ProgressSink`] and moves it as units are done. The library draws nothing; the
//! caller decides what a position means on screen (the CLI draws terminal bars).

use std::sync::Arc;

/// Receives the build's progress. Called from the build's worker threads.
pub trait ProgressSink: Send + Sync {
    /// Stage `stage` starts over `total` units of `unit` (`"bytes"`, `"tokens"`,
    /// `"partitions"`).
    fn stage(&self, stage: &str, total: u64, unit: &str) -> Box<dyn StageProgress>;

    /// A line about the build worth showing before it ends (for example which encoder
    /// tokenizes it). Nothing by default.
    fn note(&self, _line: &str) {}
}

/// The progress of one stage.
pub trait StageProgress: Send + Sync {
    /// `position` units are done; a non-empty `message` says more (e.g. records read).
    fn set(&self, position: u64, message: &str);
    /// The stage is over.
    fn finish(&self);
}

/// Reports nothing.
struct Silent;

impl StageProgress for Silent {
    fn set(&self, _position: u64, _message: &str) {}
    fn finish(&self) {}
}

/// Opens stage `stage`'s progress on `sink`, or a silent one without a sink.
pub(crate) fn open(
    sink: Option<&Arc<dyn ProgressSink>>,
    stage: &str,
    total: u64,
    unit: &str,
) -> Box<dyn StageProgress> {
    match sink {
        Some(sink) => sink.stage(stage, total, unit),
        None => Box::new(Silent),
    }
}
