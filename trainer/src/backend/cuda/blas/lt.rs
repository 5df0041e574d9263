//! Matrix products through cuBLASLt, with a plan cache: the first product of a shape builds its
//! matmul descriptor and the three matrix layouts, asks cuBLASLt's heuristic for the best
//! algorithm that fits the workspace and the operands' alignment, and keeps all of it; every
//! later product of that shape only launches (`cublasLtMatmul`). A training step runs the same
//! few dozen shapes on every layer and every step, so the plans are built once per run.
//!
//! `Blas::gemm` calls this in the column-major terms it derives (`ColumnMajor`);
//! the arithmetic is that of `cublasGemmEx` with `CUBLAS_COMPUTE_32F`: f32 or bf16 operands, f32
//! accumulation, f32 scaling and an f32 result updated in place (`C` and `D` are one buffer).
//! The algorithm is fixed per shape for the run, so the results are the same on every run on
//! the same GPU and library (cuBLASLt's split-K schemes reduce in a fixed order).
//!
//! A shape the heuristic has no algorithm for is remembered as such, and `Blas` runs it through
//! `cublasGemmEx` instead.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::spec::{BlasError, ColumnMajor};

/// The largest alignment cuBLASLt's heuristic asks about (its default assumption).
const MAX_ALIGNMENT: u32 = 256;

/// What a plan depends on: the element types of the operands and of `C`, the column-major
/// product (shapes, transposes, leading dimensions and batch strides), the batch count, and the
/// alignment in bytes of each operand's start, leading dimension and batch stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub bf16: bool,
    /// `C` (and `D`) in bf16 rather than f32.
    pub c_bf16: bool,
    pub cm: ColumnMajor,
    pub batch: usize,
    pub align_first: u32,
    pub align_second: u32,
    pub align_c: u32,
}

/// The largest power of two (at most `MAX_ALIGNMENT`) that divides the byte address `ptr` and
/// the byte distances `ld` and `stride` (elements of `elem` bytes; a zero distance constrains
/// nothing): what every matrix of a strided batch can promise about its rows' alignment.
pub fn alignment(ptr: u64, elem: usize, ld: usize, stride: usize) -> u32 {
    let mut bits = ptr | u64::from(MAX_ALIGNMENT);
    for d in [ld, stride] {
        if d != 0 {
            bits |= (d as u64).saturating_mul(elem as u64);
        }
    }
    1 << bits.trailing_zeros().min(MAX_ALIGNMENT.trailing_zeros())
}

/// A matrix's stored shape in cuBLASLt's column-major terms: `rows x cols` with leading
/// dimension `ld` (`op(X)` is `rows x cols` untransposed, `cols x rows` transposed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub stride: usize,
}

impl PlanKey {
    /// The stored shapes of the first operand, the second and `C`: `op(first)` is `m x k`,
    /// `op(second)` `k x n`, `C` `m x n`.
    pub fn stored(&self) -> [Stored; 3] {
        let cm = &self.cm;
        let (first_rows, first_cols) = match cm.trans_first {
            false => (cm.m, cm.k),
            true => (cm.k, cm.m),
        };
        let (second_rows, second_cols) = match cm.trans_second {
            false => (cm.k, cm.n),
            true => (cm.n, cm.k),
        };
        [
            Stored {
                rows: first_rows,
                cols: first_cols,
                ld: cm.ld_first,
                stride: cm.stride_first,
            },
            Stored {
                rows: second_rows,
                cols: second_cols,
                ld: cm.ld_second,
                stride: cm.stride_second,
            },
            Stored {
                rows: cm.m,
                cols: cm.n,
                ld: cm.ldc,
                stride: cm.stride_c,
            },
        ]
    }
}

fn cublas_error(what: impl Into<String>) -> impl FnOnce(lt::CublasError) -> BlasError {
    let what = what.into();
    move |e| BlasError::Cublas {
        what,
        status: format!("{:?}", e.0),
    }
}

/// A matrix layout descriptor, destroyed on drop.
struct MatrixLayout(sys::cublasLtMatrixLayout_t);

