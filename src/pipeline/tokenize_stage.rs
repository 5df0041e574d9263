//! Stage `tokenize`, one unit per input file: reread the file, skip what the scan rejected or
//! filtered and what dedup marked, tokenize the kept records in parallel and write them, in
//! input order, to the file's token scratch file.
//!
//! Scratch format (`tokens/NNNNNN.tok`): documents back to back, each a 24-byte header
//! `line u64, source u32, kind u32 (0 text, 1 pair), input_len u32, target_len u32` followed by
//! `input_len + target_len` tokens of the plan's width (u16 or u32, little-endian). The input is
//! checked against the scan's checksum first: a file that changed in between is an error.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};

use redpack_schemas::atomic;
use serde::{Deserialize, Serialize};

use super::dedup_stage::file_verdicts;
use super::scan::{for_each_chunk, is_filtered, ScanMeta, UnitContext};
use super::tally::{Outcome, Tally};
use super::types::BuildError;
use super::work::{read_json, write_json, SourceCounts};
use crate::extsort::read_u32;
use crate::pack::TokenizedContent;
use crate::record::{Content, Item};
use crate::tokenize::DocTokenizer;

/// Bytes of a document header in a token scratch file.
pub const DOC_HEADER: usize = 24;

/// What tokenizing one file produced; its presence marks the unit done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokensMeta {
    pub file: usize,
    /// Kept documents written.
    pub docs: u64,
    /// Tokens written (end-of-document tokens included).
    pub tokens: u64,
    /// Source names; a document's `source` field indexes this list.
    pub source_names: Vec<String>,
    /// Per source: kept, exact and near duplicates.
    pub sources: SourceCounts,
    pub bytes: u64,
}

/// One document read back from a scratch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchDoc {
    pub line: u64,
    pub source: u32,
    pub content: TokenizedContent,
}

/// Decodes the document at byte `offset`; returns it and the offset of the next one.
pub fn decode_doc(bytes: &[u8], offset: usize, width: usize) -> Option<(ScratchDoc, usize)> {
    let header = bytes.get(offset..offset.checked_add(DOC_HEADER)?)?;
    let line = crate::extsort::read_u64(header, 0);
    let source = read_u32(header, 8);
    let kind = read_u32(header, 12);
    let input_len = read_u32(header, 16) as usize;
    let target_len = read_u32(header, 20) as usize;
    let start = offset + DOC_HEADER;
    let end = start.checked_add((input_len + target_len).checked_mul(width)?)?;
    let body = bytes.get(start..end)?;
    let read = |range: &[u8]| -> Vec<u32> {
        match width {
            2 => range
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            _ => range.chunks_exact(4).map(|c| read_u32(c, 0)).collect(),
        }
    };
    let (input, target) = body.split_at(input_len * width);
    let content = match kind {
        0 => TokenizedContent::Text(read(target)),
        1 => TokenizedContent::Pair {
            input: read(input),
            target: read(target),
        },
        _ => return None,
    };
    Some((
        ScratchDoc {
            line,
            source,
            content,
        },
        end,
    ))
}

