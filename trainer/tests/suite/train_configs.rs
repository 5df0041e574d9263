//! The recipes in `trainer/configs/` parse, resolve, and carry the paper's numbers.

use std::path::{Path, PathBuf};

use redpack_trainer::config::Arch;
use redpack_trainer::run::{BatchSize, Mode, Recipe, TrainSettings};
use redpack_trainer::schedule::Schedule;

fn resolve(name: &str) -> TrainSettings {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let recipe = Recipe::from_toml(&text, name).unwrap();
    TrainSettings::resolve(
        recipe,
        PathBuf::from("data"),
        PathBuf::from("out"),
        None,
        false,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_recipe_resolves() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 12, "{names:?}");
    for name in names {
        let s = resolve(&name);
        let arch = if name.starts_with("redllm") {
            Arch::Red
        } else {
            Arch::Dec
        };
        let mode = if name.contains("pretrain") {
            Mode::Pretrain
        } else {
            Mode::Finetune
        };
        assert_eq!((s.arch, s.mode), (arch, mode), "{name}");
    }
}

#[test]
fn paper_pretraining_recipe() {
    let s = resolve("redllm-150m-pretrain.toml");
    assert_eq!(s.steps, 400_000);
    assert_eq!(s.batch, BatchSize::Sequences(2048));
    assert_eq!(s.objective.z_loss, 1e-4);
    assert_eq!(s.objective.dropout, 0.0);
    assert!(!s.optimizer.factored);
    assert_eq!(s.optimizer.decay_rate, 0.8);
    assert_eq!(s.optimizer.clipping_threshold, Some(1.0));
    assert_eq!(s.optimizer.beta1, None);
    assert_eq!(
        s.schedule,
        Schedule::WarmupCosine {
            warmup_steps: 2000,
            peak: 0.01,
            end: 0.001
        }
    );
}

#[test]
fn paper_finetuning_recipe() {
    let s = resolve("decllm-1b-finetune.toml");
    assert_eq!(s.steps, 190_000);
    assert_eq!(s.batch, BatchSize::Sequences(1024));
    assert_eq!(s.objective.z_loss, 0.0);
    assert_eq!(s.objective.dropout, 0.05);
    assert_eq!(s.schedule, Schedule::Constant { lr: 0.001 });
    assert!(
        resolve("decllm-biattn-150m-finetune.toml")
            .objective
            .bidirectional_prefix
    );
}

#[test]
fn flags_override_the_recipe() {
    let file = Recipe::from_toml(
        "arch = \"dec\"\nmode = \"pretrain\"\nbatch = 64\nsteps = 10\n",
        "f",
    )
    .unwrap();
    let flags = Recipe {
        batch_tokens: Some(4096),
        steps: Some(20),
        ..Recipe::default()
    };
    let s =
        TrainSettings::resolve(file.overlay(flags), "d".into(), "o".into(), None, false).unwrap();
    assert_eq!(s.steps, 20);
    assert_eq!(s.batch, BatchSize::Tokens(4096));
    assert_eq!(s.rows(2048).unwrap(), (2, 2));
    assert!(Recipe::from_toml("stepz = 3\n", "f")
        .unwrap_err()
        .to_string()
        .contains("stepz"));
    let err =
        TrainSettings::resolve(Recipe::default(), "d".into(), "o".into(), None, false).unwrap_err();
    assert!(err.to_string().contains("--arch"), "{err}");
}
