//! A seeded permutation of `0..n` computed one index at a time.
//!
//! A pretraining corpus holds hundreds of millions of sequences, too many to shuffle as a vector
//! in memory, so the order is a keyed bijection instead: a four-round Feistel network over the
//! smallest even number of bits that covers `n`, with "cycle walking" (re-encrypting until the
//! value falls below `n`) to stay inside the domain. The result is a function of `(n, key)` only,
//! so it is the same whatever the thread count, and a resumed run finds position `i` of an epoch
//! without replaying the positions before it.

use crate::rng::counter_hash;

const ROUNDS: u64 = 4;

/// A bijection of `0..n` onto itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permutation {
    n: u64,
    key: u64,
    half_bits: u32,
}

impl Permutation {
    /// The permutation of `0..n` selected by `key`.
    pub fn new(n: u64, key: u64) -> Permutation {
        // Bits needed for values 0..n-1, rounded up to an even count (at least 2).
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        Permutation {
            n,
            key,
            half_bits: bits.div_ceil(2),
        }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The element at position `i` (`i < n`; other values are returned unchanged).
    pub fn get(&self, i: u64) -> u64 {
        if i >= self.n {
            return i;
        }
        // The domain has at most 4n values, so the expected number of walks is below 4.
        let mut x = self.encrypt(i);
        while x >= self.n {
            x = self.encrypt(x);
        }
        x
    }

    fn encrypt(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let mut left = x >> self.half_bits;
        let mut right = x & mask;
        for round in 0..ROUNDS {
            let f = counter_hash(self.key, &[round, right]) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }
}
