//! Loads every kernel on a device and launches each with typed arguments: one method per kernel,
//! a few lines each (grid, block, arguments in the kernel's order).
//!
//! Shapes are the caller's contract, as with the CPU reference's slices; each method says what
//! it expects. Integer arguments follow the kernels' C types: `int` is `i32`, `long` is `i64`.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::flash_builds::FlashTuner;
use super::grid::{
    driver, grid, grid_1d, vector_threads, LaunchError, Stored, NULL, THREADS, WARPS_PER_BLOCK,
};
use super::sources::KERNELS;
use crate::backend::cuda::runtime::nvrtc::KernelCache;
use crate::backend::cuda::runtime::profile::Profiler;

/// Rows per partial sum of the RMSNorm gain's gradient (`GAIN_CHUNK` in norm.cu).
const GAIN_CHUNK: usize = 64;

/// Heads per warp of the fused attention's input kernels (`HEADS_PER_WARP` in norm.cu).
const HEADS_PER_WARP: u32 = 4;

/// The build of `kernel` (`head_norm_rope_bf16`, or its backward) for `head_dim`, if there is
/// one: the fused attention's head dims.
fn head_norm_entry(kernel: &str, head_dim: usize) -> Option<&'static str> {
    Some(match (kernel, head_dim) {
        ("head_norm_rope_bf16", 32) => "head_norm_rope_bf16_d32",
        ("head_norm_rope_bf16", 64) => "head_norm_rope_bf16_d64",
        ("head_norm_rope_bf16", 128) => "head_norm_rope_bf16_d128",
        ("head_norm_rope_backward_bf16", 32) => "head_norm_rope_backward_bf16_d32",
        ("head_norm_rope_backward_bf16", 64) => "head_norm_rope_backward_bf16_d64",
        ("head_norm_rope_backward_bf16", 128) => "head_norm_rope_backward_bf16_d128",
        _ => return None,
    })
}

/// `HEADS_PER_WARP` heads per warp, `WARPS_PER_BLOCK` warps per block.
fn head_norm_grid(groups: usize) -> LaunchConfig {
    let blocks = (groups as u32).div_ceil(WARPS_PER_BLOCK * HEADS_PER_WARP);
    grid(blocks, 1, THREADS)
}

/// Every kernel of `KERNELS`, loaded on one stream's device.
pub struct CudaKernels {
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    /// The fused-attention builds picked by timing (`REDPACK_CUDA_FLASH=auto`).
    pub(super) flash_tuner: FlashTuner,
    /// Times every launch when on.
    profiler: Profiler,
}

impl CudaKernels {
    /// Compiles (or takes from `cache`) every source for `arch` and loads it on `stream`'s
    /// device. Launches are not profiled (`with_profiler`).
    pub fn load(
        stream: Arc<CudaStream>,
        cache: &KernelCache,
        arch: &str,
    ) -> Result<Self, LaunchError> {
        let context = stream.context().clone();
        let mut functions = HashMap::new();
        for kernel in KERNELS {
            let ptx = cache.ptx(kernel.name, &kernel.full_source(), arch)?;
            let module = context
                .load_module(Ptx::from_src(ptx))
                .map_err(driver(format!("loading {}.cu", kernel.name)))?;
            for &entry in kernel.entries {
                let function = module
                    .load_function(entry)
                    .map_err(driver(format!("finding {entry}")))?;
                functions.insert(entry, function);
            }
        }
        Ok(CudaKernels {
            stream,
            functions,
            flash_tuner: FlashTuner::default(),
            profiler: Profiler::default(),
        })
    }

