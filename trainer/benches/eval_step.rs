//! Evaluation throughput next to training throughput on the same model: for each device, each
//! architecture and each context length `L`, the forward-only pass `redpack eval` runs per batch
//! (`Backend::forward_loss`; on a device that keeps parameters resident, `load_params` once and
//! `forward_loss_loaded` per batch, as the evaluation does) against a training forward + backward
//! (`Backend::forward_backward`; resident: `load_training` once and `accumulate` per step, as
//! `redpack train` does) over the same batch with the same step options, so both score the same
//! tokens.
//!
//! The batch is built as `redpack eval --lengths L --prefix-len k` builds it: `rows` rows of
//! `L` tokens (seeded random ids), prefix `k` (`L / 2` unless `BENCH_PREFIX` is given), tokens
//! `[k, L)` scored given everything before them (RedLLM's encoder reads `[0, k)`, DecLLM reads
//! `[0, L - 1)` causally), dropout and z-loss off. Tokens/s counts scored tokens.
//!
//! A forward + backward costs about three forwards, so the issue's target ("eval is not slower
//! per token than a training forward pass") reads: eval tokens/s at least 3x the training
//! step's tokens/s. Each row prints that ratio and whether the target is met.
//!
//! `cargo bench -p redpack-trainer --bench eval_step`, or run the built binary directly.
//! Environment: `BENCH_DEVICE` (`auto`: the CPU, and a CUDA device when one is found; `cpu`;
//! `cuda`), `BENCH_LENGTHS` (2048,16384), `BENCH_PREFIX` (L / 2), `BENCH_ARCHS` (dec,red),
//! `BENCH_SIZE` (a preset; `small` on the CPU, `150m` on CUDA), `BENCH_ROWS` (1 on the CPU, 8 on
//! CUDA), `BENCH_VOCAB` (32768), `BENCH_STEPS` (timed passes of each kind, 2 on the CPU, 5 on
//! CUDA, after one warm-up), `BENCH_THREADS` (CPU threads; all cores), `BENCH_PRECISION` (CUDA:
//! bf16 or f32; bf16), `BENCH_JSON` (1: one JSON object per line instead of the table).
//! A pass that fails (for instance out of device memory at a long `L`) prints its error in its
//! row and the benchmark goes on; the exit status is then 1.

use std::time::Instant;

use redpack_trainer::backend::{
    open_backend, probe_cuda, Backend, BackendError, CudaAvailability, DeviceChoice, MicroBatch,
    Precision,
};
use redpack_trainer::batch::{Batch, LossStats, StepOptions};
use redpack_trainer::config::{human_count, Arch, ModelConfig};
use redpack_trainer::optim::{Adafactor, AdafactorConfig};
use redpack_trainer::params::ParamStore;

/// The target ratio of eval tokens/s to training-step tokens/s (a forward + backward
/// costs about three forwards).
const TARGET_RATIO: f64 = 3.0;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("eval_step: {what}: {e}");
    std::process::exit(2)
}

/// `name` as a number, `default` when unset; an unparsable value is an error naming the variable.
fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| fail(name, format!("{v:?} is not a non-negative integer"))),
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    env_or(name, default)
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// One timed kind of pass: seconds per pass and scored tokens per pass.
struct Timing {
    seconds: f64,
    tokens: usize,
}

impl Timing {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }
}

/// Runs `pass` once to warm up, then `steps` times timed.
fn time_pass(
    steps: usize,
    mut pass: impl FnMut() -> Result<LossStats, BackendError>,
) -> Result<Timing, BackendError> {
    pass()?;
    let start = Instant::now();
    let mut tokens = 0;
    for _ in 0..steps {
        tokens = pass()?.tokens;
    }
    Ok(Timing {
        seconds: start.elapsed().as_secs_f64() / steps as f64,
        tokens,
    })
}

