//! Stage `finish` (one worker): gather every unit's counts, pack the kept documents' tokens in
//! input order (or in the seeded shuffle order) into shards, and write the manifest last.
//!
//! The shuffle is an external sort of one small record per document, `(key, index, file,
//! offset)` with `key = xxh3(index, seed)` over the documents' input-order index, so it needs
//! no more memory than the budget whatever the corpus size; documents are then read back from
//! the memory-mapped scratch files in key order.
//!
//! With `eval_docs`, a first pass over the documents' headers picks the held-out documents
//! (see [`super::split`]); the training corpus skips them (the shuffle keys stay those of the
//! kept documents' input-order index, so the training documents keep their relative order), and
//! they are packed, in input order, into the evaluation corpus in `OUT/eval/`, whose manifest is
//! written before the training manifest (still the build's commit point).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use redpack_schemas::{
    atomic, CorpusInfo, CorpusWriter, Counts, ExampleMeta, InputEntry, PackingStats, SchemaError,
    Split, SplitCounts, SplitName, TokenizerInfo, WriterOptions, MANIFEST_FILE,
};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::config::{BuildSettings, PackSettings};
use super::progress;
use super::rejects::{RejectSampler, REJECTS_FILE};
use super::report::{BuildReport, EvalReport, Throughput};
use super::scan::ScanMeta;
use super::split::{self, EvalSet, Selector, EVAL_DIR, SELECTION};
use super::tally::Tally;
use super::tokenize_stage::{decode_doc, TokensMeta, DOC_HEADER};
use super::types::{BuildError, BuildOptions};
use super::work::{read_json, Plan, Stage, WorkDir};
use crate::extsort::{read_u32, read_u64, SortRecord, Sorter};
use crate::pack::{ExamplePacker, ExampleSink, Packer, SequencePacker, SourceTally};
use crate::tokenize::DocTokenizer;

/// The tokenizer copy's name inside a corpus.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Counts the examples that reach the writer.
pub struct CountingSink<'a> {
    pub writer: &'a mut CorpusWriter,
    pub examples: u64,
}

impl ExampleSink for CountingSink<'_> {
    fn push_example(&mut self, tokens: &[u32], meta: ExampleMeta<'_>) -> Result<(), SchemaError> {
        self.examples += 1;
        self.writer.push(tokens, meta)
    }
}

/// The packer that writes `pack`'s layout.
fn packer_for(pack: &PackSettings, tokenizer: &DocTokenizer) -> Packer {
    match *pack {
        PackSettings::Packed {
            seq_len,
            prefix_len,
            final_partial,
        } => Packer::Sequences(SequencePacker::new(
            seq_len,
            prefix_len,
            tokenizer.eod_id(),
            tokenizer.pad_id(),
            final_partial,
        )),
        PackSettings::Examples {
            max_input_len,
            max_target_len,
        } => Packer::Examples(ExamplePacker::new(
            max_input_len,
            max_target_len,
            tokenizer.eod_id(),
        )),
    }
}

/// The layout of the evaluation corpus: packed rows of `eval_seq_len` tokens with the
/// training prefix length, or the training corpus's example limits.
fn eval_pack(settings: &BuildSettings) -> PackSettings {
    match settings.pack {
        PackSettings::Packed {
            seq_len,
            prefix_len,
            final_partial,
        } => PackSettings::Packed {
            seq_len: settings.output.eval_seq_len.unwrap_or(seq_len),
            prefix_len,
            final_partial,
        },
        examples @ PackSettings::Examples { .. } => examples,
    }
}

