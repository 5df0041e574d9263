//! The batch loader: a background thread that reads examples in order, pads them into
//! [`Batch`]es and hands them over a bounded channel, so reading and padding overlap with the
//! model's step.
//!
//! Each batch travels with the cursor just after it; the trainer saves that cursor with a
//! checkpoint, and a loader started from it produces the same batches that followed.
//!
//! With a `Stager` (a device backend's), the thread also prepares each batch for the device
//! (`spawn_staged`, `next_staged`), so that work overlaps the previous step too.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{
    Cursor, DataError, ExampleSource, MixturePlan, MixtureState, OwnedExample, Permutation,
};
use crate::backend::{Staged, Stager};
use crate::batch::Batch;
use crate::rng::counter_hash;

/// In which order examples are visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Corpus order (evaluation).
    Sequential,
    /// A fresh seeded permutation every epoch (training).
    Shuffled { seed: u64 },
}

/// How batches are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Rows per batch (a micro-batch when accumulating gradients).
    pub rows: usize,
    pub order: Order,
    /// Padding token id (the corpus tokenizer's).
    pub pad_id: u32,
    /// Stop after this many epochs (the last batch may be short); `None` repeats forever.
    pub epochs: Option<u64>,
    /// Replace every row's prefix length by this value (evaluation at a fixed prefix); rows not
    /// longer than it are skipped, as they have nothing to score.
    pub prefix_len_override: Option<usize>,
    /// Require `1 <= prefix_len < length` (RedLLM needs an encoder input and a target).
    pub require_split: bool,
    /// Drop trailing padding from rows (a packed corpus may pad its final sequence; padding
    /// must not be scored). A row left with nothing to score is skipped.
    pub trim_trailing_padding: bool,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Draw examples by source weight (see `MixturePlan`) instead of walking `order`; the seed
    /// is `order`'s (0 when sequential). `None` keeps the plain order.
    pub mixture: Option<Arc<MixturePlan>>,
}

impl LoaderOptions {
    pub fn new(rows: usize, order: Order, pad_id: u32) -> LoaderOptions {
        LoaderOptions {
            rows,
            order,
            pad_id,
            epochs: None,
            prefix_len_override: None,
            require_split: false,
            trim_trailing_padding: false,
            prefetch: 2,
            mixture: None,
        }
    }
}

/// A batch, where it came from and where the data stands after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedBatch {
    pub batch: Batch,
    /// Corpus indices of the rows, in row order.
    pub indices: Vec<u64>,
    /// The cursor just after this batch.
    pub cursor: Cursor,
}

type Produced = Result<(LoadedBatch, Option<Staged>), DataError>;

/// A running loader. Dropping it stops the thread.
pub struct Loader {
    receiver: Option<Receiver<Produced>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts reading `source` at `start`.
    pub fn spawn(
        source: Box<dyn ExampleSource>,
        options: LoaderOptions,
        start: Cursor,
    ) -> Result<Loader, DataError> {
        Loader::spawn_staged(source, options, start, None)
    }

