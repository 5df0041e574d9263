//! The fast encoder: the same ids as the `tokenizers` crate for the tokenizer layouts this
//! project's corpora use, several times faster.
//!
//! Supported, read from the same `tokenizer.json`:
//! - model `BPE` without dropout, subword prefix or word suffix (`ignore_merges`,
//!   `byte_fallback`, `unk_token` and `fuse_unk` as the `tokenizers` crate applies them);
//! - pre-tokenizer `ByteLevel` with its GPT-2 split pattern (GPT-2, GPT-NeoX, the tokenizers
//!   `train-tokenizer` writes), the Llama 3 `Split` + `ByteLevel` sequence, or `Metaspace`;
//! - normalizer none or `NFC`;
//! - added tokens: special ones are encoded as text (a document cannot forge a boundary), other
//!   ones are split out first as the `tokenizers` crate does, unless they strip spaces or must
//!   be single words;
//! - no truncation or padding in the file.
//!
//! [`FastEncoder::from_json`] says why when a file is outside this set; the caller then uses the
//! `tokenizers` crate.

use std::borrow::Cow;
use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;
use unicode_normalization::{is_nfc_quick, IsNormalized};

use super::bpe::{Bpe, FxBuild, Units, Words};
use super::pretok::{self, Classifier, Prepend};

/// How text segments are cut into words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splitter {
    /// `ByteLevel` with the GPT-2 pattern.
    Gpt2 { add_prefix_space: bool },
    /// `Split` with the Llama 3 pattern, then `ByteLevel` without its own pattern.
    Llama3,
    Metaspace {
        replacement: char,
        prepend: Prepend,
        split: bool,
    },
}

/// Added tokens matched in text, leftmost-longest like the `tokenizers` crate.
#[derive(Debug)]
struct AddedTrie {
    automaton: AhoCorasick,
    /// Per pattern: its id, or `None` for a special token (matched, then left as text).
    ids: Vec<Option<u32>>,
}

enum Segment<'a> {
    Text(&'a str, bool),
    Added(u32),
}

impl AddedTrie {
    fn build(patterns: Vec<(String, Option<u32>)>) -> Result<Option<Self>, String> {
        if patterns.iter().all(|(_, id)| id.is_none()) {
            // Only special tokens: every match would be left as text.
            return Ok(None);
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|(p, _)| p.as_str()))
            .map_err(|e| format!("added tokens: {e}"))?;
        Ok(Some(AddedTrie {
            automaton,
            ids: patterns.into_iter().map(|(_, id)| id).collect(),
        }))
    }
}

/// Calls `f` with the text segments and added tokens of `text` in order; a text segment comes
/// with whether it starts at offset 0. Empty segments are dropped.
fn split_added<'a>(trie: Option<&AddedTrie>, text: &'a str, mut f: impl FnMut(Segment<'a>)) {
    let Some(trie) = trie else {
        if !text.is_empty() {
            f(Segment::Text(text, true));
        }
        return;
    };
    let mut start = 0;
    for found in trie.automaton.find_iter(text) {
        let Some(id) = trie.ids[found.pattern().as_usize()] else {
            continue;
        };
        if start < found.start() {
            f(Segment::Text(&text[start..found.start()], start == 0));
        }
        f(Segment::Added(id));
        start = found.end();
    }
    if start < text.len() {
        f(Segment::Text(&text[start..], start == 0));
    }
}

/// A tokenizer.json encoded without the `tokenizers` crate.
#[derive(Debug)]
pub struct FastEncoder {
    bpe: Bpe,
    splitter: Splitter,
    /// Character classes of the split patterns: `Some` for the byte-level splitters, which
    /// use them (building the table costs a pass of the regex engine over every code point).
    classifier: Option<Classifier>,
    nfc: bool,
    raw_added: Option<AddedTrie>,
    normalized_added: Option<AddedTrie>,
    /// Bytes a long document may be cut before (see [`super::split_for_encoding`]).
    cut_bytes: &'static [u8],
}

/// NFC exactly as the `tokenizers` crate computes it; text that is already NFC is borrowed.
pub fn nfc(text: &str) -> Cow<'_, str> {
    if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        return Cow::Borrowed(text);
    }
    use tokenizers::Normalizer;
    let mut normalized = tokenizers::NormalizedString::from(text);
    match tokenizers::normalizers::NFC.normalize(&mut normalized) {
        Ok(()) => Cow::Owned(normalized.get().to_string()),
        Err(_) => Cow::Borrowed(text),
    }
}

