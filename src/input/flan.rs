//! FLAN records from JSONL exports: an input string, a target string and an optional task name.
//!
//! Field names come from [`FieldMap`](super::FieldMap). The task is metadata: when it is absent,
//! null or not a string the example is still kept, with no task, because dropping a good
//! example over its label would lose training data for nothing. Input and target are required.

use super::fields::FieldValue;
use super::redpajama::require_string;
use crate::record::{Content, RejectReason};

/// Builds the content from `[input, target, task candidates...]` values, in that order. The
/// first task candidate holding a string names the task.
pub fn content(
    values: Vec<FieldValue>,
    input_field: &str,
    target_field: &str,
) -> Result<Content, (RejectReason, String)> {
    let mut values = values.into_iter();
    let input = require_string(values.next().unwrap_or(FieldValue::Absent), input_field)?;
    let target = require_string(values.next().unwrap_or(FieldValue::Absent), target_field)?;
    let task = values.find_map(|value| match value {
        FieldValue::Str(task) => Some(task),
        _ => None,
    });
    Ok(Content::Pair {
        input,
        target,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fields::extract;
    use super::super::FieldMap;
    use super::*;

    fn read(line: &str, map: &FieldMap) -> Result<Content, (RejectReason, String)> {
        let mut wanted = vec![map.input.as_str(), map.target.as_str()];
        wanted.extend(map.task_candidates());
        content(extract(line, &wanted).unwrap(), &map.input, &map.target)
    }

    #[test]
    fn default_map_reads_both_flan_exports() {
        let map = FieldMap::default();
        let jsonl = r#"{"inputs": "Q?", "targets": "A.", "task": "strategyqa"}"#;
        let parquet_like = r#"{"inputs": "Q?", "targets": "A.", "_task_name": "qasc", "_template_type": "zs_opt"}"#;
        let expect = |task: &str| Content::Pair {
            input: "Q?".into(),
            target: "A.".into(),
            task: Some(task.into()),
        };
        assert_eq!(read(jsonl, &map).unwrap(), expect("strategyqa"));
        assert_eq!(read(parquet_like, &map).unwrap(), expect("qasc"));
    }

    #[test]
    fn source_target_preset_and_missing_task() {
        let map = FieldMap::source_target();
        let line = r#"{"source": "in", "target": "out"}"#;
        let expect = Content::Pair {
            input: "in".into(),
            target: "out".into(),
            task: None,
        };
        assert_eq!(read(line, &map).unwrap(), expect);
        let numeric_task = r#"{"source": "in", "target": "out", "task_name": 7}"#;
        assert_eq!(read(numeric_task, &map).unwrap(), expect);
    }

    #[test]
    fn input_and_target_are_required_strings() {
        let map = FieldMap::flan_jsonl();
        let (reason, detail) = read(r#"{"inputs": "Q?"}"#, &map).unwrap_err();
        assert_eq!(
            (reason, detail.as_str()),
            (RejectReason::MissingField, "field `targets` is missing")
        );
        let (reason, _) = read(r#"{"inputs": 1, "targets": "A"}"#, &map).unwrap_err();
        assert_eq!(reason, RejectReason::NonStringField);
    }
}
