//! The CUDA backend's switches, resolved once (`CudaOptions::from_env` in `open_backend`) and
//! passed down to the code that acts on them.

use super::blas::BlasEngine;
use super::kernels::{FlashVariant, FLASH_HEAD_DIMS};
use crate::backend::Precision;

/// How a training step computes the cross-entropy of a logits chunk. Both give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrossEntropyKernels {
    /// The forward and the gradient kernels, each reading the logits.
    #[default]
    Split,
    /// One kernel per chunk (`cross_entropy_fused`) that reads the logits once and holds a
    /// token's logits in one block's registers (vocabularies up to `CE_FUSED_VOCAB`).
    Fused,
}

impl CrossEntropyKernels {
    /// Its name in `REDPACK_CUDA_CE`.
    pub fn name(self) -> &'static str {
        match self {
            CrossEntropyKernels::Split => "split",
            CrossEntropyKernels::Fused => "fused",
        }
    }
}

/// How attention runs in the bf16 mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernels {
    /// The fused kernels (`flash.cu`) for the head dimensions they are built for.
    #[default]
    Fused,
    /// Padded batched products and the masked softmax kernel (the f32 mode's path).
    Batched,
}

impl AttentionKernels {
    /// Its name in `REDPACK_CUDA_ATTENTION`.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernels::Fused => "fused",
            AttentionKernels::Batched => "batched",
        }
    }
}

/// The CUDA backend's switches. `CudaOptions::default()` is every default; `from_env` reads
/// them from these environment variables (unset or empty: the default):
///
/// - `REDPACK_CUDA_FLASH=wide|basic|pipelined|pipelined-w4|auto`: the build of the fused
///   attention's kernels (`flash`, default `wide`); `auto` times every build per kernel and
///   shape on the device and runs the fastest (`flash_auto`). Every build gives the same bits.
/// - `REDPACK_CUDA_ATTENTION=fused|batched`: attention in the bf16 mode through the fused
///   kernels (the default) or through batched products and the softmax kernel (`attention`).
/// - `REDPACK_CUDA_CE=split|fused`: a training step's cross-entropy as two kernels (the
///   default) or one fused kernel per logits chunk (`cross_entropy`); the same bits.
/// - `REDPACK_CUDA_BLAS=gemmex|lt`: the library call that runs the matrix products,
///   `cublasGemmEx` (the default) or cuBLASLt with a plan per shape (`blas`).
/// - `REDPACK_CUDA_PROFILE=0|1`: time every kernel launch and product, by name and shape
///   (`profile`, off by default; each launch then synchronizes the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaOptions {
    /// The fused attention's build, unless `flash_auto`.
    pub flash: FlashVariant,
    /// Time the builds per kernel and shape and run the fastest.
    pub flash_auto: bool,
    /// Fused or batched attention in the bf16 mode.
    pub attention: AttentionKernels,
    /// Split or fused cross-entropy kernels in a training step.
    pub cross_entropy: CrossEntropyKernels,
    /// The library call that runs the products.
    pub blas: BlasEngine,
    /// Time every launch and product (`CudaBackend::profiler`).
    pub profile: bool,
}

/// The help text that lists the environment variables (`redpack train --help`).
pub const ENVIRONMENT: &str = "\
CUDA backend environment (read once when the backend opens; unset or empty: the default):
  REDPACK_CUDA_FLASH=wide|basic|pipelined|pipelined-w4|auto
      build of the fused attention kernels (default wide); auto times each build per kernel
      and shape and runs the fastest (all builds give the same bits)
  REDPACK_CUDA_ATTENTION=fused|batched
      bf16 attention through the fused kernels (default) or batched products and a softmax
  REDPACK_CUDA_CE=split|fused
      cross-entropy as two kernels (default) or one fused kernel per logits chunk
  REDPACK_CUDA_BLAS=gemmex|lt
      matrix products through cublasGemmEx (default) or cuBLASLt with a plan per shape
  REDPACK_CUDA_PROFILE=0|1
      time every kernel launch and product (default 0)";

/// An environment variable with a value `CudaOptions` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?} is not one of {}", accepted.join(", "))]
pub struct CudaOptionsError {
    pub variable: &'static str,
    pub value: String,
    pub accepted: Vec<&'static str>,
}

/// `REDPACK_CUDA_FLASH=auto`.
const AUTO: &str = "auto";

/// The value `lookup` gives for `variable`, parsed by `parse` among `accepted`; `None` when it
/// is unset or empty.
fn parse<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    accepted: &[&'static str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, CudaOptionsError> {
    match lookup(variable) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => parse(&value).map(Some).ok_or_else(|| CudaOptionsError {
            variable,
            value,
            accepted: accepted.to_vec(),
        }),
    }
}

