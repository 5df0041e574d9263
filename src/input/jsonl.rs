//! Streams a JSONL file (plain, zstd or gzip) as items: one per non-blank line, in order.
//!
//! The decompressor sits between a byte-counting file reader (for progress in compressed bytes)
//! and the bounded [`LineReader`]. A decompression error ends the file: the cut-off line becomes
//! a `TruncatedFile` reject and the error becomes the stream's [`FileFault`]; every line before
//! it has already been yielded.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Mutex;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use xxhash_rust::xxh3::Xxh3Default;

use super::fields::{self, FieldValue, LineError};
use super::lines::{LineEvent, LineReader};
use super::{flan, redpajama, snippet, Compression, FieldMap, InputError, InputFile};
use crate::record::{Content, FileFault, Item, Place, Record, Reject, RejectReason};

/// Read buffer between the decompressor and the line splitter.
const BUFFER_BYTES: usize = 256 << 10;

/// Which fields a line must have and how they make a record.
enum Layout {
    RedPajama {
        text: String,
    },
    Flan {
        input: String,
        target: String,
        tasks: Vec<String>,
    },
}

impl Layout {
    fn wanted(&self) -> Vec<&str> {
        match self {
            Layout::RedPajama { text } => vec![text.as_str()],
            Layout::Flan {
                input,
                target,
                tasks,
            } => {
                let mut names = vec![input.as_str(), target.as_str()];
                names.extend(tasks.iter().map(String::as_str));
                names
            }
        }
    }

    fn content(&self, values: Vec<FieldValue>) -> Result<Content, (RejectReason, String)> {
        match self {
            Layout::RedPajama { text } => redpajama::content(values, text),
            Layout::Flan { input, target, .. } => flan::content(values, input, target),
        }
    }
}

/// A JSONL file being read; see the module docs.
pub struct JsonlStream {
    lines: LineReader<Box<dyn BufRead + Send>>,
    context: LineContext,
    compressed: Arc<AtomicU64>,
    /// xxh3-128 state over the raw file bytes read so far (on disk, before decompression).
    raw_hash: Arc<Mutex<Xxh3Default>>,
    items: u64,
    fault: Option<FileFault>,
}

/// What turning a line into an item needs, kept apart from the line reader so a line can be
/// parsed while the reader's buffer is borrowed (no copy per line).
struct LineContext {
    layout: Layout,
    file: Arc<str>,
    source: Arc<str>,
    max_line: usize,
    compression: Compression,
}

impl JsonlStream {
    /// Opens a JSONL file of either layout, with lines capped at `max_line` bytes.
    pub fn open(
        file: &InputFile,
        compression: Compression,
        flan: bool,
        fields: &FieldMap,
        max_line: usize,
    ) -> Result<Self, InputError> {
        let layout = if flan {
            Layout::Flan {
                input: fields.input.clone(),
                target: fields.target.clone(),
                tasks: fields
                    .task_candidates()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            }
        } else {
            Layout::RedPajama {
                text: fields.text.clone(),
            }
        };
        let io_error = |source| InputError::Io {
            path: file.path.clone(),
            source,
        };
        let handle = File::open(&file.path).map_err(io_error)?;
        let compressed = Arc::new(AtomicU64::new(0));
        let raw_hash = Arc::new(Mutex::new(Xxh3Default::new()));
        let counted = CountingReader {
            inner: handle,
            count: Arc::clone(&compressed),
            hash: Arc::clone(&raw_hash),
        };
        let decoded: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(counted),
            Compression::Zstd => {
                let buffered = BufReader::with_capacity(BUFFER_BYTES, counted);
                Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(io_error)?)
            }
            Compression::Gzip => {
                let buffered = BufReader::with_capacity(BUFFER_BYTES, counted);
                Box::new(flate2::read::MultiGzDecoder::new(buffered))
            }
        };
        let reader: Box<dyn BufRead + Send> =
            Box::new(BufReader::with_capacity(BUFFER_BYTES, decoded));
        Ok(JsonlStream {
            lines: LineReader::new(reader, max_line),
            context: LineContext {
                layout,
                file: Arc::clone(&file.display),
                source: Arc::clone(&file.source),
                max_line,
                compression,
            },
            compressed,
            raw_hash,
            items: 0,
            fault: None,
        })
    }

    pub fn fault(&self) -> Option<&FileFault> {
        self.fault.as_ref()
    }

    pub fn bytes_read(&self) -> u64 {
        self.compressed.load(Ordering::Relaxed)
    }

    /// The file's first `n` raw bytes (those read so far) and their xxh3-128 state, so a caller
    /// can finish a whole-file checksum without reading the file again.
    pub fn raw_hash(&self) -> (u64, Xxh3Default) {
        let hash = match self.raw_hash.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        (self.bytes_read(), hash)
    }

    pub fn items(&self) -> u64 {
        self.items
    }
}

