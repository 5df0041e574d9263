//! Presets, parameter counts and names, initialization, the FLOPs formula, and bitwise
//! determinism of the CPU backend across thread counts.

use super::model_support;

use model_support::make_batch;
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::{Backend, BackendError};
use redpack_trainer::batch::StepOptions;
use redpack_trainer::config::{human_count, Arch, ConfigError, ModelConfig, PRESET_NAMES};
use redpack_trainer::flops::{training_flops, StackTokens};
use redpack_trainer::params::{param_shapes, ParamStore};
use redpack_trainer::rng::SplitMix64;

#[test]
fn paper_sizes_come_out_near_their_names() {
    let dec150 = ModelConfig::preset(Arch::Dec, "150m", 32768).unwrap();
    let n = dec150.param_count();
    println!(
        "DecLLM 150m, vocab 32768: {} parameters ({})",
        n,
        human_count(n)
    );
    assert!((0.16e9..0.18e9).contains(&(n as f64)), "{n}");
    for (size, nominal) in [
        ("150m", 0.15e9),
        ("1b", 1e9),
        ("2b", 2e9),
        ("4b", 4e9),
        ("8b", 8e9),
    ] {
        for arch in [Arch::Dec, Arch::Red] {
            let n = ModelConfig::preset(arch, size, 32768)
                .unwrap()
                .param_count() as f64;
            println!("{arch:?} {size}: {}", human_count(n as u64));
            assert!(
                n > 0.85 * nominal && n < 1.25 * nominal,
                "{arch:?} {size}: {n}"
            );
        }
    }
    // Table 2a exactly.
    let red8 = ModelConfig::preset(Arch::Red, "8B", 32768).unwrap();
    assert_eq!(
        (
            red8.d_model,
            red8.d_ffn,
            red8.n_heads,
            red8.head_dim,
            red8.encoder_layers,
            red8.decoder_layers
        ),
        (4096, 16384, 32, 128, 14, 14)
    );
    assert_eq!(
        ModelConfig::preset(Arch::Dec, "4b", 32768).unwrap().layers,
        24
    );
    assert_eq!((red8.norm_eps, red8.rope_base), (1e-6, 10000.0));
}

#[test]
fn presets_and_validation() {
    for size in PRESET_NAMES {
        for arch in [Arch::Dec, Arch::Red] {
            ModelConfig::preset(arch, size, 1000)
                .unwrap()
                .validate()
                .unwrap();
        }
    }
    assert!(matches!(
        ModelConfig::preset(Arch::Dec, "3b", 1000),
        Err(ConfigError::UnknownSize(_))
    ));
    let mut odd = ModelConfig::preset(Arch::Dec, "tiny", 1000).unwrap();
    odd.head_dim = 7;
    assert!(odd.validate().unwrap_err().to_string().contains("head_dim"));
    let mut red = ModelConfig::preset(Arch::Red, "tiny", 1000).unwrap();
    red.decoder_layers = 0;
    assert!(red.validate().is_err());
}

