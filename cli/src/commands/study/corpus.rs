//! The corpora of a study: built beforehand (paths in the study file), or built by the study into
//! `OUT/corpus` once (a finished corpus there is reused): the built-in generated sample
//! (`builtin = true`, as `redpack build-corpus` with no inputs) or real inputs
//! (`[corpus.build]`), each with a held-out split of `eval_docs` documents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use redpack::pipeline::config::{FormatChoice, PackConfig};
use redpack::pipeline::{
    build, BuildOptions, BuildSettings, Overrides, PipelineConfig, ProgressSink,
};
use redpack::train_tokenizer::{self, TrainConfig};
use redpack_trainer::data::open_corpus;
use redpack_trainer::study::file::BuildSpec;
use redpack_trainer::study::{Corpora, Study};

use crate::commands::build_corpus::{DEFAULT_SEQ_LEN, DEFAULT_VOCAB, SAMPLE_SEED};
use crate::progress::Bars;

/// The folder of the held-out split inside a built corpus.
const EVAL_SUBDIR: &str = "eval";

fn finished(dir: &Path) -> bool {
    open_corpus(dir).is_ok()
}

fn canonical(path: &Path) -> anyhow::Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("{}: corpus not found", path.display()))
}

/// The study's corpora, building them when the study says so; `true` when the text is generated.
pub fn prepare(
    study: &Study,
    out: &Path,
    threads: Option<usize>,
    quiet: bool,
) -> anyhow::Result<(Corpora, bool)> {
    let c = &study.file.corpus;
    let root = out.join("corpus");
    let eval_docs = c.eval_docs;
    let options = || BuildOptions {
        progress: if quiet {
            None
        } else {
            Some(Arc::new(Bars) as Arc<dyn ProgressSink>)
        },
        resume: false,
        keep_work: false,
        sort_budget: None,
        // OUT/corpus belongs to the study, and a corpus is built there only while it is not
        // finished (a build stopped part-way), so nothing good is replaced.
        overwrite: true,
        allow_empty: false,
    };
    if c.builtin {
        let packed = root.join("packed");
        let examples = root.join("examples");
        if !(finished(&packed) && finished(&examples)) {
            let raw = root.join("raw");
            redpack::sample::write_sample(&raw, SAMPLE_SEED)
                .with_context(|| format!("writing the sample corpus to {}", raw.display()))?;
            let tokenizer =
                train_tokenizer(&root, std::slice::from_ref(&raw), DEFAULT_VOCAB, threads)?;
            let rp = raw.join(redpack::sample::REDPAJAMA_ROOT);
            let flan = raw.join(redpack::sample::FLAN_ROOT);
            let mut overrides = base_overrides(&tokenizer, threads, eval_docs);
            overrides.inputs = vec![rp];
            overrides.format = Some(FormatChoice::Redpajama);
            overrides.seq_len = Some(DEFAULT_SEQ_LEN);
            if !finished(&packed) {
                build_one(PipelineConfig::default(), overrides, &packed, &options())?;
            }
            let mut config = PipelineConfig {
                pack: PackConfig::Examples {
                    max_input_len: 2048,
                    max_target_len: 512,
                },
                ..PipelineConfig::default()
            };
            // As in pipelines/flan.toml: templates make MinHash merge pairs FLAN means to keep.
            config.dedup.near = false;
            let mut overrides = base_overrides(&tokenizer, threads, eval_docs);
            overrides.inputs = vec![flan];
            overrides.format = Some(FormatChoice::Flan);
            if !finished(&examples) {
                build_one(config, overrides, &examples, &options())?;
            }
        }
        let corpora = Corpora {
            pretrain: canonical(&packed)?,
            pretrain_eval: canonical(&packed.join(EVAL_SUBDIR))?,
            finetune: Some(canonical(&examples)?),
            finetune_eval: Some(canonical(&examples.join(EVAL_SUBDIR))?),
        };
        return Ok((corpora, true));
    }
    if let Some(spec) = &c.build {
        let packed = root.join("packed");
        if !finished(&packed) {
            build_from_inputs(study, spec, &root, &packed, threads, eval_docs, &options())?;
        }
        let corpora = Corpora {
            pretrain: canonical(&packed)?,
            pretrain_eval: canonical(&packed.join(EVAL_SUBDIR))?,
            finetune: None,
            finetune_eval: None,
        };
        return Ok((corpora, false));
    }
    let path = |p: &Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
        p.as_ref().map(|p| canonical(&study.resolve(p))).transpose()
    };
    let corpora = Corpora {
        pretrain: path(&c.pretrain)?.context("corpus.pretrain: not set")?,
        pretrain_eval: path(&c.pretrain_eval)?.context("corpus.pretrain_eval: not set")?,
        finetune: path(&c.finetune)?,
        finetune_eval: path(&c.finetune_eval)?,
    };
    Ok((corpora, false))
}

