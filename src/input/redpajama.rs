//! RedPajama V1 records: a `text` string and whatever else.
//!
//! Only the text is read. `meta` is skipped unparsed whatever its form (object, JSON string,
//! Python-repr string, absent) and so can never cause a reject; common_crawl's flat records
//! (`pred_label`, `wiki_prob`, `source`, ...) are read the same way. The source name comes from
//! the file's path, not from `meta`, because `meta` is not reliably parseable.

use super::fields::FieldValue;
use crate::record::{Content, RejectReason};

/// Builds the record content from the value of the text field (the only wanted field).
pub fn content(
    values: Vec<FieldValue>,
    text_field: &str,
) -> Result<Content, (RejectReason, String)> {
    let value = values.into_iter().next().unwrap_or(FieldValue::Absent);
    require_string(value, text_field).map(Content::Text)
}

/// The string in `value`, or the reject reason and detail naming `field`.
pub fn require_string(value: FieldValue, field: &str) -> Result<String, (RejectReason, String)> {
    match value {
        FieldValue::Str(text) => Ok(text),
        FieldValue::Absent => Err((
            RejectReason::MissingField,
            format!("field `{field}` is missing"),
        )),
        FieldValue::Null => Err((
            RejectReason::MissingField,
            format!("field `{field}` is null"),
        )),
        FieldValue::Other(kind) => Err((
            RejectReason::NonStringField,
            format!(
                "field `{field}` is {} {kind}, expected a string",
                article(kind)
            ),
        )),
    }
}

fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    use super::super::fields::extract;
    use super::*;

    fn read(line: &str) -> Result<Content, (RejectReason, String)> {
        content(extract(line, &["text"]).unwrap(), "text")
    }

    #[test]
    fn every_meta_form_is_accepted() {
        let lines = [
            r#"{"text": "doc", "meta": {"url": "u", "language": "en"}}"#,
            r#"{"text": "doc", "meta": "{\"url\": \"u\", \"language\": \"en\"}"}"#,
            r#"{"text": "doc", "meta": "{'url': 'u', 'language': 'en', 'score': None}"}"#,
            r#"{"text": "doc"}"#,
            r#"{"text": "doc", "pred_label": "__label__wiki", "pred_label_prob": 0.9, "wiki_prob": 0.9, "source": "cc/2023-06/en_head_0000.json.gz/line1"}"#,
        ];
        for line in lines {
            assert_eq!(read(line).unwrap(), Content::Text("doc".into()), "{line}");
        }
    }

    #[test]
    fn missing_null_and_non_string_text_are_named() {
        assert_eq!(
            read(r#"{"meta": {}}"#).unwrap_err().0,
            RejectReason::MissingField
        );
        assert_eq!(
            read(r#"{"text": null}"#).unwrap_err().0,
            RejectReason::MissingField
        );
        let (reason, detail) = read(r#"{"text": 42}"#).unwrap_err();
        assert_eq!(reason, RejectReason::NonStringField);
        assert_eq!(detail, "field `text` is a number, expected a string");
        assert_eq!(
            read(r#"{"text": ["a"]}"#).unwrap_err().1,
            "field `text` is an array, expected a string"
        );
    }
}