impl CudaOptions {
    /// The options the environment variables ask for (see the type's docs).
    pub fn from_env() -> Result<CudaOptions, CudaOptionsError> {
        CudaOptions::from_lookup(|name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// The options given each variable's value by `lookup` (`None`: unset).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<CudaOptions, CudaOptionsError> {
        let mut options = CudaOptions::default();
        let mut flash_names: Vec<&'static str> =
            FlashVariant::ALL.iter().map(|v| v.name()).collect();
        flash_names.push(AUTO);
        if let Some(flash) = parse(&lookup, "REDPACK_CUDA_FLASH", &flash_names, |v| match v {
            AUTO => Some(None),
            name => FlashVariant::from_name(name).map(Some),
        })? {
            match flash {
                Some(variant) => options.flash = variant,
                None => options.flash_auto = true,
            }
        }
        let attention = [AttentionKernels::Fused, AttentionKernels::Batched];
        let names = attention.map(AttentionKernels::name);
        if let Some(a) = parse(&lookup, "REDPACK_CUDA_ATTENTION", &names, |v| {
            attention.into_iter().find(|a| a.name() == v)
        })? {
            options.attention = a;
        }
        let ce = [CrossEntropyKernels::Split, CrossEntropyKernels::Fused];
        let names = ce.map(CrossEntropyKernels::name);
        if let Some(c) = parse(&lookup, "REDPACK_CUDA_CE", &names, |v| {
            ce.into_iter().find(|c| c.name() == v)
        })? {
            options.cross_entropy = c;
        }
        let engines = [BlasEngine::GemmEx, BlasEngine::Lt];
        let names = engines.map(BlasEngine::name);
        if let Some(e) = parse(&lookup, "REDPACK_CUDA_BLAS", &names, |v| {
            engines.into_iter().find(|e| e.name() == v)
        })? {
            options.blas = e;
        }
        if let Some(p) = parse(&lookup, "REDPACK_CUDA_PROFILE", &["0", "1"], |v| match v {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        })? {
            options.profile = p;
        }
        Ok(options)
    }

    /// Whether attention runs fused: in the bf16 mode, for the head dimensions there are fused
    /// kernels for, unless `attention` asks for the batched products.
    pub fn fused_attention(&self, precision: Precision, head_dim: usize) -> bool {
        precision == Precision::Bf16
            && FLASH_HEAD_DIMS.contains(&head_dim)
            && self.attention == AttentionKernels::Fused
    }

    /// The fused attention's build as the benchmark reports it: `auto` or the build's name.
    pub fn flash_name(&self) -> &'static str {
        match self.flash_auto {
            true => AUTO,
            false => self.flash.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(vars: &[(&str, &str)]) -> Result<CudaOptions, CudaOptionsError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CudaOptions::from_lookup(|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn unset_and_empty_variables_are_the_defaults() {
        assert_eq!(options(&[]).unwrap(), CudaOptions::default());
        let empty = options(&[("REDPACK_CUDA_FLASH", ""), ("REDPACK_CUDA_PROFILE", "")]);
        assert_eq!(empty.unwrap(), CudaOptions::default());
        let d = CudaOptions::default();
        assert_eq!(d.flash, FlashVariant::Wide);
        assert!(!d.flash_auto && !d.profile);
        assert_eq!(d.attention, AttentionKernels::Fused);
        assert_eq!(d.cross_entropy, CrossEntropyKernels::Split);
        assert_eq!(d.blas, BlasEngine::GemmEx);
    }

    #[test]
    fn every_variable_sets_its_option() {
        let o = options(&[
            ("REDPACK_CUDA_FLASH", "pipelined-w4"),
            ("REDPACK_CUDA_ATTENTION", "batched"),
            ("REDPACK_CUDA_CE", "fused"),
            ("REDPACK_CUDA_BLAS", "lt"),
            ("REDPACK_CUDA_PROFILE", "1"),
        ])
        .unwrap();
        assert_eq!(o.flash, FlashVariant::PipelinedW4);
        assert!(!o.flash_auto);
        assert_eq!(o.attention, AttentionKernels::Batched);
        assert_eq!(o.cross_entropy, CrossEntropyKernels::Fused);
        assert_eq!(o.blas, BlasEngine::Lt);
        assert!(o.profile);
        let auto = options(&[("REDPACK_CUDA_FLASH", "auto")]).unwrap();
        assert!(auto.flash_auto);
        assert_eq!(auto.flash, FlashVariant::default());
        assert_eq!(auto.flash_name(), "auto");
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_accepted_values() {
        let err = options(&[("REDPACK_CUDA_FLASH", "wid")]).unwrap_err();
        assert_eq!(err.variable, "REDPACK_CUDA_FLASH");
        assert_eq!(
            err.to_string(),
            "REDPACK_CUDA_FLASH=\"wid\" is not one of basic, pipelined, pipelined-w4, wide, auto"
        );
        for (variable, value) in [
            ("REDPACK_CUDA_ATTENTION", "flash"),
            ("REDPACK_CUDA_CE", "both"),
            ("REDPACK_CUDA_BLAS", "cublas"),
            ("REDPACK_CUDA_PROFILE", "yes"),
        ] {
            let err = options(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable);
            assert!(err.to_string().starts_with(variable), "{err}");
        }
    }

    #[test]
    fn attention_is_fused_only_in_bf16_for_the_built_head_dims() {
        let fused = CudaOptions::default();
        assert!(fused.fused_attention(Precision::Bf16, 64));
        assert!(!fused.fused_attention(Precision::F32, 64));
        assert!(!fused.fused_attention(Precision::Bf16, 96));
        let batched = CudaOptions {
            attention: AttentionKernels::Batched,
            ..fused
        };
        assert!(!batched.fused_attention(Precision::Bf16, 64));
    }

    #[test]
    fn the_help_text_names_every_variable() {
        for variable in [
            "REDPACK_CUDA_FLASH",
            "REDPACK_CUDA_ATTENTION",
            "REDPACK_CUDA_CE",
            "REDPACK_CUDA_BLAS",
            "REDPACK_CUDA_PROFILE",
        ] {
            assert!(ENVIRONMENT.contains(variable), "{variable}");
        }
    }
}
