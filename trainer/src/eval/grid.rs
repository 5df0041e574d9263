//! Evaluation over a grid of context lengths `L` and prefix lengths `k`, the paper's length
//! extrapolation and its comparison of the two architectures at equal scored tokens.
//!
//! For every pair `(L, k)` each row is cut to its first `L` tokens (rows shorter than `L` are
//! skipped and counted) and the tokens `[k, L)` are scored given everything before them:
//! RedLLM's encoder reads `[0, k)` and its decoder predicts `[k, L)`; DecLLM reads `[0, L - 1)`
//! with the checkpoint's attention (causal, or bidirectional over `[0, k)` for DecLLM + BiAttn)
//! and the same `L - k` predictions are scored. Both architectures therefore score the same
//! tokens of the same rows.
//!
//! Per pair the report gives, per source and over all sources, the token-pooled loss (summed
//! cross-entropy over scored tokens divided by their number, natural log) and its perplexity,
//! and the paper's headline, the average over sources: the mean of the per-source losses
//! (`source_average.loss`) and the mean of the per-source perplexities (`source_average.ppl`),
//! each source weighing the same.
//!
//! The log-probability by position: the true token at row index `t` (predicted from
//! `[0, t)`) falls in bucket `floor(log2 t)`, which covers `[2^b, 2^(b+1))` cut to the scored
//! `[k, L)`; each bucket reports the mean log-probability (minus the cross-entropy) over all
//! rows and sources.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{load_resident, AttentionMode, EvalError, Score};
use crate::backend::Backend;
use crate::batch::{Batch, StepOptions};
use crate::checkpoint;
use crate::config::{Arch, ModelConfig};
use crate::data::{
    open_corpus, CheckedCorpus, CorpusSummary, Cursor, Loader, LoaderOptions, Order,
};
use crate::flops::{forward_flops, inference_flops, StackTokens};
use crate::params::ParamStore;
use crate::run::check_tokenizer;

/// Which pairs to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridOptions {
    /// Context lengths `L`; empty = the corpus's row length.
    pub lengths: Vec<usize>,
    /// Prefix lengths `k`, each at least 1 and below every length.
    pub prefix_lens: Vec<usize>,
    /// Rows per forward pass.
    pub batch_rows: usize,
    /// Read only the first N rows of the corpus (corpus order), before any is skipped.
    pub max_rows: Option<u64>,
}

/// The average over sources, each source weighing the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceAverage {
    /// Mean of the per-source losses.
    pub loss: f64,
    /// Mean of the per-source perplexities.
    pub ppl: f64,
}

/// Mean log-probability of the true token over the positions `[first, end)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionBucket {
    pub first: usize,
    pub end: usize,
    pub tokens: u64,
    pub mean_logprob: f64,
}

/// The scores of one `(L, k)` pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridCell {
    pub length: usize,
    pub prefix_len: usize,
    /// Rows scored (rows at least `L` tokens long).
    pub rows: u64,
    /// Rows read but shorter than `L`, not scored.
    pub skipped_short: u64,
    /// Token-pooled over every source.
    pub overall: Score,
    pub source_average: SourceAverage,
    pub sources: BTreeMap<String, Score>,
    /// Per row, as `EvalReport`'s fields of the same names.
    pub inference_flops_per_example: f64,
    pub forward_flops_per_example: f64,
    /// By position bucket (see the module documentation), in position order.
    pub positions: Vec<PositionBucket>,
}

/// The whole grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridReport {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub data: PathBuf,
    /// `red` or `dec`.
    pub arch: Arch,
    /// The checkpoint's attention, in words (`AttentionMode::describe`).
    pub attention: String,
    /// Which tokens are scored, in words.
    pub scored: String,
    /// How `source_average` is computed, in words.
    pub source_average: String,
    /// Rows read from the corpus.
    pub rows_read: u64,
    pub results: Vec<GridCell>,
    /// The process's peak resident memory (`VmHWM` of `/proc/self/status`) after the
    /// evaluation, where the system reports it.
    pub peak_rss_bytes: Option<u64>,
}

/// A checked grid evaluation, ready to run.
pub struct GridJob {
    pub checkpoint: PathBuf,
    pub corpus: CorpusSummary,
    pub model: ModelConfig,
    pub step: u64,
    pub attention: AttentionMode,
    params: ParamStore,
    lengths: Vec<usize>,
    prefix_lens: Vec<usize>,
    max_rows: Option<u64>,
    step_options: StepOptions,
    loader: Loader,
}