#[test]
fn parameter_names_shapes_and_counts_agree() {
    for arch in [Arch::Dec, Arch::Red] {
        let config = ModelConfig::preset(arch, "small", 500).unwrap();
        let params = ParamStore::init(&config, 0);
        assert_eq!(params.num_elements() as u64, config.param_count());
        let counts = config.stack_param_counts();
        assert_eq!(
            counts.embedding + counts.encoder + counts.decoder,
            config.param_count()
        );
        let mut names = params.names.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), params.len(), "duplicate names");
        assert_eq!(params.names[0], "embed_tokens.weight");
        assert_eq!(
            params.get("embed_tokens.weight").unwrap().shape,
            vec![500, 256]
        );
        params.check_matches(&config).unwrap();
    }
    let red = ModelConfig::preset(Arch::Red, "small", 500).unwrap();
    let params = ParamStore::init(&red, 0);
    for name in [
        "encoder.layers.1.attn.q_proj.weight",
        "encoder.layers.0.mlp.down_proj.weight",
        "encoder.final_norm.weight",
        "decoder.layers.1.self_attn_norm.weight",
        "decoder.layers.0.cross_attn.k_proj.weight",
        "decoder.layers.1.cross_attn_norm.weight",
        "decoder.layers.0.mlp.gate_proj.weight",
        "decoder.final_norm.weight",
    ] {
        assert!(params.index_of(name).is_some(), "missing {name}");
    }
    // [out, in] layout.
    assert_eq!(
        params
            .get("decoder.layers.0.mlp.down_proj.weight")
            .unwrap()
            .shape,
        vec![256, 1024]
    );
    assert_eq!(
        params
            .get("decoder.layers.0.cross_attn.o_proj.weight")
            .unwrap()
            .shape,
        vec![256, 256]
    );
    let dec = ModelConfig::preset(Arch::Dec, "small", 500).unwrap();
    let shapes = param_shapes(&dec);
    assert_eq!(shapes.last().unwrap().0, "final_norm.weight");
    assert_eq!(shapes[1].0, "layers.0.attn_norm.weight");
    assert_eq!(
        shapes[3],
        ("layers.0.attn.k_proj.weight".to_string(), vec![256, 256])
    );
}

#[test]
fn init_is_deterministic_and_scaled() {
    let config = ModelConfig::preset(Arch::Dec, "small", 500).unwrap();
    let a = ParamStore::init(&config, 42);
    assert_eq!(a, ParamStore::init(&config, 42));
    assert_ne!(a, ParamStore::init(&config, 43));
    let rms = |name: &str| {
        let t = &a.get(name).unwrap().data;
        (t.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / t.len() as f64).sqrt()
    };
    assert!((rms("embed_tokens.weight") - 1.0 / 16.0).abs() < 0.01);
    assert!((rms("layers.0.attn.q_proj.weight") - 1.0 / 16.0).abs() < 0.01);
    assert!((rms("layers.0.mlp.down_proj.weight") - 1.0 / 32.0 / 8f64.sqrt()).abs() < 0.005);
    assert!(a
        .get("layers.3.mlp_norm.weight")
        .unwrap()
        .data
        .iter()
        .all(|&g| g == 1.0));
}

#[test]
fn flops_follow_the_written_formula() {
    let dec = ModelConfig::preset(Arch::Dec, "150m", 32768).unwrap();
    let t = StackTokens::packed(&dec, 2, 2048, 1024);
    assert_eq!(t.decoder_tokens, 2 * 2047);
    assert_eq!(t.scored_tokens, 2 * 2047);
    let counts = dec.stack_param_counts();
    let per_token = 6.0 * (counts.decoder + counts.embedding) as f64 + 12.0 * 8.0 * 1024.0 * 2047.0;
    let flops = training_flops(&dec, &t);
    assert!((flops / (per_token * 4094.0) - 1.0).abs() < 1e-12);
    // About 6 × params × tokens plus the attention term.
    assert!(flops > 6.0 * dec.param_count() as f64 * 4094.0);

    let red = ModelConfig::preset(Arch::Red, "150m", 32768).unwrap();
    let t = StackTokens::packed(&red, 1, 2048, 1024);
    assert_eq!((t.encoder_tokens, t.decoder_tokens), (1024, 1024));
    let c = red.stack_param_counts();
    let expected = 6.0 * c.encoder as f64 * 1024.0
        + 6.0 * (c.decoder + c.embedding) as f64 * 1024.0
        + 12.0 * 1024.0 * (3.0 * 1024.0 * 1024.0 + 3.0 * 2.0 * 1024.0 * 1024.0);
    assert!((training_flops(&red, &t) / expected - 1.0).abs() < 1e-12);

    // Finetuning rows: only target tokens get logits.
    let mut rng = SplitMix64::new(0);
    let batch = make_batch(&mut rng, 100, 8, &[(8, 3), (5, 2)], 0);
    let t = StackTokens::from_batch(&dec, &batch, &StepOptions::default());
    assert_eq!(
        (t.decoder_tokens, t.scored_tokens, t.decoder_self_pairs),
        (11, 8, 49 + 16)
    );
}

