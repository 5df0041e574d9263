//! **MMLU** with chain-of-thought prompting (`cais/mmlu`, config `all`:
//! `all/{dev,test}-*.parquet`, columns `question`, `subject`, `choices` (four strings), `answer`
//! (0-3)): the test split evaluated; demonstrations are the dev split's examples of the same
//! subject (five per subject, the split MMLU publishes for few-shot prompting).
//!
//! Template in the format of the Flan-T5 chain-of-thought evaluation:
//! `"Q: {question}\n(A) {a} (B) {b} (C) {c} (D) {d}\nA: Let's think step by step."`. The dev
//! split has no written rationales, so a demonstration goes straight to
//! `" The answer is (X)."`. Decoding stops at a blank line or `Q:`; the answer is the letter
//! after the last "the answer is".

use std::path::Path;

use super::records::Record;
use super::{examples, read_all, Example, Extract, Scoring, Target, TaskData, TaskError, TaskId};

pub(super) const SCORING: Scoring = Scoring::Generate {
    extract: Extract::AnswerIs,
    max_new_tokens: 256,
    stops: &["\n\n", "Q:"],
};

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

fn example(record: &Record) -> Result<Example, TaskError> {
    let choices = record.str_list("choices", None)?;
    if choices.len() != 4 {
        return Err(record.invalid(format!("expected 4 choices, found {}", choices.len())));
    }
    let answer = record.index("answer")?;
    let Some(letter) = LETTERS.get(answer) else {
        return Err(record.invalid(format!("answer {answer} is not 0-3")));
    };
    let options: Vec<String> = LETTERS
        .iter()
        .zip(&choices)
        .map(|(l, c)| format!("({l}) {c}"))
        .collect();
    Ok(Example {
        id: String::new(),
        group: record.str("subject")?.to_owned(),
        query: format!(
            "Q: {}\n{}\nA: Let's think step by step.",
            record.str("question")?,
            options.join(" ")
        ),
        demo: format!(" The answer is ({letter})."),
        target: Target::Answer {
            answers: vec![(*letter).to_owned()],
        },
    })
}

pub(super) fn load(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::Mmlu;
    let eval = read_all(root, task, "mmlu/all/test-*.parquet")?;
    let dev = read_all(root, task, "mmlu/all/dev-*.parquet")?;
    Ok(super::with_train(
        task,
        examples(root, &eval, example)?,
        examples(root, &dev, example)?,
    ))
}
