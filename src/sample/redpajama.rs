//! The RedPajama V1 part of the sample: one file per subset in the published layout.
//!
//! Files are written in the order a directory walk reads them (sorted), and every planted
//! duplicate copies a document from an earlier file or an earlier line, so "the first in input
//! order survives" picks the original. Each file has one malformed line in its middle, so tests
//! can check that both neighbours are kept.

use std::io::Write;

use super::meta::{json_object, meta_fields, python_repr, Subset};
use super::text::{self, Rng};
use super::{
    jaccard_5grams, write_file, PlantKind, Planted, SampleError, SamplePlace, SampleReport,
    REDPAJAMA_ROOT,
};
use crate::record::RejectReason;

/// Words replacing originals in near duplicates; none occurs in the generator's word lists.
const REPLACEMENTS: &[&str] = &[
    "lighthouse",
    "saxophone",
    "avalanche",
    "hammock",
    "origami",
    "tundra",
    "velvet",
    "walrus",
];

/// Near duplicates are planted only from originals in this word range (enough 5-grams for a
/// stable Jaccard, small enough to keep the sample small).
const PLANT_WORDS: std::ops::RangeInclusive<usize> = 150..=1500;

/// One file to write: where, how many fresh documents, what is wrong with it.
struct Spec {
    path: String,
    subset: Subset,
    source: &'static str,
    documents: usize,
    malformed: Option<(RejectReason, &'static [u8])>,
    exact_plants: usize,
    near_plants: usize,
    zstd: bool,
    truncated: bool,
}

fn specs(rng: &mut Rng) -> Vec<Spec> {
    let spec = |path: String, subset, source, documents, malformed, plants: (usize, usize)| Spec {
        path: format!("{REDPAJAMA_ROOT}/{path}"),
        subset,
        source,
        documents,
        malformed,
        exact_plants: plants.0,
        near_plants: plants.1,
        zstd: false,
        truncated: false,
    };
    let cc = "common_crawl/2023-06";
    let cc_name = |part: &str| format!("{cc}/en_{part}_0000.json.gz.dedup.classifier.jsonl.zst");
    vec![
        spec(
            format!(
                "arxiv/arxiv_{}-{}-4{}-a{}-{}.jsonl",
                rng.hex(8),
                rng.hex(4),
                rng.hex(3),
                rng.hex(3),
                rng.hex(12)
            ),
            Subset::Arxiv,
            "arxiv",
            30,
            Some((RejectReason::NotAnObject, b"[\"not\", \"an\", \"object\"]")),
            (1, 0),
        ),
        spec(
            "book/book.jsonl".into(),
            Subset::Book,
            "book",
            3,
            None,
            (2, 1),
        ),
        spec(
            "c4/c4-train.00000-of-01024.jsonl".into(),
            Subset::C4,
            "c4",
            60,
            Some((
                RejectReason::InvalidJson,
                b"{\"text\": \"an unterminated string, \"meta\": {}",
            )),
            (2, 2),
        ),
        Spec {
            zstd: true,
            ..spec(
                cc_name("head"),
                Subset::CommonCrawl,
                "common_crawl",
                40,
                None,
                (2, 2),
            )
        },
        Spec {
            zstd: true,
            truncated: true,
            ..spec(
                cc_name("middle"),
                Subset::CommonCrawl,
                "common_crawl",
                15,
                None,
                (2, 2),
            )
        },
        spec(
            format!("github/filtered_{}.sampled.jsonl", rng.hex(32)),
            Subset::Github,
            "github",
            25,
            Some((
                RejectReason::NonStringField,
                b"{\"text\": 31337, \"meta\": {\"language\": \"Rust\"}}",
            )),
            (2, 2),
        ),
        spec(
            "stackexchange/stackexchange.jsonl".into(),
            Subset::StackExchange,
            "stackexchange",
            30,
            Some((
                RejectReason::MissingField,
                b"{\"meta\": {\"source\": \"stackexchange\", \"language\": \"en\"}}",
            )),
            (2, 2),
        ),
        spec(
            "wikipedia/wiki.jsonl".into(),
            Subset::Wikipedia,
            "wikipedia",
            40,
            Some((
                RejectReason::InvalidUtf8,
                b"{\"text\": \"caf\xe9 au lait \xff\", \"meta\": {\"language\": \"fr\"}}",
            )),
            (2, 2),
        ),
    ]
}

fn document(subset: Subset, rng: &mut Rng) -> String {
    match subset {
        Subset::Arxiv => {
            let size = rng.range(300, 700);
            text::arxiv(rng, size)
        }
        Subset::Book => text::book(rng, 4, 1200),
        Subset::C4 => {
            let size = rng.range(120, 350);
            text::prose(rng, size)
        }
        Subset::CommonCrawl => {
            let size = rng.range(150, 450);
            text::prose(rng, size)
        }
        Subset::Github => {
            let size = rng.range(4, 10);
            text::code(rng, size)
        }
        Subset::StackExchange => {
            let size = rng.range(150, 350);
            text::question(rng, size)
        }
        Subset::Wikipedia => {
            let size = rng.range(150, 450);
            text::article(rng, size)
        }
    }
}

/// The lines of one file as they are built, with their counts.
struct FileBuilder<'a> {
    spec: &'a Spec,
    lines: Vec<Vec<u8>>,
    records: u64,
}

