//! The report built from a study's folder: everything is read from the study's folder (`study.json`, and per run its
//! `metrics.jsonl`, `study-done.json`, `study-eval.json`, `study-locality/locality.json`); nothing
//! is measured again. Fits are computed from those numbers; the paper's exponents are the only
//! numbers not read from the runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::execute::{EVAL_FILE, LOCALITY_DIR, TASKS_FILE};
use super::findings;
use super::fit::{Parabola, PowerLaw};
use super::grid::{Corpora, CorpusShape, RunGroup, RunPlan};
pub use super::model::{
    FitRow, Header, IsoFlopCurve, LengthCurve, LocalityCurve, Report, RunRow, TaskScores,
};
use super::state::{self, DoneRecord};
use super::StudyError;
use crate::metrics::read_metrics;

pub const STATE_FILE: &str = "study.json";

/// The exponents of the paper's Table 2(b) on RedPajama (PPL against training FLOPs, against
/// parameters), arXiv 2510.26622.
pub const PAPER_EXPONENTS: [(&str, f64, f64); 2] = [("dec", 0.20, 0.17), ("red", 0.24, 0.18)];

/// What `study run` records in `OUT/study.json` for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyState {
    pub name: String,
    pub description: String,
    /// The study file as it was read.
    pub study_file: PathBuf,
    /// The corpus is the built-in generated text.
    pub synthetic: bool,
    pub shape: CorpusShape,
    pub corpora: Corpora,
    pub plans: Vec<RunPlan>,
}

/// The parts of `study-eval.json` (a `redpack eval` grid report) the report reads. Cells without a
/// scored row hold `null` (not a number).
#[derive(Debug, Deserialize)]
struct GridFile {
    results: Vec<GridCellFile>,
}

#[derive(Debug, Deserialize)]
struct GridCellFile {
    length: usize,
    prefix_len: usize,
    rows: u64,
    source_average: ScoreFile,
}

#[derive(Debug, Deserialize)]
struct ScoreFile {
    loss: Option<f64>,
    ppl: Option<f64>,
}

/// The parts of a finetuning run's `study-eval.json` (a `redpack eval` report: the overall score
/// at the top level) the report reads.
#[derive(Debug, Deserialize)]
struct EvalFile {
    loss: Option<f64>,
    ppl: Option<f64>,
    inference_flops_per_example: f64,
}

/// The parts of `study-tasks.json` the report reads.
#[derive(Debug, Deserialize)]
struct TasksFileRead {
    results: Vec<TasksResultRead>,
}

#[derive(Debug, Deserialize)]
struct TasksResultRead {
    shots: String,
    average: f64,
    tasks: Vec<TaskRead>,
}

#[derive(Debug, Deserialize)]
struct TaskRead {
    task: String,
    score: f64,
}