/// Sums for one pair.
#[derive(Default)]
struct CellSums {
    sources: BTreeMap<String, (f64, u64, u64)>,
    rows: u64,
    skipped: u64,
    positions: BTreeMap<u32, (f64, u64, usize, usize)>,
    tokens: StackTokens,
}

/// The position bucket of row index `t >= 1`.
fn bucket(t: usize) -> u32 {
    usize::BITS - 1 - t.leading_zeros()
}

fn score(loss_sum: f64, tokens: u64, examples: u64) -> Score {
    let loss = if tokens > 0 {
        loss_sum / tokens as f64
    } else {
        f64::NAN
    };
    Score {
        loss,
        ppl: loss.exp(),
        tokens,
        examples,
    }
}

impl GridJob {
    /// Loads the checkpoint and opens the corpus; fails on a tokenizer mismatch, an empty grid,
    /// a length above the corpus's row length, or a prefix length of 0 or not below every
    /// length, before any work.
    pub fn prepare(
        checkpoint_path: &Path,
        data: &Path,
        options: GridOptions,
    ) -> Result<GridJob, EvalError> {
        GridJob::prepare_checked(checkpoint_path, data, options, true)
    }

    /// `prepare`, checking the checkpoint's and the token files' sha256 (each shard before its
    /// first row is read) only when `verify` is set.
    pub fn prepare_checked(
        checkpoint_path: &Path,
        data: &Path,
        options: GridOptions,
        verify: bool,
    ) -> Result<GridJob, EvalError> {
        let dir = checkpoint::resolve(checkpoint_path)?;
        let meta = checkpoint::load_meta(&dir)?;
        let (corpus, summary) = open_corpus(data)?;
        check_tokenizer(&dir, &meta.model, &meta.tokenizer, &summary)
            .map_err(|e| EvalError::Incompatible(e.to_string()))?;
        let max_len = summary.max_row_len();
        let mut lengths = options.lengths.clone();
        if lengths.is_empty() {
            lengths.push(max_len);
        }
        lengths.sort_unstable();
        lengths.dedup();
        let mut prefix_lens = options.prefix_lens.clone();
        prefix_lens.sort_unstable();
        prefix_lens.dedup();
        if prefix_lens.is_empty() {
            return Err(EvalError::Incompatible(
                "--prefix-len: give at least one prefix length".into(),
            ));
        }
        if let Some(&l) = lengths.iter().find(|&&l| l > max_len) {
            return Err(EvalError::Incompatible(format!(
                "--lengths {l} is above the row length of {} ({max_len} tokens)",
                data.display()
            )));
        }
        if prefix_lens[0] == 0 {
            return Err(EvalError::Incompatible(
                "--prefix-len must be at least 1 (RedLLM's encoder needs an input, and the first \
                 token has no prediction)"
                    .into(),
            ));
        }
        let (min_l, max_k) = (lengths[0], prefix_lens[prefix_lens.len() - 1]);
        if max_k >= min_l {
            return Err(EvalError::Incompatible(format!(
                "--prefix-len {max_k} must be below every length (--lengths {min_l} leaves \
                 nothing to score; the limit is {})",
                min_l - 1
            )));
        }
        let ckpt = checkpoint::load_checked(&dir, false, verify)?;
        let attention = AttentionMode::of_checkpoint(&ckpt.meta);
        let step_options = StepOptions {
            bidirectional_prefix: attention.bidirectional_prefix,
            reset_at_doc_boundaries: attention.reset_at_doc_boundaries,
            ..StepOptions::default()
        };
        let loader_options = LoaderOptions {
            epochs: Some(1),
            trim_trailing_padding: summary.tokenizer.pad_id != summary.tokenizer.eod_id,
            ..LoaderOptions::new(
                options.batch_rows.max(1),
                Order::Sequential,
                summary.tokenizer.pad_id,
            )
        };
        let corpus = CheckedCorpus::new(corpus, verify);
        let loader = Loader::spawn(Box::new(corpus), loader_options, Cursor::default())?;
        Ok(GridJob {
            checkpoint: dir,
            corpus: summary,
            model: ckpt.meta.model,
            step: ckpt.meta.step,
            attention,
            params: ckpt.params,
            lengths,
            prefix_lens,
            max_rows: options.max_rows,
            step_options,
            loader,
        })
    }

