//! **GSM8K** (`openai/gsm8k`, config `main`: `main/{train,test}-*.parquet`, columns `question`,
//! `answer`, the worked solution ending in `#### N`): the test split evaluated, demonstrations
//! from train. As the lm-evaluation-harness's `gsm8k`: `"Question: {question}\nAnswer:"`, a
//! demonstration's answer is the whole published solution; decoding stops at `Question:` or a
//! blank line. The prediction is the number after `####`, else the last number in the output;
//! it is correct when it equals the gold number (commas, `$` and a final `.` ignored).

use std::path::Path;

use super::records::Record;
use super::scoring::gsm8k_gold;
use super::{
    examples, read_all, with_train, Example, Extract, Scoring, Target, TaskData, TaskError, TaskId,
};

pub(super) const SCORING: Scoring = Scoring::Generate {
    extract: Extract::Gsm8k,
    max_new_tokens: 256,
    stops: &["Question:", "\n\n"],
};

fn example(record: &Record) -> Result<Example, TaskError> {
    let answer = record.str("answer")?;
    let gold = gsm8k_gold(answer)
        .ok_or_else(|| record.invalid("field `answer` has no `#### N` final answer"))?;
    Ok(Example {
        id: String::new(),
        group: String::new(),
        query: format!("Question: {}\nAnswer:", record.str("question")?),
        demo: format!(" {answer}"),
        target: Target::Answer {
            answers: vec![gold],
        },
    })
}

pub(super) fn load(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::Gsm8k;
    let eval = read_all(root, task, "gsm8k/main/test-*.parquet")?;
    let train = read_all(root, task, "gsm8k/main/train-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, example)?,
        examples(root, &train, example)?,
    ))
}
