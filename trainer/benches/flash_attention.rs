//! The fused attention kernels alone, every build side by side at the paper's shapes: the
//! forward pass and the backward pass (dK/dV then dQ, as one), in milliseconds and TFLOP/s, then
//! the builds `REDPACK_CUDA_FLASH=auto` would pick. One JSON object per line; without a GPU it
//! fails, saying so.
//!
//! FLOPs count the visible (query, key) pairs: 4·head_dim each forward and 10·head_dim each
//! backward (FlashAttention's convention, 2.5x the forward), not the work the kernels do again
//! (the backward recomputes the scores twice).
//!
//!     cargo bench -p redpack-trainer --bench flash_attention
//!
//! `BENCH_RUNS` (10) timed launches per measurement, after one untimed.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use redpack_trainer::backend::cuda::kernels::CudaKernels;
use redpack_trainer::backend::cuda::kernels::{FlashShape, FlashVariant};
use redpack_trainer::backend::cuda::runtime::nvrtc::KernelCache;
use redpack_trainer::backend::cuda::runtime::probe::{self, CudaAvailability};
use redpack_trainer::model::attention::AttnRow;
use redpack_trainer::rng::SplitMix64;

/// One attention call of a model: its rows (each `len` queries over `keys` keys), heads and
/// head dimension.
struct Case {
    name: &'static str,
    rows: Vec<AttnRow>,
    len: usize,
    keys: usize,
    heads: usize,
    head_dim: usize,
}

impl Case {
    /// `rows` rows of `len` queries over `keys` keys each, packed one after another.
    fn uniform(
        name: &'static str,
        rows: usize,
        len: usize,
        keys: usize,
        causal: bool,
        heads: usize,
    ) -> Case {
        let rows = (0..rows)
            .map(|r| AttnRow {
                q_start: r * len,
                q_len: len,
                k_start: r * keys,
                k_len: keys,
                causal,
                bidirectional_prefix: 0,
            })
            .collect();
        Case {
            name,
            rows,
            len,
            keys,
            heads,
            head_dim: 128,
        }
    }

    /// (query, key) pairs a query sees, over all rows and heads.
    fn visible_pairs(&self) -> f64 {
        let per_head: usize = self
            .rows
            .iter()
            .map(|r| match r.causal {
                true => (0..r.q_len).map(|i| (i + 1).min(r.k_len)).sum::<usize>(),
                false => r.q_len * r.k_len,
            })
            .sum();
        (per_head * self.heads) as f64
    }

