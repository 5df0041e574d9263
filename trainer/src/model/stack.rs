//! Stack plans: the residual blocks of one stack (DecLLM's, RedLLM's encoder or decoder) in
//! order, with the index of each block's first parameter tensor and the stack's dropout sites.
//!
//! The parameter order of `crate::params` is walked by index: each attention block owns 5
//! consecutive tensors (norm, q, k, v, o), each FFN block 4 (norm, gate, up, down). Both
//! backends run a stack by walking its plan.

/// One residual block of a stack and the index of its first tensor.
#[derive(Debug, Clone, Copy)]
pub enum Block {
    SelfAttn(usize),
    CrossAttn(usize),
    Ffn(usize),
}

/// The blocks of one stack in order, where its final norm lives and its dropout site prefix.
pub struct StackPlan {
    pub blocks: Vec<Block>,
    pub final_norm: usize,
    pub id: u64,
}

impl StackPlan {
    /// DecLLM's layers, or RedLLM's encoder (`first` = index of the first layer tensor).
    pub fn plain(first: usize, layers: usize, id: u64) -> StackPlan {
        let blocks = (0..layers)
            .flat_map(|i| {
                [
                    Block::SelfAttn(first + 9 * i),
                    Block::Ffn(first + 9 * i + 5),
                ]
            })
            .collect();
        StackPlan {
            blocks,
            final_norm: first + 9 * layers,
            id,
        }
    }

    /// RedLLM's decoder.
    pub fn red_decoder(first: usize, layers: usize, id: u64) -> StackPlan {
        let blocks = (0..layers)
            .flat_map(|i| {
                let base = first + 14 * i;
                [
                    Block::SelfAttn(base),
                    Block::CrossAttn(base + 5),
                    Block::Ffn(base + 10),
                ]
            })
            .collect();
        StackPlan {
            blocks,
            final_norm: first + 14 * layers,
            id,
        }
    }

    /// The dropout site of block `block`: `(stack id << 32) | block index`, unique within a
    /// model.
    pub fn dropout_site(&self, block: usize) -> u64 {
        (self.id << 32) | block as u64
    }
}
