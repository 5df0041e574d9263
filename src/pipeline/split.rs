//! The held-out evaluation split (`eval_docs`): which kept documents go to the evaluation
//! corpus in `OUT/eval/` instead of into training.
//!
//! - **Identity.** A document is known by its origin, `PATH:LINE` (the input file as the plan
//!   names it and the record's line, or row, in it), the same string the packer records as an
//!   example's origin. It depends on neither the thread count, the worker count, a staged or
//!   resumed build, nor which other files are in the build.
//! - **Allocation** (the number per source). Sources with kept documents share `N` in
//!   proportion to their kept documents by the largest-remainder method: each gets the floor of
//!   its quota `N * kept / total`, and the documents left go one each to the largest fractional
//!   parts (ties: the source whose name sorts first). When `N` is at least the number of such
//!   sources, a source left with none takes one from the source with the largest allocation
//!   (ties: the name that sorts first), so every source is represented; with fewer documents
//!   than sources, the smallest sources can get none. No source gets more than it kept.
//!   `N` larger than the kept documents is an error naming both numbers; `N` equal to them
//!   leaves the training corpus empty.
//! - **Choice** (which documents). Within a source, the documents with the smallest
//!   `xxh3_64(origin, EVAL_SPLIT_KEY)` (ties by input order) are held out.
//!
//! Dedup keeps the earliest copy of a document and counts the later ones as duplicates, so an
//! evaluation document never has an exact or near duplicate left in the training corpus: the
//! split is taken from the documents that survived dedup, and each of them is on one side only.

use std::collections::{BTreeMap, BinaryHeap, HashSet};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The evaluation corpus's directory inside the output directory.
pub const EVAL_DIR: &str = "eval";

/// The key of the selection hash (fixed, so the same documents are held out in every build of
/// the same inputs).
pub const EVAL_SPLIT_KEY: u64 = 0x2510_2662_e7a1_5e1d;

/// How the documents are chosen, as the manifest records it.
pub const SELECTION: &str = "per source, the documents with the smallest \
    xxh3_64(\"PATH:LINE\", key); sources share eval_docs in proportion to their kept documents \
    (largest remainder, at least one per source when eval_docs >= sources)";

/// The selection hash of a document with origin `origin`.
pub fn selection_hash(origin: &str) -> u64 {
    xxh3_64_with_seed(origin.as_bytes(), EVAL_SPLIT_KEY)
}

/// Why no split can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error(
        "--eval-docs {wanted} is more than the {kept} documents kept after dedup; ask for at \
         most {kept} (with --resume, only the finish stage runs again)"
    )]
    TooMany { wanted: u64, kept: u64 },
}

/// Splits `wanted` documents over the sources by their kept documents (see the module
/// documentation for the rule). Sources with no kept documents get no entry.
pub fn allocate(
    kept: &BTreeMap<String, u64>,
    wanted: u64,
) -> Result<BTreeMap<String, u64>, SplitError> {
    let total: u64 = kept.values().sum();
    if wanted > total {
        return Err(SplitError::TooMany {
            wanted,
            kept: total,
        });
    }
    let sources: Vec<(&String, u64)> = kept
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(name, &n)| (name, n))
        .collect();
    // Quotas as exact fractions wanted * n / total: floor and remainder in u128.
    let mut shares: Vec<(u64, u128)> = sources
        .iter()
        .map(|&(_, n)| {
            let exact = u128::from(wanted) * u128::from(n);
            let total = u128::from(total);
            ((exact / total) as u64, exact % total)
        })
        .collect();
    let given: u64 = shares.iter().map(|s| s.0).sum();
    let mut order: Vec<usize> = (0..sources.len()).collect();
    // Largest remainder first; equal remainders in name order (`sources` is sorted by name).
    order.sort_by(|&a, &b| shares[b].1.cmp(&shares[a].1).then(a.cmp(&b)));
    for &i in order.iter().take((wanted - given) as usize) {
        shares[i].0 += 1;
    }
    if wanted >= sources.len() as u64 {
        for i in 0..sources.len() {
            if shares[i].0 > 0 {
                continue;
            }
            // Some source has two or more: the others hold `wanted` >= sources in all.
            let donor = (0..sources.len())
                .filter(|&j| shares[j].0 >= 2)
                .max_by(|&a, &b| shares[a].0.cmp(&shares[b].0).then(b.cmp(&a)));
            if let Some(donor) = donor {
                shares[donor].0 -= 1;
                shares[i].0 += 1;
            }
        }
    }
    Ok(sources
        .iter()
        .zip(shares)
        .map(|(&(name, _), (count, _))| (name.clone(), count))
        .collect())
}

/// One candidate for the evaluation corpus: its selection hash and where its tokens are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    hash: u64,
    file: u32,
    offset: u64,
}

/// Picks, per source, the `quota` documents with the smallest selection hash, seeing every
/// kept document once, in any order.
#[derive(Debug)]
pub struct Selector {
    quotas: BTreeMap<String, u64>,
    chosen: BTreeMap<String, BinaryHeap<Candidate>>,
}

impl Selector {
    pub fn new(quotas: BTreeMap<String, u64>) -> Self {
        Selector {
            quotas,
            chosen: BTreeMap::new(),
        }
    }

    /// Offers the document of `source` with origin `origin`, stored at (`file`, `offset`) of
    /// the token scratch files.
    pub fn offer(&mut self, source: &str, origin: &str, file: u32, offset: u64) {
        let quota = self.quotas.get(source).copied().unwrap_or(0) as usize;
        if quota == 0 {
            return;
        }
        let candidate = Candidate {
            hash: selection_hash(origin),
            file,
            offset,
        };
        let heap = match self.chosen.get_mut(source) {
            Some(heap) => heap,
            None => self.chosen.entry(source.to_string()).or_default(),
        };
        if heap.len() < quota {
            heap.push(candidate);
        } else if heap.peek().is_some_and(|worst| candidate < *worst) {
            heap.pop();
            heap.push(candidate);
        }
    }

