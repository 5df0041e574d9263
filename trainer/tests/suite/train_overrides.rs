//! Model dimensions set over a size preset: a recipe's `[model]` table and the flags' layer on
//! top of it build the expected model, bad values fail before any work naming the value, and an
//! override that disagrees with a `--resume` / `--init` checkpoint is refused.

use super::train_common;

use std::path::Path;

use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::config::{Arch, ModelConfig, ModelOverrides};
use redpack_trainer::metrics::Quiet;
use redpack_trainer::run::{Mode, Recipe, TrainRun, TrainSettings};
use train_common::{packed_corpus, tiny_settings, VOCAB};

fn resolve(recipe: Recipe) -> Result<TrainSettings, String> {
    TrainSettings::resolve(recipe, "data".into(), "out".into(), None, false)
        .map_err(|e| e.to_string())
}

fn resolve_toml(text: &str) -> Result<TrainSettings, String> {
    resolve(Recipe::from_toml(text, "recipe.toml").map_err(|e| e.to_string())?)
}

const DEC_RECIPE: &str = r#"
arch = "dec"
mode = "pretrain"
size = "tiny"

[model]
d_model = 96
d_ffn = 200
n_heads = 3
head_dim = 16
layers = 3
rope_base = 500000.0
norm_eps = 1e-5
"#;

#[test]
fn recipe_overrides_build_the_expected_model() {
    let s = resolve_toml(DEC_RECIPE).unwrap();
    let model = s.model_config(VOCAB as usize).unwrap();
    assert_eq!(
        model,
        ModelConfig {
            arch: Arch::Dec,
            vocab_size: VOCAB as usize,
            d_model: 96,
            d_ffn: 200,
            n_heads: 3,
            head_dim: 16,
            layers: 3,
            encoder_layers: 0,
            decoder_layers: 0,
            rope_base: 500000.0,
            norm_eps: 1e-5,
        }
    );
    // Embedding, then per layer: attention (norm gain + Q, K, V, O at 3 x 16 wide) and SwiGLU
    // (norm gain + gate, up, down), then the final norm.
    let attn = 96 + 4 * 96 * (3 * 16);
    let ffn = 96 + 3 * 96 * 200;
    assert_eq!(
        model.param_count(),
        (VOCAB as u64) * 96 + 3 * (attn + ffn) + 96
    );
    assert_eq!(model.param_count(), 233_376);
    let line = model.describe();
    assert!(
        line.contains("d_model 96") && line.contains("3 heads x 16") && line.contains("3 layers"),
        "{line}"
    );

    // Without overrides the preset stands.
    let plain = resolve_toml("arch = \"dec\"\nmode = \"pretrain\"\nsize = \"tiny\"\n").unwrap();
    assert!(plain.model.is_empty());
    assert_eq!(
        plain.model_config(1000).unwrap(),
        ModelConfig::preset(Arch::Dec, "tiny", 1000).unwrap()
    );
}

#[test]
fn red_layers_set_both_stacks_and_each_stack_overrides_them() {
    let s = resolve_toml(
        "arch = \"red\"\nmode = \"pretrain\"\nsize = \"small\"\n[model]\nlayers = 4\ndecoder_layers = 1\n",
    )
    .unwrap();
    let model = s.model_config(32768).unwrap();
    let small = ModelConfig::preset(Arch::Red, "small", 32768).unwrap();
    assert_eq!((model.encoder_layers, model.decoder_layers), (4, 1));
    assert_eq!(model.d_model, small.d_model);
    assert_eq!(model.layers, 0);
    let counts = model.stack_param_counts();
    let attn = (256 + 4 * 256 * 256) as u64;
    let ffn = (256 + 3 * 256 * 1024) as u64;
    assert_eq!(counts.encoder, 4 * (attn + ffn) + 256);
    assert_eq!(counts.decoder, 2 * attn + ffn + 256);
}

#[test]
fn flags_override_the_recipe_model_table_field_by_field() {
    let file = Recipe::from_toml(DEC_RECIPE, "recipe.toml").unwrap();
    let flags = Recipe {
        model: ModelOverrides {
            d_model: Some(128),
            layers: Some(1),
            ..ModelOverrides::default()
        },
        ..Recipe::default()
    };
    let model = resolve(file.overlay(flags))
        .unwrap()
        .model_config(VOCAB as usize)
        .unwrap();
    assert_eq!((model.d_model, model.layers), (128, 1));
    assert_eq!((model.d_ffn, model.n_heads, model.head_dim), (200, 3, 16));
    assert_eq!(model.rope_base, 500000.0);
}

