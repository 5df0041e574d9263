//! Stage `scan`, one unit per input file: read it once, count every rejected and filtered
//! record, and compute the dedup keys of the rest (exact fingerprint, MinHash band keys) in
//! parallel. The keys go to external sorters and end up in two partitioned files, so that the
//! dedup stage can merge one key partition of every file at a time.
//!
//! A record's document id is `file << 40 | item` where `item` counts every line or row of the
//! file, rejects included: ids follow input order across the whole build, so "the earliest
//! document survives" means the same thing in one process and on many machines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use redpack_schemas::InputEntry;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use super::config::{BuildSettings, FilterConfig};
use super::keys::{write_partitioned, BandRec, FpRecord};
use super::reader::{self, RawHash, ReadProgress, ReaderMessage};
use super::rejects::{RejectSample, RejectSampler};
use super::tally::{Outcome, Tally};
use super::types::BuildError;
use super::work::{doc_id, write_json, Plan, PlannedFile, SourceCounts, Stage, WorkDir, ITEM_BITS};
use crate::dedup::lsh::band_keys;
use crate::dedup::Deduper;
use crate::extsort::Sorter;
use crate::record::{Content, Item};

/// What the scan of one file found; its presence marks the unit done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanMeta {
    pub file: usize,
    /// xxh3-128 of the file's bytes, checked again when the file is reread.
    pub checksum: String,
    /// Lines or rows read (records and rejects).
    pub items: u64,
    /// Records that reached dedup (neither rejected nor filtered).
    pub candidates: u64,
    /// Text bytes of every record read.
    pub text_bytes: u64,
    pub entry: InputEntry,
    /// Per source: records read, filtered, rejected (by reason).
    pub sources: SourceCounts,
    /// The first rejects of each reason in this file.
    pub rejects: Vec<RejectSample>,
    pub fp_records: u64,
    pub band_records: u64,
    /// Bytes of the two key files.
    pub key_bytes: u64,
}

/// True when the record is too short to keep.
pub fn is_filtered(content: &Content, filter: &FilterConfig) -> bool {
    let short = |text: &str| text.trim().chars().take(filter.min_chars).count() < filter.min_chars;
    let words = |text: &str| text.split_whitespace().take(filter.min_words).count();
    match content {
        Content::Text(text) => short(text) || words(text) < filter.min_words,
        Content::Pair { input, target, .. } => {
            short(input) || short(target) || words(input) + words(target) < filter.min_words
        }
    }
}

/// xxh3-128 of a file's bytes, as lowercase hex. `raw` is what the reader already hashed (its
/// first bytes); only the rest is read (all of it for Parquet, which is not read in order).
pub fn file_checksum(path: &std::path::Path, raw: Option<RawHash>) -> Result<String, BuildError> {
    use std::io::{Read, Seek, SeekFrom};
    let (start, mut hasher) = match raw {
        Some(RawHash { bytes, state }) => (bytes, state),
        None => (0, Xxh3Default::new()),
    };
    let mut file = std::fs::File::open(path).map_err(|e| BuildError::io(path, e))?;
    file.seek(SeekFrom::Start(start))
        .map_err(|e| BuildError::io(path, e))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| BuildError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// Appends one row of a signature file: the item (u64) and the signature's lanes (u32 each),
/// little-endian. Rows are in item order, so a reader finds an item by binary search.
fn write_signature(out: &mut impl std::io::Write, item: u64, lanes: &[u32]) -> std::io::Result<()> {
    out.write_all(&item.to_le_bytes())?;
    for lane in lanes {
        out.write_all(&lane.to_le_bytes())?;
    }
    Ok(())
}

/// Shared context of the scan and tokenize units.
pub struct UnitContext<'a> {
    pub settings: &'a BuildSettings,
    pub plan: &'a Plan,
    pub work: &'a WorkDir,
    pub pool: &'a rayon::ThreadPool,
    /// Input bytes consumed by this stage so far, for progress.
    pub bytes: &'a AtomicU64,
    /// Records handled by this stage so far, for progress.
    pub records: &'a AtomicU64,
    /// Bytes of memory the stage's sorters may hold.
    pub sort_budget: usize,
}

