//! The records the scan stage spills for dedup, and the partitioned files that hold them.
//!
//! A partitioned file is rows sorted so that each partition is one contiguous byte range,
//! followed by a footer: the byte offset of every partition's first row (`parts + 1` little-
//! endian u64s), then the trailer `RPPARTS1` and the partition count (u64). A reader fetches
//! the two offsets of its partition with two small reads, whatever the file size.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use redpack_schemas::atomic;

use super::types::BuildError;
use super::work::MAX_PARTITIONS;
use crate::extsort::{read_u64, RunReader, RunWriter, SortRecord, SortedStream, SpillError};

const TRAILER: &[u8; 8] = b"RPPARTS1";

/// An exact-dedup key: the record's 128-bit fingerprint and its document id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FpRecord {
    pub fp: u128,
    pub doc: u64,
}

/// The partition (of `parts`, at most 256) of a key whose top byte is `top`: monotonic in
/// `top`, so rows sorted by key are sorted by partition for every partition count.
pub fn partition_of(top: u8, parts: usize) -> usize {
    usize::from(top) * parts.clamp(1, MAX_PARTITIONS) / 256
}

impl FpRecord {
    pub fn partition(&self, parts: usize) -> usize {
        partition_of((self.fp >> 120) as u8, parts)
    }
}

impl SortRecord for FpRecord {
    const SIZE: usize = 24;
    fn encode(&self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.fp.to_le_bytes());
        out[16..24].copy_from_slice(&self.doc.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Self {
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&bytes[..16]);
        FpRecord {
            fp: u128::from_le_bytes(fp),
            doc: read_u64(bytes, 16),
        }
    }
}

/// One LSH band key of one document. Ordered by partition (the key's top bits) first, so a
/// sorted file is partitioned, then by `(band, key, doc)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandRec {
    pub band: u16,
    pub key: u64,
    pub doc: u64,
}

impl BandRec {
    pub fn partition(&self, parts: usize) -> usize {
        partition_of((self.key >> 56) as u8, parts)
    }

    fn order(&self) -> (u8, u16, u64, u64) {
        ((self.key >> 56) as u8, self.band, self.key, self.doc)
    }
}

impl PartialOrd for BandRec {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BandRec {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

impl SortRecord for BandRec {
    const SIZE: usize = 18;
    fn encode(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.band.to_le_bytes());
        out[2..10].copy_from_slice(&self.key.to_le_bytes());
        out[10..18].copy_from_slice(&self.doc.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Self {
        BandRec {
            band: u16::from_le_bytes([bytes[0], bytes[1]]),
            key: read_u64(bytes, 2),
            doc: read_u64(bytes, 10),
        }
    }
}

/// Writes a sorted stream as a partitioned file (atomically) and returns the rows written.
/// `partition` must be non-decreasing along the stream; `dedup` drops rows equal to the
/// previous one.
pub fn write_partitioned<R: SortRecord>(
    path: &Path,
    mut stream: SortedStream<R>,
    parts: usize,
    partition: impl Fn(&R) -> usize,
    dedup: bool,
) -> Result<u64, BuildError> {
    let tmp = atomic::temp_path(path);
    let mut writer = RunWriter::<R>::create(&tmp)?;
    let mut table = Vec::with_capacity(parts + 1);
    let mut previous: Option<R> = None;
    while let Some(record) = stream.next_record()? {
        if dedup && previous == Some(record) {
            continue;
        }
        let part = partition(&record);
        if part >= parts || part + 1 < table.len() {
            return Err(BuildError::Work {
                path: path.to_path_buf(),
                message: format!("internal error: partition {part} out of order or range"),
            });
        }
        while table.len() <= part {
            table.push(writer.bytes());
        }
        writer.push(&record)?;
        previous = Some(record);
    }
    while table.len() <= parts {
        table.push(writer.bytes());
    }
    let rows = writer.written();
    let mut file = writer.into_file()?;
    let mut footer = Vec::with_capacity(8 * table.len() + 16);
    for offset in &table {
        footer.extend_from_slice(&offset.to_le_bytes());
    }
    footer.extend_from_slice(TRAILER);
    footer.extend_from_slice(&(parts as u64).to_le_bytes());
    file.write_all(&footer)
        .and_then(|()| file.sync_all())
        .map_err(|e| BuildError::io(&tmp, e))?;
    drop(file);
    atomic::commit(&tmp, path)?;
    Ok(rows)
}

/// The byte range of partition `part` in a partitioned file.
pub fn partition_range(path: &Path, part: usize) -> Result<(u64, u64), BuildError> {
    let bad = |message: String| BuildError::Work {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(|e| BuildError::io(path, e))?;
    let len = file.metadata().map_err(|e| BuildError::io(path, e))?.len();
    if len < 16 {
        return Err(bad("too short for a partitioned file".into()));
    }
    let mut trailer = [0u8; 16];
    read_at(&mut file, len - 16, &mut trailer).map_err(|e| BuildError::io(path, e))?;
    if &trailer[..8] != TRAILER {
        return Err(bad("not a partitioned file (bad trailer)".into()));
    }
    let parts = read_u64(&trailer, 8);
    let table_bytes = parts
        .checked_add(1)
        .and_then(|n| n.checked_mul(8))
        .filter(|&n| n <= len - 16)
        .ok_or_else(|| bad(format!("partition count {parts} does not fit the file")))?;
    if part as u64 >= parts {
        return Err(bad(format!("partition {part} of {parts} requested")));
    }
    let table_start = len - 16 - table_bytes;
    let mut pair = [0u8; 16];
    read_at(&mut file, table_start + 8 * part as u64, &mut pair)
        .map_err(|e| BuildError::io(path, e))?;
    let (start, end) = (read_u64(&pair, 0), read_u64(&pair, 8));
    if start > end || end > table_start {
        return Err(bad(format!("corrupt partition table ({start}..{end})")));
    }
    Ok((start, end))
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Opens partition `part` of a partitioned file as a record stream.
pub fn open_partition<R: SortRecord>(
    path: &Path,
    part: usize,
    buffer: usize,
) -> Result<RunReader<R>, BuildError> {
    let (start, end) = partition_range(path, part)?;
    Ok(RunReader::open_range(path, start, end, buffer)?)
}

/// Reads all of partition `part` into memory.
pub fn read_partition<R: SortRecord>(path: &Path, part: usize) -> Result<Vec<R>, BuildError> {
    let mut reader = open_partition::<R>(path, part, 64 << 10)?;
    let mut out = Vec::with_capacity(reader.remaining() as usize);
    while let Some(record) = reader.next_record()? {
        out.push(record);
    }
    Ok(out)
}

/// Paths for error messages.
pub fn display(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<SpillError> for BuildError {
    fn from(err: SpillError) -> Self {
        BuildError::Spill(err)
    }
}
