//! The paper's downstream tasks: readers of each task's published files, a documented prompt
//! template per task, seeded few-shot demonstrations, and scoring through [`LanguageModel`].
//!
//! Every task becomes a list of [`Example`]s: a `query` (the prompt text of one example), the
//! `demo` text that follows the query when the example is a demonstration, and a [`Target`]:
//! - **multiple choice** (BoolQ, HellaSwag, RTE, ARC-e/c, ANLI R1-R3, CommonsenseQA, StrategyQA):
//!   each choice is scored by the log-likelihood of its text after the prompt; `acc` takes the
//!   highest sum, `acc_norm` the highest sum per character of the choice (as the
//!   lm-evaluation-harness does); ties go to the first choice;
//! - **generative** (TriviaQA, UnifiedQA, MMLU CoT, GSM8K, BBH CoT): greedy decoding until a stop
//!   string, the task's answer extraction, exact match;
//! - **translation** (WMT En-De, En-Zh): greedy decoding of one line, corpus ChrF ([`chrf`]).
//!
//! A prompt is `k` demonstrations (`query + demo`) and the example's query, joined by a blank
//! line. Demonstrations come from the task's training split ([`fewshot`]), drawn per example from
//! a seed, never the evaluated example. Each task module documents its files, template and
//! answer, and where they follow the lm-evaluation-harness or the task's paper.
//!
//! Text goes through a [`Codec`] (the run's tokenizer in the CLI). Nothing here prints.

pub mod chrf;
pub mod fewshot;
pub mod records;
pub mod scoring;

mod arc;
mod bbh;
mod csqa;
mod gsm8k;
mod hellaswag;
mod mmlu;
mod nli;
mod open_qa;
mod wmt;
mod yes_no;

mod evaluate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use evaluate::{evaluate, Report, Settings, Shots, TaskReport};

use crate::lm::LmError;

/// Errors of reading, prompting and scoring a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: record {record}: {message}")]
    Record {
        path: PathBuf,
        record: usize,
        message: String,
    },
    #[error("task {task}: no file matches {pattern} under {root}; download the task's files with `redpack fetch --manifest data-manifests/eval-tasks.toml --out {root} --only {task}`")]
    Missing {
        task: &'static str,
        pattern: String,
        root: PathBuf,
    },
    #[error("unknown task {name:?}; the tasks are: paper (all), {known}")]
    UnknownTask { name: String, known: String },
    #[error("task {task}: {message}")]
    Task { task: &'static str, message: String },
    #[error("tokenizer: {0}")]
    Codec(String),
    #[error("model: {0}")]
    Model(#[from] LmError),
}

/// Text to token ids and back: the run's tokenizer.
pub trait Codec {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    fn decode(&self, ids: &[u32]) -> Result<String, String>;
}

/// What an example is scored on.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Continuations scored by log-likelihood; `gold` indexes `choices`.
    Choice { choices: Vec<String>, gold: usize },
    /// Generated text; correct when the extracted answer equals one of `answers` (after the
    /// task's normalization).
    Answer { answers: Vec<String> },
    /// A translation scored by ChrF against `reference`.
    Reference(String),
}

/// One example of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Where it comes from: `FILE:RECORD`.
    pub id: String,
    /// Demonstrations come from the same group (MMLU subject, BBH subtask, UnifiedQA dataset);
    /// empty for tasks without groups.
    pub group: String,
    /// The prompt text of this example.
    pub query: String,
    /// What follows `query` when this example is a demonstration (the gold answer's text).
    pub demo: String,
    pub target: Target,
}

/// Where a task's demonstrations come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The training split (or the split the task names in its module docs).
    Train,
    /// The evaluated split itself, minus the evaluated example (tasks published without a
    /// training split: BBH, WMT En-Zh).
    SameSplit,
}

/// A task's examples, read from its files.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub task: TaskId,
    pub eval: Vec<Example>,
    /// Demonstration candidates; with [`Pool::SameSplit`] this equals `eval`.
    pub pool: Vec<Example>,
    pub pool_kind: Pool,
    /// Published few-shot prompts by group (BBH's chain-of-thought prompts), used in place of
    /// drawn demonstrations when the shot count equals `fixed_shots`.
    pub fixed_prompts: BTreeMap<String, String>,
    pub fixed_shots: usize,
}

