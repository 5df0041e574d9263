//! Running a task through a [`LanguageModel`]: prompts, requests in batches, scores, the report.

use serde::Serialize;

use super::{chrf, fewshot, scoring, Codec, Scoring, Target, TaskData, TaskError, TaskId};
use crate::lm::{GenerateRequest, LanguageModel, LoglikRequest};

/// How many demonstrations each task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shots {
    /// The paper's counts ([`TaskId::paper_shots`]).
    Paper,
    /// The same count for every task.
    Fixed(usize),
}

impl Shots {
    pub fn for_task(self, task: TaskId) -> usize {
        match self {
            Shots::Paper => task.paper_shots(),
            Shots::Fixed(k) => k,
        }
    }
}

/// Settings of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub shots: Shots,
    /// Evaluate only the first N examples of each task (in file order).
    pub limit: Option<usize>,
    /// Seeds the demonstration draws.
    pub seed: u64,
    /// Examples per call to the model.
    pub batch: usize,
}

/// One task's result. Accuracies are fractions; `score` is the task's headline in percent:
/// `acc` for multiple choice, `exact_match` for generative tasks, ChrF for translation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskReport {
    pub task: &'static str,
    /// `multiple_choice`, `generate` or `translate`.
    pub scoring: &'static str,
    pub examples: usize,
    pub shots: usize,
    /// Distinct groups (MMLU subjects, BBH subtasks, UnifiedQA datasets); 1 for the others.
    pub groups: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chrf: Option<f64>,
    pub score: f64,
    /// Examples whose prompt lost tokens on the left to fit the model's context.
    pub truncated: usize,
}

/// Every task's result and their average.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub model: String,
    pub seed: u64,
    pub tasks: Vec<TaskReport>,
    /// The mean of the tasks' `score`s, each task weighing the same.
    pub average: f64,
    /// Examples evaluated over all tasks.
    pub examples: usize,
}

impl Report {
    pub fn new(model: String, seed: u64, tasks: Vec<TaskReport>) -> Report {
        let average = if tasks.is_empty() {
            0.0
        } else {
            tasks.iter().map(|t| t.score).sum::<f64>() / tasks.len() as f64
        };
        let examples = tasks.iter().map(|t| t.examples).sum();
        Report {
            model,
            seed,
            tasks,
            average,
            examples,
        }
    }
}

fn encode(codec: &dyn Codec, text: &str) -> Result<Vec<u32>, TaskError> {
    codec.encode(text).map_err(TaskError::Codec)
}

