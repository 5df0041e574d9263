//! Input readers on real-format data: the shared samples in `tests/fixtures` and the generated
//! sample corpus, including every malformed-input kind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use redpack::input::datamanifest::{DataManifest, ManifestError};
use redpack::input::{
    discover, open, open_with_line_cap, Compression, FieldMap, FormatHint, InputError, InputFile,
    InputFormat,
};
use redpack::record::{Content, FileFault, Item, RejectReason};
use redpack::sample::{jaccard_5grams, write_sample, PlantKind, SamplePlace};

fn shared(relative: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(relative)
}

const ARXIV: &str = "redpajama/arxiv/arxiv_sample.jsonl";
const CC: &str = "redpajama/common_crawl/2020-16/en_head_0091.json.gz.dedup.classifier.jsonl.zst";
const FLAN_GZ: &str = "flan/cot_zs_opt_train.jsonl.gz";
const FLAN_PARQUET: &str = "flan/cot_zsopt_data/part.0.parquet";

fn one_file(path: PathBuf) -> InputFile {
    let mut files = discover(&[path], FormatHint::Auto).unwrap();
    assert_eq!(files.len(), 1);
    files.remove(0)
}

/// Reads a whole file: its items and its fault.
fn read_all(file: &InputFile, fields: &FieldMap) -> (Vec<Item>, Option<FileFault>) {
    let mut stream = open(file, fields).unwrap();
    let items: Vec<Item> = stream.by_ref().collect();
    assert_eq!(stream.records(), items.len() as u64);
    (items, stream.fault().cloned())
}

fn reject_counts(items: &[Item]) -> BTreeMap<RejectReason, u64> {
    let mut counts = BTreeMap::new();
    for item in items {
        if let Item::Reject(reject) = item {
            *counts.entry(reject.reason).or_default() += 1;
        }
    }
    counts
}

fn records(items: &[Item]) -> usize {
    items
        .iter()
        .filter(|i| matches!(i, Item::Record(_)))
        .count()
}

fn copy_to(dir: &Path, relative: &str) -> PathBuf {
    let target = dir.join(Path::new(relative).file_name().unwrap());
    std::fs::copy(shared(relative), &target).unwrap();
    let mut permissions = std::fs::metadata(&target).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&target, permissions).unwrap();
    target
}

#[test]
fn shared_arxiv_jsonl_reads_every_record_in_order() {
    let file = one_file(shared(ARXIV));
    assert_eq!(file.format, InputFormat::RedPajamaJsonl(Compression::None));
    assert_eq!(&*file.source, "arxiv");
    let (items, fault) = read_all(&file, &FieldMap::default());
    assert!(fault.is_none());
    assert_eq!(items.len(), 20);
    for (i, item) in items.iter().enumerate() {
        let Item::Record(record) = item else {
            panic!("line {} rejected: {item:?}", i + 1)
        };
        assert_eq!(record.place.line, i as u64 + 1);
        let Content::Text(text) = &record.content else {
            panic!("not text")
        };
        assert!(text.len() > 1000, "arXiv papers are long");
    }
}

#[test]
fn shared_common_crawl_zstd_flat_records() {
    let file = one_file(shared(CC));
    assert_eq!(file.format, InputFormat::RedPajamaJsonl(Compression::Zstd));
    assert_eq!(&*file.source, "common_crawl");
    let mut stream = open(&file, &FieldMap::default()).unwrap();
    let items: Vec<Item> = stream.by_ref().collect();
    assert_eq!(records(&items), 20);
    assert!(stream.fault().is_none());
    assert_eq!(
        stream.bytes_read(),
        std::fs::metadata(&file.path).unwrap().len()
    );
}

#[test]
fn shared_flan_gzip_jsonl_and_parquet() {
    let gz = one_file(shared(FLAN_GZ));
    assert_eq!(gz.format, InputFormat::FlanJsonl(Compression::Gzip));
    let parquet = one_file(shared(FLAN_PARQUET));
    assert_eq!(parquet.format, InputFormat::FlanParquet);
    assert_eq!((&*gz.source, &*parquet.source), ("cot_zsopt", "cot_zsopt"));
    for (file, first_line) in [(&gz, 1), (&parquet, 1)] {
        let (items, fault) = read_all(file, &FieldMap::default());
        assert!(fault.is_none());
        assert_eq!(records(&items), 400, "{}", file.display);
        let Item::Record(first) = &items[0] else {
            panic!()
        };
        assert_eq!(first.place.line, first_line);
        let Content::Pair {
            input,
            target,
            task,
        } = &first.content
        else {
            panic!()
        };
        assert!(!input.is_empty() && !target.is_empty());
        assert!(task.is_some(), "task read from `task` or `_task_name`");
    }
}

