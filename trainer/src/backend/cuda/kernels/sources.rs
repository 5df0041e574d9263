//! The kernel sources, embedded at build time, and the entry points each one defines.
//!
//! NVRTC has no CUDA headers here, so `common.cuh` (bf16 storage helpers, warp and block
//! reductions) is prepended to every source instead of `#include`d; a `#line` directive keeps
//! compiler messages pointing at the right file and line.

/// Helpers shared by every kernel source.
pub const COMMON: &str = include_str!("common.cuh");

/// One `.cu` file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File stem under `trainer/src/backend/cuda/kernels/`.
    pub name: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
}

impl KernelSource {
    /// What NVRTC compiles: the common helpers, then the file.
    pub fn full_source(&self) -> String {
        format!(
            "#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}.cu\"\n{}",
            self.name, self.source
        )
    }
}

macro_rules! kernel_source {
    ($name:literal, [$($entry:literal),* $(,)?]) => {
        KernelSource {
            name: $name,
            source: include_str!(concat!($name, ".cu")),
            entries: &[$($entry),*],
        }
    };
}

/// Every kernel source of the CUDA backend.
pub const KERNELS: &[KernelSource] = &[
    kernel_source!("convert", ["f32_to_bf16_kernel", "bf16_to_f32_kernel"]),
    kernel_source!(
        "norm",
        [
            "rmsnorm_forward",
            "rmsnorm_forward_bf16",
            "head_norm_rope_bf16_d32",
            "head_norm_rope_bf16_d64",
            "head_norm_rope_bf16_d128",
            "head_norm_rope_backward_bf16_d32",
            "head_norm_rope_backward_bf16_d64",
            "head_norm_rope_backward_bf16_d128",
            "rmsnorm_backward",
            "rmsnorm_gain_partial",
            "rmsnorm_gain_final"
        ]
    ),
    kernel_source!("rope", ["rope_apply"]),
    kernel_source!(
        "swiglu",
        [
            "swiglu_forward",
            "swiglu_forward_bf16",
            "swiglu_backward",
            "swiglu_backward_bf16"
        ]
    ),
    kernel_source!(
        "softmax",
        ["masked_softmax_forward", "masked_softmax_backward"]
    ),
    kernel_source!(
        "cross_entropy",
        [
            "cross_entropy_forward",
            "cross_entropy_backward",
            "cross_entropy_backward_bf16",
            "cross_entropy_fused",
            "cross_entropy_fused_bf16"
        ]
    ),
    kernel_source!("embedding", ["embedding_forward", "embedding_backward"]),
    kernel_source!("attention", ["attn_pack", "attn_unpack"]),
    kernel_source!(
        "flash",
        [
            "flash_forward_d32",
            "flash_backward_kv_d32",
            "flash_backward_q_d32",
            "flash_forward_d32_pipelined",
            "flash_backward_kv_d32_pipelined",
            "flash_backward_q_d32_pipelined",
            "flash_forward_d32_pipelined_w4",
            "flash_backward_kv_d32_pipelined_w4",
            "flash_backward_q_d32_pipelined_w4",
            "flash_forward_d64",
            "flash_backward_kv_d64",
            "flash_backward_q_d64",
            "flash_forward_d64_pipelined",
            "flash_backward_kv_d64_pipelined",
            "flash_backward_q_d64_pipelined",
            "flash_forward_d64_pipelined_w4",
            "flash_backward_kv_d64_pipelined_w4",
            "flash_backward_q_d64_pipelined_w4",
            "flash_forward_d128",
            "flash_backward_kv_d128",
            "flash_backward_q_d128",
            "flash_forward_d128_pipelined",
            "flash_backward_kv_d128_pipelined",
            "flash_backward_q_d128_pipelined",
            "flash_forward_d128_pipelined_w4",
            "flash_backward_kv_d128_pipelined_w4",
            "flash_backward_q_d128_pipelined_w4",
            "flash_forward_d32_wide",
            "flash_forward_d64_wide",
            "flash_forward_d128_wide",
            "flash_delta",
        ]
    ),
    kernel_source!("residual", ["add_inplace", "dropout_apply"]),
    kernel_source!("decode", ["decode_attention", "decode_cache_append"]),
    kernel_source!(
        "adafactor",
        [
            "mt_grad_sq_partial",
            "mt_sum_chunks",
            "mt_moments",
            "mt_factor_sums",
            "mt_y_sq_partial",
            "mt_apply",
        ]
    ),
];

/// The source that defines `entry`.
pub fn source_of(entry: &str) -> Option<&'static KernelSource> {
    KERNELS.iter().find(|k| k.entries.contains(&entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_named_in_its_source_and_unique() {
        // Whether the compiled PTX really has each entry is checked where NVRTC is at hand
        // (tests/cuda_kernels.rs); flash.cu defines its entries through a macro.
        let mut seen = std::collections::HashSet::new();
        for kernel in KERNELS {
            for entry in kernel.entries {
                assert!(seen.insert(*entry), "{entry} listed twice");
                let named = kernel.source.contains(&format!("__global__ void {entry}("))
                    || kernel
                        .source
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|word| word == *entry);
                assert!(named, "{}.cu does not define {entry}", kernel.name);
            }
        }
    }
}
