//! Streams a FLAN Parquet export row by row, one row group at a time.
//!
//! Each row group gets its own Arrow reader, projected to the input, target and task columns
//! and decoded in batches of [`BATCH_ROWS`], so memory stays at one batch whatever the file
//! size. A row group that fails to decode does not end the file: each of its rows not yet
//! yielded becomes an `UnreadableParquet` reject (the footer says how many rows it has) and the
//! next row group is tried. Only an unreadable footer ends the file, as a [`FileFault`]. A
//! configured column absent from the file makes every row a `MissingField` reject, so the
//! count of rows read still matches the file.

use std::fs::File;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

use super::cells::{cell, Cell};
use super::{FieldMap, InputError, InputFile};
use crate::record::{Content, FileFault, Item, Place, Record, Reject, RejectReason};

/// Rows decoded at once. FLAN rows are a few KB, so a batch is a few MB at most.
const BATCH_ROWS: usize = 1024;

/// A Parquet file being read; see the module docs.
pub struct ParquetStream {
    file: Arc<str>,
    source: Arc<str>,
    path: std::path::PathBuf,
    /// `None` when the footer could not be read (then `fault` is set).
    metadata: Option<ArrowReaderMetadata>,
    columns: Columns,
    /// (rows, compressed bytes) per row group, from the footer.
    row_groups: Vec<(u64, u64)>,
    next_row_group: usize,
    reader: Option<ParquetRecordBatchReader>,
    batch: Option<(RecordBatch, usize)>,
    /// Rows of the current row group not yet yielded.
    group_rows_left: u64,
    /// Rows of the current row group still to reject without decoding (unreadable row group,
    /// missing input or target column), with the reason and detail.
    pending: (u64, RejectReason, String),
    row: u64,
    bytes_read: u64,
    fault: Option<FileFault>,
}

/// Where the wanted columns are, or why they are not.
struct Columns {
    input: Result<String, String>,
    target: Result<String, String>,
    task: Option<String>,
}

impl ParquetStream {
    /// Opens the file and reads its footer. Fails only if the file cannot be opened.
    pub fn open(file: &InputFile, fields: &FieldMap) -> Result<Self, InputError> {
        let handle = File::open(&file.path).map_err(|source| InputError::Io {
            path: file.path.clone(),
            source,
        })?;
        let mut stream = ParquetStream {
            file: Arc::clone(&file.display),
            source: Arc::clone(&file.source),
            path: file.path.clone(),
            metadata: None,
            columns: Columns {
                input: Err(String::new()),
                target: Err(String::new()),
                task: None,
            },
            row_groups: Vec::new(),
            next_row_group: 0,
            reader: None,
            batch: None,
            group_rows_left: 0,
            pending: (0, RejectReason::UnreadableParquet, String::new()),
            row: 0,
            bytes_read: 0,
            fault: None,
        };
        match guarded(|| {
            ArrowReaderMetadata::load(&handle, ArrowReaderOptions::new()).map_err(|e| e.to_string())
        }) {
            Ok(metadata) => {
                let names: Vec<&str> = metadata
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                let find = |wanted: &str| {
                    if names.contains(&wanted) {
                        Ok(wanted.to_owned())
                    } else {
                        Err(format!(
                            "column `{wanted}` is not in the file (columns: {})",
                            names.join(", ")
                        ))
                    }
                };
                stream.columns = Columns {
                    input: find(&fields.input),
                    target: find(&fields.target),
                    task: fields
                        .task_candidates()
                        .into_iter()
                        .find_map(|name| find(name).ok()),
                };
                stream.row_groups = metadata
                    .metadata()
                    .row_groups()
                    .iter()
                    .map(|group| {
                        (
                            group.num_rows().max(0) as u64,
                            group.compressed_size().max(0) as u64,
                        )
                    })
                    .collect();
                stream.metadata = Some(metadata);
            }
            Err(err) => {
                let message = format!("unreadable Parquet footer: {err}");
                stream.pending = (1, RejectReason::UnreadableFile, message.clone());
                stream.fault = Some(FileFault {
                    file: Arc::clone(&stream.file),
                    records_before: 0,
                    bytes_before: 0,
                    message,
                });
            }
        }
        Ok(stream)
    }

    pub fn fault(&self) -> Option<&FileFault> {
        self.fault.as_ref()
    }

    /// Compressed bytes of the row groups started so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Rows yielded so far (0-based index of the next row).
    pub fn items(&self) -> u64 {
        self.row
    }

    /// Starts the next row group's reader; on failure, schedules its rows as rejects.
    fn start_row_group(&mut self) {
        let Some(metadata) = self.metadata.clone() else {
            return;
        };
        let index = self.next_row_group;
        self.next_row_group += 1;
        let (rows, bytes) = self.row_groups[index];
        self.bytes_read += bytes;
        self.group_rows_left = rows;
        let missing = [&self.columns.input, &self.columns.target]
            .into_iter()
            .find_map(|c| c.as_ref().err());
        if let Some(detail) = missing {
            self.pending = (rows, RejectReason::MissingField, detail.clone());
            self.group_rows_left = 0;
            return;
        }
        let built = File::open(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|handle| {
                let schema = metadata.parquet_schema();
                let wanted: Vec<&str> = [
                    self.columns.input.as_ref().ok(),
                    self.columns.target.as_ref().ok(),
                    self.columns.task.as_ref(),
                ]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
                let roots: Vec<usize> = (0..schema.root_schema().get_fields().len())
                    .filter(|&i| wanted.contains(&schema.root_schema().get_fields()[i].name()))
                    .collect();
                guarded(|| {
                    ParquetRecordBatchReaderBuilder::new_with_metadata(handle, metadata.clone())
                        .with_row_groups(vec![index])
                        .with_projection(ProjectionMask::roots(schema, roots))
                        .with_batch_size(BATCH_ROWS)
                        .build()
                        .map_err(|e| e.to_string())
                })
            });
        match built {
            Ok(reader) => self.reader = Some(reader),
            Err(message) => self.fail_row_group(index, message),
        }
    }