/// Decodes one scratch document and packs it; returns its tokens.
#[allow(clippy::too_many_arguments)]
fn pack_doc(
    packer: &mut Packer,
    plan: &Plan,
    work: &WorkDir,
    names: &[Vec<Arc<str>>],
    width: usize,
    file: usize,
    doc: &[u8],
    sink: &mut CountingSink<'_>,
) -> Result<u64, BuildError> {
    let tokens = (doc.len().saturating_sub(DOC_HEADER) / width) as u64;
    let bad = || BuildError::Work {
        path: work.tokens(file),
        message: "corrupt token scratch file".into(),
    };
    let (doc, _) = decode_doc(doc, 0, width).ok_or_else(bad)?;
    let source = names
        .get(file)
        .and_then(|n| n.get(doc.source as usize))
        .ok_or_else(bad)?;
    let origin = format!("{}:{}", plan.files[file].display, doc.line);
    packer.push(&doc.content, source, &origin, sink)?;
    Ok(tokens)
}

/// The first pass of a split: every kept document's header, offered to the selector.
fn select_eval(
    plan: &Plan,
    work: &WorkDir,
    gathered: &Gathered,
    names: &[Vec<Arc<str>>],
    per_source: &BTreeMap<String, Counts>,
    wanted: u64,
) -> Result<EvalSet, BuildError> {
    let kept: BTreeMap<String, u64> = per_source
        .iter()
        .map(|(name, c)| (name.clone(), c.kept))
        .collect();
    let quotas = split::allocate(&kept, wanted)?;
    let mut selector = Selector::new(quotas.clone());
    let width = plan.token_width as usize;
    let mut origin = String::new();
    for (file, meta) in gathered.tokens.iter().enumerate() {
        let mut reader = ScratchReader::open(&work.tokens(file), meta.bytes, width)?;
        let mut header = [0u8; DOC_HEADER];
        while let Some(offset) = reader.skip_doc_with(&mut header)? {
            let line = read_u64(&header, 0);
            let source = names
                .get(file)
                .and_then(|n| n.get(read_u32(&header, 8) as usize))
                .ok_or_else(|| reader.corrupt())?;
            origin.clear();
            use std::fmt::Write as _;
            let _ = write!(origin, "{}:{line}", plan.files[file].display);
            selector.offer(source, &origin, file as u32, offset);
        }
    }
    let set = selector.finish();
    let wanted_per_source: BTreeMap<String, u64> =
        quotas.into_iter().filter(|&(_, n)| n > 0).collect();
    if set.per_source != wanted_per_source {
        return Err(BuildError::Invariant(format!(
            "the evaluation split wanted {wanted_per_source:?} documents per source but found \
             {:?} in the token scratch files",
            set.per_source
        )));
    }
    Ok(set)
}

/// The split as recorded in the manifest of side `side`.
fn split_record(side: SplitName, per_source: &BTreeMap<String, Counts>, set: &EvalSet) -> Split {
    let mut documents = SplitCounts::default();
    let mut sources = BTreeMap::new();
    for (name, counts) in per_source.iter().filter(|(_, c)| c.kept > 0) {
        let eval = set.per_source.get(name).copied().unwrap_or(0);
        let entry = SplitCounts {
            train: counts.kept - eval,
            eval,
        };
        documents.train += entry.train;
        documents.eval += entry.eval;
        sources.insert(name.clone(), entry);
    }
    Split {
        split: side,
        counterpart: match side {
            SplitName::Train => EVAL_DIR.to_string(),
            SplitName::Eval => "..".to_string(),
        },
        selection: SELECTION.to_string(),
        key: split::EVAL_SPLIT_KEY,
        documents,
        sources,
    }
}

/// Final counts of one side and their checks: the records' invariant overall and per source,
/// and the split's.
fn side_counts(
    per_source: &BTreeMap<String, Counts>,
    written: &BTreeMap<Arc<str>, SourceTally>,
    examples: u64,
    split: Option<&Split>,
) -> Result<(Counts, BTreeMap<String, Counts>), BuildError> {
    let (counts, sources) = Tally::from_counts(per_source.clone()).finish(written, examples);
    counts.check_invariant().map_err(BuildError::Invariant)?;
    for (name, source_counts) in &sources {
        source_counts
            .check_invariant()
            .map_err(|e| BuildError::Invariant(format!("source {name}: {e}")))?;
    }
    if let Some(split) = split {
        split
            .check_invariant(&counts, &sources)
            .map_err(BuildError::Invariant)?;
    }
    Ok((counts, sources))
}