fn base_overrides(tokenizer: &Path, threads: Option<usize>, eval_docs: Option<u64>) -> Overrides {
    Overrides {
        tokenizer: Some(tokenizer.to_path_buf()),
        threads,
        eval_docs,
        ..Overrides::default()
    }
}

fn build_one(
    config: PipelineConfig,
    overrides: Overrides,
    out: &Path,
    options: &BuildOptions,
) -> anyhow::Result<()> {
    let settings = BuildSettings::resolve(config, overrides, out.to_path_buf())?;
    build(&settings, options).with_context(|| format!("building {}", out.display()))?;
    Ok(())
}

fn train_tokenizer(
    root: &Path,
    inputs: &[PathBuf],
    vocab_size: usize,
    threads: Option<usize>,
) -> anyhow::Result<PathBuf> {
    let files = redpack::input::discover(inputs, redpack::input::FormatHint::Auto)?;
    let config = TrainConfig {
        vocab_size,
        ..TrainConfig::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()?;
    let fields = redpack::input::FieldMap::default();
    let tokenizer = pool.install(|| train_tokenizer::train_on_inputs(&files, &fields, &config))?;
    std::fs::create_dir_all(root).with_context(|| format!("{}: cannot create", root.display()))?;
    let path = root.join("tokenizer.json");
    train_tokenizer::save(&tokenizer, &path)?;
    Ok(path)
}

fn build_from_inputs(
    study: &Study,
    spec: &BuildSpec,
    root: &Path,
    packed: &Path,
    threads: Option<usize>,
    eval_docs: Option<u64>,
    options: &BuildOptions,
) -> anyhow::Result<()> {
    let inputs: Vec<PathBuf> = spec.inputs.iter().map(|p| study.resolve(p)).collect();
    let tokenizer = match (&spec.tokenizer, spec.vocab_size) {
        (Some(t), _) => study.resolve(t),
        (None, Some(vocab)) => {
            let on = if inputs.is_empty() {
                vec![spec
                    .data_root
                    .as_ref()
                    .map(|r| study.resolve(r))
                    .context("corpus.build.data_root: needed to train a tokenizer on a data manifest's files")?]
            } else {
                inputs.clone()
            };
            train_tokenizer(root, &on, vocab, threads)?
        }
        (None, None) => anyhow::bail!("corpus.build: give `tokenizer` or `vocab_size`"),
    };
    let mut overrides = base_overrides(&tokenizer, threads, eval_docs);
    overrides.inputs = inputs;
    overrides.data_manifest = spec.data_manifest.as_ref().map(|p| study.resolve(p));
    overrides.data_root = spec.data_root.as_ref().map(|p| study.resolve(p));
    overrides.format = Some(FormatChoice::Redpajama);
    overrides.seq_len = spec.seq_len;
    overrides.eval_seq_len = spec.eval_seq_len;
    build_one(PipelineConfig::default(), overrides, packed, options)
}