impl MatrixLayout {
    fn new(
        data_type: sys::cudaDataType,
        s: Stored,
        batch: usize,
    ) -> Result<MatrixLayout, BlasError> {
        let ld = i64::try_from(s.ld).map_err(|_| BlasError::Shape {
            what: "leading dimension",
            detail: format!("{} does not fit cuBLASLt's sizes", s.ld),
        })?;
        let layout = MatrixLayout(
            lt::create_matrix_layout(data_type, s.rows as u64, s.cols as u64, ld)
                .map_err(cublas_error("creating a cuBLASLt matrix layout"))?,
        );
        if batch > 1 {
            let count = i32::try_from(batch).map_err(|_| BlasError::Shape {
                what: "batch",
                detail: format!("{batch} does not fit cuBLASLt's 32-bit batch count"),
            })?;
            let stride = s.stride as i64;
            // SAFETY: the layout is live; each value is the type its attribute documents
            // (int32_t count, int64_t stride) and is read during the call.
            unsafe {
                lt::set_matrix_layout_attribute(
                    layout.0,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    (&count) as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
                .map_err(cublas_error("setting a layout's batch count"))?;
                lt::set_matrix_layout_attribute(
                    layout.0,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    (&stride) as *const i64 as *const c_void,
                    std::mem::size_of::<i64>(),
                )
                .map_err(cublas_error("setting a layout's batch stride"))?;
            }
        }
        Ok(layout)
    }
}

impl Drop for MatrixLayout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once, here.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A matmul descriptor, destroyed on drop.
struct MatmulDesc(sys::cublasLtMatmulDesc_t);

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once, here.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// A search preference, destroyed on drop.
struct Preference(sys::cublasLtMatmulPreference_t);

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once, here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// One shape's descriptors and the algorithm chosen for it.
struct Plan {
    desc: MatmulDesc,
    first: MatrixLayout,
    second: MatrixLayout,
    c: MatrixLayout,
    algo: sys::cublasLtMatmulAlgo_t,
    workspace: usize,
}

/// How many plans a run keeps: far more shapes than any model has (a DecLLM or RedLLM step runs
/// a few dozen); past it, new shapes go through `cublasGemmEx` rather than growing the cache.
const MAX_PLANS: usize = 4096;

/// A cuBLASLt handle on the backend's stream, its workspace and the plans built so far.
pub struct LtBlas {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    /// `None`: the heuristic found no algorithm for that shape.
    plans: Mutex<HashMap<PlanKey, Option<Arc<Plan>>>>,
}

// SAFETY: a cuBLASLt handle may be used from any thread (cuBLAS's thread-safety rules); the plans
// are behind a mutex and their descriptors are only read once built.
unsafe impl Send for LtBlas {}
unsafe impl Sync for LtBlas {}
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl LtBlas {
    /// Loads cuBLASLt (checking first that the library is there) and allocates the workspace
    /// NVIDIA recommends: 32 MiB on Hopper and later, 4 MiB before.
    pub fn new(stream: Arc<CudaStream>, compute_major: u32) -> Result<LtBlas, BlasError> {
        // SAFETY: only opens and closes the library by name (dlopen/dlclose).
        if !unsafe { sys::is_culib_present() } {
            return Err(BlasError::Missing);
        }
        let handle = lt::create_handle().map_err(cublas_error("creating a cuBLASLt handle"))?;
        let bytes = if compute_major >= 9 {
            32 << 20
        } else {
            4 << 20
        };
        // SAFETY: cuBLASLt's scratch space; nothing reads what was there before.
        let workspace = match unsafe { stream.alloc::<u8>(bytes) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above, destroyed once.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(BlasError::Driver {
                    what: "allocating the cuBLASLt workspace",
                    detail: e.to_string(),
                });
            }
        };
        Ok(LtBlas {
            handle,
            stream,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Plans in the cache (shapes with and without an algorithm).
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// The plan for `key`, built on first use; `None` when cuBLASLt has no algorithm for it.
    fn plan(&self, key: &PlanKey) -> Result<Option<Arc<Plan>>, BlasError> {
        let mut plans = self.plans.lock().map_err(|_| BlasError::Cublas {
            what: "reading the plan cache".into(),
            status: "a thread panicked while holding it".into(),
        })?;
        if let Some(plan) = plans.get(key) {
            return Ok(plan.clone());
        }
        let plan = self.build(key)?.map(Arc::new);
        if plans.len() < MAX_PLANS {
            plans.insert(*key, plan.clone());
        }
        Ok(plan)
    }

    fn build(&self, key: &PlanKey) -> Result<Option<Plan>, BlasError> {
        let data_type = match key.bf16 {
            true => sys::cudaDataType::CUDA_R_16BF,
            false => sys::cudaDataType::CUDA_R_32F,
        };
        let desc = MatmulDesc(
            lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )
            .map_err(cublas_error("creating a cuBLASLt matmul descriptor"))?,
        );
        let op = |t: bool| -> i32 {
            match t {
                true => cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T as i32,
                false => cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N as i32,
            }
        };
        let (trans_a, trans_b) = (op(key.cm.trans_first), op(key.cm.trans_second));
        // SAFETY: the descriptor is live; TRANSA/TRANSB are int32_t (cublasOperation_t) values
        // read during the call.
        unsafe {
            for (attr, value) in [
                (
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &trans_a,
                ),
                (
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                    &trans_b,
                ),
            ] {
                lt::set_matmul_desc_attribute(
                    desc.0,
                    attr,
                    value as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
                .map_err(cublas_error("setting a matmul's transposes"))?;
            }
        }
        let [first, second, c] = key.stored();
        let first = MatrixLayout::new(data_type, first, key.batch)?;
        let second = MatrixLayout::new(data_type, second, key.batch)?;
        let c_type = match key.c_bf16 {
            true => sys::cudaDataType::CUDA_R_16BF,
            false => sys::cudaDataType::CUDA_R_32F,
        };
        let c = MatrixLayout::new(c_type, c, key.batch)?;
        let pref = Preference(
            lt::create_matmul_pref().map_err(cublas_error("creating a cuBLASLt preference"))?,
        );
        let workspace = self.workspace.len() as u64;
        // SAFETY: the preference is live; MAX_WORKSPACE_BYTES is a uint64_t and the alignments
        // uint32_t values, each read during the call.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace) as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .map_err(cublas_error("setting the workspace limit"))?;
            for (attr, value) in [
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    &key.align_first,
                ),
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    &key.align_second,
                ),
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    &key.align_c,
                ),
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    &key.align_c,
                ),
            ] {
                lt::set_matmul_pref_attribute(
                    pref.0,
                    attr,
                    value as *const u32 as *const c_void,
                    std::mem::size_of::<u32>(),
                )
                .map_err(cublas_error("setting an alignment preference"))?;
            }
        }
        // SAFETY: every descriptor is live and describes the product `key` names.
        let found = unsafe {
            lt::get_matmul_algo_heuristic(self.handle, desc.0, first.0, second.0, c.0, c.0, pref.0)
        };
        match found {
            Ok(result) => Ok(Some(Plan {
                desc,
                first,
                second,
                c,
                algo: result.algo,
                workspace: result.workspaceSize,
            })),
            // No algorithm for this shape and alignment: `Blas` falls back to cublasGemmEx.
            Err(lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => Ok(None),
            Err(e) => Err(cublas_error("asking cuBLASLt for an algorithm")(e)),
        }
    }

    /// `C = alpha · op(first) · op(second) + beta · C` per `key` (column-major). `Ok(false)`:
    /// there is no plan for the shape and nothing ran.
    ///
    /// # Safety
    /// The pointers are live device buffers of this stream's context whose extents hold the
    /// product `key` describes (`blas::check_bounds`), of the element types `key.bf16` and
    /// `key.c_bf16` name, and at least as aligned as `key` says.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &self,
        key: &PlanKey,
        alpha: f32,
        first: u64,
        second: u64,
        beta: f32,
        c: u64,
    ) -> Result<bool, BlasError> {
        let Some(plan) = self.plan(key)? else {
            return Ok(false);
        };
        let (workspace, _guard) = self.workspace.device_ptr(&self.stream);
        // SAFETY: the caller's contract covers the three operands; the workspace is this
        // object's own buffer of `plan.workspace` bytes (or more) on the same stream, and the
        // descriptors and algorithm were built for exactly this `key`.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc.0,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                first as *const c_void,
                plan.first.0,
                second as *const c_void,
                plan.second.0,
                c as *const c_void,
                plan.c.0,
                c as *mut c_void,
                plan.c.0,
                &plan.algo,
                workspace as *mut c_void,
                plan.workspace,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(cublas_error(format!(
            "a cuBLASLt {} x {} x {} product (batch {})",
            key.cm.m, key.cm.n, key.cm.k, key.batch
        )))?;
        Ok(true)
    }
}

