//! Writer → reader round trips: property-style over seeded random corpora of both kinds and both
//! token dtypes, shard rollover, and byte-for-byte determinism.

use redpack_schemas::*;

use crate::harness::*;

/// Sources drawn at random; several so the dictionary column holds more than one value.
const SOURCES: [&str; 4] = ["arxiv", "c4", "github", "flan/cot"];

/// Vocabulary sizes on both sides of the u16/u32 boundary.
const VOCABS: [u32; 4] = [300, 65_536, 65_537, 200_000];

/// A random corpus description: layout, vocabulary, shard size and examples.
struct Case {
    layout: Layout,
    vocab: u32,
    max_shard_tokens: u64,
    examples: Vec<Written>,
}

fn random_case(rng: &mut Rng) -> Case {
    let vocab = VOCABS[rng.range(0, 3) as usize];
    let packed = rng.chance(1, 2);
    let layout = if packed {
        let seq_len = rng.range(1, 64) as u32;
        Layout::Packed {
            seq_len,
            prefix_len: rng.range(0, u64::from(seq_len)) as u32,
        }
    } else {
        Layout::Examples {
            max_input_len: rng.range(1, 48) as u32,
            max_target_len: rng.range(1, 16) as u32,
        }
    };
    let n = rng.range(1, 40);
    let examples = (0..n)
        .map(|_| {
            let (len, prefix_len) = match layout {
                Layout::Packed {
                    seq_len,
                    prefix_len,
                } => (seq_len, prefix_len),
                Layout::Examples {
                    max_input_len,
                    max_target_len,
                } => {
                    let input = rng.range(0, u64::from(max_input_len)) as u32;
                    let target = rng.range(u64::from(input == 0), u64::from(max_target_len)) as u32;
                    (input + target, input)
                }
            };
            // Ids concentrated at both ends of the vocabulary, where width bugs would show.
            let tokens = (0..len)
                .map(|_| {
                    let id = rng.range(0, u64::from(vocab) - 1) as u32;
                    if rng.chance(1, 4) {
                        vocab - 1
                    } else {
                        id
                    }
                })
                .collect();
            let doc_starts = (1..len).filter(|_| rng.chance(1, 8)).collect();
            Written {
                tokens,
                prefix_len,
                source: SOURCES[rng.range(0, 3) as usize].to_string(),
                doc_starts,
                origin: rng
                    .chance(3, 4)
                    .then(|| format!("part-{}.jsonl:{}", rng.range(0, 9), rng.range(1, 999))),
            }
        })
        .collect();
    Case {
        layout,
        vocab,
        max_shard_tokens: rng.range(8, 400),
        examples,
    }
}

/// The shard each example should land in: the writer closes a shard before an example would take
/// it past `max` tokens, and a shard always takes at least one example.
fn expected_shards(examples: &[Written], max: u64) -> Vec<usize> {
    let (mut shard, mut tokens, mut rows) = (0usize, 0u64, 0usize);
    examples
        .iter()
        .map(|ex| {
            let len = ex.tokens.len() as u64;
            if rows > 0 && tokens + len > max {
                shard += 1;
                tokens = 0;
                rows = 0;
            }
            tokens += len;
            rows += 1;
            shard
        })
        .collect()
}

