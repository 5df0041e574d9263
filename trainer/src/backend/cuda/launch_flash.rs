//! Launchers for the fused attention of the bf16 mode (flash.cu): forward, `delta = rowsum(dO ⊙
//! O)`, and the two backward kernels (dK/dV per key tile, dQ per query tile). Q, K, V and dO are
//! bf16 copies (`u16`) of the model's token streams (`tokens x heads·head_dim`), and so are the
//! outputs O, dQ, dK and dV; `lse` and `delta` are `rows x heads x max_q` f32 values.

use std::sync::Mutex;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::blas::Precision;
use super::kernels::KERNELS;
use super::launch::{driver, grid, CudaKernels, LaunchError, NULL};

/// Whether attention runs fused (these kernels): in the bf16 mode, for the head dimensions there
/// are kernels for, unless `REDPACK_CUDA_ATTENTION=batched` asks for the batched products and the
/// softmax kernel (the f32 mode's path, kept for comparison).
pub fn fused_attention(precision: Precision, head_dim: usize) -> bool {
    static BATCHED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let batched = *BATCHED
        .get_or_init(|| std::env::var("REDPACK_CUDA_ATTENTION").is_ok_and(|v| v == "batched"));
    precision == Precision::Bf16 && FLASH_HEAD_DIMS.contains(&head_dim) && !batched
}

/// Head dimensions the fused kernels are instantiated for.
pub const FLASH_HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// Keys per forward tile (`FA_BK`), keys per dK/dV block and queries per tile there (`FB_BK`,
/// `FB_BQ`), keys per dQ tile (`FQ_BK`) in flash.cu; the dK/dV kernel always has 4 warps.
const FA_BK: usize = 64;
const FB_BK: usize = 64;
const FB_BQ: usize = 32;
const FQ_BK: usize = 32;
const KV_THREADS: u32 = 128;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// Dynamic shared memory a kernel may take without opting in.
const DEFAULT_SMEM: usize = 48 * 1024;

/// The builds of the fused kernels (flash.cu's entry points): they differ in block shape and
/// whether tile copies overlap the math. They sum in the same order and give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlashVariant {
    /// 4 warps, 64 queries per forward / dQ block, one tile buffer, fragments by plain shared
    /// loads.
    Basic,
    /// 8 warps, 128 queries per forward / dQ block, two tile buffers, fragments by `ldmatrix`
    /// (on an H200, DecLLM-150M steps 5% faster with it than with `Basic`).
    Pipelined,
    /// `Pipelined` with 4 warps and 64 queries per forward / dQ block, so that two blocks share
    /// an SM at head dim 128 and pass their barriers out of step. Its dQ kernel is the fastest
    /// (H200, DecLLM-150M's shape: 0.397 ms against `Pipelined`'s 0.476).
    PipelinedW4,
    /// `PipelinedW4`'s backward pass, and a forward pass in which each warp owns 32 queries (128
    /// per block) with Q in shared memory, so each K/V fragment feeds two products
    /// (`flash_forward_wide`): the default. On an H200 each of its kernels is the fastest build
    /// (`REDPACK_CUDA_FLASH=auto` picks it for every kernel of the 150M and 1B shapes): DecLLM-150M's
    /// forward 0.288 ms against `Pipelined`'s 0.347, forward and backward 1.27 against 1.41 ms.
    #[default]
    Wide,
}

