//! `rejects.jsonl`: the first few rejected records of each reason, so a user can see what was
//! wrong without rerunning anything.
//!
//! One JSON object a line: `{"file", "line", "source", "reason", "detail", "snippet"}`, grouped
//! by reason in the order the reasons first occurred, records in input order within a reason.
//! Written atomically next to the manifest.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::Reject;

/// File name inside the output directory.
pub const REJECTS_FILE: &str = "rejects.jsonl";

/// One sampled reject, as written to `rejects.jsonl` (and kept in the scan stage's output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectSample {
    pub file: String,
    pub line: u64,
    pub source: String,
    pub reason: String,
    pub detail: String,
    pub snippet: String,
}

impl RejectSample {
    pub fn of(reject: &Reject) -> Self {
        RejectSample {
            file: reject.place.file.to_string(),
            line: reject.place.line,
            source: reject.source.to_string(),
            reason: reject.reason.as_str().to_string(),
            detail: reject.detail.clone(),
            snippet: reject.snippet.clone(),
        }
    }
}

/// Keeps up to `per_reason` rejects of each reason, in the order offered.
#[derive(Debug)]
pub struct RejectSampler {
    per_reason: usize,
    order: Vec<String>,
    kept: BTreeMap<String, Vec<RejectSample>>,
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
        let reason = reject.reason.as_str();
        if self
            .kept
            .get(reason)
            .is_some_and(|l| l.len() >= self.per_reason)
        {
            return;
        }
        self.offer_sample(RejectSample::of(reject));
    }

    /// Offers an already sampled reject (merging the samples of several files in order gives
    /// the same result as offering their rejects one by one).
    pub fn offer_sample(&mut self, sample: RejectSample) {
        if !self.kept.contains_key(&sample.reason) {
            self.order.push(sample.reason.clone());
        }
        let list = self.kept.entry(sample.reason.clone()).or_default();
        if list.len() < self.per_reason {
            list.push(sample);
        }
    }

    /// Rejects sampled in total.
    pub fn len(&self) -> usize {
        self.kept.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples grouped by reason, reasons in order of first occurrence.
    pub fn samples(&self) -> Vec<RejectSample> {
        self.order
            .iter()
            .flat_map(|reason| self.kept.get(reason).cloned().unwrap_or_default())
            .collect()
    }

    /// The file's contents.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for sample in self.samples() {
            // Serializing plain strings and integers cannot fail.
            if let Ok(json) = serde_json::to_vec(&sample) {
                out.extend(json);
                out.push(b'\n');
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
    use crate::record::{Place, RejectReason};
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
