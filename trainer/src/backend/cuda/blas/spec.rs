//! A matrix product as data: its row-major shape (`GemmSpec`) and operand layouts (`Layout`),
//! the column-major arguments cuBLAS takes for it (`ColumnMajor`), the bounds check every call
//! makes, the operand and result types, and the engine that runs it (`BlasEngine`).

use cudarc::driver::CudaSlice;

use crate::backend::cuda::kernels::LaunchError;

#[derive(Debug, thiserror::Error)]
pub enum BlasError {
    #[error("cuBLAS (libcublas.so) not found: install the CUDA toolkit or put the folder holding libcublas.so.13 on LD_LIBRARY_PATH")]
    Missing,
    #[error("cuBLAS error while {what}: {status:?}")]
    Cublas { what: String, status: String },
    #[error("matrix product {what}: {detail}")]
    Shape { what: &'static str, detail: String },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("CUDA driver error while {what}: {detail}")]
    Driver { what: &'static str, detail: String },
}

/// How a row-major operand is stored: per batch entry a matrix with leading dimension `ld`
/// (its stored column count, or more), `stride` elements between batch entries, and `trans` to
/// use its transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub trans: bool,
    pub ld: usize,
    pub stride: usize,
}

impl Layout {
    /// A contiguous row-major matrix of `ld` columns.
    pub fn new(ld: usize) -> Layout {
        Layout {
            trans: false,
            ld,
            stride: 0,
        }
    }

    pub fn t(self) -> Layout {
        Layout {
            trans: !self.trans,
            ..self
        }
    }

    pub fn batched(self, stride: usize) -> Layout {
        Layout { stride, ..self }
    }
}

/// One product (or a strided batch of them): `C (m x n) = alpha · op(A) · op(B) + beta · C`.
#[derive(Debug, Clone, Copy)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub ldc: usize,
    /// Batch entries and the stride between results (1 and 0 for a single product).
    pub batch: usize,
    pub stride_c: usize,
}

impl GemmSpec {
    pub fn new(m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> GemmSpec {
        GemmSpec {
            m,
            n,
            k,
            alpha,
            beta,
            ldc: n,
            batch: 1,
            stride_c: 0,
        }
    }

    pub fn batched(self, batch: usize, stride_c: usize) -> GemmSpec {
        GemmSpec {
            batch,
            stride_c,
            ..self
        }
    }
}

/// One past the last element a (batched) stored matrix touches.
fn extent(rows: usize, cols: usize, ld: usize, batch: usize, stride: usize) -> usize {
    if rows == 0 || cols == 0 || batch == 0 {
        return 0;
    }
    (batch - 1) * stride + (rows - 1) * ld + cols
}

pub(super) fn to_i32(what: &'static str, v: usize) -> Result<i32, BlasError> {
    i32::try_from(v).map_err(|_| BlasError::Shape {
        what,
        detail: format!("{v} does not fit cuBLAS's 32-bit sizes"),
    })
}

/// The column-major cuBLAS arguments of a row-major product: the operands swap places (`first`
/// is B, `second` is A) and keep their transpose flags; `m` and `n` swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ColumnMajor {
    pub trans_first: bool,
    pub trans_second: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ld_first: usize,
    pub ld_second: usize,
    pub ldc: usize,
    pub stride_first: usize,
    pub stride_second: usize,
    pub stride_c: usize,
}

/// `Cᵀ (n x m) = op(B)ᵀ · op(A)ᵀ` in cuBLAS's terms.
pub fn column_major(spec: &GemmSpec, a: Layout, b: Layout) -> ColumnMajor {
    ColumnMajor {
        trans_first: b.trans,
        trans_second: a.trans,
        m: spec.n,
        n: spec.m,
        k: spec.k,
        ld_first: b.ld,
        ld_second: a.ld,
        ldc: spec.ldc,
        stride_first: b.stride,
        stride_second: a.stride,
        stride_c: spec.stride_c,
    }
}

