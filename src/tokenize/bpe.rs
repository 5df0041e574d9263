//! The BPE model, as the `tokenizers` crate applies it: merges by rank (then leftmost) with
//! the same queue and the same test for stale entries, `ignore_merges`, unknown characters
//! (`byte_fallback`, `unk_token`, `fuse_unk`). Words are cached per thread.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A small, fast hasher (the Fx multiply-rotate scheme) for the merge table and the caches.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    /// The multiply leaves its best-mixed bits at the top, but `hashbrown` picks buckets with
    /// the low bits, which depend only on a key's first bytes: every `Metaspace` word starts
    /// with the same three bytes (`▁`), and without the rotation they would all share a bucket.
    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;

/// How a word's first symbols are found.
#[derive(Debug, Clone)]
pub enum Units {
    /// Byte-level: every byte of the word is a symbol with this id.
    Bytes(Box<[u32; 256]>),
    /// Characters looked up in the vocabulary, with the model's rules for unknown ones.
    Chars {
        byte_fallback: Option<Box<[u32; 256]>>,
        unk: Option<u32>,
        fuse_unk: bool,
    },
}

/// A BPE model over byte strings (byte-level vocabularies are stored as raw bytes).
#[derive(Debug)]
pub struct Bpe {
    vocab: HashMap<Box<[u8]>, u32, FxBuild>,
    /// The vocabulary's one-character tokens, keyed by [`unit_key`]: the first symbols of a
    /// word without hashing byte strings.
    units_vocab: HashMap<u32, u32, FxBuild>,
    merges: HashMap<u64, (u32, u32), FxBuild>,
    units: Units,
    ignore_merges: bool,
    id: u64,
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: i32,
    next: i32,
    live: bool,
}

/// One generation of a thread's word cache. Entries are packed back to back in one buffer,
/// `[word length, id count, word bytes, ids as u32 LE]`, so a hit reads the table and one
/// place of the buffer (no pointer to follow per key and per ids, no allocation per entry);
/// the table holds the top half of a word's hash and its entry's offset. The hash is computed
/// once per look-up, and keys are compared without a call to `memcmp` (cached words are
/// short).
#[derive(Default)]
struct WordMap {
    table: hashbrown::HashTable<(u32, u32)>,
    entries: Vec<u8>,
}

impl WordMap {
    fn word_at(entries: &[u8], offset: u32) -> &[u8] {
        let at = offset as usize;
        let len = usize::from(entries[at]);
        &entries[at + 2..at + 2 + len]
    }

    /// The entry at `offset`'s ids, as bytes.
    fn ids_at(entries: &[u8], offset: u32) -> &[u8] {
        let at = offset as usize;
        let (len, count) = (usize::from(entries[at]), usize::from(entries[at + 1]));
        &entries[at + 2 + len..at + 2 + len + 4 * count]
    }

    /// The ids of `word` (whose hash is `hash`) as bytes, when cached.
    #[inline]
    fn get(&self, hash: u64, word: &[u8]) -> Option<&[u8]> {
        let tag = (hash >> 32) as u32;
        let entries = &self.entries;
        self.table
            .find(hash, |&(t, offset)| {
                t == tag && same_bytes(Self::word_at(entries, offset), word)
            })
            .map(|&(_, offset)| Self::ids_at(entries, offset))
    }

    /// Caches `word` with `ids` (ids as bytes); both fit a length byte (see
    /// [`CACHE_WORD_BYTES`]: a word has at most as many ids as bytes).
    fn insert(&mut self, hash: u64, word: &[u8], ids: &[u8]) {
        let (Ok(len), Ok(count), Ok(offset)) = (
            u8::try_from(word.len()),
            u8::try_from(ids.len() / 4),
            u32::try_from(self.entries.len()),
        ) else {
            return;
        };
        self.entries.push(len);
        self.entries.push(count);
        self.entries.extend_from_slice(word);
        self.entries.extend_from_slice(ids);
        let entries = &self.entries;
        self.table
            .insert_unique(hash, ((hash >> 32) as u32, offset), |&(_, offset)| {
                word_hash(Self::word_at(entries, offset))
            });
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    /// Empties the generation, keeping its memory for the next one.
    fn clear(&mut self) {
        self.table.clear();
        self.entries.clear();
    }
}

/// Appends ids stored as u32 LE bytes.
#[inline]
fn extend_ids(out: &mut Vec<u32>, bytes: &[u8]) {
    out.extend(bytes.chunks_exact(4).map(|id| {
        let mut le = [0u8; 4];
        le.copy_from_slice(id);
        u32::from_le_bytes(le)
    }));
}

/// The hash of a word in the caches.
#[inline]
fn word_hash(word: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(word);
    hasher.finish()
}

/// Byte equality eight bytes at a time, inlined.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut a8).zip(&mut b8) {
        let (Ok(x), Ok(y)) = (<[u8; 8]>::try_from(x), <[u8; 8]>::try_from(y)) else {
            return false;
        };
        if u64::from_ne_bytes(x) != u64::from_ne_bytes(y) {
            return false;
        }
    }
    a8.remainder()
        .iter()
        .zip(b8.remainder())
        .all(|(x, y)| x == y)
}

