//! FLOPs in both conventions, counted by hand for small models, and mixture sampling: realized
//! shares within a binomial tolerance, an epoch per group, exact resume, key matching and its
//! errors, and a training run that logs the shares and resumes bitwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redpack_schemas::{
    CorpusInfo, CorpusWriter, Counts, ExampleMeta, Layout, PackingStats, TokenizerInfo,
    WriterOptions, DEFAULT_MAX_SHARD_TOKENS,
};
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::batch::{Batch, StepOptions};
use redpack_trainer::checkpoint;
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::data::{
    Cursor, DataError, ExampleSource, Loader, LoaderOptions, MemorySource, Mixture, MixturePlan,
    MixtureState, Order, OwnedExample,
};
use redpack_trainer::eval::{EvalJob, EvalOptions};
use redpack_trainer::flops::{
    forward_flops, inference_flops, inference_flops_per_example, paper_training_flops,
    training_flops, StackTokens,
};
use redpack_trainer::metrics::{read_metrics, Quiet, StepMetrics, METRICS_FILE};
use redpack_trainer::run::{DataRecipe, Mode, Recipe, TrainRun, TrainSettings};
use redpack_trainer::schedule::Schedule;

// ---------------------------------------------------------------------------------------------
// FLOPs

/// d_model 4, d_ffn 6, one head of 2 (d_attn 2), vocabulary 10.
///
/// From the parameter shapes: an attention block is its norm gain (4), Q, K, V `[2, 4]` (24)
/// and O `[4, 2]` (8), 36 in all; an FFN block its norm gain (4), gate, up `[6, 4]` and down
/// `[4, 6]` (72), 76 in all; a final norm 4; the embedding `[10, 4]` 40.
fn small(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 10,
        d_model: 4,
        d_ffn: 6,
        n_heads: 1,
        head_dim: 2,
        layers: if arch == Arch::Dec { 2 } else { 0 },
        encoder_layers: if arch == Arch::Red { 1 } else { 0 },
        decoder_layers: if arch == Arch::Red { 1 } else { 0 },
        rope_base: 10000.0,
        norm_eps: 1e-6,
    }
}

fn batch(rows: &[(usize, usize)]) -> Batch {
    let seq = rows.iter().map(|r| r.0).max().unwrap_or(0);
    Batch {
        rows: rows.len(),
        seq,
        tokens: vec![2; rows.len() * seq],
        prefix_len: rows.iter().map(|r| r.1).collect(),
        length: rows.iter().map(|r| r.0).collect(),
        doc_starts: vec![Vec::new(); rows.len()],
        source: vec!["s".to_string(); rows.len()],
    }
}

#[test]
fn redllm_flops_by_hand_with_cross_kv_over_encoder_tokens() {
    let config = small(Arch::Red);
    // Encoder: 1 × (36 + 76) + 4 = 116. Decoder: 1 × (2 × 36 + 76) + 4 = 152, of which the
    // cross-attention K and V are 2 × [2, 4] = 16.
    let counts = config.stack_param_counts();
    assert_eq!(
        (counts.encoder, counts.decoder, counts.embedding),
        (116, 152, 40)
    );
    assert_eq!(config.cross_kv_params(), 16);

    // One row of 7 tokens split at k = 5: the encoder reads 5 tokens, the decoder m = 2; pairs
    // 25 (encoder), 4 (decoder self), 10 (cross).
    let t = StackTokens::from_batch(&config, &batch(&[(7, 5)]), &StepOptions::default());
    // Detailed: 6·116·5 + 6·(152−16)·2 + 6·16·5 + 6·40·2 + 12·2·(25 + 4 + 10)
    //         = 3480 + 1632 + 480 + 480 + 936 = 7008.
    assert_eq!(training_flops(&config, &t), 7008.0);
    assert_eq!(forward_flops(&config, &t), 2336.0);
    // Counting the cross K/V with the decoder's 2 tokens instead would give 6720: k ≠ m tells.
    assert_ne!(training_flops(&config, &t), 6720.0);
    // The paper's 6·N·D: 6·116·5 + 6·152·2 = 3480 + 1824 = 5304.
    assert_eq!(paper_training_flops(&config, &t), 5304.0);
    // Inference: 2·116·5 + 2·136·2 + 2·16·5 = 1160 + 544 + 160 = 1864.
    assert_eq!(inference_flops(&config, &t), 1864.0);
    assert_eq!(inference_flops_per_example(&config, 7, 5), 1864.0);

    // Two rows, (7, 5) and (4, 1): T_enc 6, T_dec 5, pairs 26 / 13 / 13.
    let t = StackTokens::from_batch(&config, &batch(&[(7, 5), (4, 1)]), &StepOptions::default());
    // 6·116·6 + 6·136·5 + 6·16·6 + 6·40·5 + 12·2·(26 + 13 + 13)
    //   = 4176 + 4080 + 576 + 1200 + 1248 = 11280.
    assert_eq!(training_flops(&config, &t), 11280.0);
    // 6·116·6 + 6·152·5 = 4176 + 4560 = 8736.
    assert_eq!(paper_training_flops(&config, &t), 8736.0);
    // 2·116·6 + 2·136·5 + 2·16·6 = 1392 + 1360 + 192 = 2944.
    assert_eq!(inference_flops(&config, &t), 2944.0);
    // Per example: the (4, 1) row alone is 2·116·1 + 2·136·3 + 2·16·1 = 232 + 816 + 32 = 1080.
    assert_eq!(inference_flops_per_example(&config, 4, 1), 1080.0);
}

