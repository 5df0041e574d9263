//! A checkpoint as a Hugging Face `transformers` model directory:
//!
//! - `config.json`: the model's shapes under `transformers`' usual names, the attention mode,
//!   the special token ids and an `auto_map` naming the bundled classes, so that
//!   `AutoModelForCausalLM` (DecLLM) or `AutoModelForSeq2SeqLM` (RedLLM) load it with
//!   `trust_remote_code=True`;
//! - `configuration_redpack.py`, `modeling_redpack.py`: the model in PyTorch, the same arithmetic
//!   as the CPU backend (`trainer/assets/hf/`);
//! - `model.safetensors`: the f32 weights under the modeling file's names (`hf_name`), PyTorch
//!   `[out, in]` layout as in the checkpoint; the output projection is the tied embedding, so
//!   there is no `lm_head` tensor;
//! - `tokenizer.json` (the corpus's copy, checked against the checkpoint's tokenizer sha256),
//!   `tokenizer_config.json`, `special_tokens_map.json` and `generation_config.json`.
//!
//! The directory is written aside (`.NAME.tmp` next to it), every file fsynced, then renamed into
//! place; an existing directory is replaced only with `overwrite`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ExportError;
use crate::checkpoint::{self, Checkpoint};
use crate::config::{Arch, ModelConfig};
use crate::eval::AttentionMode;

/// The PyTorch configuration class, written as `configuration_redpack.py`.
pub const CONFIGURATION_PY: &str = include_str!("../../assets/hf/configuration_redpack.py");
/// The PyTorch model classes, written as `modeling_redpack.py`.
pub const MODELING_PY: &str = include_str!("../../assets/hf/modeling_redpack.py");