#[test]
fn discovery_of_a_directory_is_recursive_sorted_and_skips_non_data_files() {
    let files = discover(&[shared("")], FormatHint::Auto).unwrap();
    let names: Vec<&str> = files.iter().map(|f| &*f.display).collect();
    // The downstream-task fixtures are Parquet files too: found, sorted, under their folder.
    let (tasks, corpus): (Vec<&str>, Vec<&str>) =
        names.iter().partition(|n| n.starts_with("eval-tasks/"));
    assert_eq!(corpus, [FLAN_GZ, FLAN_PARQUET, ARXIV, CC]);
    assert!(tasks.len() > 20 && tasks.iter().all(|n| n.ends_with(".parquet")));
    assert_eq!(
        names[..tasks.len()],
        tasks[..],
        "sorted: eval-tasks/ comes first"
    );
    // Paths keep the order given; a file reached twice is read once.
    let files = discover(
        &[shared(CC), shared("redpajama"), shared(ARXIV)],
        FormatHint::Auto,
    )
    .unwrap();
    let names: Vec<&str> = files.iter().map(|f| &*f.source).collect();
    assert_eq!(names, ["common_crawl", "arxiv"]);
    let pattern = shared("redpajama/*/*.jsonl");
    let files = discover(&[pattern], FormatHint::Auto).unwrap();
    assert_eq!(files.len(), 1);
    let missing = discover(&[shared("nope.jsonl")], FormatHint::Auto).unwrap_err();
    assert!(matches!(missing, InputError::NotFound { .. }), "{missing}");
    let empty = discover(&[shared("redpajama/*.parquet")], FormatHint::Auto).unwrap_err();
    assert!(matches!(empty, InputError::EmptyGlob { .. }), "{empty}");
    let empty = discover(&[shared("tokenizers")], FormatHint::Auto).unwrap_err();
    assert!(
        matches!(empty, InputError::EmptyDirectory { .. }),
        "{empty}"
    );
}

#[test]
fn truncated_zstd_keeps_what_preceded_and_rejects_the_cut_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_to(dir.path(), CC);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let file = one_file(path);
    let (items, fault) = read_all(&file, &FieldMap::default());
    let fault = fault.expect("a truncated stream is a file fault");
    assert!(
        records(&items) > 0 && records(&items) < 20,
        "kept {}",
        records(&items)
    );
    assert_eq!(fault.records_before, records(&items) as u64);
    assert!(fault.to_string().contains("en_head_0091"), "{fault}");
    // Either the cut fell inside a line (rejected as truncated) or between lines (the lost
    // rest is one unreadable_file reject).
    let counts = reject_counts(&items);
    let truncated = counts
        .get(&RejectReason::TruncatedFile)
        .copied()
        .unwrap_or(0)
        + counts
            .get(&RejectReason::UnreadableFile)
            .copied()
            .unwrap_or(0);
    assert_eq!(truncated, 1);
    assert_eq!(items.len(), records(&items) + truncated as usize);
}

#[test]
fn truncated_gzip_keeps_what_preceded() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_to(dir.path(), FLAN_GZ);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (items, fault) = read_all(&one_file(path), &FieldMap::default());
    assert!(fault.is_some());
    assert!(
        records(&items) > 50 && records(&items) < 400,
        "kept {}",
        records(&items)
    );
    assert_eq!(
        reject_counts(&items).get(&RejectReason::TruncatedFile),
        Some(&1)
    );
    assert!(
        matches!(items.last(), Some(Item::Reject(r)) if r.reason == RejectReason::TruncatedFile)
    );
}