    /// These kernels with their launches timed by `profiler` (when it is on).
    pub fn with_profiler(self, profiler: Profiler) -> Self {
        CudaKernels { profiler, ..self }
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(super) fn function(&self, name: &'static str) -> Result<&CudaFunction, LaunchError> {
        self.functions.get(name).ok_or(LaunchError::Missing(name))
    }

    pub(super) fn builder(&self, name: &'static str) -> Result<LaunchArgs<'_>, LaunchError> {
        let function = self.functions.get(name).ok_or(LaunchError::Missing(name))?;
        Ok(self.stream.launch_builder(function))
    }

    pub(super) fn run(
        &self,
        name: &str,
        args: &mut LaunchArgs<'_>,
        cfg: LaunchConfig,
    ) -> Result<(), LaunchError> {
        self.profiler.timed(
            &self.stream,
            || name.to_string(),
            || {
                // SAFETY: every caller pushes the kernel's arguments in the order and with the C
                // types of its signature in the `.cu` file, and sizes the grid so that the kernel's
                // own bounds checks keep every access inside the buffers described in the method's
                // contract.
                unsafe { args.launch(cfg) }
                    .map(|_| ())
                    .map_err(driver(format!("launching {name}")))
            },
        )
    }

    /// `groups` groups of `width` values: `y = x̂ (· gain)`, `inv = 1/rms` per group. Without a
    /// gain this is the per-head norm. `keep` (the same length as `x`), if given, receives a
    /// copy of `x` as the kernel reads it.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_forward<T: Stored>(
        &self,
        x: &CudaSlice<f32>,
        gain: Option<&CudaSlice<f32>>,
        y: &mut CudaSlice<T>,
        inv: &mut CudaSlice<f32>,
        groups: usize,
        width: usize,
        eps: f32,
        keep: Option<&mut CudaSlice<f32>>,
    ) -> Result<(), LaunchError> {
        let name = T::entry("rmsnorm_forward", "rmsnorm_forward_bf16");
        if keep.as_ref().is_some_and(|k| k.len() < groups * width) {
            return Err(LaunchError::Unsupported(format!(
                "{name}: a copy of {} values for {groups} x {width}",
                keep.map_or(0, |k| k.len())
            )));
        }
        let (groups, width) = (groups as i32, width as i32);
        let mut b = self.builder(name)?;
        b.arg(x);
        match gain {
            Some(g) => b.arg(g),
            None => b.arg(&NULL),
        };
        b.arg(y).arg(inv).arg(&groups).arg(&width).arg(&eps);
        match keep {
            Some(k) => b.arg(k),
            None => b.arg(&NULL),
        };
        let blocks = (groups as u32).div_ceil(WARPS_PER_BLOCK);
        self.run(name, &mut b, grid(blocks, 1, THREADS))
    }

    /// The per-head norm (no gain) of the bf16 projection `x` (`tokens x heads·head_dim`),
    /// rotated by RoPE at `positions` when given (`rope` = the cos and sin tables), into the
    /// bf16 stream `y`; `inv` (`tokens·heads`) as `rmsnorm_forward` keeps it. For the fused
    /// attention's head dims (32, 64, 128).
    #[allow(clippy::too_many_arguments)]
    pub fn head_norm_rope_bf16(
        &self,
        x: &CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
        inv: &mut CudaSlice<f32>,
        rope: Option<(&CudaSlice<u32>, &CudaSlice<f32>, &CudaSlice<f32>)>,
        heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<(), LaunchError> {
        let groups = x.len() / head_dim.max(1);
        let entry = head_norm_entry("head_norm_rope_bf16", head_dim);
        let whole = x.len().is_multiple_of(head_dim.max(1));
        let (Some(name), true, true, true) =
            (entry, whole, y.len() >= x.len(), inv.len() >= groups)
        else {
            return Err(LaunchError::Unsupported(format!(
                "head_norm_rope_bf16: {} values, {} outputs, {} inv, head_dim {head_dim}",
                x.len(),
                y.len(),
                inv.len()
            )));
        };
        let (g32, heads) = (groups as i32, heads as i32);
        let mut b = self.builder(name)?;
        b.arg(x).arg(y).arg(inv);
        match rope {
            Some((positions, cos, sin)) => b.arg(positions).arg(cos).arg(sin),
            None => b.arg(&NULL).arg(&NULL).arg(&NULL),
        };
        b.arg(&g32).arg(&heads).arg(&eps);
        self.run(name, &mut b, head_norm_grid(groups))
    }

    /// The backward of `head_norm_rope_bf16` (the same `rope`): the gradient w.r.t. `x` from
    /// `dy`, the (bf16) gradient w.r.t. its outputs, written (not added) as bf16 into `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn head_norm_rope_backward_bf16(
        &self,
        dy: &CudaSlice<u16>,
        x: &CudaSlice<u16>,
        inv: &CudaSlice<f32>,
        rope: Option<(&CudaSlice<u32>, &CudaSlice<f32>, &CudaSlice<f32>)>,
        dx: &mut CudaSlice<u16>,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), LaunchError> {
        let groups = x.len() / head_dim.max(1);
        let entry = head_norm_entry("head_norm_rope_backward_bf16", head_dim);
        let whole = x.len().is_multiple_of(head_dim.max(1));
        let fits = dy.len() >= x.len() && dx.len() >= x.len() && inv.len() >= groups;
        let (Some(name), true, true) = (entry, whole, fits) else {
            return Err(LaunchError::Unsupported(format!(
                "head_norm_rope_backward_bf16: {} values, {} gradients, {} outputs, {} inv, \
                 head_dim {head_dim}",
                x.len(),
                dy.len(),
                dx.len(),
                inv.len()
            )));
        };
        let (g32, heads) = (groups as i32, heads as i32);
        let mut b = self.builder(name)?;
        b.arg(dy).arg(x).arg(inv);
        match rope {
            Some((positions, cos, sin)) => b.arg(positions).arg(cos).arg(sin),
            None => b.arg(&NULL).arg(&NULL).arg(&NULL),
        };
        b.arg(dx).arg(&g32).arg(&heads);
        self.run(name, &mut b, head_norm_grid(groups))
    }

    /// Adds the input gradient into `dx`; `x` and `inv` as in the forward pass. `copy`, if
    /// given, receives the updated `dx` rounded to bf16.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward(
        &self,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        inv: &CudaSlice<f32>,
        gain: Option<&CudaSlice<f32>>,
        dx: &mut CudaSlice<f32>,
        groups: usize,
        width: usize,
        copy: Option<&mut CudaSlice<u16>>,
    ) -> Result<(), LaunchError> {
        if copy.as_ref().is_some_and(|c| c.len() < groups * width) {
            return Err(LaunchError::Unsupported(format!(
                "rmsnorm_backward: a bf16 copy of {} values for {groups} x {width}",
                copy.map_or(0, |c| c.len())
            )));
        }
        let (groups, width) = (groups as i32, width as i32);
        let mut b = self.builder("rmsnorm_backward")?;
        b.arg(dy).arg(x).arg(inv);
        match gain {
            Some(g) => b.arg(g),
            None => b.arg(&NULL),
        };
        b.arg(dx).arg(&groups).arg(&width);
        match copy {
            Some(c) => b.arg(c),
            None => b.arg(&NULL),
        };
        let blocks = (groups as u32).div_ceil(WARPS_PER_BLOCK);
        self.run("rmsnorm_backward", &mut b, grid(blocks, 1, THREADS))
    }