    /// The held-out documents as (file, offset) in input order, and their number per source.
    pub fn finish(self) -> EvalSet {
        let mut docs: Vec<(u32, u64)> = Vec::new();
        let mut per_source = BTreeMap::new();
        for (source, heap) in self.chosen {
            per_source.insert(source, heap.len() as u64);
            docs.extend(heap.into_iter().map(|c| (c.file, c.offset)));
        }
        docs.sort_unstable();
        EvalSet {
            members: docs.iter().copied().collect(),
            docs,
            per_source,
        }
    }
}

/// The documents held out for evaluation.
#[derive(Debug, Default)]
pub struct EvalSet {
    /// (file, offset) of the token scratch files, in input order.
    pub docs: Vec<(u32, u64)>,
    members: HashSet<(u32, u64)>,
    /// Held-out documents per source.
    pub per_source: BTreeMap<String, u64>,
}

impl EvalSet {
    pub fn contains(&self, file: usize, offset: u64) -> bool {
        self.members.contains(&(file as u32, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(n, k)| (n.to_string(), k)).collect()
    }

    #[test]
    fn proportional_with_largest_remainders() {
        // Quotas 10 * (5, 3, 2) / 10 = 5, 3, 2 exactly.
        let got = allocate(&kept(&[("a", 50), ("b", 30), ("c", 20)]), 10).unwrap();
        assert_eq!(got, kept(&[("a", 5), ("b", 3), ("c", 2)]));
        // Quotas 4 * (1, 1, 1) / 3 = 1.33 each: the one left goes to the first name.
        let got = allocate(&kept(&[("x", 7), ("y", 7), ("z", 7)]), 4).unwrap();
        assert_eq!(got, kept(&[("x", 2), ("y", 1), ("z", 1)]));
        // Quotas 7 * (6, 3, 1) / 10 = 4.2, 2.1, 0.7: floors 4, 2, 0 and c's .7 takes the last.
        let got = allocate(&kept(&[("a", 6), ("b", 3), ("c", 1)]), 7).unwrap();
        assert_eq!(got, kept(&[("a", 4), ("b", 2), ("c", 1)]));
        assert_eq!(got.values().sum::<u64>(), 7);
    }

    #[test]
    fn every_source_gets_one_when_there_are_enough() {
        // Quotas 3 * (98, 1, 1) / 100 = 2.94, 0.03, 0.03: largest remainder gives a all 3;
        // b and c take one each from a.
        let got = allocate(&kept(&[("a", 98), ("b", 1), ("c", 1)]), 3).unwrap();
        assert_eq!(got, kept(&[("a", 1), ("b", 1), ("c", 1)]));
        // Fewer documents than sources: the largest sources only.
        let got = allocate(&kept(&[("a", 98), ("b", 1), ("c", 1)]), 2).unwrap();
        assert_eq!(got, kept(&[("a", 2), ("b", 0), ("c", 0)]));
        // Sources without kept documents get no entry.
        let got = allocate(&kept(&[("a", 4), ("empty", 0)]), 2).unwrap();
        assert_eq!(got, kept(&[("a", 2)]));
    }

    #[test]
    fn all_or_too_many() {
        let got = allocate(&kept(&[("a", 3), ("b", 2)]), 5).unwrap();
        assert_eq!(got, kept(&[("a", 3), ("b", 2)]));
        let err = allocate(&kept(&[("a", 3), ("b", 2)]), 6).unwrap_err();
        assert_eq!(err, SplitError::TooMany { wanted: 6, kept: 5 });
        let text = err.to_string();
        assert!(
            text.contains("--eval-docs 6") && text.contains("5 documents"),
            "{text}"
        );
    }

    #[test]
    fn never_more_than_kept() {
        for wanted in 0..=30u64 {
            let sources = kept(&[("a", 1), ("b", 2), ("c", 27)]);
            let got = allocate(&sources, wanted).unwrap();
            assert_eq!(got.values().sum::<u64>(), wanted);
            for (name, n) in &got {
                assert!(*n <= sources[name], "{wanted}: {name} gets {n}");
                if wanted >= 3 {
                    assert!(*n >= 1, "{wanted}: {name} gets none");
                }
            }
        }
    }

    #[test]
    fn selection_takes_the_smallest_hashes_in_any_order() {
        let origins: Vec<String> = (0..50).map(|i| format!("f.jsonl:{i}")).collect();
        let mut expected: Vec<(u64, usize)> = origins
            .iter()
            .enumerate()
            .map(|(i, o)| (selection_hash(o), i))
            .collect();
        expected.sort_unstable();
        let mut want: Vec<(u32, u64)> = expected[..7].iter().map(|&(_, i)| (0, i as u64)).collect();
        want.sort_unstable();
        for reverse in [false, true] {
            let mut selector = Selector::new(kept(&[("s", 7)]));
            let mut order: Vec<usize> = (0..origins.len()).collect();
            if reverse {
                order.reverse();
            }
            for i in order {
                selector.offer("s", &origins[i], 0, i as u64);
                selector.offer("other", &origins[i], 1, i as u64);
            }
            let set = selector.finish();
            assert_eq!(set.docs, want);
            assert_eq!(set.per_source, kept(&[("s", 7)]));
            assert!(set.contains(0, want[0].1) && !set.contains(1, want[0].1));
        }
    }
}
