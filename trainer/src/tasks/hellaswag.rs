//! **HellaSwag** (`Rowan/hellaswag`: `data/{train,validation}-*.parquet`, columns `ind`,
//! `activity_label`, `ctx_a`, `ctx_b`, `ctx`, `endings`, `source_id`, `split`, `split_type`,
//! `label` (a string index)): validation evaluated, demonstrations from train.
//!
//! As the lm-evaluation-harness's `hellaswag`: the query is
//! `preprocess("{activity_label}: {ctx_a} {capitalize(ctx_b)}")` and each choice
//! `" " + preprocess(ending)`, where `preprocess` trims, turns `" [title]"` into `". "`, drops
//! any other bracketed tag (`[header]`, `[step]`) and replaces double spaces with one, and
//! `capitalize` upper-cases the first character and lower-cases the rest (Python's
//! `str.capitalize`).

use std::path::Path;

use super::records::Record;
use super::{choice_example, examples, read_all, with_train, Example, TaskData, TaskError, TaskId};

/// The harness's HellaSwag text clean-up.
pub fn preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let line_end = after.find('\n').unwrap_or(after.len());
        match after[..line_end].find(']') {
            Some(close) => rest = &after[close + 1..],
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
pub fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

fn example(record: &Record) -> Result<Example, TaskError> {
    let context = format!(
        "{}: {} {}",
        record.str("activity_label")?,
        record.str("ctx_a")?,
        capitalize(record.str("ctx_b")?)
    );
    let choices = record
        .str_list("endings", None)?
        .iter()
        .map(|ending| format!(" {}", preprocess(ending)))
        .collect();
    choice_example(
        record,
        "",
        preprocess(&context),
        choices,
        record.index("label")?,
    )
}

pub(super) fn load(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::HellaSwag;
    let eval = read_all(root, task, "hellaswag/data/validation-*.parquet")?;
    let train = read_all(root, task, "hellaswag/data/train-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, example)?,
        examples(root, &train, example)?,
    ))
}
