//! The Adafactor update on the device, kernel by kernel as in adafactor.cu, matching
//! `optim::adafactor` (T5X's rule). Reductions run on a fixed grid into f64, so an update is
//! deterministic.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};

use super::launch::{driver, grid, grid_1d, CudaKernels, LaunchError, REDUCE_BLOCKS, THREADS};
use crate::optim::adafactor::AdafactorConfig;

/// What one update uses besides the state: the config's constants, this step's `beta2` and the
/// learning rate.
#[derive(Debug, Clone, Copy)]
pub struct AdafactorStep<'a> {
    pub config: &'a AdafactorConfig,
    pub beta2: f32,
    pub lr: f32,
}

/// The second moment of one parameter on the device.
pub enum DeviceMoment<'a> {
    Full(&'a mut CudaSlice<f32>),
    /// For a `v_row.len() x v_col.len()` matrix.
    Factored {
        v_row: &'a mut CudaSlice<f32>,
        v_col: &'a mut CudaSlice<f32>,
    },
}

/// Buffers an update needs, sized for the largest parameter; reused across parameters.
pub struct AdafactorScratch {
    y: CudaSlice<f32>,
    partial: CudaSlice<f64>,
    v_row_sum: CudaSlice<f64>,
    y_sq_sum: CudaSlice<f64>,
    p_sq_sum: CudaSlice<f64>,
}

impl AdafactorScratch {
    pub fn new(stream: &Arc<CudaStream>, max_numel: usize) -> Result<Self, LaunchError> {
        let zeros = |n| {
            stream
                .alloc_zeros::<f64>(n)
                .map_err(driver("allocating scratch"))
        };
        Ok(AdafactorScratch {
            y: stream
                .alloc_zeros::<f32>(max_numel)
                .map_err(driver("allocating scratch"))?,
            partial: zeros(REDUCE_BLOCKS as usize)?,
            v_row_sum: zeros(1)?,
            y_sq_sum: zeros(1)?,
            p_sq_sum: zeros(1)?,
        })
    }
}

impl CudaKernels {
    /// `out[at] = Σ x` (or `Σ x²`), in f64, over the first `n` values of `x`, in a fixed order.
    pub fn sum_f64(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        square: bool,
        partial: &mut CudaSlice<f64>,
        (out, at): (&mut CudaSlice<f64>, usize),
    ) -> Result<(), LaunchError> {
        if at >= out.len() {
            return Err(LaunchError::Unsupported(format!(
                "internal: sum into slot {at} of {}",
                out.len()
            )));
        }
        let (n, square, count, at) = (n as i64, square as i32, REDUCE_BLOCKS as i32, at as i32);
        let mut b = self.builder("reduce_sum_partial")?;
        b.arg(x).arg(&n).arg(&square).arg(&mut *partial);
        self.run(
            "reduce_sum_partial",
            &mut b,
            grid(REDUCE_BLOCKS, 1, THREADS),
        )?;
        let mut b = self.builder("reduce_sum_final")?;
        b.arg(&*partial).arg(&count).arg(out).arg(&at);
        self.run("reduce_sum_final", &mut b, grid(1, 1, THREADS))
    }

    #[allow(clippy::too_many_arguments)]
    /// One Adafactor update of `param` with `grad`; `momentum` must be `Some` exactly when the
    /// config has `beta1`. With `update_sq = Some((out, at))`, `out[at]` receives the sum of the
    /// squared update (f64), for the update norm.
    pub fn adafactor_update(
        &self,
        step: AdafactorStep<'_>,
        param: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        moment: DeviceMoment<'_>,
        momentum: Option<&mut CudaSlice<f32>>,
        scratch: &mut AdafactorScratch,
        update_sq: Option<(&mut CudaSlice<f64>, usize)>,
    ) -> Result<(), LaunchError> {
        let config = step.config;
        let (beta2, eps1) = (step.beta2, config.epsilon1);
        let n = param.len() as i64;
        let s = scratch;
        match moment {
            DeviceMoment::Full(v) => {
                let mut b = self.builder("adafactor_full_moment")?;
                b.arg(v)
                    .arg(grad)
                    .arg(&mut s.y)
                    .arg(&n)
                    .arg(&beta2)
                    .arg(&eps1);
                self.run("adafactor_full_moment", &mut b, grid_1d(n as usize))?;
            }
            DeviceMoment::Factored { v_row, v_col } => {
                let (rows, cols) = (v_row.len() as i32, v_col.len() as i32);
                let mut b = self.builder("adafactor_row_moment")?;
                b.arg(grad)
                    .arg(&mut *v_row)
                    .arg(&rows)
                    .arg(&cols)
                    .arg(&beta2)
                    .arg(&eps1);
                self.run(
                    "adafactor_row_moment",
                    &mut b,
                    grid(rows as u32, 1, THREADS),
                )?;
                let mut b = self.builder("adafactor_col_moment")?;
                b.arg(grad)
                    .arg(&mut *v_col)
                    .arg(&rows)
                    .arg(&cols)
                    .arg(&beta2)
                    .arg(&eps1);
                self.run("adafactor_col_moment", &mut b, grid_1d(cols as usize))?;
                self.sum_f64(
                    v_row,
                    rows as usize,
                    false,
                    &mut s.partial,
                    (&mut s.v_row_sum, 0),
                )?;
                let mut b = self.builder("adafactor_factored_y")?;
                b.arg(grad)
                    .arg(&*v_row)
                    .arg(&*v_col)
                    .arg(&s.v_row_sum)
                    .arg(&mut s.y);
                b.arg(&rows).arg(&cols);
                self.run("adafactor_factored_y", &mut b, grid_1d(n as usize))?;
            }
        }
        self.sum_f64(&s.y, n as usize, true, &mut s.partial, (&mut s.y_sq_sum, 0))?;
        self.sum_f64(
            param,
            n as usize,
            true,
            &mut s.partial,
            (&mut s.p_sq_sum, 0),
        )?;
        let clip = config.clipping_threshold.unwrap_or(0.0);
        let param_scale = config.multiply_by_parameter_scale as i32;
        let beta1 = config.beta1.unwrap_or(0.0);
        let mut b = self.builder("adafactor_apply")?;
        b.arg(&mut *param).arg(&mut s.y);
        match momentum {
            Some(m) => b.arg(m),
            None => b.arg(&super::launch::NULL),
        };
        b.arg(&n).arg(&s.y_sq_sum).arg(&s.p_sq_sum).arg(&step.lr);
        b.arg(&clip)
            .arg(&config.epsilon2)
            .arg(&param_scale)
            .arg(&beta1);
        self.run("adafactor_apply", &mut b, grid_1d(n as usize))?;
        match update_sq {
            Some(out) => self.sum_f64(&s.y, n as usize, true, &mut s.partial, out),
            None => Ok(()),
        }
    }
}