/// Streams one input file's items, chunk by chunk, to `each_chunk` on this thread while a reader
/// thread parses ahead, and adds the file's progress to the context's counters. Returns the
/// file's manifest entry (records read, fault) and its xxh3-128 checksum.
pub fn for_each_chunk(
    ctx: &UnitContext<'_>,
    planned: &PlannedFile,
    mut each_chunk: impl FnMut(Vec<Item>) -> Result<(), BuildError>,
) -> Result<(InputEntry, String), BuildError> {
    let fields = ctx.settings.input.fields.field_map();
    let progress = Arc::new(ReadProgress::default());
    let files = [planned.input_file()];
    let mut reported = 0u64;
    let mut entry = None;
    let mut raw = None;
    std::thread::scope(|scope| {
        let receiver = reader::spawn(scope, &files, &fields, &progress);
        let result = (|| -> Result<(), BuildError> {
            for message in receiver.iter() {
                match message {
                    ReaderMessage::Items(items) => {
                        let count = items.len() as u64;
                        each_chunk(items)?;
                        ctx.records.fetch_add(count, Ordering::Relaxed);
                        let now = progress.bytes.load(Ordering::Relaxed);
                        ctx.bytes
                            .fetch_add(now.saturating_sub(reported), Ordering::Relaxed);
                        reported = reported.max(now);
                    }
                    ReaderMessage::FileDone(done, hashed) => {
                        entry = Some(done);
                        raw = hashed.map(|boxed| *boxed);
                    }
                }
            }
            Ok(())
        })();
        // Stop the reader early on failure; dropping the receiver unblocks it.
        progress.cancel.store(true, Ordering::Relaxed);
        drop(receiver);
        result
    })?;
    ctx.bytes
        .fetch_add(planned.size.saturating_sub(reported), Ordering::Relaxed);
    let entry = entry.ok_or_else(|| BuildError::Work {
        path: planned.path.clone(),
        message: "internal error: the reader ended without finishing the file".into(),
    })?;
    Ok((entry, file_checksum(&planned.path, raw)?))
}

