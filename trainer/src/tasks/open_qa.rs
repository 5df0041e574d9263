//! Short-answer questions, decoded greedily and scored by normalized exact match (lower case,
//! punctuation and the articles a/an/the removed, spaces collapsed, as SQuAD's metric).
//!
//! - **TriviaQA** (`mandarjoshi/trivia_qa`, config `rc.nocontext`:
//!   `rc.nocontext/{train,validation}-*.parquet`, columns `question`, `question_id`,
//!   `question_source`, `entity_pages`, `search_results`, `answer` {`aliases`,
//!   `normalized_aliases`, `matched_wiki_entity_name`, `normalized_matched_wiki_entity_name`,
//!   `normalized_value`, `type`, `value`}): validation evaluated, demonstrations from train. As
//!   the lm-evaluation-harness's `triviaqa`: `"Question: {question}?\nAnswer:"`, decoding stops
//!   at a newline, `.` or `,`; correct when the answer equals `value` or one of the `aliases`.
//! - **UnifiedQA** (`allenai/unifiedqa`'s published TSV files, `{dataset}/{train,dev}.tsv`, one
//!   `input<TAB>output` a line with line breaks written as the two characters backslash-n, which
//!   become a newline with the spaces around it trimmed): every
//!   dataset folder present under `unifiedqa/` is evaluated on `dev.tsv` with demonstrations
//!   from the same dataset's `train.tsv`; the manifest lists the science multiple-choice sets
//!   (`ai2_science_elementary`, `ai2_science_middle`, `openbookqa`). Template
//!   `"{input}\nAnswer:"`, decoding stops at a newline, correct when the answer equals `output`.

use std::path::Path;

use super::records::Record;
use super::{
    examples, find, read_all, with_train, Example, Extract, Scoring, Target, TaskData, TaskError,
    TaskId,
};

pub(super) const TRIVIAQA_SCORING: Scoring = Scoring::Generate {
    extract: Extract::Short,
    max_new_tokens: 32,
    stops: &["\n", ".", ","],
};

pub(super) const UNIFIEDQA_SCORING: Scoring = Scoring::Generate {
    extract: Extract::Short,
    max_new_tokens: 32,
    stops: &["\n"],
};

fn trivia_example(record: &Record) -> Result<Example, TaskError> {
    let value = record.sub_str("answer", "value")?.to_owned();
    let mut answers = vec![value.clone()];
    answers.extend(record.str_list("answer", Some("aliases"))?);
    Ok(Example {
        id: String::new(),
        group: String::new(),
        query: format!("Question: {}?\nAnswer:", record.str("question")?),
        demo: format!(" {value}"),
        target: Target::Answer { answers },
    })
}

pub(super) fn triviaqa(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::TriviaQa;
    let eval = read_all(root, task, "triviaqa/rc.nocontext/validation-*.parquet")?;
    let train = read_all(root, task, "triviaqa/rc.nocontext/train-*.parquet")?;
    Ok(with_train(
        task,
        examples(root, &eval, trivia_example)?,
        examples(root, &train, trivia_example)?,
    ))
}

/// The examples of one UnifiedQA TSV file.
fn read_tsv(root: &Path, path: &Path, group: &str) -> Result<Vec<Example>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((input, output)) = line.split_once('\t') else {
            return Err(TaskError::Record {
                path: path.to_owned(),
                record: index + 1,
                message: "expected `input<TAB>output`".to_owned(),
            });
        };
        let input = input
            .split("\\n")
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n");
        let output = output.trim().to_owned();
        let relative = path.strip_prefix(root).unwrap_or(path);
        out.push(Example {
            id: format!("{}:{}", relative.display(), index + 1),
            group: group.to_owned(),
            query: format!("{input}\nAnswer:"),
            demo: format!(" {output}"),
            target: Target::Answer {
                answers: vec![output],
            },
        });
    }
    Ok(out)
}

pub(super) fn unifiedqa(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::UnifiedQa;
    let mut eval = Vec::new();
    let mut pool = Vec::new();
    for dev in find(root, task, "unifiedqa/*/dev.tsv")? {
        let dir = dev.parent().unwrap_or(root);
        let group = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let train = dir.join("train.tsv");
        if !train.is_file() {
            return Err(TaskError::Missing {
                task: task.name(),
                pattern: format!("unifiedqa/{group}/train.tsv"),
                root: root.to_owned(),
            });
        }
        eval.extend(read_tsv(root, &dev, &group)?);
        pool.extend(read_tsv(root, &train, &group)?);
    }
    Ok(with_train(task, eval, pool))
}
