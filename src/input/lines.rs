//! Splits a (decompressed) byte stream into lines with a memory cap.
//!
//! `BufRead::read_until` would grow its buffer until the next newline, so one corrupt or
//! newline-free file could take all memory. This reader keeps at most `max_line` bytes of a line;
//! past that it only counts bytes until the newline and reports the line as too long. A read
//! error (truncated zstd frame, corrupt gzip member) ends the stream; the bytes of the line that
//! were cut off are handed back so the caller can reject them.

use std::io::{self, BufRead};

/// What the next call to [`LineReader::next_line`] found.
pub enum LineEvent<'a> {
    /// A complete line, without its `\n` (a final line without newline counts as complete).
    Line(&'a [u8]),
    /// A line longer than the cap: its total length and first bytes.
    TooLong { len: u64, head: &'a [u8] },
    /// The stream failed in the middle of a line: the bytes read of it (at most the cap).
    Cut { partial: &'a [u8], error: io::Error },
    /// The stream failed at a line boundary: nothing of the next line was read.
    Failed(io::Error),
}

/// Bytes kept of a line that is over the cap, for the reject snippet.
const HEAD_KEPT: usize = 256;

pub struct LineReader<R> {
    reader: R,
    buf: Vec<u8>,
    max_line: usize,
    /// 1-based number of the line last returned.
    line_no: u64,
    /// Decompressed bytes consumed, newlines included.
    consumed: u64,
    done: bool,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(reader: R, max_line: usize) -> Self {
        LineReader {
            reader,
            buf: Vec::new(),
            max_line,
            line_no: 0,
            consumed: 0,
            done: false,
        }
    }

    /// Number of the line last returned (1-based; 0 before the first).
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// Decompressed bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Reads the next line. Returns `None` at the end of the stream and after a failure.
    pub fn next_line(&mut self) -> Option<LineEvent<'_>> {
        if self.done {
            return None;
        }
        self.buf.clear();
        // Total length of the current line, which exceeds `buf.len()` once over the cap.
        let mut len: u64 = 0;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.done = true;
                    if len == 0 {
                        return Some(LineEvent::Failed(error));
                    }
                    self.line_no += 1;
                    return Some(LineEvent::Cut {
                        partial: &self.buf,
                        error,
                    });
                }
            };
            if available.is_empty() {
                self.done = true;
                if len == 0 {
                    return None;
                }
                return Some(self.finish_line(len));
            }
            let (chunk, found_newline) = match memchr::memchr(b'\n', available) {
                Some(at) => (&available[..at], true),
                None => (available, false),
            };
            let room = (self.max_line + 1).saturating_sub(self.buf.len());
            let keep = chunk.len().min(room);
            self.buf.extend_from_slice(&chunk[..keep]);
            len += chunk.len() as u64;
            let used = chunk.len() + usize::from(found_newline);
            self.reader.consume(used);
            self.consumed += used as u64;
            if found_newline {
                return Some(self.finish_line(len));
            }
        }
    }

    fn finish_line(&mut self, len: u64) -> LineEvent<'_> {
        self.line_no += 1;
        if len > self.max_line as u64 {
            self.buf.truncate(HEAD_KEPT);
            LineEvent::TooLong {
                len,
                head: &self.buf,
            }
        } else {
            LineEvent::Line(&self.buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(data: &[u8], cap: usize) -> Vec<String> {
        let mut reader = LineReader::new(io::BufReader::with_capacity(4, data), cap);
        let mut out = Vec::new();
        while let Some(event) = reader.next_line() {
            out.push(match event {
                LineEvent::Line(l) => format!("line:{}", String::from_utf8_lossy(l)),
                LineEvent::TooLong { len, head } => {
                    format!("long:{len}:{}", String::from_utf8_lossy(head))
                }
                LineEvent::Cut { partial, .. } => {
                    format!("cut:{}", String::from_utf8_lossy(partial))
                }
                LineEvent::Failed(_) => "failed".to_owned(),
            });
        }
        out
    }

    #[test]
    fn splits_lines_and_keeps_last_line_without_newline() {
        assert_eq!(
            collect(b"a\nbb\n\nccc", 100),
            ["line:a", "line:bb", "line:", "line:ccc"]
        );
        assert_eq!(collect(b"a\n", 100), ["line:a"]);
        assert!(collect(b"", 100).is_empty());
    }

    #[test]
    fn over_cap_line_is_reported_with_its_length_and_neighbours_survive() {
        let out = collect(b"ok\n0123456789abcdef\nfine\n", 8);
        assert_eq!(out, ["line:ok", "long:16:012345678", "line:fine"]);
        // Exactly at the cap is fine.
        assert_eq!(collect(b"12345678\n", 8), ["line:12345678"]);
    }

    struct FailAfter<'a>(&'a [u8]);
    impl io::Read for FailAfter<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut"));
            }
            let n = out.len().min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn read_error_mid_line_hands_back_the_partial_line() {
        let reader = io::BufReader::with_capacity(3, FailAfter(b"one\ntw"));
        let mut lines = LineReader::new(reader, 100);
        assert!(matches!(lines.next_line(), Some(LineEvent::Line(b"one"))));
        assert!(matches!(
            lines.next_line(),
            Some(LineEvent::Cut { partial: b"tw", .. })
        ));
        assert_eq!(lines.line_no(), 2);
        assert!(lines.next_line().is_none());

        let reader = io::BufReader::new(FailAfter(b"one\n"));
        let mut lines = LineReader::new(reader, 100);
        assert!(matches!(lines.next_line(), Some(LineEvent::Line(b"one"))));
        assert!(matches!(lines.next_line(), Some(LineEvent::Failed(_))));
    }
}
