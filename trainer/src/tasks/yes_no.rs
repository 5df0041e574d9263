//! Yes/no questions scored as two choices, `" no"` and `" yes"`.
//!
//! - **BoolQ** (`google/boolq`: `data/{train,validation}-*.parquet`, columns `question`,
//!   `answer` (bool), `passage`): the validation split is evaluated, demonstrations from train.
//!   Template as the lm-evaluation-harness's `boolq`:
//!   `"{passage}\nQuestion: {question}?\nAnswer:"`.
//! - **StrategyQA** (`ChilleD/StrategyQA`: `data/{train,test}-*.parquet`, columns `qid`, `term`,
//!   `description`, `question`, `answer` (bool), `facts`): the test split is evaluated,
//!   demonstrations from train. Template `"Question: {question}\nAnswer:"`, the question-answer
//!   layout the harness uses for closed-book questions; the answer is a log-likelihood choice
//!   (no chain of thought).

use std::path::Path;

use super::records::Record;
use super::{choice_example, examples, read_all, with_train, Example, TaskData, TaskError, TaskId};

fn yes_no(record: &Record, query: String, answer: bool) -> Result<Example, TaskError> {
    choice_example(
        record,
        "",
        query,
        vec![" no".to_owned(), " yes".to_owned()],
        usize::from(answer),
    )
}

fn boolq_example(record: &Record) -> Result<Example, TaskError> {
    let query = format!(
        "{}\nQuestion: {}?\nAnswer:",
        record.str("passage")?,
        record.str("question")?
    );
    yes_no(record, query, record.bool("answer")?)
}

fn strategyqa_example(record: &Record) -> Result<Example, TaskError> {
    let query = format!("Question: {}\nAnswer:", record.str("question")?);
    yes_no(record, query, record.bool("answer")?)
}

pub(super) fn boolq(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::BoolQ;
    let eval = read_all(root, task, "boolq/data/validation-*.parquet")?;
    let train = read_all(root, task, "boolq/data/train-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, boolq_example)?,
        examples(root, &train, boolq_example)?,
    ))
}

pub(super) fn strategyqa(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::StrategyQa;
    let eval = read_all(root, task, "strategyqa/data/test-*.parquet")?;
    let train = read_all(root, task, "strategyqa/data/train-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, strategyqa_example)?,
        examples(root, &train, strategyqa_example)?,
    ))
}
