//! Every matrix product the GPU model runs, as data: the row-major shape (`GemmSpec`) and the
//! two operand layouts. Keeping them here, apart from the launches, lets the tests run each one
//! through a host emulation of cuBLAS's column-major `gemm` (`host`, fed the arguments
//! `column_major` derives, as the device call is) and compare it with the CPU reference's
//! meaning of the product, with no GPU (`backend::parity`).
//!
//! Notation: weights are `[out, in]` row-major; streams are `tokens x width`; attention operands
//! are padded per (row, head): `batch x len x head_dim`, scores `batch x max_q x max_k`.

use super::spec::{GemmSpec, Layout};

/// A product's shape and its A and B layouts.
pub type Product = (GemmSpec, Layout, Layout);

/// `out (m x n) (+)= x (m x k) · wᵀ`, `w` `[n, k]`.
pub fn linear_forward(m: usize, k: usize, n: usize, accumulate: bool) -> Product {
    let beta = if accumulate { 1.0 } else { 0.0 };
    (
        GemmSpec::new(m, n, k, 1.0, beta),
        Layout::new(k),
        Layout::new(k).t(),
    )
}

/// `dx (m x k) (+)= dy (m x n) · w`, `w` `[n, k]`.
pub fn linear_backward_input(m: usize, k: usize, n: usize, accumulate: bool) -> Product {
    let beta = if accumulate { 1.0 } else { 0.0 };
    (
        GemmSpec::new(m, k, n, 1.0, beta),
        Layout::new(n),
        Layout::new(k),
    )
}

/// `dw (n x k) += dyᵀ · x`, `dy` `m x n`, `x` `m x k`.
pub fn linear_backward_weight(m: usize, k: usize, n: usize) -> Product {
    (
        GemmSpec::new(n, k, m, 1.0, 1.0),
        Layout::new(n).t(),
        Layout::new(k),
    )
}

/// Padded attention sizes: `batch = rows · heads` entries of `max_q` queries and `max_k` keys.
#[derive(Debug, Clone, Copy)]
pub struct AttnSizes {
    pub batch: usize,
    pub max_q: usize,
    pub max_k: usize,
    pub head_dim: usize,
}

impl AttnSizes {
    fn q(&self) -> Layout {
        Layout::new(self.head_dim).batched(self.max_q * self.head_dim)
    }

    fn k(&self) -> Layout {
        Layout::new(self.head_dim).batched(self.max_k * self.head_dim)
    }

    fn s(&self) -> Layout {
        Layout::new(self.max_k).batched(self.max_q * self.max_k)
    }

    fn spec(&self, m: usize, n: usize, k: usize) -> GemmSpec {
        GemmSpec::new(m, n, k, 1.0, 0.0).batched(self.batch, m * n)
    }

    /// `S = Q Kᵀ` (unscaled): A = Q, B = K.
    pub fn scores(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, mk, hd), self.q(), self.k().t())
    }

    /// `O = P V`: A = P, B = V.
    pub fn output(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, hd, mk), self.s(), self.k())
    }

    /// `dP = dO Vᵀ`: A = dO, B = V.
    pub fn d_probs(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, mk, hd), self.q(), self.k().t())
    }

    /// `dV = Pᵀ dO`: A = P, B = dO.
    pub fn d_values(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mk, hd, mq), self.s().t(), self.q())
    }

    /// `dQ = dS K`: A = dS, B = K.
    pub fn d_queries(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mq, hd, mk), self.s(), self.k())
    }

    /// `dK = dSᵀ Q`: A = dS, B = Q.
    pub fn d_keys(&self) -> Product {
        let (mq, mk, hd) = (self.max_q, self.max_k, self.head_dim);
        (self.spec(mk, hd, mq), self.s().t(), self.q())
    }
}

/// `logits (c x vocab) = scale · h (c x d) · Eᵀ`, `E` `vocab x d`: A = h, B = E.
pub fn logits(c: usize, vocab: usize, d: usize, scale: f32) -> Product {
    (
        GemmSpec::new(c, vocab, d, scale, 0.0),
        Layout::new(d),
        Layout::new(d).t(),
    )
}

/// `dh (c x d) = G (c x vocab) · E`: A = G, B = E.
pub fn logits_d_hidden(c: usize, vocab: usize, d: usize) -> Product {
    (
        GemmSpec::new(c, d, vocab, 1.0, 0.0),
        Layout::new(vocab),
        Layout::new(d),
    )
}

/// `dE (vocab x d) += Gᵀ · h`: A = G, B = h.
pub fn logits_d_embed(c: usize, vocab: usize, d: usize) -> Product {
    (
        GemmSpec::new(vocab, d, c, 1.0, 1.0),
        Layout::new(vocab).t(),
        Layout::new(d),
    )
}

#[cfg(test)]
pub(crate) mod host {
    //! A host stand-in for cuBLAS: column-major `C = alpha op(A) op(B) + beta C` (strided
    //! batched), driven through `blas::column_major` exactly like the device call.

    use super::super::spec::{check_bounds, column_major, GemmSpec, Layout};

    /// cuBLAS `gemmStridedBatched` semantics on host slices (column-major, `T` = transpose).
    #[allow(clippy::too_many_arguments)]
    fn cublas_gemm(
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        sa: usize,
        b: &[f32],
        ldb: usize,
        sb: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
        sc: usize,
        batch: usize,
    ) {
        for e in 0..batch {
            for j in 0..n {
                for i in 0..m {
                    let mut acc = 0.0f64;
                    for p in 0..k {
                        let av = if ta {
                            a[e * sa + p + i * lda]
                        } else {
                            a[e * sa + i + p * lda]
                        };
                        let bv = if tb {
                            b[e * sb + j + p * ldb]
                        } else {
                            b[e * sb + p + j * ldb]
                        };
                        acc += av as f64 * bv as f64;
                    }
                    let at = e * sc + i + j * ldc;
                    let old = if beta == 0.0 { 0.0 } else { beta * c[at] };
                    c[at] = (alpha as f64 * acc) as f32 + old;
                }
            }
        }
    }

    /// What `Blas::gemm` asks cuBLAS for, run on the host.
    pub fn gemm(spec: GemmSpec, a: &[f32], la: Layout, b: &[f32], lb: Layout, c: &mut [f32]) {
        if spec.m == 0 || spec.n == 0 || spec.batch == 0 {
            return;
        }
        check_bounds(&spec, la, a.len(), lb, b.len(), c.len()).unwrap();
        let cm = column_major(&spec, la, lb);
        cublas_gemm(
            cm.trans_first,
            cm.trans_second,
            cm.m,
            cm.n,
            cm.k,
            spec.alpha,
            b,
            cm.ld_first,
            cm.stride_first,
            a,
            cm.ld_second,
            cm.stride_second,
            spec.beta,
            c,
            cm.ldc,
            cm.stride_c,
            spec.batch,
        );
    }
}
