//! **BIG-Bench Hard** with chain-of-thought prompting (`lukaemon/bbh`: `{subtask}/test-*.parquet`
//! for the 27 subtasks, columns `input`, `target`): every subtask present under `bbh/` is
//! evaluated.
//!
//! Template as the BBH paper's: `"Q: {input}\nA: Let's think step by step."`. The paper's
//! prompts are three worked exemplars per subtask, published as
//! `cot-prompts/{subtask}.txt` in the BIG-Bench-Hard repository; where `bbh/cot-prompts/` holds a
//! subtask's file and the shot count is 3, that file (after its `-----` header line, when it
//! has one) is the prompt's prefix. Otherwise, as BBH has no training split, demonstrations are
//! drawn from the same subtask's other examples, answered `" So the answer is {target}."`.
//! Decoding stops at a blank line or `Q:`; the answer is the text after the last "the answer
//! is", compared with `target` (an option `(X)` compared by its letter, case ignored).

use std::collections::BTreeMap;
use std::path::Path;

use super::{find, records, Example, Extract, Scoring, Target, TaskData, TaskError, TaskId};

pub(super) const SCORING: Scoring = Scoring::Generate {
    extract: Extract::AnswerIs,
    max_new_tokens: 256,
    stops: &["\n\n", "Q:"],
};

/// The exemplars of a published chain-of-thought prompt file: the text after a `-----` line
/// (the description and canary above it are dropped), else the whole file, trimmed.
pub fn cot_prompt(text: &str) -> String {
    match text.split_once("\n-----\n") {
        Some((_, rest)) => rest.trim().to_owned(),
        None => text.trim().to_owned(),
    }
}

pub(super) fn load(root: &Path) -> Result<TaskData, TaskError> {
    let task = TaskId::Bbh;
    let mut eval = Vec::new();
    for path in find(root, task, "bbh/*/test-*.parquet")? {
        let subtask = path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for record in records::read(&path)? {
            let target = record.str("target")?.trim().to_owned();
            eval.push(Example {
                id: super::record_id(root, &record),
                group: subtask.clone(),
                query: format!("Q: {}\nA: Let's think step by step.", record.str("input")?),
                demo: format!(" So the answer is {target}."),
                target: Target::Answer {
                    answers: vec![target],
                },
            });
        }
    }
    let mut fixed = BTreeMap::new();
    let groups: Vec<String> = eval.iter().map(|e| e.group.clone()).collect();
    for group in groups {
        if fixed.contains_key(&group) {
            continue;
        }
        let path = root.join("bbh/cot-prompts").join(format!("{group}.txt"));
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|source| TaskError::Io {
                path: path.clone(),
                source,
            })?;
            fixed.insert(group, cot_prompt(&text));
        }
    }
    let mut data = super::same_split(task, eval);
    data.fixed_prompts = fixed;
    data.fixed_shots = 3;
    Ok(data)
}
