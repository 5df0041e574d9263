//! CPU training throughput: one forward + backward step of `tiny` and `small`, both
//! architectures, in tokens per second (tokens = scored target tokens, the ones a step learns
//! from). Plain `std::time`; run with `cargo bench -p redpack-trainer --bench cpu_step`.
//!
//! Environment: `BENCH_VOCAB` (default 32768), `BENCH_THREADS` (default: all cores),
//! `BENCH_STEPS` (default 3).

use std::time::Instant;

use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::Backend;
use redpack_trainer::batch::{Batch, StepOptions};
use redpack_trainer::config::{human_count, Arch, ModelConfig};
use redpack_trainer::flops::{training_flops, StackTokens};
use redpack_trainer::params::ParamStore;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let vocab = env_usize("BENCH_VOCAB", 32768);
    let steps = env_usize("BENCH_STEPS", 3).max(1);
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut backend = match CpuBackend::new(threads) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot start the CPU backend: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "{}, vocab {vocab}, {steps} timed steps after one warm-up",
        backend.name()
    );
    for (size, rows, seq) in [("tiny", 8, 256), ("small", 8, 256)] {
        for arch in [Arch::Dec, Arch::Red] {
            let config = match ModelConfig::preset(arch, size, vocab) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            let params = ParamStore::init(&config, 0);
            let mut grads = params.zeros_like();
            let batch = Batch::random_full(rows, seq, vocab, 1);
            let options = StepOptions {
                z_loss: 1e-4,
                loss_on_prefix: true,
                ..StepOptions::default()
            };
            let mut tokens = 0;
            let mut elapsed = 0.0;
            for step in 0..=steps {
                grads.fill_zero();
                let start = Instant::now();
                let stats = match backend
                    .forward_backward(&config, &params, &batch, &options, &mut grads)
                {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("{e}");
                        std::process::exit(1);
                    }
                };
                if step > 0 {
                    elapsed += start.elapsed().as_secs_f64();
                    tokens += stats.tokens;
                }
            }
            let flops =
                training_flops(&config, &StackTokens::from_batch(&config, &batch, &options))
                    * steps as f64;
            println!(
                "{:>5} {} ({} params), batch {rows}x{seq}: {:>8.0} tokens/s, {:.3} s/step, {:.1} GFLOP/s",
                size,
                arch.name(),
                human_count(config.param_count()),
                tokens as f64 / elapsed,
                elapsed / steps as f64,
                flops / elapsed / 1e9
            );
        }
    }
}
