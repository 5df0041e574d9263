//! Studies: the paper's comparisons from one file (`redpack study`).
//!
//! - `file`: the study file's schema and checks;
//! - `grid`: expansion of the file into named runs with their training settings;
//! - `state`: run fingerprints and markers, for resuming a study and refusing a changed one;
//! - `execute`: training and evaluating one run through the library (no subprocess);
//! - `fit`: power laws and isoFLOP parabolas with their residuals;
//! - `model`: the report's data; `report` reads it from the run directories, `findings` judges
//!   the paper's findings on it, and `markdown` writes it as text;
//! - `slurm`: an array job with one task per run.
//!
//! Layout of a study's output folder `OUT`: `study.json` (the study file, its corpora and the
//! corpus shape the grid was expanded for), `corpus/` (when the study builds its corpus),
//! `runs/<name>/` (ordinary `redpack train` run directories, plus `study-run.json`,
//! `study-done.json`, `study-eval.json` and `study-locality/`), and the report's `report.md`,
//! `report.json` and `plots/`.

pub mod execute;
pub mod file;
pub mod findings;
pub mod fit;
pub mod grid;
pub mod markdown;
pub mod model;
pub mod report;
pub mod slurm;
pub mod state;

use std::path::PathBuf;

pub use file::{Study, StudyFile};
pub use grid::{expand, Corpora, CorpusShape, RunGroup, RunPlan};

/// Why a study cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("run {run} ({}) was made by a different study file: {what}. Restore the study file, or remove that run folder to run it again", dir.display())]
    Changed {
        run: String,
        dir: PathBuf,
        what: String,
    },
    #[error("run {run}: {message}")]
    Run { run: String, message: String },
}
