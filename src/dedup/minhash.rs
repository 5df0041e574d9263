//! MinHash signatures over word n-grams: the pure, per-document half of near-dedup.
//!
//! A signature depends on nothing but the document and the configuration, so this phase runs in
//! parallel, out of core or on another machine; only the band keys derived from it
//! ([`crate::dedup::lsh`]) need to meet in one place.
//!
//! Cost: each word is hashed once (xxh3), each n-gram ("shingle") hash is a cheap combination of
//! the n word hashes, and the `k` permutations are 32-bit multiply-xorshift bijections
//! `p_i(x) = m((x ^ b_i) * a_i)` with `m(v) = v ^ (v >> 15)` and odd `a_i`, drawn from a fixed
//! seed. 32-bit lanes let the compiler vectorize the inner loop (eight lanes per AVX2 multiply);
//! a 32-bit minimum collides by chance with probability 2^-32 per lane, far below the LSH
//! error.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// MinHash / LSH parameters (`[dedup.minhash]`). The defaults follow common practice for web
/// text: 5-word shingles and 112 permutations as 14 bands of 8 rows, whose S-curve
/// `1 - (1 - s^8)^14` crosses 0.5 near Jaccard 0.7 and exceeds 0.99 at 0.85.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinHashConfig {
    /// Words per shingle. Documents with fewer words use the whole document as one shingle.
    pub ngram: usize,
    /// LSH bands.
    pub bands: usize,
    /// Rows (signature lanes) per band.
    pub rows: usize,
    /// Seed of the permutation family; changing it changes every signature.
    pub seed: u64,
    /// When set, a candidate pair found by LSH is confirmed only if the estimated Jaccard
    /// similarity of the two signatures is at least this value. Costs `4 * bands * rows` bytes
    /// per document of memory (the signatures are kept); off by default.
    pub verify_threshold: Option<f64>,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        MinHashConfig {
            ngram: 5,
            bands: 14,
            rows: 8,
            seed: 0x005e_ed0f_4ed9_ac4b,
            verify_threshold: None,
        }
    }
}

impl MinHashConfig {
    /// Total signature lanes (`bands * rows`).
    pub fn num_hashes(&self) -> usize {
        self.bands * self.rows
    }
}

/// A document's MinHash signature: one minimum per permutation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature(pub Vec<u32>);

impl Signature {
    /// The fraction of equal lanes: an unbiased estimate of the Jaccard similarity of the two
    /// shingle sets.
    pub fn estimated_jaccard(&self, other: &Signature) -> f64 {
        estimated_jaccard(&self.0, &other.0)
    }
}

/// [`Signature::estimated_jaccard`] over raw lanes.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

/// Computes signatures; cheap to share between threads (`&MinHasher` is all a worker needs).
#[derive(Debug, Clone)]
pub struct MinHasher {
    ngram: usize,
    multipliers: Vec<u32>,
    offsets: Vec<u32>,
}

/// splitmix64: a tiny, well-mixed generator for the fixed permutation constants.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Murmur3's 64-bit finalizer: spreads a combined shingle hash over all bits.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl MinHasher {
    pub fn new(config: &MinHashConfig) -> Self {
        let mut state = config.seed;
        let k = config.num_hashes();
        let multipliers = (0..k)
            .map(|_| (splitmix64(&mut state) as u32) | 1)
            .collect();
        let offsets = (0..k).map(|_| splitmix64(&mut state) as u32).collect();
        MinHasher {
            ngram: config.ngram.max(1),
            multipliers,
            offsets,
        }
    }

    /// Lanes per signature.
    pub fn num_hashes(&self) -> usize {
        self.multipliers.len()
    }

    /// The signature of an already normalized text (see [`crate::dedup::normalize`]); words are
    /// whitespace-separated. `None` for a text without words: it has no shingles and must not
    /// match anything.
    pub fn signature(&self, normalized: &str) -> Option<Signature> {
        let words: Vec<u64> = normalized
            .split_whitespace()
            .map(|word| xxh3_64(word.as_bytes()))
            .collect();
        if words.is_empty() {
            return None;
        }
        let mut lanes = vec![u32::MAX; self.num_hashes()];
        let window = self.ngram.min(words.len());
        for shingle in words.windows(window) {
            let mut h = 0x2545_f491_4f6c_dd1d_u64;
            for &word in shingle {
                h = (h.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            let h = fmix64(h);
            self.update(&mut lanes, (h ^ (h >> 32)) as u32);
        }
        Some(Signature(lanes))
    }

    /// Folds one shingle hash into the running minima. Written as a plain zip so it vectorizes.
    #[inline]
    fn update(&self, lanes: &mut [u32], x: u32) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(&self.multipliers).zip(&self.offsets) {
            let v = (x ^ b).wrapping_mul(a);
            let v = v ^ (v >> 15);
            *lane = (*lane).min(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn identical_texts_identical_signatures() {
        let hasher = MinHasher::new(&MinHashConfig::default());
        let a = hasher
            .signature("the quick brown fox jumps over the lazy dog")
            .unwrap();
        let b = hasher
            .signature("the quick brown fox jumps over the lazy dog")
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.0.len(), 112);
        assert_eq!(a.estimated_jaccard(&b), 1.0);
    }

    #[test]
    fn empty_text_has_no_signature() {
        let hasher = MinHasher::new(&MinHashConfig::default());
        assert!(hasher.signature("  ").is_none());
    }

    #[test]
    fn short_texts_use_the_whole_document() {
        let hasher = MinHasher::new(&MinHashConfig::default());
        let a = hasher.signature("one two").unwrap();
        let b = hasher.signature("one three").unwrap();
        assert_eq!(a, hasher.signature("one two").unwrap());
        assert!(a.estimated_jaccard(&b) < 0.1);
    }

    #[test]
    fn estimate_tracks_true_jaccard() {
        // Shingle sets with a known overlap: 0..1000 vs 200..1200 words share 796 of
        // 1196 + 1 distinct 5-gram windows (about 0.66).
        let config = MinHashConfig {
            bands: 32,
            rows: 8,
            ..MinHashConfig::default()
        };
        let hasher = MinHasher::new(&config);
        let a = hasher.signature(&words(0..1000)).unwrap();
        let b = hasher.signature(&words(200..1200)).unwrap();
        let truth = 796.0 / 1196.0;
        let estimate = a.estimated_jaccard(&b);
        assert!(
            (estimate - truth).abs() < 0.08,
            "estimate {estimate} truth {truth}"
        );
        let c = hasher.signature(&words(5000..6000)).unwrap();
        assert!(a.estimated_jaccard(&c) < 0.05);
    }

    #[test]
    fn seed_changes_signatures() {
        let a = MinHasher::new(&MinHashConfig::default()).signature(&words(0..50));
        let other = MinHashConfig {
            seed: 7,
            ..MinHashConfig::default()
        };
        let b = MinHasher::new(&other).signature(&words(0..50));
        assert_ne!(a, b);
    }
}
