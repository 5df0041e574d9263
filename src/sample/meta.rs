//! `meta` values for the sample's RedPajama records, with the fields RedPajama V1 carries per subset,
//! rendered as a JSON object or as a Python `repr` (the two shapes found in the wild; the
//! JSON-string form is the object's text wrapped in a JSON string).

use super::text::{self, Rng};

/// The RedPajama subset a document is generated for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    Arxiv,
    Book,
    C4,
    CommonCrawl,
    Github,
    StackExchange,
    Wikipedia,
}

/// A meta value: string, integer or Python `None`.
pub enum Value {
    Str(String),
    Int(i64),
    Null,
}

pub fn meta_fields(subset: Subset, rng: &mut Rng) -> Vec<(&'static str, Value)> {
    let timestamp = Value::Str(format!(
        "20{:02}-{:02}-{:02}T{:02}:00:00",
        15 + rng.below(8),
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24)
    ));
    let url = Value::Str(format!(
        "https://example.org/{}/{}",
        rng.hex(6),
        rng.hex(10)
    ));
    let en = || Value::Str("en".into());
    match subset {
        Subset::Arxiv => {
            let yymm = format!("{:02}{:02}", 10 + rng.below(13), 1 + rng.below(12));
            let id = format!("{yymm}.{:05}", rng.below(100_000));
            vec![
                ("timestamp", timestamp),
                ("yymm", Value::Str(yymm)),
                ("arxiv_id", Value::Str(id)),
                ("language", en()),
                ("url", url),
            ]
        }
        Subset::Book => vec![
            ("short_book_title", Value::Str(text::title(rng))),
            ("publication_date", Value::Int(1850 + rng.below(150) as i64)),
            ("url", Value::Null),
        ],
        Subset::C4 => vec![
            ("timestamp", timestamp),
            ("source", Value::Str("c4".into())),
            ("language", en()),
            ("url", url),
        ],
        Subset::Github => vec![
            ("content_hash", Value::Str(rng.hex(32))),
            (
                "repo_name",
                Value::Str(format!("user{}/project{}", rng.below(1000), rng.below(100))),
            ),
            (
                "path",
                Value::Str(format!("src/module{}.rs", rng.below(50))),
            ),
            ("language", Value::Str("Rust".into())),
            ("license", Value::Str("mit".into())),
            ("size", Value::Int(rng.range(500, 9000) as i64)),
        ],
        Subset::StackExchange => vec![
            ("timestamp", timestamp),
            ("source", Value::Str("stackexchange".into())),
            ("language", en()),
            ("question_score", Value::Int(rng.below(60) as i64)),
            ("url", url),
        ],
        Subset::Wikipedia => vec![
            ("timestamp", timestamp),
            ("title", Value::Str(text::title(rng))),
            ("language", en()),
            ("url", url),
        ],
        Subset::CommonCrawl => Vec::new(),
    }
}

pub fn json_object(fields: &[(&str, Value)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Str(s) => serde_json::Value::from(s.as_str()).to_string(),
                Value::Int(i) => i.to_string(),
                Value::Null => "null".into(),
            };
            format!("\"{key}\": {value}")
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

pub fn python_repr(fields: &[(&str, Value)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(key, value)| match value {
            Value::Str(s) => format!(
                "'{key}': '{}'",
                s.replace('\\', "\\\\").replace('\'', "\\'")
            ),
            Value::Int(i) => format!("'{key}': {i}"),
            Value::Null => format!("'{key}': None"),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}
