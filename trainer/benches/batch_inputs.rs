//! Host-side cost of a micro-batch's GPU inputs (`backend::cuda::model::inputs::BatchInputs::build`:
//! token streams, embedding-backward chains, attention rows, scored tokens and their chunks),
//! which `redpack train` runs on the data loader's thread while the previous step computes. Beside
//! it, the RoPE tables of the same length (`model::rope::Rope::new`), which the GPU backend builds
//! once per run and keeps on the device instead of per batch. No GPU needed.
//!
//! `cargo bench -p redpack-trainer --bench batch_inputs`. Environment: `BENCH_SIZE` (150m),
//! `BENCH_ROWS` (8), `BENCH_SEQ` (2048), `BENCH_VOCAB` (32768), `BENCH_REPEATS` (50).

use std::time::Instant;

use redpack_trainer::backend::cuda::model::inputs::{BatchInputs, InputOptions};
use redpack_trainer::batch::Batch;
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::model::rope::Rope;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mean milliseconds of `f` over `repeats` runs after one warm-up.
fn time_ms(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..repeats {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / repeats as f64
}

fn main() {
    let size = std::env::var("BENCH_SIZE").unwrap_or_else(|_| "150m".into());
    let rows = env_usize("BENCH_ROWS", 8).max(1);
    let seq = env_usize("BENCH_SEQ", 2048).max(4);
    let vocab = env_usize("BENCH_VOCAB", 32768);
    let repeats = env_usize("BENCH_REPEATS", 50).max(1);
    println!("batch inputs, {size}, {rows} x {seq} tokens, vocab {vocab}, mean of {repeats}");
    for arch in [Arch::Dec, Arch::Red] {
        let config = match ModelConfig::preset(arch, &size, vocab) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("batch_inputs: {e}");
                std::process::exit(1);
            }
        };
        let batch = Batch::random_full(rows, seq, vocab, 1);
        let options = InputOptions {
            loss_on_prefix: arch == Arch::Dec,
            bidirectional_prefix: false,
        };
        let mut words = 0;
        let build = time_ms(repeats, || {
            match BatchInputs::build(&config, &batch, options) {
                Ok(inputs) => words = inputs.words.len(),
                Err(e) => {
                    eprintln!("batch_inputs: {e}");
                    std::process::exit(1);
                }
            }
        });
        let rope = time_ms(repeats, || {
            std::hint::black_box(Rope::new(config.head_dim, config.rope_base, seq + 1));
        });
        println!(
            "{:6} inputs {build:7.3} ms ({} KiB to copy) | RoPE tables {rope:7.3} ms ({:.1}x the inputs)",
            arch.name(),
            words * 4 / 1024,
            rope / build.max(1e-9)
        );
    }
}
