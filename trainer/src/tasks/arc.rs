//! **ARC-Easy** and **ARC-Challenge** (`allenai/ai2_arc`: `{ARC-Easy,ARC-Challenge}/{train,test}-*.parquet`,
//! columns `id`, `question`, `choices` {`text`, `label`}, `answerKey`): the test split evaluated,
//! demonstrations from train. As the lm-evaluation-harness's `arc_easy` / `arc_challenge`:
//! `"Question: {question}\nAnswer:"`, each choice `" {text}"`, the gold one the choice whose
//! label is `answerKey`.

use std::path::Path;

use super::records::Record;
use super::{
    choice_example, examples, keyed_choices, read_all, with_train, Example, TaskData, TaskError,
    TaskId,
};

fn example(record: &Record) -> Result<Example, TaskError> {
    let (texts, _, gold) = keyed_choices(record)?;
    let query = format!("Question: {}\nAnswer:", record.str("question")?);
    let choices = texts.iter().map(|text| format!(" {text}")).collect();
    choice_example(record, "", query, choices, gold)
}

pub(super) fn load(root: &Path, task: TaskId, set: &str) -> Result<TaskData, TaskError> {
    let eval = read_all(root, task, &format!("ai2_arc/{set}/test-*.parquet"))?;
    let train = read_all(root, task, &format!("ai2_arc/{set}/train-*.parquet"))?;
    Ok(with_train(
        task,
        examples(root, &eval, example)?,
        examples(root, &train, example)?,
    ))
}