#[test]
fn every_malformed_line_kind_is_counted_and_neighbours_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let mut data = b"\xEF\xBB\xBF".to_vec();
    data.extend_from_slice(b"{\"text\": \"first\", \"meta\": {\"url\": \"u\"}}\n");
    data.extend_from_slice(b"{\"text\": \"broken\n");
    data.extend_from_slice(b"{\"text\": \"caf\xe9\"}\n");
    data.extend_from_slice(b"{\"meta\": \"{'a': None}\"}\n");
    data.extend_from_slice(b"{\"text\": 12.5}\n");
    data.extend_from_slice(b"[\"text\"]\n");
    data.extend_from_slice(b"\n   \n");
    data.extend_from_slice(&[b'x'; 300]);
    data.extend_from_slice(b"\n{\"text\": \"last\", \"meta\": \"{\\\"a\\\": 1}\"}");
    std::fs::write(&path, &data).unwrap();
    let file = one_file(path);
    let mut stream = open_with_line_cap(&file, &FieldMap::default(), 100).unwrap();
    let items: Vec<Item> = stream.by_ref().collect();
    assert!(stream.fault().is_none());
    let summary: Vec<(u64, String)> = items
        .iter()
        .map(|item| match item {
            Item::Record(r) => (r.place.line, "record".to_owned()),
            Item::Reject(r) => (r.place.line, r.reason.as_str().to_owned()),
        })
        .collect();
    let expected = [
        (1, "record"),
        (2, "invalid_json"),
        (3, "invalid_utf8"),
        (4, "missing_field"),
        (5, "non_string_field"),
        (6, "not_an_object"),
        (9, "line_too_long"),
        (10, "record"),
    ];
    let expected: Vec<(u64, String)> = expected.iter().map(|(l, s)| (*l, s.to_string())).collect();
    assert_eq!(summary, expected);
    let Item::Reject(utf8) = &items[2] else {
        panic!()
    };
    assert!(
        utf8.snippet.starts_with("{\"text\": \"caf"),
        "{}",
        utf8.snippet
    );
    assert!(utf8.detail.contains("byte 13"), "{}", utf8.detail);
}

#[test]
fn parquet_column_mapping_and_faults() {
    // Mapping to columns the file lacks rejects every row, naming the columns it has.
    let file = one_file(shared(FLAN_PARQUET));
    let (items, fault) = read_all(&file, &FieldMap::source_target());
    assert!(fault.is_none());
    assert_eq!(
        reject_counts(&items).get(&RejectReason::MissingField),
        Some(&400)
    );
    let Item::Reject(first) = &items[0] else {
        panic!()
    };
    assert!(
        first.detail.contains("`source`") && first.detail.contains("inputs"),
        "{}",
        first.detail
    );

    // A file that is not Parquet past its magic bytes is a file fault, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.0.parquet");
    std::fs::write(&path, b"PAR1 this is not really parquet PAR1").unwrap();
    // The whole file counts as one `unreadable_file` reject, so it weighs in the rejected
    // fraction of a build.
    let (items, fault) = read_all(&one_file(path), &FieldMap::default());
    assert_eq!(
        reject_counts(&items).get(&RejectReason::UnreadableFile),
        Some(&1)
    );
    assert_eq!(items.len(), 1);
    assert!(fault.unwrap().message.contains("Parquet"));
}

#[test]
fn parquet_corrupt_pages_become_rejects_without_losing_row_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_to(dir.path(), FLAN_PARQUET);
    let mut bytes = std::fs::read(&path).unwrap();
    // Scribble over the data pages (after the magic at the start, before the footer).
    for byte in &mut bytes[200..4000] {
        *byte = 0xAB;
    }
    std::fs::write(&path, &bytes).unwrap();
    let (items, _) = read_all(&one_file(path), &FieldMap::default());
    let counts = reject_counts(&items);
    assert!(
        counts
            .get(&RejectReason::UnreadableParquet)
            .copied()
            .unwrap_or(0)
            > 0,
        "{counts:?}"
    );
    assert_eq!(items.len(), 400, "every row is accounted for");
    for (row, item) in items.iter().enumerate() {
        let line = match item {
            Item::Record(r) => r.place.line,
            Item::Reject(r) => r.place.line,
        };
        assert_eq!(line, row as u64 + 1, "rows are counted from 1, like lines");
    }
}

