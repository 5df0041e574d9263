//! `rejects.jsonl`: the first few rejected records of each reason, so a user can see what was
//! wrong without rerunning anything.
//!
//! One JSON object a line: `{"file", "line", "source", "reason", "detail", "snippet"}`, grouped
//! by reason in the order the reasons first occurred, records in input order within a reason.
//! Written atomically next to the manifest.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::record::{Reject, RejectReason};

/// File name inside the output directory.
pub const REJECTS_FILE: &str = "rejects.jsonl";

#[derive(Debug, Serialize)]
struct RejectLine<'a> {
    file: &'a str,
    line: u64,
    source: &'a str,
    reason: &'a str,
    detail: &'a str,
    snippet: &'a str,
}

/// Keeps up to `per_reason` rejects of each reason.
#[derive(Debug)]
pub struct RejectSampler {
    per_reason: usize,
    order: Vec<RejectReason>,
    kept: BTreeMap<RejectReason, Vec<Reject>>,
}

impl RejectSampler {
    pub fn new(per_reason: usize) -> Self {
        RejectSampler {
            per_reason,
            order: Vec::new(),
            kept: BTreeMap::new(),
        }
    }

    pub fn offer(&mut self, reject: &Reject) {
        let list = self.kept.entry(reject.reason).or_default();
        if list.is_empty() && !self.order.contains(&reject.reason) {
            self.order.push(reject.reason);
        }
        if list.len() < self.per_reason {
            list.push(reject.clone());
        }
    }

    /// Rejects sampled in total.
    pub fn len(&self) -> usize {
        self.kept.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's contents.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for reason in &self.order {
            for reject in self.kept.get(reason).map(Vec::as_slice).unwrap_or_default() {
                let line = RejectLine {
                    file: &reject.place.file,
                    line: reject.place.line,
                    source: &reject.source,
                    reason: reject.reason.as_str(),
                    detail: &reject.detail,
                    snippet: &reject.snippet,
                };
                // Serializing plain strings and integers cannot fail.
                if let Ok(json) = serde_json::to_vec(&line) {
                    out.extend(json);
                    out.push(b'\n');
                }
            }
        }
        out
    }

    /// Writes `dir/rejects.jsonl` atomically (an empty file when nothing was rejected, so a
    /// stale one from an earlier build never survives).
    pub fn write(&self, dir: &Path) -> Result<(), redpack_schemas::SchemaError> {
        redpack_schemas::atomic::write_file(&dir.join(REJECTS_FILE), &self.to_jsonl())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Place;
    use std::sync::Arc;

    fn reject(line: u64, reason: RejectReason) -> Reject {
        Reject {
            source: Arc::from("arxiv"),
            place: Place {
                file: Arc::from("a.jsonl"),
                line,
            },
            reason,
            detail: "bad".into(),
            snippet: "{\"te".into(),
        }
    }

    #[test]
    fn keeps_the_first_of_each_reason() {
        let mut sampler = RejectSampler::new(2);
        for (line, reason) in [
            (1, RejectReason::NotAnObject),
            (2, RejectReason::InvalidJson),
            (3, RejectReason::NotAnObject),
            (4, RejectReason::NotAnObject),
        ] {
            sampler.offer(&reject(line, reason));
        }
        let text = String::from_utf8(sampler.to_jsonl()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(u64, &str)> = lines
            .iter()
            .map(|v| (v["line"].as_u64().unwrap(), v["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "not_an_object"),
                (3, "not_an_object"),
                (2, "invalid_json")
            ]
        );
        assert_eq!(lines[0]["file"], "a.jsonl");
    }
}