    /// `spawn`, with `stager` preparing every batch on the loader's thread.
    pub fn spawn_staged(
        source: Box<dyn ExampleSource>,
        options: LoaderOptions,
        start: Cursor,
        stager: Option<Arc<dyn Stager>>,
    ) -> Result<Loader, DataError> {
        if source.is_empty() {
            return Err(DataError::Empty {
                place: source.place(),
            });
        }
        if options.rows == 0 {
            return Err(DataError::BadExample {
                place: source.place(),
                index: 0,
                problem: "batches must have at least one row".to_string(),
            });
        }
        if let Some(plan) = &options.mixture {
            if plan.examples() != source.len() {
                return Err(DataError::Mixture {
                    place: source.place(),
                    problem: format!(
                        "the mixture was planned over {} examples, the source holds {}",
                        plan.examples(),
                        source.len()
                    ),
                });
            }
        }
        let (sender, receiver) = sync_channel(options.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("redpack-batches".to_string())
            .spawn(move || produce(source.as_ref(), &options, start, stager, &sender))
            .map_err(|_| DataError::LoaderGone)?;
        Ok(Loader {
            receiver: Some(receiver),
            handle: Some(handle),
        })
    }

    /// The next batch, or `None` once the requested epochs are done.
    pub fn next_batch(&mut self) -> Result<Option<LoadedBatch>, DataError> {
        Ok(self.next_staged()?.map(|(batch, _)| batch))
    }

    /// The next batch with what the stager made of it (`None` without a stager).
    pub fn next_staged(&mut self) -> Result<Option<(LoadedBatch, Option<Staged>)>, DataError> {
        let receiver = self.receiver.as_ref().ok_or(DataError::LoaderGone)?;
        match receiver.recv() {
            Ok(Ok(batch)) => Ok(Some(batch)),
            Ok(Err(e)) => Err(e),
            // The sender is dropped when the producer finished normally (or panicked).
            Err(_) => match self.handle.take().map(|h| h.join()) {
                Some(Err(payload)) => Err(DataError::LoaderPanicked(panic_message(&*payload))),
                _ => Ok(None),
            },
        }
    }
}

/// The message a panic carried, for the error that reports it.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, which ends its loop.
        drop(self.receiver.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The producer loop; returns when the consumer is gone, the epochs are done or on an error
/// (which it sends first).
fn produce(
    source: &dyn ExampleSource,
    options: &LoaderOptions,
    start: Cursor,
    stager: Option<Arc<dyn Stager>>,
    sender: &SyncSender<Produced>,
) {
    let mut walker = Walker::new(source.len(), options.order, start, options.mixture.clone());
    loop {
        match next_batch(source, options, &mut walker) {
            Ok(Some(batch)) => {
                let staged = stager.as_ref().map(|s| s.stage(&batch.batch));
                if sender.send(Ok((batch, staged))).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = sender.send(Err(e));
                return;
            }
        }
    }
}

/// Walks the example order epoch by epoch, or the mixture stream (whose draws the cursor
/// counts the same way: `n` per epoch).
struct Walker {
    n: u64,
    order: Order,
    cursor: Cursor,
    permutation: Permutation,
    mixture: Option<MixtureState>,
}

impl Walker {
    fn new(n: u64, order: Order, cursor: Cursor, mixture: Option<Arc<MixturePlan>>) -> Walker {
        let mixture = mixture.map(|plan| {
            let draws = plan.draws_at(cursor);
            MixtureState::at(plan, order_seed(order), draws)
        });
        Walker {
            n,
            order,
            cursor,
            permutation: epoch_permutation(n, order, cursor.epoch),
            mixture,
        }
    }

    /// The next corpus index, or `None` when `epochs` are complete.
    fn next(&mut self, epochs: Option<u64>) -> Option<u64> {
        if self.cursor.position >= self.n {
            if epochs.is_some_and(|e| self.cursor.epoch + 1 >= e) {
                return None;
            }
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                position: 0,
            };
            if self.mixture.is_none() {
                self.permutation = epoch_permutation(self.n, self.order, self.cursor.epoch);
            }
        }
        let position = self.cursor.position;
        self.cursor.position += 1;
        if let Some(mixture) = &mut self.mixture {
            return Some(mixture.next_index());
        }
        Some(match self.order {
            Order::Sequential => position,
            Order::Shuffled { .. } => self.permutation.get(position),
        })
    }
}

fn order_seed(order: Order) -> u64 {
    match order {
        Order::Sequential => 0,
        Order::Shuffled { seed } => seed,
    }
}

/// The order of one epoch: keyed by the seed and the epoch number, nothing else.
fn epoch_permutation(n: u64, order: Order, epoch: u64) -> Permutation {
    Permutation::new(n, counter_hash(order_seed(order), &[0x5348_5546, epoch]))
}

fn next_batch(
    source: &dyn ExampleSource,
    options: &LoaderOptions,
    walker: &mut Walker,
) -> Result<Option<LoadedBatch>, DataError> {
    let mut rows = Vec::with_capacity(options.rows);
    let mut indices = Vec::with_capacity(options.rows);
    // Skipped in a row: a whole epoch of them means no example can ever be used, which would
    // otherwise spin forever when epochs are unlimited.
    let mut skipped = 0u64;
    while rows.len() < options.rows {
        let Some(index) = walker.next(options.epochs) else {
            break;
        };
        let mut example = source.example(index)?;
        if options.trim_trailing_padding {
            let real = example
                .tokens
                .iter()
                .rposition(|&t| t != options.pad_id)
                .map_or(0, |last| last + 1);
            example.tokens.truncate(real);
            example.doc_starts.retain(|&s| (s as usize) < real);
        }
        // Rows with nothing to score: at most `k` tokens under a fixed prefix `k`, or (after
        // trimming padding) no target left.
        let len = example.tokens.len();
        let nothing_to_score = match options.prefix_len_override {
            Some(k) => len <= k,
            None if options.trim_trailing_padding => {
                len < 2 || (options.require_split && len <= example.prefix_len)
            }
            None => false,
        };
        if nothing_to_score {
            skipped += 1;
            if skipped >= walker.n {
                if options.epochs.is_none() {
                    // Training repeats epochs forever: say why it cannot, rather than end.
                    return Err(DataError::BadExample {
                        place: source.place(),
                        index,
                        problem: format!(
                            "every example in a row, a whole epoch of {}, has nothing to score ({} tokens here, prefix length {}{})",
                            walker.n,
                            len,
                            example.prefix_len,
                            options
                                .prefix_len_override
                                .map(|k| format!(", scored from position {k}"))
                                .unwrap_or_default()
                        ),
                    });
                }
                break;
            }
            continue;
        }
        if let Some(k) = options.prefix_len_override {
            example.prefix_len = k;
        }
        skipped = 0;
        check_example(source, options, index, &example)?;
        rows.push(example);
        indices.push(index);
    }
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(LoadedBatch {
        batch: assemble(&rows, options.pad_id),
        indices,
        cursor: walker.cursor,
    }))
}