/// The byte-level alphabet: byte → the character GPT-2's byte-level BPE writes for it.
pub fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn type_of(value: &Value) -> &str {
    str_field(value, "type").unwrap_or("?")
}

fn splitter(pre: &Value) -> Result<Splitter, String> {
    let byte_level = |v: &Value, regex: bool| -> Result<bool, String> {
        let use_regex = v.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
        if use_regex != regex {
            return Err(format!(
                "ByteLevel pre-tokenizer with use_regex {use_regex}"
            ));
        }
        Ok(v.get("add_prefix_space")
            .and_then(Value::as_bool)
            .unwrap_or(true))
    };
    match type_of(pre) {
        "ByteLevel" => Ok(Splitter::Gpt2 {
            add_prefix_space: byte_level(pre, true)?,
        }),
        "Sequence" => {
            let parts = pre
                .get("pretokenizers")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let [split, level] = parts {
                let pattern = split.get("pattern").and_then(|p| str_field(p, "Regex"));
                let isolated = str_field(split, "behavior") == Some("Isolated");
                let inverted = split.get("invert").and_then(Value::as_bool) != Some(false);
                if type_of(split) == "Split"
                    && pattern == Some(pretok::LLAMA3_PATTERN)
                    && isolated
                    && !inverted
                    && type_of(level) == "ByteLevel"
                    && !byte_level(level, false)?
                {
                    return Ok(Splitter::Llama3);
                }
            }
            Err("a Sequence pre-tokenizer other than Llama 3's Split + ByteLevel".to_string())
        }
        "Metaspace" => {
            let replacement = str_field(pre, "replacement")
                .and_then(|r| {
                    let mut chars = r.chars();
                    chars.next().filter(|_| chars.next().is_none())
                })
                .ok_or("Metaspace without a one-character replacement")?;
            if replacement == ' ' {
                return Err("Metaspace replacing a space by a space".to_string());
            }
            let prepend = match str_field(pre, "prepend_scheme") {
                Some("always") => Prepend::Always,
                Some("first") => Prepend::First,
                Some("never") => Prepend::Never,
                None => match pre.get("add_prefix_space").and_then(Value::as_bool) {
                    Some(false) => Prepend::Never,
                    _ => Prepend::Always,
                },
                Some(other) => return Err(format!("Metaspace prepend_scheme {other}")),
            };
            let split = pre.get("split").and_then(Value::as_bool).unwrap_or(true);
            Ok(Splitter::Metaspace {
                replacement,
                prepend,
                split,
            })
        }
        other => Err(format!("pre-tokenizer {other}")),
    }
}

fn merges(model: &Value) -> Result<Vec<(&str, &str)>, String> {
    let list = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or("BPE model without merges")?;
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        match entry {
            Value::String(line) if line.starts_with("#version") => {}
            Value::String(line) => match line.split_once(' ') {
                Some((a, b)) if !b.contains(' ') => out.push((a, b)),
                _ => return Err(format!("merge {line:?} is not two tokens")),
            },
            Value::Array(pair) => match &pair[..] {
                [Value::String(a), Value::String(b)] => out.push((a.as_str(), b.as_str())),
                _ => return Err("a merge is not two tokens".to_string()),
            },
            _ => return Err("a merge is not two tokens".to_string()),
        }
    }
    Ok(out)
}

/// The part of a [`FastEncoder`] read from the JSON alone (vocabulary, merges, splitter and its
/// character classes): the costly part, which can be built while the `tokenizers` crate loads
/// the same file.
#[derive(Debug)]
pub struct FastTables {
    bpe: Bpe,
    splitter: Splitter,
    classifier: Option<Classifier>,
    nfc: bool,
}

