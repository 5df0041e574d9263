//! External sorting of fixed-size records: the out-of-core half of dedup and of the shuffle.
//!
//! A [`Sorter`] buffers records up to a byte budget; when the buffer is full it is sorted and
//! spilled to a run file. [`Sorter::finish`] merges the runs (and what is still in memory) into
//! one sorted stream. Merging opens at most [`FAN_IN`] files at a time: with more runs, groups
//! are merged into longer runs first, so the number of open files and the merge buffers stay
//! bounded whatever the input size.
//!
//! Records are plain little-endian byte rows of [`SortRecord::SIZE`] bytes; a run file is just
//! the rows back to back. The same reader ([`RunReader`]) streams a byte range of any file laid
//! out that way, which is how the dedup stage reads one partition of many scan files.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// Most files a merge reads at once.
pub const FAN_IN: usize = 128;
/// Read buffer per merged file (smaller when the budget is tight).
const MAX_READ_BUFFER: usize = 256 << 10;

/// A fixed-size, totally ordered record that can be spilled to disk.
pub trait SortRecord: Ord + Copy + Send {
    const SIZE: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
}

impl SortRecord for u64 {
    const SIZE: usize = 8;
    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Self {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&bytes[..8]);
        u64::from_le_bytes(raw)
    }
}

/// Little-endian helpers for record codecs.
pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// See [`read_u64`].
pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// An I/O error with the file it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SpillError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl SpillError {
    pub fn new(path: &Path, source: io::Error) -> Self {
        SpillError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Streams the records of one byte range of a file.
pub struct RunReader<R: SortRecord> {
    path: PathBuf,
    reader: io::Take<BufReader<File>>,
    remaining: u64,
    row: Vec<u8>,
    _record: PhantomData<R>,
}

impl<R: SortRecord> RunReader<R> {
    /// The whole file.
    pub fn open(path: &Path, buffer: usize) -> Result<Self, SpillError> {
        let len = std::fs::metadata(path)
            .map_err(|e| SpillError::new(path, e))?
            .len();
        Self::open_range(path, 0, len, buffer)
    }

    /// Bytes `start..end` of the file, which must hold whole records.
    pub fn open_range(
        path: &Path,
        start: u64,
        end: u64,
        buffer: usize,
    ) -> Result<Self, SpillError> {
        let size = R::SIZE as u64;
        if end < start || !(end - start).is_multiple_of(size) {
            return Err(SpillError::new(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("range {start}..{end} does not hold whole {size}-byte records"),
                ),
            ));
        }
        let mut file = File::open(path).map_err(|e| SpillError::new(path, e))?;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| SpillError::new(path, e))?;
        let reader = BufReader::with_capacity(buffer.max(R::SIZE), file).take(end - start);
        Ok(RunReader {
            path: path.to_path_buf(),
            reader,
            remaining: (end - start) / size,
            row: vec![0; R::SIZE],
            _record: PhantomData,
        })
    }

    /// Records not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next record, `None` at the end of the range.
    pub fn next_record(&mut self) -> Result<Option<R>, SpillError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.reader
            .read_exact(&mut self.row)
            .map_err(|e| SpillError::new(&self.path, e))?;
        self.remaining -= 1;
        Ok(Some(R::decode(&self.row)))
    }
}

/// Writes records back to back, buffered.
pub struct RunWriter<R: SortRecord> {
    path: PathBuf,
    writer: BufWriter<File>,
    row: Vec<u8>,
    written: u64,
    _record: PhantomData<R>,
}

impl<R: SortRecord> RunWriter<R> {
    pub fn create(path: &Path) -> Result<Self, SpillError> {
        let file = File::create(path).map_err(|e| SpillError::new(path, e))?;
        Ok(RunWriter {
            path: path.to_path_buf(),
            writer: BufWriter::with_capacity(256 << 10, file),
            row: vec![0; R::SIZE],
            written: 0,
            _record: PhantomData,
        })
    }

    pub fn push(&mut self, record: &R) -> Result<(), SpillError> {
        record.encode(&mut self.row);
        self.writer
            .write_all(&self.row)
            .map_err(|e| SpillError::new(&self.path, e))?;
        self.written += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.written * R::SIZE as u64
    }

    /// Flushes and returns the file (for a caller that appends a footer or syncs it).
    pub fn into_file(self) -> Result<File, SpillError> {
        let path = self.path;
        self.writer
            .into_inner()
            .map_err(|e| SpillError::new(&path, e.into_error()))
    }
}

/// A source of sorted records for [`Merge`].
pub enum MergeSource<R: SortRecord> {
    File(RunReader<R>),
    Memory(std::vec::IntoIter<R>),
}

