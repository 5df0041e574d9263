//! Attention analysis: the "local attention probability" of a checkpoint on a corpus, and heat
//! maps of one row's attention. Runs on the CPU backend (`backend::cpu::probe`).
//!
//! Each analysed row is the first `L` tokens of a corpus row (rows shorter than `L` are skipped
//! and counted), split at a fixed prefix `k`, and run forward with the checkpoint's attention
//! mode (DecLLM + BiAttn: bidirectional over `[0, k)`; attention reset at document boundaries
//! when the checkpoint was trained so). The local mass of a query is the attention probability
//! on keys at distance `< window` from it (self-attention; with a causal mask, the `window` keys
//! ending at the query itself), or on the last `window` encoder positions (cross-attention).
//!
//! Reported queries, the same predictions for both architectures:
//! - decoder self-attention: the queries that predict tokens `[k, L)`: DecLLM's queries reading
//!   tokens `[k-1, L-1)`, every query of RedLLM's decoder (which reads the same tokens);
//! - cross-attention (RedLLM): the same decoder queries, over the encoder's `k` positions;
//! - encoder self-attention (RedLLM): every encoder query, tokens `[0, k)`.
//!
//! The local mass is averaged over rows, heads and reported queries, per layer and over all
//! layers (the mean of the layer means).

pub mod locality;
pub mod picture;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::cpu::probe::AttnKind;
use crate::backend::cpu::CpuBackend;
use crate::backend::BackendError;
use crate::batch::{Batch, StepOptions};
use crate::checkpoint::{self, CheckpointError};
use crate::config::{Arch, ModelConfig};
use crate::data::{open_corpus, CheckedCorpus, CorpusSummary, DataError, ExampleSource};
use crate::params::ParamStore;
use crate::run::check_tokenizer;
use locality::{LocalityReducer, QueryRange};

/// Errors analysing attention.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Invalid(String),
    #[error("row {row}: {source}")]
    Backend {
        row: u64,
        #[source]
        source: BackendError,
    },
    #[error("{}: no row has {length} tokens (the {skipped} rows read are shorter)", .dir.display())]
    NoRows {
        dir: PathBuf,
        length: usize,
        skipped: u64,
    },
    #[error("{}: {message}", .path.display())]
    Write { path: PathBuf, message: String },
}

/// What to analyse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityOptions {
    /// Row length `L`.
    pub length: usize,
    /// Prefix length `k` (`1 <= k < L`).
    pub prefix_len: usize,
    /// Keys at distance `< window` are local (`>= 1`).
    pub window: usize,
    /// Rows to analyse (the first that are long enough, in corpus order).
    pub rows: u64,
}

/// The local mass of one attention kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindReport {
    /// Which queries are averaged, in token indices of the row.
    pub queries: String,
    /// Mean local mass per layer (index = layer).
    pub layers: Vec<f64>,
    /// Mean of the layer means.
    pub overall: f64,
    /// Per reported query, the local mass averaged over rows, heads and layers; entry `i` is
    /// the query at `first_position + i`.
    pub by_position: Vec<f64>,
    /// Row index of the first entry of `by_position`: for decoder self- and cross-attention the
    /// index of the predicted token (`k`), for encoder self-attention the token read (0).
    pub first_position: usize,
    /// The largest deviation from 1 of a probability row's sum, over every layer, head, row and
    /// query (a check of the computation).
    pub max_row_sum_error: f64,
    /// Queries, over rows, heads and layers, that saw no key (possible only with document
    /// resets); left out of the means.
    pub empty_queries: u64,
}

/// One heat map file and what its axes hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeatmapInfo {
    pub file: String,
    pub attention: String,
    pub layer: usize,
    /// Query axis (image rows, top to bottom) and key axis (image columns, left to right).
    pub queries: String,
    pub keys: String,
    pub query_bins: usize,
    pub key_bins: usize,
    pub pixels_per_bin: usize,
    /// The probability (mean over heads and over the cells of a bin) of the brightest colour.
    pub max_value: f64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalityReport {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub data: PathBuf,
    pub arch: String,
    pub bidirectional_prefix: bool,
    pub reset_at_doc_boundaries: bool,
    pub length: usize,
    pub prefix_len: usize,
    pub window: usize,
    pub rows: u64,
    /// Corpus rows passed over because they hold fewer than `length` tokens.
    pub skipped_short: u64,
    pub heads: usize,
    pub backend: String,
    /// `decoder_self`, and for RedLLM `encoder_self` and `cross`.
    pub attention: BTreeMap<String, KindReport>,
    /// Heat maps of the first analysed row (filled in by `write_outputs`).
    pub heatmaps: Vec<HeatmapInfo>,
}

