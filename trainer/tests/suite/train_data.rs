//! The data order and batch assembly: the seeded permutation, resuming from a cursor, padding of
//! examples corpora, and errors on bad examples.

use super::train_common;

use redpack_trainer::data::{
    open_corpus, Cursor, Loader, LoaderOptions, MemorySource, Order, OwnedExample, Permutation,
};
use train_common::{examples_corpus, packed_corpus, PAD};

#[test]
fn permutation_is_a_bijection_for_every_size() {
    for n in [1u64, 2, 3, 5, 16, 17, 100, 1000, 4097] {
        let p = Permutation::new(n, 42);
        let mut seen: Vec<u64> = (0..n).map(|i| p.get(i)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
    }
}

#[test]
fn permutation_depends_on_key_only() {
    let a: Vec<u64> = (0..50).map(|i| Permutation::new(50, 1).get(i)).collect();
    let b: Vec<u64> = (0..50).map(|i| Permutation::new(50, 1).get(i)).collect();
    let c: Vec<u64> = (0..50).map(|i| Permutation::new(50, 2).get(i)).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, (0..50).collect::<Vec<_>>(), "a shuffle moves things");
}

fn memory(n: usize) -> MemorySource {
    MemorySource {
        examples: (0..n)
            .map(|i| OwnedExample {
                tokens: vec![i as u32 + 10; 2 + i % 3],
                prefix_len: 1,
                source: format!("s{}", i % 2),
                doc_starts: Vec::new(),
            })
            .collect(),
    }
}

fn indices(loader: &mut Loader, batches: usize) -> Vec<(Vec<u64>, Cursor)> {
    (0..batches)
        .map(|_| {
            let b = loader.next_batch().unwrap().unwrap();
            (b.indices, b.cursor)
        })
        .collect()
}

