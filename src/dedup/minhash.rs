//! MinHash signatures over word n-grams: the pure, per-document half of near-dedup.
//!
//! A signature depends on nothing but the document and the configuration, so this phase runs in
//! parallel, out of core or on another machine; only the band keys derived from it
//! ([`crate::dedup::lsh`]) need to meet in one place.
//!
//! Cost: each word is hashed once (xxh3), each n-gram ("shingle") hash is a cheap combination of
//! the n word hashes, and the `k` permutations are 32-bit multiply-xorshift bijections
//! `p_i(x) = m((x ^ b_i) * a_i)` with `m(v) = v ^ (v >> 15)` and odd `a_i`, drawn from a fixed
//! seed. A 32-bit minimum collides by chance with probability 2^-32 per lane, far below the LSH
//! error.
//!
//! The permutations are folded block by block: 16 lanes' minima stay in registers while every
//! shingle of the document passes through them, so the inner loop is pure arithmetic on
//! vectors. On x86-64 CPUs with AVX2 (detected at run time) that loop is compiled for AVX2,
//! whose 32-bit multiply and unsigned minimum are single instructions (the baseline SSE2 has
//! neither); the lanes are the same on every path.

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
    /// Whether this CPU runs the AVX2 build of the fold.
    avx2: bool,
}

/// Lanes folded together, their minima held in registers.
const BLOCK: usize = 16;

/// Folds every shingle hash into the lanes' running minima: `lanes[i] = min(lanes[i],
/// p_i(x))` for each `x` in `shingles`. The order of the loops does not change the result.
#[inline(always)]
fn fold_lanes(shingles: &[u32], lanes: &mut [u32], multipliers: &[u32], offsets: &[u32]) {
    let mut lanes_blocks = lanes.chunks_exact_mut(BLOCK);
    let mut a_blocks = multipliers.chunks_exact(BLOCK);
    let mut b_blocks = offsets.chunks_exact(BLOCK);
    for ((lane, a), b) in (&mut lanes_blocks).zip(&mut a_blocks).zip(&mut b_blocks) {
        let mut acc = [u32::MAX; BLOCK];
        let mut a_block = [0u32; BLOCK];
        let mut b_block = [0u32; BLOCK];
        a_block.copy_from_slice(a);
        b_block.copy_from_slice(b);
        for &x in shingles {
            for i in 0..BLOCK {
                let v = (x ^ b_block[i]).wrapping_mul(a_block[i]);
                acc[i] = acc[i].min(v ^ (v >> 15));
            }
        }
        for (lane, acc) in lane.iter_mut().zip(acc) {
            *lane = (*lane).min(acc);
        }
    }
    let rest = lanes_blocks.into_remainder();
    let (a_rest, b_rest) = (a_blocks.remainder(), b_blocks.remainder());
    for ((lane, &a), &b) in rest.iter_mut().zip(a_rest).zip(b_rest) {
        for &x in shingles {
            let v = (x ^ b).wrapping_mul(a);
            *lane = (*lane).min(v ^ (v >> 15));
        }
    }
}

/// [`fold_lanes`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fold_lanes_avx2(shingles: &[u32], lanes: &mut [u32], multipliers: &[u32], offsets: &[u32]) {
    fold_lanes(shingles, lanes, multipliers, offsets);
}

fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
            avx2: cpu_has_avx2(),
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
        let window = self.ngram.min(words.len());
        let shingles: Vec<u32> = words
            .windows(window)
            .map(|shingle| {
                let mut h = 0x2545_f491_4f6c_dd1d_u64;
                for &word in shingle {
                    h = (h.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                }
                let h = fmix64(h);
                (h ^ (h >> 32)) as u32
            })
            .collect();
        let mut lanes = vec![u32::MAX; self.num_hashes()];
        self.fold(&shingles, &mut lanes, self.avx2);
        Some(Signature(lanes))
    }

    /// Folds `shingles` into `lanes`, with the AVX2 build when `avx2` (and the CPU has it).
    fn fold(&self, shingles: &[u32], lanes: &mut [u32], avx2: bool) {
        #[cfg(target_arch = "x86_64")]
        if avx2 && self.avx2 {
            // SAFETY: `self.avx2` is set only when the running CPU supports AVX2.
            unsafe { fold_lanes_avx2(shingles, lanes, &self.multipliers, &self.offsets) };
            return;
        }
        let _ = avx2;
        fold_lanes(shingles, lanes, &self.multipliers, &self.offsets);
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

    /// One shingle at a time over every lane: the definition the blocked folds must match.
    fn fold_reference(hasher: &MinHasher, shingles: &[u32], lanes: &mut [u32]) {
        for &x in shingles {
            for ((lane, &a), &b) in lanes
                .iter_mut()
                .zip(&hasher.multipliers)
                .zip(&hasher.offsets)
            {
                let v = (x ^ b).wrapping_mul(a);
                *lane = (*lane).min(v ^ (v >> 15));
            }
        }
    }

    #[test]
    fn blocked_folds_match_the_definition() {
        let mut state = 3u64;
        // Lane counts below, at and around the block size, and the default 112.
        for (bands, rows) in [(1, 1), (1, 5), (2, 8), (3, 7), (14, 8), (5, 5)] {
            let hasher = MinHasher::new(&MinHashConfig {
                bands,
                rows,
                ..MinHashConfig::default()
            });
            for len in [0usize, 1, 2, 17, 300] {
                let shingles: Vec<u32> = (0..len).map(|_| splitmix64(&mut state) as u32).collect();
                let mut want = vec![u32::MAX; hasher.num_hashes()];
                fold_reference(&hasher, &shingles, &mut want);
                for avx2 in [false, true] {
                    let mut got = vec![u32::MAX; hasher.num_hashes()];
                    hasher.fold(&shingles, &mut got, avx2);
                    assert_eq!(
                        got, want,
                        "{bands}x{rows} lanes, {len} shingles, avx2 {avx2}"
                    );
                }
            }
        }
    }

    /// Lanes 0 and 111 and a polynomial checksum of all 112, for `words(0..40)`.
    const PINNED: (u32, u32, u64) = (292_040_813, 104_149_407, 1_030_995_070_550_521_106);

    #[test]
    fn signature_is_pinned() {
        // A change of the hash family would silently change which documents are near
        // duplicates; these lanes are the ones every earlier corpus was built with.
        let hasher = MinHasher::new(&MinHashConfig::default());
        let lanes = hasher.signature(&words(0..40)).unwrap().0;
        let sum = lanes.iter().fold(0u64, |acc, &l| {
            acc.wrapping_mul(31).wrapping_add(u64::from(l))
        });
        assert_eq!((lanes[0], lanes[111], sum), PINNED);
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