/// Scans input file `index` and writes its unit outputs.
pub fn scan_file(ctx: &UnitContext<'_>, index: usize) -> Result<ScanMeta, BuildError> {
    let planned = ctx.plan.files.get(index).ok_or_else(|| BuildError::Work {
        path: ctx.work.plan(),
        message: format!("no input file #{index} in the plan"),
    })?;
    planned.check_unchanged()?;
    let settings = ctx.settings;
    let deduper = Deduper::new(settings.dedup);
    let rows = settings.dedup.minhash.rows;
    let spill = ctx.work.spill(Stage::Scan, index);
    // Band records are about 7x the fingerprint records: split the budget that way.
    let mut fps = Sorter::<FpRecord>::new(&spill, "fp", ctx.sort_budget / 8);
    let mut bands = Sorter::<BandRec>::new(&spill, "band", ctx.sort_budget / 8 * 7);
    let verify = settings.dedup.near && settings.dedup.minhash.verify_threshold.is_some();
    let sig_path = ctx.work.scan_sig(index);
    let sig_tmp = redpack_schemas::atomic::temp_path(&sig_path);
    let mut sigs = if verify {
        let file = std::fs::File::create(&sig_tmp).map_err(|e| BuildError::io(&sig_tmp, e))?;
        Some(std::io::BufWriter::with_capacity(1 << 20, file))
    } else {
        None
    };
    let mut tally = Tally::new();
    let mut rejects = RejectSampler::new(settings.output.rejects_per_reason);
    let mut item: u64 = 0;
    let mut candidates = 0u64;
    let mut text_bytes = 0u64;
    let (entry, checksum) = for_each_chunk(ctx, planned, |items| {
        let mut chunk: Vec<(u64, Content)> = Vec::with_capacity(items.len());
        for it in items {
            let position = item;
            item += 1;
            match it {
                Item::Reject(reject) => {
                    tally.record(&reject.source, Outcome::Rejected(reject.reason));
                    rejects.offer(&reject);
                }
                Item::Record(record) => {
                    text_bytes += record.content.len_bytes() as u64;
                    if is_filtered(&record.content, &settings.filter) {
                        tally.record(&record.source, Outcome::Filtered);
                    } else {
                        // Counted as kept for now; the tokenize stage moves the
                        // duplicates (`candidates` is the total to check against).
                        tally.record(&record.source, Outcome::Kept);
                        chunk.push((position, record.content));
                    }
                }
            }
        }
        if item >= 1 << ITEM_BITS {
            return Err(BuildError::Work {
                path: planned.path.clone(),
                message: format!("more than 2^{ITEM_BITS} lines in one file"),
            });
        }
        candidates += chunk.len() as u64;
        if settings.dedup.exact || settings.dedup.near {
            let keys: Vec<_> = ctx.pool.install(|| {
                chunk
                    .par_iter()
                    .map_init(String::new, |scratch, (_, content)| {
                        deduper.keys(content, scratch)
                    })
                    .collect()
            });
            for ((position, _), keys) in chunk.iter().zip(keys) {
                let doc = doc_id(index, *position);
                if let Some(fp) = keys.fingerprint {
                    fps.push(FpRecord { fp: fp.0, doc })?;
                }
                if let Some(signature) = &keys.signature {
                    for (band, key) in band_keys(signature, rows) {
                        bands.push(BandRec { band, key, doc })?;
                    }
                    if let Some(out) = sigs.as_mut() {
                        write_signature(out, *position, &signature.0)
                            .map_err(|e| BuildError::io(&sig_tmp, e))?;
                    }
                }
            }
        }
        Ok(())
    })?;
    let parts = ctx.plan.partitions;
    let fp_records = write_partitioned(
        &ctx.work.scan_fp(index),
        fps.finish()?,
        parts,
        |r| r.partition(parts),
        false,
    )?;
    let band_records = write_partitioned(
        &ctx.work.scan_band(index),
        bands.finish()?,
        parts,
        |r| r.partition(parts),
        false,
    )?;
    if let Some(out) = sigs {
        let file = out
            .into_inner()
            .map_err(|e| BuildError::io(&sig_tmp, e.into_error()))?;
        file.sync_all().map_err(|e| BuildError::io(&sig_tmp, e))?;
        redpack_schemas::atomic::commit(&sig_tmp, &sig_path)?;
    }
    let _ = std::fs::remove_dir_all(&spill);
    planned.check_unchanged()?;
    let key_bytes = [ctx.work.scan_fp(index), ctx.work.scan_band(index)]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let sources = tally.into_counts();
    let meta = ScanMeta {
        file: index,
        checksum,
        items: item,
        candidates,
        text_bytes,
        entry,
        sources,
        rejects: rejects.samples(),
        fp_records,
        band_records,
        key_bytes,
    };
    write_json(&ctx.work.scan_meta(index), &meta)?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_continued_from_the_readers_state_equals_a_whole_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let whole = file_checksum(&path, None).unwrap();
        for split in [0usize, 1, 1 << 20, bytes.len() - 1, bytes.len()] {
            let mut state = Xxh3Default::new();
            state.update(&bytes[..split]);
            let raw = RawHash {
                bytes: split as u64,
                state,
            };
            assert_eq!(
                file_checksum(&path, Some(raw)).unwrap(),
                whole,
                "split {split}"
            );
        }
        std::fs::write(&path, [&bytes[..10], b"x", &bytes[11..]].concat()).unwrap();
        assert_ne!(file_checksum(&path, None).unwrap(), whole);
    }
}
