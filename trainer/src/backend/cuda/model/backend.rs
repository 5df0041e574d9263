//! `CudaBackend`: the `Backend` trait on one NVIDIA GPU.
//!
//! Parameters and gradients live in device buffers that survive between calls (allocated once
//! per model shape). Through the `Backend` trait a call uploads the parameters, zeroes the
//! device gradients, runs the model (every micro-batch of a step, with `forward_backward_many`)
//! and adds the gradients into the caller's host buffers. The resident methods (`upload_params`,
//! `zero_grads`, `forward_backward_resident`) skip those copies; `resident.rs` builds on them the
//! `ResidentTraining` that `redpack train` uses, with the Adafactor state on the device too.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use super::device::{Buf, Dev, Words};
use super::dims::DevRope;
use super::inputs::BatchInputs;
use super::optimizer::DeviceOptimizer;
use super::run::run_model;
use super::staging::{CudaStager, StagedInputs};
use crate::backend::cuda::blas::{Blas, BlasEngine};
use crate::backend::cuda::kernels::CudaKernels;
use crate::backend::cuda::options::CudaOptions;
use crate::backend::cuda::runtime::nvrtc::KernelCache;
use crate::backend::cuda::runtime::probe::{self, CudaAvailability, CudaDeviceInfo};
use crate::backend::cuda::runtime::profile::Profiler;
use crate::backend::{Backend, BackendError, Precision, Staged};
use crate::batch::{Batch, LossStats, StepOptions};
use crate::config::ModelConfig;
use crate::model::rope::Rope;
use crate::model::validate::{validate_batch, validate_options};
use crate::params::ParamStore;

/// A GPU with every kernel loaded, a cuBLAS handle, and the resident parameter and gradient
/// buffers of the last model it ran.
pub struct CudaBackend {
    info: CudaDeviceInfo,
    context: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) kernels: CudaKernels,
    blas: Blas,
    precision: Precision,
    pub(super) params: Vec<Buf>,
    pub(super) grads: Vec<Buf>,
    /// The RoPE tables on the device, built once per model and grown with the sequence length.
    rope: Option<(RopeKey, DevRope)>,
    /// Adafactor's state, once resident training is loaded (`resident.rs`).
    pub(super) optimizer: Option<DeviceOptimizer>,
    options: CudaOptions,
    profiler: Profiler,
    /// The NCCL communicator of a data-parallel job (`collective.rs`).
    pub(super) comm: Option<Arc<crate::dist::Communicator>>,
}

/// What RoPE tables depend on: the head dimension, the base (its bits) and how many positions
/// they cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RopeKey {
    head_dim: usize,
    base: u32,
    positions: usize,
}

fn no_rope_tables() -> BackendError {
    BackendError::Device("internal: no RoPE tables after building them".into())
}

fn device_error(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> BackendError + '_ {
    move |e| BackendError::Device(format!("{what}: {e}"))
}

impl CudaBackend {
    /// The first GPU, with kernels from the default PTX cache (or a temporary folder when no
    /// cache folder can be named).
    pub fn open(precision: Precision, options: CudaOptions) -> Result<CudaBackend, BackendError> {
        let info = match probe::detect() {
            CudaAvailability::Device(info) => info,
            CudaAvailability::NoDriver => {
                return Err(BackendError::Device(
                    probe::ProbeError::NoDriver.to_string(),
                ))
            }
            CudaAvailability::NoDevice { reason } => {
                return Err(BackendError::Device(
                    probe::ProbeError::NoDevice { reason }.to_string(),
                ))
            }
        };
        let dir = KernelCache::default_dir()
            .unwrap_or_else(|| std::env::temp_dir().join("redpack-kernels"));
        CudaBackend::new(&info, precision, &KernelCache::new(dir), options)
    }

