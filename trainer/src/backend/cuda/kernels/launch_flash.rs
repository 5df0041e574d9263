//! Launchers for the fused attention of the bf16 mode (flash.cu): forward, `delta = rowsum(dO ⊙
//! O)`, and the two backward kernels (dK/dV per key tile, dQ per query tile). Q, K, V and dO are
//! bf16 copies (`u16`) of the model's token streams (`tokens x heads·head_dim`), and so are the
//! outputs O, dQ, dK and dV; `lse` and `delta` are `rows x heads x max_q` f32 values.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::flash_builds::{
    FlashShape, FlashTuner, FlashVariant, TuneKey, DEFAULT_SMEM, FB_BK, FB_BQ, FQ_BK, KV_THREADS,
    LOG2_E,
};
use super::grid::{driver, grid, LaunchError, NULL};
use super::launch::CudaKernels;
use super::sources::KERNELS;

/// The document ids of the query and key streams, when documents reset attention.
pub type DocStreams<'a> = Option<(&'a CudaSlice<u32>, &'a CudaSlice<u32>)>;

fn push_docs<'a>(b: &mut cudarc::driver::LaunchArgs<'a>, docs: DocStreams<'a>) {
    match docs {
        Some((q_doc, k_doc)) => b.arg(q_doc).arg(k_doc),
        None => b.arg(&NULL).arg(&NULL),
    };
}

/// The arguments both backward kernels start with.
#[derive(Clone, Copy)]
struct BackwardInputs<'a> {
    q: &'a CudaSlice<u16>,
    k: &'a CudaSlice<u16>,
    v: &'a CudaSlice<u16>,
    d_out: &'a CudaSlice<u16>,
    lse: &'a CudaSlice<f32>,
    delta: &'a CudaSlice<f32>,
    rows_desc: &'a CudaSlice<i32>,
    docs: DocStreams<'a>,
}

fn push_inputs<'a>(b: &mut cudarc::driver::LaunchArgs<'a>, x: BackwardInputs<'a>) {
    b.arg(x.q)
        .arg(x.k)
        .arg(x.v)
        .arg(x.d_out)
        .arg(x.lse)
        .arg(x.delta)
        .arg(x.rows_desc);
    push_docs(b, x.docs);
}

impl CudaKernels {
    /// Lets `name` take `bytes` of dynamic shared memory (above the default 48 KiB a kernel must
    /// opt in).
    fn allow_shared_memory(&self, name: &'static str, bytes: usize) -> Result<(), LaunchError> {
        use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_SMEM;
        if bytes <= DEFAULT_SMEM {
            return Ok(());
        }
        self.function(name)?
            .set_attribute(MAX_SMEM, bytes as i32)
            .map_err(driver(format!(
                "letting {name} take {bytes} bytes of shared memory"
            )))
    }

    /// `out` (query stream, bf16) = attention output for every query inside a row (others are
    /// left as they are), and `lse` the base-2 log-sum-exp per query line for the backward pass.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_forward(
        &self,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        rows_desc: &CudaSlice<i32>,
        docs: DocStreams<'_>,
        shape: FlashShape,
        out: &mut CudaSlice<u16>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<(), LaunchError> {
        shape.check()?;
        if shape.max_q == 0 || shape.max_k == 0 {
            return Ok(());
        }
        let (heads, max_q) = (shape.heads as i32, shape.max_q as i32);
        let scale_log2 = LOG2_E / (shape.head_dim as f32).sqrt();
        self.in_build("flash_forward", &shape, docs.is_some(), |variant| {
            let name = flash_entry("flash_forward", shape.head_dim, variant)?;
            let smem = variant.forward_smem(&shape);
            self.allow_shared_memory(name, smem)?;
            let mut b = self.builder(name)?;
            b.arg(q).arg(k).arg(v).arg(rows_desc);
            push_docs(&mut b, docs);
            b.arg(&mut *out)
                .arg(&mut *lse)
                .arg(&heads)
                .arg(&max_q)
                .arg(&scale_log2);
            let threads = variant.warps() as u32 * 32;
            let cfg = shape.grid(shape.max_q, variant.forward_queries(), threads, smem);
            self.run(name, &mut b, cfg)
        })
    }