#[test]
fn decllm_flops_by_hand() {
    let config = small(Arch::Dec);
    // 2 × (36 + 76) + 4 = 228; no cross-attention.
    let counts = config.stack_param_counts();
    assert_eq!(
        (counts.encoder, counts.decoder, counts.embedding),
        (0, 228, 40)
    );
    assert_eq!(config.cross_kv_params(), 0);
    // A finetuning row of 7 tokens with a 3-token prompt: the stack reads 6 tokens, 4 targets
    // are scored, 36 pairs per layer.
    let t = StackTokens::from_batch(&config, &batch(&[(7, 3)]), &StepOptions::default());
    // Detailed: 6·228·6 + 6·40·4 + 12·2·2·36 = 8208 + 960 + 1728 = 10896.
    assert_eq!(training_flops(&config, &t), 10896.0);
    assert_eq!(forward_flops(&config, &t), 3632.0);
    // Paper: 6·228·6 = 8208. Inference: 2·228·6 = 2736.
    assert_eq!(paper_training_flops(&config, &t), 8208.0);
    assert_eq!(inference_flops(&config, &t), 2736.0);
    assert_eq!(inference_flops_per_example(&config, 7, 3), 2736.0);
}

// ---------------------------------------------------------------------------------------------
// Mixture: plans over in-memory sources

/// `(source, examples)` in blocks, one example per index; each example's first token is its
/// index (mod 40) so that rows are told apart.
fn memory(sources: &[(&str, usize)]) -> MemorySource {
    let mut examples = Vec::new();
    for (name, n) in sources {
        for _ in 0..*n {
            let i = examples.len() as u32;
            examples.push(OwnedExample {
                tokens: vec![2 + i % 40, 3, 4, 5],
                prefix_len: 2,
                source: name.to_string(),
                doc_starts: Vec::new(),
            });
        }
    }
    MemorySource { examples }
}

fn flan_mixture() -> Mixture {
    Mixture::new([
        ("flan", 0.4),
        ("t0", 0.32),
        ("niv2", 0.2),
        ("cot", 0.05),
        ("dialog", 0.03),
    ])
}

/// Sources of very different sizes, so that uniform sampling would be far from the weights.
const SOURCES: [(&str, usize); 7] = [
    ("flan_zsopt", 50),
    ("flan_fsnoopt", 30),
    ("t0_zsopt", 20),
    ("niv2_zsnoopt", 200),
    ("cot_zsopt", 5),
    ("cot_fsopt", 3),
    ("dialog_zsopt", 7),
];

#[test]
fn realized_shares_match_the_weights_within_five_sigma() {
    let source = memory(&SOURCES);
    let plan = Arc::new(MixturePlan::build(&source, &flan_mixture()).unwrap());
    let keys: Vec<&str> = plan.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(keys, ["cot", "dialog", "flan", "niv2", "t0"]);
    let cot = &plan.groups[0];
    assert_eq!(cot.sources, ["cot_fsopt", "cot_zsopt"]);
    assert_eq!(cot.examples(), 8);
    assert!(plan.unused_keys.is_empty());

    let draws = 200_000u64;
    let mut state = MixtureState::new(plan.clone(), 11);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..draws {
        let index = state.next_index();
        let name = source.source_name(index).unwrap();
        let key = flan_mixture().key_for(&name).unwrap().to_string();
        *counts.entry(key).or_default() += 1;
    }
    assert_eq!(state.taken(), counts);
    for (key, weight) in flan_mixture().weights {
        // The weights sum to 1; the count is binomial(draws, weight).
        let sigma = (weight * (1.0 - weight) / draws as f64).sqrt();
        let realized = counts[&key] as f64 / draws as f64;
        assert!(
            (realized - weight).abs() < 5.0 * sigma,
            "{key}: realized {realized}, weight {weight}, 5 sigma = {}",
            5.0 * sigma
        );
        assert_eq!(state.proportions()[&key], realized);
    }
}