/// What the evaluation corpus needs beyond the training corpus's inputs.
struct EvalContext<'a> {
    settings: &'a BuildSettings,
    plan: &'a Plan,
    work: &'a WorkDir,
    tokenizer: &'a DocTokenizer,
    tokenizer_info: &'a TokenizerInfo,
    names: &'a [Vec<Arc<str>>],
    per_source: &'a BTreeMap<String, Counts>,
    inputs: &'a [InputEntry],
}

/// Packs the held-out documents, in input order, into `OUT/eval/` and writes its manifest.
fn write_eval(ctx: &EvalContext<'_>, set: &EvalSet) -> Result<EvalReport, BuildError> {
    let dir = ctx.work.staged().join(EVAL_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
    let pack = eval_pack(ctx.settings);
    let layout = pack.layout();
    let mut writer = CorpusWriter::create(
        &dir,
        WriterOptions {
            layout,
            vocab_size: ctx.tokenizer.vocab_size(),
            max_shard_tokens: ctx.settings.output.max_shard_tokens,
        },
    )?;
    atomic::write_file(&dir.join(TOKENIZER_FILE), ctx.tokenizer.json())?;
    let mut packer = packer_for(&pack, ctx.tokenizer);
    let mut sink = CountingSink {
        writer: &mut writer,
        examples: 0,
    };
    let width = ctx.plan.token_width as usize;
    let mut files = OpenFiles::new(ctx.work, OPEN_SCRATCH_FILES);
    let mut doc = Vec::new();
    for &(file, offset) in &set.docs {
        files.read_doc(file as usize, offset, width, &mut doc)?;
        pack_doc(
            &mut packer,
            ctx.plan,
            ctx.work,
            ctx.names,
            width,
            file as usize,
            &doc,
            &mut sink,
        )?;
    }
    let (packing, written) = packer.finish(&mut sink)?;
    let examples = sink.examples;
    let split = split_record(SplitName::Eval, ctx.per_source, set);
    let (counts, sources) = side_counts(ctx.per_source, &written, examples, Some(&split))?;
    check_side(&packing, &split)?;
    let manifest = writer.finish_with_split(
        CorpusInfo {
            tokenizer: ctx.tokenizer_info.clone(),
            build: ctx.settings.recipe(),
            inputs: ctx.inputs.to_vec(),
            counts: counts.clone(),
            sources: sources.clone(),
            packing: packing.clone(),
        },
        Some(split.clone()),
    )?;
    Ok(EvalReport {
        out_dir: ctx.settings.out.join(EVAL_DIR).display().to_string(),
        kind: layout.kind().name().to_string(),
        seq_len: match layout {
            redpack_schemas::Layout::Packed { seq_len, .. } => Some(seq_len),
            redpack_schemas::Layout::Examples { .. } => None,
        },
        counts,
        sources,
        packing,
        shards: manifest.shards.len(),
        split,
    })
}

/// The packer saw exactly this side's documents.
fn check_side(packing: &PackingStats, split: &Split) -> Result<(), BuildError> {
    if packing.documents != split.this_side() {
        return Err(BuildError::Invariant(format!(
            "the {} split has {} documents but {} were packed",
            split.split.name(),
            split.this_side(),
            packing.documents
        )));
    }
    Ok(())
}

/// One document's place in the shuffle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ShuffleRec {
    key: u64,
    index: u64,
    file: u32,
    offset: u64,
}

impl SortRecord for ShuffleRec {
    const SIZE: usize = 28;
    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.key.to_le_bytes());
        out[8..16].copy_from_slice(&self.index.to_le_bytes());
        out[16..20].copy_from_slice(&self.file.to_le_bytes());
        out[20..28].copy_from_slice(&self.offset.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Self {
        ShuffleRec {
            key: read_u64(bytes, 0),
            index: read_u64(bytes, 8),
            file: read_u32(bytes, 16),
            offset: read_u64(bytes, 20),
        }
    }
}