    /// A backend on the device `info` describes (from `probe::detect`), with the switches
    /// `options` (the profiler is on when `options.profile` says so).
    pub fn new(
        info: &CudaDeviceInfo,
        precision: Precision,
        cache: &KernelCache,
        options: CudaOptions,
    ) -> Result<CudaBackend, BackendError> {
        let what = format!("cannot open a CUDA context on device {}", info.ordinal);
        let context = CudaContext::new(info.ordinal).map_err(device_error(&what))?;
        // SAFETY: the backend issues all its work on this one stream, so the per-buffer events
        // cudarc records for cross-stream synchronization are never needed (each allocation
        // would otherwise create two).
        unsafe { context.disable_event_tracking() };
        let stream = context.default_stream();
        let profiler = Profiler::new(options.profile);
        let kernels =
            CudaKernels::load(stream.clone(), cache, &info.arch())?.with_profiler(profiler.clone());
        let blas = Blas::with_engine(stream.clone(), options.blas)?.with_profiler(profiler.clone());
        Ok(CudaBackend {
            info: info.clone(),
            context,
            stream,
            kernels,
            blas,
            precision,
            params: Vec::new(),
            grads: Vec::new(),
            rope: None,
            optimizer: None,
            options,
            profiler,
            comm: None,
        })
    }

    /// The switches this backend runs with.
    pub fn options(&self) -> &CudaOptions {
        &self.options
    }

    /// The time table of this backend's launches and products (on when `options.profile`
    /// says so; `set_enabled` turns it on and off).
    pub fn profiler(&self) -> &Profiler {
        &self.profiler
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn device(&self) -> &CudaDeviceInfo {
        &self.info
    }

    /// The library call that runs the products (`REDPACK_CUDA_BLAS`).
    pub fn blas_engine(&self) -> BlasEngine {
        self.blas.engine()
    }

    /// The fused-attention builds `REDPACK_CUDA_FLASH=auto` picked, with their times, one line
    /// per kernel and shape (empty without it).
    pub fn flash_tuning(&self) -> Vec<String> {
        self.kernels.flash_tuning()
    }

    /// Product shapes cuBLASLt has built plans for (0 with `cublasGemmEx`).
    pub fn blas_plans(&self) -> usize {
        self.blas.cached_plans()
    }

    pub(super) fn dev(&self) -> Dev<'_> {
        Dev {
            stream: &self.stream,
            kernels: &self.kernels,
            blas: &self.blas,
            precision: self.precision,
            options: &self.options,
        }
    }

    /// Copies `params` into the resident buffers (allocating them when the shapes changed) and
    /// makes sure gradient buffers of the same shapes exist.
    pub fn upload_params(&mut self, params: &ParamStore) -> Result<(), BackendError> {
        let same_shapes = self.params.len() == params.len()
            && self
                .params
                .iter()
                .zip(&params.tensors)
                .all(|(b, t)| b.len() == t.len());
        if !same_shapes {
            self.params.clear();
            self.grads.clear();
            for t in &params.tensors {
                let dev = self.dev();
                let p = dev.upload(&t.data)?;
                let g = dev.zeros(t.len())?;
                self.params.push(p);
                self.grads.push(g);
            }
            return Ok(());
        }
        for (buf, t) in self.params.iter_mut().zip(&params.tensors) {
            self.stream
                .memcpy_htod(&t.data, buf)
                .map_err(device_error("uploading parameters"))?;
        }
        Ok(())
    }

    /// Sets every resident gradient to zero.
    pub fn zero_grads(&mut self) -> Result<(), BackendError> {
        for g in &mut self.grads {
            self.stream
                .memset_zeros(g)
                .map_err(device_error("zeroing gradients"))?;
        }
        Ok(())
    }

