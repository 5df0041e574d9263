//! Pulls a few named string fields out of one JSON line without building a `serde_json::Value`.
//!
//! RedPajama lines are mostly one big `text` string plus a small `meta`; FLAN lines are two or
//! three strings. A `Value` tree would allocate every key and every meta entry; this visitor
//! skips everything it was not asked for (`IgnoredAny`) and allocates only the wanted strings,
//! which keeps parsing near serde_json's raw scanning speed. It also tells a missing field from a
//! `null` one and from one of the wrong type, so rejects can say exactly what was wrong.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The value found for one wanted field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Absent,
    Null,
    Str(String),
    /// Present but not a string; holds the JSON type name (`number`, `object`, ...).
    Other(&'static str),
}

/// Why a line did not yield fields.
#[derive(Debug)]
pub enum LineError {
    /// Not valid JSON (or trailing garbage after the value).
    Json(serde_json::Error),
    /// Valid JSON, but not an object; holds the JSON type name.
    NotAnObject(&'static str),
}

/// Parses `line` as one JSON object and returns the value of each name in `wanted`, in order.
/// When a key repeats, the last occurrence wins (as in Python's `json.loads`).
pub fn extract(line: &str, wanted: &[&str]) -> Result<Vec<FieldValue>, LineError> {
    let mut de = serde_json::Deserializer::from_str(line);
    let parsed = ObjectSeed { wanted }
        .deserialize(&mut de)
        .map_err(LineError::Json)?;
    de.end().map_err(LineError::Json)?;
    match parsed {
        Parsed::Object(values) => Ok(values),
        Parsed::NotObject(kind) => Err(LineError::NotAnObject(kind)),
    }
}

enum Parsed {
    Object(Vec<FieldValue>),
    NotObject(&'static str),
}

struct ObjectSeed<'w> {
    wanted: &'w [&'w str],
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Parsed;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Parsed, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut values = vec![FieldValue::Absent; self.wanted.len()];
        while let Some(slot) = map.next_key_seed(KeySeed {
            wanted: self.wanted,
        })? {
            match slot {
                Some(index) => values[index] = map.next_value::<FieldValue>()?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Parsed::Object(values))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Parsed::NotObject("array"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
        Ok(Parsed::NotObject("string"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
        Ok(Parsed::NotObject("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
        Ok(Parsed::NotObject("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
        Ok(Parsed::NotObject("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
        Ok(Parsed::NotObject("number"))
    }
    fn visit_unit<E>(self) -> Result<Parsed, E> {
        Ok(Parsed::NotObject("null"))
    }
}

/// Maps a key to the index of the wanted field it names, without allocating.
struct KeySeed<'w> {
    wanted: &'w [&'w str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.wanted.iter().position(|name| *name == key))
    }
}

impl<'de> de::Deserialize<'de> for FieldValue {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, s: &str) -> Result<FieldValue, E> {
        Ok(FieldValue::Str(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<FieldValue, E> {
        Ok(FieldValue::Str(s))
    }
    fn visit_unit<E>(self) -> Result<FieldValue, E> {
        Ok(FieldValue::Null)
    }
    fn visit_none<E>(self) -> Result<FieldValue, E> {
        Ok(FieldValue::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<FieldValue, E> {
        Ok(FieldValue::Other("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<FieldValue, E> {
        Ok(FieldValue::Other("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<FieldValue, E> {
        Ok(FieldValue::Other("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<FieldValue, E> {
        Ok(FieldValue::Other("number"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FieldValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Other("array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FieldValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Other("object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wanted_fields_and_skips_the_rest() {
        let line = r#"{"meta": {"a": [1, {"text": 2}]}, "text": "hi\nthere", "n": 3}"#;
        assert_eq!(
            extract(line, &["text", "missing"]).unwrap(),
            [FieldValue::Str("hi\nthere".into()), FieldValue::Absent]
        );
    }

    #[test]
    fn tells_null_and_wrong_types_apart() {
        let line = r#"{"a": null, "b": 5, "c": [1], "d": {"x": 1}, "e": true}"#;
        assert_eq!(
            extract(line, &["a", "b", "c", "d", "e"]).unwrap(),
            [
                FieldValue::Null,
                FieldValue::Other("number"),
                FieldValue::Other("array"),
                FieldValue::Other("object"),
                FieldValue::Other("boolean"),
            ]
        );
    }

    #[test]
    fn last_duplicate_key_wins() {
        assert_eq!(
            extract(r#"{"t": "a", "t": "b"}"#, &["t"]).unwrap(),
            [FieldValue::Str("b".into())]
        );
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        assert!(matches!(
            extract("[1, 2]", &["t"]),
            Err(LineError::NotAnObject("array"))
        ));
        assert!(matches!(
            extract("\"s\"", &["t"]),
            Err(LineError::NotAnObject("string"))
        ));
        assert!(matches!(
            extract("{\"t\": ", &["t"]),
            Err(LineError::Json(_))
        ));
        assert!(matches!(extract("{} x", &["t"]), Err(LineError::Json(_))));
    }
}