/// Everything the earlier stages left for `finish`.
struct Gathered {
    scans: Vec<ScanMeta>,
    tokens: Vec<TokensMeta>,
}

/// Loads every unit's meta file; each file's reject samples go to `rejects` as they are read
/// (not kept), so memory does not grow with the number of files times the samples.
fn gather(
    plan: &Plan,
    work: &WorkDir,
    rejects: &mut RejectSampler,
) -> Result<Gathered, BuildError> {
    let mut scans = Vec::with_capacity(plan.files.len());
    let mut tokens = Vec::with_capacity(plan.files.len());
    for index in 0..plan.files.len() {
        let mut scan = read_json::<ScanMeta>(&work.scan_meta(index))?;
        for sample in std::mem::take(&mut scan.rejects) {
            rejects.offer_sample(sample);
        }
        scans.push(scan);
        tokens.push(read_json::<TokensMeta>(&work.tokens_meta(index))?);
    }
    Ok(Gathered { scans, tokens })
}

/// Combines the scan's counts (read, filtered, rejected; candidates as `kept`) with the
/// tokenize stage's verdicts on the candidates.
fn combined_counts(gathered: &Gathered) -> Result<BTreeMap<String, Counts>, BuildError> {
    let mut sources: BTreeMap<String, Counts> = BTreeMap::new();
    for (scan, tokens) in gathered.scans.iter().zip(&gathered.tokens) {
        for (name, counts) in &scan.sources {
            let verdicts = tokens.sources.get(name).cloned().unwrap_or_default();
            if verdicts.records_read != counts.kept {
                return Err(BuildError::Invariant(format!(
                    "{}: source {name}: the scan found {} candidates, tokenize saw {}",
                    scan.entry.path, counts.kept, verdicts.records_read
                )));
            }
            let total = sources.entry(name.clone()).or_default();
            let mut file = counts.clone();
            file.kept = verdicts.kept;
            file.exact_duplicates = verdicts.exact_duplicates;
            file.near_duplicates = verdicts.near_duplicates;
            total.add(&file);
        }
    }
    Ok(sources)
}