    /// Adds the gain's gradient (summed over `rows`, per `GAIN_CHUNK` rows then over the chunks,
    /// in a fixed order) into `dgain`.
    pub fn rmsnorm_gain_backward(
        &self,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        inv: &CudaSlice<f32>,
        dgain: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), LaunchError> {
        if rows == 0 || dgain.is_empty() {
            return Ok(());
        }
        let width = dgain.len();
        let chunks = rows.div_ceil(GAIN_CHUNK);
        // SAFETY: the partial pass writes every element before the final pass reads it.
        let mut partial = unsafe { self.stream.alloc::<f32>(chunks * width) }
            .map_err(driver("allocating the gain's partial sums"))?;
        let (rows_i, width_i, chunks_i) = (rows as i32, width as i32, chunks as i32);
        let mut b = self.builder("rmsnorm_gain_partial")?;
        b.arg(dy)
            .arg(x)
            .arg(inv)
            .arg(&mut partial)
            .arg(&rows_i)
            .arg(&width_i);
        let cfg = grid(
            (width as u32).div_ceil(THREADS),
            chunks.min(65535) as u32,
            THREADS,
        );
        self.run("rmsnorm_gain_partial", &mut b, cfg)?;
        let mut b = self.builder("rmsnorm_gain_final")?;
        b.arg(&partial).arg(dgain).arg(&chunks_i).arg(&width_i);
        self.run("rmsnorm_gain_final", &mut b, grid_1d(width))
    }

