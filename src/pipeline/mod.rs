//! The corpus pipeline: configuration ([`config`]), the staged build ([`build`] over the work
//! directory of [`work`]: [`scan`] with its [`reader`] thread, [`dedup_stage`] over the
//! partitioned keys of [`keys`], [`tokenize_stage`], [`finish`] with the held-out evaluation
//! [`split`]), the types every stage shares
//! ([`types`]: the build's error and options), the counts ([`tally`]), the rejected records'
//! samples ([`rejects`]), what it reports ([`report`]) and how it reports progress
//! ([`progress`]).

pub mod build;
pub mod config;
pub mod dedup_stage;
pub mod finish;
pub mod keys;
pub mod progress;
pub mod publish;
pub mod reader;
pub mod rejects;
pub mod report;
pub mod scan;
pub mod split;
pub mod tally;
pub mod tokenize_stage;
pub mod types;
pub mod work;

pub use build::{build, run_stage, StageOutcome, StageReport};
pub use config::{BuildSettings, ConfigError, Overrides, PackSettings, PipelineConfig};
pub use progress::{ProgressSink, StageProgress};
pub use report::BuildReport;
pub use types::{BuildError, BuildOptions};
pub use work::Stage;