impl FastTables {
    /// Reads `json`; `Err` names what the fast encoder does not support in it.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        let root: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        for key in ["truncation", "padding"] {
            if root.get(key).is_some_and(|v| !v.is_null()) {
                return Err(format!("{key} is set"));
            }
        }
        let nfc_normalizer = match root.get("normalizer") {
            None | Some(Value::Null) => false,
            Some(n) if type_of(n) == "NFC" => true,
            Some(n) => return Err(format!("normalizer {}", type_of(n))),
        };
        let pre = root.get("pre_tokenizer").unwrap_or(&Value::Null);
        if pre.is_null() {
            return Err("no pre-tokenizer".to_string());
        }
        let splitter = splitter(pre)?;
        let model = root.get("model").ok_or("no model")?;
        if type_of(model) != "BPE" {
            return Err(format!("model {}", type_of(model)));
        }
        if model
            .get("dropout")
            .and_then(Value::as_f64)
            .is_some_and(|d| d != 0.0)
        {
            return Err("BPE dropout".to_string());
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if str_field(model, key).is_some_and(|s| !s.is_empty()) {
                return Err(format!("BPE {key}"));
            }
        }
        let flag = |key: &str| model.get(key).and_then(Value::as_bool).unwrap_or(false);
        let entries = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or("BPE model without a vocabulary")?;
        let mut vocab: HashMap<&str, u32, FxBuild> =
            HashMap::with_capacity_and_hasher(entries.len(), FxBuild::default());
        for (token, id) in entries {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("BPE vocabulary: the id of {token:?} is not a u32"))?;
            vocab.insert(token.as_str(), id);
        }
        let id_of = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| format!("merge token {token:?} is not in the vocabulary"))
        };
        let merge_list = merges(model)?;
        let mut merge_ids = Vec::with_capacity(merge_list.len());
        let mut joined = String::new();
        for (a, b) in merge_list {
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            merge_ids.push((id_of(a)?, id_of(b)?, id_of(&joined)?));
        }

        let byte_level = !matches!(splitter, Splitter::Metaspace { .. });
        let mut bytes_vocab: HashMap<Box<[u8]>, u32, FxBuild> = HashMap::default();
        let units = if byte_level {
            let chars = byte_chars();
            // Character → byte, indexed by code point (the alphabet ends below 0x200).
            let mut char_byte = [None; 0x200];
            for (b, c) in chars.iter().enumerate() {
                if let Some(slot) = char_byte.get_mut(*c as usize) {
                    *slot = Some(b as u8);
                }
            }
            bytes_vocab.reserve(vocab.len());
            let mut raw = Vec::new();
            for (token, &id) in &vocab {
                raw.clear();
                let all_bytes = token.chars().all(|c| {
                    let byte = char_byte.get(c as usize).copied().flatten();
                    raw.extend(byte);
                    byte.is_some()
                });
                if all_bytes {
                    bytes_vocab.insert(raw.as_slice().into(), id);
                }
            }
            let mut ids = Box::new([u32::MAX; 256]);
            for (b, c) in chars.iter().enumerate() {
                // 0xC0, 0xC1 and 0xF5..=0xFF never occur in UTF-8 text: a vocabulary may omit
                // them (GPT-NeoX does).
                let in_utf8 = !matches!(b, 0xc0 | 0xc1 | 0xf5..=0xff);
                match vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str) {
                    Some(&id) => ids[b] = id,
                    None if in_utf8 => {
                        return Err(format!("byte-level vocabulary without the byte {b:#04x}"))
                    }
                    None => {}
                }
            }
            Units::Bytes(ids)
        } else {
            bytes_vocab.reserve(vocab.len());
            for (token, &id) in &vocab {
                bytes_vocab.insert(token.as_bytes().into(), id);
            }
            let byte_fallback = if flag("byte_fallback") {
                let mut ids = Box::new([0u32; 256]);
                for (b, slot) in ids.iter_mut().enumerate() {
                    *slot = *vocab
                        .get(format!("<0x{b:02X}>").as_str())
                        .ok_or_else(|| format!("byte_fallback without the token <0x{b:02X}>"))?;
                }
                Some(ids)
            } else {
                None
            };
            let unk = match str_field(model, "unk_token") {
                Some(unk) => Some(
                    *vocab
                        .get(unk)
                        .ok_or_else(|| format!("unk_token {unk:?} is not in the vocabulary"))?,
                ),
                None => None,
            };
            Units::Chars {
                byte_fallback,
                unk,
                fuse_unk: flag("fuse_unk"),
            }
        };
        let bpe = Bpe::new(bytes_vocab, &merge_ids, units, flag("ignore_merges"));
        Ok(FastTables {
            bpe,
            splitter,
            classifier: if byte_level {
                Some(Classifier::new()?)
            } else {
                None
            },
            nfc: nfc_normalizer,
        })
    }
}

impl FastEncoder {
    /// Builds the fast encoder for `json`, the file `tokenizer` was loaded from; `Err` names
    /// what it does not support.
    pub fn from_json(json: &[u8], tokenizer: &tokenizers::Tokenizer) -> Result<Self, String> {
        Self::new(FastTables::from_json(json)?, tokenizer)
    }