    /// Query and key tokens over all rows.
    fn tokens(&self) -> (usize, usize) {
        (self.rows.len() * self.len, self.rows.len() * self.keys)
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("flash_attention: {what}: {e}");
    std::process::exit(1)
}

/// `x` rounded to bf16 on the device, as the model's bf16 copies are.
fn bf16(stream: &Arc<CudaStream>, kernels: &CudaKernels, x: &CudaSlice<f32>) -> CudaSlice<u16> {
    let mut y = stream
        .alloc_zeros::<u16>(x.len())
        .unwrap_or_else(|e| fail("alloc", e));
    kernels
        .f32_to_bf16(x, &mut y)
        .unwrap_or_else(|e| fail("f32 to bf16", e));
    y
}

/// `n` normal values, rounded to bf16 on the device.
fn random_bf16(
    stream: &Arc<CudaStream>,
    kernels: &CudaKernels,
    rng: &mut SplitMix64,
    n: usize,
) -> CudaSlice<u16> {
    let host: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
    let x = stream
        .clone_htod(&host)
        .unwrap_or_else(|e| fail("upload", e));
    bf16(stream, kernels, &x)
}

/// Milliseconds per call of `work`, over `runs` calls between two events, after one untimed.
fn time_ms(stream: &Arc<CudaStream>, runs: usize, mut work: impl FnMut()) -> f64 {
    work();
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream
        .record_event(timing)
        .unwrap_or_else(|e| fail("event", e));
    for _ in 0..runs {
        work();
    }
    let end = stream
        .record_event(timing)
        .unwrap_or_else(|e| fail("event", e));
    let ms = start.elapsed_ms(&end).unwrap_or_else(|e| fail("timing", e));
    ms as f64 / runs as f64
}

fn main() {
    let info = match probe::detect() {
        CudaAvailability::Device(info) => info,
        other => fail("this benchmark needs a CUDA device", format!("{other:?}")),
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let context = CudaContext::new(info.ordinal).unwrap_or_else(|e| fail("context", e));
    let stream = context.default_stream();
    // The kernel cache `redpack train` uses, so that a machine compiles the kernels once.
    let dir =
        KernelCache::default_dir().unwrap_or_else(|| std::env::temp_dir().join("redpack-kernels"));
    let cache = KernelCache::new(dir);
    let kernels = CudaKernels::load(stream.clone(), &cache, &info.arch())
        .unwrap_or_else(|e| fail("loading kernels", e));
    eprintln!("flash_attention on {}", info.name);

    // The paper's layouts at 150M (8 heads) and 1B (16 heads), head dim 128: DecLLM's causal
    // 2048-token rows; RedLLM's 1024-token encoder (bidirectional; its cross-attention, 1024
    // decoder queries over 1024 encoder keys, has the same shape) and decoder (causal).
    let cases = [
        Case::uniform("dec-150m", 8, 2048, 2048, true, 8),
        Case::uniform("dec-1b", 8, 2048, 2048, true, 16),
        Case::uniform("red-150m-encoder", 8, 1024, 1024, false, 8),
        Case::uniform("red-150m-decoder", 8, 1024, 1024, true, 8),
    ];
    let mut rng = SplitMix64::new(7);
    for case in &cases {
        let (q_tokens, k_tokens) = case.tokens();
        let da = case.heads * case.head_dim;
        let q = random_bf16(&stream, &kernels, &mut rng, q_tokens * da);
        let k = random_bf16(&stream, &kernels, &mut rng, k_tokens * da);
        let v = random_bf16(&stream, &kernels, &mut rng, k_tokens * da);
        let d_out = random_bf16(&stream, &kernels, &mut rng, q_tokens * da);
        let desc: Vec<i32> = case
            .rows
            .iter()
            .flat_map(AttnRow::fields)
            .map(|v| v as i32)
            .collect();
        let desc = stream
            .clone_htod(&desc)
            .unwrap_or_else(|e| fail("upload", e));
        let shape = FlashShape {
            rows: case.rows.len(),
            heads: case.heads,
            head_dim: case.head_dim,
            max_q: case.len,
            max_k: case.keys,
            variant: FlashVariant::default(),
            tune: false,
        };
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<f32>(n)
                .unwrap_or_else(|e| fail("alloc", e))
        };
        let alloc_bf16 = |n: usize| {
            stream
                .alloc_zeros::<u16>(n)
                .unwrap_or_else(|e| fail("alloc", e))
        };
        let (mut out, mut lse) = (alloc_bf16(q_tokens * da), alloc(shape.lines()));
        let (mut dq, mut dk, mut dv) = (
            alloc_bf16(q_tokens * da),
            alloc_bf16(k_tokens * da),
            alloc_bf16(k_tokens * da),
        );
        let mut delta = alloc(shape.lines());
        let pairs = case.visible_pairs();
        let hd = case.head_dim as f64;

        let builds = FlashVariant::ALL
            .map(|variant| FlashShape { variant, ..shape })
            .into_iter()
            .chain([FlashShape {
                tune: true,
                ..shape
            }]);
        for build in builds {
            let forward_ms = time_ms(&stream, runs, || {
                kernels
                    .flash_forward(&q, &k, &v, &desc, None, build, &mut out, &mut lse)
                    .unwrap_or_else(|e| fail("forward", e))
            });
            // The backward's inputs: the (bf16) output and delta, as the model makes them.
            kernels
                .flash_delta(&d_out, &out, &desc, build, &mut delta)
                .unwrap_or_else(|e| fail("delta", e));
            let backward_ms = time_ms(&stream, runs, || {
                kernels
                    .flash_backward(
                        &q,
                        &k,
                        &v,
                        &d_out,
                        &lse,
                        &delta,
                        &desc,
                        None,
                        build,
                        (&mut dq, &mut dk, &mut dv),
                    )
                    .unwrap_or_else(|e| fail("backward", e))
            });
            let tflops = |flops: f64, ms: f64| flops / (ms * 1e-3) / 1e12;
            let json = serde_json::json!({
                "bench": "flash_attention",
                "case": case.name,
                "build": if build.tune { "auto" } else { build.variant.name() },
                "rows": shape.rows,
                "heads": shape.heads,
                "head_dim": shape.head_dim,
                "q_len": shape.max_q,
                "k_len": shape.max_k,
                "forward_ms": forward_ms,
                "forward_tflops": tflops(4.0 * hd * pairs, forward_ms),
                "backward_ms": backward_ms,
                "backward_tflops": tflops(10.0 * hd * pairs, backward_ms),
                "device": info.name,
            });
            println!("{json}");
        }
    }
    for line in kernels.flash_tuning() {
        println!("auto picked: {line}");
    }
}