#[test]
fn forward_backward_is_bitwise_identical_across_thread_counts() {
    for arch in [Arch::Dec, Arch::Red] {
        // Large enough that every product and the logits split into several tasks.
        let mut config = ModelConfig::preset(arch, "tiny", 1300).unwrap();
        config.d_ffn = 128;
        let params = ParamStore::init(&config, 9);
        let mut rng = SplitMix64::new(9);
        // Over 256 tokens in every stream: several token chunks per product.
        let rows = [(160, 80), (150, 70), (140, 60), (100, 50)];
        let mut batch = make_batch(&mut rng, 1300, 160, &rows, 0);
        batch.doc_starts = vec![vec![30, 90], vec![], vec![12], vec![70]];
        let options = StepOptions {
            z_loss: 1e-4,
            dropout: 0.1,
            dropout_seed: 77,
            reset_at_doc_boundaries: true,
            bidirectional_prefix: arch == Arch::Dec,
            ..StepOptions::default()
        };
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let mut backend = CpuBackend::new(Some(threads)).unwrap();
            let mut grads = params.zeros_like();
            let stats = backend
                .forward_backward(&config, &params, &batch, &options, &mut grads)
                .unwrap();
            results.push((stats, grads));
        }
        assert_eq!(results[0], results[1], "{arch:?}: 1 vs 2 threads");
        assert_eq!(results[0], results[2], "{arch:?}: 1 vs 3 threads");
        // Dropout: same seed, same result; another seed, another mask.
        let mut backend = CpuBackend::new(Some(2)).unwrap();
        let mut grads = params.zeros_like();
        let other = StepOptions {
            dropout_seed: 78,
            ..options
        };
        let stats = backend
            .forward_backward(&config, &params, &batch, &other, &mut grads)
            .unwrap();
        assert_ne!(stats.loss_sum, results[0].0.loss_sum);
        // forward_loss turns dropout off.
        let eval = backend
            .forward_loss(&config, &params, &batch, &options)
            .unwrap();
        let no_dropout = StepOptions {
            dropout: 0.0,
            ..options
        };
        let mut grads = params.zeros_like();
        let plain = backend
            .forward_backward(&config, &params, &batch, &no_dropout, &mut grads)
            .unwrap();
        assert_eq!(eval, plain);
    }
}

#[test]
fn bad_batches_and_params_are_rejected_with_a_reason() {
    let config = ModelConfig::preset(Arch::Red, "tiny", 50).unwrap();
    let params = ParamStore::init(&config, 0);
    let mut backend = CpuBackend::new(Some(1)).unwrap();
    let mut rng = SplitMix64::new(0);
    let options = StepOptions::default();
    let mut batch = make_batch(&mut rng, 50, 6, &[(6, 0)], 0);
    let err = backend
        .forward_loss(&config, &params, &batch, &options)
        .unwrap_err();
    assert!(
        matches!(err, BackendError::BadBatch(ref m) if m.contains("prefix_len")),
        "{err}"
    );
    batch.prefix_len[0] = 2;
    batch.tokens[3] = 50;
    let err = backend
        .forward_loss(&config, &params, &batch, &options)
        .unwrap_err();
    assert!(err.to_string().contains("token 3"), "{err}");
    batch.tokens[3] = 1;
    batch.length[0] = 7;
    assert!(backend
        .forward_loss(&config, &params, &batch, &options)
        .is_err());
    batch.length[0] = 6;
    let dec = ModelConfig::preset(Arch::Dec, "tiny", 50).unwrap();
    let err = backend
        .forward_loss(&dec, &params, &batch, &options)
        .unwrap_err();
    assert!(matches!(err, BackendError::BadModel(_)), "{err}");
    backend
        .forward_loss(&config, &params, &batch, &options)
        .unwrap();
}
