//! **CommonsenseQA** (`tau/commonsense_qa`: `data/{train,validation}-*.parquet`, columns `id`,
//! `question`, `question_concept`, `choices` {`label`, `text`}, `answerKey`): the validation
//! split evaluated (the test split has no answers), demonstrations from train. As the
//! lm-evaluation-harness's `commonsense_qa`: the question with lettered options,
//! `"Question: {question}\nA. {text}\nB. ...\nAnswer:"`, scored over the letters `" A"` ... `" E"`.

use std::path::Path;

use super::records::Record;
use super::{
    choice_example, examples, keyed_choices, read_all, with_train, Example, TaskData, TaskError,
    TaskId,
};

fn example(record: &Record) -> Result<Example, TaskError> {
    let (texts, labels, gold) = keyed_choices(record)?;
    let mut query = format!("Question: {}\n", record.str("question")?.trim());
    for (label, text) in labels.iter().zip(&texts) {
        query.push_str(&format!("{label}. {text}\n"));
    }
    query.push_str("Answer:");
    let choices = labels.iter().map(|label| format!(" {label}")).collect();
    choice_example(record, "", query, choices, gold)
}

pub(super) fn load(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::CommonsenseQa;
    let eval = read_all(root, task, "commonsense_qa/data/validation-*.parquet")?;
    let train = read_all(root, task, "commonsense_qa/data/train-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, example)?,
        examples(root, &train, example)?,
    ))
}
