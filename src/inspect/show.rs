//! `inspect --show RANGE`: examples printed one by one, decoded with the corpus's tokenizer (or
//! as ids with `--raw`), with the prefix/target split and document starts marked in place.

use std::io::{self, Write};
use std::ops::Range;
use std::str::FromStr;

use redpack_schemas::Example;

/// Marks a position where a new document (or FLAN segment) starts inside an example.
pub const DOC_MARK: &str = "⟦doc⟧";

/// Which examples to show: `7`, `10..13` (end excluded), `10..=12`, `10..` or `..5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExampleRange {
    pub start: u64,
    /// Exclusive end; `None` runs to the last example.
    pub end: Option<u64>,
}

impl FromStr for ExampleRange {
    type Err = String;

    fn from_str(text: &str) -> Result<ExampleRange, String> {
        let number = |s: &str| -> Result<u64, String> {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}` is not an example index in `{text}` (expected e.g. `7`, `10..13`, `10..=12`, `10..`)"))
        };
        let Some((lo, hi)) = text.split_once("..") else {
            let start = number(text)?;
            return Ok(ExampleRange {
                start,
                end: Some(start.saturating_add(1)),
            });
        };
        let start = if lo.is_empty() { 0 } else { number(lo)? };
        let end = if let Some(last) = hi.strip_prefix('=') {
            Some(number(last)?.saturating_add(1))
        } else if hi.is_empty() {
            None
        } else {
            Some(number(hi)?)
        };
        if end.is_some_and(|end| end <= start) {
            return Err(format!("the range `{text}` is empty"));
        }
        Ok(ExampleRange { start, end })
    }
}

impl ExampleRange {
    /// The indexes to show in a corpus of `len` examples; an error when the range starts past
    /// the end. An end past the last example is clipped, as slicing tools do.
    pub fn resolve(&self, len: u64) -> Result<Range<u64>, String> {
        if self.start >= len {
            return Err(format!(
                "example {} is out of range: the corpus has {len} examples (0..{len})",
                self.start
            ));
        }
        Ok(self.start..self.end.map_or(len, |end| end.min(len)))
    }
}

/// How token ids become text.
pub enum TokenView<'a> {
    /// Decoded with the corpus's tokenizer, special tokens kept visible.
    Text(&'a tokenizers::Tokenizer),
    /// Ids separated by spaces.
    Ids,
}

/// A failure while showing examples.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// Writing the output failed (a closed pipe included: the caller exits quietly on that).
    #[error("writing output")]
    Io(#[source] io::Error),
    #[error("example {index}: the tokenizer cannot decode tokens {start}..{end}: {message}")]
    Decode {
        index: u64,
        start: usize,
        end: usize,
        message: String,
    },
}

impl From<io::Error> for ShowError {
    fn from(e: io::Error) -> ShowError {
        ShowError::Io(e)
    }
}

/// Writes example `index`: a header line (position, source, origin, sizes), then its tokens
/// with `⟦doc⟧` before every inner document start and a rule line where the prefix ends.
pub fn write_example(
    out: &mut dyn Write,
    index: u64,
    example: &Example<'_>,
    view: &TokenView<'_>,
) -> Result<(), ShowError> {
    let len = example.tokens.len();
    let prefix = (example.prefix_len as usize).min(len);
    writeln!(
        out,
        "═══ example {index} │ shard {} row {} │ source {} │ origin {} │ {len} tokens, prefix {prefix}, target {} ═══",
        example.shard,
        example.row,
        example.source,
        example.origin.unwrap_or("-"),
        len - prefix,
    )?;
    // Cut the example at every mark and at its end, in order, and render each piece on its own.
    let mut cuts: Vec<usize> = example
        .doc_starts
        .iter()
        .map(|&p| p as usize)
        .filter(|&p| p < len)
        .chain([prefix, len])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut at = 0usize;
    let mut line_open = false;
    for cut in cuts {
        if cut > at {
            write_piece(out, index, example, at, cut, view)?;
            line_open = true;
        }
        if cut == prefix {
            if line_open {
                writeln!(out)?;
            }
            writeln!(out, "──── prefix ends ({prefix} tokens) ────")?;
            line_open = false;
        }
        if cut < len && example.doc_starts.contains(&(cut as u32)) {
            write!(out, "{DOC_MARK}")?;
            line_open = true;
        }
        at = at.max(cut);
    }
    if line_open {
        writeln!(out)?;
    }
    writeln!(out)?;
    Ok(())
}

/// Renders tokens `start..end` of `example`.
fn write_piece(
    out: &mut dyn Write,
    index: u64,
    example: &Example<'_>,
    start: usize,
    end: usize,
    view: &TokenView<'_>,
) -> Result<(), ShowError> {
    let ids: Vec<u32> = match example.tokens.slice(start, end) {
        Some(slice) => slice.to_vec(),
        None => Vec::new(),
    };
    match view {
        TokenView::Ids => {
            let text: Vec<String> = ids.iter().map(u32::to_string).collect();
            write!(out, "{} ", text.join(" "))?;
        }
        TokenView::Text(tokenizer) => {
            let text = tokenizer
                .decode(&ids, false)
                .map_err(|e| ShowError::Decode {
                    index,
                    start,
                    end,
                    message: e.to_string(),
                })?;
            write!(out, "{text}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Result<ExampleRange, String> {
        text.parse()
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(
            range("7"),
            Ok(ExampleRange {
                start: 7,
                end: Some(8)
            })
        );
        assert_eq!(
            range("10..13"),
            Ok(ExampleRange {
                start: 10,
                end: Some(13)
            })
        );
        assert_eq!(
            range("10..=12"),
            Ok(ExampleRange {
                start: 10,
                end: Some(13)
            })
        );
        assert_eq!(
            range("10.."),
            Ok(ExampleRange {
                start: 10,
                end: None
            })
        );
        assert_eq!(
            range("..5"),
            Ok(ExampleRange {
                start: 0,
                end: Some(5)
            })
        );
        assert!(range("5..5").unwrap_err().contains("empty"));
        assert!(range("x").unwrap_err().contains("not an example index"));
        assert!(range("1..y").is_err());
    }

    #[test]
    fn ranges_resolve_against_the_corpus() {
        let r = range("3..100").unwrap();
        assert_eq!(r.resolve(10), Ok(3..10));
        assert_eq!(range("4..").unwrap().resolve(6), Ok(4..6));
        assert!(range("10")
            .unwrap()
            .resolve(10)
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn marks_prefix_and_documents_in_raw_mode() {
        let tokens = [10u16, 11, 12, 13, 14, 15];
        let example = Example {
            tokens: redpack_schemas::TokenSlice::U16(&tokens),
            prefix_len: 3,
            source: "arxiv",
            doc_starts: &[2, 3, 5],
            origin: Some("a.jsonl:4"),
            shard: 0,
            row: 1,
        };
        let mut out = Vec::new();
        write_example(&mut out, 1, &example, &TokenView::Ids).unwrap();
        let text = String::from_utf8(out).unwrap();
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "10 11 ⟦doc⟧12 ",
                "──── prefix ends (3 tokens) ────",
                "⟦doc⟧13 14 ⟦doc⟧15 ",
                ""
            ]
        );
        assert!(text.starts_with("═══ example 1 │ shard 0 row 1 │ source arxiv │ origin a.jsonl:4"));
    }

    #[test]
    fn a_prefix_at_either_end_is_marked_once() {
        let tokens = [1u32, 2];
        for (prefix_len, want) in [
            (0, vec!["──── prefix ends (0 tokens) ────", "1 2 ", ""]),
            (2, vec!["1 2 ", "──── prefix ends (2 tokens) ────", ""]),
        ] {
            let example = Example {
                tokens: redpack_schemas::TokenSlice::U32(&tokens),
                prefix_len,
                source: "flan",
                doc_starts: &[],
                origin: None,
                shard: 0,
                row: 0,
            };
            let mut out = Vec::new();
            write_example(&mut out, 0, &example, &TokenView::Ids).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("origin - │ 2 tokens"), "{text}");
            assert_eq!(text.lines().skip(1).collect::<Vec<_>>(), want);
        }
    }
}
