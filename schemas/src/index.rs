//! The per-shard example index: an Arrow IPC file, one row per example.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `offset` | uint64 | first token of the example, counted in tokens from the start of the token data |
//! | `length` | uint32 | tokens in the example |
//! | `prefix_len` | uint32 | tokens before the split (RedLLM encoder input / FLAN input) |
//! | `source` | dictionary<int32, utf8> | source of the example (of its first token for packed rows) |
//! | `doc_starts` | list<uint32> | positions > 0 inside the example where a new document or segment starts |
//! | `origin` | utf8, nullable | `file:line` of the record the example starts with |
//!
//! Readers map the file and decode it without copying (`Corpus` keeps the map alive).

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder, StringDictionaryBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

/// Index schema metadata key holding the format version.
pub const INDEX_VERSION_KEY: &str = "redpack.format_version";

pub fn index_schema() -> Schema {
    let fields = vec![
        Field::new("offset", DataType::UInt64, false),
        Field::new("length", DataType::UInt32, false),
        Field::new("prefix_len", DataType::UInt32, false),
        Field::new(
            "source",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new(
            "doc_starts",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            false,
        ),
        Field::new("origin", DataType::Utf8, true),
    ];
    let metadata: std::collections::HashMap<String, String> = [(
        INDEX_VERSION_KEY.to_string(),
        crate::manifest::FORMAT_VERSION.to_string(),
    )]
    .into_iter()
    .collect();
    Schema::new_with_metadata(fields, metadata)
}

/// Accumulates the index rows of the shard being written.
#[derive(Debug, Default)]
pub(crate) struct IndexBuilder {
    offset: Vec<u64>,
    length: Vec<u32>,
    prefix_len: Vec<u32>,
    source: Vec<String>,
    doc_starts: Vec<Vec<u32>>,
    origin: Vec<Option<String>>,
}

impl IndexBuilder {
    pub(crate) fn push(
        &mut self,
        offset: u64,
        length: u32,
        prefix_len: u32,
        source: &str,
        doc_starts: &[u32],
        origin: Option<&str>,
    ) {
        self.offset.push(offset);
        self.length.push(length);
        self.prefix_len.push(prefix_len);
        // Sources repeat; the dictionary builder dedups them on finish.
        self.source.push(source.to_string());
        self.doc_starts.push(doc_starts.to_vec());
        self.origin.push(origin.map(str::to_string));
    }

    pub(crate) fn len(&self) -> usize {
        self.offset.len()
    }

    pub(crate) fn finish(self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let offset: ArrayRef = Arc::new(arrow_array::UInt64Array::from(self.offset));
        let length: ArrayRef = Arc::new(arrow_array::UInt32Array::from(self.length));
        let prefix: ArrayRef = Arc::new(arrow_array::UInt32Array::from(self.prefix_len));
        let mut source = StringDictionaryBuilder::<Int32Type>::new();
        for s in &self.source {
            source.append(s)?;
        }
        let source: ArrayRef = Arc::new(source.finish());
        let item = Field::new("item", DataType::UInt32, false);
        let mut starts = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(item));
        for row in &self.doc_starts {
            starts.values().append_slice(row);
            starts.append(true);
        }
        let starts: ArrayRef = Arc::new(starts.finish());
        let mut origin = StringBuilder::new();
        for o in &self.origin {
            origin.append_option(o.as_deref());
        }
        let origin: ArrayRef = Arc::new(origin.finish());
        RecordBatch::try_new(
            Arc::new(index_schema()),
            vec![offset, length, prefix, source, starts, origin],
        )
    }
}

/// Typed, validated views of one shard's index columns.
#[derive(Debug)]
pub(crate) struct IndexColumns {
    pub offset: arrow_array::UInt64Array,
    pub length: arrow_array::UInt32Array,
    pub prefix_len: arrow_array::UInt32Array,
    pub source_keys: arrow_array::Int32Array,
    pub source_values: arrow_array::StringArray,
    pub doc_start_offsets: arrow_buffer::OffsetBuffer<i32>,
    pub doc_start_values: arrow_array::UInt32Array,
    pub origin: arrow_array::StringArray,
}

impl IndexColumns {
    /// Checks column names, types and nulls; `Err` says which column is wrong.
    pub(crate) fn from_batch(batch: &RecordBatch) -> Result<IndexColumns, String> {
        let column = |name: &str| -> Result<&ArrayRef, String> {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("index has no `{name}` column"))
        };
        let no_nulls = |name: &str, a: &dyn Array| -> Result<(), String> {
            if a.null_count() > 0 {
                Err(format!("index column `{name}` has nulls"))
            } else {
                Ok(())
            }
        };
        let offset = column("offset")?
            .as_primitive_opt::<UInt64Type>()
            .ok_or("index column `offset` is not uint64")?
            .clone();
        no_nulls("offset", &offset)?;
        let length = column("length")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or("index column `length` is not uint32")?
            .clone();
        no_nulls("length", &length)?;
        let prefix_len = column("prefix_len")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or("index column `prefix_len` is not uint32")?
            .clone();
        no_nulls("prefix_len", &prefix_len)?;
        let source = column("source")?
            .as_dictionary_opt::<Int32Type>()
            .ok_or("index column `source` is not dictionary<int32, utf8>")?;
        no_nulls("source", source)?;
        let source_values = source
            .values()
            .as_string_opt::<i32>()
            .ok_or("index column `source` values are not utf8")?
            .clone();
        let source_keys = source.keys().clone();
        if source_keys
            .values()
            .iter()
            .any(|&k| k < 0 || k as usize >= source_values.len())
        {
            return Err("index column `source` has a key outside its dictionary".into());
        }
        let starts = column("doc_starts")?
            .as_list_opt::<i32>()
            .ok_or("index column `doc_starts` is not list<uint32>")?;
        no_nulls("doc_starts", starts)?;
        let doc_start_values = starts
            .values()
            .as_primitive_opt::<UInt32Type>()
            .ok_or("index column `doc_starts` items are not uint32")?
            .clone();
        let doc_start_offsets = starts.offsets().clone();
        let origin = column("origin")?
            .as_string_opt::<i32>()
            .ok_or("index column `origin` is not utf8")?
            .clone();
        Ok(IndexColumns {
            offset,
            length,
            prefix_len,
            source_keys,
            source_values,
            doc_start_offsets,
            doc_start_values,
            origin,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.offset.len()
    }

    /// The document starts of row `row`, `None` when the offsets are inconsistent.
    pub(crate) fn doc_starts(&self, row: usize) -> Option<&[u32]> {
        let offsets = self.doc_start_offsets.as_ref();
        let start = usize::try_from(*offsets.get(row)?).ok()?;
        let end = usize::try_from(*offsets.get(row + 1)?).ok()?;
        self.doc_start_values.values().get(start..end)
    }

    pub(crate) fn source(&self, row: usize) -> Option<&str> {
        let key = usize::try_from(*self.source_keys.values().get(row)?).ok()?;
        (key < self.source_values.len()).then(|| self.source_values.value(key))
    }

    pub(crate) fn origin(&self, row: usize) -> Option<&str> {
        (row < self.origin.len() && self.origin.is_valid(row)).then(|| self.origin.value(row))
    }
}
