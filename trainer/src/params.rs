//! Parameters: named f32 tensors in a fixed order, PyTorch `[out, in]` layout.
//!
//! The order (`param_shapes`) is the checkpoint order and the order the backends walk: the tied
//! embedding first, then each stack's layers in turn, each stack ending with its final norm.
//!
//! Initialization (`ParamStore::init`), chosen for a pre-norm stack with QKV normalization and
//! logits scaled by `d_model^-0.5`:
//! - `embed_tokens.weight` ~ N(0, 1/d_model): every embedding row has norm about 1, so each logit
//!   `h · e / sqrt(d_model)` (the final norm's output `h` has norm `sqrt(d_model)`) is at most
//!   about 1 in size and the first loss is close to `ln(vocab)`. A larger embedding (T5 draws it
//!   from N(0, 1)) makes the tied output strongly predict the *input* token at init: the final
//!   hidden state still contains the token's own embedding, and its logit `|e|² / sqrt(d)` grows
//!   like `sqrt(d_model)` (initial losses of 20+ at d_model 1024). The pre-norm blocks rescale
//!   their inputs, so the small input scale costs nothing; as in GPT-2, the residual branches
//!   then dominate the stream from the first layer on.
//! - Q, K, V, gate and up projections ~ N(0, 1/fan_in): unit-variance outputs from unit-RMS
//!   inputs (Q, K, V are re-normalized per head anyway).
//! - The projections that write into the residual stream (attention `o_proj`, FFN `down_proj`) ~
//!   N(0, 1/(fan_in · branches)), where `branches` counts the residual branches of that stack
//!   (2 per DecLLM/encoder layer, 3 per RedLLM decoder layer): the stream's variance then grows
//!   from 1 to about 2 over the whole depth instead of linearly with it (GPT-2's scaled init).
//! - RMSNorm gains = 1.
//!
//! Each tensor draws from its own SplitMix64 stream seeded by `(seed, tensor index)`, so the
//! init of one tensor does not depend on the sizes of the others.

use crate::config::{Arch, ModelConfig};
use crate::rng::{counter_hash, SplitMix64};

/// A dense f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// All parameters of a model (or their gradients, or optimizer state shaped like them), in
/// checkpoint order, with the checkpoint names.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamStore {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
}

/// How a parameter is initialized.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// RMSNorm gain.
    Ones,
    /// N(0, std²).
    Normal(f64),
}

/// Names and shapes of every parameter of `config`, in checkpoint order.
pub fn param_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    param_specs(config)
        .into_iter()
        .map(|(name, shape, _)| (name, shape))
        .collect()
}

fn param_specs(config: &ModelConfig) -> Vec<(String, Vec<usize>, Init)> {
    let d = config.d_model;
    let da = config.d_attn();
    let f = config.d_ffn;
    let fan_in = |n: usize| 1.0 / (n as f64).sqrt();
    let mut specs = vec![(
        "embed_tokens.weight".to_string(),
        vec![config.vocab_size, d],
        Init::Normal(fan_in(d)),
    )];
    let norm = |specs: &mut Vec<_>, name: String| specs.push((name, vec![d], Init::Ones));
    let attention = |specs: &mut Vec<_>, prefix: String, branches: usize| {
        let out_std = fan_in(da) / (branches as f64).sqrt();
        for proj in ["q", "k", "v"] {
            specs.push((
                format!("{prefix}.{proj}_proj.weight"),
                vec![da, d],
                Init::Normal(fan_in(d)),
            ));
        }
        specs.push((
            format!("{prefix}.o_proj.weight"),
            vec![d, da],
            Init::Normal(out_std),
        ));
    };
    let mlp = |specs: &mut Vec<_>, prefix: String, branches: usize| {
        for proj in ["gate", "up"] {
            specs.push((
                format!("{prefix}.{proj}_proj.weight"),
                vec![f, d],
                Init::Normal(fan_in(d)),
            ));
        }
        specs.push((
            format!("{prefix}.down_proj.weight"),
            vec![d, f],
            Init::Normal(fan_in(f) / (branches as f64).sqrt()),
        ));
    };
    // A DecLLM layer and a RedLLM encoder layer have the same parameters under a prefix.
    let plain_layer = |specs: &mut Vec<_>, prefix: &str, branches: usize| {
        norm(specs, format!("{prefix}.attn_norm.weight"));
        attention(specs, format!("{prefix}.attn"), branches);
        norm(specs, format!("{prefix}.mlp_norm.weight"));
        mlp(specs, format!("{prefix}.mlp"), branches);
    };
    match config.arch {
        Arch::Dec => {
            let branches = 2 * config.layers;
            for i in 0..config.layers {
                plain_layer(&mut specs, &format!("layers.{i}"), branches);
            }
            norm(&mut specs, "final_norm.weight".to_string());
        }
        Arch::Red => {
            let branches = 2 * config.encoder_layers;
            for i in 0..config.encoder_layers {
                plain_layer(&mut specs, &format!("encoder.layers.{i}"), branches);
            }
            norm(&mut specs, "encoder.final_norm.weight".to_string());
            let branches = 3 * config.decoder_layers;
            for i in 0..config.decoder_layers {
                let prefix = format!("decoder.layers.{i}");
                norm(&mut specs, format!("{prefix}.self_attn_norm.weight"));
                attention(&mut specs, format!("{prefix}.self_attn"), branches);
                norm(&mut specs, format!("{prefix}.cross_attn_norm.weight"));
                attention(&mut specs, format!("{prefix}.cross_attn"), branches);
                norm(&mut specs, format!("{prefix}.mlp_norm.weight"));
                mlp(&mut specs, format!("{prefix}.mlp"), branches);
            }
            norm(&mut specs, "decoder.final_norm.weight".to_string());
        }
    }
    specs
}

