//! The corpus pipeline: configuration ([`config`]), the staged build ([`build`] over the work
//! directory of [`work`]: [`scan`], [`dedup_stage`], [`tokenize_stage`], [`finish`]), and what
//! it reports ([`report`]).

pub mod build;
pub mod config;
pub mod dedup_stage;
pub mod finish;
pub mod keys;
mod progress;
pub mod reader;
pub mod rejects;
pub mod report;
pub mod scan;
pub mod tally;
pub mod tokenize_stage;
pub mod work;

pub use build::{build, run_stage, BuildError, BuildOptions, StageOutcome, StageReport};
pub use config::{BuildSettings, ConfigError, Overrides, PipelineConfig};
pub use report::BuildReport;
pub use work::Stage;