fn normalize(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[test]
fn generated_sample_matches_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = write_sample(dir.path(), 7).unwrap();
    assert!(report.bytes < 4 << 20, "sample is {} bytes", report.bytes);
    assert!(report.documents >= 200 && report.examples >= 200);
    let files = discover(&[dir.path().to_owned()], FormatHint::Auto).unwrap();
    let names: Vec<&str> = files.iter().map(|f| &*f.display).collect();
    let reported: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    let mut sorted = reported.clone();
    sorted.sort();
    assert_eq!(
        names, sorted,
        "the report lists every file, and discovery finds them sorted"
    );

    let mut by_place: BTreeMap<SamplePlace, Content> = BTreeMap::new();
    let mut all_rejects = BTreeMap::new();
    let (mut documents, mut examples, mut faults) = (0, 0, 0);
    for file in &files {
        let expected = report
            .files
            .iter()
            .find(|f| f.path == *file.display)
            .unwrap();
        assert_eq!(*file.source, expected.source, "{}", file.display);
        let (items, fault) = read_all(file, &FieldMap::default());
        assert_eq!(
            fault.is_some(),
            expected.truncated,
            "{}: {fault:?}",
            file.display
        );
        faults += u64::from(fault.is_some());
        assert_eq!(records(&items) as u64, expected.records, "{}", file.display);
        for (reason, count) in reject_counts(&items) {
            *all_rejects.entry(reason).or_insert(0) += count;
        }
        for (i, item) in items.iter().enumerate() {
            match item {
                Item::Record(record) => {
                    if file.format.is_flan() {
                        examples += 1;
                    } else {
                        documents += 1;
                    }
                    let place = SamplePlace {
                        file: record.place.file.to_string(),
                        line: record.place.line,
                    };
                    by_place.insert(place, record.content.clone());
                }
                Item::Reject(reject) if reject.reason != RejectReason::TruncatedFile => {
                    // Neighbours of a bad line or row are kept.
                    assert!(
                        matches!(items.get(i + 1), Some(Item::Record(_))),
                        "{reject:?}"
                    );
                    assert!(
                        i > 0 && matches!(items[i - 1], Item::Record(_)),
                        "{reject:?}"
                    );
                }
                Item::Reject(_) => assert_eq!(i, items.len() - 1, "the cut line is last"),
            }
        }
    }
    assert_eq!((documents, examples), (report.documents, report.examples));
    assert_eq!(all_rejects, report.rejects);
    assert_eq!(faults, report.truncated_files());
    for reason in [
        RejectReason::InvalidJson,
        RejectReason::InvalidUtf8,
        RejectReason::MissingField,
        RejectReason::NonStringField,
        RejectReason::NotAnObject,
        RejectReason::TruncatedFile,
    ] {
        assert!(report.rejects.contains_key(&reason), "{reason} planted");
    }
    for form in ["object", "json_string", "python_repr", "absent"] {
        assert!(report.meta_forms[form] > 10, "meta form {form}");
    }

    // Planted duplicates are where the report says, and are what it says.
    assert!(report.exact_duplicates() >= 10 && report.planted_count(PlantKind::Near) >= 10);
    for kind in [PlantKind::Identical, PlantKind::Whitespace, PlantKind::Case] {
        assert!(report.planted_count(kind) >= 3, "{kind:?}");
    }
    for planted in &report.planted {
        let original = &by_place[&planted.original];
        let copy = &by_place[&planted.copy];
        assert!(planted.original < planted.copy || planted.original.file < planted.copy.file);
        match (planted.kind, original, copy) {
            (PlantKind::Near, Content::Text(a), Content::Text(b)) => {
                assert_ne!(normalize(a), normalize(b));
                assert!(jaccard_5grams(a, b) >= 0.8, "{planted:?}");
            }
            (
                PlantKind::FlanPair,
                Content::Pair {
                    input: i1,
                    target: t1,
                    ..
                },
                Content::Pair {
                    input: i2,
                    target: t2,
                    ..
                },
            ) => {
                assert_eq!((i1, t1), (i2, t2));
            }
            (_, Content::Text(a), Content::Text(b)) => {
                assert_eq!(normalize(a), normalize(b), "{planted:?}")
            }
            other => panic!("unexpected plant {other:?}"),
        }
    }
}

