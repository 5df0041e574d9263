//! Model configuration: the two architectures and their sizes.
//!
//! The paper's five sizes (Table 2a of arXiv 2510.26622) are reproduced exactly; `tiny` and `small` are
//! ours, for tests and CPU runs. Every field is public so a config file can override any
//! dimension; `validate` then checks the combination before any tensor is allocated.

use serde::{Deserialize, Serialize};

/// Which architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// DecLLM: decoder-only, causal LM.
    Dec,
    /// RedLLM: encoder-decoder, prefix LM.
    Red,
}

impl Arch {
    /// `dec` or `red`, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Dec => "dec",
            Arch::Red => "red",
        }
    }
}

/// Every shape and constant of a model. Presets come from `ModelConfig::preset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_ffn: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    /// DecLLM layers (unused for RedLLM).
    pub layers: usize,
    /// RedLLM encoder layers (unused for DecLLM).
    pub encoder_layers: usize,
    /// RedLLM decoder layers (unused for DecLLM).
    pub decoder_layers: usize,
    pub rope_base: f32,
    pub norm_eps: f32,
}

/// Dimensions a recipe (`[model]` table) or the command line sets on top of a size preset; every
/// field optional. `layers` is DecLLM's depth; for RedLLM it sets both stacks (the presets' "layers
/// per stack"), and `encoder_layers` / `decoder_layers` set one stack each, over `layers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    pub d_model: Option<usize>,
    pub d_ffn: Option<usize>,
    pub n_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub layers: Option<usize>,
    pub encoder_layers: Option<usize>,
    pub decoder_layers: Option<usize>,
    pub rope_base: Option<f32>,
    pub norm_eps: Option<f32>,
}

impl ModelOverrides {
    /// True when nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == ModelOverrides::default()
    }

    /// `self` with every field that `top` sets replaced by `top`'s value.
    pub fn overlay(self, top: ModelOverrides) -> ModelOverrides {
        ModelOverrides {
            d_model: top.d_model.or(self.d_model),
            d_ffn: top.d_ffn.or(self.d_ffn),
            n_heads: top.n_heads.or(self.n_heads),
            head_dim: top.head_dim.or(self.head_dim),
            layers: top.layers.or(self.layers),
            encoder_layers: top.encoder_layers.or(self.encoder_layers),
            decoder_layers: top.decoder_layers.or(self.decoder_layers),
            rope_base: top.rope_base.or(self.rope_base),
            norm_eps: top.norm_eps.or(self.norm_eps),
        }
    }

    /// `base` with these overrides applied, validated.
    pub fn apply(&self, base: &ModelConfig) -> Result<ModelConfig, ConfigError> {
        let mut config = base.clone();
        let set = |field: &mut usize, value: Option<usize>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set(&mut config.d_model, self.d_model);
        set(&mut config.d_ffn, self.d_ffn);
        set(&mut config.n_heads, self.n_heads);
        set(&mut config.head_dim, self.head_dim);
        match config.arch {
            Arch::Dec => {
                for (name, value) in [
                    ("encoder_layers", self.encoder_layers),
                    ("decoder_layers", self.decoder_layers),
                ] {
                    if let Some(v) = value {
                        return Err(ConfigError::Invalid(format!(
                            "{name} = {v} is a RedLLM dimension; DecLLM's depth is `layers`"
                        )));
                    }
                }
                set(&mut config.layers, self.layers);
            }
            Arch::Red => {
                set(
                    &mut config.encoder_layers,
                    self.encoder_layers.or(self.layers),
                );
                set(
                    &mut config.decoder_layers,
                    self.decoder_layers.or(self.layers),
                );
            }
        }
        if let Some(v) = self.rope_base {
            config.rope_base = v;
        }
        if let Some(v) = self.norm_eps {
            config.norm_eps = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// The overridden fields as `name = value`, for logs.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut int = |name: &str, v: Option<usize>| {
            if let Some(v) = v {
                out.push(format!("{name} = {v}"));
            }
        };
        int("d_model", self.d_model);
        int("d_ffn", self.d_ffn);
        int("n_heads", self.n_heads);
        int("head_dim", self.head_dim);
        int("layers", self.layers);
        int("encoder_layers", self.encoder_layers);
        int("decoder_layers", self.decoder_layers);
        if let Some(v) = self.rope_base {
            out.push(format!("rope_base = {v}"));
        }
        if let Some(v) = self.norm_eps {
            out.push(format!("norm_eps = {v:e}"));
        }
        out
    }
}

/// What is wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown model size {0:?} (known: {known})", known = PRESET_NAMES.join(", "))]
    UnknownSize(String),
    #[error("invalid model config: {0}")]
    Invalid(String),
}

/// The preset names `ModelConfig::preset` accepts, smallest first.
pub const PRESET_NAMES: [&str; 7] = ["tiny", "small", "150m", "1b", "2b", "4b", "8b"];

