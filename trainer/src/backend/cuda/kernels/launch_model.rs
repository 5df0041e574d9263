//! Launchers for the kernels the whole-model backend adds around the layer kernels: packing
//! attention streams into the padded batched layout and back (attention.cu), the residual add and
//! dropout (residual.cu), and the bf16 conversion (convert.cu).

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::grid::{grid_1d, LaunchError};
use super::launch::CudaKernels;

/// Which fields of a row descriptor a pack or unpack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackSide {
    /// `q_start`, `q_len`.
    Queries,
    /// `k_start`, `k_len`.
    Keys,
}

/// The padded layout of one side of a batched attention: `rows x heads x max_len x head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackShape {
    pub rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub max_len: usize,
    pub side: PackSide,
}

impl PackShape {
    /// Elements of the padded tensor.
    pub fn len(&self) -> usize {
        self.rows * self.heads * self.max_len * self.head_dim
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CudaKernels {
    fn pack_like(
        &self,
        name: &'static str,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
        rows_desc: &CudaSlice<i32>,
        shape: PackShape,
    ) -> Result<(), LaunchError> {
        let dims = [shape.rows, shape.heads, shape.head_dim, shape.max_len].map(|v| v as i32);
        let keys = (shape.side == PackSide::Keys) as i32;
        let mut b = self.builder(name)?;
        b.arg(src).arg(dst).arg(rows_desc);
        b.arg(&dims[0])
            .arg(&dims[1])
            .arg(&dims[2])
            .arg(&dims[3])
            .arg(&keys);
        self.run(name, &mut b, grid_1d(shape.len()))
    }

    /// Stream (`tokens x heads·head_dim`) to the padded layout; `dst` has `shape.len()` values.
    pub fn attn_pack(
        &self,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
        rows_desc: &CudaSlice<i32>,
        shape: PackShape,
    ) -> Result<(), LaunchError> {
        self.pack_like("attn_pack", src, dst, rows_desc, shape)
    }

    /// Padded layout back to the stream; positions outside every row are left untouched.
    pub fn attn_unpack(
        &self,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
        rows_desc: &CudaSlice<i32>,
        shape: PackShape,
    ) -> Result<(), LaunchError> {
        self.pack_like("attn_unpack", src, dst, rows_desc, shape)
    }

    /// `x += y` over `x.len()` values (`y` at least as long).
    pub fn add_inplace(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
    ) -> Result<(), LaunchError> {
        let n = x.len() as i64;
        let mut b = self.builder("add_inplace")?;
        b.arg(x).arg(y).arg(&n);
        self.run("add_inplace", &mut b, grid_1d(n as usize))
    }

    /// Dropout on `x` (`rows.len() x width`) with the CPU reference's mask.
    #[allow(clippy::too_many_arguments)]
    pub fn dropout_apply(
        &self,
        x: &mut CudaSlice<f32>,
        rows: &CudaSlice<u32>,
        positions: &CudaSlice<u32>,
        width: usize,
        p: f32,
        seed: u64,
        site: u64,
    ) -> Result<(), LaunchError> {
        let tokens = rows.len() as i32;
        let width32 = width as i32;
        let keep_scale = 1.0f32 / (1.0f32 - p);
        let mut b = self.builder("dropout_apply")?;
        b.arg(x).arg(rows).arg(positions);
        b.arg(&tokens).arg(&width32).arg(&p).arg(&keep_scale);
        b.arg(&seed).arg(&site);
        self.run("dropout_apply", &mut b, grid_1d(rows.len() * width))
    }

    /// f32 to bf16 (stored as `u16`), round to nearest even; `y` at least as long as `x`.
    pub fn f32_to_bf16(
        &self,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), LaunchError> {
        let n = x.len() as i64;
        let mut b = self.builder("f32_to_bf16_kernel")?;
        b.arg(x).arg(y).arg(&n);
        // Four values per thread.
        self.run("f32_to_bf16_kernel", &mut b, grid_1d(x.len().div_ceil(4)))
    }
}
