//! Attention rows: which keys the queries of each batch row see. Both backends mask attention by
//! these rows; the CUDA kernels read each row as six integers (`AttnRow::fields`).

/// Which keys the queries of one row see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnRow {
    /// First query token of the row in the query stream, and how many.
    pub q_start: usize,
    pub q_len: usize,
    /// First key token of the row in the key stream, and how many.
    pub k_start: usize,
    pub k_len: usize,
    /// Query `i` sees key `j` only if `j <= i` (same index space: self-attention).
    pub causal: bool,
    /// With `causal`: queries and keys both below this index see each other anyway (DecLLM +
    /// BiAttn over the input part). 0 = plain causal.
    pub bidirectional_prefix: usize,
}

/// Document ids per token of the query and key streams; a query sees only keys of its own
/// document. `None` = no reset at document boundaries.
pub type DocIds<'a> = Option<(&'a [u32], &'a [u32])>;

impl AttnRow {
    /// The row as six values in the order the CUDA kernels read them: q_start, q_len, k_start,
    /// k_len, causal (0 or 1), bidirectional_prefix.
    pub fn fields(&self) -> [usize; 6] {
        [
            self.q_start,
            self.q_len,
            self.k_start,
            self.k_len,
            self.causal as usize,
            self.bidirectional_prefix,
        ]
    }

    /// Whether query `i` may attend to key `j` (indices within the row).
    pub fn allowed(&self, i: usize, j: usize, docs: DocIds) -> bool {
        if self.causal && j > i {
            let both_in_prefix = i < self.bidirectional_prefix && j < self.bidirectional_prefix;
            if !both_in_prefix {
                return false;
            }
        }
        match docs {
            Some((q_doc, k_doc)) => q_doc[self.q_start + i] == k_doc[self.k_start + j],
            None => true,
        }
    }
}
