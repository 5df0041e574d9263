//! Data parallelism on `CudaBackend`: the rank's NCCL communicator, and the sums over the ranks
//! a step needs. The gradients are summed in place, tensor by tensor in buckets of about
//! `BUCKET_BYTES` (one NCCL group each), on the backend's one stream after the backward pass:
//! the stream orders them after the last gradient write, so there is no overlap with the
//! backward pass. The step's loss sums go through a small f64 buffer the same way.
//!
//! The optimizer state is sharded (ZeRO-1): each tensor has one owner rank (`owners`), which
//! alone keeps its Adafactor state and computes its update; the owners then broadcast the new
//! parameters (`broadcast_params`). A checkpoint gathers the state to every rank
//! (`gather_f32`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::backend::CudaBackend;
use crate::backend::BackendError;
use crate::dist::nccl::ID_BYTES;
use crate::dist::{Communicator, DistError};

/// The gradient bytes one NCCL group carries (NCCL fuses the all-reduces of a group).
pub const BUCKET_BYTES: usize = 64 << 20;

/// The owner rank of each tensor of `sizes` (values) in a job of `world_size`: in tensor order,
/// each goes to the rank that owns the fewest values so far (the lowest such rank).
pub fn owners(sizes: &[usize], world_size: usize) -> Vec<usize> {
    let mut load = vec![0usize; world_size.max(1)];
    sizes
        .iter()
        .map(|&n| {
            let rank = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            load[rank] += n;
            rank
        })
        .collect()
}

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

    /// This rank and the world size (0 of 1 without a job).
    pub(super) fn place(&self) -> (usize, usize) {
        self.comm
            .as_ref()
            .map_or((0, 1), |c| (c.rank, c.world_size))
    }

    /// Sends every parameter from its owner to the other ranks (one group).
    pub(super) fn broadcast_params(&mut self, owners: &[usize]) -> Result<(), BackendError> {
        let Some(comm) = self.comm.clone() else {
            return Ok(());
        };
        let stream = self.stream.clone();
        let raw_stream = stream.cu_stream() as *mut std::ffi::c_void;
        comm.group_start().map_err(nccl_error)?;
        for (p, &owner) in self.params.iter_mut().zip(owners) {
            let len = p.len();
            let (ptr, _sync) = p.device_ptr(&stream);
            // SAFETY: the parameter buffer holds `len` f32 and stays allocated for the run.
            unsafe { comm.broadcast_f32(ptr, len, owner, raw_stream) }.map_err(nccl_error)?;
        }
        comm.group_end().map_err(nccl_error)
    }

    /// The `len` values of a buffer `owner` holds (`held` on that rank), copied to this rank's
    /// host: every rank calls it for the same buffers in the same order.
    pub(super) fn gather_f32(
        &self,
        held: Option<&CudaSlice<f32>>,
        len: usize,
        owner: usize,
    ) -> Result<Vec<f32>, BackendError> {
        let copy = |e: cudarc::driver::DriverError| {
            BackendError::Device(format!("gathering optimizer state: {e}"))
        };
        let Some(comm) = self.comm.clone() else {
            let held = held.ok_or_else(|| {
                BackendError::BadModel("internal: optimizer state missing".into())
            })?;
            return self.stream.clone_dtoh(held).map_err(copy);
        };
        let buf: &CudaSlice<f32> = match held {
            Some(b) => b,
            None => {
                let mut temp = self.stream.alloc_zeros::<f32>(len.max(1)).map_err(copy)?;
                {
                    let (ptr, _sync) = temp.device_ptr_mut(&self.stream);
                    // SAFETY: `temp` holds at least `len` f32 until the copy back below.
                    unsafe { comm.broadcast_f32(ptr, len, owner, self.stream.cu_stream() as _) }
                        .map_err(nccl_error)?;
                }
                let mut host = self.stream.clone_dtoh(&temp).map_err(copy)?;
                host.truncate(len);
                return Ok(host);
            }
        };
        {
            let (ptr, _sync) = buf.device_ptr(&self.stream);
            // SAFETY: the owner's buffer holds `len` f32; the broadcast only reads it on the
            // root.
            unsafe { comm.broadcast_f32(ptr, len, owner, self.stream.cu_stream() as _) }
                .map_err(nccl_error)?;
        }
        self.stream.clone_dtoh(buf).map_err(copy)
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

#[cfg(test)]
mod tests {
    use super::owners;

    #[test]
    fn each_tensor_goes_to_the_rank_holding_the_fewest_values() {
        assert_eq!(owners(&[10, 3, 3, 3, 1, 4], 2), [0, 1, 1, 1, 1, 0]);
        assert_eq!(owners(&[5, 5, 5, 5], 3), [0, 1, 2, 0]);
        assert_eq!(owners(&[7, 1, 2], 1), [0, 0, 0]);
    }
}