impl FlashVariant {
    /// The suffix of this build's entry point of `kernel` (`flash_forward`, ...).
    fn suffix(self, kernel: &str) -> &'static str {
        match self {
            FlashVariant::Basic => "",
            FlashVariant::Pipelined => "_pipelined",
            FlashVariant::Wide if kernel == "flash_forward" => "_wide",
            FlashVariant::PipelinedW4 | FlashVariant::Wide => "_pipelined_w4",
        }
    }

    fn warps(self) -> usize {
        match self {
            FlashVariant::Basic | FlashVariant::PipelinedW4 | FlashVariant::Wide => 4,
            FlashVariant::Pipelined => 8,
        }
    }

    fn stages(self) -> usize {
        match self {
            FlashVariant::Basic => 1,
            _ => 2,
        }
    }

    /// Queries per forward block: 16 per warp, 32 in `Wide`.
    fn forward_queries(self) -> usize {
        match self {
            FlashVariant::Wide => self.warps() * 32,
            _ => self.warps() * 16,
        }
    }

    /// Dynamic shared memory of the forward kernel: the K and V tiles of each stage, and in
    /// `Wide` the block's Q rows before them.
    fn forward_smem(self, shape: &FlashShape) -> usize {
        let tiles = self.stages() * 2 * shape.tile_bytes(FA_BK);
        match self {
            FlashVariant::Wide => shape.tile_bytes(self.forward_queries()) + tiles,
            _ => tiles,
        }
    }

    /// Its name in `REDPACK_CUDA_FLASH` and in the benchmark's output.
    pub fn name(self) -> &'static str {
        match self {
            FlashVariant::Basic => "basic",
            FlashVariant::Pipelined => "pipelined",
            FlashVariant::PipelinedW4 => "pipelined-w4",
            FlashVariant::Wide => "wide",
        }
    }

    pub const ALL: [FlashVariant; 4] = [
        FlashVariant::Basic,
        FlashVariant::Pipelined,
        FlashVariant::PipelinedW4,
        FlashVariant::Wide,
    ];

    /// The build called `name` (`FlashVariant::name`).
    pub fn from_name(name: &str) -> Option<FlashVariant> {
        FlashVariant::ALL.into_iter().find(|v| v.name() == name)
    }

    /// `REDPACK_CUDA_FLASH=basic|pipelined|pipelined-w4|wide`, else the default (also with
    /// `auto`, see `tuning_from_env`); an unknown name is said on stderr (once) rather than
    /// silently measured as the default.
    pub fn from_env() -> FlashVariant {
        static CHOICE: std::sync::OnceLock<FlashVariant> = std::sync::OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var("REDPACK_CUDA_FLASH") {
            Ok(name) if name == AUTO => FlashVariant::default(),
            Ok(name) => FlashVariant::from_name(&name).unwrap_or_else(|| {
                let mut known: Vec<_> = FlashVariant::ALL.iter().map(|v| v.name()).collect();
                known.push(AUTO);
                let default = FlashVariant::default();
                eprintln!(
                    "REDPACK_CUDA_FLASH={name:?} is not one of {}: using {}",
                    known.join(", "),
                    default.name()
                );
                default
            }),
            Err(_) => FlashVariant::default(),
        })
    }
}

/// `REDPACK_CUDA_FLASH=auto`: each kernel runs in the build that timed fastest on this device.
const AUTO: &str = "auto";

/// Whether `REDPACK_CUDA_FLASH=auto` asks for the builds to be timed and chosen per kernel and
/// shape (`FlashShape::tune`).
pub fn tuning_from_env() -> bool {
    static AUTO_SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AUTO_SET.get_or_init(|| std::env::var("REDPACK_CUDA_FLASH").is_ok_and(|v| v == AUTO))
}

/// One fused attention call's shapes: the batch rows (described by `rows_desc`, six `i32` each
/// as `AttnRow`), heads, head dimension, and the longest query and key ranges of any row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashShape {
    pub rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub max_q: usize,
    pub max_k: usize,
    /// The build every kernel runs in, unless `tune`.
    pub variant: FlashVariant,
    /// Run each kernel in the build that timed fastest for this shape (`FlashTuner`). Every
    /// build gives the same bits, so this changes the speed, never the results.
    pub tune: bool,
}

impl FlashShape {
    /// Values of `lse` and `delta`.
    pub fn lines(&self) -> usize {
        self.rows * self.heads * self.max_q
    }

    fn check(&self) -> Result<(), LaunchError> {
        if !FLASH_HEAD_DIMS.contains(&self.head_dim) {
            return Err(LaunchError::Unsupported(format!(
                "fused attention has no kernel for head_dim {} (only {FLASH_HEAD_DIMS:?})",
                self.head_dim
            )));
        }
        if self.rows > 65535 || self.heads > 65535 {
            return Err(LaunchError::Unsupported(format!(
                "fused attention over {} rows x {} heads exceeds the grid",
                self.rows, self.heads
            )));
        }
        Ok(())
    }

    fn grid(
        &self,
        len: usize,
        per_block: usize,
        threads: u32,
        smem: usize,
    ) -> cudarc::driver::LaunchConfig {
        let mut cfg = grid(len.div_ceil(per_block) as u32, self.heads as u32, threads);
        cfg.grid_dim.2 = self.rows.max(1) as u32;
        cfg.shared_mem_bytes = smem as u32;
        cfg
    }