impl ParamStore {
    /// Freshly initialized parameters for `config` (see the module docs for the scheme).
    pub fn init(config: &ModelConfig, seed: u64) -> ParamStore {
        let specs = param_specs(config);
        let mut names = Vec::with_capacity(specs.len());
        let mut tensors = Vec::with_capacity(specs.len());
        for (index, (name, shape, init)) in specs.into_iter().enumerate() {
            let mut tensor = Tensor::zeros(&shape);
            match init {
                Init::Ones => tensor.data.fill(1.0),
                Init::Normal(std) => {
                    let mut rng = SplitMix64::new(counter_hash(seed, &[index as u64]));
                    for x in &mut tensor.data {
                        *x = (rng.next_normal() * std) as f32;
                    }
                }
            }
            names.push(name);
            tensors.push(tensor);
        }
        ParamStore { names, tensors }
    }

    /// All-zero tensors of `config`'s shapes (gradient buffers, optimizer state).
    pub fn zeros(config: &ModelConfig) -> ParamStore {
        let (names, tensors) = param_shapes(config)
            .into_iter()
            .map(|(name, shape)| (name, Tensor::zeros(&shape)))
            .unzip();
        ParamStore { names, tensors }
    }

    /// Zeros with the same names and shapes as `self`.
    pub fn zeros_like(&self) -> ParamStore {
        ParamStore {
            names: self.names.clone(),
            tensors: self
                .tensors
                .iter()
                .map(|t| Tensor::zeros(&t.shape))
                .collect(),
        }
    }

    /// Sets every element to zero, keeping the allocations.
    pub fn fill_zero(&mut self) {
        for t in &mut self.tensors {
            t.data.fill(0.0);
        }
    }

    /// Position of `name` in checkpoint order.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index_of(name).map(|i| &self.tensors[i])
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.index_of(name).map(move |i| &mut self.tensors[i])
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of f32 elements.
    pub fn num_elements(&self) -> usize {
        self.tensors.iter().map(Tensor::len).sum()
    }

    /// `(name, tensor)` in checkpoint order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.tensors.iter())
    }

    /// Whether names and shapes are exactly those `config` needs, in order; `Err` says the first
    /// difference (a checkpoint from another config, a truncated file).
    pub fn check_matches(&self, config: &ModelConfig) -> Result<(), String> {
        let expected = param_shapes(config);
        if self.names.len() != self.tensors.len() {
            return Err(format!(
                "{} names but {} tensors",
                self.names.len(),
                self.tensors.len()
            ));
        }
        if expected.len() != self.len() {
            return Err(format!(
                "the config needs {} tensors, found {}",
                expected.len(),
                self.len()
            ));
        }
        for ((name, shape), (have_name, tensor)) in expected.iter().zip(self.iter()) {
            if name != have_name {
                return Err(format!("expected tensor {name:?}, found {have_name:?}"));
            }
            if shape != &tensor.shape || tensor.data.len() != shape.iter().product::<usize>() {
                return Err(format!(
                    "{name}: expected shape {shape:?}, found {:?} with {} elements",
                    tensor.shape,
                    tensor.data.len()
                ));
            }
        }
        Ok(())
    }
}
