//! Locality-sensitive hashing over MinHash signatures: the clustering half of near-dedup.
//!
//! Each signature is cut into `bands` bands of `rows` lanes; a band's lanes hash to a 64-bit
//! band key. Two documents become candidates when they share a key in some band.
//!
//! **Rule.** A document is a near duplicate when it shares a band key with an *earlier* document
//! (smaller id, i.e. earlier in input order), optionally confirmed by the estimated Jaccard
//! similarity. The earliest document of every group therefore survives, and a later document
//! that merely bridges two earlier, dissimilar ones cannot remove either of them.
//!
//! The rule is a function of the multiset of [`BandRecord`]s `(band, key, doc)` alone, so it
//! has two interchangeable implementations:
//! - [`LshIndex`]: in memory and streaming (the build uses it, deciding as documents arrive);
//! - [`duplicates_from_sorted`]: over records sorted by `(band, key, doc)`, which can be
//!   produced by an external sort of spilled files from many machines and merged in one pass.
//!
//! [`components`] gives the connected clusters (union-find, survivor = smallest id) for
//! reporting or for a stricter, transitive policy.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::dedup::minhash::{estimated_jaccard, Signature};

/// A document's position among the documents that reached near-dedup, in input order.
pub type DocId = u64;

/// One band key of one document: the unit that is sorted, spilled and merged out of core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BandRecord {
    pub band: u16,
    pub key: u64,
    pub doc: DocId,
}

/// The band keys of a signature (`rows` lanes each, hashed with the band number as seed).
pub fn band_keys(signature: &Signature, rows: usize) -> impl Iterator<Item = (u16, u64)> + '_ {
    let rows = rows.max(1);
    signature
        .0
        .chunks_exact(rows)
        .enumerate()
        .map(|(band, lanes)| {
            let mut bytes = [0u8; 4 * 64];
            let mut buffer = Vec::new();
            let slice: &[u8] = if lanes.len() <= 64 {
                for (i, lane) in lanes.iter().enumerate() {
                    bytes[4 * i..4 * i + 4].copy_from_slice(&lane.to_le_bytes());
                }
                &bytes[..4 * lanes.len()]
            } else {
                buffer.extend(lanes.iter().flat_map(|lane| lane.to_le_bytes()));
                &buffer
            };
            (band as u16, xxh3_64_with_seed(slice, band as u64))
        })
}

/// The [`BandRecord`]s of one document.
pub fn band_records(doc: DocId, signature: &Signature, rows: usize) -> Vec<BandRecord> {
    band_keys(signature, rows)
        .map(|(band, key)| BandRecord { band, key, doc })
        .collect()
}

/// Streaming, in-memory LSH index: decides near duplicates as documents arrive in order.
#[derive(Debug)]
pub struct LshIndex {
    rows: usize,
    /// Per band: key -> first document that had it.
    bands: Vec<HashMap<u64, DocId>>,
    /// Signature lanes of every inserted document, kept only when verifying.
    verify_threshold: Option<f64>,
    signatures: Vec<u32>,
    lanes: usize,
    next_doc: DocId,
}

/// The outcome for one document offered to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NearDecision {
    /// No earlier document is similar: keep it.
    Unique,
    /// Similar to this earlier document (the survivor).
    DuplicateOf(DocId),
}

impl LshIndex {
    pub fn new(bands: usize, rows: usize, verify_threshold: Option<f64>) -> Self {
        LshIndex {
            rows: rows.max(1),
            bands: (0..bands).map(|_| HashMap::new()).collect(),
            verify_threshold,
            signatures: Vec::new(),
            lanes: bands * rows.max(1),
            next_doc: 0,
        }
    }

    /// Offers the next document in input order; its id is the number of documents offered
    /// before it. Documents without a signature (no words) are never duplicates and take no id.
    pub fn offer(&mut self, signature: Option<&Signature>) -> NearDecision {
        let Some(signature) = signature else {
            return NearDecision::Unique;
        };
        let doc = self.next_doc;
        self.next_doc += 1;
        let mut decision = NearDecision::Unique;
        for (band, key) in band_keys(signature, self.rows) {
            let Some(slot) = self.bands.get_mut(usize::from(band)) else {
                continue;
            };
            match slot.get(&key) {
                Some(&earlier) if decision == NearDecision::Unique => {
                    if self.confirms(earlier, signature) {
                        decision = NearDecision::DuplicateOf(earlier);
                    }
                }
                Some(_) => {}
                None => {
                    slot.insert(key, doc);
                }
            }
        }
        if self.verify_threshold.is_some() {
            self.signatures.extend_from_slice(&signature.0);
        }
        decision
    }

    fn confirms(&self, earlier: DocId, signature: &Signature) -> bool {
        let Some(threshold) = self.verify_threshold else {
            return true;
        };
        let start = earlier as usize * self.lanes;
        match self.signatures.get(start..start + self.lanes) {
            Some(lanes) => estimated_jaccard(lanes, &signature.0) >= threshold,
            None => false,
        }
    }

    /// Documents offered so far (with a signature).
    pub fn documents(&self) -> u64 {
        self.next_doc
    }

    /// Approximate heap bytes: the band maps' buckets plus kept signatures.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u64, DocId)>() + 1;
        let maps: usize = self.bands.iter().map(|m| m.capacity() * entry).sum();
        maps + self.signatures.capacity() * 4
    }
}

