//! Decoding throughput with the key/value cache (`redpack_trainer::generate`): new tokens per
//! second at batch 1 and batch 32, for each architecture, next to decoding without the cache
//! (every step recomputes the whole sequence, as a plain forward pass would).
//!
//! A batch of `rows` seeded random prompts of `BENCH_PROMPT` tokens starts the rows (timed
//! apart, as prefill tokens/s), then `BENCH_NEW` greedy steps append one token per row (decode
//! tokens/s = rows × steps / time). The uncached figure decodes the same steps by calling
//! `start` on the whole sequence so far at every step (batch 1 only; DecLLM without a
//! bidirectional prompt, where that is exactly the same computation). `weights GB/s` is the
//! parameter bytes read per decode step at batch 1 over the step time: a step bound by reading
//! the weights once reaches the machine's memory bandwidth.
//!
//! `cargo bench -p redpack-trainer --bench decode`, or run the built binary directly.
//! Environment: `BENCH_DEVICE` (`cpu`, the default, or `cuda`: the CUDA decoder, f32),
//! `BENCH_SIZE` (a preset; `small` on the CPU, `150m` on CUDA), `BENCH_VOCAB` (32768), `BENCH_ARCHS`
//! (dec,red), `BENCH_BATCHES` (1,32), `BENCH_PROMPT` (64), `BENCH_NEW` (32), `BENCH_THREADS`
//! (CPU threads; all cores).

use std::sync::Arc;
use std::time::Instant;

use redpack_trainer::backend::cuda::decode::CudaDecoder;
use redpack_trainer::config::{human_count, Arch, ModelConfig};
use redpack_trainer::generate::cpu::CpuDecoder;
use redpack_trainer::generate::sample::argmax;
use redpack_trainer::generate::{DecodeMode, Decoder};
use redpack_trainer::params::ParamStore;
use redpack_trainer::rng::SplitMix64;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("decode: {what}: {e}");
    std::process::exit(2)
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    env_or(name, default)
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| fail(name, format!("{v:?} is not a non-negative integer")))
        })
        .collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    env_list(name, &default.to_string())[0]
}

/// Greedy steps after `start`; returns the seconds of the steps.
fn decode_steps(decoder: &mut dyn Decoder, mut logits: Vec<Vec<f32>>, steps: usize) -> f64 {
    let rows: Vec<usize> = (0..logits.len()).collect();
    let t0 = Instant::now();
    for _ in 0..steps {
        let next: Vec<[u32; 1]> = logits
            .iter()
            .map(|l| [argmax(l).unwrap_or(0) as u32])
            .collect();
        let tokens: Vec<&[u32]> = next.iter().map(|t| &t[..]).collect();
        logits = decoder
            .extend(&rows, &tokens)
            .unwrap_or_else(|e| fail("decode step", e));
    }
    t0.elapsed().as_secs_f64()
}

fn main() {
    let cuda = match env_or("BENCH_DEVICE", "cpu").as_str() {
        "cpu" => false,
        "cuda" => true,
        other => fail("BENCH_DEVICE", format!("{other:?} is not cpu or cuda")),
    };
    let size = env_or("BENCH_SIZE", if cuda { "150m" } else { "small" });
    let vocab = env_usize("BENCH_VOCAB", 32768);
    let batches = env_list("BENCH_BATCHES", "1,32");
    let prompt_len = env_usize("BENCH_PROMPT", 64).max(1);
    let new = env_usize("BENCH_NEW", 32).max(1);
    let threads = std::env::var("BENCH_THREADS").ok().map(|v| {
        v.trim()
            .parse::<usize>()
            .unwrap_or_else(|_| fail("BENCH_THREADS", format!("{v:?} is not a number")))
    });
    let archs: Vec<Arch> = env_or("BENCH_ARCHS", "dec,red")
        .split(',')
        .map(|a| match a.trim() {
            "dec" => Arch::Dec,
            "red" => Arch::Red,
            other => fail("BENCH_ARCHS", format!("{other:?} is not dec or red")),
        })
        .collect();
    println!(
        "{:<5} {:<8} {:>5} {:>14} {:>14} {:>12} {:>16} {:>10}",
        "arch",
        "params",
        "batch",
        "prefill tok/s",
        "decode tok/s",
        "weights GB/s",
        "uncached tok/s",
        "cache x"
    );
    for arch in archs {
        let config =
            ModelConfig::preset(arch, &size, vocab).unwrap_or_else(|e| fail("BENCH_SIZE", e));
        let params = Arc::new(ParamStore::init(&config, 1));
        let bytes = params.num_elements() as f64 * 4.0;
        let max_len = prompt_len + new + 1;
        let mut decoder: Box<dyn Decoder> = match cuda {
            true => Box::new(
                CudaDecoder::open(&config, &params, DecodeMode::default(), max_len)
                    .unwrap_or_else(|e| fail("decoder", e)),
            ),
            false => Box::new(
                CpuDecoder::new(&config, params, DecodeMode::default(), max_len, threads)
                    .unwrap_or_else(|e| fail("decoder", e)),
            ),
        };
        println!("device: {}", decoder.name());
        let mut rng = SplitMix64::new(5);
        for &rows in &batches {
            let prompts: Vec<Vec<u32>> = (0..rows.max(1))
                .map(|_| {
                    (0..prompt_len)
                        .map(|_| rng.below(vocab as u64) as u32)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u32]> = prompts.iter().map(|p| &p[..]).collect();
            // Warm-up: one start and one step.
            let logits = decoder.start(&refs).unwrap_or_else(|e| fail("start", e));
            decode_steps(decoder.as_mut(), logits, 1);
            let t0 = Instant::now();
            let logits = decoder.start(&refs).unwrap_or_else(|e| fail("start", e));
            let prefill = t0.elapsed().as_secs_f64();
            let secs = decode_steps(decoder.as_mut(), logits, new);
            let decode_tps = (rows * new) as f64 / secs;
            let (uncached, ratio) = if rows == 1 && arch == Arch::Dec {
                let mut seq = prompts[0].clone();
                let t0 = Instant::now();
                for _ in 0..new {
                    let logits = decoder
                        .start(&[&seq[..]])
                        .unwrap_or_else(|e| fail("start", e));
                    seq.push(argmax(&logits[0]).unwrap_or(0) as u32);
                }
                let tps = new as f64 / t0.elapsed().as_secs_f64();
                (format!("{tps:.1}"), format!("{:.1}", decode_tps / tps))
            } else {
                ("-".into(), "-".into())
            };
            let gbs = if rows == 1 {
                format!("{:.2}", bytes * new as f64 / secs / 1e9)
            } else {
                "-".into()
            };
            println!(
                "{:<5} {:<8} {:>5} {:>14.1} {:>14.1} {:>12} {:>16} {:>10}",
                arch.name(),
                human_count(config.param_count()),
                rows,
                (rows * prompt_len) as f64 / prefill,
                decode_tps,
                gbs,
                uncached,
                ratio
            );
        }
    }
}
