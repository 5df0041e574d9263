//! The training loop: prepare (open the corpus, check it against the mode and any checkpoint,
//! build or load the model) so that every mistake surfaces before the first step, then run
//! optimizer steps with gradient accumulation, logging, validation and checkpoints.
//!
//! One optimizer step: zero the gradients; for each of `accum` micro-batches, add the gradient
//! of the summed loss; divide by the scored tokens of all micro-batches (so the step sees the
//! gradient of the mean loss over the whole batch, whatever the split); optionally clip the
//! global norm; apply Adafactor at the schedule's rate.
//!
//! Every step passes the health checks of `health` (non-finite values, loss spikes, a collapsed
//! gradient) before its update is kept. A failure stops the run before anything is saved, and
//! since the step's loss and gradient came from the previous step's weights, that step's
//! checkpoint (if any, and the best checkpoint if it is that step's) is marked unhealthy; the
//! error names the latest checkpoint that is still healthy, to resume from.
//!
//! With validation on (`settings.eval`, see `validate`), after the update of every `every`-th
//! step and of the last, the eval corpus is scored with the new parameters; the result goes on
//! that step's `metrics.jsonl` record (`eval`), and a new lowest pooled eval loss becomes
//! `TrainRun::best` and, when the run keeps it, `RUN/checkpoints/best` (written before the step's
//! regular checkpoint). The best so far is stored in every checkpoint's metadata, so a resumed
//! run goes on choosing over the whole run.

pub mod health;
pub mod memory;
mod prepare;
pub mod settings;
mod tokenizer;
pub mod validate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use prepare::TrainRun;
pub use settings::{
    BatchSize, DataRecipe, EvalRecipe, Mode, Objective, ObjectiveRecipe, Recipe, SettingsError,
    TrainSettings, Validation,
};
pub use tokenizer::check_tokenizer;

use crate::backend::{Backend, BackendError, MicroBatch, Staged, Stager};
use crate::batch::StepOptions;
use crate::checkpoint::{
    self, BestEval, CheckpointError, CheckpointHealth, CheckpointMeta, RngState,
};
use crate::data::{DataError, Loader, MixtureState};
use crate::dist::Parallel;
use crate::flops::{paper_training_flops, training_flops, StackTokens};
use crate::metrics::{MetricsError, MetricsLog, StepMetrics, StepObserver};
use crate::optim::{self, OptimError};
use crate::params::ParamStore;
use crate::rng::counter_hash;
use health::{HealthMonitor, Problem};

/// Tag mixed into dropout seeds so they never collide with other uses of the run seed.
const DROPOUT_STREAM: u64 = 0x6472_6f70;

/// Why a run stopped early or did not start.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
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
    #[error("step {step}: {problem}; the run stopped.{} {}", marked_text(.marked), last_good_text(.last_good))]
    Unhealthy {
        step: u64,
        problem: health::Problem,
        /// Checkpoints marked unhealthy by this stop.
        marked: Vec<PathBuf>,
        /// The latest healthy checkpoint left, to resume from.
        last_good: Option<PathBuf>,
    },
    #[error("step {step}: the batch has no scored tokens (every target is empty)")]
    NoScoredTokens { step: u64 },
    #[error("data-parallel training: {0}")]
    Parallel(String),
}

fn marked_text(marked: &[PathBuf]) -> String {
    if marked.is_empty() {
        return String::new();
    }
    let dirs: Vec<String> = marked.iter().map(|d| d.display().to_string()).collect();
    format!(
        " The step's loss and gradient come from the weights of the step before, so {} {} marked unhealthy.",
        dirs.join(" and "),
        if dirs.len() == 1 { "is" } else { "are" }
    )
}