    /// `delta[line] = Σ dO ⊙ O` over the head dimension (bf16 copies, f32 sum), per query line (0
    /// past a row's end).
    pub fn flash_delta(
        &self,
        d_out: &CudaSlice<u16>,
        out: &CudaSlice<u16>,
        rows_desc: &CudaSlice<i32>,
        shape: FlashShape,
        delta: &mut CudaSlice<f32>,
    ) -> Result<(), LaunchError> {
        let dims = [shape.rows, shape.heads, shape.head_dim, shape.max_q].map(|v| v as i32);
        let mut b = self.builder("flash_delta")?;
        b.arg(d_out).arg(out).arg(rows_desc).arg(delta);
        b.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
        let blocks = shape.lines().div_ceil(4) as u32; // FA_WARPS query lines per block
        self.run("flash_delta", &mut b, grid(blocks, 1, 128))
    }

    /// The gradients w.r.t. Q, K and V, written (not added, rounded to bf16) for every token
    /// inside a row.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_backward(
        &self,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        d_out: &CudaSlice<u16>,
        lse: &CudaSlice<f32>,
        delta: &CudaSlice<f32>,
        rows_desc: &CudaSlice<i32>,
        docs: DocStreams<'_>,
        shape: FlashShape,
        (dq, dk, dv): (
            &mut CudaSlice<u16>,
            &mut CudaSlice<u16>,
            &mut CudaSlice<u16>,
        ),
    ) -> Result<(), LaunchError> {
        shape.check()?;
        if shape.max_q == 0 || shape.max_k == 0 {
            return Ok(());
        }
        let (heads, max_q) = (shape.heads as i32, shape.max_q as i32);
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let scale_log2 = scale * LOG2_E;
        // Both kernels take the same inputs first, in the same order.
        let inputs = BackwardInputs {
            q,
            k,
            v,
            d_out,
            lse,
            delta,
            rows_desc,
            docs,
        };

        self.in_build("flash_backward_kv", &shape, docs.is_some(), |variant| {
            let name = flash_entry("flash_backward_kv", shape.head_dim, variant)?;
            // The V tile, then per stage the Q and dO tiles and the tile's lse and delta lines.
            let smem = shape.tile_bytes(FB_BK)
                + variant.stages() * 2 * (shape.tile_bytes(FB_BQ) + FB_BQ * size_of::<f32>());
            self.allow_shared_memory(name, smem)?;
            let mut b = self.builder(name)?;
            push_inputs(&mut b, inputs);
            b.arg(&mut *dk)
                .arg(&mut *dv)
                .arg(&heads)
                .arg(&max_q)
                .arg(&scale)
                .arg(&scale_log2);
            let cfg = shape.grid(shape.max_k, FB_BK, KV_THREADS, smem);
            self.run(name, &mut b, cfg)
        })?;

        self.in_build("flash_backward_q", &shape, docs.is_some(), |variant| {
            let name = flash_entry("flash_backward_q", shape.head_dim, variant)?;
            let smem = variant.stages() * 2 * shape.tile_bytes(FQ_BK);
            self.allow_shared_memory(name, smem)?;
            let mut b = self.builder(name)?;
            push_inputs(&mut b, inputs);
            b.arg(&mut *dq)
                .arg(&heads)
                .arg(&max_q)
                .arg(&scale)
                .arg(&scale_log2);
            let threads = variant.warps() as u32 * 32;
            let cfg = shape.grid(shape.max_q, variant.warps() * 16, threads, smem);
            self.run(name, &mut b, cfg)
        })
    }

    /// Runs `launch` in `shape.variant`, or with `shape.tune` in the build `flash_tuner` picked
    /// for this kernel and shape, timing every distinct build of the kernel first if it has not
    /// yet. Each kernel writes its outputs (never adds to them), and every build writes the same
    /// values, so the timing runs leave nothing behind but the time.
    fn in_build(
        &self,
        kernel: &'static str,
        shape: &FlashShape,
        docs: bool,
        mut launch: impl FnMut(FlashVariant) -> Result<(), LaunchError>,
    ) -> Result<(), LaunchError> {
        if !shape.tune {
            return launch(shape.variant);
        }
        let key = TuneKey::new(kernel, shape, docs);
        if let Some(variant) = self.flash_tuner.pick(&key) {
            return launch(variant);
        }
        let (best, times) = FlashTuner::time_builds(kernel, &mut launch, |runs| {
            let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let event = |what| driver(format!("recording the {what} of timing {kernel}"));
            let start = self.stream().record_event(timing).map_err(event("start"))?;
            runs()?;
            let end = self.stream().record_event(timing).map_err(event("end"))?;
            start
                .elapsed_ms(&end)
                .map_err(driver(format!("timing {kernel}")))
        })?;
        self.flash_tuner.record(key, best, times);
        launch(best)
    }

    /// What `REDPACK_CUDA_FLASH=auto` chose so far, one line per kernel and shape.
    pub fn flash_tuning(&self) -> Vec<String> {
        self.flash_tuner.report()
    }
}

