//! The default view of `redpack inspect`: what a corpus holds and where its input records went,
//! computed once into a [`Summary`] that is printed either as text or as JSON.

use std::collections::BTreeMap;
use std::io::{self, Write};

use redpack_schemas::{
    Corpus, Counts, InputEntry, Kind, Layout, PackingStats, SchemaError, TokenDtype, TokenizerInfo,
};
use serde::Serialize;

use super::histogram::Histogram;
use super::numbers::thousands;

/// Buckets in the length histograms.
const BINS: usize = 12;

/// Everything the summary shows. Serialized as is for `--json`; field names are stable because
/// scripts read them (the manifest's own objects keep the manifest's names).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dir: String,
    pub format_version: u32,
    pub kind: Kind,
    pub layout: Layout,
    pub token_dtype: TokenDtype,
    pub header_bytes: u32,
    pub tokenizer: TokenizerInfo,
    pub shards: usize,
    /// Token and index files together.
    pub bytes_on_disk: u64,
    pub examples: u64,
    /// Tokens in the shards, padding included.
    pub tokens_stored: u64,
    /// `packing.padding_tokens / tokens_stored` (0 for an empty corpus).
    pub padding_share: f64,
    /// Document boundaries inside examples (the `doc_starts` entries), summed over the corpus.
    pub inner_document_starts: u64,
    /// Examples per source, counted from the index.
    pub examples_by_source: BTreeMap<String, u64>,
    pub counts: Counts,
    pub sources: BTreeMap<String, Counts>,
    pub packing: PackingStats,
    pub length: Histogram,
    pub prefix_length: Histogram,
    /// `length - prefix_length`: the decoder target (RedLLM) or FLAN target.
    pub target_length: Histogram,
    pub inputs: Vec<InputEntry>,
}

impl Summary {
    /// Reads the manifest and every index row (not the tokens) of `corpus`.
    pub fn of(corpus: &Corpus) -> Result<Summary, SchemaError> {
        let manifest = corpus.manifest();
        let n = usize::try_from(corpus.len()).unwrap_or(usize::MAX);
        let (mut lengths, mut prefixes, mut targets) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut examples_by_source: BTreeMap<String, u64> = BTreeMap::new();
        let mut inner_document_starts = 0u64;
        for i in 0..corpus.len() {
            let ex = corpus.example(i)?;
            let len = ex.tokens.len() as u32;
            lengths.push(len);
            prefixes.push(ex.prefix_len);
            targets.push(len.saturating_sub(ex.prefix_len));
            inner_document_starts += ex.doc_starts.len() as u64;
            match examples_by_source.get_mut(ex.source) {
                Some(count) => *count += 1,
                None => {
                    examples_by_source.insert(ex.source.to_string(), 1);
                }
            }
        }
        let tokens_stored: u64 = manifest.shards.iter().map(|s| s.tokens).sum();
        let bytes_on_disk = manifest
            .shards
            .iter()
            .map(|s| s.tokens_bytes + s.index_bytes)
            .sum();
        let padding_share = if tokens_stored == 0 {
            0.0
        } else {
            manifest.packing.padding_tokens as f64 / tokens_stored as f64
        };
        Ok(Summary {
            dir: corpus.dir().display().to_string(),
            format_version: manifest.format_version,
            kind: manifest.kind,
            layout: manifest.layout,
            token_dtype: manifest.token_dtype,
            header_bytes: manifest.header_bytes,
            tokenizer: manifest.tokenizer.clone(),
            shards: corpus.num_shards(),
            bytes_on_disk,
            examples: corpus.len(),
            tokens_stored,
            padding_share,
            inner_document_starts,
            examples_by_source,
            counts: manifest.counts.clone(),
            sources: manifest.sources.clone(),
            packing: manifest.packing.clone(),
            length: Histogram::new(&lengths, BINS),
            prefix_length: Histogram::new(&prefixes, BINS),
            target_length: Histogram::new(&targets, BINS),
            inputs: manifest.inputs.clone(),
        })
    }