impl FileBuilder<'_> {
    fn next_place(&self) -> SamplePlace {
        SamplePlace {
            file: self.spec.path.clone(),
            line: self.lines.len() as u64 + 1,
        }
    }

    /// Adds a document line; `meta` cycles through the four forms by record number.
    fn push_document(&mut self, text: &str, rng: &mut Rng, report: &mut SampleReport) {
        let text_json = serde_json::Value::from(text).to_string();
        let line = if self.spec.subset == Subset::CommonCrawl {
            let prob = 0.5 + rng.below(50) as f64 / 100.0;
            let origin = format!(
                "cc_net/2023-06/{}.json.gz/line{}",
                self.spec
                    .path
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .split('.')
                    .next()
                    .unwrap_or(""),
                self.lines.len()
            );
            format!("{{\"text\": {text_json}, \"pred_label\": \"__label__wiki\", \"pred_label_prob\": {prob}, \"wiki_prob\": {prob}, \"source\": \"{origin}\"}}")
        } else {
            let fields = meta_fields(self.spec.subset, rng);
            let (form, meta) = match self.records % 4 {
                0 => ("object", Some(json_object(&fields))),
                1 => (
                    "json_string",
                    Some(serde_json::Value::from(json_object(&fields)).to_string()),
                ),
                2 => (
                    "python_repr",
                    Some(serde_json::Value::from(python_repr(&fields)).to_string()),
                ),
                _ => ("absent", None),
            };
            *report.meta_forms.entry(form).or_default() += 1;
            match meta {
                Some(meta) => format!("{{\"text\": {text_json}, \"meta\": {meta}}}"),
                None => format!("{{\"text\": {text_json}}}"),
            }
        };
        self.lines.push(line.into_bytes());
        self.records += 1;
        report.documents += 1;
        if text.is_empty() {
            report.empty_documents += 1;
        }
    }
}

/// Exact-duplicate variant of `text`: identical, respaced, or uppercased.
fn exact_variant(text: &str, kind: PlantKind) -> String {
    match kind {
        PlantKind::Whitespace => format!(
            "  {} \n",
            text.replace(". ", ".   ").replace("\n\n", "\n \t\n")
        ),
        PlantKind::Case => text.to_uppercase(),
        _ => text.to_owned(),
    }
}

/// Near-duplicate of `text` with a few space-separated words replaced, spread evenly, keeping
/// the 5-gram Jaccard at or above 0.8. Returns the copy and its similarity.
fn near_variant(text: &str, rng: &mut Rng) -> (String, f64) {
    let words: Vec<&str> = text.split(' ').collect();
    let mut changes = (words.len() / 60).max(2);
    loop {
        let step = words.len() / (changes + 1);
        let mut out: Vec<&str> = words.clone();
        for i in 1..=changes {
            out[i * step] = rng.pick(REPLACEMENTS);
        }
        let copy = out.join(" ");
        let similarity = jaccard_5grams(text, &copy);
        if (similarity >= 0.8 && copy != text) || changes == 1 {
            return (copy, similarity);
        }
        changes -= 1;
    }
}

