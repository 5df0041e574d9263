//! Pre-tokenizers written out by hand: the GPT-2 and Llama 3 split patterns and `Metaspace`.
//!
//! The patterns are the `tokenizers` crate's regular expressions, evaluated without a regex
//! engine: each branch of the alternation is tried in order at the current position, with the
//! same greedy-then-backtrack result the engine gives. The character classes (`\p{L}`, `\p{N}`,
//! `\s`) come from the same regex engine the `tokenizers` crate uses (Oniguruma), run once over
//! every code point, so both sides agree on every Unicode version detail.

use std::sync::OnceLock;

/// Character classes of the split patterns.
pub const OTHER: u8 = 0;
pub const LETTER: u8 = 1;
pub const NUMBER: u8 = 2;
pub const SPACE: u8 = 3;

/// The split pattern of GPT-2 (and GPT-NeoX, and the tokenizers `train-tokenizer` writes).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The split pattern of Llama 3.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Class of every code point: a two-level table of 256-code-point blocks.
struct Classes {
    index: Vec<u16>,
    blocks: Vec<[u8; 256]>,
}

fn build_classes() -> Result<Classes, String> {
    let mut all = String::with_capacity(4 * 0x11_0000);
    for cp in 0..0x11_0000u32 {
        if let Some(c) = char::from_u32(cp) {
            all.push(c);
        }
    }
    let mut table = vec![OTHER; 0x11_0000];
    for (pattern, class) in [(r"\p{L}+", LETTER), (r"\p{N}+", NUMBER), (r"\s+", SPACE)] {
        let regex = tokenizers::utils::SysRegex::new(pattern).map_err(|e| e.to_string())?;
        for (start, end) in regex.find_iter(&all) {
            for c in all[start..end].chars() {
                table[c as usize] = class;
            }
        }
    }
    let mut index = Vec::with_capacity(0x1100);
    let mut blocks: Vec<[u8; 256]> = Vec::new();
    for chunk in table.chunks_exact(256) {
        let block: [u8; 256] = chunk.try_into().map_err(|_| "block".to_string())?;
        let at = match blocks.iter().position(|b| *b == block) {
            Some(at) => at,
            None => {
                blocks.push(block);
                blocks.len() - 1
            }
        };
        index.push(u16::try_from(at).map_err(|_| "too many blocks".to_string())?);
    }
    Ok(Classes { index, blocks })
}

fn classes() -> Result<&'static Classes, String> {
    static CLASSES: OnceLock<Result<Classes, String>> = OnceLock::new();
    CLASSES
        .get_or_init(build_classes)
        .as_ref()
        .map_err(Clone::clone)
}

/// Classifies characters; built once per process.
#[derive(Clone, Copy)]
pub struct Classifier {
    classes: &'static Classes,
    ascii: [u8; 128],
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Classifier")
    }
}

impl Classifier {
    pub fn new() -> Result<Self, String> {
        let classes = classes()?;
        let mut ascii = [OTHER; 128];
        for (b, slot) in ascii.iter_mut().enumerate() {
            *slot = classes.blocks[classes.index[0] as usize][b];
        }
        Ok(Classifier { classes, ascii })
    }

    #[inline]
    pub fn class(&self, c: char) -> u8 {
        let cp = c as usize;
        if cp < 128 {
            return self.ascii[cp];
        }
        self.classes.blocks[self.classes.index[cp >> 8] as usize][cp & 0xff]
    }

    /// The character at byte `i` of `text` (a char boundary), its length and class.
    #[inline]
    fn at(&self, text: &str, i: usize) -> Option<(char, usize, u8)> {
        let b = *text.as_bytes().get(i)?;
        if b < 0x80 {
            return Some((b as char, 1, self.ascii[b as usize]));
        }
        let c = text.get(i..)?.chars().next()?;
        Some((c, c.len_utf8(), self.class(c)))
    }

    /// End of the run of characters of `class` starting at `i`.
    #[inline]
    fn run(&self, text: &str, mut i: usize, class: u8) -> usize {
        while let Some((_, len, k)) = self.at(text, i) {
            if k != class {
                break;
            }
            i += len;
        }
        i
    }

    /// End of the whitespace run at `i`, and the start of its last character.
    #[inline]
    fn space_run(&self, text: &str, mut i: usize) -> (usize, usize) {
        let mut last = i;
        while let Some((_, len, k)) = self.at(text, i) {
            if k != SPACE {
                break;
            }
            last = i;
            i += len;
        }
        (i, last)
    }

    /// Splits `text` with [`GPT2_PATTERN`], calling `emit` with each piece in order.
    pub fn split_gpt2(&self, text: &str, mut emit: impl FnMut(&str)) {
        let bytes = text.as_bytes();
        let n = bytes.len();
        let mut i = 0;
        while let Some((c, len, class)) = self.at(text, i) {
            let end = if c == '\'' && gpt2_contraction(&bytes[i + 1..]) > 0 {
                i + 1 + gpt2_contraction(&bytes[i + 1..])
            } else if class != SPACE {
                self.run(text, i + len, class)
            } else {
                match self.at(text, i + 1) {
                    Some((_, _, next)) if c == ' ' && next != SPACE => self.run(text, i + 1, next),
                    _ => {
                        let (end, last) = self.space_run(text, i);
                        if end == n || last == i {
                            end
                        } else {
                            last
                        }
                    }
                }
            };
            emit(&text[i..end]);
            i = end;
        }
    }

