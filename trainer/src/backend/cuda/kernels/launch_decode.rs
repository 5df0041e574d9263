//! Launchers of the incremental-decoding kernels (`decode.cu`): attention of new tokens against
//! a key/value cache, and appending keys and values to it.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::grid::{grid, grid_1d, LaunchError, THREADS, WARPS_PER_BLOCK};
use super::launch::CudaKernels;

/// The largest head dim `decode_attention` takes (`DECODE_MAX_HEAD_DIM` in decode.cu).
pub const DECODE_MAX_HEAD_DIM: usize = 128;

/// Where the new tokens of a decoding step read from their caches.
pub struct DecodeRows<'a> {
    /// Per token: its row of the cache.
    pub token_row: &'a CudaSlice<u32>,
    /// Per token: how many leading slots of its row it sees.
    pub token_keys: &'a CudaSlice<u32>,
    /// Slots per row.
    pub capacity: usize,
}

impl CudaKernels {
    /// `out (tokens x heads·head_dim)` = per token and head, softmax(q · kᵀ · scale) · v over
    /// the first `token_keys[t]` slots of row `token_row[t]` of `k_cache` / `v_cache` (`rows x
    /// capacity x heads·head_dim`).
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention(
        &self,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
        rows: &DecodeRows,
        out: &mut CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), LaunchError> {
        if head_dim > DECODE_MAX_HEAD_DIM {
            return Err(LaunchError::Unsupported(format!(
                "decode_attention: head dim {head_dim} is above {DECODE_MAX_HEAD_DIM}"
            )));
        }
        let tokens = rows.token_row.len();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (tokens_i, heads_i, hd_i, cap_i) = (
            tokens as i32,
            heads as i32,
            head_dim as i32,
            rows.capacity as i32,
        );
        let mut b = self.builder("decode_attention")?;
        b.arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(rows.token_row)
            .arg(rows.token_keys);
        b.arg(out)
            .arg(&tokens_i)
            .arg(&heads_i)
            .arg(&hd_i)
            .arg(&cap_i)
            .arg(&scale);
        let blocks = ((tokens * heads) as u32).div_ceil(WARPS_PER_BLOCK);
        self.run("decode_attention", &mut b, grid(blocks, 1, THREADS))
    }

    /// Writes row t of `src` (`tokens x width`) into slot `token_slot[t]` of `cache`.
    pub fn decode_cache_append(
        &self,
        src: &CudaSlice<f32>,
        cache: &mut CudaSlice<f32>,
        token_slot: &CudaSlice<u32>,
        width: usize,
    ) -> Result<(), LaunchError> {
        let tokens = token_slot.len();
        let (tokens_i, width_i) = (tokens as i32, width as i32);
        let mut b = self.builder("decode_cache_append")?;
        b.arg(src)
            .arg(cache)
            .arg(token_slot)
            .arg(&tokens_i)
            .arg(&width_i);
        self.run("decode_cache_append", &mut b, grid_1d(tokens * width))
    }
}
