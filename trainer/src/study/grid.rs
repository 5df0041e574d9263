//! Grid expansion: a study file and the pretraining corpus's shape become named runs, each with
//! the `TrainSettings` an ordinary `redpack train` run directory gets.
//!
//! Names: `pre-<arch>-<size>` for a size's token-budget run, `iso-<arch>-<size>-<budget>` for an
//! isoFLOP run (`<budget>` as `3e12`), `ft-<arch>-<size>` for a finetuning run. Pretraining runs
//! come first, so a finetuning run's checkpoint always exists when the study reaches it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::file::{SizeSpec, Study};
use super::StudyError;
use crate::config::Arch;
use crate::flops::{paper_training_flops, StackTokens};
use crate::run::{EvalRecipe, Mode, ObjectiveRecipe, Recipe, TrainSettings};
use crate::schedule::Schedule;

/// What the grid needs to know of the pretraining corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusShape {
    pub seq_len: usize,
    pub prefix_len: usize,
    pub vocab_size: usize,
}

/// The corpora a study's runs read, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Corpora {
    pub pretrain: PathBuf,
    pub pretrain_eval: PathBuf,
    pub finetune: Option<PathBuf>,
    pub finetune_eval: Option<PathBuf>,
}

/// Which comparison a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunGroup {
    /// A size's run at the token budget (PPL against parameters and FLOPs).
    Scaling,
    /// A run at a FLOPs budget (isoFLOP curves).
    IsoFlop { budget: f64 },
    /// Finetuning from `pre-<arch>-<size>`.
    Finetune,
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub name: String,
    /// `dec`, `red` or `dec-biattn`.
    pub arch: String,
    pub size: String,
    pub group: RunGroup,
    /// The pretraining run a finetuning run starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    pub settings: TrainSettings,
}

impl RunPlan {
    pub fn is_pretrain(&self) -> bool {
        self.group != RunGroup::Finetune
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.settings.out
    }
}

/// The folder of every run under a study's output folder.
pub fn runs_dir(out: &Path) -> PathBuf {
    out.join("runs")
}

/// `3e12` for 3,000,000,000,000: short, exact enough to name a budget.
pub fn budget_name(budget: f64) -> String {
    let text = format!("{budget:e}");
    text.replace("e+", "e")
}

fn arch_of(name: &str) -> Arch {
    match name {
        "red" => Arch::Red,
        _ => Arch::Dec,
    }
}

fn read_recipe(study: &Study, path: &Path, place: &str) -> Result<Recipe, StudyError> {
    let full = study.resolve(path);
    let text = std::fs::read_to_string(&full).map_err(|e| StudyError::Io {
        path: full.clone(),
        message: format!("cannot read the recipe named by {place}: {e}"),
    })?;
    Recipe::from_toml(&text, &full.display().to_string()).map_err(|e| StudyError::Invalid {
        path: study.path.clone(),
        message: format!("{place}: {e}"),
    })
}