impl<R: SortRecord> MergeSource<R> {
    fn next_record(&mut self) -> Result<Option<R>, SpillError> {
        match self {
            MergeSource::File(reader) => reader.next_record(),
            MergeSource::Memory(iter) => Ok(iter.next()),
        }
    }
}

/// A k-way merge of sorted sources. Equal records come out in source order, so a merge is
/// deterministic.
pub struct Merge<R: SortRecord> {
    sources: Vec<MergeSource<R>>,
    heap: BinaryHeap<Reverse<(R, usize)>>,
    primed: bool,
}

impl<R: SortRecord> Merge<R> {
    pub fn new(sources: Vec<MergeSource<R>>) -> Self {
        Merge {
            heap: BinaryHeap::with_capacity(sources.len()),
            sources,
            primed: false,
        }
    }

    /// The next record in order.
    pub fn next_record(&mut self) -> Result<Option<R>, SpillError> {
        if !self.primed {
            self.primed = true;
            for index in 0..self.sources.len() {
                if let Some(record) = self.sources[index].next_record()? {
                    self.heap.push(Reverse((record, index)));
                }
            }
        }
        let Some(Reverse((record, index))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(next) = self.sources[index].next_record()? {
            self.heap.push(Reverse((next, index)));
        }
        Ok(Some(record))
    }
}

/// Sorts more records than fit in memory; see the module docs.
pub struct Sorter<R: SortRecord> {
    dir: PathBuf,
    name: String,
    budget_records: usize,
    buffer: Vec<R>,
    runs: Vec<PathBuf>,
    next_run: usize,
    spilled_bytes: u64,
    read_buffer: usize,
}

impl<R: SortRecord> Sorter<R> {
    /// Spills into `dir` (created when needed) as `{name}.run{N}` once `budget_bytes` of
    /// records are buffered. The runs are deleted by [`Sorter::finish`]'s merge when done.
    pub fn new(dir: &Path, name: &str, budget_bytes: usize) -> Self {
        let budget_records = (budget_bytes / std::mem::size_of::<R>().max(1)).max(1024);
        Sorter {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            budget_records,
            buffer: Vec::new(),
            runs: Vec::new(),
            next_run: 0,
            spilled_bytes: 0,
            read_buffer: (budget_bytes / FAN_IN).clamp(16 << 10, MAX_READ_BUFFER),
        }
    }

    pub fn push(&mut self, record: R) -> Result<(), SpillError> {
        if self.buffer.len() >= self.budget_records {
            self.spill()?;
        }
        if self.buffer.len() == self.buffer.capacity() {
            // Grow by doubling, but never past the budget (a plain push could double past it).
            let target = (self.buffer.capacity() * 2).clamp(1024, self.budget_records);
            self.buffer.reserve_exact(target - self.buffer.len());
        }
        self.buffer.push(record);
        Ok(())
    }

    /// Bytes written to run files so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    fn run_path(&mut self) -> PathBuf {
        let path = self.dir.join(format!("{}.run{}", self.name, self.next_run));
        self.next_run += 1;
        path
    }

    fn spill(&mut self) -> Result<(), SpillError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| SpillError::new(&self.dir, e))?;
        self.buffer.sort_unstable();
        let path = self.run_path();
        let mut writer = RunWriter::create(&path)?;
        for record in &self.buffer {
            writer.push(record)?;
        }
        self.spilled_bytes += writer.bytes();
        writer.into_file()?;
        self.buffer.clear();
        self.runs.push(path);
        Ok(())
    }

    /// Everything pushed, in order: the remaining buffer merged with the runs. With more than
    /// [`FAN_IN`] runs, groups of runs are merged into longer ones first.
    pub fn finish(mut self) -> Result<SortedStream<R>, SpillError> {
        self.buffer.sort_unstable();
        while self.runs.len() >= FAN_IN {
            let group: Vec<PathBuf> = self.runs.drain(..FAN_IN).collect();
            let mut merge = Merge::<R>::new(open_runs(&group, self.read_buffer)?);
            let path = self.run_path();
            let mut writer = RunWriter::create(&path)?;
            while let Some(record) = merge.next_record()? {
                writer.push(&record)?;
            }
            writer.into_file()?;
            drop(merge);
            remove_all(&group);
            self.runs.push(path);
        }
        let mut sources = open_runs(&self.runs, self.read_buffer)?;
        sources.push(MergeSource::Memory(
            std::mem::take(&mut self.buffer).into_iter(),
        ));
        Ok(SortedStream {
            merge: Merge::new(sources),
            runs: std::mem::take(&mut self.runs),
        })
    }
}

/// One sorted byte range of a file, for [`merge_ranges`].
#[derive(Debug, Clone)]
pub struct Range {
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
}