/// A run's task scores, when it has a `study-tasks.json`.
fn task_scores(dir: &Path) -> Result<Vec<TaskScores>, StudyError> {
    let path = dir.join(TASKS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let file: TasksFileRead = state::read(&path)?;
    Ok(file
        .results
        .into_iter()
        .map(|r| TaskScores {
            shots: r.shots,
            average: r.average,
            scores: r.tasks.into_iter().map(|t| (t.task, t.score)).collect(),
        })
        .collect())
}

/// The parts of `locality.json` the report reads.
#[derive(Debug, Deserialize)]
struct LocalityFile {
    attention: BTreeMap<String, LocalityKindFile>,
}

#[derive(Debug, Deserialize)]
struct LocalityKindFile {
    overall: f64,
    by_position: Vec<f64>,
    first_position: usize,
}

fn io(path: &Path, e: impl std::fmt::Display) -> StudyError {
    StudyError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Reads `OUT/study.json`.
pub fn read_state(out: &Path) -> Result<StudyState, StudyError> {
    let path = out.join(STATE_FILE);
    if !path.exists() {
        return Err(io(
            &path,
            "no study here: `redpack study run STUDY --out DIR` writes it",
        ));
    }
    state::read(&path)
}

fn run_row(plan: &RunPlan, done: &DoneRecord, shape: CorpusShape) -> Result<RunRow, StudyError> {
    let dir = plan.dir();
    let metrics_path = dir.join(crate::metrics::METRICS_FILE);
    let metrics = read_metrics(&metrics_path).map_err(|e| io(&metrics_path, e))?;
    let last = metrics
        .last()
        .ok_or_else(|| io(&metrics_path, "no step recorded"))?;
    let counts = done.model.stack_param_counts();
    let eval_path = dir.join(EVAL_FILE);
    let (ppl, loss, inference_flops) = if plan.is_pretrain() {
        let grid: GridFile = state::read(&eval_path)?;
        let cell = grid
            .results
            .iter()
            .find(|c| c.length == shape.seq_len && c.prefix_len == shape.prefix_len)
            .ok_or_else(|| {
                io(
                    &eval_path,
                    format!(
                        "no result at the training length {} and split {}",
                        shape.seq_len, shape.prefix_len
                    ),
                )
            })?;
        (
            cell.source_average.ppl.unwrap_or(f64::NAN),
            cell.source_average.loss.unwrap_or(f64::NAN),
            None,
        )
    } else {
        let report: EvalFile = state::read(&eval_path)?;
        (
            report.ppl.unwrap_or(f64::NAN),
            report.loss.unwrap_or(f64::NAN),
            Some(report.inference_flops_per_example),
        )
    };
    Ok(RunRow {
        name: plan.name.clone(),
        arch: plan.arch.clone(),
        size: plan.size.clone(),
        group: plan.group,
        params: counts.encoder + counts.decoder,
        total_params: done.model.param_count(),
        steps: last.step,
        tokens_seen: last.tokens_seen,
        paper_flops: last.paper_flops_seen,
        flops: last.flops_seen,
        final_train_loss: last.loss,
        ppl,
        loss,
        inference_flops,
        train_seconds: done.train_seconds,
        eval_seconds: done.eval_seconds,
        tasks: task_scores(dir)?,
    })
}

fn archs_of(rows: &[RunRow]) -> Vec<String> {
    let mut archs: Vec<String> = rows.iter().map(|r| r.arch.clone()).collect();
    archs.sort();
    archs.dedup();
    archs
}

fn power_fits(
    rows: &[RunRow],
    x: impl Fn(&RunRow) -> f64,
    paper: impl Fn(f64, f64) -> f64,
) -> Vec<FitRow> {
    let scaling: Vec<&RunRow> = rows
        .iter()
        .filter(|r| r.group == RunGroup::Scaling)
        .collect();
    let mut fits = Vec::new();
    for arch in archs_of(rows) {
        let mine: Vec<&&RunRow> = scaling.iter().filter(|r| r.arch == arch).collect();
        if mine.is_empty() {
            continue;
        }
        let points: Vec<(f64, f64)> = mine.iter().map(|r| (x(r), r.ppl)).collect();
        fits.push(FitRow {
            arch: arch.clone(),
            runs: mine.iter().map(|r| r.name.clone()).collect(),
            fit: PowerLaw::fit(&points),
            paper_alpha: PAPER_EXPONENTS
                .iter()
                .find(|(a, _, _)| *a == arch)
                .map(|&(_, flops, params)| paper(flops, params)),
        });
    }
    fits
}

fn isoflop_curves(rows: &[RunRow]) -> Vec<IsoFlopCurve> {
    let mut groups: BTreeMap<(String, String), Vec<&RunRow>> = BTreeMap::new();
    let mut budgets = BTreeMap::new();
    for r in rows {
        if let RunGroup::IsoFlop { budget } = r.group {
            let key = (r.arch.clone(), format!("{:020.6e}", budget));
            budgets.insert(key.clone(), budget);
            groups.entry(key).or_default().push(r);
        }
    }
    let mut curves: Vec<IsoFlopCurve> = groups
        .into_iter()
        .map(|(key, mut runs)| {
            runs.sort_by_key(|r| r.params);
            let points: Vec<(f64, f64)> = runs.iter().map(|r| (r.params as f64, r.loss)).collect();
            let parabola = Parabola::fit(&points);
            let optimum = parabola
                .as_ref()
                .and_then(|p| p.minimum())
                .map(|(n, loss)| (n, loss.exp()));
            IsoFlopCurve {
                arch: key.0.clone(),
                budget: budgets[&key],
                points,
                runs: runs.iter().map(|r| r.name.clone()).collect(),
                parabola,
                optimum,
            }
        })
        .collect();
    curves.sort_by(|a, b| a.arch.cmp(&b.arch).then(a.budget.total_cmp(&b.budget)));
    curves
}

impl Report {
    /// The report of these runs and curves: fits, isoFLOP parabolas and findings computed from
    /// them.
    pub fn assemble(
        header: Header,
        runs: Vec<RunRow>,
        unfinished: Vec<String>,
        lengths: Vec<LengthCurve>,
        locality: Vec<LocalityCurve>,
    ) -> Report {
        let params_fits = power_fits(&runs, |r| r.params as f64, |_, p| p);
        let flops_fits = power_fits(&runs, |r| r.paper_flops, |f, _| f);
        let isoflop = isoflop_curves(&runs);
        let mut report = Report {
            name: header.name,
            description: header.description,
            synthetic: header.synthetic,
            shape: header.shape,
            runs,
            unfinished,
            params_fits,
            flops_fits,
            isoflop,
            lengths,
            locality,
            findings: Vec::new(),
            plots: Vec::new(),
        };
        report.findings = findings::judge(&report);
        report
    }
}

/// Builds the report of the study in `out` from its run folders.
pub fn build(out: &Path) -> Result<Report, StudyError> {
    let st = read_state(out)?;
    let mut runs = Vec::new();
    let mut unfinished = Vec::new();
    let mut lengths = Vec::new();
    let mut locality = Vec::new();
    let mut largest: BTreeMap<String, (u64, &RunPlan)> = BTreeMap::new();
    for plan in &st.plans {
        let Some(done) = state::done(plan.dir())? else {
            unfinished.push(plan.name.clone());
            continue;
        };
        let row = run_row(plan, &done, st.shape)?;
        if plan.group == RunGroup::Scaling
            && largest.get(&plan.arch).is_none_or(|(p, _)| row.params > *p)
        {
            largest.insert(plan.arch.clone(), (row.params, plan));
        }
        runs.push(row);
    }
    // Length extrapolation and locality: the largest scaling run of each architecture.
    for (arch, (_, plan)) in &largest {
        let eval_path = plan.dir().join(EVAL_FILE);
        let grid: GridFile = state::read(&eval_path)?;
        let mut by_prefix: BTreeMap<usize, Vec<(usize, f64)>> = BTreeMap::new();
        for cell in &grid.results {
            match cell.source_average.ppl {
                Some(ppl) if cell.rows > 0 && ppl.is_finite() => by_prefix
                    .entry(cell.prefix_len)
                    .or_default()
                    .push((cell.length, ppl)),
                _ => {}
            }
        }
        for (prefix_len, points) in by_prefix {
            lengths.push(LengthCurve {
                arch: arch.clone(),
                run: plan.name.clone(),
                prefix_len,
                points,
            });
        }
        let loc_path = plan.dir().join(LOCALITY_DIR).join("locality.json");
        let loc: LocalityFile = state::read(&loc_path)?;
        for (attention, kind) in &loc.attention {
            locality.push(LocalityCurve {
                arch: arch.clone(),
                run: plan.name.clone(),
                attention: attention.clone(),
                overall: kind.overall,
                points: kind
                    .by_position
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (kind.first_position + i, *v))
                    .collect(),
            });
        }
    }
    let report = Report::assemble(
        Header {
            name: st.name.clone(),
            description: st.description.clone(),
            synthetic: st.synthetic,
            shape: st.shape,
        },
        runs,
        unfinished,
        lengths,
        locality,
    );
    Ok(report)
}
