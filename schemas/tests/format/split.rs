//! The train/evaluation split in the manifest: optional (manifests without it read and write as
//! before), and checked by `verify` against the kept documents and the packed ones.

use std::collections::BTreeMap;

use redpack_schemas::*;

use crate::harness::*;

/// The training side of a split of `small_packed`'s 4 kept documents (2 arxiv, 2 c4): one
/// arxiv document held out, so this corpus packed 3.
fn train_side() -> Split {
    Split {
        split: SplitName::Train,
        counterpart: "eval".into(),
        selection: "test".into(),
        key: 7,
        documents: SplitCounts { train: 3, eval: 1 },
        sources: BTreeMap::from([
            ("arxiv".to_string(), SplitCounts { train: 1, eval: 1 }),
            ("c4".to_string(), SplitCounts { train: 2, eval: 0 }),
        ]),
    }
}

fn with_split(dir: &std::path::Path, split: Split, documents: u64) -> Result<VerifyReport> {
    small_packed(dir, 4);
    let mut manifest = load_manifest(dir);
    manifest.split = Some(split);
    manifest.packing.documents = documents;
    save_manifest(dir, &manifest);
    Corpus::open(dir)?.verify(|_| {})
}

#[test]
fn a_manifest_without_a_split_reads_and_writes_as_before() {
    let dir = tempfile::tempdir().unwrap();
    small_packed(dir.path(), 4);
    let bytes = std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(value.get("split").is_none(), "no split key without a split");
    let manifest = load_manifest(dir.path());
    assert_eq!(manifest.split, None);
    assert_eq!(manifest.to_json_bytes().unwrap(), bytes);
}

#[test]
fn a_consistent_split_verifies_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    with_split(dir.path(), train_side(), 3).unwrap();
    let manifest = load_manifest(dir.path());
    assert_eq!(manifest.split, Some(train_side()));
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(value["split"]["split"], "train");
    assert_eq!(value["split"]["counterpart"], "eval");
}

#[test]
fn an_inconsistent_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |split: Split, documents: u64, words: &[&str]| {
        let err = with_split(dir.path(), split, documents).expect_err("must be refused");
        let msg = err.to_string();
        assert!(msg.contains("manifest.json"), "{msg}");
        for word in words {
            assert!(msg.contains(word), "{msg} lacks {word:?}");
        }
    };
    let mut split = train_side();
    split.documents.eval = 2;
    refused(split, 3, &["train 3 + eval 2 != kept 4"]);
    let mut split = train_side();
    split.sources.get_mut("c4").unwrap().eval = 1;
    split.sources.get_mut("c4").unwrap().train = 2;
    refused(split, 3, &["source c4", "!= kept 2"]);
    let mut split = train_side();
    split.sources.remove("c4");
    refused(split, 3, &["source c4 has 2 kept documents"]);
    let mut split = train_side();
    split.sources.get_mut("arxiv").unwrap().train = 2;
    split.sources.get_mut("arxiv").unwrap().eval = 0;
    refused(split, 3, &["do not add up"]);
    refused(
        train_side(),
        4,
        &["train split holds 3 documents", "packing.documents says 4"],
    );
    let mut eval = train_side();
    eval.split = SplitName::Eval;
    eval.counterpart = "..".into();
    refused(eval, 3, &["eval split holds 1 documents"]);
    // The counterpart is always the other side's folder, never a path elsewhere.
    let mut astray = train_side();
    astray.counterpart = "../../elsewhere".into();
    refused(astray, 3, &["split.counterpart", "is not \"eval\""]);
}

#[test]
fn the_counterpart_must_be_the_other_side_of_the_same_split() {
    let dir = tempfile::tempdir().unwrap();
    // Without its counterpart (copied alone) a side still verifies.
    with_split(dir.path(), train_side(), 3).unwrap();
    let eval_dir = dir.path().join("eval");
    std::fs::create_dir_all(&eval_dir).unwrap();
    let mut eval = train_side();
    eval.split = SplitName::Eval;
    eval.counterpart = "..".into();
    with_split(&eval_dir, eval.clone(), 1).unwrap();
    Corpus::open(dir.path()).unwrap().verify(|_| {}).unwrap();
    let mut manifest = load_manifest(&eval_dir);
    manifest.split.as_mut().unwrap().key = 8;
    save_manifest(&eval_dir, &manifest);
    let err = Corpus::open(dir.path())
        .unwrap()
        .verify(|_| {})
        .expect_err("a different split must be refused");
    assert!(err.to_string().contains("counterpart"), "{err}");
}
