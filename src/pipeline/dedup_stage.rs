//! Stage `dedup`, one unit per key partition: merge partition `p` of every file's sorted keys
//! and apply the dedup rules to whole groups at once.
//!
//! - Exact: within a group of equal fingerprints, every document but the first (smallest id,
//!   i.e. earliest in input order) is an exact duplicate.
//! - Near: within a group of equal `(band, key)`, every document but the first is a near
//!   duplicate, unless it is an exact duplicate already.
//!
//! This equals the streaming rule (`crate::dedup::Deduper`: exact first, then an LSH index of
//! the documents that survived it) because an exact duplicate has the same normalized text, hence
//! the same signature and band keys, as its earlier twin: it never is the first of a band group,
//! so keeping it in the groups changes no group's first document.
//!
//! Output: the duplicate ids as `doc << 1 | near` (exact sorts first for the same document),
//! sorted, partitioned by input file so the tokenize stage reads only its file's range.

use serde::{Deserialize, Serialize};

use super::keys::{partition_range, write_partitioned, BandRec, FpRecord};
use super::types::BuildError;
use super::work::{doc_file, write_json, Plan, Stage, WorkDir};
use crate::dedup::minhash::estimated_jaccard;
use crate::extsort::{merge_ranges, Range, SortRecord, SortedStream, Sorter};

/// What one partition found; its presence marks the unit done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DedupMeta {
    pub partition: usize,
    pub fp_records: u64,
    pub band_records: u64,
    /// Duplicate entries written (a document found in several band groups counts once).
    pub entries: u64,
}

fn ranges(
    plan: &Plan,
    partition: usize,
    path: impl Fn(usize) -> std::path::PathBuf,
) -> Result<Vec<Range>, BuildError> {
    (0..plan.files.len())
        .map(|file| {
            let path = path(file);
            let (start, end) = partition_range(&path, partition)?;
            Ok(Range { path, start, end })
        })
        .collect()
}

/// Calls `group_tail` for every record after the first of each group of `same` records.
fn each_group_tail<R: SortRecord>(
    stream: &mut SortedStream<R>,
    same: impl Fn(&R, &R) -> bool,
    mut group_tail: impl FnMut(&R) -> Result<(), BuildError>,
) -> Result<u64, BuildError> {
    let mut first: Option<R> = None;
    let mut records = 0u64;
    while let Some(record) = stream.next_record()? {
        records += 1;
        match &first {
            Some(head) if same(head, &record) => group_tail(&record)?,
            _ => first = Some(record),
        }
    }
    Ok(records)
}

/// Runs the dedup of one partition and writes its outputs.
pub fn dedup_partition(
    plan: &Plan,
    work: &WorkDir,
    partition: usize,
    budget: usize,
    verify: Option<(f64, usize)>,
) -> Result<DedupMeta, BuildError> {
    let spill = work.spill(Stage::Dedup, partition);
    let buffer =
        (budget / 4 / plan.files.len().clamp(1, crate::extsort::FAN_IN)).clamp(8 << 10, 256 << 10);
    let mut dups = Sorter::<u64>::new(&spill, "dups", budget / 2);

    let fp_ranges = ranges(plan, partition, |f| work.scan_fp(f))?;
    let mut fps = merge_ranges::<FpRecord>(&fp_ranges, &spill, "fp", buffer)?;
    let fp_records = each_group_tail(
        &mut fps,
        |a, b| a.fp == b.fp,
        |r| Ok(dups.push(r.doc << 1)?),
    )?;
    drop(fps);

    let band_ranges = ranges(plan, partition, |f| work.scan_band(f))?;
    let mut bands = merge_ranges::<BandRec>(&band_ranges, &spill, "band", buffer)?;
    let band_records = match verify {
        None => each_group_tail(
            &mut bands,
            |a, b| a.band == b.band && a.key == b.key,
            |r| Ok(dups.push((r.doc << 1) | 1)?),
        )?,
        Some((threshold, lanes)) => {
            let mut signatures = Signatures::new(work, lanes);
            let mut head: Option<(BandRec, Vec<u32>)> = None;
            let mut records = 0u64;
            while let Some(record) = bands.next_record()? {
                records += 1;
                match &head {
                    Some((first, lanes))
                        if first.band == record.band && first.key == record.key =>
                    {
                        let other = signatures.get(record.doc)?;
                        if estimated_jaccard(lanes, &other) >= threshold {
                            dups.push((record.doc << 1) | 1)?;
                        }
                    }
                    _ => head = Some((record, signatures.get(record.doc)?)),
                }
            }
            records
        }
    };
    drop(bands);

    let entries = write_partitioned(
        &work.dedup_dups(partition),
        dups.finish()?,
        plan.files.len(),
        |entry| doc_file(entry >> 1),
        true,
    )?;
    let _ = std::fs::remove_dir_all(&spill);
    let meta = DedupMeta {
        partition,
        fp_records,
        band_records,
        entries,
    };
    write_json(&work.dedup_meta(partition), &meta)?;
    Ok(meta)
}