fn last_good_text(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(
            "The last good checkpoint is {} (finite weights, and the losses computed from them passed the checks): continue from it with --resume, perhaps with a lower --lr",
            p.display()
        ),
        None => "No good checkpoint exists: start again (--overwrite), perhaps with a lower --lr".to_string(),
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

/// A data-parallel rank's stager: stages the micro-batches of its share of each step (the loader
/// produces batches in order, from a step's first) and hands back nothing for the others.
struct ShareStager {
    inner: Arc<dyn Stager>,
    accum: u64,
    share: (u64, u64),
    next: AtomicU64,
}

impl Stager for ShareStager {
    fn stage(&self, batch: &crate::batch::Batch) -> Staged {
        let micro = self.next.fetch_add(1, Ordering::Relaxed) % self.accum;
        if (self.share.0..self.share.1).contains(&micro) {
            self.inner.stage(batch)
        } else {
            Box::new(())
        }
    }
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
        self,
        backend: &mut dyn Backend,
        observer: &mut dyn StepObserver,
    ) -> Result<TrainOutcome, TrainError> {
        self.run_parallel(backend, observer, Parallel::SINGLE)
    }

    /// Runs as one rank of a data-parallel job whose communicator `backend` has joined: this
    /// rank trains on its share of every step's micro-batches (`Parallel::share`), the backend
    /// sums gradients and losses over the ranks, and only rank 0 writes metrics and checkpoints.
    /// With `Parallel::SINGLE` it is `run`.
    pub fn run_parallel(
        mut self,
        backend: &mut dyn Backend,
        observer: &mut dyn StepObserver,
        parallel: Parallel,
    ) -> Result<TrainOutcome, TrainError> {
        let settings = self.settings.clone();
        if parallel.world_size > 1 {
            if backend.resident().is_none() {
                return Err(TrainError::Parallel(
                    "more than one rank needs the CUDA backend (--device cuda)".into(),
                ));
            }
            if !settings.accum.is_multiple_of(parallel.world_size as u64) {
                return Err(TrainError::Parallel(format!(
                    "the accumulation steps ({}) must be a multiple of the world size ({}): each rank trains on accum / world micro-batches of every step",
                    settings.accum, parallel.world_size
                )));
            }
        }
        self.parallel = parallel;
        let mut log = match parallel.writes() {
            true => Some(MetricsLog::open(&settings.out, self.start_step)?),
            false => None,
        };
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
        let mut health = HealthMonitor::new(
            settings.health,
            self.model.vocab_size,
            self.health.as_ref().and_then(|h| h.loss_average),
        );
        let mut last_checkpoint = self.resumed_from.clone();
        let mut prune_due = false;
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
            // A best checkpoint marked unhealthy is no longer the run's best.
            .filter(|dir| checkpoint::load_meta(dir).is_ok_and(|m| m.is_healthy()));
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
        // A rank prepares only the micro-batches it trains on.
        let stager = stager.map(|inner| match parallel.world_size {
            1 => inner,
            _ => Arc::new(ShareStager {
                inner,
                accum: settings.accum,
                share: parallel.share(settings.accum),
                next: AtomicU64::new(0),
            }) as Arc<dyn Stager>,
        });
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
            // The loss and gradient of this step come from the previous step's weights.
            let before = Some(step - 1);
            if let Err(problem) = health.check_loss(loss, z_loss) {
                return Err(self.stop(step, problem, before));
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
                    let update = health
                        .check_grad(loss, grad_norm)
                        .is_ok()
                        .then(|| self.optimizer.update(&mut self.params, &grads, lr as f32))
                        .transpose()?;
                    (grad_norm, update)
                }
            };
            if let Err(problem) = health.check_grad(loss, grad_norm) {
                return Err(self.stop(step, problem, before));
            }
            let Some(update) = update else {
                return Err(self.stop(
                    step,
                    Problem::NonFinite {
                        what: "the update".into(),
                        value: f64::NAN,
                    },
                    None,
                ));
            };
            if !update.update_norm.is_finite() {
                let problem = Problem::NonFinite {
                    what: "the update norm".into(),
                    value: update.update_norm,
                };
                return Err(self.stop(step, problem, None));
            }
            health.accept(loss);
            if std::mem::take(&mut prune_due) && parallel.writes() {
                checkpoint::prune(&settings.out, settings.keep_checkpoints as usize)?;
            }
            self.health = Some(CheckpointHealth {
                healthy: true,
                loss,
                grad_norm,
                loss_average: health.average(),
                problem: None,
            });
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
                let mut eval = validator.evaluate(
                    step,
                    &self.model,
                    &self.params,
                    backend,
                    resident,
                    self.parallel,
                )?;
                if !eval.loss.is_finite() {
                    let problem = Problem::NonFinite {
                        what: "the eval loss".into(),
                        value: eval.loss,
                    };
                    return Err(self.stop(step, problem, None));
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
                        // Every rank takes part in gathering the sharded optimizer state.
                        self.refresh_host(backend, resident, &mut host_current, step)?;
                        if parallel.writes() {
                            self.check_weights(step)?;
                            best_checkpoint = Some(self.save_best(step)?);
                        }
                    }
                }
                observer.on_eval(step, &eval);
                record.eval = Some(eval);
            }
            if let Some(log) = log.as_mut() {
                log.append(&record)?;
            }
            observer.on_step(&record);
            metrics.push(record);
            if step % settings.checkpoint_every == 0 || step == settings.steps {
                // Every rank takes part in gathering the sharded optimizer state.
                self.refresh_host(backend, resident, &mut host_current, step)?;
            }
            if (step % settings.checkpoint_every == 0 || step == settings.steps)
                && parallel.writes()
            {
                self.check_weights(step)?;
                let dir = self.save(step)?;
                // Older checkpoints go once this one is known to be good: after the next step's
                // checks, which are the first on its weights (or at the end of the run).
                prune_due = true;
                observer.on_checkpoint(step, &dir);
                last_checkpoint = Some(dir.clone());
                final_checkpoint = Some(dir);
            }
        }
        if prune_due && parallel.writes() {
            checkpoint::prune(&settings.out, settings.keep_checkpoints as usize)?;
        }
        let final_checkpoint = match final_checkpoint.or(last_checkpoint) {
            Some(dir) => dir,
            // Resumed at (or past) the last step: nothing ran, the latest checkpoint stands.
            None if parallel.writes() => self.save(self.start_step)?,
            // Another rank's view of the checkpoint rank 0 writes.
            None => settings
                .out
                .join(checkpoint::CHECKPOINTS_DIR)
                .join(checkpoint::step_dir_name(
                    settings.steps.max(self.start_step),
                )),
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

    /// Stops the run at `step` for `problem`: marks the checkpoint of step `condemned` (whose
    /// weights produced the problem) unhealthy, and the best checkpoint too when it is of that
    /// step, then names the latest healthy checkpoint left.
    fn stop(&self, step: u64, problem: Problem, condemned: Option<u64>) -> TrainError {
        let out = &self.settings.out;
        let parent = out.join(checkpoint::CHECKPOINTS_DIR);
        let mut marked = Vec::new();
        if let Some(bad) = condemned.filter(|&s| s > 0 && self.parallel.writes()) {
            let reason = format!("step {step}, the first computed from these weights: {problem}");
            let best = parent.join(checkpoint::BEST_DIR);
            let best_is_bad = checkpoint::load_meta(&best).is_ok_and(|m| m.step == bad);
            let step_dir = parent.join(checkpoint::step_dir_name(bad));
            for dir in [Some(step_dir), best_is_bad.then_some(best)]
                .into_iter()
                .flatten()
            {
                if dir.join(checkpoint::META_FILE).is_file()
                    && checkpoint::mark_unhealthy(&dir, &reason).is_ok()
                {
                    marked.push(dir);
                }
            }
        }
        TrainError::Unhealthy {
            step,
            problem,
            marked,
            last_good: checkpoint::latest(out).ok().flatten(),
        }
    }

    /// Refuses to save weights that hold a non-finite value.
    fn check_weights(&self, step: u64) -> Result<(), TrainError> {
        let bad = self
            .params
            .iter()
            .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()));
        match bad {
            Some((name, _)) => Err(self.stop(
                step,
                Problem::NonFinite {
                    what: format!("a weight of {name} after the update"),
                    value: f64::NAN,
                },
                None,
            )),
            None => Ok(()),
        }
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
        let (first, end) = self.parallel.share(self.settings.accum);
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
                let batches: Vec<_> = micro_batches[first as usize..end as usize]
                    .iter()
                    .map(|(l, options, staged)| MicroBatch {
                        batch: &l.batch,
                        options: *options,
                        staged: staged.as_ref(),
                    })
                    .collect();
                device.accumulate(&self.model, &batches).and_then(|stats| {
                    device.all_reduce_gradients()?;
                    Ok(stats)
                })
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
        for stats in &stats {
            sums.loss_sum += stats.loss_sum;
            sums.z_sum += stats.z_loss_sum;
            sums.scored += stats.tokens as u64;
        }
        if let Some(device) = backend.resident().filter(|_| resident) {
            // Summed over the ranks in rank order (nothing to do without a job).
            let mut totals = [sums.loss_sum, sums.z_sum, sums.scored as f64];
            device
                .all_reduce_sums(&mut totals)
                .map_err(|source| TrainError::Backend { step, source })?;
            [sums.loss_sum, sums.z_sum] = [totals[0], totals[1]];
            sums.scored = totals[2] as u64;
        }
        for (loaded, options, _) in &micro_batches {
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
            corpus_sha256: Some(self.corpus.manifest_sha256.clone()),
            model_sha256: None,
            health: self.health.clone(),
        }
    }
}
