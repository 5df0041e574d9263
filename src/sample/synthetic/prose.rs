//! Fast English-like prose for the synthetic corpus: sentences from a few templates, written
//! straight into a reused buffer (no allocation per word, unlike `sample::text`, which favours
//! variety over speed). Names, numbers and years make two independently generated documents
//! share almost no word 5-grams, so only planted copies look alike.

use std::fmt::Write as _;

use crate::sample::text::Rng;
use crate::sample::words::{ADJECTIVES, ADVERBS, NAMES, NOUNS, PREPOSITIONS, VERBS};

fn pick<'a>(rng: &mut Rng, words: &[&'a str]) -> &'a str {
    words[rng.below(words.len())]
}

/// Present tense, third person singular.
fn push_present(verb: &str, out: &mut String) {
    out.push_str(verb);
    let sibilant = verb.ends_with(['s', 'x']) || verb.ends_with("sh") || verb.ends_with("ch");
    out.push_str(if sibilant { "es" } else { "s" });
}

fn push_past(verb: &str, out: &mut String) {
    if verb == "build" {
        out.push_str("built");
    } else {
        out.push_str(verb);
        out.push_str(if verb.ends_with('e') { "d" } else { "ed" });
    }
}

/// `a` or `an` before `word`, then the word.
fn push_article(word: &str, out: &mut String) {
    out.push_str(if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an "
    } else {
        "a "
    });
    out.push_str(word);
}

/// Appends one sentence; returns its word count.
fn push_sentence(rng: &mut Rng, out: &mut String) -> usize {
    let (n1, n2) = (pick(rng, NOUNS), pick(rng, NOUNS));
    let adjective = pick(rng, ADJECTIVES);
    let verb = pick(rng, VERBS);
    match rng.below(6) {
        0 => {
            out.push_str("The ");
            out.push_str(adjective);
            out.push(' ');
            out.push_str(n1);
            out.push(' ');
            push_present(verb, out);
            out.push(' ');
            out.push_str(pick(rng, ADVERBS));
            out.push(' ');
            out.push_str(pick(rng, PREPOSITIONS));
            out.push_str(" the ");
            out.push_str(n2);
            out.push('.');
            8
        }
        1 => {
            out.push_str(pick(rng, NAMES));
            out.push(' ');
            push_past(verb, out);
            let _ = write!(out, " {} ", rng.below(900) + 2);
            out.push_str(adjective);
            out.push(' ');
            out.push_str(n1);
            out.push_str("s ");
            out.push_str(pick(rng, PREPOSITIONS));
            out.push_str(" the ");
            out.push_str(n2);
            out.push('.');
            8
        }
        2 => {
            let _ = write!(out, "In {}, the ", 1700 + rng.below(325));
            out.push_str(n1);
            out.push_str(" of ");
            out.push_str(pick(rng, NAMES));
            out.push(' ');
            push_past(verb, out);
            out.push(' ');
            push_article(adjective, out);
            out.push(' ');
            out.push_str(n2);
            out.push('.');
            10
        }
        3 => {
            out.push_str("Why would ");
            push_article(adjective, out);
            out.push(' ');
            out.push_str(n1);
            out.push(' ');
            out.push_str(verb);
            out.push_str(" the ");
            out.push_str(n2);
            out.push(' ');
            out.push_str(pick(rng, PREPOSITIONS));
            out.push(' ');
            out.push_str(pick(rng, NAMES));
            out.push('?');
            10
        }
        4 => {
            out.push_str("Each ");
            out.push_str(n1);
            out.push_str(" near the ");
            out.push_str(adjective);
            out.push(' ');
            out.push_str(n2);
            out.push_str(" was ");
            out.push_str(pick(rng, ADVERBS));
            out.push(' ');
            push_past(verb, out);
            let _ = write!(out, " by {} ", rng.below(90) + 2);
            out.push_str(pick(rng, NOUNS));
            out.push_str("s.");
            12
        }
        _ => {
            out.push_str(pick(rng, NAMES));
            out.push_str(" and ");
            out.push_str(pick(rng, NAMES));
            out.push(' ');
            push_past(verb, out);
            out.push_str(" the ");
            out.push_str(n1);
            out.push_str(", and the ");
            out.push_str(adjective);
            out.push(' ');
            out.push_str(n2);
            out.push(' ');
            push_present(pick(rng, VERBS), out);
            out.push(' ');
            out.push_str(pick(rng, ADVERBS));
            out.push('.');
            12
        }
    }
}

/// Replaces `out` with paragraphs of whole sentences, at least `words` words in all.
pub fn write_prose(rng: &mut Rng, words: usize, out: &mut String) {
    out.clear();
    let mut count = 0;
    while count < words {
        if count > 0 {
            out.push_str("\n\n");
        }
        let sentences = rng.range(3, 6);
        for i in 0..sentences {
            if i > 0 {
                out.push(' ');
            }
            count += push_sentence(rng, out);
            if count >= words {
                break;
            }
        }
    }
}

/// Bytes a JSON string cannot hold as they are: control characters, `"` and `\\`.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `text` as a JSON string literal.
pub fn write_json_string(text: &str, out: &mut String) {
    out.push('"');
    let bytes = text.as_bytes();
    let mut plain = 0;
    let mut i = 0;
    while i < bytes.len() {
        // A table lookup per byte: the common case (no escape) is a tight loop.
        if !ESCAPED[usize::from(bytes[i])] {
            i += 1;
            continue;
        }
        // Escaped bytes are ASCII, so `plain..i` ends on a character boundary.
        out.push_str(&text[plain..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\r' => out.push_str("\\r"),
            byte => {
                let _ = write!(out, "\\u{byte:04x}");
            }
        }
        i += 1;
        plain = i;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_counts_are_exact() {
        let mut rng = Rng::new(3);
        let mut out = String::new();
        for _ in 0..200 {
            let mut sentence = String::new();
            let claimed = push_sentence(&mut rng, &mut sentence);
            assert_eq!(sentence.split_whitespace().count(), claimed, "{sentence}");
        }
        write_prose(&mut rng, 100, &mut out);
        let words = out.split_whitespace().count();
        assert!((100..112).contains(&words), "{words}");
    }

    #[test]
    fn json_strings_round_trip() {
        let text = "a \"quoted\" \\ line\nnext\ttab \u{1} caf\u{e9}";
        let mut out = String::new();
        write_json_string(text, &mut out);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, text);
    }
}