/// Runs the finish stage and returns the build report. `started` is when this process's part
/// of the build began (for the throughput line).
pub fn finish(
    settings: &BuildSettings,
    plan: &Plan,
    work: &WorkDir,
    tokenizer: &DocTokenizer,
    options: &BuildOptions,
    threads: usize,
    started: Instant,
) -> Result<BuildReport, BuildError> {
    let out = &settings.out;
    let mut rejects = RejectSampler::new(settings.output.rejects_per_reason);
    let gathered = gather(plan, work, &mut rejects)?;
    let per_source = combined_counts(&gathered)?;
    let read: u64 = per_source.values().map(|c| c.records_read).sum();
    let rejected: u64 = per_source.values().map(|c| c.rejected).sum();
    // The new corpus is written aside and replaces the one in `out` only once complete; a corpus
    // in place keeps its own rejects file until then.
    let staged = work.staged();
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(|e| BuildError::io(&staged, e))?;
    }
    std::fs::create_dir_all(&staged).map_err(|e| BuildError::io(&staged, e))?;
    let rejects_dir = if out.join(MANIFEST_FILE).exists() {
        staged.as_path()
    } else {
        out.as_path()
    };
    rejects.write(rejects_dir)?;
    let limit = settings.output.max_rejected_fraction;
    if read > 0 && rejected as f64 > limit * read as f64 {
        return Err(BuildError::TooManyRejects {
            rejected,
            read,
            percent: 100.0 * rejected as f64 / read as f64,
            limit,
            rejects: rejects_dir.join(REJECTS_FILE),
        });
    }

    let names: Vec<Vec<Arc<str>>> = gathered
        .tokens
        .iter()
        .map(|t| {
            t.source_names
                .iter()
                .map(|n| Arc::from(n.as_str()))
                .collect()
        })
        .collect();
    let eval = match settings.output.eval_docs {
        Some(wanted) => Some(select_eval(
            plan,
            work,
            &gathered,
            &names,
            &per_source,
            wanted,
        )?),
        None => None,
    };
    let held_out =
        |file: usize, offset: u64| eval.as_ref().is_some_and(|e| e.contains(file, offset));

    let layout = settings.pack.layout();
    let mut writer = CorpusWriter::create(
        &staged,
        WriterOptions {
            layout,
            vocab_size: tokenizer.vocab_size(),
            max_shard_tokens: settings.output.max_shard_tokens,
        },
    )?;
    atomic::write_file(&staged.join(TOKENIZER_FILE), tokenizer.json())?;
    let mut packer = packer_for(&settings.pack, tokenizer);
    let mut sink = CountingSink {
        writer: &mut writer,
        examples: 0,
    };
    let width = plan.token_width as usize;
    let total_tokens: u64 = gathered.tokens.iter().map(|t| t.tokens).sum();
    let progress = progress::open(options.progress.as_ref(), "finish", total_tokens, "tokens");
    let mut packed_tokens = 0u64;
    let mut push = |file: usize, doc: &[u8], sink: &mut CountingSink<'_>| {
        packed_tokens += pack_doc(&mut packer, plan, work, &names, width, file, doc, sink)?;
        progress.set(packed_tokens, "");
        Ok::<(), BuildError>(())
    };
    let mut doc = Vec::new();

    match settings.output.shuffle_seed {
        None => {
            for (file, meta) in gathered.tokens.iter().enumerate() {
                let mut reader = ScratchReader::open(&work.tokens(file), meta.bytes, width)?;
                while let Some(offset) = reader.next_doc(&mut doc)? {
                    if !held_out(file, offset) {
                        push(file, &doc, &mut sink)?;
                    }
                }
            }
        }
        Some(seed) => {
            let spill = work.spill(Stage::Finish, 0);
            let mut sorter =
                Sorter::<ShuffleRec>::new(&spill, "shuffle", options.sort_budget(settings));
            let mut index = 0u64;
            for (file, meta) in gathered.tokens.iter().enumerate() {
                let mut reader = ScratchReader::open(&work.tokens(file), meta.bytes, width)?;
                while let Some(offset) = reader.skip_doc()? {
                    if !held_out(file, offset) {
                        sorter.push(ShuffleRec {
                            key: xxh3_64_with_seed(&index.to_le_bytes(), seed),
                            index,
                            file: file as u32,
                            offset,
                        })?;
                    }
                    index += 1;
                }
            }
            let mut order = sorter.finish()?;
            let mut files = OpenFiles::new(work, OPEN_SCRATCH_FILES);
            while let Some(rec) = order.next_record()? {
                files.read_doc(rec.file as usize, rec.offset, width, &mut doc)?;
                push(rec.file as usize, &doc, &mut sink)?;
            }
            drop(order);
            let _ = std::fs::remove_dir_all(&spill);
        }
    }
    progress.finish();

    let (packing, written) = packer.finish(&mut sink)?;
    let examples_written = sink.examples;
    if examples_written == 0 && !options.allow_empty {
        let kept: u64 = per_source.values().map(|c| c.kept).sum();
        return Err(BuildError::EmptyCorpus {
            read,
            kept,
            why: match settings.pack {
                PackSettings::Packed { seq_len, .. } if kept > 0 => format!(
                    "the {kept} kept records hold {packed_tokens} tokens, fewer than one \
                     --seq-len {seq_len} sequence"
                ),
                _ if read == 0 => "the inputs hold no records".to_string(),
                _ => "no record was kept".to_string(),
            },
        });
    }
    let train_split = eval
        .as_ref()
        .map(|set| split_record(SplitName::Train, &per_source, set));
    let (counts, sources) = side_counts(
        &per_source,
        &written,
        examples_written,
        train_split.as_ref(),
    )?;
    if let Some(split) = &train_split {
        check_side(&packing, split)?;
    }
    let faults: Vec<String> = gathered
        .scans
        .iter()
        .filter_map(|scan| scan.entry.fault.clone())
        .collect();
    let tokenizer_info = TokenizerInfo {
        file: TOKENIZER_FILE.to_string(),
        sha256: tokenizer.sha256().to_string(),
        vocab_size: tokenizer.vocab_size(),
        eod_id: tokenizer.eod_id(),
        pad_id: tokenizer.pad_id(),
        eod_token: tokenizer.eod_token().to_string(),
        pad_token: tokenizer.pad_token().to_string(),
    };
    let inputs: Vec<_> = gathered.scans.iter().map(|s| s.entry.clone()).collect();
    let input_files = inputs.len();
    let eval_report = match &eval {
        Some(set) => Some(Box::new(write_eval(
            &EvalContext {
                settings,
                plan,
                work,
                tokenizer,
                tokenizer_info: &tokenizer_info,
                names: &names,
                per_source: &per_source,
                inputs: &inputs,
            },
            set,
        )?)),
        None => None,
    };
    let manifest = writer.finish_with_split(
        CorpusInfo {
            tokenizer: tokenizer_info.clone(),
            build: settings.recipe(),
            inputs,
            counts: counts.clone(),
            sources: sources.clone(),
            packing: packing.clone(),
        },
        train_split,
    )?;
    super::publish::publish(&staged, out)?;
    let input_bytes: u64 = plan.files.iter().map(|f| f.size).sum();
    let text_bytes: u64 = gathered.scans.iter().map(|s| s.text_bytes).sum();
    let throughput = Throughput::new(
        started.elapsed().as_secs_f64(),
        input_bytes,
        text_bytes,
        counts.records_read,
        counts.tokens,
        threads,
    );
    Ok(BuildReport {
        out_dir: out.display().to_string(),
        kind: layout.kind().name().to_string(),
        counts,
        sources,
        packing,
        tokenizer: tokenizer_info,
        encoder: tokenizer.encoder(),
        tokenizer_trained: plan.tokenizer_trained,
        shards: manifest.shards.len(),
        input_files,
        faults,
        rejects_file: (!rejects.is_empty()).then(|| out.join(REJECTS_FILE).display().to_string()),
        throughput,
        dedup_work_bytes: gathered.scans.iter().map(|s| s.key_bytes).sum(),
        eval: eval_report,
    })
}