/// How a generative task is decoded and its answer read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    /// GSM8K: the number after `####`, else the last number in the text.
    Gsm8k,
    /// Chain of thought: the text after the last "the answer is" (MMLU, BBH).
    AnswerIs,
    /// A short answer: the text up to the stop, normalized (lowercase, no punctuation or
    /// articles) as in SQuAD's exact match.
    Short,
}

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    MultipleChoice,
    Generate {
        extract: Extract,
        max_new_tokens: usize,
        stops: &'static [&'static str],
    },
    Translate {
        max_new_tokens: usize,
    },
}

macro_rules! tasks {
    ($($variant:ident = $name:literal, $shots:literal;)*) => {
        /// The evaluated tasks (ANLI and WMT count one entry per round / language pair).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum TaskId { $($variant),* }

        impl TaskId {
            /// Every task, in the order the paper lists them.
            pub const ALL: &'static [TaskId] = &[$(TaskId::$variant),*];

            /// The task's name on the command line and in reports.
            pub fn name(self) -> &'static str {
                match self { $(TaskId::$variant => $name),* }
            }

            /// The paper's demonstration count.
            pub fn paper_shots(self) -> usize {
                match self { $(TaskId::$variant => $shots),* }
            }
        }
    };
}

tasks! {
    BoolQ = "boolq", 5;
    HellaSwag = "hellaswag", 5;
    Rte = "rte", 5;
    ArcEasy = "arc_easy", 5;
    ArcChallenge = "arc_challenge", 5;
    AnliR1 = "anli_r1", 5;
    AnliR2 = "anli_r2", 5;
    AnliR3 = "anli_r3", 5;
    CommonsenseQa = "commonsense_qa", 7;
    StrategyQa = "strategyqa", 6;
    TriviaQa = "triviaqa", 5;
    UnifiedQa = "unifiedqa", 5;
    Mmlu = "mmlu", 5;
    Gsm8k = "gsm8k", 8;
    Bbh = "bbh", 3;
    WmtEnDe = "wmt_en_de", 5;
    WmtEnZh = "wmt_en_zh", 5;
}

impl TaskId {
    /// How the task is scored.
    pub fn scoring(self) -> Scoring {
        match self {
            TaskId::TriviaQa => open_qa::TRIVIAQA_SCORING,
            TaskId::UnifiedQa => open_qa::UNIFIEDQA_SCORING,
            TaskId::Mmlu => mmlu::SCORING,
            TaskId::Gsm8k => gsm8k::SCORING,
            TaskId::Bbh => bbh::SCORING,
            TaskId::WmtEnDe | TaskId::WmtEnZh => wmt::SCORING,
            _ => Scoring::MultipleChoice,
        }
    }

    /// Reads the task's files under `root` (the folder `redpack fetch` filled from
    /// `data-manifests/eval-tasks.toml`).
    pub fn load(self, root: &Path) -> Result<TaskData, TaskError> {
        match self {
            TaskId::BoolQ => yes_no::boolq(root),
            TaskId::StrategyQa => yes_no::strategyqa(root),
            TaskId::Rte => nli::rte(root),
            TaskId::AnliR1 => nli::anli(root, self, 1),
            TaskId::AnliR2 => nli::anli(root, self, 2),
            TaskId::AnliR3 => nli::anli(root, self, 3),
            TaskId::HellaSwag => hellaswag::load(root),
            TaskId::ArcEasy => arc::load(root, self, "ARC-Easy"),
            TaskId::ArcChallenge => arc::load(root, self, "ARC-Challenge"),
            TaskId::CommonsenseQa => csqa::load(root),
            TaskId::TriviaQa => open_qa::triviaqa(root),
            TaskId::UnifiedQa => open_qa::unifiedqa(root),
            TaskId::Mmlu => mmlu::load(root),
            TaskId::Gsm8k => gsm8k::load(root),
            TaskId::Bbh => bbh::load(root),
            TaskId::WmtEnDe => wmt::en_de(root),
            TaskId::WmtEnZh => wmt::en_zh(root),
        }
    }