/// The entry point of `kernel` for `head_dim` and `variant` (`flash_forward_d128_pipelined`).
fn flash_entry(
    kernel: &str,
    head_dim: usize,
    variant: FlashVariant,
) -> Result<&'static str, LaunchError> {
    let want = format!("{kernel}_d{head_dim}{}", variant.suffix(kernel));
    KERNELS
        .iter()
        .flat_map(|source| source.entries.iter().copied())
        .find(|entry| *entry == want)
        .ok_or_else(|| LaunchError::Unsupported(format!("no fused attention kernel {want}")))
}

#[cfg(test)]
mod tests {
    use super::super::flash_builds::FLASH_HEAD_DIMS;
    use super::*;

    #[test]
    fn every_build_has_a_name_and_all_its_entry_points() {
        for variant in FlashVariant::ALL {
            assert_eq!(FlashVariant::from_name(variant.name()), Some(variant));
            for kernel in ["flash_forward", "flash_backward_kv", "flash_backward_q"] {
                for head_dim in FLASH_HEAD_DIMS {
                    flash_entry(kernel, head_dim, variant).unwrap();
                }
            }
        }
        assert_eq!(FlashVariant::from_name("wid"), None);
        assert_eq!(
            flash_entry("flash_forward", 128, FlashVariant::Wide).unwrap(),
            "flash_forward_d128_wide"
        );
        assert_eq!(
            flash_entry("flash_backward_q", 128, FlashVariant::Wide).unwrap(),
            "flash_backward_q_d128_pipelined_w4"
        );
    }

    #[test]
    fn tuning_times_each_distinct_kernel_once() {
        use FlashVariant::*;
        assert_eq!(
            FlashTuner::candidates("flash_forward"),
            [Basic, Pipelined, PipelinedW4, Wide]
        );
        // The same dK/dV code in every two-stage build, the same dQ code in w4 and wide.
        assert_eq!(
            FlashTuner::candidates("flash_backward_kv"),
            [Basic, Pipelined]
        );
        assert_eq!(
            FlashTuner::candidates("flash_backward_q"),
            [Basic, Pipelined, PipelinedW4]
        );
        // Checked against flash.cu: each entry point's code is its template's arguments (the
        // dK/dV kernel takes no warp count); the candidates cover every distinct code once.
        let source = include_str!("flash.cu");
        let mut code = std::collections::HashMap::new();
        for call in source.split("\nFLASH_ENTRIES(").skip(1) {
            let args: Vec<&str> = call[..call.find(')').unwrap()]
                .split(',')
                .map(str::trim)
                .collect();
            let [d, warps, stages, ldm, fwd, kv, q] = args[..] else {
                panic!("FLASH_ENTRIES with {} arguments", args.len())
            };
            code.insert(fwd, format!("forward {d} {warps} {stages} {ldm}"));
            code.insert(kv, format!("kv {d} {stages} {ldm}"));
            code.insert(q, format!("q {d} {warps} {stages} {ldm}"));
        }
        for call in source.split("\nFLASH_FORWARD_WIDE(").skip(1) {
            let args: Vec<&str> = call[..call.find(')').unwrap()]
                .split(',')
                .map(str::trim)
                .collect();
            code.insert(args[2], format!("wide {} {}", args[0], args[1]));
        }
        for kernel in ["flash_forward", "flash_backward_kv", "flash_backward_q"] {
            for head_dim in FLASH_HEAD_DIMS {
                let code_of = |v| &code[flash_entry(kernel, head_dim, v).unwrap()];
                let tried: Vec<_> = FlashTuner::candidates(kernel)
                    .into_iter()
                    .map(code_of)
                    .collect();
                let distinct: std::collections::HashSet<_> = tried.iter().collect();
                assert_eq!(
                    distinct.len(),
                    tried.len(),
                    "{kernel} d{head_dim}: a code twice"
                );
                for variant in FlashVariant::ALL {
                    assert!(
                        tried.contains(&code_of(variant)),
                        "{kernel} d{head_dim}: {} is never timed",
                        variant.name()
                    );
                }
            }
        }
    }
}