fn encode_doc(
    out: &mut Vec<u8>,
    line: u64,
    source: u32,
    content: &TokenizedContent,
    width: usize,
) -> Result<(), String> {
    let (kind, input, target): (u32, &[u32], &[u32]) = match content {
        TokenizedContent::Text(ids) => (0, &[], ids),
        TokenizedContent::Pair { input, target } => (1, input, target),
    };
    let len = |ids: &[u32]| u32::try_from(ids.len()).map_err(|_| "document too long".to_string());
    out.extend_from_slice(&line.to_le_bytes());
    out.extend_from_slice(&source.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&len(input)?.to_le_bytes());
    out.extend_from_slice(&len(target)?.to_le_bytes());
    for &id in input.iter().chain(target) {
        if width == 2 {
            let id = u16::try_from(id).map_err(|_| format!("token id {id} does not fit u16"))?;
            out.extend_from_slice(&id.to_le_bytes());
        } else {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    Ok(())
}

/// Encoded chunks queued or waiting to be written, per file being tokenized.
const IN_FLIGHT_CHUNKS: u64 = 4;

/// A chunk's documents encoded in scratch format, or why they could not be.
type EncodedChunk = Result<EncodedBytes, BuildError>;

struct EncodedBytes {
    bytes: Vec<u8>,
    docs: u64,
    tokens: u64,
}

/// Tokenizes the kept records of one chunk (with their source ids) on the current pool and
/// serializes them in order.
fn encode_chunk(
    tokenizer: &DocTokenizer,
    kept: &[(u32, crate::record::Record)],
    width: usize,
    path: &std::path::Path,
) -> EncodedChunk {
    let texts: Vec<&str> = kept
        .iter()
        .flat_map(|(_, record)| match &record.content {
            Content::Text(text) => [Some(text.as_str()), None],
            Content::Pair { input, target, .. } => [Some(input.as_str()), Some(target.as_str())],
        })
        .flatten()
        .collect();
    let mut ids = tokenizer.encode_batch(&texts)?.into_iter();
    let mut out = EncodedBytes {
        bytes: Vec::new(),
        docs: 0,
        tokens: 0,
    };
    for (source, record) in kept {
        let content = match record.content {
            Content::Text(_) => TokenizedContent::Text(ids.next().unwrap_or_default()),
            Content::Pair { .. } => TokenizedContent::Pair {
                input: ids.next().unwrap_or_default(),
                target: ids.next().unwrap_or_default(),
            },
        };
        let before = out.bytes.len();
        encode_doc(&mut out.bytes, record.place.line, *source, &content, width).map_err(
            |message| BuildError::Work {
                path: path.to_path_buf(),
                message: format!("line {}: {message}", record.place.line),
            },
        )?;
        out.docs += 1;
        out.tokens += ((out.bytes.len() - before - DOC_HEADER) / width) as u64;
    }
    Ok(out)
}

/// Tokenizes input file `index` and writes its unit outputs.
pub fn tokenize_file(
    ctx: &UnitContext<'_>,
    tokenizer: &DocTokenizer,
    index: usize,
) -> Result<TokensMeta, BuildError> {
    let work = ctx.work;
    let planned = ctx.plan.files.get(index).ok_or_else(|| BuildError::Work {
        path: work.plan(),
        message: format!("no input file #{index} in the plan"),
    })?;
    let scan: ScanMeta = read_json(&work.scan_meta(index))?;
    planned.check_unchanged()?;
    let verdicts = file_verdicts(ctx.plan, work, index)?;
    let width = ctx.plan.token_width as usize;
    let settings = ctx.settings;

    let path = work.tokens(index);
    let tmp = atomic::temp_path(&path);
    let file = std::fs::File::create(&tmp).map_err(|e| BuildError::io(&tmp, e))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let mut tally = Tally::new();
    let mut source_names: Vec<String> = Vec::new();
    let mut source_ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut verdict_cursor = 0usize;
    let mut item: u64 = 0;
    let mut candidates = 0u64;
    let (mut docs, mut tokens, mut bytes) = (0u64, 0u64, 0u64);
    // Each chunk's kept records are encoded and serialized by a task on the pool while this
    // thread goes on filtering the next chunks; the encoded chunks are written in input order.
    // The pool is never left idle at a chunk's end, whatever the chunk's slowest document.
    let (sender, receiver) = std::sync::mpsc::channel::<(u64, EncodedChunk)>();
    let mut ready: BTreeMap<u64, EncodedChunk> = BTreeMap::new();
    let (mut sent, mut written) = (0u64, 0u64);
    let mut write_ready =
        |ready: &mut BTreeMap<u64, EncodedChunk>, written: &mut u64| -> Result<(), BuildError> {
            while let Some(chunk) = ready.remove(written) {
                let chunk = chunk?;
                writer
                    .write_all(&chunk.bytes)
                    .map_err(|e| BuildError::io(&tmp, e))?;
                docs += chunk.docs;
                tokens += chunk.tokens;
                bytes += chunk.bytes.len() as u64;
                *written += 1;
            }
            Ok(())
        };
    let read = ctx.pool.in_place_scope(|scope| {
        let result = for_each_chunk(ctx, planned, |items| {
            let mut kept = Vec::new();
            for it in items {
                let position = item;
                item += 1;
                let Item::Record(record) = it else { continue };
                if is_filtered(&record.content, &settings.filter) {
                    continue;
                }
                candidates += 1;
                while verdicts.get(verdict_cursor).is_some_and(|v| v.0 < position) {
                    verdict_cursor += 1;
                }
                let outcome = match verdicts.get(verdict_cursor) {
                    Some(&(at, near)) if at == position => {
                        if near {
                            Outcome::NearDuplicate
                        } else {
                            Outcome::ExactDuplicate
                        }
                    }
                    _ => Outcome::Kept,
                };
                tally.record(&record.source, outcome);
                if outcome == Outcome::Kept {
                    let source = match source_ids.get(&*record.source) {
                        Some(&id) => id,
                        None => {
                            let id = source_names.len() as u32;
                            source_names.push(record.source.to_string());
                            source_ids.insert(record.source.to_string(), id);
                            id
                        }
                    };
                    kept.push((source, record));
                }
            }
            let sequence = sent;
            sent += 1;
            let sender = sender.clone();
            let path = &planned.path;
            scope.spawn(move |_| {
                let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    encode_chunk(tokenizer, &kept, width, path)
                }))
                .unwrap_or_else(|_| {
                    Err(BuildError::Work {
                        path: path.clone(),
                        message: "internal error: a tokenizing thread panicked".into(),
                    })
                });
                // The receiver outlives every task of this scope.
                let _ = sender.send((sequence, encoded));
            });
            // Keep a few chunks in flight: enough to feed every thread, few enough to bound
            // the memory held.
            while sent - written > IN_FLIGHT_CHUNKS {
                let (sequence, chunk) = receiver.recv().map_err(|_| BuildError::Work {
                    path: planned.path.clone(),
                    message: "internal error: an encoding task ended without a result".into(),
                })?;
                ready.insert(sequence, chunk);
                write_ready(&mut ready, &mut written)?;
            }
            Ok(())
        });
        // Every task spawned has its result sent before the scope ends; collect them so that
        // a failure here still waits for (and drops) the rest.
        let mut outcome = result.map(|(_, checksum)| checksum);
        while written + (ready.len() as u64) < sent {
            let Ok((sequence, chunk)) = receiver.recv() else {
                break;
            };
            ready.insert(sequence, chunk);
            if outcome.is_ok() {
                if let Err(err) = write_ready(&mut ready, &mut written) {
                    outcome = Err(err);
                }
            }
        }
        if outcome.is_ok() {
            write_ready(&mut ready, &mut written)?;
        }
        outcome
    });
    let checksum = read?;
    if checksum != scan.checksum {
        let _ = std::fs::remove_file(&tmp);
        return Err(BuildError::InputChanged {
            path: planned.path.clone(),
            detail: format!("checksum {} at scan, {checksum} now", scan.checksum),
        });
    }
    if item != scan.items || candidates != scan.candidates {
        return Err(BuildError::InputChanged {
            path: planned.path.clone(),
            detail: format!(
                "the scan read {} records ({} candidates), the reread {item} ({candidates})",
                scan.items, scan.candidates
            ),
        });
    }
    let file = writer
        .into_inner()
        .map_err(|e| BuildError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| BuildError::io(&tmp, e))?;
    drop(file);
    atomic::commit(&tmp, &path)?;
    planned.check_unchanged()?;
    let meta = TokensMeta {
        file: index,
        docs,
        tokens,
        source_names,
        sources: tally.into_counts(),
        bytes,
    };
    write_json(&work.tokens_meta(index), &meta)?;
    Ok(meta)
}
