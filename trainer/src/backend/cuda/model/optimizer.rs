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

/// Adafactor's state on the device, in the parameters' order.
pub(super) struct DeviceOptimizer {
    pub config: AdafactorConfig,
    /// Updates applied so far.
    pub step: u64,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub moments: Vec<Moment>,
    pub momentum: Vec<Option<Buf>>,
    /// The update's work table and sums.
    pub update: MultiTensorAdafactor,
}