/// Every run of the study, pretraining first.
pub fn expand(
    study: &Study,
    corpora: &Corpora,
    shape: CorpusShape,
    out: &Path,
) -> Result<Vec<RunPlan>, StudyError> {
    let f = &study.file;
    let invalid = |message: String| StudyError::Invalid {
        path: study.path.clone(),
        message,
    };
    let runs = runs_dir(out);
    let mut plans = Vec::new();
    for arch in &f.pretrain.archs {
        let place = format!("pretrain.recipes.{arch}");
        let path = f
            .pretrain
            .recipes
            .get(arch)
            .ok_or_else(|| invalid(format!("{place}: no recipe for this architecture")))?;
        let recipe = read_recipe(study, path, &place)?;
        for size in &f.sizes {
            let base = size_layer(study, arch, size, Mode::Pretrain);
            let probe = resolve(recipe.clone(), base.clone(), corpora, &runs, "probe")
                .map_err(|e| invalid(format!("sizes {} ({arch}): {e}", size.name)))?;
            let (rows, _) = probe
                .rows(shape.seq_len)
                .map_err(|e| invalid(format!("sizes {} ({arch}): {e}", size.name)))?;
            let tokens_per_step = rows * shape.seq_len as u64;
            let steps = match (size.steps, size.tokens.or(f.pretrain.tokens)) {
                (Some(steps), _) => steps,
                (None, Some(tokens)) => tokens.div_ceil(tokens_per_step).max(1),
                (None, None) => {
                    return Err(invalid(format!(
                        "sizes {}: no budget: set `steps` or `tokens`",
                        size.name
                    )))
                }
            };
            // A pretraining run of this size: the recipe with the study's layer and `steps`.
            let pretrain_plan = |name: String, steps: u64, group: RunGroup| {
                let settings = finish(
                    study,
                    recipe.clone(),
                    base.clone(),
                    steps,
                    corpora,
                    &runs,
                    &name,
                )?;
                Ok::<_, StudyError>(RunPlan {
                    name,
                    arch: arch.clone(),
                    size: size.name.clone(),
                    group,
                    init_from: None,
                    settings,
                })
            };
            plans.push(pretrain_plan(
                format!("pre-{arch}-{}", size.name),
                steps,
                RunGroup::Scaling,
            )?);
            if f.pretrain.isoflops.is_empty() {
                continue;
            }
            let model = probe
                .model_config(shape.vocab_size)
                .map_err(|e| invalid(format!("sizes {} ({arch}): {e}", size.name)))?;
            let per_step = paper_training_flops(
                &model,
                &StackTokens::packed(&model, rows as usize, shape.seq_len, shape.prefix_len),
            );
            for &budget in &f.pretrain.isoflops {
                let steps = (budget / per_step).round() as u64;
                if steps == 0 {
                    return Err(invalid(format!(
                        "pretrain.isoflops: {budget:e} FLOPs is less than one step of size {} ({arch}: {per_step:.3e} FLOPs a step); raise the budget or drop the size",
                        size.name
                    )));
                }
                plans.push(pretrain_plan(
                    format!("iso-{arch}-{}-{}", size.name, budget_name(budget)),
                    steps,
                    RunGroup::IsoFlop { budget },
                )?);
            }
        }
    }
    if let Some(ft) = &f.finetune {
        let (data, eval) = match (&corpora.finetune, &corpora.finetune_eval) {
            (Some(d), Some(e)) => (d.clone(), e.clone()),
            _ => {
                return Err(invalid(
                    "finetune: the corpora have no examples corpus with a held-out split".into(),
                ))
            }
        };
        for arch in &ft.archs {
            let place = format!("finetune.recipes.{arch}");
            let path = ft
                .recipes
                .get(arch)
                .ok_or_else(|| invalid(format!("{place}: no recipe for this architecture")))?;
            let recipe = read_recipe(study, path, &place)?;
            let from_arch = if arch == "red" { "red" } else { "dec" };
            for size in f
                .sizes
                .iter()
                .filter(|s| ft.sizes.is_empty() || ft.sizes.contains(&s.name))
            {
                let mut layer = size_layer(study, arch, size, Mode::Finetune);
                layer.steps = ft.steps;
                layer.batch = ft.batch;
                layer.checkpoint_every = ft.checkpoint_every;
                layer.eval = EvalRecipe {
                    data: Some(eval.clone()),
                    every: None,
                    rows: ft.eval_rows,
                    keep_best: Some(true),
                };
                if arch == "dec-biattn" {
                    layer.objective.bidirectional_prefix = Some(true);
                }
                let from = format!("pre-{from_arch}-{}", size.name);
                let name = format!("ft-{arch}-{}", size.name);
                let out_dir = runs.join(&name);
                let init = runs.join(&from);
                let mut settings = TrainSettings::resolve(
                    recipe.clone().overlay(layer),
                    data.clone(),
                    out_dir,
                    Some(init),
                    false,
                )
                .map_err(|e| invalid(format!("finetune {name}: {e}")))?;
                if settings.steps == 0 {
                    settings.steps = 1;
                }
                plans.push(RunPlan {
                    name,
                    arch: arch.clone(),
                    size: size.name.clone(),
                    group: RunGroup::Finetune,
                    init_from: Some(from),
                    settings,
                });
            }
        }
    }
    Ok(plans)
}

/// The study's layer over a recipe for one size.
fn size_layer(study: &Study, arch: &str, size: &SizeSpec, mode: Mode) -> Recipe {
    let p = &study.file.pretrain;
    let mut model = size.model.clone();
    if arch_of(arch) == Arch::Dec {
        // A size names both architectures' depths: `layers` is DecLLM's, the stacks RedLLM's.
        model.encoder_layers = None;
        model.decoder_layers = None;
    }
    Recipe {
        arch: Some(arch_of(arch)),
        mode: Some(mode),
        size: Some(size.preset.clone()),
        model,
        batch: if mode == Mode::Pretrain {
            p.batch
        } else {
            None
        },
        checkpoint_every: if mode == Mode::Pretrain {
            p.checkpoint_every
        } else {
            None
        },
        seed: p.seed,
        accum: size.accum,
        objective: ObjectiveRecipe::default(),
        ..Recipe::default()
    }
}

fn resolve(
    recipe: Recipe,
    layer: Recipe,
    corpora: &Corpora,
    runs: &Path,
    name: &str,
) -> Result<TrainSettings, String> {
    TrainSettings::resolve(
        recipe.overlay(layer),
        corpora.pretrain.clone(),
        runs.join(name),
        None,
        false,
    )
    .map_err(|e| e.to_string())
}

/// A pretraining run's settings with its steps, warmup and checkpoint interval fixed.
fn finish(
    study: &Study,
    recipe: Recipe,
    mut layer: Recipe,
    steps: u64,
    corpora: &Corpora,
    runs: &Path,
    name: &str,
) -> Result<TrainSettings, StudyError> {
    layer.steps = Some(steps);
    let mut settings =
        resolve(recipe, layer, corpora, runs, name).map_err(|e| StudyError::Invalid {
            path: study.path.clone(),
            message: format!("run {name}: {e}"),
        })?;
    if let (Some(fraction), Schedule::WarmupCosine { peak, end, .. }) = (
        study.file.pretrain.warmup_fraction,
        settings.schedule.clone(),
    ) {
        settings.schedule = Schedule::WarmupCosine {
            warmup_steps: ((steps as f64 * fraction).round() as u64).max(1),
            peak,
            end,
        };
    }
    // A checkpoint at least at the end; none in between when the interval exceeds the run.
    settings.checkpoint_every = settings.checkpoint_every.min(steps).max(1);
    Ok(settings)
}