    /// Completes `tables` with the added tokens of `tokenizer`, loaded from the same file.
    pub fn new(tables: FastTables, tokenizer: &tokenizers::Tokenizer) -> Result<Self, String> {
        let FastTables {
            bpe,
            splitter,
            classifier,
            nfc: nfc_normalizer,
        } = tables;
        // Added tokens as the loaded tokenizer holds them (ids resolved as it resolves them).
        let mut added: Vec<(u32, tokenizers::AddedToken)> =
            tokenizer.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        let mut raw_patterns = Vec::new();
        let mut normalized_patterns = Vec::new();
        let mut mixed_whitespace = false;
        for (id, token) in added {
            if token.content.is_empty() {
                continue;
            }
            if !token.special && (token.lstrip || token.rstrip || token.single_word) {
                return Err(format!(
                    "added token {:?} with lstrip, rstrip or single_word",
                    token.content
                ));
            }
            let has_space = token.content.chars().any(char::is_whitespace);
            mixed_whitespace |= has_space && !token.content.chars().all(char::is_whitespace);
            let value = (!token.special).then_some(id);
            if token.normalized {
                let pattern = if nfc_normalizer {
                    nfc(&token.content).into_owned()
                } else {
                    token.content.clone()
                };
                normalized_patterns.push((pattern, value));
            } else {
                raw_patterns.push((token.content.clone(), value));
            }
        }
        let cut_bytes: &'static [u8] = if mixed_whitespace {
            &[]
        } else {
            match splitter {
                Splitter::Gpt2 {
                    add_prefix_space: false,
                } => b" \n\t\r",
                Splitter::Gpt2 { .. } | Splitter::Llama3 => b" ",
                Splitter::Metaspace { split: true, .. } => b" ",
                Splitter::Metaspace { split: false, .. } => &[],
            }
        };
        Ok(FastEncoder {
            bpe,
            splitter,
            classifier,
            nfc: nfc_normalizer,
            raw_added: AddedTrie::build(raw_patterns)?,
            normalized_added: AddedTrie::build(normalized_patterns)?,
            cut_bytes,
        })
    }

    /// What this encoder handles, in words.
    pub fn describe(&self) -> &'static str {
        match self.splitter {
            Splitter::Gpt2 { .. } => "fast byte-level BPE (GPT-2 split pattern)",
            Splitter::Llama3 => "fast byte-level BPE (Llama 3 split pattern)",
            Splitter::Metaspace { .. } => "fast Metaspace BPE",
        }
    }

    /// The ASCII whitespace bytes a long document may be cut before with identical ids.
    pub fn cut_bytes(&self) -> &'static [u8] {
        self.cut_bytes
    }

    /// Appends the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        self.bpe.with_cache(|words| {
            let mut scratch = String::new();
            split_added(self.raw_added.as_ref(), text, |segment| match segment {
                Segment::Added(id) => out.push(id),
                Segment::Text(raw, raw_first) => {
                    let normalized = if self.nfc {
                        nfc(raw)
                    } else {
                        Cow::Borrowed(raw)
                    };
                    split_added(
                        self.normalized_added.as_ref(),
                        &normalized,
                        |segment| match segment {
                            Segment::Added(id) => out.push(id),
                            Segment::Text(text, first) => self.encode_segment(
                                words,
                                text,
                                raw_first && first,
                                &mut scratch,
                                out,
                            ),
                        },
                    );
                }
            });
        })
    }

    /// Ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encode_into(text, &mut out);
        out
    }

    fn encode_segment(
        &self,
        words: &mut Words<'_>,
        text: &str,
        first: bool,
        scratch: &mut String,
        out: &mut Vec<u32>,
    ) {
        match self.splitter {
            Splitter::Gpt2 { add_prefix_space } => {
                let text = if add_prefix_space && !text.starts_with(' ') {
                    scratch.clear();
                    scratch.push(' ');
                    scratch.push_str(text);
                    scratch.as_str()
                } else {
                    text
                };
                if let Some(classifier) = &self.classifier {
                    classifier.split_gpt2(text, |word| words.encode_word(word.as_bytes(), out));
                }
            }
            Splitter::Llama3 => {
                if let Some(classifier) = &self.classifier {
                    classifier.split_llama3(text, |word| words.encode_word(word.as_bytes(), out));
                }
            }
            Splitter::Metaspace {
                replacement,
                prepend,
                split,
            } => pretok::metaspace(text, replacement, prepend, split, first, scratch, |word| {
                words.encode_word(word.as_bytes(), out)
            }),
        }
    }
}