    /// Bytes of `rows` shared-memory rows of bf16 (padded by 8 values, as in flash.cu).
    fn tile_bytes(&self, rows: usize) -> usize {
        rows * (self.head_dim + 8) * 2
    }
}

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

/// Timed runs of each build when tuning (after one untimed run).
const TUNING_RUNS: usize = 3;

/// A kernel and the shape it is tuned for. Lengths are rounded up to a power of two, so that
/// batches of varying length (finetuning) share a few choices instead of timing every new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TuneKey {
    kernel: &'static str,
    head_dim: usize,
    heads: usize,
    rows: usize,
    max_q: usize,
    max_k: usize,
    docs: bool,
}

impl TuneKey {
    fn new(kernel: &'static str, shape: &FlashShape, docs: bool) -> TuneKey {
        TuneKey {
            kernel,
            head_dim: shape.head_dim,
            heads: shape.heads,
            rows: shape.rows,
            max_q: shape.max_q.next_power_of_two(),
            max_k: shape.max_k.next_power_of_two(),
            docs,
        }
    }
}

/// The launches a tuning timer measures.
type Runs<'a> = dyn FnMut() -> Result<(), LaunchError> + 'a;

/// The builds `REDPACK_CUDA_FLASH=auto` picked per kernel and shape.
#[derive(Default)]
pub(super) struct FlashTuner {
    picks: Mutex<Vec<Pick>>,
}

/// One kernel and shape's pick, with the times it was picked on (milliseconds per launch).
struct Pick {
    key: TuneKey,
    build: FlashVariant,
    times: Vec<(FlashVariant, f32)>,
}