/// Signatures by document id, read from the scan's signature files (rows of `item u64` and
/// `lanes` u32, in item order) by binary search with positioned reads. At most
/// [`OPEN_SIGNATURE_FILES`] files are open at once.
struct Signatures<'a> {
    work: &'a WorkDir,
    lanes: usize,
    open: Vec<(usize, std::fs::File, u64)>,
}

const OPEN_SIGNATURE_FILES: usize = 64;

impl<'a> Signatures<'a> {
    fn new(work: &'a WorkDir, lanes: usize) -> Self {
        Signatures {
            work,
            lanes,
            open: Vec::new(),
        }
    }

    fn get(&mut self, doc: u64) -> Result<Vec<u32>, BuildError> {
        use std::os::unix::fs::FileExt;
        let (file_index, item) = (doc_file(doc), super::work::doc_item(doc));
        let path = self.work.scan_sig(file_index);
        let row = 8 + 4 * self.lanes as u64;
        let at = match self.open.iter().position(|(i, _, _)| *i == file_index) {
            Some(at) => at,
            None => {
                if self.open.len() >= OPEN_SIGNATURE_FILES {
                    self.open.remove(0);
                }
                let file = std::fs::File::open(&path).map_err(|e| BuildError::io(&path, e))?;
                let len = file.metadata().map_err(|e| BuildError::io(&path, e))?.len();
                self.open.push((file_index, file, len / row));
                self.open.len() - 1
            }
        };
        let (_, file, rows) = &self.open[at];
        let (mut low, mut high) = (0u64, *rows);
        let mut key = [0u8; 8];
        while low < high {
            let mid = low + (high - low) / 2;
            file.read_exact_at(&mut key, mid * row)
                .map_err(|e| BuildError::io(&path, e))?;
            match u64::from_le_bytes(key).cmp(&item) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => {
                    let mut raw = vec![0u8; 4 * self.lanes];
                    file.read_exact_at(&mut raw, mid * row + 8)
                        .map_err(|e| BuildError::io(&path, e))?;
                    return Ok(raw
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect());
                }
            }
        }
        Err(BuildError::Work {
            path,
            message: format!("no signature for item {item}"),
        })
    }
}

/// The verdicts of one file's documents, gathered from every partition: `(item, near)`
/// sorted by item, one per document (exact wins over near).
pub fn file_verdicts(
    plan: &Plan,
    work: &WorkDir,
    file: usize,
) -> Result<Vec<(u64, bool)>, BuildError> {
    let mut entries: Vec<u64> = Vec::new();
    for partition in 0..plan.partitions {
        entries.extend(super::keys::read_partition::<u64>(
            &work.dedup_dups(partition),
            file,
        )?);
    }
    entries.sort_unstable();
    let mut verdicts: Vec<(u64, bool)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let item = super::work::doc_item(entry >> 1);
        let near = entry & 1 == 1;
        match verdicts.last() {
            Some(&(last, _)) if last == item => {}
            _ => verdicts.push((item, near)),
        }
    }
    Ok(verdicts)
}
