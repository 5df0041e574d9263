//! Tells a file's format: its compression (from magic bytes, else the extension) and whether it
//! holds RedPajama documents or FLAN examples.
//!
//! The layout is decided, in order, by the `--format` hint, by Parquet (always FLAN), by the path
//! (a RedPajama subset folder or file name, a FLAN submix name; see
//! [`classify_path`](super::names::classify_path)), and last by the keys of the first records:
//! `text` means RedPajama, `inputs` or `source`+`target` means FLAN. Magic bytes win over the
//! extension because mirrors rename files (`.jsonl` that is really zstd) more often than they
//! corrupt the first four bytes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::fields::{self, FieldValue};
use super::lines::{LineEvent, LineReader};
use super::names::{classify_path, Family};
use super::{Compression, FormatHint, InputError, InputFormat};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";

/// Lines looked at, and the longest line parsed, when sniffing keys.
const SNIFF_LINES: usize = 32;
const SNIFF_LINE_BYTES: usize = 8 << 20;

/// Container kind before the layout is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Jsonl(Compression),
    Parquet,
}

/// Decides the format of one file.
pub fn detect_format(path: &Path, hint: FormatHint) -> Result<InputFormat, InputError> {
    let container = container(path)?;
    let compression = match container {
        Container::Parquet => {
            return match hint {
                FormatHint::RedPajama => Err(InputError::ParquetNotRedPajama {
                    path: path.to_owned(),
                }),
                _ => Ok(InputFormat::FlanParquet),
            }
        }
        Container::Jsonl(compression) => compression,
    };
    let flan = match hint {
        FormatHint::RedPajama => false,
        FormatHint::Flan => true,
        FormatHint::Auto => match classify_path(path).map(|(_, family)| family) {
            Some(Family::RedPajama) => false,
            Some(Family::Flan) => true,
            None => sniff_is_flan(path, compression)?,
        },
    };
    Ok(if flan {
        InputFormat::FlanJsonl(compression)
    } else {
        InputFormat::RedPajamaJsonl(compression)
    })
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InputError + '_ {
    move |source| InputError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Compression from the first bytes, falling back to the extension for short files.
fn container(path: &Path) -> Result<Container, InputError> {
    let mut head = [0u8; 4];
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(io_error(path))? {
            0 => break,
            n => filled += n,
        }
    }
    let head = &head[..filled];
    if head.starts_with(&ZSTD_MAGIC) {
        return Ok(Container::Jsonl(Compression::Zstd));
    }
    if head.starts_with(&GZIP_MAGIC) {
        return Ok(Container::Jsonl(Compression::Gzip));
    }
    if head.starts_with(PARQUET_MAGIC) {
        return Ok(Container::Parquet);
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    Ok(match extension {
        "parquet" => Container::Parquet,
        "zst" | "zstd" => Container::Jsonl(Compression::Zstd),
        "gz" => Container::Jsonl(Compression::Gzip),
        _ => Container::Jsonl(Compression::None),
    })
}

/// Looks at the keys of the first records. A file with no parseable object (empty, or only
/// malformed lines) counts as RedPajama: every line will be rejected either way.
fn sniff_is_flan(path: &Path, compression: Compression) -> Result<bool, InputError> {
    let file = File::open(path).map_err(io_error(path))?;
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(io_error(path))?)
        }
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
    };
    let mut lines = LineReader::new(BufReader::new(decoded), SNIFF_LINE_BYTES);
    let mut saw_object = false;
    for _ in 0..SNIFF_LINES {
        let line = match lines.next_line() {
            Some(LineEvent::Line(line)) => line,
            Some(LineEvent::TooLong { .. }) => continue,
            _ => break,
        };
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let Ok(values) = fields::extract(text, &["text", "inputs", "source", "target"]) else {
            continue;
        };
        saw_object = true;
        let has = |i: usize| !matches!(values[i], FieldValue::Absent);
        if has(0) {
            return Ok(false);
        }
        if has(1) || (has(2) && has(3)) {
            return Ok(true);
        }
    }
    if saw_object {
        return Err(InputError::UnknownFormat {
            path: path.to_owned(),
            why: "its first records have no `text`, `inputs` or `source`+`target` field".to_owned(),
        });
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    #[test]
    fn magic_bytes_win_over_extension_and_keys_decide_layout() {
        let dir = tempfile::tempdir().unwrap();
        let flan = zstd::encode_all(&b"{\"inputs\": \"q\", \"targets\": \"a\"}\n"[..], 3).unwrap();
        let path = write(dir.path(), "data.jsonl", &flan);
        assert_eq!(
            detect_format(&path, FormatHint::Auto).unwrap(),
            InputFormat::FlanJsonl(Compression::Zstd)
        );
        let path = write(
            dir.path(),
            "docs.jsonl",
            b"not json\n{\"text\": \"t\", \"meta\": \"{}\"}\n",
        );
        assert_eq!(
            detect_format(&path, FormatHint::Auto).unwrap(),
            InputFormat::RedPajamaJsonl(Compression::None)
        );
        let path = write(
            dir.path(),
            "pairs.jsonl",
            b"{\"source\": \"s\", \"target\": \"t\"}\n",
        );
        assert_eq!(
            detect_format(&path, FormatHint::Auto).unwrap(),
            InputFormat::FlanJsonl(Compression::None)
        );
        assert_eq!(
            detect_format(&path, FormatHint::RedPajama).unwrap(),
            InputFormat::RedPajamaJsonl(Compression::None)
        );
    }

    #[test]
    fn unknown_keys_ask_for_a_format_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "odd.jsonl", b"{\"content\": \"x\"}\n");
        let err = detect_format(&path, FormatHint::Auto)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("odd.jsonl") && err.contains("--format"),
            "{err}"
        );
        assert!(detect_format(&path, FormatHint::Flan).is_ok());
    }
}