impl FlashTuner {
    /// One build per distinct kernel: the dK/dV kernel is one instantiation in `pipelined`,
    /// `pipelined-w4` and `wide` (4 warps, two stages), and `wide`'s dQ kernel is
    /// `pipelined-w4`'s.
    fn candidates(kernel: &str) -> Vec<FlashVariant> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for variant in FlashVariant::ALL {
            let code = match kernel {
                "flash_backward_kv" => (4, variant.stages(), false),
                "flash_forward" => (
                    variant.warps(),
                    variant.stages(),
                    variant == FlashVariant::Wide,
                ),
                _ => (variant.warps(), variant.stages(), false),
            };
            if !seen.contains(&code) {
                seen.push(code);
                out.push(variant);
            }
        }
        out
    }

    /// Times every candidate build of `kernel`: one untimed `launch` (warm-up), then `timed`
    /// around `TUNING_RUNS` launches (it returns their milliseconds). Returns the fastest build
    /// and each build's milliseconds per launch.
    fn time_builds(
        kernel: &str,
        launch: &mut impl FnMut(FlashVariant) -> Result<(), LaunchError>,
        mut timed: impl FnMut(&mut Runs<'_>) -> Result<f32, LaunchError>,
    ) -> Result<(FlashVariant, Vec<(FlashVariant, f32)>), LaunchError> {
        let mut times = Vec::new();
        for variant in FlashTuner::candidates(kernel) {
            launch(variant)?;
            let ms = timed(&mut || (0..TUNING_RUNS).try_for_each(|_| launch(variant)))?;
            times.push((variant, ms / TUNING_RUNS as f32));
        }
        Ok((FlashTuner::fastest(&times), times))
    }

    /// The build with the least time; on a tie the one listed first.
    fn fastest(times: &[(FlashVariant, f32)]) -> FlashVariant {
        let mut best = (FlashVariant::default(), f32::INFINITY);
        for &(variant, ms) in times {
            if ms < best.1 {
                best = (variant, ms);
            }
        }
        best.0
    }

    fn picks(&self) -> std::sync::MutexGuard<'_, Vec<Pick>> {
        // Each pick is pushed whole, so a panic elsewhere cannot leave the list half-written.
        self.picks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pick(&self, key: &TuneKey) -> Option<FlashVariant> {
        self.picks().iter().find(|p| p.key == *key).map(|p| p.build)
    }

    fn record(&self, key: TuneKey, build: FlashVariant, times: Vec<(FlashVariant, f32)>) {
        self.picks().push(Pick { key, build, times });
    }

    fn report(&self) -> Vec<String> {
        self.picks()
            .iter()
            .map(|Pick { key, build, times }| {
                let times: Vec<String> = times
                    .iter()
                    .map(|(v, ms)| format!("{} {ms:.3} ms", v.name()))
                    .collect();
                format!(
                    "{} d{} x{} heads x{} rows, q<={} k<={}{}: {} ({})",
                    key.kernel,
                    key.head_dim,
                    key.heads,
                    key.rows,
                    key.max_q,
                    key.max_k,
                    if key.docs { ", documents" } else { "" },
                    build.name(),
                    times.join(", ")
                )
            })
            .collect()
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
        let source = include_str!("kernels/flash.cu");
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

    #[test]
    fn tuning_picks_the_fastest_and_the_first_on_a_tie() {
        use FlashVariant::*;
        let pick = FlashTuner::fastest;
        assert_eq!(
            pick(&[(Basic, 2.0), (Pipelined, 1.0), (Wide, 1.5)]),
            Pipelined
        );
        assert_eq!(pick(&[(Basic, 1.0), (Pipelined, 1.0)]), Basic);
        assert_eq!(pick(&[(Wide, 0.5)]), Wide);
        assert_eq!(pick(&[]), FlashVariant::default());
        // A NaN time (a failed event) never wins.
        assert_eq!(pick(&[(Basic, f32::NAN), (PipelinedW4, 3.0)]), PipelinedW4);
    }

    #[test]
    fn tuning_warms_up_times_every_candidate_and_keeps_the_fastest() {
        use FlashVariant::*;
        // A fake device: each launch is logged, and a timed span costs what its build costs.
        let cost = |v: FlashVariant| match v {
            Basic => 4.0,
            Pipelined => 3.0,
            PipelinedW4 => 1.5,
            Wide => 2.0,
        };
        let mut log = Vec::new();
        let mut launch = |v: FlashVariant| {
            log.push(v);
            Ok(())
        };
        let mut spans = 0;
        let (best, times) = FlashTuner::time_builds("flash_backward_q", &mut launch, |runs| {
            spans += 1;
            runs()?;
            Ok(0.0)
        })
        .unwrap();
        // Each candidate: one warm-up, then TUNING_RUNS inside its timed span.
        let expected: Vec<_> = [Basic, Pipelined, PipelinedW4]
            .into_iter()
            .flat_map(|v| std::iter::repeat_n(v, 1 + TUNING_RUNS))
            .collect();
        assert_eq!(log, expected);
        assert_eq!(spans, 3);
        assert_eq!(times.len(), 3);

        // Equal times: the first candidate.
        assert_eq!(best, Basic);

        // The pick follows the timed spans (per-launch milliseconds).
        let last = std::cell::Cell::new(Basic);
        let (best, times) = FlashTuner::time_builds(
            "flash_forward",
            &mut |v| {
                last.set(v);
                Ok(())
            },
            |runs| {
                runs()?;
                Ok(cost(last.get()) * TUNING_RUNS as f32)
            },
        )
        .unwrap();
        assert_eq!(best, PipelinedW4);
        assert_eq!(
            times,
            [
                (Basic, 4.0),
                (Pipelined, 3.0),
                (PipelinedW4, 1.5),
                (Wide, 2.0)
            ]
        );

        // A failing launch or timer stops the tuning with its error.
        let failed = FlashTuner::time_builds(
            "flash_forward",
            &mut |_| Err(LaunchError::Missing("flash_forward_d128")),
            |runs| runs().map(|_| 1.0),
        );
        assert!(failed.is_err());
    }

    #[test]
    fn tuning_keys_round_lengths_up_to_powers_of_two() {
        let shape = FlashShape {
            rows: 8,
            heads: 8,
            head_dim: 128,
            max_q: 1500,
            max_k: 2048,
            variant: FlashVariant::default(),
            tune: true,
        };
        let key = TuneKey::new("flash_forward", &shape, false);
        assert_eq!((key.max_q, key.max_k), (2048, 2048));
        let longer = FlashShape {
            max_q: 2000,
            ..shape
        };
        assert_eq!(TuneKey::new("flash_forward", &longer, false), key);
        assert_ne!(TuneKey::new("flash_forward", &shape, true), key);
        assert_ne!(TuneKey::new("flash_backward_q", &shape, false), key);

        let tuner = FlashTuner::default();
        assert_eq!(tuner.pick(&key), None);
        tuner.record(key, FlashVariant::Wide, vec![(FlashVariant::Wide, 0.25)]);
        assert_eq!(tuner.pick(&key), Some(FlashVariant::Wide));
        assert_eq!(
            tuner.report(),
            ["flash_forward d128 x8 heads x8 rows, q<=2048 k<=2048: wide (wide 0.250 ms)"]
        );
    }
}
