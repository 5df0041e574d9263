//! Adafactor's state on the device for resident training (`resident.rs`): the second moments
//! (full or factored), the momentum, the update count and the multi-tensor update's buffers.

use super::device::Buf;
use crate::backend::cuda::kernels::MultiTensorAdafactor;
use crate::optim::adafactor::AdafactorConfig;

/// The second moment of one parameter on the device.
pub(super) enum Moment {
    Full(Buf),
    Factored { v_row: Buf, v_col: Buf },
}

/// Adafactor's state on the device, in the parameters' order. In a data-parallel job a rank
/// keeps the state of the tensors it owns only (`owners`; `None` for the others).
pub(super) struct DeviceOptimizer {
    pub config: AdafactorConfig,
    /// Updates applied so far.
    pub step: u64,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub moments: Vec<Option<Moment>>,
    pub momentum: Vec<Option<Buf>>,
    /// The rank that owns each tensor's state and update (all 0 without a job).
    pub owners: Vec<usize>,
    /// The update's work table and sums, over the tensors this rank owns.
    pub update: MultiTensorAdafactor,
}