/// Words cached per thread: the key is the word's bytes, the value its ids. Two generations:
/// when `current` is full it becomes `previous` (the older one is dropped), and a word found in
/// `previous` moves back to `current`, so frequent words stay cached at any corpus size.
struct WordCache {
    owner: u64,
    current: WordMap,
    previous: WordMap,
    /// Buffers of [`Bpe::merge_word`], kept so that a cache miss allocates nothing.
    merge: MergeBuffers,
    /// A merged word's ids as bytes, before they are cached.
    ids: Vec<u8>,
}

/// A word's symbols and the queue of candidate merges `(rank, position, new id)`; for short
/// words, their ids and each adjacent pair's `(rank, new id)`.
#[derive(Default)]
struct MergeBuffers {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<(u32, u32, u32)>>,
    ids: Vec<u32>,
    pairs: Vec<(u32, u32)>,
}

/// Words of at most this many symbols are merged by scanning their pairs for the lowest rank
/// (quadratic, but no queue and no stale entries); longer ones through the queue.
const SCAN_SYMBOLS: usize = 64;

/// The rank of a pair that has no merge.
const NO_MERGE: u32 = u32::MAX;

/// Entries of one generation of a thread's cache (some 30 bytes each for a word of 8 bytes and
/// 2 ids).
const CACHE_ENTRIES: usize = 1 << 17;
/// Longer words are not cached.
const CACHE_WORD_BYTES: usize = 256;