fn check_example(
    source: &dyn ExampleSource,
    options: &LoaderOptions,
    index: u64,
    example: &OwnedExample,
) -> Result<(), DataError> {
    let len = example.tokens.len();
    let problem = if len < 2 {
        Some(format!("{len} tokens; at least 2 are needed to score one"))
    } else if example.prefix_len > len {
        Some(format!(
            "prefix length {} exceeds length {len}",
            example.prefix_len
        ))
    } else if options.require_split && (example.prefix_len == 0 || example.prefix_len == len) {
        Some(format!(
            "prefix length {} of {len} leaves no encoder input or no target",
            example.prefix_len
        ))
    } else {
        example
            .doc_starts
            .iter()
            .find(|&&s| s as usize >= len)
            .map(|s| format!("document start {s} is past the end ({len} tokens)"))
    };
    match problem {
        Some(problem) => Err(DataError::BadExample {
            place: source.place(),
            index,
            problem,
        }),
        None => Ok(()),
    }
}

/// Pads rows to the longest one with `pad_id`.
pub fn assemble(rows: &[OwnedExample], pad_id: u32) -> Batch {
    let seq = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
    let mut tokens = Vec::with_capacity(rows.len() * seq);
    for row in rows {
        tokens.extend_from_slice(&row.tokens);
        tokens.resize(tokens.len() + seq - row.tokens.len(), pad_id);
    }
    Batch {
        rows: rows.len(),
        seq,
        tokens,
        prefix_len: rows.iter().map(|r| r.prefix_len).collect(),
        length: rows.iter().map(|r| r.tokens.len()).collect(),
        doc_starts: rows.iter().map(|r| r.doc_starts.clone()).collect(),
        source: rows.iter().map(|r| r.source.clone()).collect(),
    }
}
