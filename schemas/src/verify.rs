//! Full verification of a corpus: checksums of every file and every structural invariant.

use std::collections::HashMap;

use crate::error::{Result, SchemaError};
use crate::manifest::{Layout, MANIFEST_FILE};
use crate::reader::Corpus;
use crate::writer::hash_file;

/// What `verify` checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub shards: usize,
    pub examples: u64,
    pub tokens: u64,
    pub bytes_hashed: u64,
}

/// The ids of a `tokenizer.json`: its model's vocabulary (a token → id map, or a Unigram list
/// whose index is the id) and its added tokens.
fn tokenizer_ids(doc: &serde_json::Value) -> Option<HashMap<String, u64>> {
    let mut ids = HashMap::new();
    match doc.get("model")?.get("vocab")? {
        serde_json::Value::Object(map) => {
            for (token, id) in map {
                ids.insert(token.clone(), id.as_u64()?);
            }
        }
        serde_json::Value::Array(items) => {
            for (id, item) in items.iter().enumerate() {
                ids.insert(item.get(0)?.as_str()?.to_string(), id as u64);
            }
        }
        _ => return None,
    }
    for added in doc.get("added_tokens")?.as_array()? {
        ids.insert(
            added.get("content")?.as_str()?.to_string(),
            added.get("id")?.as_u64()?,
        );
    }
    Some(ids)
}

impl Corpus {
    /// Checks the tokenizer copy against the manifest: its sha256, the vocabulary size (largest
    /// id + 1) and the ids of the EOD and padding tokens. Returns the bytes hashed.
    fn verify_tokenizer(&self) -> Result<u64> {
        let info = &self.manifest().tokenizer;
        let path = self.tokenizer_path();
        crate::reader::check_inside(self.dir(), &path)?;
        let (bytes, got) = hash_file(&path)?;
        if got != info.sha256 {
            return Err(SchemaError::corrupt(
                &path,
                format!("sha256 {got} does not match the manifest's {}", info.sha256),
            ));
        }
        let text = std::fs::read(&path).map_err(|e| SchemaError::io(&path, e))?;
        let ids = serde_json::from_slice(&text)
            .ok()
            .and_then(|doc: serde_json::Value| tokenizer_ids(&doc))
            .ok_or_else(|| {
                SchemaError::corrupt(&path, "not a tokenizer.json with a readable vocabulary")
            })?;
        let vocab = ids.values().max().map_or(0, |&m| m.saturating_add(1));
        let manifest_path = self.dir().join(MANIFEST_FILE);
        if vocab != u64::from(info.vocab_size) {
            return Err(SchemaError::corrupt(
                &manifest_path,
                format!(
                    "tokenizer.vocab_size {} disagrees with {}, whose largest id is {}",
                    info.vocab_size,
                    path.display(),
                    vocab.saturating_sub(1)
                ),
            ));
        }
        for (field, token, id) in [
            ("eod", &info.eod_token, info.eod_id),
            ("pad", &info.pad_token, info.pad_id),
        ] {
            let actual = ids.get(token.as_str()).copied();
            if actual != Some(u64::from(id)) {
                return Err(SchemaError::corrupt(
                    &manifest_path,
                    format!(
                        "tokenizer.{field}_id {id} disagrees with {}, where {token:?} has id {}",
                        path.display(),
                        actual.map_or("none".to_string(), |a| a.to_string())
                    ),
                ));
            }
        }
        Ok(bytes)
    }

