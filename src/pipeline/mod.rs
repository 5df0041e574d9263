//! The corpus pipeline: configuration ([`config`]), the build that runs the stages
//! ([`build`]), and what it reports ([`report`]).

pub mod build;
pub mod config;
mod progress;
pub mod reader;
pub mod rejects;
pub mod report;
mod stages;
pub mod tally;

pub use build::{build, BuildError, BuildOptions};
pub use config::{BuildSettings, ConfigError, Overrides, PipelineConfig};
pub use report::BuildReport;
