//! The training loop: prepare (open the corpus, check it against the mode and any checkpoint,
//! build or load the model) so that every mistake surfaces before the first step, then run
//! optimizer steps with gradient accumulation, logging, validation and checkpoints.
//!
//! One optimizer step: zero the gradients; for each of `accum` micro-batches, add the gradient
//! of the summed loss; divide by the scored tokens of all micro-batches (so the step sees the
//! gradient of the mean loss over the whole batch, whatever the split); optionally clip the
//! global norm; apply Adafactor at the schedule's rate. A non-finite loss, gradient or update
//! stops the run before anything is saved, so the last checkpoint stays good.
//!
//! With validation on (`settings.eval`, see `validate`), after the update of every `every`-th
//! step and of the last, the eval corpus is scored with the new parameters; the result goes on
//! that step's `metrics.jsonl` record (`eval`), and a new lowest pooled eval loss becomes
//! `TrainRun::best` and, when the run keeps it, `RUN/checkpoints/best` (written before the step's
//! regular checkpoint). The best so far is stored in every checkpoint's metadata, so a resumed
//! run goes on choosing over the whole run.

mod prepare;
pub mod settings;
mod tokenizer;
pub mod validate;

use std::path::PathBuf;
use std::time::Instant;

pub use prepare::TrainRun;
pub use settings::{
    BatchSize, DataRecipe, EvalRecipe, Mode, Objective, ObjectiveRecipe, Recipe, SettingsError,
    TrainSettings, Validation,
};
pub use tokenizer::check_tokenizer;

use crate::backend::{Backend, BackendError, MicroBatch};
use crate::batch::StepOptions;
use crate::checkpoint::{self, BestEval, CheckpointError, CheckpointMeta, RngState};
use crate::data::{DataError, Loader, MixtureState};
use crate::flops::{paper_training_flops, training_flops, StackTokens};
use crate::metrics::{MetricsError, MetricsLog, StepMetrics, StepObserver};
use crate::optim::{self, OptimError};
use crate::params::ParamStore;
use crate::rng::counter_hash;

/// Tag mixed into dropout seeds so they never collide with other uses of the run seed.
const DROPOUT_STREAM: u64 = 0x6472_6f70;

/// Why a run stopped early or did not start.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    #[error("step {step}: {source}")]
    Backend {
        step: u64,
        #[source]
        source: BackendError,
    },
    #[error("{}: {what}", path.display())]
    Incompatible { path: PathBuf, what: String },
    #[error("step {step}: {what} is not finite ({value}); the run stopped. {}", last_good(.last_checkpoint))]
    NonFinite {
        step: u64,
        what: &'static str,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("step {step}: the batch has no scored tokens (every target is empty)")]
    NoScoredTokens { step: u64 },
}

fn last_good(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(
            "The last good checkpoint is {}; continue with --resume, perhaps with a lower --lr",
            p.display()
        ),
        None => "No checkpoint was written yet".to_string(),
    }
}

/// Sums over the micro-batches of one step.
#[derive(Debug, Default)]
struct Accumulated {
    loss_sum: f64,
    z_sum: f64,
    /// Scored tokens.
    scored: u64,
    /// Non-padding tokens read.
    real_tokens: u64,
    flops: f64,
    paper_flops: f64,
}

/// How a finished run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// The step the run ended at (`settings.steps`).
    pub step: u64,
    /// The step it started from (0, or the resumed checkpoint's).
    pub start_step: u64,
    pub final_checkpoint: PathBuf,
    /// Metrics of the steps this invocation ran.
    pub metrics: Vec<StepMetrics>,
    /// The best evaluation of the whole run (with validation on), and the best checkpoint's
    /// directory when the run keeps it.
    pub best: Option<BestEval>,
    pub best_checkpoint: Option<PathBuf>,
}