/// One row of the size table: d_model, d_ffn, heads, head_dim, DecLLM layers, RedLLM layers per
/// stack.
struct SizeRow {
    d_model: usize,
    d_ffn: usize,
    n_heads: usize,
    head_dim: usize,
    dec_layers: usize,
    red_layers: usize,
}

fn size_row(size: &str) -> Option<SizeRow> {
    let row = |d_model, d_ffn, n_heads, head_dim, dec_layers, red_layers| SizeRow {
        d_model,
        d_ffn,
        n_heads,
        head_dim,
        dec_layers,
        red_layers,
    };
    Some(match size.to_ascii_lowercase().as_str() {
        // Ours: a few seconds per hundred steps on a laptop core.
        "tiny" => row(64, 256, 2, 32, 2, 2),
        "small" => row(256, 1024, 4, 64, 4, 2),
        // The paper (arXiv 2510.26622), Table 2a.
        "150m" => row(1024, 4096, 8, 128, 8, 3),
        "1b" => row(2048, 8192, 16, 128, 16, 7),
        "2b" => row(2560, 10240, 20, 128, 20, 9),
        "4b" => row(3072, 12288, 24, 128, 24, 10),
        "8b" => row(4096, 16384, 32, 128, 32, 14),
        _ => return None,
    })
}

/// Parameter counts per stack, split the way the FLOPs formula needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StackParamCounts {
    /// The tied embedding matrix (vocab x d_model), counted once.
    pub embedding: u64,
    /// RedLLM encoder without the embedding, final norm included (0 for DecLLM).
    pub encoder: u64,
    /// The decoder (DecLLM's only stack) without the embedding, final norm included.
    pub decoder: u64,
}

impl ModelConfig {
    /// A preset by size name (case-insensitive), for `arch` and a tokenizer of `vocab_size`.
    pub fn preset(arch: Arch, size: &str, vocab_size: usize) -> Result<ModelConfig, ConfigError> {
        let row = size_row(size).ok_or_else(|| ConfigError::UnknownSize(size.to_string()))?;
        let (layers, encoder_layers, decoder_layers) = match arch {
            Arch::Dec => (row.dec_layers, 0, 0),
            Arch::Red => (0, row.red_layers, row.red_layers),
        };
        let config = ModelConfig {
            arch,
            vocab_size,
            d_model: row.d_model,
            d_ffn: row.d_ffn,
            n_heads: row.n_heads,
            head_dim: row.head_dim,
            layers,
            encoder_layers,
            decoder_layers,
            rope_base: 10000.0,
            norm_eps: 1e-6,
        };
        config.validate()?;
        Ok(config)
    }