/// Applies the rule to records sorted by `(band, key, doc)`: every document that is not the
/// smallest id in some `(band, key)` group is a duplicate. Returns the duplicate ids, sorted and
/// without repeats. Equal to [`LshIndex`] without verification.
pub fn duplicates_from_sorted(records: &[BandRecord]) -> Vec<DocId> {
    let mut duplicates: Vec<DocId> = records
        .windows(2)
        .filter(|pair| pair[0].band == pair[1].band && pair[0].key == pair[1].key)
        .map(|pair| pair[1].doc)
        .collect();
    // Records inside a group are sorted by doc, so `pair[1]` is never the group's first; a
    // repeated doc within a group (impossible for distinct keys per band) is removed below.
    duplicates.sort_unstable();
    duplicates.dedup();
    duplicates
}

/// Union-find over document ids with the smallest id as root.
#[derive(Debug)]
struct UnionFind {
    parent: HashMap<DocId, DocId>,
}

impl UnionFind {
    fn find(&mut self, doc: DocId) -> DocId {
        let mut root = doc;
        while let Some(&parent) = self.parent.get(&root) {
            if parent == root {
                break;
            }
            root = parent;
        }
        // Path compression.
        let mut node = doc;
        while node != root {
            let next = self.parent.get(&node).copied().unwrap_or(root);
            self.parent.insert(node, root);
            node = next;
        }
        root
    }

    fn union(&mut self, a: DocId, b: DocId) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent.insert(high, low);
            self.parent.entry(low).or_insert(low);
        }
    }
}

/// Connected clusters of candidate pairs (records sorted by `(band, key, doc)`): each returned
/// cluster lists its members in ascending order, so its first member is the survivor. Singletons
/// are omitted; clusters come sorted by survivor.
pub fn components(records: &[BandRecord]) -> Vec<Vec<DocId>> {
    let mut sets = UnionFind {
        parent: HashMap::new(),
    };
    for pair in records.windows(2) {
        if pair[0].band == pair[1].band && pair[0].key == pair[1].key {
            sets.union(pair[0].doc, pair[1].doc);
        }
    }
    let members: Vec<DocId> = sets.parent.keys().copied().collect();
    let mut clusters: HashMap<DocId, Vec<DocId>> = HashMap::new();
    for doc in members {
        let root = sets.find(doc);
        clusters.entry(root).or_default().push(doc);
    }
    let mut clusters: Vec<Vec<DocId>> = clusters
        .into_values()
        .filter(|c| c.len() > 1)
        .map(|mut c| {
            c.sort_unstable();
            c
        })
        .collect();
    clusters.sort_unstable();
    clusters
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::minhash::{MinHashConfig, MinHasher};

    fn doc(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn near_copies_are_found_and_first_survives() {
        let config = MinHashConfig::default();
        let hasher = MinHasher::new(&config);
        let mut index = LshIndex::new(config.bands, config.rows, None);
        let mut base = doc(0..400);
        let original = hasher.signature(&base);
        assert_eq!(index.offer(original.as_ref()), NearDecision::Unique);
        // Change one word in 200: Jaccard of 5-gram sets stays around 0.95.
        base = base.replacen("w100 ", "changed ", 1);
        assert_eq!(
            index.offer(hasher.signature(&base).as_ref()),
            NearDecision::DuplicateOf(0)
        );
        assert_eq!(
            index.offer(hasher.signature(&doc(1000..1400)).as_ref()),
            NearDecision::Unique
        );
    }

    #[test]
    fn sorted_records_agree_with_the_streaming_index() {
        let config = MinHashConfig {
            bands: 20,
            rows: 2,
            ..MinHashConfig::default()
        };
        let hasher = MinHasher::new(&config);
        // Overlapping windows make a chain of partially similar documents.
        let texts: Vec<String> = (0..40).map(|i| doc(i * 7..i * 7 + 30)).collect();
        let mut index = LshIndex::new(config.bands, config.rows, None);
        let mut streaming = Vec::new();
        let mut records = Vec::new();
        for (id, text) in texts.iter().enumerate() {
            let signature = hasher.signature(text).unwrap();
            if index.offer(Some(&signature)) != NearDecision::Unique {
                streaming.push(id as DocId);
            }
            records.extend(band_records(id as DocId, &signature, config.rows));
        }
        records.reverse();
        records.sort_unstable();
        assert!(!streaming.is_empty());
        assert_eq!(duplicates_from_sorted(&records), streaming);
        for cluster in components(&records) {
            assert!(!streaming.contains(&cluster[0]), "survivor {cluster:?}");
        }
    }

    #[test]
    fn verification_rejects_weak_candidates() {
        // One shared band key is forced by giving two documents an identical first band.
        let mut a = Signature(vec![1; 16]);
        let b = Signature((0..16).map(|i| if i < 4 { 1 } else { 100 + i }).collect());
        a.0[15] = 9;
        let mut strict = LshIndex::new(4, 4, Some(0.8));
        assert_eq!(strict.offer(Some(&a)), NearDecision::Unique);
        assert_eq!(strict.offer(Some(&b)), NearDecision::Unique);
        let mut loose = LshIndex::new(4, 4, None);
        loose.offer(Some(&a));
        assert_eq!(loose.offer(Some(&b)), NearDecision::DuplicateOf(0));
    }
}
