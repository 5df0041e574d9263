//! Exact and near-duplicate removal.
//!
//! Split in two phases so that the expensive part parallelizes and the order-dependent part
//! stays tiny:
//! 1. [`Deduper::keys`] (pure, `&self`, run on worker threads): normalize the text, compute its
//!    128-bit fingerprint and, when near-dedup is on, its MinHash signature.
//! 2. [`Deduper::decide`] (sequential, in input order): look the keys up in the exact index and
//!    the LSH index. The first occurrence always survives, so the outcome does not depend on the
//!    number of threads.

pub mod exact;
pub mod lsh;
pub mod minhash;
pub mod normalize;

use serde::{Deserialize, Serialize};

use crate::record::Content;
use exact::{ExactIndex, Fingerprint};
use lsh::{LshIndex, NearDecision};
use minhash::{MinHashConfig, MinHasher, Signature};
use normalize::NormalizeConfig;

/// The `[dedup]` section of a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Drop records whose normalized text (FLAN: input and target) was seen before.
    pub exact: bool,
    /// Drop records similar to an earlier one by MinHash LSH.
    pub near: bool,
    pub normalize: NormalizeConfig,
    pub minhash: MinHashConfig,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            exact: true,
            near: true,
            normalize: NormalizeConfig::default(),
            minhash: MinHashConfig::default(),
        }
    }
}

impl DedupConfig {
    /// Both stages off (`--no-dedup`).
    pub fn disabled() -> Self {
        DedupConfig {
            exact: false,
            near: false,
            ..DedupConfig::default()
        }
    }
}

/// What phase 1 computes for one record.
#[derive(Debug, Clone, Default)]
pub struct DedupKeys {
    pub fingerprint: Option<Fingerprint>,
    pub signature: Option<Signature>,
}

/// The fate of one record after dedup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unique,
    ExactDuplicate,
    NearDuplicate,
}

/// Both dedup stages with their indexes.
#[derive(Debug)]
pub struct Deduper {
    config: DedupConfig,
    hasher: MinHasher,
    exact: ExactIndex,
    near: LshIndex,
}

impl Deduper {
    pub fn new(config: DedupConfig) -> Self {
        let minhash = &config.minhash;
        Deduper {
            hasher: MinHasher::new(minhash),
            exact: ExactIndex::new(),
            near: LshIndex::new(minhash.bands, minhash.rows, minhash.verify_threshold),
            config,
        }
    }

    pub fn config(&self) -> &DedupConfig {
        &self.config
    }

    /// Phase 1: pure and thread-safe. `scratch` is a reusable buffer.
    pub fn keys(&self, content: &Content, scratch: &mut String) -> DedupKeys {
        let mut keys = DedupKeys::default();
        let (exact, near) = (self.config.exact, self.config.near);
        match content {
            // Normalize once for both stages.
            Content::Text(text) if exact || near => {
                self.config.normalize.normalize_into(text, scratch);
                if exact {
                    keys.fingerprint = Some(exact::text_fingerprint(scratch));
                }
                if near {
                    keys.signature = self.hasher.signature(scratch);
                }
            }
            Content::Text(_) => {}
            Content::Pair { input, target, .. } => {
                if exact {
                    let normalize = &self.config.normalize;
                    keys.fingerprint = Some(exact::fingerprint(content, normalize, scratch));
                }
                if near {
                    let mut joined = String::with_capacity(input.len() + target.len() + 1);
                    joined.push_str(input);
                    joined.push(' ');
                    joined.push_str(target);
                    self.config.normalize.normalize_into(&joined, scratch);
                    keys.signature = self.hasher.signature(scratch);
                }
            }
        }
        keys
    }

    /// Phase 2: call once per record, in input order.
    pub fn decide(&mut self, keys: &DedupKeys) -> Verdict {
        if let Some(fingerprint) = keys.fingerprint {
            if self.exact.check_and_insert(fingerprint) {
                return Verdict::ExactDuplicate;
            }
        }
        if self.config.near {
            if let NearDecision::DuplicateOf(_) = self.near.offer(keys.signature.as_ref()) {
                return Verdict::NearDuplicate;
            }
        }
        Verdict::Unique
    }

    /// Approximate heap bytes held by both indexes.
    pub fn heap_bytes(&self) -> usize {
        self.exact.heap_bytes() + self.near.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_before_near_and_disabled_keeps_all() {
        let texts = [
            "alpha beta gamma delta epsilon zeta eta theta iota kappa",
            "Alpha  beta gamma delta epsilon zeta eta theta iota kappa",
            "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda",
            "completely different words here for the check",
        ];
        let mut dedup = Deduper::new(DedupConfig::default());
        let mut scratch = String::new();
        let verdicts: Vec<Verdict> = texts
            .iter()
            .map(|t| {
                let keys = dedup.keys(&Content::Text(t.to_string()), &mut scratch);
                dedup.decide(&keys)
            })
            .collect();
        assert_eq!(verdicts[0], Verdict::Unique);
        assert_eq!(verdicts[1], Verdict::ExactDuplicate);
        assert_eq!(verdicts[3], Verdict::Unique);

        let mut off = Deduper::new(DedupConfig::disabled());
        for t in texts {
            let keys = off.keys(&Content::Text(t.to_string()), &mut scratch);
            assert_eq!(off.decide(&keys), Verdict::Unique);
        }
    }
}
