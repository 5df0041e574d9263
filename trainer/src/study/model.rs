//! The report's data model: what `report.md` and `report.json` say, built by `report` from the
//! run folders and judged by `findings`.

use serde::{Deserialize, Serialize};

use super::fit::{Parabola, PowerLaw};
use super::grid::{CorpusShape, RunGroup};

/// The verdict on one of the paper's findings, computed from the study's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Reproduced,
    Contradicted,
    NotEnoughPoints,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Contradicted => "contradicted",
            Verdict::NotEnoughPoints => "not enough points",
        }
    }

    /// Reproduced when the finding's test holds, else contradicted.
    pub fn of(holds: bool) -> Verdict {
        if holds {
            Verdict::Reproduced
        } else {
            Verdict::Contradicted
        }
    }
}

/// One of the paper's findings next to what the study measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    /// The paper's statement.
    pub paper: String,
    /// How this study tests it.
    pub test: String,
    /// The numbers the verdict is computed from.
    pub measured: String,
    pub verdict: Verdict,
}

/// One run's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub name: String,
    pub arch: String,
    pub size: String,
    pub group: RunGroup,
    /// Non-embedding parameters (encoder + decoder stacks), and all parameters.
    pub params: u64,
    pub total_params: u64,
    pub steps: u64,
    pub tokens_seen: u64,
    /// Training FLOPs as the paper counts (6 N D per stack), and detailed.
    pub paper_flops: f64,
    pub flops: f64,
    pub final_train_loss: f64,
    /// Pretraining: source-averaged PPL and loss at the training length and split.
    /// Finetuning: PPL and loss of the best checkpoint on the held-out examples.
    pub ppl: f64,
    pub loss: f64,
    /// Finetuning: inference FLOPs per held-out example (2 N per token per stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_flops: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    /// Downstream task scores, one entry per shots setting (a study with `[tasks]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskScores>,
}

/// A run's downstream task scores under one shots setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    /// `paper` or a number of demonstrations.
    pub shots: String,
    /// The mean of the tasks' scores, in percent.
    pub average: f64,
    /// Each task's headline score in percent (accuracy, exact match or ChrF).
    pub scores: std::collections::BTreeMap<String, f64>,
}

/// A power-law fit of one architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitRow {
    pub arch: String,
    pub runs: Vec<String>,
    pub fit: Option<PowerLaw>,
    pub paper_alpha: Option<f64>,
}

/// One isoFLOP curve: the runs of one architecture at one budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsoFlopCurve {
    pub arch: String,
    pub budget: f64,
    /// (non-embedding parameters, source-averaged loss) per run.
    pub points: Vec<(f64, f64)>,
    pub runs: Vec<String>,
    /// Loss against ln(parameters).
    pub parabola: Option<Parabola>,
    /// Compute-optimal parameters and the fitted PPL there, when the parabola has a minimum.
    pub optimum: Option<(f64, f64)>,
}

/// PPL against context length at one prefix length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthCurve {
    pub arch: String,
    pub run: String,
    pub prefix_len: usize,
    /// (length, source-averaged PPL); lengths without a scored row are left out.
    pub points: Vec<(usize, f64)>,
}

/// Local attention probability against position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalityCurve {
    pub arch: String,
    pub run: String,
    /// `decoder_self`, `encoder_self` or `cross`.
    pub attention: String,
    pub overall: f64,
    pub points: Vec<(usize, f64)>,
}

/// Everything `report.md` and `report.json` say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    pub description: String,
    pub synthetic: bool,
    pub shape: CorpusShape,
    pub runs: Vec<RunRow>,
    /// Runs of the study not finished (left out of every table and fit).
    pub unfinished: Vec<String>,
    pub params_fits: Vec<FitRow>,
    pub flops_fits: Vec<FitRow>,
    pub isoflop: Vec<IsoFlopCurve>,
    pub lengths: Vec<LengthCurve>,
    pub locality: Vec<LocalityCurve>,
    pub findings: Vec<Finding>,
    /// The plots written beside the report (file names under `plots/`).
    #[serde(default)]
    pub plots: Vec<String>,
}

/// What the report says about the study as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub name: String,
    pub description: String,
    pub synthetic: bool,
    pub shape: CorpusShape,
}