/// Eval and training step over `batch`, each as its command runs it on `backend`.
fn measure(
    backend: &mut dyn Backend,
    config: &ModelConfig,
    params: &ParamStore,
    batch: &Batch,
    options: &StepOptions,
    steps: usize,
) -> Result<(Timing, Timing), BackendError> {
    if backend.resident().is_some() {
        let eval = {
            let device = backend.resident().expect("checked above");
            device.load_params(config, params)?;
            time_pass(steps, || device.forward_loss_loaded(config, batch, options))?
        };
        let device = backend.resident().expect("checked above");
        let optimizer = Adafactor::new(AdafactorConfig::default(), params)
            .unwrap_or_else(|e| fail("optimizer", e));
        device.load_training(config, params, &optimizer)?;
        let micro = [MicroBatch::new(batch, *options)];
        let train = time_pass(steps, || {
            let stats = device.accumulate(config, &micro)?;
            Ok(stats.into_iter().next().unwrap_or_default())
        })?;
        Ok((eval, train))
    } else {
        let eval = time_pass(steps, || {
            backend.forward_loss(config, params, batch, options)
        })?;
        let mut grads = params.zeros_like();
        let train = time_pass(steps, || {
            grads.fill_zero();
            backend.forward_backward(config, params, batch, options, &mut grads)
        })?;
        Ok((eval, train))
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let json = env_or("BENCH_JSON", "0") == "1";
    let devices: Vec<DeviceChoice> = match env_or("BENCH_DEVICE", "auto").as_str() {
        "cpu" => vec![DeviceChoice::Cpu],
        "cuda" => vec![DeviceChoice::Cuda],
        "auto" => match probe_cuda() {
            CudaAvailability::NoDriver | CudaAvailability::NoDevice { .. } => {
                vec![DeviceChoice::Cpu]
            }
            _ => vec![DeviceChoice::Cpu, DeviceChoice::Cuda],
        },
        other => fail(
            "BENCH_DEVICE",
            format!("{other:?} is not cpu, cuda or auto"),
        ),
    };
    let lengths: Vec<usize> = env_list("BENCH_LENGTHS", "2048,16384")
        .iter()
        .map(|l| match l.parse::<usize>() {
            Ok(l) if l >= 2 => l,
            _ => fail(
                "BENCH_LENGTHS",
                format!("{l:?} is not a length of at least 2"),
            ),
        })
        .collect();
    let prefix = std::env::var("BENCH_PREFIX")
        .ok()
        .map(|_| env_usize("BENCH_PREFIX", 0));
    let archs: Vec<Arch> = env_list("BENCH_ARCHS", "dec,red")
        .iter()
        .map(|a| match a.as_str() {
            "dec" => Arch::Dec,
            "red" => Arch::Red,
            other => fail("BENCH_ARCHS", format!("unknown architecture {other:?}")),
        })
        .collect();
    for &l in &lengths {
        let k = prefix.unwrap_or(l / 2);
        if k == 0 || k >= l {
            fail(
                "BENCH_PREFIX",
                format!("the prefix {k} must be at least 1 and below L = {l}"),
            );
        }
    }
    let vocab = env_usize("BENCH_VOCAB", 32768);
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .map(|_| env_usize("BENCH_THREADS", 0));
    let precision = match env_or("BENCH_PRECISION", "bf16").as_str() {
        "bf16" => Precision::Bf16,
        "f32" => Precision::F32,
        other => fail("BENCH_PRECISION", format!("{other:?} is not bf16 or f32")),
    };
    let mut failed = false;
    if !json {
        println!(
            "eval = forward only (Backend::forward_loss, as `redpack eval` runs each batch); \
             train = forward + backward (Backend::forward_backward, as a training step); same \
             batch, same scored tokens [k, L), k = {}; tokens/s counts scored tokens; target: \
             eval tokens/s >= {TARGET_RATIO}x train tokens/s (a training step is about three \
             forwards)",
            prefix.map_or("L/2".to_string(), |k| k.to_string())
        );
        println!(
            "{:<28} {:>4} {:>6} {:>6} {:>4} {:>8} {:>10} {:>12} {:>10} {:>12} {:>6}  target",
            "device",
            "arch",
            "size",
            "L",
            "rows",
            "scored",
            "eval_s",
            "eval_tok/s",
            "train_s",
            "train_tok/s",
            "ratio"
        );
    }
    for choice in devices {
        let on_cuda = choice == DeviceChoice::Cuda;
        let opened = open_backend(
            choice,
            threads,
            if on_cuda { Some(precision) } else { None },
        )
        .unwrap_or_else(|e| fail("opening the backend", e));
        let mut backend = opened.backend;
        let device = backend.name();
        let size = env_or("BENCH_SIZE", if on_cuda { "150m" } else { "small" });
        let rows = env_usize("BENCH_ROWS", if on_cuda { 8 } else { 1 }).max(1);
        let steps = env_usize("BENCH_STEPS", if on_cuda { 5 } else { 2 }).max(1);
        for &arch in &archs {
            let config =
                ModelConfig::preset(arch, &size, vocab).unwrap_or_else(|e| fail("BENCH_SIZE", e));
            let params = ParamStore::init(&config, 0);
            for &l in &lengths {
                let k = prefix.unwrap_or(l / 2);
                let mut batch = Batch::random_full(rows, l, vocab, 1);
                batch.prefix_len = vec![k; rows];
                let options = StepOptions::default();
                let result = measure(backend.as_mut(), &config, &params, &batch, &options, steps);
                let row = serde_json::json!({
                    "device": device,
                    "arch": arch.name(),
                    "size": size,
                    "params": config.param_count(),
                    "length": l,
                    "prefix_len": k,
                    "rows": rows,
                    "steps": steps,
                });
                match result {
                    Ok((eval, train)) => {
                        let ratio = eval.tokens_per_s() / train.tokens_per_s();
                        let met = ratio >= TARGET_RATIO;
                        if json {
                            let mut row = row;
                            let fields = row.as_object_mut().expect("an object");
                            for (key, value) in [
                                ("scored_tokens", serde_json::json!(eval.tokens)),
                                ("eval_s", serde_json::json!(eval.seconds)),
                                ("eval_tokens_per_s", serde_json::json!(eval.tokens_per_s())),
                                ("train_s", serde_json::json!(train.seconds)),
                                (
                                    "train_tokens_per_s",
                                    serde_json::json!(train.tokens_per_s()),
                                ),
                                ("ratio", serde_json::json!(ratio)),
                                ("target_ratio", serde_json::json!(TARGET_RATIO)),
                                ("target_met", serde_json::json!(met)),
                            ] {
                                fields.insert(key.to_string(), value);
                            }
                            println!("{row}");
                        } else {
                            println!(
                                "{:<28} {:>4} {:>6} {:>6} {:>4} {:>8} {:>10.4} {:>12.0} {:>10.4} {:>12.0} {:>6.2}  {}",
                                device,
                                arch.name(),
                                size,
                                l,
                                rows,
                                eval.tokens,
                                eval.seconds,
                                eval.tokens_per_s(),
                                train.seconds,
                                train.tokens_per_s(),
                                ratio,
                                if met {
                                    format!("met (>= {TARGET_RATIO}x)")
                                } else {
                                    format!("NOT met (< {TARGET_RATIO}x)")
                                }
                            );
                        }
                    }
                    Err(e) => {
                        failed = true;
                        if json {
                            let mut row = row;
                            row.as_object_mut()
                                .expect("an object")
                                .insert("error".to_string(), e.to_string().into());
                            println!("{row}");
                        } else {
                            println!(
                                "{:<28} {:>4} {:>6} {:>6} {:>4}  failed: {e}",
                                device,
                                arch.name(),
                                size,
                                l,
                                rows
                            );
                        }
                    }
                }
            }
            if !json {
                eprintln!(
                    "{} {size}: {} parameters",
                    arch.name(),
                    human_count(config.param_count())
                );
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