    /// The pairs in report order: by length, then prefix length.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        self.lengths
            .iter()
            .flat_map(|&l| self.prefix_lens.iter().map(move |&k| (l, k)))
            .collect()
    }

    /// Scores every pair; `progress` is called with the rows read so far.
    pub fn run(
        mut self,
        backend: &mut dyn Backend,
        mut progress: impl FnMut(u64),
    ) -> Result<GridReport, EvalError> {
        let pairs = self.pairs();
        let mut cells: Vec<CellSums> = pairs.iter().map(|_| CellSums::default()).collect();
        let mut rows_read = 0u64;
        let mut batch_no = 0u64;
        let resident = load_resident(backend, &self.model, &self.params)?;
        while let Some(loaded) = self.loader.next_batch()? {
            let mut batch = loaded.batch;
            if let Some(max) = self.max_rows {
                let left = max.saturating_sub(rows_read) as usize;
                if left == 0 {
                    break;
                }
                if batch.rows > left {
                    batch = super::truncate_rows(batch, left);
                }
            }
            rows_read += batch.rows as u64;
            for (cell, &(l, k)) in cells.iter_mut().zip(&pairs) {
                let Some(cut) = cut_rows(&batch, l, k) else {
                    cell.skipped += batch.rows as u64;
                    continue;
                };
                cell.skipped += (batch.rows - cut.rows) as u64;
                let stats = match backend.resident().filter(|_| resident) {
                    Some(device) => {
                        device.forward_loss_loaded(&self.model, &cut, &self.step_options)
                    }
                    None => {
                        backend.forward_loss(&self.model, &self.params, &cut, &self.step_options)
                    }
                }
                .map_err(|source| EvalError::Backend {
                    batch: batch_no,
                    source,
                })?;
                for r in 0..cut.rows {
                    let entry = cell.sources.entry(cut.source[r].clone()).or_default();
                    entry.0 += stats.row_loss.get(r).copied().unwrap_or(0.0);
                    entry.1 += stats.row_tokens.get(r).copied().unwrap_or(0) as u64;
                    entry.2 += 1;
                    let token_loss = stats.row_token_loss.get(r).map_or(&[][..], |v| &v[..]);
                    for (i, ce) in token_loss.iter().enumerate() {
                        let t = k + i;
                        let b = bucket(t);
                        let slot = cell.positions.entry(b).or_insert((0.0, 0, t, t));
                        slot.0 -= ce;
                        slot.1 += 1;
                        slot.2 = slot.2.min(t);
                        slot.3 = slot.3.max(t + 1);
                    }
                }
                cell.rows += cut.rows as u64;
                cell.tokens.add(&StackTokens::from_batch(
                    &self.model,
                    &cut,
                    &self.step_options,
                ));
            }
            batch_no += 1;
            progress(rows_read);
        }
        let results: Vec<GridCell> = cells
            .into_iter()
            .zip(&pairs)
            .map(|(cell, &(length, prefix_len))| self.finish_cell(cell, length, prefix_len))
            .collect();
        if results.iter().all(|c| c.overall.tokens == 0) {
            return Err(EvalError::NoRowLongEnough {
                dir: self.corpus.dir.clone(),
                length: self.lengths[0],
            });
        }
        Ok(GridReport {
            checkpoint: self.checkpoint.clone(),
            step: self.step,
            data: self.corpus.dir.clone(),
            arch: self.model.arch,
            attention: self.attention.describe(self.model.arch),
            scored: "tokens [k, L) of each row's first L tokens given all before them, the same \
                     tokens for both architectures; rows shorter than L are skipped"
                .to_string(),
            source_average: "loss: mean of the per-source losses; ppl: mean of the per-source \
                             perplexities (each source weighs the same)"
                .to_string(),
            rows_read,
            results,
            peak_rss_bytes: peak_rss_bytes(),
        })
    }

    fn finish_cell(&self, cell: CellSums, length: usize, prefix_len: usize) -> GridCell {
        let sources: BTreeMap<String, Score> = cell
            .sources
            .iter()
            .map(|(name, &(l, t, e))| (name.clone(), score(l, t, e)))
            .collect();
        let (loss, tokens) = cell
            .sources
            .values()
            .fold((0.0, 0u64), |(l, t), s| (l + s.0, t + s.1));
        let n = sources.len().max(1) as f64;
        let source_average = if sources.is_empty() {
            SourceAverage {
                loss: f64::NAN,
                ppl: f64::NAN,
            }
        } else {
            SourceAverage {
                loss: sources.values().map(|s| s.loss).sum::<f64>() / n,
                ppl: sources.values().map(|s| s.ppl).sum::<f64>() / n,
            }
        };
        let per_row = |flops: f64| match cell.rows {
            0 => 0.0,
            rows => flops / rows as f64,
        };
        GridCell {
            length,
            prefix_len,
            rows: cell.rows,
            skipped_short: cell.skipped,
            overall: score(loss, tokens, cell.rows),
            source_average,
            sources,
            inference_flops_per_example: per_row(inference_flops(&self.model, &cell.tokens)),
            forward_flops_per_example: per_row(forward_flops(&self.model, &cell.tokens)),
            positions: cell
                .positions
                .values()
                .map(|&(sum, tokens, first, end)| PositionBucket {
                    first,
                    end,
                    tokens,
                    mean_logprob: sum / tokens as f64,
                })
                .collect(),
        }
    }
}