    /// Width of the attention (all heads side by side): `n_heads * head_dim`.
    pub fn d_attn(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Checks that every dimension is usable; a config read from a file goes through this before
    /// anything is allocated.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.vocab_size < 2 {
            return invalid(format!(
                "vocab_size must be at least 2, got {}",
                self.vocab_size
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return invalid(format!(
                "vocab_size {} does not fit u32 token ids",
                self.vocab_size
            ));
        }
        for (name, value) in [
            ("d_model", self.d_model),
            ("d_ffn", self.d_ffn),
            ("n_heads", self.n_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be positive, got {value}"));
            }
        }
        if self.head_dim & 1 == 1 {
            return invalid(format!(
                "head_dim must be even for rotary embeddings, got {}",
                self.head_dim
            ));
        }
        match self.arch {
            Arch::Dec if self.layers == 0 => {
                return invalid("DecLLM needs layers >= 1, got 0".into())
            }
            Arch::Red if self.encoder_layers == 0 || self.decoder_layers == 0 => {
                return invalid(format!(
                    "RedLLM needs encoder_layers >= 1 and decoder_layers >= 1, got {} and {}",
                    self.encoder_layers, self.decoder_layers
                ))
            }
            _ => {}
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            return invalid(format!("rope_base must be > 1, got {}", self.rope_base));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return invalid(format!("norm_eps must be > 0, got {}", self.norm_eps));
        }
        if self.checked_param_count().is_none() {
            return invalid(format!(
                "the parameter count of d_model {}, d_ffn {}, {} heads of {}, layers {}/{}/{} and vocab_size {} overflows",
                self.d_model,
                self.d_ffn,
                self.n_heads,
                self.head_dim,
                self.layers,
                self.encoder_layers,
                self.decoder_layers,
                self.vocab_size
            ));
        }
        Ok(())
    }

    /// `param_count` in checked arithmetic: `None` for dimensions so large it overflows.
    pub fn checked_param_count(&self) -> Option<u64> {
        let n = |v: usize| u64::try_from(v).ok();
        let d = n(self.d_model)?;
        let d_attn = n(self.n_heads)?.checked_mul(n(self.head_dim)?)?;
        let attn = d.checked_mul(d_attn)?.checked_mul(4)?.checked_add(d)?;
        let ffn = d
            .checked_mul(n(self.d_ffn)?)?
            .checked_mul(3)?
            .checked_add(d)?;
        let embedding = n(self.vocab_size)?.checked_mul(d)?;
        let stacks = match self.arch {
            Arch::Dec => n(self.layers)?.checked_mul(attn.checked_add(ffn)?)?,
            Arch::Red => n(self.encoder_layers)?
                .checked_mul(attn.checked_add(ffn)?)?
                .checked_add(
                    n(self.decoder_layers)?.checked_mul(attn.checked_mul(2)?.checked_add(ffn)?)?,
                )?,
        };
        // Two final norms at most.
        embedding
            .checked_add(stacks)?
            .checked_add(d.checked_mul(2)?)
    }

    /// The resolved shape in one line, for logs: `d_model 64, d_ffn 256, 2 heads x 32, ...`.
    pub fn describe(&self) -> String {
        let depth = match self.arch {
            Arch::Dec if self.layers == 1 => "1 layer".to_string(),
            Arch::Dec => format!("{} layers", self.layers),
            Arch::Red => format!(
                "{} encoder + {} decoder layers",
                self.encoder_layers, self.decoder_layers
            ),
        };
        format!(
            "d_model {}, d_ffn {}, {} heads x {}, {depth}, vocab {}, rope_base {}, norm_eps {:e}",
            self.d_model,
            self.d_ffn,
            self.n_heads,
            self.head_dim,
            self.vocab_size,
            self.rope_base,
            self.norm_eps
        )
    }

    /// The fields where `other` differs from `self`: `(name, self's value, other's value)`.
    pub fn differences(&self, other: &ModelConfig) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let mut cmp = |name: &'static str, a: String, b: String| {
            if a != b {
                out.push((name, a, b));
            }
        };
        cmp("arch", self.arch.name().into(), other.arch.name().into());
        for (name, a, b) in [
            ("vocab_size", self.vocab_size, other.vocab_size),
            ("d_model", self.d_model, other.d_model),
            ("d_ffn", self.d_ffn, other.d_ffn),
            ("n_heads", self.n_heads, other.n_heads),
            ("head_dim", self.head_dim, other.head_dim),
            ("layers", self.layers, other.layers),
            ("encoder_layers", self.encoder_layers, other.encoder_layers),
            ("decoder_layers", self.decoder_layers, other.decoder_layers),
        ] {
            cmp(name, a.to_string(), b.to_string());
        }
        cmp(
            "rope_base",
            self.rope_base.to_string(),
            other.rope_base.to_string(),
        );
        cmp(
            "norm_eps",
            format!("{:e}", self.norm_eps),
            format!("{:e}", other.norm_eps),
        );
        out
    }

    /// Parameters of one self- or cross-attention block: its pre-norm gain and Q, K, V, O.
    fn attention_block_params(&self) -> u64 {
        (self.d_model + 4 * self.d_model * self.d_attn()) as u64
    }

    /// Parameters of one SwiGLU FFN block: its pre-norm gain and gate, up, down.
    fn ffn_block_params(&self) -> u64 {
        (self.d_model + 3 * self.d_model * self.d_ffn) as u64
    }

    /// Parameter counts per stack (see `StackParamCounts`).
    pub fn stack_param_counts(&self) -> StackParamCounts {
        let attn = self.attention_block_params();
        let ffn = self.ffn_block_params();
        let final_norm = self.d_model as u64;
        let embedding = (self.vocab_size * self.d_model) as u64;
        match self.arch {
            Arch::Dec => StackParamCounts {
                embedding,
                encoder: 0,
                decoder: self.layers as u64 * (attn + ffn) + final_norm,
            },
            Arch::Red => StackParamCounts {
                embedding,
                encoder: self.encoder_layers as u64 * (attn + ffn) + final_norm,
                decoder: self.decoder_layers as u64 * (2 * attn + ffn) + final_norm,
            },
        }
    }

    /// Parameters of a RedLLM decoder's cross-attention K and V projections, all layers
    /// (`decoder_layers · 2 · d_model · d_attn`; part of `StackParamCounts::decoder`). They read
    /// the encoder's output, so they run once per encoder token. 0 for DecLLM.
    pub fn cross_kv_params(&self) -> u64 {
        match self.arch {
            Arch::Dec => 0,
            Arch::Red => (self.decoder_layers * 2 * self.d_model * self.d_attn()) as u64,
        }
    }

    /// Total number of parameters (the tied embedding counted once).
    pub fn param_count(&self) -> u64 {
        let counts = self.stack_param_counts();
        counts.embedding + counts.encoder + counts.decoder
    }

    /// Number of layers in the stack that produces the logits (DecLLM's layers, RedLLM's decoder).
    pub fn output_stack_layers(&self) -> usize {
        match self.arch {
            Arch::Dec => self.layers,
            Arch::Red => self.decoder_layers,
        }
    }
}

/// `1234567` → `"1.23M"`, for logs.
pub fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}