/// The heat maps of one row, by attention kind and layer.
pub type Heatmaps = BTreeMap<(AttnKind, usize), locality::Heatmap>;

/// The name of an attention kind in reports and file names.
pub fn kind_name(kind: AttnKind) -> &'static str {
    match kind {
        AttnKind::DecoderSelf => "decoder_self",
        AttnKind::EncoderSelf => "encoder_self",
        AttnKind::Cross => "cross",
    }
}

/// A checked analysis, ready to run.
pub struct LocalityJob {
    pub checkpoint: PathBuf,
    pub corpus: CorpusSummary,
    pub model: ModelConfig,
    pub step: u64,
    params: ParamStore,
    step_options: StepOptions,
    options: LocalityOptions,
    source: CheckedCorpus,
}

/// The checkpoint's objective switches, from its recorded settings (absent = off).
fn objective_flag(settings: &serde_json::Value, name: &str) -> bool {
    settings
        .get("objective")
        .and_then(|o| o.get(name))
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

impl LocalityJob {
    /// Loads the checkpoint and opens the corpus; checks the options against both before any
    /// work.
    pub fn prepare(
        checkpoint_path: &Path,
        data: &Path,
        options: LocalityOptions,
    ) -> Result<LocalityJob, AnalysisError> {
        LocalityJob::prepare_checked(checkpoint_path, data, options, true)
    }

    /// `prepare`, checking the checkpoint's and the token files' sha256 (each shard before its
    /// first row is read) only when `verify` is set.
    pub fn prepare_checked(
        checkpoint_path: &Path,
        data: &Path,
        options: LocalityOptions,
        verify: bool,
    ) -> Result<LocalityJob, AnalysisError> {
        if options.window == 0 {
            return Err(AnalysisError::Invalid(
                "--window must be at least 1 (keys at distance < window are local)".into(),
            ));
        }
        if options.rows == 0 {
            return Err(AnalysisError::Invalid("--rows must be at least 1".into()));
        }
        if options.prefix_len == 0 {
            return Err(AnalysisError::Invalid(
                "--prefix-len must be at least 1 (RedLLM's encoder needs an input, and both architectures are compared on the same positions)".into(),
            ));
        }
        if options.prefix_len >= options.length {
            return Err(AnalysisError::Invalid(format!(
                "--prefix-len {} must be below --length {} (positions [k, L) are analysed)",
                options.prefix_len, options.length
            )));
        }
        let dir = checkpoint::resolve(checkpoint_path)?;
        let meta = checkpoint::load_meta(&dir)?;
        let (corpus, summary) = open_corpus(data)?;
        if options.length > summary.max_row_len() {
            return Err(AnalysisError::Invalid(format!(
                "--length {} is above the row length of {} ({} tokens)",
                options.length,
                data.display(),
                summary.max_row_len()
            )));
        }
        check_tokenizer(&dir, &meta.model, &meta.tokenizer, &summary)
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        let ckpt = checkpoint::load_checked(&dir, false, verify)?;
        let step_options = StepOptions {
            bidirectional_prefix: ckpt.meta.model.arch == Arch::Dec
                && objective_flag(&ckpt.meta.settings, "bidirectional_prefix"),
            reset_at_doc_boundaries: objective_flag(&ckpt.meta.settings, "reset_at_doc_boundaries"),
            ..StepOptions::default()
        };
        Ok(LocalityJob {
            checkpoint: dir,
            corpus: summary,
            model: ckpt.meta.model,
            step: ckpt.meta.step,
            params: ckpt.params,
            step_options,
            options,
            source: CheckedCorpus::new(corpus, verify),
        })
    }

    /// The row `index` cut to `L` tokens, or `None` when it is shorter (trailing padding
    /// excluded when the corpus pads with its own id).
    fn row(&self, index: u64) -> Result<Option<Batch>, AnalysisError> {
        let ex = ExampleSource::example(&self.source, index)?;
        let tok = &self.corpus.tokenizer;
        let mut len = ex.tokens.len();
        if tok.pad_id != tok.eod_id {
            while len > 0 && ex.tokens[len - 1] == tok.pad_id {
                len -= 1;
            }
        }
        let l = self.options.length;
        if len < l {
            return Ok(None);
        }
        Ok(Some(Batch {
            rows: 1,
            seq: l,
            tokens: ex.tokens[..l].to_vec(),
            prefix_len: vec![self.options.prefix_len],
            length: vec![l],
            doc_starts: vec![ex
                .doc_starts
                .iter()
                .copied()
                .filter(|&s| (s as usize) < l)
                .collect()],
            source: vec![ex.source],
        }))
    }

    /// Analyses the rows; `progress` is called with the rows done so far. Heat maps are kept for
    /// the first row.
    pub fn run(
        self,
        backend: &CpuBackend,
        mut progress: impl FnMut(u64),
    ) -> Result<(LocalityReport, Heatmaps), AnalysisError> {
        let (l, k) = (self.options.length, self.options.prefix_len);
        let mut ranges = BTreeMap::new();
        let dec_first = match self.model.arch {
            // DecLLM's query at index i reads token i and predicts token i + 1.
            Arch::Dec => k - 1,
            Arch::Red => 0,
        };
        ranges.insert(
            AttnKind::DecoderSelf,
            QueryRange {
                first: dec_first,
                count: l - k,
            },
        );
        let mut reducer = LocalityReducer::new(self.options.window, ranges);
        let (mut done, mut skipped) = (0u64, 0u64);
        for index in 0..self.source.len() {
            if done == self.options.rows {
                break;
            }
            let Some(batch) = self.row(index)? else {
                skipped += 1;
                continue;
            };
            reducer.heatmaps = done == 0;
            backend
                .attention_probe(
                    &self.model,
                    &self.params,
                    &batch,
                    &self.step_options,
                    &mut reducer,
                )
                .map_err(|source| AnalysisError::Backend { row: index, source })?;
            done += 1;
            progress(done);
        }
        if done == 0 {
            return Err(AnalysisError::NoRows {
                dir: self.corpus.dir.clone(),
                length: l,
                skipped,
            });
        }
        let mut attention = BTreeMap::new();
        let kinds: &[AttnKind] = match self.model.arch {
            Arch::Dec => &[AttnKind::DecoderSelf],
            Arch::Red => &[
                AttnKind::DecoderSelf,
                AttnKind::EncoderSelf,
                AttnKind::Cross,
            ],
        };
        let heads = self.model.n_heads;
        for &kind in kinds {
            let layers: Vec<&locality::LayerSums> = reducer
                .sums
                .iter()
                .filter(|((k2, _), _)| *k2 == kind)
                .map(|(_, s)| s)
                .collect();
            let means: Vec<f64> = layers
                .iter()
                .map(|s| s.local_sum / s.terms.max(1) as f64)
                .collect();
            let n_q = layers.first().map_or(0, |s| s.by_query.len());
            let by_position = (0..n_q)
                .map(|i| {
                    let total: f64 = layers.iter().map(|s| s.by_query[i]).sum();
                    let count: u64 = layers.iter().map(|s| s.rows * heads as u64).sum();
                    total / count.max(1) as f64
                })
                .collect();
            let (queries, first_position) = match (kind, self.model.arch) {
                (AttnKind::DecoderSelf, Arch::Dec) => (
                    format!(
                        "queries reading tokens [{}, {}), predicting tokens [{k}, {l})",
                        k - 1,
                        l - 1
                    ),
                    k,
                ),
                (AttnKind::DecoderSelf, Arch::Red) | (AttnKind::Cross, _) => (
                    format!(
                        "decoder queries reading tokens [{}, {}), predicting tokens [{k}, {l})",
                        k - 1,
                        l - 1
                    ),
                    k,
                ),
                (AttnKind::EncoderSelf, _) => {
                    (format!("encoder queries reading tokens [0, {k})"), 0)
                }
            };
            attention.insert(
                kind_name(kind).to_string(),
                KindReport {
                    queries,
                    overall: means.iter().sum::<f64>() / means.len().max(1) as f64,
                    layers: means,
                    by_position,
                    first_position,
                    max_row_sum_error: layers
                        .iter()
                        .map(|s| s.max_row_sum_error)
                        .fold(0.0, f64::max),
                    empty_queries: layers.iter().map(|s| s.empty_queries).sum(),
                },
            );
        }
        let report = LocalityReport {
            checkpoint: self.checkpoint.clone(),
            step: self.step,
            data: self.corpus.dir.clone(),
            arch: self.model.arch.name().to_string(),
            bidirectional_prefix: self.step_options.bidirectional_prefix,
            reset_at_doc_boundaries: self.step_options.reset_at_doc_boundaries,
            length: l,
            prefix_len: k,
            window: self.options.window,
            rows: done,
            skipped_short: skipped,
            heads,
            backend: format!("cpu ({} threads)", backend.threads()),
            attention,
            heatmaps: Vec::new(),
        };
        Ok((report, reducer.maps))
    }
}

/// The axes of a heat map, in token indices of the row.
fn heatmap_axes(report: &LocalityReport, kind: AttnKind) -> (String, String) {
    let (l, k) = (report.length, report.prefix_len);
    let dec = |who: &str| format!("{who} queries reading tokens [0, {})", l - 1);
    match (kind, report.arch.as_str()) {
        (AttnKind::DecoderSelf, "dec") => (dec("DecLLM"), format!("keys: tokens [0, {})", l - 1)),
        (AttnKind::Cross, _) => (
            format!("decoder queries reading tokens [{}, {})", k - 1, l - 1),
            format!("encoder keys: tokens [0, {k})"),
        ),
        _ => (
            format!("decoder queries reading tokens [{}, {})", k - 1, l - 1),
            format!("decoder keys: tokens [{}, {})", k - 1, l - 1),
        ),
    }
}

/// Writes `locality.json`, `locality.csv` (attention, layer, local mass; layer `all` = the
/// overall mean), `locality_by_position.csv` (attention, position, local mass) and one PNG per
/// heat map (`heatmap_<attention>_layer<N>.png`) into `out`, each atomically; returns the report
/// with its heat maps listed.
pub fn write_outputs(
    mut report: LocalityReport,
    maps: &Heatmaps,
    out: &Path,
) -> Result<LocalityReport, AnalysisError> {
    let io = |path: &Path, message: String| AnalysisError::Write {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(out)
        .map_err(|e| io(out, format!("cannot create the directory: {e}")))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), AnalysisError> {
        let path = out.join(name);
        redpack_schemas::atomic::write_file(&path, bytes).map_err(|e| io(&path, e.to_string()))
    };
    report.heatmaps.clear();
    for (&(kind, layer), map) in maps {
        let file = format!("heatmap_{}_layer{layer}.png", kind_name(kind));
        let bytes = picture::encode(map)
            .map_err(|e| io(&out.join(&file), format!("cannot encode the PNG: {e}")))?;
        write(&file, &bytes)?;
        let (queries, keys) = heatmap_axes(&report, kind);
        report.heatmaps.push(HeatmapInfo {
            file,
            attention: kind_name(kind).to_string(),
            layer,
            queries,
            keys,
            query_bins: map.query_bins,
            key_bins: map.key_bins,
            pixels_per_bin: picture::pixels_per_bin(map),
            max_value: map.values.iter().copied().fold(0.0, f64::max),
        });
    }
    let mut csv = String::from("attention,layer,local_mass\n");
    let mut by_pos = String::from("attention,position,local_mass\n");
    for (name, kind) in &report.attention {
        for (layer, v) in kind.layers.iter().enumerate() {
            csv.push_str(&format!("{name},{layer},{v}\n"));
        }
        csv.push_str(&format!("{name},all,{}\n", kind.overall));
        for (i, v) in kind.by_position.iter().enumerate() {
            by_pos.push_str(&format!("{name},{},{v}\n", kind.first_position + i));
        }
    }
    write("locality.csv", csv.as_bytes())?;
    write("locality_by_position.csv", by_pos.as_bytes())?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| io(&out.join("locality.json"), e.to_string()))?;
    write("locality.json", format!("{json}\n").as_bytes())?;
    Ok(report)
}
