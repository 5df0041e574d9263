//! A task file's records as JSON objects, whatever its published format: Parquet (each row, with
//! lists and structs kept as JSON arrays and objects), JSONL (one object a line) or JSON (an
//! array of objects, or an object whose `examples` is one, as BIG-Bench-Hard publishes). Records
//! are numbered from 1 (Parquet rows and JSONL lines alike) in errors.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use super::TaskError;

/// One record of a task file, with where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    pub path: PathBuf,
    /// 1-based row (Parquet, JSON array) or line (JSONL) number.
    pub number: usize,
    pub fields: Map<String, Value>,
}

/// Reads every record of `path`, by its extension: `.parquet`, `.jsonl`, `.json`.
pub fn read(path: &Path) -> Result<Vec<Record>, TaskError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".parquet") {
        read_parquet(path)
    } else if name.ends_with(".jsonl") {
        read_jsonl(path)
    } else if name.ends_with(".json") {
        read_json(path)
    } else {
        Err(TaskError::Read {
            path: path.to_owned(),
            message: "not a .parquet, .jsonl or .json file".to_owned(),
        })
    }
}

fn read_text(path: &Path) -> Result<String, TaskError> {
    std::fs::read_to_string(path).map_err(|source| TaskError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_jsonl(path: &Path) -> Result<Vec<Record>, TaskError> {
    let text = read_text(path)?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| TaskError::Record {
            path: path.to_owned(),
            record: index + 1,
            message: format!("invalid JSON: {e}"),
        })?;
        records.push(object(path, index + 1, value)?);
    }
    Ok(records)
}

fn read_json(path: &Path) -> Result<Vec<Record>, TaskError> {
    let text = read_text(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| TaskError::Read {
        path: path.to_owned(),
        message: format!("invalid JSON: {e}"),
    })?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) => match map.remove("examples") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(TaskError::Read {
                    path: path.to_owned(),
                    message: "expected an array of records or an object with an `examples` array"
                        .to_owned(),
                })
            }
        },
        _ => {
            return Err(TaskError::Read {
                path: path.to_owned(),
                message: "expected an array of records".to_owned(),
            })
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| object(path, index + 1, item))
        .collect()
}

fn object(path: &Path, number: usize, value: Value) -> Result<Record, TaskError> {
    match value {
        Value::Object(fields) => Ok(Record {
            path: path.to_owned(),
            number,
            fields,
        }),
        other => Err(TaskError::Record {
            path: path.to_owned(),
            record: number,
            message: format!("expected a JSON object, found {}", kind_of(&other)),
        }),
    }
}

fn read_parquet(path: &Path) -> Result<Vec<Record>, TaskError> {
    let unreadable = |message: String| TaskError::Read {
        path: path.to_owned(),
        message,
    };
    let file = File::open(path).map_err(|source| TaskError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .map_err(|e| unreadable(format!("not a readable Parquet file: {e}")))?;
    let mut records = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| unreadable(format!("cannot decode a row group: {e}")))?;
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let number = records.len() + 1;
            let mut fields = Map::new();
            for (column, field) in batch.columns().iter().zip(schema.fields()) {
                let value = cell(column.as_ref(), row).map_err(|message| TaskError::Record {
                    path: path.to_owned(),
                    record: number,
                    message: format!("column {}: {message}", field.name()),
                })?;
                fields.insert(field.name().clone(), value);
            }
            records.push(Record {
                path: path.to_owned(),
                number,
                fields,
            });
        }
    }
    Ok(records)
}

/// The JSON value of one Arrow cell.
fn cell(array: &dyn Array, row: usize) -> Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let value = match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float32 => f64::from(array.as_primitive::<Float32Type>().value(row)).into(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row).into(),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_owned()),
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref())?,
        DataType::Struct(_) => {
            let structs = array.as_struct();
            let mut map = Map::new();
            for (name, column) in structs.column_names().iter().zip(structs.columns()) {
                map.insert((*name).to_owned(), cell(column.as_ref(), row)?);
            }
            Value::Object(map)
        }
        other => return Err(format!("unsupported Arrow type {other}")),
    };
    Ok(value)
}

fn list(values: &dyn Array) -> Result<Value, String> {
    (0..values.len())
        .map(|i| cell(values, i))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Record {
    fn error(&self, message: String) -> TaskError {
        TaskError::Record {
            path: self.path.clone(),
            record: self.number,
            message,
        }
    }

    fn field(&self, name: &str) -> Result<&Value, TaskError> {
        self.fields
            .get(name)
            .ok_or_else(|| self.error(format!("no field `{name}`")))
    }

    /// A string field.
    pub fn str(&self, name: &str) -> Result<&str, TaskError> {
        match self.field(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.error(format!(
                "field `{name}`: expected a string, found {}",
                kind_of(other)
            ))),
        }
    }

    /// A boolean field (also `"true"`/`"false"` strings).
    pub fn bool(&self, name: &str) -> Result<bool, TaskError> {
        match self.field(name)? {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            other => Err(self.error(format!(
                "field `{name}`: expected a boolean, found {}",
                kind_of(other)
            ))),
        }
    }

    /// A non-negative integer field (also a string of digits, as HellaSwag's `label`).
    pub fn index(&self, name: &str) -> Result<usize, TaskError> {
        let value = self.field(name)?;
        let parsed = match value {
            Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
            Value::String(s) => s.trim().parse::<usize>().ok(),
            _ => None,
        };
        parsed.ok_or_else(|| {
            self.error(format!(
                "field `{name}`: expected a non-negative integer, found {value}"
            ))
        })
    }

    /// A list of strings, at `name` or at `name.sub` (a struct field's list).
    pub fn str_list(&self, name: &str, sub: Option<&str>) -> Result<Vec<String>, TaskError> {
        let mut value = self.field(name)?;
        let mut place = name.to_owned();
        if let Some(sub) = sub {
            place = format!("{name}.{sub}");
            value = value
                .get(sub)
                .ok_or_else(|| self.error(format!("no field `{place}`")))?;
        }
        let Value::Array(items) = value else {
            return Err(self.error(format!(
                "field `{place}`: expected a list of strings, found {}",
                kind_of(value)
            )));
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.error(format!(
                    "field `{place}`: expected strings in the list, found {}",
                    kind_of(other)
                ))),
            })
            .collect()
    }

    /// A string inside a struct field: `name.sub`.
    pub fn sub_str(&self, name: &str, sub: &str) -> Result<&str, TaskError> {
        match self.field(name)?.get(sub) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.error(format!(
                "field `{name}.{sub}`: expected a string, found {}",
                kind_of(other)
            ))),
            None => Err(self.error(format!("no field `{name}.{sub}`"))),
        }
    }

    /// An error about this record's content.
    pub fn invalid(&self, message: impl Into<String>) -> TaskError {
        self.error(message.into())
    }
}
