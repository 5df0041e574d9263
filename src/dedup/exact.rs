//! Exact deduplication: a 128-bit fingerprint of the normalized text, first occurrence wins.
//!
//! 128 bits make an accidental collision practically impossible even over billions of documents
//! (birthday bound around 2^64), so no text needs to be kept to confirm a match. The index holds
//! only fingerprints: about 16 bytes of payload per distinct document (the hash set roughly
//! doubles that, see the benchmark for the measured figure).

use std::collections::HashSet;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::dedup::normalize::NormalizeConfig;
use crate::record::Content;

/// The exact-duplicate fingerprint of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u128);

/// Computes the fingerprint of a record's content after normalization.
///
/// For an instruction pair the input and the target are hashed as two length-prefixed fields, so
/// `("ab", "c")` and `("a", "bc")` never collide and no separator character is reserved.
/// `scratch` is a reusable buffer for the normalized text.
pub fn fingerprint(
    content: &Content,
    normalize: &NormalizeConfig,
    scratch: &mut String,
) -> Fingerprint {
    match content {
        Content::Text(text) => {
            normalize.normalize_into(text, scratch);
            text_fingerprint(scratch)
        }
        Content::Pair { input, target, .. } => {
            let mut hasher = Xxh3::new();
            for field in [input, target] {
                normalize.normalize_into(field, scratch);
                hasher.update(&(scratch.len() as u64).to_le_bytes());
                hasher.update(scratch.as_bytes());
            }
            Fingerprint(hasher.digest128())
        }
    }
}

/// The fingerprint of a document whose text is already normalized (lets the caller normalize
/// once for both dedup stages).
pub fn text_fingerprint(normalized: &str) -> Fingerprint {
    Fingerprint(xxh3_128(normalized.as_bytes()))
}

/// Fingerprints seen so far, in a process-wide set.
///
/// The decision is sequential in input order (the caller asks in record order), which makes the
/// survivor of every duplicate group the first occurrence whatever the thread count.
#[derive(Debug, Default)]
pub struct ExactIndex {
    seen: HashSet<Fingerprint>,
}

impl ExactIndex {
    pub fn new() -> Self {
        ExactIndex::default()
    }

    /// Records `fingerprint`; returns `true` when it was already present (a duplicate).
    pub fn check_and_insert(&mut self, fingerprint: Fingerprint) -> bool {
        !self.seen.insert(fingerprint)
    }

    /// Distinct fingerprints held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Approximate heap bytes held by the index (bucket array of the hash set).
    pub fn heap_bytes(&self) -> usize {
        // hashbrown stores one control byte per bucket beside each entry.
        self.seen.capacity() * (std::mem::size_of::<Fingerprint>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Content {
        Content::Text(s.to_string())
    }

    fn pair(input: &str, target: &str) -> Content {
        Content::Pair {
            input: input.to_string(),
            target: target.to_string(),
            task: None,
        }
    }

    #[test]
    fn normalized_variants_share_a_fingerprint() {
        let config = NormalizeConfig::default();
        let mut scratch = String::new();
        let a = fingerprint(&text("Hello   World\n"), &config, &mut scratch);
        let b = fingerprint(&text("hello world"), &config, &mut scratch);
        let c = fingerprint(&text("hello worlds"), &config, &mut scratch);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn pair_fields_are_not_concatenated() {
        let config = NormalizeConfig::default();
        let mut scratch = String::new();
        let a = fingerprint(&pair("ab", "c"), &config, &mut scratch);
        let b = fingerprint(&pair("a", "bc"), &config, &mut scratch);
        let c = fingerprint(&pair("AB", " c"), &config, &mut scratch);
        assert_ne!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn first_occurrence_survives() {
        let config = NormalizeConfig::default();
        let mut scratch = String::new();
        let mut index = ExactIndex::new();
        let docs = ["a b", "c", "A  B", "c", "d"];
        let dups: Vec<bool> = docs
            .iter()
            .map(|d| index.check_and_insert(fingerprint(&text(d), &config, &mut scratch)))
            .collect();
        assert_eq!(dups, [false, false, true, true, false]);
        assert_eq!(index.len(), 3);
    }
}
