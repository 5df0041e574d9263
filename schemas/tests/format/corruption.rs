//! Every kind of damage is refused with an error that names the file and says what is wrong, and
//! nothing panics: a truncated or flipped token file, a wrong magic or version, an index pointing
//! past the end, a manifest that disagrees with its shards, a missing manifest, ids outside the
//! vocabulary.

use std::fs;
use std::path::Path;

use redpack_schemas::*;

use crate::harness::*;

/// Opens and fully verifies `dir`, returning the first error.
fn open_and_verify(dir: &Path) -> Result<VerifyReport> {
    let corpus = Corpus::open(dir)?;
    for i in 0..corpus.len() {
        corpus.example(i)?;
    }
    corpus.verify(|_| {})
}

/// Asserts `result` is an error whose message names `file` and contains every one of `words`.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T>,
    file: &str,
    words: &[&str],
) -> SchemaError {
    let err = result.expect_err("corruption must be refused");
    let msg = err.to_string();
    assert!(msg.contains(file), "error does not name {file}: {msg}");
    for word in words {
        assert!(msg.contains(word), "error lacks {word:?}: {msg}");
    }
    err
}

#[test]
fn truncated_token_file() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    let path = shard_path(dir.path(), 1, true);
    edit_bytes(&path, |b| b.truncate(b.len() - 3));
    let err = assert_refused(
        Corpus::open(dir.path()),
        "shard-00001.tokens",
        &["truncated"],
    );
    assert!(matches!(err, SchemaError::Corrupt { .. }));
    // Shorter than the header itself.
    edit_bytes(&path, |b| b.truncate(10));
    assert_refused(
        Corpus::open(dir.path()),
        "shard-00001.tokens",
        &["shorter than its 32-byte header"],
    );
}

#[test]
fn flipped_token_byte_is_caught_by_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    let path = shard_path(dir.path(), 1, true);
    edit_bytes(&path, |b| b[HEADER_BYTES + 5] ^= 0x10);
    // Sizes still agree, so opening works; verification recomputes the checksum.
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "shard-00001.tokens",
        &["sha256", "does not match"],
    );
}

#[test]
fn flipped_index_byte_is_caught_on_open() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    let path = shard_path(dir.path(), 0, false);
    edit_bytes(&path, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
    });
    assert_refused(
        Corpus::open(dir.path()),
        "shard-00000.index.arrow",
        &["sha256"],
    );
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    edit_bytes(&shard_path(dir.path(), 0, true), |b| b[0] = b'X');
    assert_refused(
        Corpus::open(dir.path()),
        "shard-00000.tokens",
        &["wrong magic"],
    );
}

#[test]
fn wrong_token_file_version() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    edit_bytes(&shard_path(dir.path(), 0, true), |b| b[8] = 9);
    let err = assert_refused(
        Corpus::open(dir.path()),
        "shard-00000.tokens",
        &["version 9", "reads version 1"],
    );
    assert!(matches!(
        err,
        SchemaError::UnsupportedVersion { found: 9, .. }
    ));
}

#[test]
fn wrong_token_width() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    edit_bytes(&shard_path(dir.path(), 0, true), |b| b[12] = 3);
    assert_refused(Corpus::open(dir.path()), "shard-00000.tokens", &["width 3"]);
}

#[test]
fn wrong_manifest_version() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    edit_manifest_json(dir.path(), |m| m["format_version"] = 2.into());
    let err = assert_refused(
        Corpus::open(dir.path()),
        "manifest.json",
        &["version 2", "upgrade"],
    );
    assert!(matches!(
        err,
        SchemaError::UnsupportedVersion { found: 2, .. }
    ));
}