    /// Checks the model, batch and options as the CPU backend does, and that the resident
    /// parameters have the model's shapes.
    fn check(
        &self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<(), BackendError> {
        // cuBLAS is called directly, so the context must be current on this thread (the
        // backend may have been created on another one).
        self.context
            .bind_to_thread()
            .map_err(device_error("binding the CUDA context"))?;
        config
            .validate()
            .map_err(|e| BackendError::BadModel(e.to_string()))?;
        let shapes = crate::params::param_shapes(config);
        let matches = shapes.len() == self.params.len()
            && shapes
                .iter()
                .zip(&self.params)
                .all(|((_, shape), b)| shape.iter().product::<usize>() == b.len());
        if !matches {
            return Err(BackendError::BadModel(
                "the parameters on the device do not match the config: call upload_params first"
                    .into(),
            ));
        }
        validate_batch(config, batch)?;
        Ok(validate_options(config, options)?)
    }

    /// Forward and backward with the resident parameters, adding into the resident gradients.
    pub fn forward_backward_resident(
        &mut self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        self.forward_backward_staged(config, batch, options, None)
    }

    /// `forward_backward_resident` over a batch that `ResidentTraining::stager`'s stager
    /// prepared (what `redpack train` does: its loader thread stages every batch).
    pub fn forward_backward_prepared(
        &mut self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
        staged: &Staged,
    ) -> Result<LossStats, BackendError> {
        let staged = staged.downcast_ref::<StagedInputs>();
        self.forward_backward_staged(config, batch, options, staged)
    }

    /// `forward_backward_resident` with the batch's inputs as the stager left them (built and
    /// in pinned memory), or built here when there are none or they do not fit the step.
    pub(super) fn forward_backward_staged(
        &mut self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
        staged: Option<&StagedInputs>,
    ) -> Result<LossStats, BackendError> {
        self.check(config, batch, options)?;
        let built;
        let (inputs, words) = match staged.and_then(|s| s.for_step(options)) {
            Some(ready) => ready,
            None => {
                built = BatchInputs::build(config, batch, options.into())?;
                (&built, Words::Host(&built.words))
            }
        };
        self.rope_tables(config, inputs.positions)?;
        let Some((_, rope)) = &self.rope else {
            return Err(no_rope_tables());
        };
        let mut grads = std::mem::take(&mut self.grads);
        let result = run_model(
            &self.dev(),
            config,
            &self.params,
            inputs,
            words,
            rope,
            options,
            Some(&mut grads),
        );
        self.grads = grads;
        if result.is_err() {
            // The staged words may still be on their way to the device; the caller drops the
            // staged batch (and its pinned buffer goes back to the pool) once this returns.
            let _ = self.stream.synchronize();
        }
        let stats = result?;
        self.check_async_errors()?;
        Ok(stats)
    }

    /// RoPE tables for `config` covering `positions` positions (the CPU's tables, computed in
    /// f64): uploaded on first use, and again only when a longer sequence or another head size
    /// comes (a table for more positions serves fewer: row p is the same).
    fn rope_tables(&mut self, config: &ModelConfig, positions: usize) -> Result<(), BackendError> {
        let fits = |k: &RopeKey| {
            k.head_dim == config.head_dim
                && k.base == config.rope_base.to_bits()
                && k.positions >= positions
        };
        if self.rope.as_ref().is_some_and(|(k, _)| fits(k)) {
            return Ok(());
        }
        let key = RopeKey {
            head_dim: config.head_dim,
            base: config.rope_base.to_bits(),
            positions: positions.max(1),
        };
        let host = Rope::new(key.head_dim, config.rope_base, key.positions);
        let (cos, sin) = host.tables();
        let dev = self.dev();
        let tables = DevRope {
            cos: dev.upload(cos)?,
            sin: dev.upload(sin)?,
        };
        self.rope = Some((key, tables));
        Ok(())
    }

    /// A stager for `redpack train`'s loader thread (`staging.rs`).
    pub(super) fn make_stager(&self, config: &ModelConfig, options: &StepOptions) -> CudaStager {
        CudaStager::new(self.context.clone(), config, options)
    }

    /// Errors cudarc could only record (frees in `Drop`) surface here.
    pub(super) fn check_async_errors(&self) -> Result<(), BackendError> {
        self.context
            .check_err()
            .map_err(device_error("an earlier asynchronous operation failed"))
    }

    /// Forward only with the resident parameters; dropout is off.
    pub fn forward_loss_resident(
        &mut self,
        config: &ModelConfig,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        let options = StepOptions {
            dropout: 0.0,
            ..*options
        };
        self.check(config, batch, &options)?;
        let inputs = BatchInputs::build(config, batch, (&options).into())?;
        self.rope_tables(config, inputs.positions)?;
        let Some((_, rope)) = &self.rope else {
            return Err(no_rope_tables());
        };
        run_model(
            &self.dev(),
            config,
            &self.params,
            &inputs,
            Words::Host(&inputs.words),
            rope,
            &options,
            None,
        )
    }

    /// Adds the resident gradients into `grads` (same shapes, checkpoint order).
    pub fn add_grads_to(&self, grads: &mut ParamStore) -> Result<(), BackendError> {
        if grads.len() != self.grads.len() {
            return Err(BackendError::BadModel(format!(
                "{} gradient buffers on the host, {} on the device",
                grads.len(),
                self.grads.len()
            )));
        }
        for (t, g) in grads.tensors.iter_mut().zip(&self.grads) {
            if t.len() != g.len() {
                return Err(BackendError::BadModel(format!(
                    "a gradient buffer has {} values on the host, {} on the device",
                    t.len(),
                    g.len()
                )));
            }
            let host = self.dev().download(g)?;
            for (a, b) in t.data.iter_mut().zip(host) {
                *a += b;
            }
        }
        Ok(())
    }

    /// Waits for every queued operation (for timing).
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.stream
            .synchronize()
            .map_err(device_error("synchronizing"))
    }

