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

type WordMap = HashMap<Box<[u8]>, Box<[u32]>, FxBuild>;

/// Words cached per thread: the key is the word's bytes, the value its ids. Two generations:
/// when `current` is full it becomes `previous` (the older one is dropped), and a word found in
/// `previous` moves back to `current`, so frequent words stay cached at any corpus size.
struct WordCache {
    owner: u64,
    current: WordMap,
    previous: WordMap,
    /// Buffers of [`Bpe::merge_word`], kept so that a cache miss allocates nothing but the
    /// cache entry.
    merge: MergeBuffers,
}

/// A word's symbols and the queue of candidate merges `(rank, position, new id)`.
#[derive(Default)]
struct MergeBuffers {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<(u32, u32, u32)>>,
}

/// Entries of one generation of a thread's cache (about 100 bytes each).
const CACHE_ENTRIES: usize = 1 << 17;
/// Longer words are not cached.
const CACHE_WORD_BYTES: usize = 256;

thread_local! {
    static CACHE: RefCell<WordCache> = RefCell::new(WordCache {
        owner: 0,
        current: HashMap::default(),
        previous: HashMap::default(),
        merge: MergeBuffers::default(),
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

    /// Merges `word` by rank and appends its ids.
    fn merge_word(&self, word: &[u8], buffers: &mut MergeBuffers, out: &mut Vec<u32>) {
        let MergeBuffers { symbols, queue } = buffers;
        symbols.clear();
        queue.clear();
        self.initial_symbols(word, symbols);
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
        if let Some(ids) = self.cache.current.get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let (key, ids) = match self.cache.previous.remove_entry(word) {
            Some(entry) => {
                out.extend_from_slice(&entry.1);
                entry
            }
            None => {
                let start = out.len();
                bpe.merge_word(word, &mut self.cache.merge, out);
                (word.into(), out[start..].into())
            }
        };
        let cache = &mut *self.cache;
        if cache.current.len() >= CACHE_ENTRIES {
            cache.previous = std::mem::take(&mut cache.current);
        }
        cache.current.insert(key, ids);
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