#[test]
fn manifest_that_is_not_json_or_not_ours() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    fs::write(dir.path().join(MANIFEST_FILE), b"{ not json").unwrap();
    assert_refused(Corpus::open(dir.path()), "manifest.json", &["invalid JSON"]);
    fs::write(dir.path().join(MANIFEST_FILE), b"{\"format\": \"other\"}").unwrap();
    assert_refused(
        Corpus::open(dir.path()),
        "manifest.json",
        &["not a redpack manifest"],
    );
}

#[test]
fn missing_manifest_is_not_a_corpus() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    let err = Corpus::open(dir.path()).unwrap_err();
    assert!(matches!(err, SchemaError::NotACorpus { .. }), "{err}");
    assert!(
        err.to_string().contains("manifest.json is missing"),
        "{err}"
    );
}

#[test]
fn missing_shard_file() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    fs::remove_file(shard_path(dir.path(), 1, false)).unwrap();
    let err = assert_refused(Corpus::open(dir.path()), "shard-00001.index.arrow", &[]);
    assert!(matches!(err, SchemaError::Io { .. }), "{err}");
}

#[test]
fn index_pointing_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    rewrite_index(dir.path(), 1, |index| index.offset[1] = 12);
    // The index checksum matches (resealed), so opening succeeds; access is bounds-checked.
    let corpus = Corpus::open(dir.path()).unwrap();
    assert!(corpus.example(2).is_ok());
    assert_refused(
        corpus.example(3),
        "shard-00001.index.arrow",
        &["row 1", "run past the token file's 16 tokens"],
    );
    assert_refused(
        corpus.verify(|_| {}),
        "shard-00001.index.arrow",
        &["run past"],
    );
    // An offset so large that offset + length overflows.
    rewrite_index(dir.path(), 1, |index| index.offset[1] = u64::MAX - 2);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(corpus.example(3), "shard-00001.index.arrow", &["run past"]);
}

#[test]
fn overlapping_examples_and_bad_prefix() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    rewrite_index(dir.path(), 0, |index| index.offset[1] = 4);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "shard-00000.index.arrow",
        &["overlaps"],
    );

    small_packed(dir.path(), 4);
    rewrite_index(dir.path(), 0, |index| index.prefix_len[0] = 9);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.example(0),
        "shard-00000.index.arrow",
        &["prefix_len 9 > length 8"],
    );

    small_packed(dir.path(), 4);
    rewrite_index(dir.path(), 0, |index| {
        index.length[1] = 7;
        index.prefix_len[1] = 3;
    });
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "shard-00000.index.arrow",
        &["packed layout"],
    );
}

#[test]
fn manifest_disagrees_on_token_count() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    let mut manifest = load_manifest(dir.path());
    manifest.shards[1].tokens += 1;
    save_manifest(dir.path(), &manifest);
    assert_refused(
        Corpus::open(dir.path()),
        "shard-00001.tokens",
        &["16 tokens", "the manifest says 17 tokens"],
    );
}

#[test]
fn manifest_disagrees_on_dtype() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    let mut manifest = load_manifest(dir.path());
    manifest.token_dtype = TokenDtype::U32;
    save_manifest(dir.path(), &manifest);
    assert_refused(
        Corpus::open(dir.path()),
        "manifest.json",
        &["token_dtype u32 does not match tokenizer.vocab_size 1000 (which needs u16)"],
    );
}

#[test]
fn manifest_disagrees_on_example_count() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    let mut manifest = load_manifest(dir.path());
    manifest.shards[0].examples = 3;
    save_manifest(dir.path(), &manifest);
    assert_refused(
        Corpus::open(dir.path()),
        "shard-00000.index.arrow",
        &["2 rows", "says 3 examples"],
    );
}

