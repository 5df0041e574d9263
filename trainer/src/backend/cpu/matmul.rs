//! Matrix products through `matrixmultiply::sgemm`, split into fixed-size chunks that rayon runs
//! in parallel.
//!
//! Determinism: every output element is computed by exactly one single-threaded `sgemm` call
//! whose shape depends only on the problem and the chunk constants, never on the thread count,
//! so results are bitwise identical for any number of threads. Reductions over tokens (weight
//! gradients) are split along the *output* rows, never along the reduced dimension.
//!
//! All matrices are row-major and contiguous unless a function says otherwise. Weights are in
//! PyTorch `[out, in]` layout.

use rayon::prelude::*;

/// Rows of the token dimension per task in products that split over tokens.
const TOKEN_CHUNK: usize = 256;
/// Output rows of a weight gradient per task.
const WEIGHT_CHUNK: usize = 64;

/// A strided read-only matrix view: element (i, j) is `data[offset + i * row_stride + j *
/// col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows x cols` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (a view, no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Rows `start..start + n` (a view).
    pub fn row_range(self, start: usize, n: usize) -> MatRef<'a> {
        MatRef {
            offset: self.offset + start * self.row_stride,
            rows: n,
            ..self
        }
    }

    /// Columns `start..start + n` (a view).
    pub fn col_range(self, start: usize, n: usize) -> MatRef<'a> {
        MatRef {
            offset: self.offset + start * self.col_stride,
            cols: n,
            ..self
        }
    }

    /// One past the largest index this view touches (0 when empty).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// `c = alpha * a · b + beta * c` on a contiguous-rows output `c` (`m x n`, row stride `ldc`).
/// With `beta == 0` the old contents of `c` are ignored.
pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: &mut [f32], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert!(a.extent() <= a.data.len(), "gemm: a out of bounds");
    assert!(b.extent() <= b.data.len(), "gemm: b out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n && (m - 1) * ldc + n <= c.len(),
        "gemm: c out of bounds"
    );
    if k == 0 {
        for i in 0..m {
            for x in &mut c[i * ldc..i * ldc + n] {
                *x = if beta == 0.0 { 0.0 } else { *x * beta };
            }
        }
        return;
    }
    // SAFETY: the asserts above check that every element sgemm reads from `a` and `b` and every
    // element it writes in `c` lies inside the borrowed slices; all strides are non-negative.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr().add(a.offset),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// `out (m x n) = x (m x k) · wᵀ` with `w` in `[n, k]` layout (a linear layer's forward), or
/// `out += …` when `accumulate`.
pub fn linear_forward(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    let wt = MatRef::new(w, n, k).t();
    out[..m * n]
        .par_chunks_mut(TOKEN_CHUNK * n)
        .enumerate()
        .for_each(|(chunk, out)| {
            let rows = out.len() / n;
            let xs = MatRef::new(x, m, k).row_range(chunk * TOKEN_CHUNK, rows);
            gemm(1.0, xs, wt, beta, out, n);
        });
}

/// `dx (m x k) (+)= dy (m x n) · w` with `w` in `[n, k]` layout (a linear layer's input
/// gradient).
pub fn linear_backward_input(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    let wm = MatRef::new(w, n, k);
    dx[..m * k]
        .par_chunks_mut(TOKEN_CHUNK * k)
        .enumerate()
        .for_each(|(chunk, dx)| {
            let rows = dx.len() / k;
            let dys = MatRef::new(dy, m, n).row_range(chunk * TOKEN_CHUNK, rows);
            gemm(1.0, dys, wm, beta, dx, k);
        });
}

/// `dw (n x k) += dyᵀ · x` with `dy` `m x n` and `x` `m x k` (a linear layer's weight gradient,
/// summed over the `m` tokens).
pub fn linear_backward_weight(dw: &mut [f32], dy: &[f32], x: &[f32], m: usize, k: usize, n: usize) {
    let xm = MatRef::new(x, m, k);
    dw[..n * k]
        .par_chunks_mut(WEIGHT_CHUNK * k)
        .enumerate()
        .for_each(|(chunk, dw)| {
            let rows = dw.len() / k;
            let dyt = MatRef::new(dy, m, n)
                .col_range(chunk * WEIGHT_CHUNK, rows)
                .t();
            gemm(1.0, dyt, xm, 1.0, dw, k);
        });
}
