//! The builds of the fused attention (flash.cu's entry points, `FlashVariant`), the shapes of
//! one fused call (`FlashShape`), and the tuner that times the builds per kernel and shape and
//! keeps the fastest (`FlashTuner`, `REDPACK_CUDA_FLASH=auto`).

use std::sync::Mutex;

use super::grid::{grid, LaunchError};

/// Head dimensions the fused kernels are instantiated for.
pub const FLASH_HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// Keys per forward tile (`FA_BK`), keys per dK/dV block and queries per tile there (`FB_BK`,
/// `FB_BQ`), keys per dQ tile (`FQ_BK`) in flash.cu; the dK/dV kernel always has 4 warps.
const FA_BK: usize = 64;
pub(super) const FB_BK: usize = 64;
pub(super) const FB_BQ: usize = 32;
pub(super) const FQ_BK: usize = 32;
pub(super) const KV_THREADS: u32 = 128;
pub(super) const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// Dynamic shared memory a kernel may take without opting in.
pub(super) const DEFAULT_SMEM: usize = 48 * 1024;

/// The builds of the fused kernels (flash.cu's entry points): they differ in block shape and
/// whether tile copies overlap the math. They sum in the same order and give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlashVariant {
    /// 4 warps, 64 queries per forward / dQ block, one tile buffer, fragments by plain shared
    /// loads.
    Basic,
    /// 8 warps, 128 queries per forward / dQ block, two tile buffers (the copy of the next tile
    /// overlaps the math on the current one), fragments by `ldmatrix`.
    Pipelined,
    /// `Pipelined` with 4 warps and 64 queries per forward / dQ block, so that two blocks share
    /// an SM at head dim 128 and pass their barriers out of step.
    PipelinedW4,
    /// `PipelinedW4`'s backward pass, and a forward pass in which each warp owns 32 queries (128
    /// per block) with Q in shared memory, so each K/V fragment feeds two products
    /// (`flash_forward_wide`): the default.
    #[default]
    Wide,
}

impl FlashVariant {
    /// The suffix of this build's entry point of `kernel` (`flash_forward`, ...).
    pub(super) fn suffix(self, kernel: &str) -> &'static str {
        match self {
            FlashVariant::Basic => "",
            FlashVariant::Pipelined => "_pipelined",
            FlashVariant::Wide if kernel == "flash_forward" => "_wide",
            FlashVariant::PipelinedW4 | FlashVariant::Wide => "_pipelined_w4",
        }
    }

    pub(super) fn warps(self) -> usize {
        match self {
            FlashVariant::Basic | FlashVariant::PipelinedW4 | FlashVariant::Wide => 4,
            FlashVariant::Pipelined => 8,
        }
    }

    pub(super) fn stages(self) -> usize {
        match self {
            FlashVariant::Basic => 1,
            _ => 2,
        }
    }

    /// Queries per forward block: 16 per warp, 32 in `Wide`.
    pub(super) fn forward_queries(self) -> usize {
        match self {
            FlashVariant::Wide => self.warps() * 32,
            _ => self.warps() * 16,
        }
    }

    /// Dynamic shared memory of the forward kernel: the K and V tiles of each stage, and in
    /// `Wide` the block's Q rows before them.
    pub(super) fn forward_smem(self, shape: &FlashShape) -> usize {
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

    pub(super) fn check(&self) -> Result<(), LaunchError> {
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

    pub(super) fn grid(
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
    pub(super) fn tile_bytes(&self, rows: usize) -> usize {
        rows * (self.head_dim + 8) * 2
    }
}

/// Timed runs of each build when tuning (after one untimed run).
const TUNING_RUNS: usize = 3;

/// A kernel and the shape it is tuned for. Lengths are rounded up to a power of two, so that
/// batches of varying length (finetuning) share a few choices instead of timing every new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct TuneKey {
    kernel: &'static str,
    head_dim: usize,
    heads: usize,
    rows: usize,
    max_q: usize,
    max_k: usize,
    docs: bool,
}

impl TuneKey {
    pub(super) fn new(kernel: &'static str, shape: &FlashShape, docs: bool) -> TuneKey {
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
pub(super) type Runs<'a> = dyn FnMut() -> Result<(), LaunchError> + 'a;

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
    pub(super) fn candidates(kernel: &str) -> Vec<FlashVariant> {
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
    pub(super) fn time_builds(
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

    pub(super) fn pick(&self, key: &TuneKey) -> Option<FlashVariant> {
        self.picks().iter().find(|p| p.key == *key).map(|p| p.build)
    }

    pub(super) fn record(
        &self,
        key: TuneKey,
        build: FlashVariant,
        times: Vec<(FlashVariant, f32)>,
    ) {
        self.picks().push(Pick { key, build, times });
    }

    pub(super) fn report(&self) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