#[test]
fn random_corpora_round_trip() {
    // (kind, dtype) pairs and rollovers the seeds covered: the property is only as good as them.
    let mut covered = std::collections::BTreeSet::new();
    let mut rollovers = 0;
    for seed in 0..24u64 {
        let mut rng = Rng::new(seed);
        let case = random_case(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_corpus(
            dir.path(),
            case.layout,
            case.vocab,
            case.max_shard_tokens,
            &case.examples,
        );
        let ctx = format!("seed {seed}");
        assert_eq!(
            manifest.token_dtype,
            TokenDtype::for_vocab(case.vocab),
            "{ctx}"
        );
        let want_dtype = if case.vocab <= 65_536 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        };
        assert_eq!(manifest.token_dtype, want_dtype, "{ctx}");
        assert_eq!(manifest.kind, case.layout.kind(), "{ctx}");

        let corpus = Corpus::open(dir.path()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(corpus.len(), case.examples.len() as u64, "{ctx}");
        let shards = expected_shards(&case.examples, case.max_shard_tokens);
        assert_eq!(corpus.num_shards(), shards.last().unwrap() + 1, "{ctx}");
        let mut rows = vec![0usize; corpus.num_shards()];
        for (i, want) in case.examples.iter().enumerate() {
            let ex = corpus.example(i as u64).unwrap();
            assert_eq!(ex.tokens.to_vec(), want.tokens, "{ctx} example {i}");
            assert_eq!(ex.prefix_len, want.prefix_len, "{ctx} example {i}");
            assert_eq!(ex.source, want.source, "{ctx} example {i}");
            assert_eq!(
                ex.doc_starts,
                want.doc_starts.as_slice(),
                "{ctx} example {i}"
            );
            assert_eq!(ex.origin, want.origin.as_deref(), "{ctx} example {i}");
            assert_eq!(ex.shard, shards[i], "{ctx} example {i}");
            assert_eq!(ex.row, rows[ex.shard], "{ctx} example {i}");
            rows[ex.shard] += 1;
            let by_shard = corpus.shard_example(ex.shard, ex.row).unwrap();
            assert_eq!(by_shard.tokens, ex.tokens, "{ctx} example {i}");
        }
        for (s, entry) in manifest.shards.iter().enumerate() {
            assert!(
                entry.tokens <= case.max_shard_tokens || entry.examples == 1,
                "{ctx}: shard {s} holds {} tokens over the {} limit",
                entry.tokens,
                case.max_shard_tokens
            );
            assert_eq!(entry.examples, rows[s] as u64, "{ctx} shard {s}");
        }
        let stored: u64 = manifest.shards.iter().map(|s| s.tokens).sum();
        assert_eq!(
            stored,
            manifest.counts.tokens + manifest.packing.padding_tokens,
            "{ctx}"
        );
        let report = corpus
            .verify(|_| {})
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(report.shards, corpus.num_shards(), "{ctx}");
        assert_eq!(report.examples, corpus.len(), "{ctx}");
        assert_eq!(report.tokens, stored, "{ctx}");
        covered.insert((manifest.kind.name(), manifest.token_dtype.name()));
        rollovers += usize::from(corpus.num_shards() > 1);
        let past_end = corpus.example(corpus.len());
        assert!(
            matches!(past_end, Err(SchemaError::OutOfRange { .. })),
            "{ctx}"
        );
    }
    assert_eq!(covered.len(), 4, "seeds covered only {covered:?}");
    assert!(
        rollovers >= 5,
        "only {rollovers} seeds rolled over to a second shard"
    );
}

/// Five packed examples of 8 tokens with a 20-token shard limit: they roll over into three
/// shards, and each reads back with its tokens, prefix, document starts and source.
#[test]
fn packed_round_trip_with_rollover() {
    let dir = tempfile::tempdir().unwrap();
    let options = WriterOptions {
        layout: Layout::Packed {
            seq_len: 8,
            prefix_len: 4,
        },
        vocab_size: 1000,
        max_shard_tokens: 20,
    };
    let mut w = CorpusWriter::create(dir.path(), options).unwrap();
    place_tokenizer(dir.path(), 1000);
    let mut all = vec![];
    for i in 0..5u32 {
        let toks: Vec<u32> = (0..8).map(|j| (i * 8 + j) % 1000).collect();
        let source = if i % 2 == 0 { "arxiv" } else { "c4" };
        let meta = ExampleMeta {
            source,
            prefix_len: 4,
            doc_starts: &[3],
            origin: Some("a.jsonl:1"),
        };
        w.push(&toks, meta).unwrap();
        all.push(toks);
    }
    let counts = Counts {
        records_read: 1,
        kept: 1,
        tokens: 40,
        examples: 5,
        ..Default::default()
    };
    let info = CorpusInfo {
        counts,
        ..info_for(1000, &[])
    };
    let m = w.finish(info).unwrap();
    assert_eq!(m.shards.len(), 3);
    let c = Corpus::open(dir.path()).unwrap();
    assert_eq!(c.len(), 5);
    for (i, want) in all.iter().enumerate() {
        let ex = c.example(i as u64).unwrap();
        assert_eq!(&ex.tokens.to_vec(), want);
        assert_eq!(ex.prefix_len, 4);
        assert_eq!(ex.doc_starts, &[3]);
        assert_eq!(ex.source, if i % 2 == 0 { "arxiv" } else { "c4" });
    }
    assert!(c.example(5).is_err());
    let report = c.verify(|_| {}).unwrap();
    assert_eq!(report.examples, 5);
}

#[test]
fn an_example_larger_than_the_shard_limit_gets_a_shard_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::Examples {
        max_input_len: 100,
        max_target_len: 100,
    };
    let lengths = [3u32, 150, 2, 2, 9];
    let examples: Vec<Written> = lengths
        .iter()
        .map(|&n| Written {
            tokens: (0..n).collect(),
            prefix_len: n / 2,
            source: "flan".into(),
            doc_starts: vec![],
            origin: None,
        })
        .collect();
    let manifest = write_corpus(dir.path(), layout, 1000, 10, &examples);
    let per_shard: Vec<u64> = manifest.shards.iter().map(|s| s.tokens).collect();
    assert_eq!(per_shard, vec![3, 150, 4, 9]);
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_eq!(corpus.example(1).unwrap().tokens.len(), 150);
    corpus.verify(|_| {}).unwrap();
}