#[test]
fn bad_overrides_fail_at_resolve_naming_the_value() {
    let base = "arch = \"dec\"\nmode = \"pretrain\"\nsize = \"tiny\"\n[model]\n";
    for (table, wanted) in [
        ("n_heads = 0", "n_heads must be positive, got 0"),
        ("d_model = 0", "d_model must be positive, got 0"),
        (
            "head_dim = 33",
            "head_dim must be even for rotary embeddings, got 33",
        ),
        ("layers = 0", "layers >= 1, got 0"),
        ("norm_eps = 0.0", "norm_eps must be > 0, got 0"),
        ("rope_base = 1.0", "rope_base must be > 1, got 1"),
        (
            "encoder_layers = 2",
            "encoder_layers = 2 is a RedLLM dimension",
        ),
        ("d_model = 4294967296\nd_ffn = 4294967296", "overflows"),
    ] {
        let err = resolve_toml(&format!("{base}{table}\n")).unwrap_err();
        assert!(err.contains(wanted), "{table}: {err}");
        assert!(err.contains("model size tiny with"), "{table}: {err}");
    }
    let red = "arch = \"red\"\nmode = \"pretrain\"\n[model]\ndecoder_layers = 0\n";
    let err = resolve_toml(red).unwrap_err();
    assert!(err.contains("got 2 and 0"), "{err}");

    // Unknown keys and values of the wrong type are parse errors naming them.
    let err = resolve_toml(&format!("{base}dmodel = 64\n")).unwrap_err();
    assert!(err.contains("dmodel"), "{err}");
    let err = resolve_toml(&format!("{base}d_model = -64\n")).unwrap_err();
    assert!(err.contains("recipe.toml"), "{err}");
    // An unknown size is caught here too, not only once the corpus is open.
    let err = resolve_toml("arch = \"dec\"\nmode = \"pretrain\"\nsize = \"3b\"\n").unwrap_err();
    assert!(err.contains("unknown model size \"3b\""), "{err}");
}

#[test]
fn prepare_refuses_a_bad_override_before_touching_the_run_directory() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 4, 16);
    let out = root.path().join("run");
    let mut settings = tiny_settings(Arch::Dec, Mode::Pretrain, &data, &out, 1);
    settings.model.n_heads = Some(0);
    let err = TrainRun::prepare(settings).unwrap_err().to_string();
    assert!(err.contains("n_heads must be positive, got 0"), "{err}");
    assert!(!out.exists());
}

/// A one-step `tiny` DecLLM run with `overrides`, in `out`.
fn train_one_step(data: &Path, out: &Path, overrides: ModelOverrides) -> TrainSettings {
    let mut settings = tiny_settings(Arch::Dec, Mode::Pretrain, data, out, 1);
    settings.model = overrides;
    let run = TrainRun::prepare(settings.clone()).unwrap();
    run.run(&mut CpuBackend::new(Some(1)).unwrap(), &mut Quiet)
        .unwrap();
    settings
}

#[test]
fn overrides_train_and_must_agree_with_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("rp"), 4, 16);
    let narrow = ModelOverrides {
        d_model: Some(32),
        n_heads: Some(4),
        head_dim: Some(8),
        layers: Some(1),
        ..ModelOverrides::default()
    };
    let settings = train_one_step(&data, &root.path().join("pre"), narrow.clone());

    // Resuming with the same overrides, or none, continues the checkpoint's model.
    for overrides in [narrow.clone(), ModelOverrides::default()] {
        let mut again = settings.clone();
        again.resume = true;
        again.steps = 2;
        again.model = overrides;
        let run = TrainRun::prepare(again).unwrap();
        assert_eq!(
            (run.model.d_model, run.model.n_heads, run.model.layers),
            (32, 4, 1)
        );
        assert_eq!(run.start_step, 1);
    }

    // An override the checkpoint does not have is refused, naming both values.
    let mut wider = settings.clone();
    wider.resume = true;
    wider.steps = 2;
    wider.model.d_model = Some(64);
    let err = TrainRun::prepare(wider).unwrap_err().to_string();
    assert!(
        err.contains("d_model = 32 in the checkpoint, 64 asked for"),
        "{err}"
    );
    assert!(err.contains("--resume"), "{err}");

    // Any dimension that differs is refused, not only those the run was started with.
    let mut deeper = settings.clone();
    deeper.resume = true;
    deeper.model = ModelOverrides {
        d_ffn: Some(512),
        ..ModelOverrides::default()
    };
    let err = TrainRun::prepare(deeper).unwrap_err().to_string();
    assert!(
        err.contains("d_ffn = 256 in the checkpoint, 512 asked for"),
        "{err}"
    );

    // --init takes the checkpoint's model as well.
    let mut init = tiny_settings(
        Arch::Dec,
        Mode::Pretrain,
        &data,
        &root.path().join("init"),
        1,
    );
    init.init = Some(settings.out.clone());
    init.model.n_heads = Some(2);
    let err = TrainRun::prepare(init.clone()).unwrap_err().to_string();
    assert!(
        err.contains("n_heads = 4 in the checkpoint, 2 asked for"),
        "{err}"
    );
    init.model = narrow;
    let run = TrainRun::prepare(init).unwrap();
    assert_eq!(run.model.d_model, 32);
    assert!(run.initialized_from.is_some());
}