    /// Recomputes every checksum and checks every invariant: offsets and lengths within the token
    /// file, examples not overlapping, prefix ≤ length, the packed layout, document starts inside
    /// their example, token ids below the vocabulary size, and the counts against the manifest.
    /// Stops at the first problem, naming the file. `progress` is called after each shard.
    pub fn verify(&self, mut progress: impl FnMut(usize)) -> Result<VerifyReport> {
        let manifest = self.manifest();
        let manifest_path = self.dir().join(MANIFEST_FILE);
        let vocab = manifest.tokenizer.vocab_size;
        let mut report = VerifyReport::default();
        report.bytes_hashed += self.verify_tokenizer()?;
        for (s, entry) in manifest.shards.iter().enumerate() {
            let shard = self.shard(s);
            for (path, want) in [
                (&shard.tokens_path, &entry.tokens_sha256),
                (&shard.index_path, &entry.index_sha256),
            ] {
                let (bytes, got) = hash_file(path)?;
                report.bytes_hashed += bytes;
                if &got != want {
                    return Err(SchemaError::corrupt(
                        path,
                        format!("sha256 {got} does not match the manifest's {want}"),
                    ));
                }
            }
            let tokens = shard.tokens()?;
            if let Some(pos) = tokens.iter().position(|t| t >= vocab) {
                return Err(SchemaError::corrupt(
                    &shard.tokens_path,
                    format!(
                        "token {pos} has id {} which is not below the vocabulary size {vocab}",
                        tokens.get(pos).unwrap_or(0)
                    ),
                ));
            }
            let mut covered_to = 0u64;
            for row in 0..entry.examples as usize {
                let ex = self.shard_example(s, row)?;
                let bad = |what: String| {
                    SchemaError::corrupt(&shard.index_path, format!("row {row}: {what}"))
                };
                let offset = shard.index.offset.values()[row];
                if offset < covered_to {
                    return Err(bad(format!(
                        "offset {offset} overlaps the previous example (which ends at {covered_to})"
                    )));
                }
                covered_to = offset.saturating_add(ex.tokens.len() as u64);
                if let Layout::Packed {
                    seq_len,
                    prefix_len,
                } = manifest.layout
                {
                    if ex.tokens.len() as u64 != u64::from(seq_len) || ex.prefix_len != prefix_len {
                        return Err(bad(format!(
                            "length {} / prefix {} break the packed layout ({seq_len} / {prefix_len})",
                            ex.tokens.len(),
                            ex.prefix_len
                        )));
                    }
                } else if ex.tokens.len() as u64 > manifest.layout.max_len() {
                    return Err(bad(format!(
                        "length {} exceeds the layout's maximum {}",
                        ex.tokens.len(),
                        manifest.layout.max_len()
                    )));
                }
                let increasing = ex.doc_starts.windows(2).all(|w| w[0] < w[1]);
                let inside = ex
                    .doc_starts
                    .iter()
                    .all(|&p| p > 0 && (p as usize) < ex.tokens.len());
                if !increasing || !inside {
                    return Err(bad(format!(
                        "doc_starts {:?} are not increasing inside the example",
                        ex.doc_starts
                    )));
                }
            }
            if covered_to > entry.tokens {
                return Err(SchemaError::corrupt(
                    &shard.index_path,
                    "examples run past the token file",
                ));
            }
            report.shards += 1;
            report.examples = report.examples.saturating_add(entry.examples);
            report.tokens = report.tokens.saturating_add(entry.tokens);
            progress(s);
        }
        let counts = &manifest.counts;
        let disagree = |what: String| SchemaError::corrupt(&manifest_path, what);
        counts
            .check_invariant()
            .map_err(|e| disagree(format!("counts: {e}")))?;
        if report.examples != counts.examples {
            return Err(disagree(format!(
                "shards hold {} examples; counts.examples says {}",
                report.examples, counts.examples
            )));
        }
        let stored = counts
            .tokens
            .saturating_add(manifest.packing.padding_tokens);
        if report.tokens != stored {
            return Err(disagree(format!(
                "shards hold {} tokens; counts.tokens + packing.padding_tokens = {stored}",
                report.tokens
            )));
        }
        let mut sum = crate::manifest::Counts::default();
        for (name, c) in &manifest.sources {
            c.check_invariant()
                .map_err(|e| disagree(format!("sources.{name}: {e}")))?;
            sum.add(c);
        }
        if !manifest.sources.is_empty()
            && (sum.records_read != counts.records_read
                || sum.kept != counts.kept
                || sum.tokens != counts.tokens)
        {
            return Err(disagree(
                "per-source counts do not add up to the overall counts".to_string(),
            ));
        }
        if let Some(split) = &manifest.split {
            split
                .check_invariant(counts, &manifest.sources)
                .map_err(disagree)?;
            if manifest.packing.documents != split.this_side() {
                return Err(disagree(format!(
                    "the {} split holds {} documents; packing.documents says {}",
                    split.split.name(),
                    split.this_side(),
                    manifest.packing.documents
                )));
            }
            // The other side, when it is there (a corpus may be copied without it): it must
            // be the other side of the same split.
            let other_dir = self.dir().join(&split.counterpart);
            if other_dir.join(MANIFEST_FILE).exists() {
                let other = crate::manifest::Manifest::load(&other_dir)?;
                let agrees = other.split.as_ref().is_some_and(|o| {
                    o.split != split.split
                        && o.documents == split.documents
                        && o.sources == split.sources
                        && o.key == split.key
                });
                if !agrees {
                    return Err(disagree(format!(
                        "the split's counterpart {} is not the other side of the same split",
                        other_dir.display()
                    )));
                }
            }
        }
        Ok(report)
    }
}