    /// Writes the readable summary.
    pub fn render(&self, out: &mut dyn Write) -> io::Result<()> {
        let layout = match self.layout {
            Layout::Packed {
                seq_len,
                prefix_len,
            } => {
                format!("packed: {seq_len}-token sequences split at {prefix_len} (prefix | target)")
            }
            Layout::Examples {
                max_input_len,
                max_target_len,
            } => {
                format!("examples: input ≤ {max_input_len} tokens, then target ≤ {max_target_len}")
            }
        };
        let t = &self.tokenizer;
        let sha = t.sha256.get(..12).unwrap_or(&t.sha256);
        writeln!(
            out,
            "corpus     {} (redpack-corpus v{})",
            self.dir, self.format_version
        )?;
        writeln!(out, "kind       {layout}")?;
        writeln!(
            out,
            "tokenizer  {} sha256 {sha}…  vocab {}",
            t.file,
            thousands(u64::from(t.vocab_size))
        )?;
        writeln!(
            out,
            "           eod {} {:?}  pad {} {:?}",
            t.eod_id, t.eod_token, t.pad_id, t.pad_token
        )?;
        writeln!(
            out,
            "storage    {}, {} tokens, {}-byte headers, {}",
            plural(self.shards as u64, "shard"),
            self.token_dtype.name(),
            self.header_bytes,
            human_bytes(self.bytes_on_disk)
        )?;
        writeln!(out, "examples   {}", thousands(self.examples))?;
        writeln!(
            out,
            "tokens     {} stored = {} from records + {} padding ({:.2}% padding)",
            thousands(self.tokens_stored),
            thousands(self.counts.tokens),
            thousands(self.packing.padding_tokens),
            100.0 * self.padding_share
        )?;
        self.render_packing(out)?;
        writeln!(out)?;
        self.render_counts(out)?;
        writeln!(out)?;
        writeln!(out, "example length (tokens)")?;
        self.length.render(out, 2)?;
        writeln!(out, "prefix length (tokens before the split)")?;
        self.prefix_length.render(out, 2)?;
        if self.kind == Kind::Examples {
            writeln!(out, "target length (tokens after the split)")?;
            self.target_length.render(out, 2)?;
        }
        writeln!(out)?;
        self.render_inputs(out)
    }

    fn render_packing(&self, out: &mut dyn Write) -> io::Result<()> {
        let p = &self.packing;
        let docs = thousands(p.documents);
        match self.kind {
            Kind::Packed => writeln!(
                out,
                "packing    {docs} documents, {} boundaries inside sequences; final partial: {} tokens dropped ({}), {} padded",
                thousands(self.inner_document_starts),
                thousands(p.dropped_tokens),
                plural(p.dropped_sequences, "sequence"),
                thousands(p.padding_tokens)
            ),
            Kind::Examples => {
                let share = |n: u64| {
                    if self.examples == 0 {
                        0.0
                    } else {
                        100.0 * n as f64 / self.examples as f64
                    }
                };
                writeln!(
                    out,
                    "truncation {} inputs ({:.2}%) and {} targets ({:.2}%) cut to the maximum length; {docs} pairs",
                    thousands(p.truncated_inputs),
                    share(p.truncated_inputs),
                    thousands(p.truncated_targets),
                    share(p.truncated_targets)
                )
            }
        }
    }

    fn render_counts(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(counts_table(&self.counts, &self.sources).as_bytes())?;
        if self.counts.rejected_by_reason.is_empty() {
            return writeln!(out, "rejected by reason: none");
        }
        writeln!(out, "rejected by reason")?;
        for (reason, n) in &self.counts.rejected_by_reason {
            let by_source: Vec<String> = self
                .sources
                .iter()
                .filter_map(|(name, c)| {
                    let k = c.rejected_by_reason.get(reason).copied().unwrap_or(0);
                    (k > 0).then(|| format!("{name} {}", thousands(k)))
                })
                .collect();
            writeln!(
                out,
                "  {reason:<24} {:>10}   {}",
                thousands(*n),
                by_source.join(", ")
            )?;
        }
        Ok(())
    }

    fn render_inputs(&self, out: &mut dyn Write) -> io::Result<()> {
        let faulty: Vec<&InputEntry> = self.inputs.iter().filter(|i| i.fault.is_some()).collect();
        let bytes: u64 = self.inputs.iter().map(|i| i.bytes).sum();
        writeln!(
            out,
            "inputs     {} files, {} read; {} with faults",
            self.inputs.len(),
            human_bytes(bytes),
            faulty.len()
        )?;
        for input in faulty {
            let fault = input.fault.as_deref().unwrap_or_default();
            // Faults usually name their file already; do not say it twice.
            if fault.starts_with(&input.path) {
                writeln!(out, "  {fault}")?;
            } else {
                writeln!(out, "  {}: {fault}", input.path)?;
            }
        }
        Ok(())
    }
}

/// `1234567` → `1,234,567`.
/// The record-accounting table: one `all` row, then one indented row per source. Shared by
/// `inspect` and the end-of-build summary so both read the same way.
pub fn counts_table(counts: &Counts, sources: &BTreeMap<String, Counts>) -> String {
    use std::fmt::Write as _;
    let name_width = sources
        .keys()
        .map(|k| k.chars().count() + 2)
        .chain([7])
        .max()
        .unwrap_or(7);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<name_width$} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>14} {:>10}",
        "records",
        "read",
        "kept",
        "exact dup",
        "near dup",
        "filtered",
        "rejected",
        "tokens",
        "examples"
    );
    let mut row = |name: &str, c: &Counts| {
        let _ = writeln!(
            out,
            "{name:<name_width$} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>14} {:>10}",
            thousands(c.records_read),
            thousands(c.kept),
            thousands(c.exact_duplicates),
            thousands(c.near_duplicates),
            thousands(c.filtered),
            thousands(c.rejected),
            thousands(c.tokens),
            thousands(c.examples)
        );
    };
    row("all", counts);
    for (name, c) in sources {
        row(&format!("  {name}"), c);
    }
    out
}

/// `1 shard`, `3 shards`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", thousands(n))
    }
}

/// Bytes in binary units with one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