#[test]
fn each_group_is_drawn_in_epochs_of_its_examples() {
    let source = memory(&SOURCES);
    let plan = Arc::new(MixturePlan::build(&source, &flan_mixture()).unwrap());
    let mut state = MixtureState::new(plan.clone(), 3);
    let mut by_group: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..20_000 {
        let index = state.next_index();
        let name = source.source_name(index).unwrap();
        let key = flan_mixture().key_for(&name).unwrap().to_string();
        by_group.entry(key).or_default().push(index);
    }
    for group in &plan.groups {
        let drawn = &by_group[&group.key];
        let n = group.examples() as usize;
        assert!(drawn.len() >= 3 * n, "{}: {} draws", group.key, drawn.len());
        // Every full epoch of a group visits each of its examples once, in a fresh order.
        let epochs: Vec<Vec<u64>> = drawn.chunks(n).take(3).map(|c| c.to_vec()).collect();
        for epoch in &epochs {
            let mut sorted = epoch.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), n, "{}", group.key);
            for &i in epoch {
                assert_eq!(
                    flan_mixture()
                        .key_for(&source.source_name(i).unwrap())
                        .unwrap(),
                    group.key
                );
            }
        }
        if n > 2 {
            assert_ne!(epochs[0], epochs[1], "{}", group.key);
        }
    }
}

#[test]
fn a_state_restored_from_its_draw_count_continues_the_stream() {
    let source = memory(&SOURCES);
    let plan = Arc::new(MixturePlan::build(&source, &flan_mixture()).unwrap());
    let mut straight = MixtureState::new(plan.clone(), 5);
    let all: Vec<u64> = (0..5000).map(|_| straight.next_index()).collect();
    for cut in [0u64, 1, 999, 2500, 4999] {
        let mut restored = MixtureState::at(plan.clone(), 5, cut);
        let tail: Vec<u64> = (cut..5000).map(|_| restored.next_index()).collect();
        assert_eq!(tail, all[cut as usize..], "cut at {cut}");
    }
    // Another seed gives another stream.
    let mut other = MixtureState::new(plan, 6);
    let other: Vec<u64> = (0..100).map(|_| other.next_index()).collect();
    assert_ne!(other, all[..100]);
}

fn loader_indices(
    source: MemorySource,
    plan: Arc<MixturePlan>,
    start: Cursor,
    batches: usize,
) -> Vec<(Vec<u64>, Cursor)> {
    let options = LoaderOptions {
        mixture: Some(plan),
        ..LoaderOptions::new(4, Order::Shuffled { seed: 9 }, 0)
    };
    let mut loader = Loader::spawn(Box::new(source), options, start).unwrap();
    (0..batches)
        .map(|_| {
            let b = loader.next_batch().unwrap().unwrap();
            (b.indices, b.cursor)
        })
        .collect()
}

#[test]
fn the_loader_resumes_a_mixture_exactly_from_a_cursor() {
    let source = memory(&SOURCES);
    let n = source.len();
    let plan = Arc::new(MixturePlan::build(&source, &flan_mixture()).unwrap());
    // 315 examples, 4 per batch: 200 batches cross two epochs' worth of draws.
    let straight = loader_indices(source.clone(), plan.clone(), Cursor::default(), 200);
    let cursor = straight[99].1;
    assert_eq!(cursor.epoch * n + cursor.position, 400);
    let resumed = loader_indices(source.clone(), plan.clone(), cursor, 100);
    assert_eq!(resumed, straight[100..]);
    // The loader's order is the mixture stream under the order's seed.
    let mut state = MixtureState::new(plan.clone(), 9);
    let expect: Vec<u64> = (0..800).map(|_| state.next_index()).collect();
    let got: Vec<u64> = straight.iter().flat_map(|b| b.0.clone()).collect();
    assert_eq!(got, expect);
    // A plan built over another source is refused.
    let smaller = memory(&SOURCES[..3]);
    let options = LoaderOptions {
        mixture: Some(plan),
        ..LoaderOptions::new(4, Order::Shuffled { seed: 9 }, 0)
    };
    let err = Loader::spawn(Box::new(smaller), options, Cursor::default())
        .err()
        .unwrap();
    assert!(matches!(err, DataError::Mixture { .. }), "{err}");
}