thread_local! {
    static CACHE: RefCell<WordCache> = RefCell::new(WordCache {
        owner: 0,
        current: WordMap::default(),
        previous: WordMap::default(),
        merge: MergeBuffers::default(),
        ids: Vec::new(),
    });
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

impl Bpe {
    /// `merges` in rank order as id pairs with the merged token's id; a later duplicate of a
    /// pair replaces the earlier one, as in the `tokenizers` crate.
    pub fn new(
        vocab: HashMap<Box<[u8]>, u32, FxBuild>,
        merges: &[(u32, u32, u32)],
        units: Units,
        ignore_merges: bool,
    ) -> Self {
        let mut table = HashMap::with_capacity_and_hasher(merges.len(), FxBuild::default());
        for (rank, &(a, b, new)) in merges.iter().enumerate() {
            table.insert(pair_key(a, b), (rank as u32, new));
        }
        let units_vocab = vocab
            .iter()
            .filter(|(token, _)| (1..=4).contains(&token.len()))
            .filter(|(token, _)| utf8_len(token[0]) == token.len())
            .map(|(token, &id)| (unit_key(token), id))
            .collect();
        Bpe {
            vocab,
            units_vocab,
            merges: table,
            units,
            ignore_merges,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Runs `f` with this thread's word cache: no lock, no sharing between threads.
    pub fn with_cache<R>(&self, f: impl FnOnce(&mut Words<'_>) -> R) -> R {
        CACHE.with(|cell| {
            let mut cache = cell.borrow_mut();
            if cache.owner != self.id {
                cache.owner = self.id;
                cache.current.clear();
                cache.previous.clear();
            }
            f(&mut Words {
                bpe: self,
                cache: &mut cache,
            })
        })
    }
    fn initial_symbols(&self, word: &[u8], symbols: &mut Vec<Symbol>) {
        let mut push = |id: u32| {
            let at = symbols.len() as i32;
            symbols.push(Symbol {
                id,
                prev: at - 1,
                next: at + 1,
                live: true,
            });
        };
        match &self.units {
            Units::Bytes(ids) => word.iter().for_each(|&b| push(ids[b as usize])),
            Units::Chars {
                byte_fallback,
                unk,
                fuse_unk,
            } => {
                // A pending unknown run, pushed when a known character (or the end) follows.
                let mut pending_unk = false;
                let mut i = 0;
                while i < word.len() {
                    let len = utf8_len(word[i]).min(word.len() - i);
                    let unit = &word[i..i + len];
                    i += len;
                    if let Some(&id) = self.units_vocab.get(&unit_key(unit)) {
                        if pending_unk {
                            push(unk.unwrap_or(0));
                            pending_unk = false;
                        }
                        push(id);
                        continue;
                    }
                    if let Some(bytes) = byte_fallback {
                        // The `tokenizers` crate pushes byte tokens without flushing a pending
                        // unknown first.
                        unit.iter().for_each(|&b| push(bytes[b as usize]));
                        continue;
                    }
                    if let Some(unk) = unk {
                        if pending_unk && !fuse_unk {
                            push(*unk);
                        }
                        pending_unk = true;
                    }
                }
                if pending_unk {
                    push(unk.unwrap_or(0));
                }
            }
        }
        if let Some(last) = symbols.last_mut() {
            last.next = -1;
        }
    }

    /// `(rank, new id)` of merging `a` then `b`, or `(NO_MERGE, 0)`.
    #[inline]
    fn pair(&self, a: u32, b: u32) -> (u32, u32) {
        self.merges
            .get(&pair_key(a, b))
            .copied()
            .unwrap_or((NO_MERGE, 0))
    }

    /// Merges `word` by rank and appends its ids: the pair of lowest rank first, the leftmost
    /// of equal ranks, as the `tokenizers` crate's queue does.
    fn merge_word(&self, word: &[u8], buffers: &mut MergeBuffers, out: &mut Vec<u32>) {
        let MergeBuffers {
            symbols,
            queue,
            ids,
            pairs,
        } = buffers;
        symbols.clear();
        self.initial_symbols(word, symbols);
        if symbols.len() <= SCAN_SYMBOLS {
            ids.clear();
            ids.extend(symbols.iter().map(|s| s.id));
            pairs.clear();
            pairs.extend(ids.windows(2).map(|w| self.pair(w[0], w[1])));
            loop {
                // The first pair of lowest rank: the queue's order (rank, then position).
                let mut best = (NO_MERGE, 0, 0);
                for (at, &(rank, new)) in pairs.iter().enumerate() {
                    if rank < best.0 {
                        best = (rank, at, new);
                    }
                }
                let (rank, at, new) = best;
                if rank == NO_MERGE {
                    break;
                }
                ids[at] = new;
                ids.remove(at + 1);
                pairs.remove(at);
                if at > 0 {
                    pairs[at - 1] = self.pair(ids[at - 1], new);
                }
                if at < pairs.len() {
                    pairs[at] = self.pair(new, ids[at + 1]);
                }
            }
            out.extend_from_slice(ids);
            return;
        }
        queue.clear();
        queue.extend(symbols.windows(2).enumerate().filter_map(|(pos, w)| {
            self.merges
                .get(&pair_key(w[0].id, w[1].id))
                .map(|&(rank, new)| Reverse((rank, pos as u32, new)))
        }));
        while let Some(Reverse((_, pos, new))) = queue.pop() {
            let pos = pos as usize;
            let left = symbols[pos];
            if !left.live || left.next < 0 {
                continue;
            }
            let next = left.next as usize;
            let right = symbols[next];
            if self
                .merges
                .get(&pair_key(left.id, right.id))
                .is_none_or(|&(_, id)| id != new)
            {
                continue;
            }
            symbols[pos].id = new;
            symbols[pos].next = right.next;
            symbols[next].live = false;
            if right.next >= 0 {
                symbols[right.next as usize].prev = pos as i32;
            }
            let current = symbols[pos];
            if current.prev >= 0 {
                let prev = current.prev as usize;
                if let Some(&(rank, id)) = self.merges.get(&pair_key(symbols[prev].id, new)) {
                    queue.push(Reverse((rank, prev as u32, id)));
                }
            }
            if current.next >= 0 {
                let after = current.next as usize;
                if let Some(&(rank, id)) = self.merges.get(&pair_key(new, symbols[after].id)) {
                    queue.push(Reverse((rank, pos as u32, id)));
                }
            }
        }
        out.extend(symbols.iter().filter(|s| s.live).map(|s| s.id));
    }
}

/// A [`Bpe`] with this thread's word cache borrowed.
pub struct Words<'a> {
    bpe: &'a Bpe,
    cache: &'a mut WordCache,
}

impl Words<'_> {
    /// Appends the ids of `word` (one pre-token) to `out`.
    #[inline]
    pub fn encode_word(&mut self, word: &[u8], out: &mut Vec<u32>) {
        let bpe = self.bpe;
        if word.is_empty() {
            return;
        }
        if word.len() == 1 {
            if let Units::Bytes(ids) = &bpe.units {
                out.push(ids[word[0] as usize]);
                return;
            }
        }
        if bpe.ignore_merges {
            if let Some(&id) = bpe.vocab.get(word) {
                out.push(id);
                return;
            }
        }
        if word.len() >= CACHE_WORD_BYTES {
            bpe.merge_word(word, &mut self.cache.merge, out);
            return;
        }
        let hash = word_hash(word);
        let cache = &mut *self.cache;
        if let Some(ids) = cache.current.get(hash, word) {
            extend_ids(out, ids);
            return;
        }
        if cache.current.len() >= CACHE_ENTRIES {
            std::mem::swap(&mut cache.current, &mut cache.previous);
            cache.current.clear();
        }
        let WordCache {
            current,
            previous,
            merge,
            ids,
            ..
        } = cache;
        match previous.get(hash, word) {
            // A word of the older generation moves to the current one.
            Some(bytes) => {
                extend_ids(out, bytes);
                current.insert(hash, word, bytes);
            }
            None => {
                let start = out.len();
                bpe.merge_word(word, merge, out);
                ids.clear();
                ids.extend(out[start..].iter().flat_map(|id| id.to_le_bytes()));
                current.insert(hash, word, ids);
            }
        }
    }
}

/// A key for one UTF-8 character (1 to 4 bytes): its bytes, zero-padded, little-endian. The
/// lead byte fixes the length, so two characters never share a key.
#[inline]
fn unit_key(unit: &[u8]) -> u32 {
    let mut key = [0u8; 4];
    let len = unit.len().min(4);
    key[..len].copy_from_slice(&unit[..len]);
    u32::from_le_bytes(key)
}

/// Length of the UTF-8 sequence a lead byte starts.
#[inline]
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}