impl TrainRun {
    /// Runs from the prepared state to `settings.steps`.
    pub fn run(
        mut self,
        backend: &mut dyn Backend,
        observer: &mut dyn StepObserver,
    ) -> Result<TrainOutcome, TrainError> {
        let settings = self.settings.clone();
        let mut log = MetricsLog::open(&settings.out, self.start_step)?;
        let mut grads = self.params.zeros_like();
        let base_options = StepOptions {
            z_loss: settings.objective.z_loss,
            dropout: settings.objective.dropout,
            dropout_seed: 0,
            bidirectional_prefix: settings.objective.bidirectional_prefix,
            reset_at_doc_boundaries: settings.objective.reset_at_doc_boundaries,
            loss_on_prefix: self.loss_on_prefix,
        };
        let mut metrics = Vec::new();
        let mut last_checkpoint = self.resumed_from.clone();
        let mut final_checkpoint = None;
        let mut best_checkpoint = self
            .settings
            .eval
            .as_ref()
            .filter(|e| e.keep_best)
            .map(|_| {
                settings
                    .out
                    .join(checkpoint::CHECKPOINTS_DIR)
                    .join(checkpoint::BEST_DIR)
            })
            .filter(|dir| dir.join(checkpoint::META_FILE).is_file());
        // A device that keeps the parameters and the optimizer state resident runs the whole
        // step; the host copies are refreshed for checkpoints only.
        let resident = match backend.resident() {
            Some(device) => {
                device
                    .load_training(&self.model, &self.params, &self.optimizer)
                    .map_err(|source| TrainError::Backend {
                        step: self.start_step + 1,
                        source,
                    })?;
                true
            }
            None => false,
        };
        // A resident device prepares its batches on the loader's thread (pinned buffers for
        // CUDA), so that work overlaps the step before.
        let stager = match backend.resident().filter(|_| resident) {
            Some(device) => device.stager(&self.model, &base_options),
            None => None,
        };
        // The realized mixture, replayed to the cursor so that it counts from the run's start.
        let mut realized = self.mixture.clone().map(|plan| {
            let draws = plan.draws_at(self.cursor);
            MixtureState::at(plan, settings.seed, draws)
        });
        let mut loader = Loader::spawn_staged(
            self.source.take().ok_or(DataError::LoaderGone)?,
            self.loader_options.clone(),
            self.cursor,
            stager,
        )?;
        for step in self.start_step + 1..=settings.steps {
            let started = Instant::now();
            if !resident {
                grads.fill_zero();
            }
            let Accumulated {
                loss_sum,
                z_sum,
                scored,
                real_tokens,
                flops,
                paper_flops,
            } = self.accumulate(
                step,
                &mut loader,
                backend,
                resident,
                &mut grads,
                &base_options,
            )?;
            if scored == 0 {
                return Err(TrainError::NoScoredTokens { step });
            }
            let loss = loss_sum / scored as f64;
            let z_loss = z_sum / scored as f64;
            let non_finite = |what, value| TrainError::NonFinite {
                step,
                what,
                value,
                last_checkpoint: last_checkpoint.clone(),
            };
            if !loss.is_finite() {
                return Err(non_finite("the loss", loss));
            }
            if !z_loss.is_finite() {
                return Err(non_finite("the z-loss", z_loss));
            }
            let lr = settings.schedule.lr(step, settings.steps);
            let scale = (1.0 / scored as f64) as f32;
            let (grad_norm, update) = match backend.resident().filter(|_| resident) {
                Some(device) => device
                    .apply_update(scale, settings.grad_clip_norm, lr as f32)
                    .map_err(|source| TrainError::Backend { step, source })?,
                None => {
                    optim::scale_grads(&mut grads, scale);
                    let grad_norm = match settings.grad_clip_norm {
                        Some(max) => optim::clip_global_norm(&mut grads, max),
                        None => optim::global_norm(&grads),
                    };
                    let update = grad_norm
                        .is_finite()
                        .then(|| self.optimizer.update(&mut self.params, &grads, lr as f32))
                        .transpose()?;
                    (grad_norm, update)
                }
            };
            let Some(update) = update.filter(|_| grad_norm.is_finite()) else {
                return Err(non_finite("the gradient norm", grad_norm));
            };
            if !update.update_norm.is_finite() {
                return Err(non_finite("the update norm", update.update_norm));
            }
            self.tokens_seen += scored;
            self.flops_seen += flops;
            self.paper_flops_seen += paper_flops;
            let mixture = realized.as_mut().map(|state| {
                state.advance_to(state.plan().draws_at(self.cursor));
                state.proportions()
            });
            let elapsed = started.elapsed().as_secs_f64();
            let mut record = StepMetrics {
                step,
                loss,
                z_loss,
                lr,
                grad_norm,
                update_norm: update.update_norm,
                tokens: scored,
                tokens_seen: self.tokens_seen,
                flops,
                flops_seen: self.flops_seen,
                paper_flops,
                paper_flops_seen: self.paper_flops_seen,
                epoch: self.cursor.epoch,
                position: self.cursor.position,
                elapsed_s: elapsed,
                tokens_per_s: if elapsed > 0.0 {
                    real_tokens as f64 / elapsed
                } else {
                    0.0
                },
                mixture,
                eval: None,
            };
            // Whether the host copies hold this step's parameters (a resident device keeps them).
            let mut host_current = !resident;
            if let Some(validator) = self
                .validator
                .as_ref()
                .filter(|v| v.settings.due(step, settings.steps))
            {
                let mut eval =
                    validator.evaluate(step, &self.model, &self.params, backend, resident)?;
                if !eval.loss.is_finite() {
                    return Err(non_finite("the eval loss", eval.loss));
                }
                eval.best = self.best.as_ref().is_none_or(|b| eval.loss < b.loss);
                if eval.best {
                    self.best = Some(BestEval {
                        step,
                        loss: eval.loss,
                        source_avg_loss: eval.source_avg_loss,
                        data: validator.settings.data.clone(),
                        rows: validator.settings.rows,
                    });
                    if validator.settings.keep_best {
                        self.refresh_host(backend, resident, &mut host_current, step)?;
                        best_checkpoint = Some(self.save_best(step)?);
                    }
                }
                observer.on_eval(step, &eval);
                record.eval = Some(eval);
            }
            log.append(&record)?;
            observer.on_step(&record);
            metrics.push(record);
            if step % settings.checkpoint_every == 0 || step == settings.steps {
                self.refresh_host(backend, resident, &mut host_current, step)?;
                let dir = self.save(step)?;
                checkpoint::prune(&settings.out, settings.keep_checkpoints as usize)?;
                observer.on_checkpoint(step, &dir);
                last_checkpoint = Some(dir.clone());
                final_checkpoint = Some(dir);
            }
        }
        let final_checkpoint = match final_checkpoint.or(last_checkpoint) {
            Some(dir) => dir,
            // Resumed at (or past) the last step: nothing ran, the latest checkpoint stands.
            None => self.save(self.start_step)?,
        };
        Ok(TrainOutcome {
            step: settings.steps.max(self.start_step),
            start_step: self.start_step,
            final_checkpoint,
            metrics,
            best: self.best.clone(),
            best_checkpoint,
        })
    }

