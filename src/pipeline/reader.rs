//! The reading thread: opens the input files in order, parses them, and hands chunks of items
//! to the build through a bounded channel.
//!
//! Parsing (JSON, zstd/gzip, Parquet) runs beside tokenization instead of before it, and the
//! channel bound (a few chunks) keeps memory flat whatever the corpus size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use redpack_schemas::InputEntry;

use crate::input::{self, FieldMap, InputFile};
use crate::record::Item;

/// A chunk is closed once it holds this many content bytes...
pub const CHUNK_BYTES: usize = 1 << 20;
/// ...or this many items.
pub const CHUNK_ITEMS: usize = 4096;
/// Chunks in flight between the reader and the build.
pub const CHANNEL_CHUNKS: usize = 3;

/// What the reader sends, in order.
#[derive(Debug)]
pub enum ReaderMessage {
    Items(Vec<Item>),
    /// A file is done (or could not be opened): its manifest entry, and for JSONL the raw bytes
    /// read and their xxh3-128 state (to finish a checksum without a second pass).
    FileDone(InputEntry, Option<Box<RawHash>>),
}

/// How many raw bytes of a file were hashed, and the hash state.
#[derive(Clone)]
pub struct RawHash {
    pub bytes: u64,
    pub state: xxhash_rust::xxh3::Xxh3Default,
}

impl std::fmt::Debug for RawHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawHash {{ bytes: {} }}", self.bytes)
    }
}

/// Shared progress counters the reader updates.
#[derive(Debug, Default)]
pub struct ReadProgress {
    /// Input bytes consumed (on disk, i.e. compressed where the file is).
    pub bytes: AtomicU64,
    /// Set by the consumer to ask the reader to stop early (build failed).
    pub cancel: AtomicBool,
}

fn input_format_name(file: &InputFile) -> String {
    file.format
        .to_string()
        .replace(" (", "-")
        .replace(')', "")
        .replace(' ', "-")
}

/// Reads `files` in order into `sender`. Returns when every file is read, the consumer hung
/// up, or `progress.cancel` is set.
pub fn read_all(
    files: &[InputFile],
    fields: &FieldMap,
    sender: SyncSender<ReaderMessage>,
    progress: &ReadProgress,
) {
    let mut done_bytes = 0u64;
    for file in files {
        let size = std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
        let mut entry = InputEntry {
            path: file.display.to_string(),
            source: file.source.to_string(),
            format: input_format_name(file),
            bytes: size,
            sha256: file.sha256.as_deref().map(str::to_string),
            records_read: 0,
            fault: None,
        };
        let mut raw = None;
        match input::open(file, fields) {
            Err(err) => {
                let message = format!("{}: could not open: {err}", file.display);
                // The file counts as one rejected record, so it weighs in the rejected fraction.
                let reject = Item::Reject(crate::record::Reject {
                    source: file.source.clone(),
                    place: crate::record::Place {
                        file: file.display.clone(),
                        line: 1,
                    },
                    reason: crate::record::RejectReason::UnreadableFile,
                    detail: message.clone(),
                    snippet: String::new(),
                });
                entry.records_read = 1;
                entry.fault = Some(message);
                if sender.send(ReaderMessage::Items(vec![reject])).is_err() {
                    return;
                }
            }
            Ok(mut stream) => {
                let mut chunk = Vec::new();
                let mut chunk_bytes = 0usize;
                loop {
                    let item = stream.next();
                    let flush = match &item {
                        None => !chunk.is_empty(),
                        Some(_) => chunk.len() >= CHUNK_ITEMS || chunk_bytes >= CHUNK_BYTES,
                    };
                    if flush {
                        progress
                            .bytes
                            .store(done_bytes + stream.bytes_read(), Ordering::Relaxed);
                        let full = std::mem::take(&mut chunk);
                        chunk_bytes = 0;
                        if progress.cancel.load(Ordering::Relaxed)
                            || sender.send(ReaderMessage::Items(full)).is_err()
                        {
                            return;
                        }
                    }
                    let Some(item) = item else { break };
                    chunk_bytes += match &item {
                        Item::Record(record) => record.content.len_bytes(),
                        Item::Reject(reject) => reject.snippet.len(),
                    };
                    chunk.push(item);
                }
                entry.records_read = stream.records();
                raw = stream
                    .raw_hash()
                    .map(|(bytes, state)| Box::new(RawHash { bytes, state }));
                entry.fault = stream.fault().map(|fault| fault.to_string());
            }
        }
        done_bytes += size;
        progress.bytes.store(done_bytes, Ordering::Relaxed);
        if sender.send(ReaderMessage::FileDone(entry, raw)).is_err() {
            return;
        }
    }
}

/// Starts [`read_all`] on a scoped thread and returns the receiving end.
pub fn spawn<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    files: &'env [InputFile],
    fields: &'env FieldMap,
    progress: &'env Arc<ReadProgress>,
) -> Receiver<ReaderMessage> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(CHANNEL_CHUNKS);
    scope.spawn(move || read_all(files, fields, sender, progress));
    receiver
}