/// The weights file of the model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What to export and where.
#[derive(Debug, Clone)]
pub struct HfOptions {
    pub out: PathBuf,
    /// The corpus whose `tokenizer.json` goes with the model; `None` = the training corpus the
    /// checkpoint's settings name (`data`).
    pub tokenizer_corpus: Option<PathBuf>,
    /// Replace an existing `out`.
    pub overwrite: bool,
    /// Check `model.safetensors` against the checkpoint's sha256.
    pub verify: bool,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct HfSummary {
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    pub arch: Arch,
    pub step: u64,
    pub tensors: usize,
    pub parameters: u64,
    pub files: Vec<String>,
}

/// The name a checkpoint tensor has in the exported model (`None` for a name no checkpoint
/// holds). Llama's names for a decoder layer; the RedLLM decoder adds `cross_attn` and its
/// norm `cross_attn_layernorm`.
pub fn hf_name(name: &str) -> Option<String> {
    if name == "embed_tokens.weight" {
        return Some("model.embed_tokens.weight".to_string());
    }
    let (stack, rest) = if let Some(rest) = name.strip_prefix("encoder.") {
        ("model.encoder.", rest)
    } else if let Some(rest) = name.strip_prefix("decoder.") {
        ("model.decoder.", rest)
    } else {
        ("model.", name)
    };
    if rest == "final_norm.weight" {
        return Some(format!("{stack}norm.weight"));
    }
    let rest = rest.strip_prefix("layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let tail = match tail {
        "attn_norm.weight" | "self_attn_norm.weight" => "input_layernorm.weight".to_string(),
        "mlp_norm.weight" => "post_attention_layernorm.weight".to_string(),
        "cross_attn_norm.weight" => "cross_attn_layernorm.weight".to_string(),
        _ => {
            let (block, proj) = tail.split_once('.')?;
            let block = match block {
                "attn" | "self_attn" => "self_attn",
                "cross_attn" => "cross_attn",
                "mlp" => "mlp",
                _ => return None,
            };
            match proj {
                "q_proj.weight" | "k_proj.weight" | "v_proj.weight" | "o_proj.weight"
                    if block != "mlp" => {}
                "gate_proj.weight" | "up_proj.weight" | "down_proj.weight" if block == "mlp" => {}
                _ => return None,
            }
            format!("{block}.{proj}")
        }
    };
    Some(format!("{stack}layers.{layer}.{tail}"))
}

/// An f32 as the shortest decimal that reads back as it (`1e-6`, not `9.999999974752427e-7`),
/// the way `checkpoint.json` writes it.
fn decimal(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .map_or_else(|_| json!(f64::from(x)), |v| json!(v))
}

/// The `config.json` of a model.
pub fn hf_config(
    model: &ModelConfig,
    attention: AttentionMode,
    tokenizer: &checkpoint::TokenizerStamp,
    max_len: u64,
    step: u64,
) -> Value {
    let red = model.arch == Arch::Red;
    let (class, auto) = if red {
        ("RedpackForSeq2SeqLM", "AutoModelForSeq2SeqLM")
    } else {
        ("RedpackForCausalLM", "AutoModelForCausalLM")
    };
    let mut config = json!({
        "model_type": "redpack",
        "architectures": [class],
        "auto_map": {
            "AutoConfig": "configuration_redpack.RedpackConfig",
            auto: format!("modeling_redpack.{class}"),
        },
        "arch": model.arch.name(),
        "vocab_size": model.vocab_size,
        "hidden_size": model.d_model,
        "intermediate_size": model.d_ffn,
        "num_attention_heads": model.n_heads,
        "head_dim": model.head_dim,
        "num_hidden_layers": if red { model.decoder_layers } else { model.layers },
        "num_encoder_layers": if red { model.encoder_layers } else { 0 },
        "num_decoder_layers": if red { model.decoder_layers } else { 0 },
        "rope_theta": decimal(model.rope_base),
        "rms_norm_eps": decimal(model.norm_eps),
        "attention_output_norm": red,
        "bidirectional_prefix": attention.bidirectional_prefix,
        "max_position_embeddings": max_len,
        "eos_token_id": tokenizer.eod_id,
        "pad_token_id": tokenizer.pad_id,
        "is_encoder_decoder": red,
        "tie_word_embeddings": true,
        "use_cache": false,
        "torch_dtype": "float32",
        "redpack_step": step,
    });
    if red {
        // A placeholder: the decoder's first input is always the encoder input's last token.
        config["decoder_start_token_id"] = json!(tokenizer.pad_id);
    }
    config
}

/// A borrowed f32 tensor for the safetensors writer.
struct F32Tensor<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32Tensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes `model.safetensors` of a checkpoint to `path` (fsynced), tensors under `hf_name`,
/// streaming tensor by tensor.
pub fn write_hf_weights(checkpoint: &Checkpoint, path: &Path) -> Result<(), ExportError> {
    let mut tensors = Vec::with_capacity(checkpoint.params.len());
    for (name, tensor) in checkpoint.params.iter() {
        let hf = hf_name(name).ok_or_else(|| {
            ExportError::Invalid(format!(
                "{}: tensor {name:?} has no place in the exported model",
                checkpoint.dir.display()
            ))
        })?;
        tensors.push((
            hf,
            F32Tensor {
                shape: &tensor.shape,
                data: &tensor.data,
            },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => ExportError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => ExportError::Invalid(format!(
            "{}: cannot write the weights: {other}",
            path.display()
        )),
    })?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// A file of the model directory: its name and bytes.
type NamedFile = (&'static str, Vec<u8>);

/// The tokenizer files: `tokenizer.json` (copied) and the three small JSON files around it.
fn tokenizer_files(
    corpus: &Path,
    checkpoint: &Checkpoint,
) -> Result<(Vec<NamedFile>, u64), ExportError> {
    let manifest = redpack_schemas::Manifest::load(corpus)?;
    let info = &manifest.tokenizer;
    let stamp = &checkpoint.meta.tokenizer;
    let path = corpus.join(&info.file);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let sha = redpack_schemas::hex(&Sha256::digest(&bytes));
    if sha != stamp.sha256 || info.eod_id != stamp.eod_id || info.pad_id != stamp.pad_id {
        return Err(ExportError::Invalid(format!(
            "{}: this tokenizer (sha256 {sha}) is not the one {} was trained with (sha256 {}); \
             pass --tokenizer-corpus with a corpus encoded by the training tokenizer",
            path.display(),
            checkpoint.dir.display(),
            stamp.sha256
        )));
    }
    let max_len = manifest.layout.max_len();
    let padding_side = match checkpoint.meta.model.arch {
        // Batched generation with a decoder-only model pads on the left.
        Arch::Dec => "left",
        Arch::Red => "right",
    };
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": info.eod_token,
        "pad_token": info.pad_token,
        "model_max_length": max_len,
        "padding_side": padding_side,
        "clean_up_tokenization_spaces": false,
    });
    let special = json!({
        "eos_token": info.eod_token,
        "pad_token": info.pad_token,
    });
    Ok((
        vec![
            ("tokenizer.json", bytes),
            ("tokenizer_config.json", pretty(&tokenizer_config)),
            ("special_tokens_map.json", pretty(&special)),
        ],
        max_len,
    ))
}

/// Exports the checkpoint at `checkpoint_path` (a checkpoint or run directory).
pub fn export_hf(checkpoint_path: &Path, options: &HfOptions) -> Result<HfSummary, ExportError> {
    let dir = checkpoint::resolve(checkpoint_path)?;
    let checkpoint = checkpoint::load_checked(&dir, false, options.verify)?;
    let meta = &checkpoint.meta;
    let corpus = match &options.tokenizer_corpus {
        Some(c) => c.clone(),
        None => meta
            .settings
            .get("data")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .ok_or_else(|| {
                ExportError::Invalid(format!(
                    "{}: the checkpoint's settings name no training corpus; pass \
                     --tokenizer-corpus",
                    dir.display()
                ))
            })?,
    };
    let (mut files, max_len) = tokenizer_files(&corpus, &checkpoint)?;
    let attention = AttentionMode::of_checkpoint(meta);
    if attention.reset_at_doc_boundaries {
        return Err(ExportError::Invalid(format!(
            "{}: the checkpoint was trained with attention reset at document boundaries, which \
             the exported model does not implement",
            dir.display()
        )));
    }
    let config = hf_config(&meta.model, attention, &meta.tokenizer, max_len, meta.step);
    let mut generation = json!({
        "eos_token_id": meta.tokenizer.eod_id,
        "pad_token_id": meta.tokenizer.pad_id,
        "use_cache": false,
    });
    if meta.model.arch == Arch::Red {
        generation["decoder_start_token_id"] = json!(meta.tokenizer.pad_id);
    }
    files.push(("config.json", pretty(&config)));
    files.push(("generation_config.json", pretty(&generation)));
    files.push((
        "configuration_redpack.py",
        CONFIGURATION_PY.as_bytes().to_vec(),
    ));
    files.push(("modeling_redpack.py", MODELING_PY.as_bytes().to_vec()));
    write_dir(&options.out, &files, options.overwrite, |staged| {
        write_hf_weights(&checkpoint, &staged.join(WEIGHTS_FILE))
    })?;
    files.push((WEIGHTS_FILE, Vec::new()));
    files.sort_by(|a, b| a.0.cmp(b.0));
    Ok(HfSummary {
        checkpoint: dir.clone(),
        out: options.out.clone(),
        arch: meta.model.arch,
        step: meta.step,
        tensors: checkpoint.params.len(),
        parameters: checkpoint.params.num_elements() as u64,
        files: files.iter().map(|f| f.0.to_string()).collect(),
    })
}

/// Writes `files`, and what `more` writes, into a fresh directory `out`: aside first, then
/// renamed into place.
fn write_dir(
    out: &Path,
    files: &[NamedFile],
    overwrite: bool,
    more: impl FnOnce(&Path) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            ExportError::Invalid(format!("{}: the output needs a folder name", out.display()))
        })?;
    let exists = out.exists();
    if exists && !overwrite {
        return Err(ExportError::Invalid(format!(
            "{}: already exists; --overwrite replaces it",
            out.display()
        )));
    }
    if exists && !out.is_dir() {
        return Err(ExportError::Invalid(format!(
            "{}: exists and is not a folder",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let staged = parent.join(format!(".{name}.tmp"));
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(io(&staged))?;
    }
    std::fs::create_dir(&staged).map_err(io(&staged))?;
    let written = files
        .iter()
        .try_for_each(|(file, bytes)| write_synced(&staged.join(file), bytes))
        .and_then(|()| more(&staged));
    if let Err(e) = written {
        // Nothing half-written stays behind; the error that matters is the one above.
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    if exists {
        let old = parent.join(format!(".{name}.old"));
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(out, &old).map_err(io(out))?;
        std::fs::rename(&staged, out).map_err(io(out))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&staged, out).map_err(io(out))?;
    }
    redpack_schemas::atomic::sync_dir(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::hf_name;
    use crate::config::{Arch, ModelConfig};
    use crate::params::param_shapes;

    #[test]
    fn every_checkpoint_name_maps_to_a_distinct_hf_name() {
        for arch in [Arch::Dec, Arch::Red] {
            let config = ModelConfig::preset(arch, "tiny", 300).unwrap();
            let mut names: Vec<String> = param_shapes(&config)
                .iter()
                .map(|(n, _)| hf_name(n).unwrap_or_else(|| panic!("{n} unmapped")))
                .collect();
            let count = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), count, "{arch:?}: two tensors share a name");
        }
        assert_eq!(
            hf_name("decoder.layers.3.cross_attn.k_proj.weight").as_deref(),
            Some("model.decoder.layers.3.cross_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name("layers.0.mlp_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_name("layers.0.mlp.q_proj.weight"), None);
    }
}