#[test]
fn the_same_examples_write_the_same_bytes() {
    let mut rng = Rng::new(7);
    let case = random_case(&mut rng);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for dir in [a.path(), b.path()] {
        write_corpus(
            dir,
            case.layout,
            case.vocab,
            case.max_shard_tokens,
            &case.examples,
        );
    }
    let (sa, sb) = (snapshot(a.path()), snapshot(b.path()));
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (name, bytes) in &sa {
        assert!(
            bytes == &sb[name],
            "{name} differs between two identical writes"
        );
    }
}

#[test]
fn rewriting_a_directory_replaces_the_old_corpus_entirely() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 9); // five shards
    let fresh = tempfile::tempdir().unwrap();
    small_packed(fresh.path(), 3); // two shards
    small_packed(dir.path(), 3);
    assert_eq!(snapshot(dir.path()), snapshot(fresh.path()));
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_eq!(corpus.len(), 3);
    corpus.verify(|_| {}).unwrap();
}

#[test]
fn token_header_has_the_documented_layout() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 3);
    let bytes = std::fs::read(shard_path(dir.path(), 0, true)).unwrap();
    assert_eq!(&bytes[0..8], b"RPTOKENS");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 16);
    assert_eq!(&bytes[24..32], &[0u8; 8]);
    assert_eq!(bytes.len(), HEADER_BYTES + 16 * 2);
    // Token 9 (second example, position 1) is id 9, little-endian.
    assert_eq!(&bytes[HEADER_BYTES + 18..HEADER_BYTES + 20], &[9, 0]);
    let manifest = load_manifest(dir.path());
    assert_eq!(manifest.header_bytes as usize, HEADER_BYTES);
    assert_eq!(manifest.shards[0].tokens_file, "shard-00000.tokens");
    assert_eq!(manifest.shards[0].index_file, "shard-00000.index.arrow");
}

#[test]
fn index_schema_has_the_documented_columns() {
    let schema = index_schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "offset",
            "length",
            "prefix_len",
            "source",
            "doc_starts",
            "origin"
        ]
    );
    assert_eq!(
        schema
            .metadata()
            .get("redpack.format_version")
            .map(String::as_str),
        Some("1")
    );
}

#[test]
fn writer_rejects_examples_that_break_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let options = WriterOptions {
        layout: Layout::Examples {
            max_input_len: 4,
            max_target_len: 2,
        },
        vocab_size: 10,
        max_shard_tokens: 100,
    };
    let mut w = CorpusWriter::create(dir.path(), options).unwrap();
    let meta = |prefix_len, doc_starts| ExampleMeta {
        source: "s",
        prefix_len,
        doc_starts,
        origin: None,
    };
    let cases: [(&[u32], ExampleMeta<'_>, &str); 5] = [
        (&[], meta(0, &[]), "length 0"),
        (&[1; 7], meta(4, &[]), "exceeds the layout's maximum 6"),
        (&[1, 2], meta(3, &[]), "prefix_len 3 exceeds length 2"),
        (
            &[1, 10],
            meta(1, &[]),
            "token id 10 is not below vocab_size 10",
        ),
        (&[1, 2, 3], meta(1, &[2, 1]), "doc_starts [2, 1]"),
    ];
    for (tokens, meta, want) in cases {
        let err = w.push(tokens, meta).unwrap_err();
        assert!(matches!(err, SchemaError::InvalidExample(_)), "{err}");
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    }
    let packed = WriterOptions {
        layout: Layout::Packed {
            seq_len: 4,
            prefix_len: 5,
        },
        vocab_size: 10,
        max_shard_tokens: 100,
    };
    let Err(err) = CorpusWriter::create(dir.path(), packed) else {
        panic!("a prefix longer than the sequence must be refused");
    };
    assert!(err.to_string().contains("prefix_len <= seq_len"), "{err}");
}