#[test]
fn a_source_without_a_weight_is_an_error_naming_it_unless_a_default_is_given() {
    let source = memory(&[("flan_zsopt", 4), ("wiki_dump", 3), ("t0_zsopt", 2)]);
    let err = MixturePlan::build(&source, &Mixture::new([("flan", 0.5), ("t0", 0.5)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`wiki_dump` (3 examples)"), "{err}");
    assert!(!err.contains("flan_zsopt"), "{err}");

    let plan = MixturePlan::build(
        &source,
        &Mixture::new([("flan", 0.5), ("t0", 0.3), ("default", 0.2)]),
    )
    .unwrap();
    let default = plan.groups.iter().find(|g| g.key == "default").unwrap();
    assert_eq!(default.sources, ["wiki_dump"]);
    assert_eq!(default.examples(), 3);

    // Weights must be numbers >= 0, not all 0.
    for bad in [
        Mixture::new([("flan", -0.1), ("default", 1.0)]),
        Mixture::new([("flan", f64::NAN), ("default", 1.0)]),
        Mixture::new([("flan", 0.0), ("default", 0.0)]),
        Mixture::default(),
    ] {
        assert!(MixturePlan::build(&source, &bad).is_err(), "{bad:?}");
    }
}

#[test]
fn exact_names_win_over_prefixes_and_absent_keys_are_reported() {
    let mixture = Mixture::new([
        ("cot", 0.05),
        ("cot_fsopt", 0.01),
        ("niv2", 0.2),
        ("dialog", 0.03),
    ]);
    assert_eq!(mixture.key_for("cot_fsopt"), Some("cot_fsopt"));
    assert_eq!(mixture.key_for("cot_zsopt"), Some("cot"));
    assert_eq!(mixture.key_for("cot"), Some("cot"));
    // The prefix is the part before the first `_`, whole.
    assert_eq!(mixture.key_for("cotx_zsopt"), None);
    assert_eq!(mixture.key_for("niv2x"), None);
    assert_eq!(mixture.key_for("niv2_fs_noopt"), Some("niv2"));

    let source = memory(&[("cot_zsopt", 10), ("cot_fsopt", 10), ("niv2_zsopt", 10)]);
    let plan = MixturePlan::build(&source, &mixture).unwrap();
    let shares: Vec<(&str, f64)> = plan
        .groups
        .iter()
        .map(|g| (g.key.as_str(), g.share))
        .collect();
    // Normalized over the keys present: 0.05 + 0.01 + 0.2 = 0.26.
    let expect = [
        ("cot", 0.05 / 0.26),
        ("cot_fsopt", 0.01 / 0.26),
        ("niv2", 0.2 / 0.26),
    ];
    assert_eq!(shares.len(), 3);
    for ((k, s), (ek, es)) in shares.iter().zip(expect) {
        assert_eq!(*k, ek);
        assert!((s - es).abs() < 1e-12, "{k}: {s} vs {es}");
    }
    assert_eq!(plan.unused_keys, ["dialog"]);
    assert!(plan
        .describe()
        .iter()
        .any(|l| l.contains("no source in the corpus for: dialog")));
}

/// The source names build-corpus gives FLAN's published exports (`<collection>_<zs|fs>
/// <opt|noopt>`, from the Parquet folders `<name>_data/` and the JSONL files
/// `<collection>_<zs|fs>_<opt|noopt>_train.jsonl.gz`) all fall under the paper's five weights.
#[test]
fn every_published_flan_source_has_a_weight_in_the_recipes() {
    let mut names = Vec::new();
    for collection in ["flan", "t0", "niv2", "cot", "dialog"] {
        for kind in ["zsopt", "zsnoopt", "fsopt", "fsnoopt"] {
            names.push((format!("{collection}_{kind}"), collection));
        }
    }
    let recipe = resolve_recipe("redllm-150m-finetune.toml");
    let mixture = recipe
        .mixture
        .expect("the 150m finetuning recipe sets [data.mixture]");
    assert_eq!(mixture, flan_mixture());
    for (name, collection) in &names {
        assert_eq!(mixture.key_for(name), Some(*collection), "{name}");
    }
    for name in [
        "redllm-1b-finetune.toml",
        "decllm-150m-finetune.toml",
        "decllm-1b-finetune.toml",
        "decllm-biattn-150m-finetune.toml",
    ] {
        assert_eq!(resolve_recipe(name).mixture, Some(flan_mixture()), "{name}");
    }
    for name in ["redllm-tiny-finetune.toml", "decllm-tiny-finetune.toml"] {
        assert_eq!(resolve_recipe(name).mixture, None, "{name}");
    }
}

fn resolve_recipe(name: &str) -> TrainSettings {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let recipe = Recipe::from_toml(&text, name).unwrap();
    TrainSettings::resolve(recipe, "data".into(), "out".into(), None, false)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn a_mixture_in_a_pretraining_recipe_is_refused() {
    let text = "arch = \"dec\"\nmode = \"pretrain\"\n[data.mixture]\nweb = 1.0\n";
    let recipe = Recipe::from_toml(text, "r").unwrap();
    let err = TrainSettings::resolve(recipe, "d".into(), "o".into(), None, false).unwrap_err();
    assert!(err.to_string().contains("finetuning"), "{err}");
    let text = "arch = \"dec\"\nmode = \"finetune\"\n[data.mixture]\nweb = -1.0\n";
    let recipe = Recipe::from_toml(text, "r").unwrap();
    assert!(TrainSettings::resolve(recipe, "d".into(), "o".into(), None, false).is_err());
}

// ---------------------------------------------------------------------------------------------
// A training run with a mixture

const VOCAB: u32 = 48;

/// An examples corpus with sources of 30, 6 and 12 examples.
fn mixed_examples_corpus(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut writer = CorpusWriter::create(
        dir,
        WriterOptions {
            layout: Layout::Examples {
                max_input_len: 8,
                max_target_len: 5,
            },
            vocab_size: VOCAB,
            max_shard_tokens: DEFAULT_MAX_SHARD_TOKENS,
        },
    )
    .unwrap();
    let sources = [("flan_zsopt", 30u32), ("cot_fsopt", 6), ("t0_zsnoopt", 12)];
    let mut i = 0u32;
    for (name, n) in sources {
        for _ in 0..n {
            let input = 3 + (i % 6) as usize;
            let target = 2 + (i % 4) as usize;
            let tokens: Vec<u32> = (0..(input + target) as u32)
                .map(|j| 2 + (i * 7 + j * (1 + i % 5)) % (VOCAB - 2))
                .collect();
            writer
                .push(
                    &tokens,
                    ExampleMeta {
                        source: name,
                        prefix_len: input as u32,
                        doc_starts: &[],
                        origin: None,
                    },
                )
                .unwrap();
            i += 1;
        }
    }
    writer
        .finish(CorpusInfo {
            tokenizer: TokenizerInfo {
                file: "tokenizer.json".to_string(),
                sha256: "2".repeat(64),
                vocab_size: VOCAB,
                eod_id: 1,
                pad_id: 0,
                eod_token: "[EOD]".to_string(),
                pad_token: "[PAD]".to_string(),
            },
            build: serde_json::json!({}),
            inputs: Vec::new(),
            counts: Counts::default(),
            sources: BTreeMap::new(),
            packing: PackingStats::default(),
        })
        .unwrap();
    dir.to_path_buf()
}

fn mixture_settings(arch: Arch, data: &Path, out: &Path, steps: u64) -> TrainSettings {
    let recipe = Recipe {
        arch: Some(arch),
        mode: Some(Mode::Finetune),
        size: Some("tiny".to_string()),
        steps: Some(steps),
        batch: Some(4),
        accum: Some(2),
        seed: Some(7),
        checkpoint_every: Some(2),
        schedule: Some(Schedule::Constant { lr: 0.01 }),
        data: DataRecipe {
            mixture: Some(Mixture::new([("flan", 0.5), ("cot", 0.3), ("t0", 0.2)])),
        },
        ..Recipe::default()
    };
    TrainSettings::resolve(recipe, data.to_path_buf(), out.to_path_buf(), None, false).unwrap()
}

fn train(settings: &TrainSettings) -> Vec<StepMetrics> {
    let run = TrainRun::prepare(settings.clone()).unwrap();
    run.run(&mut CpuBackend::new(Some(1)).unwrap(), &mut Quiet)
        .unwrap()
        .metrics
}

fn deterministic(m: &StepMetrics) -> StepMetrics {
    StepMetrics {
        elapsed_s: 0.0,
        tokens_per_s: 0.0,
        ..m.clone()
    }
}

#[test]
fn a_mixture_run_logs_its_shares_and_flops_and_resumes_bitwise() {
    let root = tempfile::tempdir().unwrap();
    let data = mixed_examples_corpus(&root.path().join("flan"));
    for arch in [Arch::Red, Arch::Dec] {
        let straight_dir = root.path().join(format!("{}-straight", arch.name()));
        let straight = train(&mixture_settings(arch, &data, &straight_dir, 6));
        assert_eq!(straight.len(), 6);

        // The same run stopped after step 4, then continued to 6.
        let resumed_dir = root.path().join(format!("{}-resumed", arch.name()));
        train(&mixture_settings(arch, &data, &resumed_dir, 4));
        let mut settings = mixture_settings(arch, &data, &resumed_dir, 6);
        settings.resume = true;
        let tail = train(&settings);
        assert_eq!(tail.first().map(|m| m.step), Some(5));

        let a: Vec<_> = read_metrics(&straight_dir.join(METRICS_FILE)).unwrap();
        let b: Vec<_> = read_metrics(&resumed_dir.join(METRICS_FILE)).unwrap();
        let a: Vec<_> = a.iter().map(deterministic).collect();
        let b: Vec<_> = b.iter().map(deterministic).collect();
        assert_eq!(a, b, "{}: the resumed run differs", arch.name());
        let last = a.last().unwrap();
        // 6 steps of 4 rows = 24 draws, half the 48 examples' worth.
        assert_eq!((last.epoch, last.position), (0, 24));
        let shares = last.mixture.as_ref().expect("the shares are logged");
        let keys: Vec<&str> = shares.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["cot", "flan", "t0"]);
        assert!((shares.values().sum::<f64>() - 1.0).abs() < 1e-12);
        for share in shares.values() {
            assert!(
                ((share * 48.0).round() - share * 48.0).abs() < 1e-9,
                "{share}"
            );
        }
        // Both FLOP counts accumulate, the paper's below the detailed one (no logits, no
        // attention; for RedLLM the K/V term differs too but is small at these lengths).
        let paper: f64 = a.iter().map(|m| m.paper_flops).sum();
        assert!((last.paper_flops_seen - paper).abs() <= 1e-9 * paper);
        assert!(last.paper_flops_seen > 0.0 && last.paper_flops_seen < last.flops_seen);
        let meta =
            checkpoint::load_meta(&checkpoint::latest(&resumed_dir).unwrap().unwrap()).unwrap();
        assert_eq!(meta.paper_flops_seen, last.paper_flops_seen);

        // A resume with other weights would not continue the same run.
        let mut other = mixture_settings(arch, &data, &resumed_dir, 8);
        other.mixture = Some(Mixture::new([("flan", 0.1), ("cot", 0.1), ("t0", 0.8)]));
        other.resume = true;
        let err = TrainRun::prepare(other).unwrap_err().to_string();
        assert!(err.contains("mixture"), "{err}");

        // Evaluation reports inference FLOPs per example: the mean over the corpus's rows.
        let job = EvalJob::prepare(&straight_dir, &data, EvalOptions::default()).unwrap();
        let model = job.model.clone();
        let report = job
            .run(&mut CpuBackend::new(Some(1)).unwrap(), |_| {})
            .unwrap();
        let (corpus, _) = redpack_trainer::data::open_corpus(&data).unwrap();
        let expect: f64 = (0..corpus.len())
            .map(|i| {
                let ex = ExampleSource::example(&corpus, i).unwrap();
                inference_flops_per_example(&model, ex.tokens.len(), ex.prefix_len)
            })
            .sum::<f64>()
            / corpus.len() as f64;
        assert!(
            (report.inference_flops_per_example / expect - 1.0).abs() < 1e-12,
            "{} vs {expect}",
            report.inference_flops_per_example
        );
        assert!(report.forward_flops_per_example > report.inference_flops_per_example);
    }
}

#[test]
fn a_corpus_source_without_a_weight_stops_the_run_before_any_step() {
    let root = tempfile::tempdir().unwrap();
    let data = mixed_examples_corpus(&root.path().join("flan"));
    let mut settings = mixture_settings(Arch::Dec, &data, &root.path().join("run"), 2);
    settings.mixture = Some(Mixture::new([("flan", 0.5), ("cot", 0.5)]));
    let err = TrainRun::prepare(settings).unwrap_err().to_string();
    assert!(err.contains("`t0_zsnoopt` (12 examples)"), "{err}");
    assert!(!root.path().join("run").join(METRICS_FILE).exists());
}