#[test]
fn manifest_counts_disagree_with_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    let mut manifest = load_manifest(dir.path());
    manifest.counts.examples = 5;
    save_manifest(dir.path(), &manifest);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "manifest.json",
        &["4 examples", "says 5"],
    );

    small_packed(dir.path(), 4);
    let mut manifest = load_manifest(dir.path());
    manifest.packing.padding_tokens = 8;
    save_manifest(dir.path(), &manifest);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "manifest.json",
        &["32 tokens", "counts.tokens + packing.padding_tokens = 40"],
    );

    small_packed(dir.path(), 4);
    let mut manifest = load_manifest(dir.path());
    manifest.counts.records_read += 1;
    save_manifest(dir.path(), &manifest);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "manifest.json",
        &["records_read 5 != kept 4"],
    );

    small_packed(dir.path(), 4);
    let mut manifest = load_manifest(dir.path());
    if let Some(c4) = manifest.sources.get_mut("c4") {
        c4.kept -= 1;
        c4.filtered += 1;
    }
    save_manifest(dir.path(), &manifest);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "manifest.json",
        &["per-source counts"],
    );
}

#[test]
fn token_id_outside_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    // The shard holds ids up to 31; give it a 20-token tokenizer, consistently described.
    place_tokenizer(dir.path(), 20);
    let mut manifest = load_manifest(dir.path());
    manifest.tokenizer = tokenizer_info(20);
    save_manifest(dir.path(), &manifest);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(
        corpus.verify(|_| {}),
        "shard-00001.tokens",
        &["id 20", "not below the vocabulary size 20"],
    );
}

#[test]
fn an_edited_token_with_a_matching_checksum_is_still_checked_against_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    edit_bytes(&shard_path(dir.path(), 0, true), |b| {
        b[HEADER_BYTES + 2..HEADER_BYTES + 4].copy_from_slice(&5000u16.to_le_bytes())
    });
    reseal_shard(dir.path(), 0);
    assert_refused(
        open_and_verify(dir.path()),
        "shard-00000.tokens",
        &["id 5000"],
    );
}

/// Random damage anywhere in a token file or the manifest: whatever happens, it is an `Ok` or an
/// `Err`, never a panic, and a changed file never verifies.
#[test]
fn random_damage_never_panics_and_never_verifies() {
    let pristine = tempfile::tempdir().unwrap();
    small_packed(pristine.path(), 5);
    let files = snapshot(pristine.path());
    let names: Vec<&String> = files.keys().filter(|n| !n.ends_with(".arrow")).collect();
    let mut rng = Rng::new(2024);
    for round in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        let name = names[rng.range(0, names.len() as u64 - 1) as usize];
        let path = dir.path().join(name);
        edit_bytes(&path, |b| {
            if rng.chance(1, 4) {
                let keep = rng.range(0, b.len() as u64 - 1) as usize;
                b.truncate(keep);
            } else {
                let at = rng.range(0, b.len() as u64 - 1) as usize;
                b[at] ^= 1 << rng.range(0, 7);
            }
        });
        let result = open_and_verify(dir.path());
        if let Ok(report) = result {
            // Only a flip that left the manifest's meaning intact (such as whitespace case) may
            // pass; a token file never does.
            assert!(
                name == MANIFEST_FILE,
                "round {round}: damaged {name} verified: {report:?}"
            );
        }
    }
}

/// Random damage to an index whose size and checksum are then recorded in the manifest (an
/// edit made on purpose, or a manifest rewritten after the damage): the Arrow decoder would
/// panic on buffers that run past their block; the reader reports an error instead.
#[test]
fn damaged_index_with_a_resealed_checksum_is_an_error_not_a_panic() {
    let pristine = tempfile::tempdir().unwrap();
    small_packed(pristine.path(), 5);
    let files = snapshot(pristine.path());
    let mut rng = Rng::new(77);
    for round in 0..400 {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        edit_bytes(&shard_path(dir.path(), 0, false), |b| {
            for _ in 0..rng.range(1, 3) {
                let at = rng.range(0, b.len() as u64 - 1) as usize;
                b[at] = rng.next_u64() as u8;
            }
        });
        reseal_shard(dir.path(), 0);
        let outcome = std::panic::catch_unwind(|| open_and_verify(dir.path()).map(drop));
        assert!(outcome.is_ok(), "round {round}: the reader panicked");
    }
}

