//! Data parallelism on `CudaBackend`: the rank's NCCL communicator, and the sums over the ranks
//! a step needs. The gradients are summed in place, tensor by tensor in buckets of about
//! `BUCKET_BYTES` (one NCCL group each), on the backend's one stream after the backward pass:
//! the stream orders them after the last gradient write, so there is no overlap with the
//! backward pass. The step's loss sums go through a small f64 buffer the same way.

use std::sync::Arc;

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::backend::CudaBackend;
use crate::backend::BackendError;
use crate::dist::nccl::ID_BYTES;
use crate::dist::{Communicator, DistError};

/// The gradient bytes one NCCL group carries (NCCL fuses the all-reduces of a group).
pub const BUCKET_BYTES: usize = 64 << 20;

fn nccl_error(e: DistError) -> BackendError {
    BackendError::Device(e.to_string())
}

impl CudaBackend {
    pub(super) fn join_nccl(
        &mut self,
        id: &[u8; ID_BYTES],
        rank: usize,
        world_size: usize,
    ) -> Result<Arc<Communicator>, BackendError> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| BackendError::Device(format!("binding the CUDA context: {e}")))?;
        let comm = Arc::new(Communicator::init(id, rank, world_size).map_err(nccl_error)?);
        self.comm = Some(Arc::clone(&comm));
        Ok(comm)
    }

    pub(super) fn reduce_sums(&mut self, values: &mut [f64]) -> Result<(), BackendError> {
        let Some(comm) = self.comm.clone() else {
            return Ok(());
        };
        if values.is_empty() {
            return Ok(());
        }
        let mut buf = self
            .stream
            .clone_htod(values)
            .map_err(|e| BackendError::Device(format!("copying the step's sums: {e}")))?;
        {
            let (ptr, _sync) = buf.device_ptr_mut(&self.stream);
            // SAFETY: `buf` holds `values.len()` f64 and lives until the copy back below, which
            // runs after the all-reduce on the same stream.
            unsafe { comm.all_reduce_f64(ptr, values.len(), self.stream.cu_stream() as _) }
                .map_err(nccl_error)?;
        }
        let host = self
            .stream
            .clone_dtoh(&buf)
            .map_err(|e| BackendError::Device(format!("copying the step's sums back: {e}")))?;
        values.copy_from_slice(&host);
        Ok(())
    }

    pub(super) fn reduce_grads(&mut self) -> Result<(), BackendError> {
        let Some(comm) = self.comm.clone() else {
            return Ok(());
        };
        let stream = self.stream.clone();
        let raw_stream = stream.cu_stream() as *mut std::ffi::c_void;
        let mut bucket = 0usize;
        comm.group_start().map_err(nccl_error)?;
        for g in self.grads.iter_mut() {
            let len = g.len();
            let (ptr, _sync) = g.device_ptr(&stream);
            // SAFETY: the gradient buffer holds `len` f32 and stays allocated for the run; the
            // all-reduce runs on the stream every later use of it is ordered on.
            unsafe { comm.all_reduce_f32(ptr, len, raw_stream) }.map_err(nccl_error)?;
            bucket += len * 4;
            if bucket >= BUCKET_BYTES {
                comm.group_end().map_err(nccl_error)?;
                comm.group_start().map_err(nccl_error)?;
                bucket = 0;
            }
        }
        comm.group_end().map_err(nccl_error)?;
        Ok(())
    }
}