    fn fail_row_group(&mut self, index: usize, message: String) {
        let detail = format!("row group {index}: {message}");
        self.pending = (
            self.group_rows_left,
            RejectReason::UnreadableParquet,
            detail,
        );
        self.group_rows_left = 0;
        self.reader = None;
        self.batch = None;
    }

    /// The place of the row about to be yielded, counted from 1 like JSONL lines.
    fn place(&self) -> Place {
        Place {
            file: Arc::clone(&self.file),
            line: self.row + 1,
        }
    }

    fn reject(&self, reason: RejectReason, detail: String, snippet: String) -> Item {
        Item::Reject(Reject {
            source: Arc::clone(&self.source),
            place: self.place(),
            reason,
            detail,
            snippet,
        })
    }

    /// Converts row `index` of `batch` into an item.
    fn row_item(&self, batch: &RecordBatch, index: usize) -> Item {
        let column = |name: &Result<String, String>| -> Result<ArrayRef, String> {
            let name = name.as_ref().map_err(Clone::clone)?;
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format!("column `{name}` missing from batch"))
        };
        let read = |name: &Result<String, String>| -> Result<String, (RejectReason, String)> {
            let array = column(name).map_err(|detail| (RejectReason::MissingField, detail))?;
            let label = name.as_deref().unwrap_or("?");
            string_cell(array.as_ref(), index, label)
        };
        let pair =
            read(&self.columns.input).and_then(|input| Ok((input, read(&self.columns.target)?)));
        match pair {
            Ok((input, target)) => {
                let task = self.columns.task.as_ref().and_then(|name| {
                    let array = batch.column_by_name(name)?;
                    match cell(array.as_ref(), index) {
                        Cell::Str(task) => Some(task.to_owned()),
                        _ => None,
                    }
                });
                Item::Record(Record {
                    source: Arc::clone(&self.source),
                    place: self.place(),
                    content: Content::Pair {
                        input,
                        target,
                        task,
                    },
                })
            }
            Err((reason, detail)) => {
                let snippet = match column(&self.columns.input) {
                    Ok(array) => match cell(array.as_ref(), index) {
                        Cell::Str(text) => super::snippet(text.as_bytes()),
                        _ => String::new(),
                    },
                    Err(_) => String::new(),
                };
                self.reject(reason, detail, snippet)
            }
        }
    }
}

/// The string at `index`, or the reject naming `column` and what was wrong.
fn string_cell(
    array: &dyn Array,
    index: usize,
    column: &str,
) -> Result<String, (RejectReason, String)> {
    match cell(array, index) {
        Cell::Str(text) => Ok(text.to_owned()),
        Cell::Null => Err((
            RejectReason::MissingField,
            format!("column `{column}` is null"),
        )),
        Cell::BadUtf8 => Err((
            RejectReason::InvalidUtf8,
            format!("column `{column}` is binary, not valid UTF-8"),
        )),
        Cell::NotString(kind) => Err((
            RejectReason::NonStringField,
            format!("column `{column}` has type {kind}, expected a string"),
        )),
    }
}

impl Iterator for ParquetStream {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if self.pending.0 > 0 {
                self.pending.0 -= 1;
                let item = self.reject(self.pending.1, self.pending.2.clone(), String::new());
                self.row += 1;
                return Some(item);
            }
            self.metadata.as_ref()?;
            if let Some((batch, index)) = self.batch.take() {
                if index < batch.num_rows() {
                    let item = self.row_item(&batch, index);
                    self.batch = Some((batch, index + 1));
                    self.group_rows_left = self.group_rows_left.saturating_sub(1);
                    self.row += 1;
                    return Some(item);
                }
            }
            if let Some(reader) = self.reader.as_mut() {
                let next = guarded(|| Ok(reader.next().map(|r| r.map_err(|e| e.to_string()))));
                match next.and_then(|n| n.transpose()).transpose() {
                    Some(Ok(batch)) => self.batch = Some((batch, 0)),
                    Some(Err(err)) => self.fail_row_group(self.next_row_group - 1, err),
                    None if self.group_rows_left > 0 => {
                        let message = format!("ended {} rows early", self.group_rows_left);
                        self.fail_row_group(self.next_row_group - 1, message);
                    }
                    None => self.reader = None,
                }
                continue;
            }
            if self.next_row_group < self.row_groups.len() {
                self.start_row_group();
                continue;
            }
            return None;
        }
    }
}

/// Runs a call into the Parquet decoder, turning a panic into an error. The decoder asserts
/// on some corrupt metadata and pages (negative column offsets, bitmaps shorter than their
/// rows) instead of returning an error; a damaged input file must end as a reject, never bring
/// the build down.
fn guarded<T>(call: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(format!(
            "the Parquet decoder failed on corrupt data: {message}"
        ))
    })
}
