//! `redpack generate`: text from a checkpoint (`redpack_trainer::generate`), through the
//! tokenizer the checkpoint was trained with.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use redpack_trainer::checkpoint;
use redpack_trainer::generate::{open_model, Sampling};
use redpack_trainer::lm::{GenerateRequest, LanguageModel};
use serde::Deserialize;

use super::checkpoint_model;
use crate::cli::generate::GenerateArgs;

/// The most prompts `--batch` may decode together.
const MAX_BATCH: usize = 4096;

/// One line of `--prompts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: String,
    #[serde(default)]
    stop: Vec<String>,
}

/// A prompt and where it came from, for errors.
struct Prompt {
    text: String,
    stop: Vec<String>,
    place: String,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let options = checkpoint_model::open_options(&args.model, args.batch, args.max_len)?;
    if !(1..=MAX_BATCH).contains(&args.batch) {
        bail!(
            "--batch must be in [1, {MAX_BATCH}] prompts, got {}",
            args.batch
        );
    }
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::TopP {
            temperature,
            top_p: args.top_p.unwrap_or(1.0),
            seed: args.seed.unwrap_or(0),
        },
    };
    sampling.validate().map_err(|e| anyhow!("--{e}"))?;
    let prompts = match (&args.prompt, &args.prompts) {
        (Some(text), _) => vec![Prompt {
            text: text.clone(),
            stop: Vec::new(),
            place: "--prompt".into(),
        }],
        (None, Some(path)) => read_prompts(path)?,
        (None, None) => bail!("give --prompt TEXT or --prompts FILE.jsonl"),
    };
    let dir = checkpoint::resolve(&args.checkpoint).context("cannot open the checkpoint")?;
    let meta = checkpoint::load_meta(&dir)?;
    let tokenizer = checkpoint_model::load_tokenizer(&dir, &meta, args.model.tokenizer.as_deref())?;
    let encode = |text: &str| -> anyhow::Result<Vec<u32>> {
        Ok(tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("cannot encode: {e}"))?
            .get_ids()
            .to_vec())
    };
    let mut requests = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let ids = encode(&p.text).with_context(|| p.place.clone())?;
        if ids.is_empty() {
            bail!("{}: the prompt is empty (no tokens)", p.place);
        }
        if ids.len() >= args.max_len {
            bail!(
                "{}: the prompt is {} tokens; --max-len {} leaves no room to generate",
                p.place,
                ids.len(),
                args.max_len
            );
        }
        let stop = p
            .stop
            .iter()
            .map(|s| encode(s))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| p.place.clone())?;
        requests.push(GenerateRequest {
            prompt: ids,
            max_new_tokens: args.max_new_tokens,
            stop,
        });
    }
    let mut model = open_model(&dir, &options).context("cannot start generation")?;
    eprintln!("{}", model.device_note);
    eprintln!("{}", model.describe());
    let outputs = model
        .generate(&requests, &sampling)
        .map_err(|e| anyhow!("{e}"))
        .context("generation failed")?;
    let mut out = io::stdout().lock();
    for (i, ((p, request), generated)) in prompts.iter().zip(&requests).zip(&outputs).enumerate() {
        let completion = tokenizer
            .decode(&generated.tokens, false)
            .map_err(|e| anyhow!("cannot decode the output of {}: {e}", p.place))?;
        if args.json {
            let line = serde_json::json!({
                "index": i,
                "prompt": p.text,
                "completion": completion,
                "prompt_tokens": request.prompt.len(),
                "tokens": generated.tokens,
                "stop": generated.stop.name(),
            });
            writeln!(out, "{line}")?;
        } else {
            if prompts.len() > 1 {
                writeln!(
                    out,
                    "--- {} ({} tokens, stop: {})",
                    p.place,
                    generated.tokens.len(),
                    generated.stop.name()
                )?;
            }
            writeln!(out, "{completion}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The prompts of a JSON Lines file; a bad line is an error naming it.
fn read_prompts(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the prompts", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let place = format!("{}:{}", path.display(), i + 1);
        let parsed: PromptLine = serde_json::from_str(line).map_err(|e| {
            anyhow!("{place}: expected {{\"prompt\": \"...\", \"stop\": [\"...\"]}}: {e}")
        })?;
        prompts.push(Prompt {
            text: parsed.prompt,
            stop: parsed.stop,
            place,
        });
    }
    if prompts.is_empty() {
        bail!("{}: no prompt in the file", path.display());
    }
    Ok(prompts)
}
