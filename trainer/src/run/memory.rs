//! The memory a new run needs, estimated before its model is allocated, so that an impossible
//! size is refused with the estimate and the limit instead of an allocation failure.
//!
//! Host memory, in f32 values: the parameters, their gradients and the optimizer state
//! (Adafactor's second moment, factored or not, and momentum), plus a copy of the parameters for
//! checkpoints; and on the CPU backend the activations a training step keeps for its backward
//! pass, per token of a micro-batch: per attention block `4 d_model + 5 d_attn`, per FFN block
//! `2 d_model + 3 d_ffn`, and the logits of one block of tokens. It is a lower bound of what the
//! run will use (scratch buffers come on top), so it refuses only runs that cannot fit. A device
//! backend (CUDA) keeps parameters, gradients, optimizer state and activations in its own
//! memory: the same estimate is checked against its free memory (`check_device`).

use super::settings::{SettingsError, TrainSettings};
use crate::config::{Arch, ModelConfig};

/// Tokens whose logits the CPU loss holds at once.
const LOGIT_TOKENS: u64 = 64;

/// Bytes of memory the process may still use: `MemAvailable` of `/proc/meminfo` where the
/// system has it.
pub fn available_host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The estimate in bytes, or `None` when it overflows `u64`; `activations` adds those of a step.
pub fn training_bytes(
    model: &ModelConfig,
    settings: &TrainSettings,
    rows_per_micro_batch: usize,
    row_len: usize,
    activations: bool,
) -> Option<u64> {
    training_parts(
        model,
        settings,
        rows_per_micro_batch,
        row_len,
        true,
        activations,
    )
}

/// The estimate's parts: `values` (parameters, gradients, optimizer state) and `activations`.
fn training_parts(
    model: &ModelConfig,
    settings: &TrainSettings,
    rows_per_micro_batch: usize,
    row_len: usize,
    values: bool,
    activations: bool,
) -> Option<u64> {
    let params = model.checked_param_count()?;
    let optimizer = if settings.optimizer.beta1.is_some() {
        2
    } else {
        1
    };
    // Parameters, gradients, checkpoint copy, optimizer state.
    let values = match values {
        true => params.checked_mul(3 + optimizer)?,
        false => 0,
    };
    let tokens = (rows_per_micro_batch as u64).checked_mul(row_len as u64)?;
    let d = model.d_model as u64;
    let d_attn = (model.n_heads as u64).checked_mul(model.head_dim as u64)?;
    let attn = d.checked_mul(4)?.checked_add(d_attn.checked_mul(5)?)?;
    let ffn = d
        .checked_mul(2)?
        .checked_add((model.d_ffn as u64).checked_mul(3)?)?;
    let layer = attn.checked_add(ffn)?;
    let per_token = match model.arch {
        Arch::Dec => layer.checked_mul(model.layers as u64)?,
        // The decoder's layers add a cross-attention block.
        Arch::Red => layer
            .checked_mul(model.encoder_layers as u64)?
            .checked_add(
                layer
                    .checked_add(attn)?
                    .checked_mul(model.decoder_layers as u64)?,
            )?,
    };
    let logits = LOGIT_TOKENS.checked_mul(model.vocab_size as u64)?;
    let activations = match activations {
        true => tokens.checked_mul(per_token)?.checked_add(logits)?,
        false => 0,
    };
    values.checked_add(activations)?.checked_mul(4)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses a new run whose estimate exceeds the memory available on the host.
pub fn check_host(
    model: &ModelConfig,
    settings: &TrainSettings,
    rows_per_micro_batch: usize,
    row_len: usize,
) -> Result<(), SettingsError> {
    check(
        training_bytes(
            model,
            settings,
            rows_per_micro_batch,
            row_len,
            settings.host_activations,
        ),
        available_host_memory(),
        "",
        model,
        rows_per_micro_batch,
        row_len,
    )
}

/// Refuses a resumed or initialized run (its parameters already loaded) whose step's
/// activations exceed the host memory still available.
pub fn check_host_activations(
    model: &ModelConfig,
    settings: &TrainSettings,
    rows_per_micro_batch: usize,
    row_len: usize,
) -> Result<(), SettingsError> {
    if !settings.host_activations {
        return Ok(());
    }
    check(
        training_parts(model, settings, rows_per_micro_batch, row_len, false, true),
        available_host_memory(),
        " for one step's activations",
        model,
        rows_per_micro_batch,
        row_len,
    )
}

/// The check itself, with the limit given (`None`: unknown, only overflow is refused); `place`
/// says where the memory is (empty: the host).
pub fn check(
    estimate: Option<u64>,
    limit: Option<u64>,
    place: &str,
    model: &ModelConfig,
    rows_per_micro_batch: usize,
    row_len: usize,
) -> Result<(), SettingsError> {
    let what = format!(
        "{} parameters ({}), micro-batches of {rows_per_micro_batch} rows of {row_len} tokens",
        model
            .checked_param_count()
            .map_or_else(|| "too many".to_string(), |n| n.to_string()),
        model.describe()
    );
    match (estimate, limit) {
        (None, _) => Err(SettingsError(format!(
            "the run needs more memory than can be counted: {what}"
        ))),
        (Some(bytes), Some(limit)) if bytes > limit => Err(SettingsError(format!(
            "the run needs at least {} of memory{place} (parameters, gradients, optimizer state and activations), {} is available: {what}; choose a smaller model, --batch or --accum more micro-batches",
            gib(bytes),
            gib(limit)
        ))),
        _ => Ok(()),
    }
}

/// Refuses a run on a device backend whose estimate exceeds the device's free memory.
pub fn check_device(
    model: &ModelConfig,
    settings: &TrainSettings,
    rows_per_micro_batch: usize,
    row_len: usize,
    free: Option<u64>,
) -> Result<(), SettingsError> {
    check(
        training_bytes(model, settings, rows_per_micro_batch, row_len, true),
        free,
        " on the device",
        model,
        rows_per_micro_batch,
        row_len,
    )
}

/// Refuses an evaluation whose forward pass over `rows` rows of `row_len` tokens cannot fit in
/// `free` bytes (the device's free memory, or with `None` the host's available memory). The
/// estimate is a lower bound: per token the residual stream, a block's normalized input and
/// attention values (`4 d_model + 3 d_attn`) and the FFN's three hidden vectors (`3 d_ffn`), in
/// f32, plus the logits of one block of tokens.
pub fn check_forward(
    model: &ModelConfig,
    rows: usize,
    row_len: usize,
    free: Option<u64>,
) -> Result<(), SettingsError> {
    let estimate = (|| {
        let tokens = (rows as u64).checked_mul(row_len as u64)?;
        let d = model.d_model as u64;
        let d_attn = (model.n_heads as u64).checked_mul(model.head_dim as u64)?;
        let per_token = d
            .checked_mul(4)?
            .checked_add(d_attn.checked_mul(3)?)?
            .checked_add((model.d_ffn as u64).checked_mul(3)?)?;
        tokens
            .checked_mul(per_token)?
            .checked_add(LOGIT_TOKENS.checked_mul(model.vocab_size as u64)?)?
            .checked_mul(4)
    })();
    let (limit, place) = match free {
        Some(free) => (Some(free), " on the device"),
        None => (available_host_memory(), ""),
    };
    check(estimate, limit, place, model, rows, row_len)
}
