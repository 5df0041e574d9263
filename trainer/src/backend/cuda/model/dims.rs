//! What the residual blocks and attention share: the shapes (`Dims`), the RoPE tables on the
//! device, how an attention block attends (`DevAttn`) and a dropout site.

use super::device::{Buf, DevRows, DevStream};

/// Shapes and constants shared by all blocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub d: usize,
    pub f: usize,
    pub heads: usize,
    pub hd: usize,
    pub eps: f32,
}

impl Dims {
    pub fn da(&self) -> usize {
        self.heads * self.hd
    }
}

/// RoPE tables on the device (`crate::model::rope::Rope::tables`).
pub(super) struct DevRope {
    pub cos: Buf,
    pub sin: Buf,
}

/// How an attention block attends (the CPU reference's `AttnSpec`).
pub(super) struct DevAttn<'a> {
    pub queries: &'a DevStream,
    pub keys: &'a DevStream,
    pub rows: &'a DevRows,
    /// Reset at document boundaries (uses the streams' document ids).
    pub docs: bool,
    pub rope: &'a DevRope,
    pub out_norm: bool,
}

/// Dropout on one residual branch: probability, seed and site (the CPU reference's `Dropout`).
#[derive(Debug, Clone, Copy)]
pub(super) struct DropSite {
    pub p: f32,
    pub seed: u64,
    pub site: u64,
}
