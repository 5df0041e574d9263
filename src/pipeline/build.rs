//! The build: read → filter → exact dedup → near dedup → tokenize → pack → write.
//!
//! Threads: one reader thread parses files in order and sends chunks of items through a
//! bounded channel ([`super::reader`]). The build thread takes each chunk through four phases:
//! 1. sequential: count rejects, apply the length filter;
//! 2. parallel (rayon pool): dedup keys (normalization, fingerprint, MinHash signature);
//! 3. sequential: dedup decisions in input order;
//! 4. parallel: tokenize the kept records (long ones in pieces), then pack and write in order.
//!
//! Every parallel phase collects its results in input order, and every order-dependent decision
//! is made on the build thread, so the output is byte-identical for any thread count.
//!
//! Memory stays flat: a few chunks in flight, the dedup indexes (measured by the benchmark),
//! and, only with a shuffle seed, the kept documents' tokens until the end.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use redpack_schemas::{
    atomic, CorpusInfo, CorpusWriter, Layout, SchemaError, TokenizerInfo, WriterOptions,
};
use thiserror::Error;

use super::config::{BuildSettings, PackConfig};
use super::progress::Progress;
use super::reader::{self, ReadProgress, ReaderMessage};
use super::rejects::{RejectSampler, REJECTS_FILE};
use super::report::{BuildReport, Throughput};
use super::stages::{CountingSink, Stages};
use super::tally::Tally;
use crate::dedup::Deduper;
use crate::input::datamanifest::{DataManifest, ManifestError};
use crate::input::{self, InputError, InputFile};
use crate::pack::{ExamplePacker, Packer, SequencePacker};
use crate::tokenize::{DocTokenizer, TokenizeError};
use crate::train_tokenizer::{self, TrainError};

/// The tokenizer copy's name inside a corpus.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    DataManifest(#[from] ManifestError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(
        "{path}: {format} has documents, not input/target pairs, but the pipeline builds an \
         \"examples\" corpus; use --format flan or a pipeline with [pack] type = \"packed\""
    )]
    LayoutMismatch { path: PathBuf, format: String },
    #[error("cannot start {threads} worker threads: {message}")]
    Threads { threads: usize, message: String },
    #[error(
        "{rejected} of {read} records were rejected ({percent:.2}%), more than \
         --max-rejected-fraction {limit} allows; the first of each reason are in {rejects}; no \
         corpus was written"
    )]
    TooManyRejects {
        rejected: u64,
        read: u64,
        percent: f64,
        limit: f64,
        rejects: PathBuf,
    },
    #[error("internal error: record counts do not add up: {0}")]
    Invariant(String),
}

/// How to present a build (nothing here changes the output).
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

/// Finds the input files: a data manifest resolved against its root, or paths/globs/dirs.
pub fn discover_inputs(settings: &BuildSettings) -> Result<Vec<InputFile>, BuildError> {
    let hint = settings.input.format.hint();
    match &settings.input.data_manifest {
        Some(manifest_path) => {
            let root = settings
                .input
                .data_root
                .as_deref()
                .unwrap_or(Path::new("."));
            let manifest = DataManifest::load(manifest_path)?;
            Ok(manifest.resolve(root, hint, true)?.files)
        }
        None => Ok(input::discover(&settings.input.paths, hint)?),
    }
}

/// Loads the configured tokenizer, or trains one on the inputs. Returns it and whether it was
/// trained.
pub fn prepare_tokenizer(
    settings: &BuildSettings,
    files: &[InputFile],
) -> Result<(DocTokenizer, bool), BuildError> {
    let config = &settings.tokenizer;
    let (tokenizer, trained) = match &config.path {
        Some(path) => (
            DocTokenizer::from_file(
                path,
                config.eod_token.as_deref(),
                config.pad_token.as_deref(),
            )?,
            false,
        ),
        None => {
            let trained = train_tokenizer::train_on_inputs(
                files,
                &settings.input.fields.field_map(),
                &config.train,
            )?;
            let json = train_tokenizer::to_json(&trained)?;
            let tokenizer = DocTokenizer::from_bytes(
                Path::new("<trained>"),
                json.into_bytes(),
                Some(&config.train.eod_token),
                Some(&config.train.pad_token),
            )?;
            (tokenizer, true)
        }
    };
    Ok((tokenizer.with_chunk_bytes(config.chunk_bytes), trained))
}

fn layout_of(pack: &PackConfig) -> Layout {
    match *pack {
        PackConfig::Packed {
            seq_len,
            prefix_len,
            ..
        } => Layout::Packed {
            seq_len,
            prefix_len: prefix_len.unwrap_or(seq_len / 2),
        },
        PackConfig::Examples {
            max_input_len,
            max_target_len,
        } => Layout::Examples {
            max_input_len,
            max_target_len,
        },
    }
}

fn packer_for(pack: &PackConfig, tokenizer: &DocTokenizer) -> Packer {
    match *pack {
        PackConfig::Packed {
            seq_len,
            prefix_len,
            final_partial,
        } => Packer::Sequences(SequencePacker::new(
            seq_len,
            prefix_len.unwrap_or(seq_len / 2),
            tokenizer.eod_id(),
            tokenizer.pad_id(),
            final_partial,
        )),
        PackConfig::Examples {
            max_input_len,
            max_target_len,
        } => Packer::Examples(ExamplePacker::new(
            max_input_len,
            max_target_len,
            tokenizer.eod_id(),
        )),
    }
}

