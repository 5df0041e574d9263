//! Natural language inference as choices of a word after the hypothesis.
//!
//! - **RTE** (SuperGLUE, `aps/super_glue` config `rte`: `rte/{train,validation}-*.parquet`,
//!   columns `premise`, `hypothesis`, `idx`, `label` with 0 = entailment, 1 = not entailment):
//!   validation evaluated, demonstrations from train. Template as the lm-evaluation-harness's
//!   `sglue_rte`: `"{premise}\nQuestion: {hypothesis} True or False?\nAnswer:"`, choices
//!   `" True"` (entailment) and `" False"`.
//! - **ANLI** R1-R3 (`facebook/anli`: `plain_text/{train,test}_rN-*.parquet`, columns `uid`,
//!   `premise`, `hypothesis`, `label` with 0 = entailment, 1 = neutral, 2 = contradiction,
//!   `reason`): each round's test split evaluated, demonstrations from its train split. Template
//!   as the harness's `anli_rN`: `"{premise}\nQuestion: {hypothesis} True, False, or
//!   Neither?\nAnswer:"`, choices `" True"`, `" Neither"`, `" False"` in label order.

use std::path::Path;

use super::records::Record;
use super::{choice_example, examples, read_all, with_train, Example, TaskData, TaskError, TaskId};

fn rte_example(record: &Record) -> Result<Example, TaskError> {
    let query = format!(
        "{}\nQuestion: {} True or False?\nAnswer:",
        record.str("premise")?,
        record.str("hypothesis")?
    );
    let choices = vec![" True".to_owned(), " False".to_owned()];
    choice_example(record, "", query, choices, record.index("label")?)
}

fn anli_example(record: &Record) -> Result<Example, TaskError> {
    let query = format!(
        "{}\nQuestion: {} True, False, or Neither?\nAnswer:",
        record.str("premise")?,
        record.str("hypothesis")?
    );
    let choices = vec![
        " True".to_owned(),
        " Neither".to_owned(),
        " False".to_owned(),
    ];
    choice_example(record, "", query, choices, record.index("label")?)
}

pub(super) fn rte(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::Rte;
    let eval = read_all(root, task, "rte/validation-*.parquet")?;
    let train = read_all(root, task, "rte/train-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, rte_example)?,
        examples(root, &train, rte_example)?,
    ))
}

pub(super) fn anli(root: &Path, task: TaskId, round: u32) -> Result<TaskData, TaskError> {
    let eval = read_all(
        root,
        task,
        &format!("anli/plain_text/test_r{round}-*.parquet"),
    )?;
    let train = read_all(
        root,
        task,
        &format!("anli/plain_text/train_r{round}-*.parquet"),
    )?;
    Ok(with_train(
        task,
        examples(root, &eval, anli_example)?,
        examples(root, &train, anli_example)?,
    ))
}