    /// Rotates `x` (`tokens x heads·head_dim`) in place; `cos`/`sin` are `positions x
    /// head_dim/2` tables; `inverse` is the backward pass.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_apply(
        &self,
        x: &mut CudaSlice<f32>,
        positions: &CudaSlice<u32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<(), LaunchError> {
        let tokens = positions.len() as i32;
        let (heads, head_dim, inverse) = (heads as i32, head_dim as i32, inverse as i32);
        let pairs = x.len() / 2;
        let mut b = self.builder("rope_apply")?;
        b.arg(x).arg(positions).arg(cos).arg(sin);
        b.arg(&tokens).arg(&heads).arg(&head_dim).arg(&inverse);
        self.run("rope_apply", &mut b, grid_1d(pairs))
    }

    /// `h = silu(gate) · up`, inputs and output of one type.
    pub fn swiglu_forward<T: Stored>(
        &self,
        gate: &CudaSlice<T>,
        up: &CudaSlice<T>,
        h: &mut CudaSlice<T>,
    ) -> Result<(), LaunchError> {
        let name = T::entry("swiglu_forward", "swiglu_forward_bf16");
        let n = gate.len();
        if up.len() < n || h.len() < n {
            return Err(LaunchError::Unsupported(format!(
                "{name}: {n} gate values, {} up, {} outputs",
                up.len(),
                h.len()
            )));
        }
        let n = n as i64;
        let mut b = self.builder(name)?;
        b.arg(gate).arg(up).arg(h).arg(&n);
        self.run(name, &mut b, grid_1d(vector_threads::<T>(n as usize)))
    }

    /// SwiGLU's gradients w.r.t. gate and up, inputs and outputs of one type.
    pub fn swiglu_backward<T: Stored>(
        &self,
        dh: &CudaSlice<T>,
        gate: &CudaSlice<T>,
        up: &CudaSlice<T>,
        dgate: &mut CudaSlice<T>,
        dup: &mut CudaSlice<T>,
    ) -> Result<(), LaunchError> {
        let name = T::entry("swiglu_backward", "swiglu_backward_bf16");
        let n = dh.len();
        if [gate.len(), up.len(), dgate.len(), dup.len()]
            .iter()
            .any(|&len| len < n)
        {
            return Err(LaunchError::Unsupported(format!(
                "{name}: {n} gradients, {} gate, {} up, {} and {} outputs",
                gate.len(),
                up.len(),
                dgate.len(),
                dup.len()
            )));
        }
        let n = n as i64;
        let mut b = self.builder(name)?;
        b.arg(dh).arg(gate).arg(up).arg(dgate).arg(dup).arg(&n);
        self.run(name, &mut b, grid_1d(vector_threads::<T>(n as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_norm_builds_match_norm_cu() {
        let source = include_str!("norm.cu");
        assert!(
            source.contains(&format!("#define HEADS_PER_WARP {HEADS_PER_WARP}\n")),
            "HEADS_PER_WARP differs from norm.cu's"
        );
        for kernel in ["head_norm_rope_bf16", "head_norm_rope_backward_bf16"] {
            for head_dim in [32, 64, 128] {
                let entry = head_norm_entry(kernel, head_dim).unwrap();
                let listed = KERNELS.iter().any(|k| k.entries.contains(&entry));
                assert!(listed, "{entry} is not in the kernel list");
                let defined = format!("HEAD_NORM_ENTRIES({head_dim}, ");
                let line = source.lines().find(|l| l.starts_with(&defined));
                assert!(
                    line.is_some_and(|l| l.contains(entry)),
                    "{entry} is not defined"
                );
            }
            assert_eq!(head_norm_entry(kernel, 96), None);
        }
    }
}
