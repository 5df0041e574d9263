//! WMT translation from English, scored by corpus ChrF ([`super::chrf`]).
//!
//! - **En-De**: WMT14 (`wmt/wmt14`, config `de-en`: `de-en/{validation,test}-*.parquet`, column
//!   `translation` {`de`, `en`}): newstest2014 (test) evaluated, demonstrations from newstest2013
//!   (validation); the 4.5M-pair training split is not needed for five demonstrations.
//! - **En-Zh**: WMT19 (`wmt/wmt19`, config `zh-en`: `zh-en/validation-*.parquet`, column
//!   `translation` {`en`, `zh`}): newstest2018 (the config's only evaluation split) evaluated,
//!   demonstrations drawn from the same split, never the evaluated sentence.
//!
//! Template `"Translate English to {language}.\nEnglish: {source}\n{language}:"`, a
//! demonstration answered `" {reference}"`; decoding stops at a newline, and the hypothesis is
//! that line, trimmed.

use std::path::Path;

use super::records::Record;
use super::{
    examples, read_all, same_split, with_train, Example, Scoring, Target, TaskData, TaskError,
    TaskId,
};

pub(super) const SCORING: Scoring = Scoring::Translate {
    max_new_tokens: 128,
};

fn example(record: &Record, code: &str, language: &str) -> Result<Example, TaskError> {
    let source = record.sub_str("translation", "en")?;
    let reference = record.sub_str("translation", code)?.to_owned();
    Ok(Example {
        id: String::new(),
        group: String::new(),
        query: format!("Translate English to {language}.\nEnglish: {source}\n{language}:"),
        demo: format!(" {reference}"),
        target: Target::Reference(reference),
    })
}

pub(super) fn en_de(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::WmtEnDe;
    let build = |record: &Record| example(record, "de", "German");
    let eval = read_all(root, task, "wmt14/de-en/test-*.parquet")?;
    let pool = read_all(root, task, "wmt14/de-en/validation-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, build)?,
        examples(root, &pool, build)?,
    ))
}

pub(super) fn en_zh(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::WmtEnZh;
    let build = |record: &Record| example(record, "zh", "Chinese");
    let eval = read_all(root, task, "wmt19/zh-en/validation-*.parquet")?;
    Ok(same_split(task, examples(root, &eval, build)?))
}