/// Checks that a (batched) product stays inside its buffers: `Err` names the operand.
pub fn check_bounds(
    spec: &GemmSpec,
    a: Layout,
    a_len: usize,
    b: Layout,
    b_len: usize,
    c_len: usize,
) -> Result<(), BlasError> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    // Stored shapes: op(A) is m x k, op(B) is k x n.
    let (a_rows, a_cols) = if a.trans { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if b.trans { (n, k) } else { (k, n) };
    let check = |name: &str, rows: usize, cols: usize, ld: usize, stride: usize, len: usize| {
        let need = extent(rows, cols, ld, spec.batch, stride);
        if ld < cols.max(1) || need > len {
            return Err(BlasError::Shape {
                what: "out of bounds",
                detail: format!(
                    "{name}: {rows} x {cols} (ld {ld}, batch {} stride {stride}) needs {need} elements, the buffer has {len}",
                    spec.batch
                ),
            });
        }
        Ok(())
    };
    check("A", a_rows, a_cols, a.ld, a.stride, a_len)?;
    check("B", b_rows, b_cols, b.ld, b.stride, b_len)?;
    check("C", m, n, spec.ldc, spec.stride_c, c_len)
}

/// A product operand: an f32 buffer, which the bf16 mode rounds to a bf16 copy just before the
/// product, or a bf16 copy made earlier (`Dev::bf16`) and reused by several products, which only
/// the bf16 mode takes.
#[derive(Debug, Clone, Copy)]
pub enum Operand<'a> {
    F32(&'a CudaSlice<f32>),
    Bf16(&'a CudaSlice<u16>),
}

impl Operand<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Operand::F32(x) => x.len(),
            Operand::Bf16(x) => x.len(),
        }
    }
}

impl<'a> From<&'a CudaSlice<f32>> for Operand<'a> {
    fn from(x: &'a CudaSlice<f32>) -> Self {
        Operand::F32(x)
    }
}

impl<'a> From<&'a CudaSlice<u16>> for Operand<'a> {
    fn from(x: &'a CudaSlice<u16>) -> Self {
        Operand::Bf16(x)
    }
}

/// A product's result: f32, or (the bf16 mode only) rounded to bf16 as cuBLAS writes it, for an
/// activation that only bf16-reading kernels and products consume (half the bytes written and
/// read back, and no separate rounding pass).
#[derive(Debug)]
pub enum Output<'a> {
    F32(&'a mut CudaSlice<f32>),
    Bf16(&'a mut CudaSlice<u16>),
}

impl Output<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Output::F32(x) => x.len(),
            Output::Bf16(x) => x.len(),
        }
    }

    pub(super) fn is_bf16(&self) -> bool {
        matches!(self, Output::Bf16(_))
    }
}

impl<'a> From<&'a mut CudaSlice<f32>> for Output<'a> {
    fn from(x: &'a mut CudaSlice<f32>) -> Self {
        Output::F32(x)
    }
}

impl<'a> From<&'a mut CudaSlice<u16>> for Output<'a> {
    fn from(x: &'a mut CudaSlice<u16>) -> Self {
        Output::Bf16(x)
    }
}

/// Which library call runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlasEngine {
    /// `cublasGemmEx` / `cublasGemmStridedBatchedEx` with the default algorithm.
    #[default]
    GemmEx,
    /// `cublasLtMatmul` with cached descriptors and a heuristic-chosen algorithm per shape.
    Lt,
}

impl BlasEngine {
    pub fn name(self) -> &'static str {
        match self {
            BlasEngine::GemmEx => "gemmex",
            BlasEngine::Lt => "lt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_counts_the_last_element_of_the_last_batch_entry() {
        assert_eq!(extent(2, 3, 3, 1, 0), 6);
        assert_eq!(extent(2, 3, 5, 1, 0), 8);
        assert_eq!(extent(2, 3, 3, 4, 6), 24);
        assert_eq!(extent(0, 3, 3, 4, 6), 0);
    }
}