impl Drop for LtBlas {
    fn drop(&mut self) {
        if let Ok(plans) = self.plans.get_mut() {
            plans.clear();
        }
        // SAFETY: created in `new`, destroyed once, after every plan made with it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{column_major, GemmSpec, Layout};
    use super::*;

    #[test]
    fn alignment_is_the_largest_power_of_two_dividing_address_and_distances() {
        assert_eq!(alignment(0x7f00_0000_0000, 2, 768, 0), 256);
        assert_eq!(alignment(0x7f00_0000_0010, 2, 768, 0), 16);
        // bf16 rows of 36 elements: 72 bytes apart.
        assert_eq!(alignment(0x7f00_0000_0000, 2, 36, 0), 8);
        // A batch stride of 3 f32 values breaks the alignment of every other entry.
        assert_eq!(alignment(0x7f00_0000_0000, 4, 64, 3), 4);
        assert_eq!(alignment(0, 4, 0, 0), 256);
    }

    #[test]
    fn stored_shapes_follow_the_transposes() {
        // Row-major `x (6 x 4) · wᵀ`, `w` `[5, 4]`: column-major `first` = w (T), `second` = x.
        let (spec, a, b) = (
            GemmSpec::new(6, 5, 4, 1.0, 0.0),
            Layout::new(4),
            Layout::new(4).t(),
        );
        let key = PlanKey {
            bf16: true,
            c_bf16: false,
            cm: column_major(&spec, a, b),
            batch: 1,
            align_first: 256,
            align_second: 256,
            align_c: 256,
        };
        let [first, second, c] = key.stored();
        // op(first) = wᵀ... in column-major terms `m x k` = 5 x 4, stored transposed: 4 x 5.
        assert_eq!((first.rows, first.cols, first.ld), (4, 5, 4));
        // op(second) is `k x n` = 4 x 6, stored as is with ld 4.
        assert_eq!((second.rows, second.cols, second.ld), (4, 6, 4));
        assert_eq!((c.rows, c.cols, c.ld), (5, 6, 5));
    }
}