    /// Splits `text` with [`LLAMA3_PATTERN`], calling `emit` with each piece in order.
    pub fn split_llama3(&self, text: &str, mut emit: impl FnMut(&str)) {
        let bytes = text.as_bytes();
        let n = bytes.len();
        let mut i = 0;
        while let Some((c, len, class)) = self.at(text, i) {
            let next = self.at(text, i + len);
            let end = if c == '\'' && llama3_contraction(&text[i + 1..]) > 0 {
                i + 1 + llama3_contraction(&text[i + 1..])
            } else if class == LETTER
                || (class != NUMBER
                    && c != '\r'
                    && c != '\n'
                    && next.is_some_and(|(_, _, k)| k == LETTER))
            {
                // `[^\r\n\p{L}\p{N}]?\p{L}+`: a letter run, or one such character and a run.
                self.run(text, i + len, LETTER)
            } else if class == NUMBER {
                let mut end = i + len;
                for _ in 0..2 {
                    match self.at(text, end) {
                        Some((_, l, NUMBER)) => end += l,
                        _ => break,
                    }
                }
                end
            } else if class == OTHER || (c == ' ' && next.is_some_and(|(_, _, k)| k == OTHER)) {
                let start = if class == OTHER { i } else { i + 1 };
                let mut end = self.run(text, start, OTHER);
                while matches!(bytes.get(end), Some(b'\r' | b'\n')) {
                    end += 1;
                }
                end
            } else {
                // Whitespace: `\s*[\r\n]+`, then `\s+(?!\S)`, then `\s+`.
                let (end, last) = self.space_run(text, i);
                let mut newline = None;
                let mut p = i;
                while p < end {
                    if matches!(bytes[p], b'\r' | b'\n') {
                        newline = Some(p);
                    }
                    p += self.at(text, p).map_or(1, |(_, l, _)| l);
                }
                match newline {
                    Some(p) => p + 1,
                    None if end == n || last == i => end,
                    None => last,
                }
            };
            emit(&text[i..end]);
            i = end;
        }
    }
}

/// Length of the contraction (`s`, `t`, `re`, `ve`, `m`, `ll`, `d`) at the start of `rest`.
#[inline]
fn gpt2_contraction(rest: &[u8]) -> usize {
    match rest {
        [b's' | b't' | b'm' | b'd', ..] => 1,
        [b'r' | b'v', b'e', ..] | [b'l', b'l', ..] => 2,
        _ => 0,
    }
}

/// The same, case-insensitive as Oniguruma folds case: `ſ` (U+017F) folds to `s`.
fn llama3_contraction(rest: &str) -> usize {
    let mut chars = rest.chars();
    let first = chars.next().map(fold);
    let second = chars.next().map(fold);
    match (first, second) {
        (Some('s'), _) => {
            if rest.starts_with('ſ') {
                2
            } else {
                1
            }
        }
        (Some('t' | 'm' | 'd'), _) => 1,
        (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => 2,
        _ => 0,
    }
}

fn fold(c: char) -> char {
    match c {
        'ſ' => 's',
        'A'..='Z' => c.to_ascii_lowercase(),
        _ => c,
    }
}

/// `Metaspace` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepend {
    Always,
    First,
    Never,
}

/// Metaspace pre-tokenization of one text segment: spaces become `replacement`, the segment
/// gets a leading `replacement` by `prepend` (`first`: only when `first` is true), and with
/// `split` it is cut before every `replacement`. Each word is written into `word` (cleared)
/// and passed to `emit`.
pub fn metaspace(
    text: &str,
    replacement: char,
    prepend: Prepend,
    split: bool,
    first: bool,
    word: &mut String,
    mut emit: impl FnMut(&str),
) {
    word.clear();
    let starts_with_replacement = text.starts_with(' ') || text.starts_with(replacement);
    let add = match prepend {
        Prepend::Always => !starts_with_replacement,
        Prepend::First => !starts_with_replacement && first,
        Prepend::Never => false,
    };
    if add {
        word.push(replacement);
    }
    for c in text.chars() {
        let c = if c == ' ' { replacement } else { c };
        if c == replacement && split && !word.is_empty() {
            emit(word);
            word.clear();
        }
        word.push(c);
    }
    if !word.is_empty() {
        emit(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        Classifier::new()
            .unwrap()
            .split_gpt2(text, |p| out.push(p.to_string()));
        out
    }

    #[test]
    fn gpt2_pattern_pieces() {
        assert_eq!(
            gpt2("Hello world's  end\n\n 42x ''s"),
            ["Hello", " world", "'s", " ", " end", "\n\n", " 42", "x", " ''", "s"]
        );
        assert_eq!(gpt2("   "), ["   "]);
        assert_eq!(gpt2(""), Vec::<String>::new());
    }
}