    /// A task by name; also `anli` (its three rounds), `arc` (both sets) and `wmt` (both pairs).
    pub fn parse_list(list: &str) -> Result<Vec<TaskId>, TaskError> {
        let mut tasks = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let found: Vec<TaskId> = match name {
                "paper" | "all" => TaskId::ALL.to_vec(),
                "anli" => vec![TaskId::AnliR1, TaskId::AnliR2, TaskId::AnliR3],
                "arc" => vec![TaskId::ArcEasy, TaskId::ArcChallenge],
                "wmt" => vec![TaskId::WmtEnDe, TaskId::WmtEnZh],
                _ => match TaskId::ALL.iter().find(|t| t.name() == name) {
                    Some(task) => vec![*task],
                    None => {
                        return Err(TaskError::UnknownTask {
                            name: name.to_owned(),
                            known: TaskId::ALL
                                .iter()
                                .map(|t| t.name())
                                .collect::<Vec<_>>()
                                .join(", "),
                        })
                    }
                },
            };
            for task in found {
                if !tasks.contains(&task) {
                    tasks.push(task);
                }
            }
        }
        if tasks.is_empty() {
            return Err(TaskError::UnknownTask {
                name: list.to_owned(),
                known: TaskId::ALL
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(tasks)
    }
}

/// The files matching `pattern` (a glob relative to `root`), sorted; an error naming the
/// pattern and the fetch command when there are none.
pub(crate) fn find(root: &Path, task: TaskId, pattern: &str) -> Result<Vec<PathBuf>, TaskError> {
    let full = root.join(pattern);
    let text = full.to_string_lossy();
    let escaped_root = glob::Pattern::escape(&root.to_string_lossy());
    let glob_text = format!("{escaped_root}/{pattern}");
    let mut files: Vec<PathBuf> = glob::glob(&glob_text)
        .map_err(|e| TaskError::Task {
            task: task.name(),
            message: format!("invalid pattern {text}: {e}"),
        })?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TaskError::Missing {
            task: task.name(),
            pattern: pattern.to_owned(),
            root: root.to_owned(),
        });
    }
    Ok(files)
}

/// Every record of the files matching `pattern`, in file order.
pub(crate) fn read_all(
    root: &Path,
    task: TaskId,
    pattern: &str,
) -> Result<Vec<records::Record>, TaskError> {
    let mut all = Vec::new();
    for path in find(root, task, pattern)? {
        all.extend(records::read(&path)?);
    }
    Ok(all)
}

/// `FILE:RECORD` for an example id, the file relative to `root` where possible.
pub(crate) fn record_id(root: &Path, record: &records::Record) -> String {
    let path = record.path.strip_prefix(root).unwrap_or(&record.path);
    format!("{}:{}", path.display(), record.number)
}

/// Examples from records, one per record, through `build`.
pub(crate) fn examples(
    root: &Path,
    records: &[records::Record],
    mut build: impl FnMut(&records::Record) -> Result<Example, TaskError>,
) -> Result<Vec<Example>, TaskError> {
    records
        .iter()
        .map(|record| {
            let mut example = build(record)?;
            example.id = record_id(root, record);
            Ok(example)
        })
        .collect()
}

/// A task read from an evaluated split and a training split.
pub(crate) fn with_train(task: TaskId, eval: Vec<Example>, pool: Vec<Example>) -> TaskData {
    TaskData {
        task,
        eval,
        pool,
        pool_kind: Pool::Train,
        fixed_prompts: BTreeMap::new(),
        fixed_shots: 0,
    }
}

/// A task whose demonstrations come from its evaluated split.
pub(crate) fn same_split(task: TaskId, eval: Vec<Example>) -> TaskData {
    TaskData {
        task,
        pool: eval.clone(),
        eval,
        pool_kind: Pool::SameSplit,
        fixed_prompts: BTreeMap::new(),
        fixed_shots: 0,
    }
}

/// A multiple-choice example whose demonstration answer is its gold choice; a gold index
/// outside the choices is an error naming the record.
pub(crate) fn choice_example(
    record: &records::Record,
    group: &str,
    query: String,
    choices: Vec<String>,
    gold: usize,
) -> Result<Example, TaskError> {
    let Some(demo) = choices.get(gold).cloned() else {
        return Err(record.invalid(format!(
            "the answer is choice {gold} but there are {} choices",
            choices.len()
        )));
    };
    Ok(Example {
        id: String::new(),
        group: group.to_owned(),
        query,
        demo,
        target: Target::Choice { choices, gold },
    })
}

/// A record's `choices` {`text`, `label`} with the index of the one labelled `answerKey`
/// (ARC, CommonsenseQA).
pub(crate) fn keyed_choices(
    record: &records::Record,
) -> Result<(Vec<String>, Vec<String>, usize), TaskError> {
    let texts = record.str_list("choices", Some("text"))?;
    let labels = record.str_list("choices", Some("label"))?;
    if texts.len() != labels.len() {
        return Err(record.invalid(format!(
            "{} choice texts but {} labels",
            texts.len(),
            labels.len()
        )));
    }
    let key = record.str("answerKey")?;
    let gold = labels
        .iter()
        .position(|label| label == key)
        .ok_or_else(|| {
            record.invalid(format!(
                "answerKey {key:?} is none of the labels {labels:?}"
            ))
        })?;
    Ok((texts, labels, gold))
}
