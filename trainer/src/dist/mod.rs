//! Data-parallel training over NCCL, one process per GPU.
//!
//! - `launch`: the job's shape from torchrun's or Slurm's variables (`Launch`);
//! - `nccl`: NCCL loaded at run time (`libnccl.so.2`), the few calls a step makes;
//! - `link`: the TCP rendezvous that carries rank 0's NCCL unique id, and the liveness watch
//!   that turns a dead rank into an error naming it.
//!
//! The run loop (`crate::run`) deals each global batch's micro-batches out to the ranks in
//! order (rank r takes `accum / N` consecutive ones), so the N ranks together train on exactly
//! the single-process batch with the same dropout seeds; the device backend sums the gradients
//! and the step's loss sums over the ranks (`ResidentTraining::all_reduce_gradients` and
//! `all_reduce_sums`). The Adafactor state is sharded by tensor (ZeRO-1): each tensor's owner
//! rank alone keeps its state and computes its update, then broadcasts the new values. Rank 0
//! alone writes metrics and checkpoints (the state gathered from the owners), which are those of
//! a single-process run, so any world size resumes them.

pub mod launch;
pub mod link;
pub mod nccl;

pub use launch::{Launch, Rendezvous};
pub use link::{HangLimits, Link};
pub use nccl::Communicator;

/// Errors of a data-parallel launch.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{what}")]
    Launch { what: String },
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    #[error("NCCL: {0}")]
    Nccl(String),
}

/// A rank's place in the job during a run: what the run loop needs to deal batches and to write
/// only on rank 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallel {
    pub rank: usize,
    pub world_size: usize,
}

impl Parallel {
    pub const SINGLE: Parallel = Parallel {
        rank: 0,
        world_size: 1,
    };

    /// Whether this rank writes the run's files.
    pub fn writes(&self) -> bool {
        self.rank == 0
    }

    /// The micro-batches `[start, end)` of a step's `accum` that this rank trains on; `accum`
    /// must be a multiple of the world size.
    pub fn share(&self, accum: u64) -> (u64, u64) {
        let per = accum / self.world_size as u64;
        (self.rank as u64 * per, (self.rank as u64 + 1) * per)
    }
}
