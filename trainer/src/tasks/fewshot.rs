//! Few-shot prompts: `k` demonstrations and the evaluated example's query, joined by a blank
//! line (the lm-evaluation-harness's default delimiter).
//!
//! Demonstrations for example `i` are `k` distinct candidates drawn without replacement by a
//! SplitMix64 stream seeded from `(seed, task, i)`: the same for every run, thread count and
//! `--limit`, and independent between examples. Candidates are the task's pool examples of the
//! same group, minus the evaluated example itself (by position when the pool is the evaluated
//! split) and minus any pool example with the same query text.

use super::{Example, Pool, TaskData, TaskError};
use crate::rng::{counter_hash, SplitMix64};

/// Between demonstrations, and between the last one and the query.
pub const DELIMITER: &str = "\n\n";

/// The seed stream of a task: its name's bytes folded into one word.
fn task_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The demonstrations of `data.eval[index]`, in prompt order.
pub fn demonstrations(
    data: &TaskData,
    index: usize,
    shots: usize,
    seed: u64,
) -> Result<Vec<&Example>, TaskError> {
    if shots == 0 {
        return Ok(Vec::new());
    }
    let example = &data.eval[index];
    let mut candidates: Vec<usize> = (0..data.pool.len())
        .filter(|&j| {
            let candidate = &data.pool[j];
            candidate.group == example.group
                && candidate.query != example.query
                && !(data.pool_kind == Pool::SameSplit && j == index)
        })
        .collect();
    if candidates.len() < shots {
        let group = if example.group.is_empty() {
            String::new()
        } else {
            format!(" of group {}", example.group)
        };
        return Err(TaskError::Task {
            task: data.task.name(),
            message: format!(
                "example {} needs {shots} demonstrations but the pool{group} has {} other examples; use fewer --shots",
                example.id,
                candidates.len()
            ),
        });
    }
    let mut rng = SplitMix64::new(counter_hash(
        seed,
        &[task_key(data.task.name()), index as u64],
    ));
    let mut chosen = Vec::with_capacity(shots);
    for k in 0..shots {
        let pick = k + rng.below((candidates.len() - k) as u64) as usize;
        candidates.swap(k, pick);
        chosen.push(&data.pool[candidates[k]]);
    }
    Ok(chosen)
}

/// The full prompt of `data.eval[index]` with `shots` demonstrations. A task with a published
/// prompt for the example's group and `shots` equal to its exemplar count uses that prompt.
pub fn prompt(data: &TaskData, index: usize, shots: usize, seed: u64) -> Result<String, TaskError> {
    let example = &data.eval[index];
    if shots > 0 && shots == data.fixed_shots {
        if let Some(prefix) = data.fixed_prompts.get(&example.group) {
            return Ok(format!("{prefix}{DELIMITER}{}", example.query));
        }
    }
    let mut text = String::new();
    for demo in demonstrations(data, index, shots, seed)? {
        text.push_str(&demo.query);
        text.push_str(&demo.demo);
        text.push_str(DELIMITER);
    }
    text.push_str(&example.query);
    Ok(text)
}