/// Merges many sorted ranges (for example one partition of every scan file) into one stream,
/// reading at most [`FAN_IN`] of them at a time: larger sets are merged group by group into
/// runs in `spill_dir` first. Ties come out in range order.
pub fn merge_ranges<R: SortRecord>(
    ranges: &[Range],
    spill_dir: &Path,
    name: &str,
    buffer: usize,
) -> Result<SortedStream<R>, SpillError> {
    let open = |range: &Range| {
        RunReader::open_range(&range.path, range.start, range.end, buffer).map(MergeSource::File)
    };
    let mut runs: Vec<PathBuf> = Vec::new();
    let mut pending: Vec<MergeSource<R>> = Vec::new();
    if ranges.len() <= FAN_IN {
        for range in ranges.iter().filter(|r| r.end > r.start) {
            pending.push(open(range)?);
        }
    } else {
        std::fs::create_dir_all(spill_dir).map_err(|e| SpillError::new(spill_dir, e))?;
        let mut cascade: Vec<PathBuf> = Vec::new();
        for (group_index, group) in ranges.chunks(FAN_IN).enumerate() {
            let sources = group
                .iter()
                .filter(|r| r.end > r.start)
                .map(open)
                .collect::<Result<Vec<_>, _>>()?;
            let path = spill_dir.join(format!("{name}.merge{group_index}"));
            let mut merge = Merge::new(sources);
            let mut writer = RunWriter::create(&path)?;
            while let Some(record) = merge.next_record()? {
                writer.push(&record)?;
            }
            writer.into_file()?;
            cascade.push(path);
        }
        // Groups keep range order, so ties still come out in range order.
        let mut level = 0;
        while cascade.len() > FAN_IN {
            let mut next = Vec::new();
            for (group_index, group) in cascade.chunks(FAN_IN).enumerate() {
                let path = spill_dir.join(format!("{name}.merge{level}-{group_index}"));
                let mut merge = Merge::<R>::new(open_runs(group, buffer)?);
                let mut writer = RunWriter::create(&path)?;
                while let Some(record) = merge.next_record()? {
                    writer.push(&record)?;
                }
                writer.into_file()?;
                drop(merge);
                remove_all(group);
                next.push(path);
            }
            cascade = next;
            level += 1;
        }
        pending = open_runs(&cascade, buffer)?;
        runs = cascade;
    }
    Ok(SortedStream {
        merge: Merge::new(pending),
        runs,
    })
}

fn open_runs<R: SortRecord>(
    paths: &[PathBuf],
    buffer: usize,
) -> Result<Vec<MergeSource<R>>, SpillError> {
    paths
        .iter()
        .map(|path| RunReader::open(path, buffer).map(MergeSource::File))
        .collect()
}

fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        // A leftover run is only scratch space in the work directory; never an error.
        let _ = std::fs::remove_file(path);
    }
}

/// The output of [`Sorter::finish`]; deletes its run files when dropped.
pub struct SortedStream<R: SortRecord> {
    merge: Merge<R>,
    runs: Vec<PathBuf>,
}

impl<R: SortRecord> SortedStream<R> {
    pub fn next_record(&mut self) -> Result<Option<R>, SpillError> {
        self.merge.next_record()
    }
}

impl<R: SortRecord> Drop for SortedStream<R> {
    fn drop(&mut self) {
        remove_all(&self.runs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_sort_equals_in_memory_sort() {
        let dir = tempfile::tempdir().unwrap();
        // A budget of 1024 records and 300 runs: forces the multi-pass merge.
        let mut sorter = Sorter::<u64>::new(dir.path(), "t", 0);
        let mut expected = Vec::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..(1024 * 300 + 17) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let value = x % 5000; // many equal values
            sorter.push(value).unwrap();
            expected.push(value);
        }
        assert!(sorter.spilled_bytes() > 0);
        expected.sort();
        let mut stream = sorter.finish().unwrap();
        let mut got = Vec::new();
        while let Some(v) = stream.next_record().unwrap() {
            got.push(v);
        }
        assert_eq!(got, expected);
        drop(stream);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ranges_must_hold_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        std::fs::write(&path, [0u8; 20]).unwrap();
        let err = RunReader::<u64>::open_range(&path, 0, 20, 64)
            .err()
            .unwrap();
        assert!(err.to_string().contains("whole"), "{err}");
        let mut reader = RunReader::<u64>::open_range(&path, 4, 20, 64).unwrap();
        assert_eq!(reader.remaining(), 2);
        assert_eq!(reader.next_record().unwrap(), Some(0));
        assert_eq!(reader.next_record().unwrap(), Some(0));
        assert_eq!(reader.next_record().unwrap(), None);
    }
}
