//! Learning-rate schedules, picked from a recipe by a `type`-tagged table.
//!
//! Every schedule is a function of `n`, the 1-based number of the update being made (the first
//! update is `n = 1`), and of the run's total number of updates. With that convention the key
//! values land on round step numbers: warmup reaches its peak at `n = warmup_steps` and the
//! cosine reaches its floor at `n = total_steps`.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The paper's pretraining schedule: `peak * n / warmup_steps` up to `warmup_steps`, then a
    /// half cosine from `peak` down to `end` at the last step, `end` afterwards.
    WarmupCosine {
        warmup_steps: u64,
        peak: f64,
        end: f64,
    },
    /// The paper's finetuning schedule.
    Constant { lr: f64 },
    /// T5's inverse square root: `scale / sqrt(max(n, warmup_steps))` (constant
    /// `scale / sqrt(warmup_steps)` during warmup; T5 used scale 1 and 10K warmup steps).
    Rsqrt { scale: f64, warmup_steps: u64 },
}

/// A schedule that cannot produce a sensible learning rate.
#[derive(Debug, thiserror::Error)]
#[error("invalid learning-rate schedule: {0}")]
pub struct ScheduleError(String);

impl Schedule {
    /// The learning rate of update `n` (1-based) in a run of `total_steps` updates.
    pub fn lr(&self, n: u64, total_steps: u64) -> f64 {
        let n = n.max(1);
        match *self {
            Schedule::WarmupCosine {
                warmup_steps,
                peak,
                end,
            } => {
                if n <= warmup_steps {
                    return peak * n as f64 / warmup_steps as f64;
                }
                let decay_steps = total_steps.saturating_sub(warmup_steps);
                if decay_steps == 0 || n >= total_steps {
                    return end;
                }
                let progress = (n - warmup_steps) as f64 / decay_steps as f64;
                end + (peak - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Constant { lr } => lr,
            Schedule::Rsqrt {
                scale,
                warmup_steps,
            } => scale / (n.max(warmup_steps).max(1) as f64).sqrt(),
        }
    }

    /// Rejects negative or non-finite rates.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let rates: Vec<f64> = match *self {
            Schedule::WarmupCosine { peak, end, .. } => vec![peak, end],
            Schedule::Constant { lr } => vec![lr],
            Schedule::Rsqrt { scale, .. } => vec![scale],
        };
        match rates.iter().find(|r| !(r.is_finite() && **r >= 0.0)) {
            Some(bad) => Err(ScheduleError(format!(
                "learning rates must be finite and >= 0, got {bad} in {self:?}"
            ))),
            None => Ok(()),
        }
    }

    /// The same schedule with its peak (or constant, or scale) replaced: what `--lr` overrides.
    pub fn with_peak(&self, lr: f64) -> Schedule {
        match *self {
            Schedule::WarmupCosine {
                warmup_steps, end, ..
            } => Schedule::WarmupCosine {
                warmup_steps,
                peak: lr,
                end: end.min(lr),
            },
            Schedule::Constant { .. } => Schedule::Constant { lr },
            Schedule::Rsqrt { warmup_steps, .. } => Schedule::Rsqrt {
                scale: lr * (warmup_steps.max(1) as f64).sqrt(),
                warmup_steps,
            },
        }
    }
}