    /// Keeps freed device memory in the allocator's pool instead of returning it at every
    /// synchronization (faster steady state), and resets the pool's high-water mark.
    pub fn keep_pool_and_reset_peak(&self) -> Result<(), BackendError> {
        use cudarc::driver::sys;
        let pool = self.default_pool()?;
        let mut threshold: u64 = u64::MAX;
        let mut zero: u64 = 0;
        // SAFETY: `pool` is the device's default pool; both attributes take a u64.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold) as *mut u64 as *mut std::ffi::c_void,
            )
            .result()
            .map_err(device_error("setting the pool's release threshold"))?;
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero) as *mut u64 as *mut std::ffi::c_void,
            )
            .result()
            .map_err(device_error("resetting the pool's high-water mark"))?;
        }
        Ok(())
    }

    /// The most bytes the stream-ordered allocator had in use at once since the last reset.
    pub fn peak_pool_bytes(&self) -> Result<u64, BackendError> {
        use cudarc::driver::sys;
        let pool = self.default_pool()?;
        let mut value: u64 = 0;
        // SAFETY: as in `keep_pool_and_reset_peak`.
        unsafe {
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut value) as *mut u64 as *mut std::ffi::c_void,
            )
            .result()
            .map_err(device_error("reading the pool's high-water mark"))?;
        }
        Ok(value)
    }

    fn default_pool(&self) -> Result<cudarc::driver::sys::CUmemoryPool, BackendError> {
        use cudarc::driver::sys;
        self.context
            .bind_to_thread()
            .map_err(device_error("binding the context"))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: the device handle comes from the live context; `pool` is valid for writes.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.context.cu_device())
                .result()
                .map_err(device_error("finding the default memory pool"))?;
        }
        Ok(pool)
    }
}

impl Backend for CudaBackend {
    fn free_device_memory(&self) -> Option<u64> {
        self.context
            .bind_to_thread()
            .ok()
            .and_then(|()| self.context.mem_get_info().ok())
            .map(|(free, _)| free as u64)
    }

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, {})",
            self.info.ordinal,
            self.info.name,
            self.precision.name()
        )
    }

    fn forward_backward(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
        grads: &mut ParamStore,
    ) -> Result<LossStats, BackendError> {
        let mut stats = self.forward_backward_many(config, params, &[(batch, *options)], grads)?;
        stats
            .pop()
            .ok_or_else(|| BackendError::Device("internal: no stats for the batch".into()))
    }

    /// Uploads the parameters once, runs every micro-batch into the resident gradients, and
    /// adds them into `grads` once.
    fn forward_backward_many(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        micro_batches: &[(&Batch, StepOptions)],
        grads: &mut ParamStore,
    ) -> Result<Vec<LossStats>, BackendError> {
        params
            .check_matches(config)
            .map_err(|e| BackendError::BadModel(format!("parameters: {e}")))?;
        grads
            .check_matches(config)
            .map_err(|e| BackendError::BadModel(format!("gradient buffers: {e}")))?;
        self.upload_params(params)?;
        self.zero_grads()?;
        let mut stats = Vec::with_capacity(micro_batches.len());
        for (batch, options) in micro_batches {
            stats.push(self.forward_backward_resident(config, batch, options)?);
        }
        self.add_grads_to(grads)?;
        Ok(stats)
    }

    fn forward_loss(
        &mut self,
        config: &ModelConfig,
        params: &ParamStore,
        batch: &Batch,
        options: &StepOptions,
    ) -> Result<LossStats, BackendError> {
        params
            .check_matches(config)
            .map_err(|e| BackendError::BadModel(format!("parameters: {e}")))?;
        self.upload_params(params)?;
        self.forward_loss_resident(config, batch, options)
    }

    fn resident(&mut self) -> Option<&mut dyn crate::backend::ResidentTraining> {
        Some(self)
    }
}