/// Scratch files the shuffle keeps open at once (documents are read in random order).
const OPEN_SCRATCH_FILES: usize = 256;

/// Reads a token scratch file front to back, one document at a time.
struct ScratchReader {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    offset: u64,
    len: u64,
    width: usize,
}

impl ScratchReader {
    fn open(path: &Path, len: u64, width: usize) -> Result<Self, BuildError> {
        let reader = if len == 0 {
            None
        } else {
            let file = File::open(path).map_err(|e| BuildError::io(path, e))?;
            Some(BufReader::with_capacity(1 << 20, file))
        };
        Ok(ScratchReader {
            path: path.to_path_buf(),
            reader,
            offset: 0,
            len,
            width,
        })
    }

    fn corrupt(&self) -> BuildError {
        BuildError::Work {
            path: self.path.clone(),
            message: format!("corrupt token scratch file at byte {}", self.offset),
        }
    }

    /// Reads the next header; returns the document's offset and body length in bytes.
    fn header(&mut self, header: &mut [u8; DOC_HEADER]) -> Result<Option<(u64, u64)>, BuildError> {
        if self.offset >= self.len {
            return Ok(None);
        }
        let at = self.offset;
        let Some(reader) = self.reader.as_mut() else {
            return Err(self.corrupt());
        };
        reader
            .read_exact(header)
            .map_err(|e| BuildError::io(&self.path, e))?;
        let tokens = u64::from(read_u32(header, 16)) + u64::from(read_u32(header, 20));
        let body = tokens * self.width as u64;
        if at + DOC_HEADER as u64 + body > self.len {
            return Err(self.corrupt());
        }
        self.offset = at + DOC_HEADER as u64 + body;
        Ok(Some((at, body)))
    }