#[test]
fn generated_sample_is_deterministic() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_sample(a.path(), 42).unwrap();
    write_sample(b.path(), 42).unwrap();
    write_sample(c.path(), 43).unwrap();
    let files = discover(&[a.path().to_owned()], FormatHint::Auto).unwrap();
    let mut differs = false;
    for file in files {
        let bytes = std::fs::read(&file.path).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(b.path().join(&*file.display)).unwrap(),
            "{}",
            file.display
        );
        differs |= std::fs::read(c.path().join(&*file.display))
            .map(|other| other != bytes)
            .unwrap_or(true);
    }
    assert!(differs, "another seed gives another corpus");
}

#[test]
fn data_manifest_resolves_shared_sample_and_reports_checksum_mismatch() {
    let manifest_path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data-manifests/sample.toml"
    ));
    let manifest = DataManifest::load(manifest_path).unwrap();
    let resolved = manifest
        .resolve(&shared(""), FormatHint::Auto, true)
        .unwrap();
    let names: Vec<&str> = resolved.files.iter().map(|f| &*f.display).collect();
    assert_eq!(names.len(), 4);
    assert!(names.contains(&CC) && names.contains(&FLAN_PARQUET));

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let copied = copy_to(&data, ARXIV);
    let size = std::fs::metadata(&copied).unwrap().len();
    let toml = format!(
        "name = \"t\"\n[[files]]\npath = \"arxiv_sample.jsonl\"\nsize = {size}\nsha256 = \"{}\"\nsource = \"arxiv\"\n",
        "0".repeat(64)
    );
    let path = dir.path().join("m.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(toml.as_bytes())
        .unwrap();
    let err = DataManifest::load(&path)
        .unwrap()
        .resolve(&data, FormatHint::Auto, true)
        .unwrap_err();
    assert!(
        matches!(err, ManifestError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("arxiv_sample.jsonl"), "{err}");
    // Without checksum verification the size still matches and the file resolves.
    let resolved = DataManifest::load(&path)
        .unwrap()
        .resolve(&data, FormatHint::Auto, false)
        .unwrap();
    assert_eq!(&*resolved.files[0].source, "arxiv");
    // A wrong size is caught without hashing.
    std::fs::write(&path, toml.replace(&format!("size = {size}"), "size = 5")).unwrap();
    let err = DataManifest::load(&path)
        .unwrap()
        .resolve(&data, FormatHint::Auto, false)
        .unwrap_err();
    assert!(
        matches!(err, ManifestError::SizeMismatch { expected: 5, .. }),
        "{err}"
    );
}

#[test]
fn shipped_data_manifests_parse_and_describe_the_published_layouts() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data-manifests"));
    let redpajama = DataManifest::load(&root.join("redpajama-v1.toml")).unwrap();
    let total: u64 = redpajama.subsets.iter().filter_map(|s| s.files).sum();
    assert_eq!(total, 2084);
    assert_eq!(
        redpajama.url_prefix.as_deref(),
        Some("https://data.together.xyz/redpajama-data-1T/v1.0.0/")
    );
    let flan = DataManifest::load(&root.join("flan.toml")).unwrap();
    assert_eq!(flan.subsets.len(), 14);
}

/// A compressed file whose stream fails before any line (random bytes with a `.jsonl.gz` or
/// `.jsonl.zst` name) is one `unreadable_file` reject and a fault, never an empty success.
#[test]
fn unreadable_compressed_file_is_one_reject() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "redpajama/arxiv/junk.jsonl.gz",
        "redpajama/arxiv/junk.jsonl.zst",
    ] {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            b"\x1f\x8b\x08 not gzip and not zstd at all, just bytes",
        )
        .unwrap();
        let file = InputFile {
            format: redpack::input::detect_format(&path, FormatHint::RedPajama).unwrap(),
            ..one_file(path)
        };
        let (items, fault) = read_all(&file, &FieldMap::default());
        assert!(fault.is_some(), "{name}");
        assert_eq!(items.len(), 1, "{name}");
        let Item::Reject(reject) = &items[0] else {
            panic!("{name}: not a reject")
        };
        assert_eq!(reject.reason, RejectReason::UnreadableFile, "{name}");
        assert_eq!(reject.place.line, 1);
    }
}
