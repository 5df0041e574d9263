//! A first round trip through writer and reader.

use std::collections::BTreeMap;

use redpack_schemas::*;

fn info(vocab: u32, counts: Counts) -> CorpusInfo {
    CorpusInfo {
        tokenizer: TokenizerInfo {
            file: "tokenizer.json".into(),
            sha256: "00".into(),
            vocab_size: vocab,
            eod_id: 0,
            pad_id: 1,
            eod_token: "[EOD]".into(),
            pad_token: "[PAD]".into(),
        },
        build: serde_json::json!({}),
        inputs: vec![],
        counts,
        sources: BTreeMap::new(),
        packing: PackingStats::default(),
    }
}

#[test]
fn packed_round_trip_with_rollover() {
    let dir = tempfile::tempdir().unwrap();
    let options = WriterOptions {
        layout: Layout::Packed { seq_len: 8, prefix_len: 4 },
        vocab_size: 1000,
        max_shard_tokens: 20,
    };
    let mut w = CorpusWriter::create(dir.path(), options).unwrap();
    let mut all = vec![];
    for i in 0..5u32 {
        let toks: Vec<u32> = (0..8).map(|j| (i * 8 + j) % 1000).collect();
        w.push(&toks, ExampleMeta { source: if i % 2 == 0 { "arxiv" } else { "c4" }, prefix_len: 4, doc_starts: &[3], origin: Some("a.jsonl:1") }).unwrap();
        all.push(toks);
    }
    let counts = Counts { records_read: 1, kept: 1, tokens: 40, examples: 5, ..Default::default() };
    let m = w.finish(info(1000, counts)).unwrap();
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