#[test]
fn shard_and_tokenizer_paths_may_not_leave_the_corpus_folder() {
    for (field, value) in [
        ("tokens_file", "../outside.tokens"),
        ("tokens_file", "/etc/passwd"),
        ("index_file", "sub/shard-00000.index.arrow"),
        ("index_file", ".."),
    ] {
        let dir = tempfile::tempdir().unwrap();
        small_packed(dir.path(), 2);
        edit_manifest_json(dir.path(), |m| m["shards"][0][field] = value.into());
        assert_refused(
            Corpus::open(dir.path()),
            "manifest.json",
            &[
                &format!("shards[0].{field}"),
                "not a file name inside the corpus folder",
            ],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    edit_manifest_json(dir.path(), |m| {
        m["tokenizer"]["file"] = "../tokenizer.json".into()
    });
    assert_refused(
        Manifest::load(dir.path()),
        "manifest.json",
        &["tokenizer.file"],
    );
}

#[cfg(unix)]
#[test]
fn a_shard_that_links_outside_the_corpus_folder_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    let shard = shard_path(dir.path(), 0, true);
    let moved = outside.path().join("elsewhere.tokens");
    fs::rename(&shard, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &shard).unwrap();
    assert_refused(
        Corpus::open(dir.path()),
        "shard-00000.tokens",
        &["symbolic link", "outside the corpus folder"],
    );
    // A link that stays inside the folder is fine.
    let inside = dir.path().join("kept.tokens");
    fs::rename(&moved, &inside).unwrap();
    fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink(&inside, &shard).unwrap();
    open_and_verify(dir.path()).unwrap();
}

/// Every manifest field that describes the data is checked against it: the vocabulary size and
/// special ids against the tokenizer copy, the kind against the layout.
#[test]
fn edited_tokenizer_fields_and_kind_fail_verification() {
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        small_packed(dir.path(), 2);
        dir
    };
    let dir = fresh();
    open_and_verify(dir.path()).unwrap();
    edit_manifest_json(dir.path(), |m| m["tokenizer"]["vocab_size"] = 2000.into());
    assert_refused(
        open_and_verify(dir.path()),
        "manifest.json",
        &["tokenizer.vocab_size 2000 disagrees", "largest id is 999"],
    );
    let dir = fresh();
    edit_manifest_json(dir.path(), |m| m["tokenizer"]["eod_id"] = 7.into());
    assert_refused(
        open_and_verify(dir.path()),
        "manifest.json",
        &["tokenizer.eod_id 7 disagrees", "\"[EOD]\" has id 0"],
    );
    let dir = fresh();
    edit_manifest_json(dir.path(), |m| m["tokenizer"]["pad_id"] = 5000.into());
    assert_refused(
        Corpus::open(dir.path()),
        "manifest.json",
        &["pad_id 5000 is not below tokenizer.vocab_size 1000"],
    );
    let dir = fresh();
    edit_manifest_json(dir.path(), |m| m["kind"] = "examples".into());
    assert_refused(
        Corpus::open(dir.path()),
        "manifest.json",
        &["kind \"examples\" disagrees with the layout"],
    );
    let dir = fresh();
    place_tokenizer(dir.path(), 999);
    assert_refused(open_and_verify(dir.path()), "tokenizer.json", &["sha256"]);
}

/// Counts near `u64::MAX` in an edited manifest are refused, not an arithmetic overflow.
#[test]
fn huge_counts_are_refused_without_overflow() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 2);
    edit_manifest_json(dir.path(), |m| {
        m["counts"]["kept"] = u64::MAX.into();
        m["counts"]["filtered"] = u64::MAX.into();
        m["packing"]["padding_tokens"] = u64::MAX.into();
    });
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_refused(corpus.verify(|_| {}), "manifest.json", &["records_read"]);
}