/// Runs a whole build into `settings.out` and returns its report.
pub fn build(settings: &BuildSettings, options: &BuildOptions) -> Result<BuildReport, BuildError> {
    let files = discover_inputs(settings)?;
    if let PackConfig::Examples { .. } = settings.pack {
        if let Some(file) = files.iter().find(|f| !f.format.is_flan()) {
            return Err(BuildError::LayoutMismatch {
                path: file.path.clone(),
                format: file.format.to_string(),
            });
        }
    }
    let threads = settings.output.threads;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|err| BuildError::Threads {
            threads,
            message: err.to_string(),
        })?;
    let (tokenizer, trained) = pool.install(|| prepare_tokenizer(settings, &files))?;
    build_with(settings, options, &files, &tokenizer, trained, &pool)
}

/// [`build`] with the inputs discovered and the tokenizer ready.
pub fn build_with(
    settings: &BuildSettings,
    options: &BuildOptions,
    files: &[InputFile],
    tokenizer: &DocTokenizer,
    tokenizer_trained: bool,
    pool: &rayon::ThreadPool,
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let out = &settings.out;
    let layout = layout_of(&settings.pack);
    let mut writer = CorpusWriter::create(
        out,
        WriterOptions {
            layout,
            vocab_size: tokenizer.vocab_size(),
            max_shard_tokens: settings.output.max_shard_tokens,
        },
    )?;
    let tokenizer_path = out.join(TOKENIZER_FILE);
    atomic::write_file(&tokenizer_path, tokenizer.json())?;

    let total_bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let progress = Progress::new(total_bytes, options.progress);
    let read_progress = Arc::new(ReadProgress::default());
    let fields = settings.input.fields.field_map();
    let mut stages = Stages {
        settings,
        tokenizer,
        pool,
        deduper: Deduper::new(settings.dedup),
        tally: Tally::new(),
        rejects: RejectSampler::new(settings.output.rejects_per_reason),
        packer: packer_for(&settings.pack, tokenizer),
        pending: Vec::new(),
        kept_docs: 0,
        text_bytes: 0,
    };
    let mut sink = CountingSink {
        writer: &mut writer,
        examples: 0,
    };
    let mut inputs = Vec::with_capacity(files.len());

    let loop_result: Result<(), BuildError> = std::thread::scope(|scope| {
        let receiver = reader::spawn(scope, files, &fields, &read_progress);
        let result = (|| {
            for message in receiver.iter() {
                match message {
                    ReaderMessage::Items(items) => stages.process(items, &mut sink)?,
                    ReaderMessage::FileDone(entry) => inputs.push(entry),
                }
                let (read, duplicates, rejected) = stages.tally.running_totals();
                progress.update(
                    read_progress.bytes.load(Ordering::Relaxed),
                    read,
                    duplicates,
                    rejected,
                );
            }
            Ok(())
        })();
        // Stop the reader early on failure; dropping the receiver unblocks it.
        read_progress.cancel.store(true, Ordering::Relaxed);
        drop(receiver);
        result
    });
    progress.finish();
    loop_result?;

    if !stages.pending.is_empty() {
        let mut pending = std::mem::take(&mut stages.pending);
        // A stable sort: the (astronomically unlikely) key ties keep input order.
        pending.sort_by_key(|doc| doc.key);
        for doc in pending {
            stages
                .packer
                .push(&doc.content, &doc.source, &doc.origin, &mut sink)?;
        }
    }
    let dedup_index_bytes = stages.deduper.heap_bytes() as u64;
    let (packing, written) = stages.packer.finish(&mut sink)?;
    let examples_written = sink.examples;
    let (counts, sources) = stages.tally.finish(&written, examples_written);
    counts.check_invariant().map_err(BuildError::Invariant)?;
    for (name, source_counts) in &sources {
        source_counts
            .check_invariant()
            .map_err(|e| BuildError::Invariant(format!("source {name}: {e}")))?;
    }

    stages.rejects.write(out)?;
    let rejects_file = (!stages.rejects.is_empty()).then(|| out.join(REJECTS_FILE));
    let limit = settings.output.max_rejected_fraction;
    if counts.records_read > 0 && counts.rejected as f64 > limit * counts.records_read as f64 {
        return Err(BuildError::TooManyRejects {
            rejected: counts.rejected,
            read: counts.records_read,
            percent: 100.0 * counts.rejected as f64 / counts.records_read as f64,
            limit,
            rejects: out.join(REJECTS_FILE),
        });
    }

    let faults: Vec<String> = inputs
        .iter()
        .filter_map(|entry| entry.fault.clone())
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
    let input_files = inputs.len();
    let manifest = writer.finish(CorpusInfo {
        tokenizer: tokenizer_info.clone(),
        build: settings.recipe(),
        inputs,
        counts: counts.clone(),
        sources: sources.clone(),
        packing: packing.clone(),
    })?;
    let throughput = Throughput::new(
        started.elapsed().as_secs_f64(),
        total_bytes,
        stages.text_bytes,
        counts.records_read,
        counts.tokens,
        pool.current_num_threads(),
    );
    Ok(BuildReport {
        out_dir: out.display().to_string(),
        kind: layout.kind().name().to_string(),
        counts,
        sources,
        packing,
        tokenizer: tokenizer_info,
        tokenizer_trained,
        shards: manifest.shards.len(),
        input_files,
        faults,
        rejects_file: rejects_file.map(|p| p.display().to_string()),
        throughput,
        dedup_index_bytes,
    })
}
