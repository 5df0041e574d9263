//! RoPE tables: the cosines and sines both backends rotate by (the CUDA backend uploads them as
//! they are, so both rotate by the same f32 values).

/// Rotary position embedding tables with the half-split ("rotate_half") pairing: element `i` of
/// a head pairs with element `i + head_dim/2`, rotated by `pos · base^(-2i/head_dim)`.
#[derive(Debug, Clone)]
pub struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for positions `0..max_positions`; angles are computed in f64.
    pub fn new(head_dim: usize, base: f32, max_positions: usize) -> Rope {
        let half = head_dim / 2;
        let mut cos = vec![0.0; max_positions * half];
        let mut sin = vec![0.0; max_positions * half];
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| (base as f64).powf(-(i as f64) / half as f64))
            .collect();
        for pos in 0..max_positions {
            for (i, f) in inv_freq.iter().enumerate() {
                let angle = pos as f64 * f;
                cos[pos * half + i] = angle.cos() as f32;
                sin[pos * half + i] = angle.sin() as f32;
            }
        }
        Rope { half, cos, sin }
    }

    /// Pairs per head: `head_dim / 2`.
    pub fn half(&self) -> usize {
        self.half
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// The `positions x head_dim/2` cosine and sine tables (the CUDA kernel takes them as they
    /// are, so both backends rotate by the same f32 values).
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }
}
