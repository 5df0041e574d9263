//! `redpack eval-tasks`: the paper's downstream tasks (`redpack_trainer::tasks`) on a
//! checkpoint, through the tokenizer the checkpoint was trained with. Every task's files are
//! read before the model is opened, so a missing download fails at once.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use redpack_trainer::checkpoint;
use redpack_trainer::generate::open_model;
use redpack_trainer::lm::LanguageModel;
use redpack_trainer::tasks::{self, Codec, Report, Settings, Shots, TaskId, TaskReport};
use serde::Serialize;

use super::checkpoint_model;
use crate::cli::eval_tasks::EvalTasksArgs;

const MAX_BATCH: usize = 4096;

/// The run's tokenizer as the tasks' text codec.
pub(crate) struct Tokenizer(pub(crate) tokenizers::Tokenizer);

impl Codec for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.0
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.0.decode(ids, false).map_err(|e| e.to_string())
    }
}

/// The JSON report: the settings, then the library's report.
#[derive(Serialize)]
struct JsonReport<'a> {
    checkpoint: String,
    data_root: String,
    shots: &'a str,
    limit: Option<usize>,
    #[serde(flatten)]
    report: &'a Report,
}

fn parse_shots(text: &str) -> anyhow::Result<Shots> {
    if text == "paper" {
        return Ok(Shots::Paper);
    }
    text.parse::<usize>()
        .map(Shots::Fixed)
        .map_err(|_| anyhow!("--shots must be `paper` or a number, got {text:?}"))
}

pub fn run(args: EvalTasksArgs) -> anyhow::Result<ExitCode> {
    let options = checkpoint_model::open_options(&args.model, args.batch, args.max_len)?;
    if !(1..=MAX_BATCH).contains(&args.batch) {
        bail!(
            "--batch must be in [1, {MAX_BATCH}] examples, got {}",
            args.batch
        );
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let shots = parse_shots(&args.shots)?;
    let task_ids = TaskId::parse_list(&args.tasks)?;
    let mut data = Vec::with_capacity(task_ids.len());
    for task in &task_ids {
        data.push(task.load(&args.data_root)?);
    }

    let dir = checkpoint::resolve(&args.checkpoint).context("cannot open the checkpoint")?;
    let meta = checkpoint::load_meta(&dir)?;
    let codec = Tokenizer(checkpoint_model::load_tokenizer(
        &dir,
        &meta,
        args.model.tokenizer.as_deref(),
    )?);
    let mut model =
        open_model(&dir, &options).context("cannot open the checkpoint for evaluation")?;
    eprintln!("{}", model.device_note);
    let description = model.describe();
    eprintln!("{description}");

    let settings = Settings {
        shots,
        limit: args.limit,
        seed: args.seed,
        batch: args.batch,
    };
    let mut reports = Vec::with_capacity(data.len());
    for task_data in &data {
        let report = tasks::evaluate(task_data, &mut model, &codec, &settings)
            .with_context(|| format!("task {} failed", task_data.task.name()))?;
        eprintln!(
            "{}: {} examples, {} shots, score {:.2}",
            report.task, report.examples, report.shots, report.score
        );
        reports.push(report);
    }
    let report = Report::new(description, args.seed, reports);

    let mut out = io::stdout().lock();
    if args.json {
        let json = JsonReport {
            checkpoint: dir.display().to_string(),
            data_root: args.data_root.display().to_string(),
            shots: &args.shots,
            limit: args.limit,
            report: &report,
        };
        let text = serde_json::to_string_pretty(&json)?;
        writeln!(out, "{text}")?;
    } else {
        table(&report, &mut out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{:.2}", 100.0 * v))
}

fn row(t: &TaskReport) -> String {
    format!(
        "{:<15} {:<16} {:>8} {:>5} {:>7} {:>8} {:>7} {:>7} {:>7} {:>9}",
        t.task,
        t.scoring,
        t.examples,
        t.shots,
        percent(t.acc),
        percent(t.acc_norm),
        percent(t.exact_match),
        t.chrf.map_or("-".to_owned(), |c| format!("{c:.2}")),
        format!("{:.2}", t.score),
        t.truncated
    )
}

/// One line per task, then the average. Accuracies and exact match in percent.
fn table(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "{}", report.model)?;
    writeln!(
        out,
        "{:<15} {:<16} {:>8} {:>5} {:>7} {:>8} {:>7} {:>7} {:>7} {:>9}",
        "task",
        "scoring",
        "examples",
        "shots",
        "acc",
        "acc_norm",
        "em",
        "chrf",
        "score",
        "truncated"
    )?;
    for task in &report.tasks {
        writeln!(out, "{}", row(task))?;
    }
    writeln!(
        out,
        "average over {} tasks ({} examples): {:.2}",
        report.tasks.len(),
        report.examples,
        report.average
    )
}