/// The rows of `batch` at least `l` tokens long, cut to their first `l` tokens with the prefix
/// `k`; `None` when no row is long enough.
fn cut_rows(batch: &Batch, l: usize, k: usize) -> Option<Batch> {
    let keep: Vec<usize> = (0..batch.rows).filter(|&r| batch.length[r] >= l).collect();
    if keep.is_empty() {
        return None;
    }
    let mut tokens = Vec::with_capacity(keep.len() * l);
    for &r in &keep {
        tokens.extend_from_slice(&batch.row(r)[..l]);
    }
    Some(Batch {
        rows: keep.len(),
        seq: l,
        tokens,
        prefix_len: vec![k; keep.len()],
        length: vec![l; keep.len()],
        doc_starts: keep
            .iter()
            .map(|&r| {
                let starts = batch.doc_starts.get(r).map_or(&[][..], |v| &v[..]);
                starts
                    .iter()
                    .copied()
                    .filter(|&s| (s as usize) < l)
                    .collect()
            })
            .collect(),
        source: keep.iter().map(|&r| batch.source[r].clone()).collect(),
    })
}

/// `VmHWM` of `/proc/self/status` in bytes, where the system has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Errors writing the positions file.
#[derive(Debug, thiserror::Error)]
pub enum PositionsError {
    #[error("{}: --positions takes a .csv or .jsonl file", .0.display())]
    Extension(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `path` names a positions file `write_positions` can write (`.csv`, `.jsonl`).
pub fn check_positions_path(path: &Path) -> Result<(), PositionsError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") | Some("jsonl") => Ok(()),
        _ => Err(PositionsError::Extension(path.to_path_buf())),
    }
}

/// Writes the log-probability by position of every pair: CSV (`.csv`, header
/// `length,prefix_len,first,end,tokens,mean_logprob`) or JSON Lines (`.jsonl`, one object with
/// those keys per line), one line per (pair, bucket) in report order.
pub fn write_positions(report: &GridReport, path: &Path) -> Result<(), PositionsError> {
    check_positions_path(path)?;
    let csv = path.extension().and_then(|e| e.to_str()) == Some("csv");
    let mut out = String::new();
    if csv {
        out.push_str("length,prefix_len,first,end,tokens,mean_logprob\n");
    }
    for cell in &report.results {
        for b in &cell.positions {
            if csv {
                out.push_str(&format!(
                    "{},{},{},{},{},{:.9}\n",
                    cell.length, cell.prefix_len, b.first, b.end, b.tokens, b.mean_logprob
                ));
            } else {
                let line = serde_json::json!({
                    "length": cell.length,
                    "prefix_len": cell.prefix_len,
                    "first": b.first,
                    "end": b.end,
                    "tokens": b.tokens,
                    "mean_logprob": b.mean_logprob,
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
    }
    let io = |source| PositionsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(out.as_bytes()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 1);
        assert_eq!(bucket(4), 2);
        assert_eq!(bucket(1023), 9);
        assert_eq!(bucket(1024), 10);
    }

    #[test]
    fn cut_rows_skips_short_rows_and_drops_later_boundaries() {
        let batch = Batch {
            rows: 3,
            seq: 6,
            tokens: (0..18).collect(),
            prefix_len: vec![3; 3],
            length: vec![6, 3, 5],
            doc_starts: vec![vec![2, 5], vec![], vec![4]],
            source: vec!["a".into(), "b".into(), "c".into()],
        };
        let cut = cut_rows(&batch, 4, 1).unwrap();
        assert_eq!(cut.rows, 2);
        assert_eq!(cut.tokens, vec![0, 1, 2, 3, 12, 13, 14, 15]);
        assert_eq!(cut.doc_starts, vec![vec![2], vec![]]);
        assert_eq!(cut.source, vec!["a".to_string(), "c".to_string()]);
        assert_eq!(cut.prefix_len, vec![1, 1]);
        assert!(cut_rows(&batch, 7, 1).is_none());
    }
}