    /// The next document's bytes into `doc`; its offset, or `None` at the end.
    fn next_doc(&mut self, doc: &mut Vec<u8>) -> Result<Option<u64>, BuildError> {
        let mut header = [0u8; DOC_HEADER];
        let Some((at, body)) = self.header(&mut header)? else {
            return Ok(None);
        };
        doc.clear();
        doc.extend_from_slice(&header);
        doc.resize(DOC_HEADER + body as usize, 0);
        if let Some(reader) = self.reader.as_mut() {
            reader
                .read_exact(&mut doc[DOC_HEADER..])
                .map_err(|e| BuildError::io(&self.path, e))?;
        }
        Ok(Some(at))
    }

    /// Skips the next document; its offset, or `None` at the end.
    fn skip_doc(&mut self) -> Result<Option<u64>, BuildError> {
        let mut header = [0u8; DOC_HEADER];
        self.skip_doc_with(&mut header)
    }

    /// Skips the next document, leaving its header in `header`; its offset, or `None` at the
    /// end.
    fn skip_doc_with(&mut self, header: &mut [u8; DOC_HEADER]) -> Result<Option<u64>, BuildError> {
        let Some((at, body)) = self.header(header)? else {
            return Ok(None);
        };
        let skip = i64::try_from(body).map_err(|_| self.corrupt())?;
        if let Some(reader) = self.reader.as_mut() {
            reader
                .seek_relative(skip)
                .map_err(|e| BuildError::io(&self.path, e))?;
        }
        Ok(Some(at))
    }
}

/// Positioned reads of documents from many scratch files, keeping at most `capacity` open (the
/// least recently used is closed first), so the number of open files stays bounded.
struct OpenFiles<'a> {
    work: &'a WorkDir,
    capacity: usize,
    open: Vec<(usize, File)>,
}

impl<'a> OpenFiles<'a> {
    fn new(work: &'a WorkDir, capacity: usize) -> Self {
        OpenFiles {
            work,
            capacity: capacity.max(1),
            open: Vec::new(),
        }
    }

    fn file(&mut self, index: usize) -> Result<&File, BuildError> {
        if let Some(at) = self.open.iter().position(|(i, _)| *i == index) {
            let entry = self.open.remove(at);
            self.open.push(entry);
        } else {
            if self.open.len() >= self.capacity {
                self.open.remove(0);
            }
            let path = self.work.tokens(index);
            let file = File::open(&path).map_err(|e| BuildError::io(&path, e))?;
            self.open.push((index, file));
        }
        match self.open.last() {
            Some((_, file)) => Ok(file),
            None => Err(BuildError::Work {
                path: self.work.tokens(index),
                message: "internal error: no open file".into(),
            }),
        }
    }

    fn read_doc(
        &mut self,
        index: usize,
        offset: u64,
        width: usize,
        doc: &mut Vec<u8>,
    ) -> Result<(), BuildError> {
        use std::os::unix::fs::FileExt;
        let path = self.work.tokens(index);
        let file = self.file(index)?;
        let mut header = [0u8; DOC_HEADER];
        file.read_exact_at(&mut header, offset)
            .map_err(|e| BuildError::io(&path, e))?;
        let tokens = read_u32(&header, 16) as usize + read_u32(&header, 20) as usize;
        doc.clear();
        doc.extend_from_slice(&header);
        doc.resize(DOC_HEADER + tokens * width, 0);
        file.read_exact_at(&mut doc[DOC_HEADER..], offset + DOC_HEADER as u64)
            .map_err(|e| BuildError::io(&path, e))?;
        Ok(())
    }
}
