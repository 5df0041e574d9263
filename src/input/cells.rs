//! Reads one string cell from an Arrow column, whatever string encoding the writer chose.
//!
//! FLAN exports come from pandas/pyarrow/Dask, which may store text as `Utf8`, `LargeUtf8`,
//! `Utf8View`, dictionary-encoded strings, or plain binary. All are accepted; binary must be
//! valid UTF-8. Any other type is reported by name so the reject says what was found.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowDictionaryKeyType, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::Array;
use arrow_schema::DataType;

/// One cell of a text column.
#[derive(Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    Null,
    Str(&'a str),
    /// A binary cell that is not valid UTF-8.
    BadUtf8,
    /// A column of a non-string type; holds the type's name.
    NotString(String),
}

/// The cell at `row` of `array`. `row` must be below `array.len()` (the caller iterates a batch).
pub fn cell(array: &dyn Array, row: usize) -> Cell<'_> {
    if array.is_null(row) {
        return Cell::Null;
    }
    if let Some(strings) = array.as_string_opt::<i32>() {
        return Cell::Str(strings.value(row));
    }
    if let Some(strings) = array.as_string_opt::<i64>() {
        return Cell::Str(strings.value(row));
    }
    if let Some(strings) = array.as_string_view_opt() {
        return Cell::Str(strings.value(row));
    }
    if let Some(bytes) = array.as_binary_opt::<i32>() {
        return from_bytes(bytes.value(row));
    }
    if let Some(bytes) = array.as_binary_opt::<i64>() {
        return from_bytes(bytes.value(row));
    }
    if let Some(bytes) = array.as_binary_view_opt() {
        return from_bytes(bytes.value(row));
    }
    if let DataType::Dictionary(key, _) = array.data_type() {
        let found = match key.as_ref() {
            DataType::Int8 => dictionary_cell::<Int8Type>(array, row),
            DataType::Int16 => dictionary_cell::<Int16Type>(array, row),
            DataType::Int32 => dictionary_cell::<Int32Type>(array, row),
            DataType::Int64 => dictionary_cell::<Int64Type>(array, row),
            DataType::UInt8 => dictionary_cell::<UInt8Type>(array, row),
            DataType::UInt16 => dictionary_cell::<UInt16Type>(array, row),
            DataType::UInt32 => dictionary_cell::<UInt32Type>(array, row),
            DataType::UInt64 => dictionary_cell::<UInt64Type>(array, row),
            _ => None,
        };
        if let Some(found) = found {
            return found;
        }
    }
    Cell::NotString(array.data_type().to_string())
}

fn from_bytes(bytes: &[u8]) -> Cell<'_> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cell::Str(text),
        Err(_) => Cell::BadUtf8,
    }
}

fn dictionary_cell<K: ArrowDictionaryKeyType>(array: &dyn Array, row: usize) -> Option<Cell<'_>> {
    let dictionary = array.as_dictionary_opt::<K>()?;
    let values = dictionary.values().as_ref();
    match dictionary.key(row) {
        Some(index) if index < values.len() => Some(cell(values, index)),
        Some(_) => Some(Cell::NotString(format!(
            "{} (key out of range)",
            array.data_type()
        ))),
        None => Some(Cell::Null),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{BinaryArray, DictionaryArray, Int64Array, LargeStringArray, StringArray};

    use super::*;

    #[test]
    fn reads_every_string_encoding() {
        let plain = StringArray::from(vec![Some("a"), None]);
        assert_eq!(cell(&plain, 0), Cell::Str("a"));
        assert_eq!(cell(&plain, 1), Cell::Null);
        let large = LargeStringArray::from(vec!["b"]);
        assert_eq!(cell(&large, 0), Cell::Str("b"));
        let binary = BinaryArray::from(vec![&b"c"[..], &[0xff, 0xfe][..]]);
        assert_eq!(cell(&binary, 0), Cell::Str("c"));
        assert_eq!(cell(&binary, 1), Cell::BadUtf8);
        let dictionary: DictionaryArray<Int32Type> = vec!["x", "y", "x"].into_iter().collect();
        assert_eq!(cell(&dictionary, 2), Cell::Str("x"));
        let keys = arrow_array::Int8Array::from(vec![Some(0), None]);
        let values = Arc::new(StringArray::from(vec!["z"]));
        let small = DictionaryArray::<Int8Type>::try_new(keys, values).unwrap();
        assert_eq!(cell(&small, 1), Cell::Null);
    }

    #[test]
    fn names_non_string_types() {
        let numbers = Int64Array::from(vec![1]);
        assert_eq!(cell(&numbers, 0), Cell::NotString("Int64".into()));
    }
}