/// Scores the first `settings.limit` examples of `data` with `model`.
pub fn evaluate(
    data: &TaskData,
    model: &mut dyn LanguageModel,
    codec: &dyn Codec,
    settings: &Settings,
) -> Result<TaskReport, TaskError> {
    let task = data.task;
    let count = settings
        .limit
        .map_or(data.eval.len(), |l| l.min(data.eval.len()));
    if count == 0 {
        return Err(TaskError::Task {
            task: task.name(),
            message: "no examples to evaluate".to_owned(),
        });
    }
    let shots = settings.shots.for_task(task);
    let prompts = (0..count)
        .map(|i| fewshot::prompt(data, i, shots, settings.seed))
        .collect::<Result<Vec<_>, _>>()?;
    let mut groups: Vec<&str> = data.eval[..count]
        .iter()
        .map(|e| e.group.as_str())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut report = TaskReport {
        task: task.name(),
        scoring: "",
        examples: count,
        shots,
        groups: groups.len(),
        acc: None,
        acc_norm: None,
        exact_match: None,
        chrf: None,
        score: 0.0,
        truncated: 0,
    };
    let batch = settings.batch.max(1);
    match task.scoring() {
        Scoring::MultipleChoice => {
            report.scoring = "multiple_choice";
            let (mut right, mut right_norm) = (0usize, 0usize);
            for start in (0..count).step_by(batch) {
                let end = (start + batch).min(count);
                let mut requests = Vec::new();
                let mut spans = Vec::new();
                for (i, prompt) in prompts.iter().enumerate().take(end).skip(start) {
                    let Target::Choice { choices, .. } = &data.eval[i].target else {
                        return Err(wrong_target(task, &data.eval[i].id));
                    };
                    let context = encode(codec, prompt)?;
                    spans.push((requests.len(), choices.len()));
                    for choice in choices {
                        requests.push(LoglikRequest {
                            context: context.clone(),
                            continuation: encode(codec, choice)?,
                        });
                    }
                }
                let scores = model.loglikelihood(&requests)?;
                if scores.len() != requests.len() {
                    return Err(TaskError::Task {
                        task: task.name(),
                        message: format!(
                            "the model answered {} of {} requests",
                            scores.len(),
                            requests.len()
                        ),
                    });
                }
                for (offset, (first, n)) in spans.into_iter().enumerate() {
                    let Target::Choice { choices, gold } = &data.eval[start + offset].target else {
                        continue;
                    };
                    let slice = &scores[first..first + n];
                    let logprobs: Vec<f64> = slice.iter().map(|s| s.logprob).collect();
                    let (raw, norm) = scoring::choose(&logprobs, choices);
                    right += usize::from(raw == *gold);
                    right_norm += usize::from(norm == *gold);
                    report.truncated += usize::from(slice.iter().any(|s| s.truncated > 0));
                }
            }
            let acc = right as f64 / count as f64;
            report.acc = Some(acc);
            report.acc_norm = Some(right_norm as f64 / count as f64);
            report.score = 100.0 * acc;
        }
        Scoring::Generate {
            extract,
            max_new_tokens,
            stops,
        } => {
            report.scoring = "generate";
            let outputs = generate(
                data,
                model,
                codec,
                &prompts,
                max_new_tokens,
                stops,
                batch,
                &mut report,
            )?;
            let mut right = 0usize;
            for (i, output) in outputs.iter().enumerate() {
                let Target::Answer { answers } = &data.eval[i].target else {
                    return Err(wrong_target(task, &data.eval[i].id));
                };
                let prediction = scoring::extract(extract, output);
                right += usize::from(scoring::is_correct(extract, prediction.as_deref(), answers));
            }
            let em = right as f64 / count as f64;
            report.exact_match = Some(em);
            report.score = 100.0 * em;
        }
        Scoring::Translate { max_new_tokens } => {
            report.scoring = "translate";
            let outputs = generate(
                data,
                model,
                codec,
                &prompts,
                max_new_tokens,
                &["\n"],
                batch,
                &mut report,
            )?;
            let mut references = Vec::with_capacity(count);
            for example in &data.eval[..count] {
                let Target::Reference(reference) = &example.target else {
                    return Err(wrong_target(task, &example.id));
                };
                references.push(reference.clone());
            }
            let hypotheses: Vec<String> = outputs.iter().map(|o| o.trim().to_owned()).collect();
            let score = chrf::corpus(&hypotheses, &references);
            report.chrf = Some(score);
            report.score = score;
        }
    }
    Ok(report)
}

fn wrong_target(task: TaskId, id: &str) -> TaskError {
    TaskError::Task {
        task: task.name(),
        message: format!("example {id} has a target of another scoring"),
    }
}

/// Greedy generations for `prompts`, decoded and cut at the stop strings. A prompt longer than
/// the model's context minus the new tokens keeps its last tokens (counted in `truncated`).
#[allow(clippy::too_many_arguments)]
fn generate(
    data: &TaskData,
    model: &mut dyn LanguageModel,
    codec: &dyn Codec,
    prompts: &[String],
    max_new_tokens: usize,
    stops: &[&str],
    batch: usize,
    report: &mut TaskReport,
) -> Result<Vec<String>, TaskError> {
    let max_len = model.max_len();
    if max_len < 2 {
        return Err(TaskError::Task {
            task: data.task.name(),
            message: format!(
                "the model's context of {max_len} tokens cannot hold a prompt and an answer"
            ),
        });
    }
    let max_new = max_new_tokens.min(max_len / 2).max(1);
    let budget = max_len - max_new;
    let stop_ids = stops
        .iter()
        .map(|s| encode(codec, s))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|ids| !ids.is_empty())
        .collect::<Vec<_>>();
    let mut outputs = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch) {
        let mut requests = Vec::with_capacity(chunk.len());
        for prompt in chunk {
            let mut ids = encode(codec, prompt)?;
            if ids.len() > budget {
                ids.drain(..ids.len() - budget);
                report.truncated += 1;
            }
            requests.push(GenerateRequest {
                prompt: ids,
                max_new_tokens: max_new,
                stop: stop_ids.clone(),
            });
        }
        let generated = model.generate_greedy(&requests)?;
        if generated.len() != requests.len() {
            return Err(TaskError::Task {
                task: data.task.name(),
                message: format!(
                    "the model answered {} of {} requests",
                    generated.len(),
                    requests.len()
                ),
            });
        }
        for ids in generated {
            let text = codec.decode(&ids).map_err(TaskError::Codec)?;
            outputs.push(scoring::cut_at_stops(&text, stops).to_owned());
        }
    }
    Ok(outputs)
}