/// Writes every RedPajama file and records what was planted.
pub fn write(
    dir: &std::path::Path,
    rng: &mut Rng,
    report: &mut SampleReport,
) -> Result<(), SampleError> {
    let exact_kinds = [PlantKind::Identical, PlantKind::Whitespace, PlantKind::Case];
    let mut exact_counter = 0;
    // Fresh documents that may be copied: (place, text).
    let mut history: Vec<(SamplePlace, String)> = Vec::new();
    for spec in specs(rng) {
        let mut file = FileBuilder {
            spec: &spec,
            lines: Vec::new(),
            records: 0,
        };
        let first_of_file = history.len();
        let n = spec.documents;
        let exact_at: Vec<usize> = (1..=spec.exact_plants)
            .map(|i| i * n / (spec.exact_plants + 1))
            .collect();
        let near_at: Vec<usize> = (1..=spec.near_plants)
            .map(|i| (i * n / (spec.near_plants + 1)).max(1) - 1)
            .collect();
        let mut rejects = 0;
        for i in 0..n {
            let text = if spec.subset == Subset::C4 && i == 5 {
                String::new()
            } else {
                document(spec.subset, rng)
            };
            let place = file.next_place();
            file.push_document(&text, rng, report);
            if PLANT_WORDS.contains(&text.split_whitespace().count()) {
                history.push((place, text));
            }
            if i == n / 2 {
                if let Some((reason, bytes)) = spec.malformed {
                    file.lines.push(bytes.to_vec());
                    report.add_reject(reason);
                    rejects += 1;
                }
            }
            for _ in exact_at.iter().filter(|at| **at == i) {
                // The first file copies from itself; later files from earlier files only.
                let pool = if first_of_file == 0 {
                    history.len()
                } else {
                    first_of_file
                };
                let (original, source_text) = history[rng.below(pool)].clone();
                let kind = exact_kinds[exact_counter % exact_kinds.len()];
                exact_counter += 1;
                let copy = file.next_place();
                file.push_document(&exact_variant(&source_text, kind), rng, report);
                report.planted.push(Planted {
                    kind,
                    original,
                    copy,
                    jaccard: 1.0,
                });
            }
            for _ in near_at.iter().filter(|at| **at == i) {
                let (original, source_text) = history[rng.below(first_of_file.max(1))].clone();
                let (variant, jaccard) = near_variant(&source_text, rng);
                let copy = file.next_place();
                file.push_document(&variant, rng, report);
                report.planted.push(Planted {
                    kind: PlantKind::Near,
                    original,
                    copy,
                    jaccard,
                });
            }
        }
        let mut truncated_line = None;
        if spec.truncated {
            let extra = document(spec.subset, rng);
            let before = report.documents;
            file.push_document(&extra, rng, report);
            report.documents = before;
            file.records -= 1;
            truncated_line = file.lines.pop();
            report.add_reject(RejectReason::TruncatedFile);
            rejects += 1;
        }
        let bytes =
            encode(&file.lines, spec.zstd, truncated_line.as_deref()).map_err(|source| {
                SampleError::Io {
                    path: dir.join(&spec.path),
                    source,
                }
            })?;
        write_file(dir, &spec.path, &bytes, report)?;
        report.files.push(super::SampleFile {
            path: spec.path.clone(),
            source: spec.source.to_owned(),
            records: file.records,
            rejects,
            truncated: spec.truncated,
        });
    }
    Ok(())
}

/// Joins lines with `\n`, zstd-compressing if asked. A `cut_line` is appended in a block of its
/// own after a flush and the stream is then cut inside that block: a reader gets every earlier
/// line, then the start of `cut_line` (without its newline), then an unexpected end of stream.
fn encode(lines: &[Vec<u8>], zstd: bool, cut_line: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    let mut plain = Vec::new();
    for line in lines {
        plain.extend_from_slice(line);
        plain.push(b'\n');
    }
    if !zstd {
        return Ok(plain);
    }
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
    encoder.write_all(&plain)?;
    let Some(cut) = cut_line else {
        return encoder.finish();
    };
    let half = cut.len() / 2;
    encoder.write_all(&cut[..half])?;
    encoder.flush()?;
    let complete = encoder.get_ref().len();
    encoder.write_all(&cut[half..])?;
    encoder.write_all(b"\n")?;
    let mut bytes = encoder.finish()?;
    // Keep the flushed blocks and a few bytes of the last one.
    bytes.truncate(complete + (bytes.len() - complete) / 2);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(text: &str) -> String {
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    }

    #[test]
    fn variants_are_what_they_claim() {
        let mut rng = Rng::new(1);
        let original = text::prose(&mut rng, 200);
        for kind in [PlantKind::Identical, PlantKind::Whitespace, PlantKind::Case] {
            assert_eq!(
                normalized(&exact_variant(&original, kind)),
                normalized(&original)
            );
        }
        assert_ne!(exact_variant(&original, PlantKind::Whitespace), original);
        let (near, similarity) = near_variant(&original, &mut rng);
        assert_ne!(normalized(&near), normalized(&original));
        assert!((0.8..1.0).contains(&similarity), "{similarity}");
        assert_eq!(similarity, jaccard_5grams(&original, &near));
    }

    #[test]
    fn unrelated_documents_share_few_5grams() {
        let mut rng = Rng::new(2);
        let (a, b) = (text::prose(&mut rng, 300), text::prose(&mut rng, 300));
        assert!(jaccard_5grams(&a, &b) < 0.05);
    }

    #[test]
    fn truncated_zstd_keeps_flushed_lines() {
        let lines = vec![b"{\"text\": \"a\"}".to_vec(), b"{\"text\": \"b\"}".to_vec()];
        let cut = b"{\"text\": \"cut off somewhere in the middle of this line\"}";
        let bytes = encode(&lines, true, Some(cut)).unwrap();
        let mut decoded = Vec::new();
        let result = std::io::Read::read_to_end(
            &mut zstd::stream::read::Decoder::new(&bytes[..]).unwrap(),
            &mut decoded,
        );
        assert!(result.is_err(), "the stream ends inside a block");
        let before = b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
        assert!(decoded.starts_with(before));
        // What follows is a proper, non-empty prefix of the cut line without its newline, so a
        // reader sees one unfinished line (raw blocks may stream out past the flush point).
        let partial = &decoded[before.len()..];
        assert!(!partial.is_empty() && partial.len() < cut.len());
        assert!(cut.starts_with(partial));
    }
}