    /// Copies a resident device's parameters and optimizer state into the host copies, once
    /// per step.
    fn refresh_host(
        &mut self,
        backend: &mut dyn Backend,
        resident: bool,
        host_current: &mut bool,
        step: u64,
    ) -> Result<(), TrainError> {
        if *host_current {
            return Ok(());
        }
        if let Some(device) = backend.resident().filter(|_| resident) {
            device
                .store_training(&mut self.params, &mut self.optimizer)
                .map_err(|source| TrainError::Backend { step, source })?;
        }
        *host_current = true;
        Ok(())
    }

    /// Runs the `accum` micro-batches of one step, adding their summed-loss gradients into
    /// `grads` and advancing the data cursor.
    fn accumulate(
        &mut self,
        step: u64,
        loader: &mut Loader,
        backend: &mut dyn Backend,
        resident: bool,
        grads: &mut ParamStore,
        base_options: &StepOptions,
    ) -> Result<Accumulated, TrainError> {
        let mut sums = Accumulated::default();
        let mut micro_batches = Vec::with_capacity(self.settings.accum as usize);
        for micro in 0..self.settings.accum {
            let (loaded, staged) = loader.next_staged()?.ok_or(DataError::LoaderGone)?;
            let options = StepOptions {
                dropout_seed: counter_hash(self.settings.seed, &[DROPOUT_STREAM, step, micro]),
                ..*base_options
            };
            micro_batches.push((loaded, options, staged));
        }
        // One call per step, so a device backend moves parameters and gradients once.
        let stats = match backend.resident().filter(|_| resident) {
            Some(device) => {
                let batches: Vec<_> = micro_batches
                    .iter()
                    .map(|(l, options, staged)| MicroBatch {
                        batch: &l.batch,
                        options: *options,
                        staged: staged.as_ref(),
                    })
                    .collect();
                device.accumulate(&self.model, &batches)
            }
            None => {
                let batches: Vec<_> = micro_batches
                    .iter()
                    .map(|(l, o, _)| (&l.batch, *o))
                    .collect();
                backend.forward_backward_many(&self.model, &self.params, &batches, grads)
            }
        }
        .map_err(|source| TrainError::Backend { step, source })?;
        for ((loaded, options, _), stats) in micro_batches.iter().zip(stats) {
            sums.loss_sum += stats.loss_sum;
            sums.z_sum += stats.z_loss_sum;
            sums.scored += stats.tokens as u64;
            sums.real_tokens += loaded.batch.length.iter().sum::<usize>() as u64;
            let tokens = StackTokens::from_batch(&self.model, &loaded.batch, options);
            sums.flops += training_flops(&self.model, &tokens);
            sums.paper_flops += paper_training_flops(&self.model, &tokens);
            self.cursor = loaded.cursor;
        }
        Ok(sums)
    }

    fn save(&self, step: u64) -> Result<PathBuf, TrainError> {
        Ok(checkpoint::save(
            &self.settings.out,
            &self.meta(step),
            &self.params,
            &self.optimizer.state_tensors(),
        )?)
    }

    /// Saves the current state as `checkpoints/best` (`self.best` is its evaluation).
    fn save_best(&self, step: u64) -> Result<PathBuf, TrainError> {
        let meta = self.meta(step);
        let best = meta.best.clone().ok_or_else(|| TrainError::Incompatible {
            path: self.settings.out.clone(),
            what: "internal: no best evaluation to save".into(),
        })?;
        Ok(checkpoint::save_best(
            &self.settings.out,
            &meta,
            &self.params,
            &self.optimizer.state_tensors(),
            &best,
        )?)
    }

    fn meta(&self, step: u64) -> CheckpointMeta {
        CheckpointMeta {
            format: checkpoint::FORMAT_NAME.to_string(),
            format_version: checkpoint::FORMAT_VERSION,
            step,
            model: self.model.clone(),
            optimizer: self.optimizer.config().clone(),
            cursor: self.cursor,
            rng: RngState {
                seed: self.settings.seed,
            },
            tokenizer: self.tokenizer.clone(),
            tokens_seen: self.tokens_seen,
            flops_seen: self.flops_seen,
            paper_flops_seen: self.paper_flops_seen,
            settings: serde_json::to_value(&self.settings).unwrap_or(serde_json::Value::Null),
            best: self.best.clone(),
        }
    }
}