impl LineContext {
    fn place(&self, line: u64) -> Place {
        Place {
            file: Arc::clone(&self.file),
            line,
        }
    }

    fn reject(&self, line: u64, reason: RejectReason, detail: String, bytes: &[u8]) -> Item {
        Item::Reject(Reject {
            source: Arc::clone(&self.source),
            place: self.place(line),
            reason,
            detail,
            snippet: snippet(bytes),
        })
    }

    /// Turns one complete line into an item.
    fn parse(&self, line_no: u64, bytes: &[u8]) -> Item {
        // Some exporters (Windows tools, Excel) start the file with a UTF-8 byte-order mark.
        let bytes = match (line_no, bytes.strip_prefix(b"\xEF\xBB\xBF")) {
            (1, Some(rest)) => rest,
            _ => bytes,
        };
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => {
                let detail = format!("invalid UTF-8 at byte {}", err.valid_up_to());
                return self.reject(line_no, RejectReason::InvalidUtf8, detail, bytes);
            }
        };
        let wanted = self.layout.wanted();
        let values = match fields::extract(text, &wanted) {
            Ok(values) => values,
            Err(LineError::Json(err)) => {
                let detail = format!("invalid JSON: {err}");
                return self.reject(line_no, RejectReason::InvalidJson, detail, bytes);
            }
            Err(LineError::NotAnObject(kind)) => {
                let detail = format!("expected a JSON object, found {kind}");
                return self.reject(line_no, RejectReason::NotAnObject, detail, bytes);
            }
        };
        match self.layout.content(values) {
            Ok(content) => Item::Record(Record {
                source: Arc::clone(&self.source),
                place: self.place(line_no),
                content,
            }),
            Err((reason, detail)) => self.reject(line_no, reason, detail, bytes),
        }
    }
}

impl Iterator for JsonlStream {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.fault.is_some() {
            return None;
        }
        let context = &self.context;
        let item = loop {
            let line_no = self.lines.line_no() + 1;
            match self.lines.next_line()? {
                LineEvent::Line(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
                LineEvent::Line(bytes) => break context.parse(line_no, bytes),
                LineEvent::TooLong { len, head } => {
                    let detail = format!(
                        "line of {len} bytes exceeds the {} byte cap",
                        context.max_line
                    );
                    break context.reject(line_no, RejectReason::LineTooLong, detail, head);
                }
                LineEvent::Cut { partial, error } => {
                    let detail = format!("line cut off by a truncated or corrupt stream: {error}");
                    let item =
                        context.reject(line_no, RejectReason::TruncatedFile, detail, partial);
                    self.fault = Some(fault(context, self.items, self.lines.consumed(), &error));
                    break item;
                }
                LineEvent::Failed(error) => {
                    let fault = fault(context, self.items, self.lines.consumed(), &error);
                    let detail = format!("the rest of the file is unreadable: {}", fault.message);
                    self.fault = Some(fault);
                    break context.reject(line_no, RejectReason::UnreadableFile, detail, &[]);
                }
            }
        };
        self.items += 1;
        Some(item)
    }
}

fn fault(context: &LineContext, items: u64, consumed: u64, error: &io::Error) -> FileFault {
    FileFault {
        file: Arc::clone(&context.file),
        records_before: items,
        bytes_before: consumed,
        message: match context.compression {
            Compression::None => format!("read error: {error}"),
            Compression::Zstd => format!("truncated or corrupt zstd stream: {error}"),
            Compression::Gzip => format!("truncated or corrupt gzip stream: {error}"),
        },
    }
}

/// Counts and hashes the bytes read from the file, shared with the stream for `bytes_read` and
/// `raw_hash`.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
    hash: Arc<Mutex<Xxh3Default>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut hash) = self.hash.lock() {
            hash.update(&buf[..n]);
        }
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