#[test]
fn shuffled_order_is_seeded_and_resumable() {
    let options = LoaderOptions::new(3, Order::Shuffled { seed: 9 }, PAD);
    // 10 examples, 3 per batch: 8 batches cross two epoch boundaries.
    let mut a = Loader::spawn(Box::new(memory(10)), options.clone(), Cursor::default()).unwrap();
    let straight = indices(&mut a, 8);
    let mut b = Loader::spawn(Box::new(memory(10)), options.clone(), Cursor::default()).unwrap();
    assert_eq!(indices(&mut b, 8), straight, "same seed, same order");

    // Every epoch is a permutation of all examples.
    let flat: Vec<u64> = straight.iter().flat_map(|(i, _)| i.clone()).collect();
    for epoch in flat.chunks(10).take(2) {
        let mut sorted = epoch.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(flat[..10], flat[10..20], "each epoch has its own order");

    // Restarting from the cursor after batch 3 yields batches 4.. exactly.
    let cursor = straight[2].1;
    assert_eq!(
        cursor,
        Cursor {
            epoch: 0,
            position: 9
        }
    );
    let mut c = Loader::spawn(Box::new(memory(10)), options.clone(), cursor).unwrap();
    assert_eq!(indices(&mut c, 5), straight[3..].to_vec());

    let other = LoaderOptions::new(3, Order::Shuffled { seed: 10 }, PAD);
    let mut d = Loader::spawn(Box::new(memory(10)), other, Cursor::default()).unwrap();
    assert_ne!(indices(&mut d, 8), straight);
}

#[test]
fn sequential_single_epoch_ends_with_a_short_batch() {
    let options = LoaderOptions {
        epochs: Some(1),
        ..LoaderOptions::new(4, Order::Sequential, PAD)
    };
    let mut loader = Loader::spawn(Box::new(memory(10)), options, Cursor::default()).unwrap();
    let got: Vec<Vec<u64>> = std::iter::from_fn(|| loader.next_batch().unwrap())
        .map(|b| b.indices)
        .collect();
    assert_eq!(got, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
}

#[test]
fn examples_are_padded_with_their_prefix_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let data = examples_corpus(&dir.path().join("flan"), 6);
    let (corpus, summary) = open_corpus(&data).unwrap();
    assert_eq!(summary.examples, 6);
    let options = LoaderOptions {
        epochs: Some(1),
        ..LoaderOptions::new(3, Order::Sequential, PAD)
    };
    let mut loader = Loader::spawn(Box::new(corpus), options, Cursor::default()).unwrap();
    let batch = loader.next_batch().unwrap().unwrap().batch;
    // Example i: input 3 + i % 6, target 2 + i % 4.
    assert_eq!(batch.prefix_len, vec![3, 4, 5]);
    assert_eq!(batch.length, vec![5, 7, 9]);
    assert_eq!(batch.seq, 9);
    assert_eq!(batch.source, vec!["flan"; 3]);
    assert_eq!(
        &batch.tokens[5..9],
        &[PAD; 4],
        "row 0 is padded to the longest row"
    );
    assert_eq!(batch.row(0), &train_common::pattern(0, 5)[..]);
}

#[test]
fn prefix_override_skips_rows_too_short_to_score() {
    let options = LoaderOptions {
        epochs: Some(1),
        prefix_len_override: Some(3),
        ..LoaderOptions::new(10, Order::Sequential, PAD)
    };
    // Lengths are 2 + i % 3: only rows of length 4 have a token at position >= 3.
    let mut loader = Loader::spawn(Box::new(memory(10)), options, Cursor::default()).unwrap();
    let batch = loader.next_batch().unwrap().unwrap();
    assert_eq!(batch.indices, vec![2, 5, 8]);
    assert_eq!(batch.batch.prefix_len, vec![3, 3, 3]);
}

#[test]
fn bad_examples_are_reported_with_their_index() {
    let mut source = memory(4);
    source.examples[2].prefix_len = source.examples[2].tokens.len();
    let options = LoaderOptions {
        require_split: true,
        ..LoaderOptions::new(4, Order::Sequential, PAD)
    };
    let mut loader = Loader::spawn(Box::new(source), options, Cursor::default()).unwrap();
    let err = loader.next_batch().unwrap_err().to_string();
    assert!(
        err.contains("example 2") && err.contains("no encoder input or no target"),
        "{err}"
    );
}

#[test]
fn packed_corpus_rows_keep_the_shard_split() {
    let dir = tempfile::tempdir().unwrap();
    let data = packed_corpus(&dir.path().join("rp"), 5, 16);
    let (corpus, summary) = open_corpus(&data).unwrap();
    assert_eq!(summary.max_row_len(), 16);
    let mut loader = Loader::spawn(
        Box::new(corpus),
        LoaderOptions::new(2, Order::Shuffled { seed: 1 }, PAD),
        Cursor::default(),
    )
    .unwrap();
    let batch = loader.next_batch().unwrap().unwrap().batch;
    assert_eq!((batch.rows, batch.seq), (2, 16));
    assert_eq!(batch.prefix_len, vec![8, 8]);
    assert_eq!(batch.length, vec![16, 16]);
}

#[test]
fn missing_corpus_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_corpus(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn unlimited_epochs_with_nothing_to_score_fail_instead_of_spinning() {
    let options = LoaderOptions {
        prefix_len_override: Some(50),
        ..LoaderOptions::new(2, Order::Shuffled { seed: 3 }, PAD)
    };
    let mut loader = Loader::spawn(Box::new(memory(5)), options, Cursor::default()).unwrap();
    // Training would wait forever for a batch: an error that says why, not an end of data.
    let err = loader.next_batch().unwrap_err().to_string();
    assert!(
        err.contains("nothing to score") && err.contains("scored from position 50"),
        "{err}"
    );
    // With a number of epochs the data simply ends.
    let options = LoaderOptions {
        prefix_len_override: Some(50),
        epochs: Some(1),
        ..LoaderOptions::new(2, Order::Shuffled { seed: 3 }, PAD)
    };
    let mut loader = Loader::spawn(Box::new(memory(5)), options, Cursor::default()).unwrap();
    assert!(loader.next_batch().unwrap().is_none());
}

#[test]
fn trailing_padding_is_trimmed_and_empty_targets_skipped() {
    let row = |tokens: Vec<u32>| OwnedExample {
        tokens,
        prefix_len: 4,
        source: "web".into(),
        doc_starts: vec![5],
    };
    let source = MemorySource {
        examples: vec![
            row(vec![5, 6, 7, 8, 9, 10, PAD, PAD]),
            // A final sequence padded inside its input part: no target left for RedLLM.
            row(vec![5, 6, 7, PAD, PAD, PAD, PAD, PAD]),
            row(vec![5, 6, 7, 8, 9, 10, 11, 12]),
        ],
    };
    let options = LoaderOptions {
        epochs: Some(1),
        require_split: true,
        trim_trailing_padding: true,
        ..LoaderOptions::new(3, Order::Sequential, PAD)
    };
    let mut loader = Loader::spawn(Box::new(source), options, Cursor::default()).unwrap();
    let loaded = loader.next_batch().unwrap().unwrap();
    assert_eq!(loaded.indices, vec![0, 2]);
    assert_eq!(loaded.batch.length, vec![6, 8]);
    assert_eq!(loaded.batch.doc_starts, vec![vec![5], vec![5]]);
}
