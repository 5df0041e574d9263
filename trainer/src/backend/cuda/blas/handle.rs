//! Matrix products through cuBLAS (`cublasGemmEx` / `cublasGemmStridedBatchedEx`), in the
//! row-major terms the CPU reference's `matmul` uses, for both precisions:
//! - `Precision::F32`: f32 operands, f32 compute (`CUBLAS_COMPUTE_32F`, so no TF32): the mode
//!   the parity tests check against the CPU;
//! - `Precision::Bf16`: both operands rounded to bf16 (round to nearest even) just before the
//!   product, f32 accumulation and an f32 result, so everything outside the products stays f32.
//!
//! cuBLAS is column-major. A row-major `m x n` product `C = op(A) · op(B)` is the column-major
//! product `Cᵀ = op(B)ᵀ · op(A)ᵀ`, and a row-major matrix read column-major is its transpose, so
//! the call swaps the operands and keeps their transpose flags: `gemm(op_b, op_a, n, m, k, B,
//! ldb, A, lda, C, ldc)`.
//!
//! Every call checks that the operands and the result lie inside their buffers, so a shape
//! mistake is an error, not a stray write.
//!
//! Two engines run the same column-major call (`BlasEngine`): `cublasGemmEx` (the default), and
//! cuBLASLt with a plan per shape (`lt.rs`: descriptors
//! and the heuristic's algorithm built once, then reused), chosen with `REDPACK_CUDA_BLAS=lt`.
//! A shape cuBLASLt has no algorithm for runs through `cublasGemmEx`.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::{cublasComputeType_t, cublasOperation_t, cudaDataType_t};
use cudarc::cublas::{result as cublas, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::lt::{self, LtBlas, PlanKey};
use super::spec::{
    check_bounds, column_major, to_i32, BlasEngine, BlasError, GemmSpec, Layout, Operand, Output,
};
use crate::backend::cuda::kernels::CudaKernels;
use crate::backend::cuda::runtime::profile::Profiler;
use crate::backend::Precision;

/// A cuBLAS handle on the backend's stream, and a cuBLASLt one when that engine is chosen.
pub struct Blas {
    handle: CudaBlas,
    stream: Arc<CudaStream>,
    lt: Option<LtBlas>,
    /// Times every product when on.
    profiler: Profiler,
}

impl Blas {
    /// Loads cuBLAS (and cuBLASLt for `BlasEngine::Lt`), checking first that the libraries are
    /// there (cudarc panics otherwise), and creates handles bound to `stream`. Products are not
    /// profiled (`with_profiler`).
    pub fn with_engine(stream: Arc<CudaStream>, engine: BlasEngine) -> Result<Blas, BlasError> {
        // SAFETY: only opens and closes the library by name (dlopen/dlclose).
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(BlasError::Missing);
        }
        let handle = CudaBlas::new(stream.clone()).map_err(|e| BlasError::Cublas {
            what: "creating a handle".into(),
            status: format!("{e:?}"),
        })?;
        let lt = match engine {
            BlasEngine::GemmEx => None,
            BlasEngine::Lt => {
                let major = stream
                    .context()
                    .attribute(
                        cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    )
                    .map_err(|e| BlasError::Driver {
                        what: "reading the compute capability",
                        detail: e.to_string(),
                    })?;
                Some(LtBlas::new(stream.clone(), major.max(0) as u32)?)
            }
        };
        Ok(Blas {
            handle,
            stream,
            lt,
            profiler: Profiler::default(),
        })
    }

    /// This handle with its products timed by `profiler` (when it is on).
    pub fn with_profiler(self, profiler: Profiler) -> Self {
        Blas { profiler, ..self }
    }

    pub fn engine(&self) -> BlasEngine {
        match self.lt {
            Some(_) => BlasEngine::Lt,
            None => BlasEngine::GemmEx,
        }
    }

    /// Shapes cuBLASLt has plans for (0 with `cublasGemmEx`).
    pub fn cached_plans(&self) -> usize {
        self.lt.as_ref().map_or(0, LtBlas::cached_plans)
    }

    /// `op`'s bf16 copy (the whole buffer), for the mixed-precision products.
    fn bf16_copy(
        &self,
        kernels: &CudaKernels,
        x: &CudaSlice<f32>,
    ) -> Result<CudaSlice<u16>, BlasError> {
        // SAFETY: the conversion kernel writes every element before anything reads it.
        let mut y =
            unsafe { self.stream.alloc::<u16>(x.len()) }.map_err(|e| BlasError::Driver {
                what: "allocating a bf16 operand",
                detail: e.to_string(),
            })?;
        kernels.f32_to_bf16(x, &mut y)?;
        Ok(y)
    }

    /// `C = alpha · op(A) · op(B) + beta · C`, row-major, per `spec` (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        kernels: &CudaKernels,
        precision: Precision,
        spec: GemmSpec,
        a: Operand<'_>,
        la: Layout,
        b: Operand<'_>,
        lb: Layout,
        mut c: Output<'_>,
    ) -> Result<(), BlasError> {
        let GemmSpec { m, n, k, .. } = spec;
        if m == 0 || n == 0 || spec.batch == 0 {
            return Ok(());
        }
        check_bounds(&spec, la, a.len(), lb, b.len(), c.len())?;
        if precision == Precision::F32 && c.is_bf16() {
            return Err(BlasError::Shape {
                what: "output type",
                detail: "a bf16 result in the f32 mode".into(),
            });
        }
        if k == 0 {
            return Err(BlasError::Shape {
                what: "empty inner dimension",
                detail: format!("{m} x {n} with k = 0"),
            });
        }
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // The bf16 copies this product makes (of the f32 operands, in the bf16 mode).
        let convert = |x: Operand<'_>| -> Result<Option<CudaSlice<u16>>, BlasError> {
            match (precision, x) {
                (Precision::Bf16, Operand::F32(x)) => Ok(Some(self.bf16_copy(kernels, x)?)),
                (Precision::Bf16, Operand::Bf16(_)) | (Precision::F32, Operand::F32(_)) => Ok(None),
                (Precision::F32, Operand::Bf16(_)) => Err(BlasError::Shape {
                    what: "operand type",
                    detail: "a bf16 operand in the f32 mode".into(),
                }),
            }
        };
        let (bf_a, bf_b) = (convert(a)?, convert(b)?);
        let stream = &self.stream;
        let (a_ptr, _a_guard) = match (&bf_a, a) {
            (Some(copy), _) => copy.device_ptr(stream),
            (None, Operand::F32(x)) => x.device_ptr(stream),
            (None, Operand::Bf16(x)) => x.device_ptr(stream),
        };
        let (b_ptr, _b_guard) = match (&bf_b, b) {
            (Some(copy), _) => copy.device_ptr(stream),
            (None, Operand::F32(x)) => x.device_ptr(stream),
            (None, Operand::Bf16(x)) => x.device_ptr(stream),
        };
        let c_bf16 = c.is_bf16();
        let (c_ptr, _c_guard) = match &mut c {
            Output::F32(x) => x.device_ptr_mut(stream),
            Output::Bf16(x) => x.device_ptr_mut(stream),
        };
        let c_type = match c_bf16 {
            true => cudaDataType_t::CUDA_R_16BF,
            false => cudaDataType_t::CUDA_R_32F,
        };
        let in_type = match precision {
            Precision::F32 => cudaDataType_t::CUDA_R_32F,
            Precision::Bf16 => cudaDataType_t::CUDA_R_16BF,
        };
        let (alpha, beta) = (spec.alpha, spec.beta);
        let cm = column_major(&spec, la, lb);
        let (cm_m, cm_n, cm_k) = (to_i32("n", cm.m)?, to_i32("m", cm.n)?, to_i32("k", cm.k)?);
        let (ld_first, ld_second, ldc) = (
            to_i32("ld", cm.ld_first)?,
            to_i32("ld", cm.ld_second)?,
            to_i32("ldc", cm.ldc)?,
        );
        let batch = to_i32("batch", spec.batch)?;
        let compute = cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = cudarc::cublas::sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        // SAFETY: the pointers are live device buffers of this stream's context, `check_bounds`
        // keeps every access of the (batched) product inside them, the scalar pointers are host
        // f32 values that outlive the call (host pointer mode, the handle's default), and the
        // data types match the buffers (f32, or the bf16 copies).
        let name = || {
            format!(
                "gemm {}{} {m}x{n}x{k}{}{}{}",
                precision.name(),
                if c_bf16 { "->bf16" } else { "" },
                if spec.batch > 1 {
                    format!(" batch {}", spec.batch)
                } else {
                    String::new()
                },
                if la.trans { " At" } else { "" },
                if lb.trans { " Bt" } else { "" },
            )
        };
        if let Some(lt_blas) = &self.lt {
            let elem = match precision {
                Precision::F32 => 4,
                Precision::Bf16 => 2,
            };
            let key = PlanKey {
                bf16: precision == Precision::Bf16,
                c_bf16,
                cm,
                batch: spec.batch,
                align_first: lt::alignment(b_ptr, elem, cm.ld_first, cm.stride_first),
                align_second: lt::alignment(a_ptr, elem, cm.ld_second, cm.stride_second),
                align_c: lt::alignment(c_ptr, if c_bf16 { 2 } else { 4 }, cm.ldc, cm.stride_c),
            };
            // SAFETY: as for cublasGemmEx below; the key's alignments are those of these
            // pointers, leading dimensions and strides.
            let lt_name = || format!("{} lt", name());
            let ran = self.profiler.timed(stream, lt_name, || unsafe {
                lt_blas.matmul(&key, alpha, b_ptr, a_ptr, beta, c_ptr)
            })?;
            if ran {
                return Ok(());
            }
        }
        let status = self.profiler.timed(stream, name, || unsafe {
            if spec.batch == 1 {
                cublas::gemm_ex(
                    *self.handle.handle(),
                    op(cm.trans_first),
                    op(cm.trans_second),
                    cm_m,
                    cm_n,
                    cm_k,
                    (&alpha) as *const f32 as *const c_void,
                    b_ptr as *const c_void,
                    in_type,
                    ld_first,
                    a_ptr as *const c_void,
                    in_type,
                    ld_second,
                    (&beta) as *const f32 as *const c_void,
                    c_ptr as *mut c_void,
                    c_type,
                    ldc,
                    compute,
                    algo,
                )
            } else {
                cublas::gemm_strided_batched_ex(
                    *self.handle.handle(),
                    op(cm.trans_first),
                    op(cm.trans_second),
                    cm_m,
                    cm_n,
                    cm_k,
                    (&alpha) as *const f32 as *const c_void,
                    b_ptr as *const c_void,
                    in_type,
                    ld_first,
                    cm.stride_first as i64,
                    a_ptr as *const c_void,
                    in_type,
                    ld_second,
                    cm.stride_second as i64,
                    (&beta) as *const f32 as *const c_void,
                    c_ptr as *mut c_void,
                    c_type,
                    ldc,
                    cm.stride_c as i64,
                    batch,
                    compute,
                    algo,
                )
            }
        });
        status.map_err(|e| BlasError::Cublas {
            what: format!("a {m} x {n} x {k} product (batch {})", spec.batch),
            status: format!("{e:?}"),
        })
    }
}
