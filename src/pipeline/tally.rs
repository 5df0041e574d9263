//! Where every record went, overall and per source.
//!
//! Each record read is counted exactly once, as kept, exact duplicate, near duplicate,
//! filtered or rejected (with its reason); tokens and examples are added from the packer's
//! per-source tallies at the end. The manifest's invariant
//! `records_read = kept + exact_duplicates + near_duplicates + filtered + rejected` holds by
//! construction and is checked before the manifest is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use redpack_schemas::Counts;

use crate::pack::SourceTally;
use crate::record::RejectReason;

/// The fate of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Kept,
    ExactDuplicate,
    NearDuplicate,
    Filtered,
    Rejected(RejectReason),
}

/// Counts keyed by source, in a hash map while the build runs.
#[derive(Debug, Default)]
pub struct Tally {
    sources: HashMap<Arc<str>, Counts>,
}

impl Tally {
    pub fn new() -> Self {
        Tally::default()
    }

    /// Counts one record of `source`.
    pub fn record(&mut self, source: &Arc<str>, outcome: Outcome) {
        let counts = match self.sources.get_mut(source) {
            Some(counts) => counts,
            None => self.sources.entry(source.clone()).or_default(),
        };
        counts.records_read += 1;
        match outcome {
            Outcome::Kept => counts.kept += 1,
            Outcome::ExactDuplicate => counts.exact_duplicates += 1,
            Outcome::NearDuplicate => counts.near_duplicates += 1,
            Outcome::Filtered => counts.filtered += 1,
            Outcome::Rejected(reason) => {
                counts.rejected += 1;
                *counts
                    .rejected_by_reason
                    .entry(reason.as_str().to_string())
                    .or_default() += 1;
            }
        }
    }

    /// The counts so far, by source name.
    pub fn into_counts(self) -> BTreeMap<String, Counts> {
        self.sources
            .into_iter()
            .map(|(name, counts)| (name.to_string(), counts))
            .collect()
    }

    /// A tally that starts from counts gathered elsewhere (the stages' per-file outputs).
    pub fn from_counts(counts: BTreeMap<String, Counts>) -> Self {
        Tally {
            sources: counts
                .into_iter()
                .map(|(name, counts)| (Arc::from(name.as_str()), counts))
                .collect(),
        }
    }

    /// Totals so far (for progress): records read, duplicates (exact + near), rejected.
    pub fn running_totals(&self) -> (u64, u64, u64) {
        self.sources
            .values()
            .fold((0, 0, 0), |(read, dup, rej), c| {
                (
                    read + c.records_read,
                    dup + c.exact_duplicates + c.near_duplicates,
                    rej + c.rejected,
                )
            })
    }

    /// Final per-source and overall counts, with the packer's token/example tallies and the
    /// number of examples written (a packed sequence can hold several sources, so the overall
    /// example count is not the sum of the per-source ones).
    pub fn finish(
        self,
        written: &BTreeMap<Arc<str>, SourceTally>,
        examples_written: u64,
    ) -> (Counts, BTreeMap<String, Counts>) {
        let mut sources: BTreeMap<String, Counts> = self
            .sources
            .into_iter()
            .map(|(name, counts)| (name.to_string(), counts))
            .collect();
        for (name, tally) in written {
            let counts = sources.entry(name.to_string()).or_default();
            counts.tokens += tally.tokens;
            counts.examples += tally.examples;
        }
        let mut total = Counts::default();
        for counts in sources.values() {
            total.add(counts);
        }
        total.examples = examples_written;
        (total, sources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_is_counted_once() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut tally = Tally::new();
        tally.record(&a, Outcome::Kept);
        tally.record(&a, Outcome::ExactDuplicate);
        tally.record(&b, Outcome::Rejected(RejectReason::InvalidJson));
        tally.record(&b, Outcome::Filtered);
        tally.record(&b, Outcome::NearDuplicate);
        assert_eq!(tally.running_totals(), (5, 2, 1));
        let written = BTreeMap::from([(
            a.clone(),
            SourceTally {
                tokens: 10,
                examples: 2,
            },
        )]);
        let (total, sources) = tally.finish(&written, 2);
        total.check_invariant().unwrap();
        assert_eq!(total.records_read, 5);
        assert_eq!(total.tokens, 10);
        assert_eq!(total.rejected_by_reason["invalid_json"], 1);
        assert_eq!(sources["b"].rejected, 1);
        for counts in sources.values() {
            counts.check_invariant().unwrap();
        }
    }
}
