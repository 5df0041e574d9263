//! `redpack export`: a checkpoint as a Hugging Face model directory
//! (`redpack_trainer::export::hf`), a corpus as a Megatron-LM indexed dataset
//! (`redpack_trainer::export::megatron`).

use std::process::ExitCode;

use anyhow::Context;
use redpack_trainer::checkpoint;
use redpack_trainer::export::{hf, megatron, reference};
use serde_json::json;

use crate::cli::export::{ExportArgs, ExportFormat};

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    match args.format {
        ExportFormat::Hf => run_hf(args),
        ExportFormat::Megatron => run_megatron(args),
    }
}

fn run_hf(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.corpus.is_some() {
        anyhow::bail!("--corpus goes with --format megatron; --format hf exports --checkpoint");
    }
    let Some(path) = args.checkpoint.as_deref() else {
        anyhow::bail!("--format hf needs --checkpoint");
    };
    let options = hf::HfOptions {
        out: args.out.clone(),
        tokenizer_corpus: args.tokenizer_corpus.clone(),
        overwrite: args.overwrite,
        verify: !args.no_verify,
    };
    let summary = hf::export_hf(path, &options)
        .with_context(|| format!("cannot export {} to {}", path.display(), args.out.display()))?;
    if let Some(file) = &args.reference {
        let loaded = checkpoint::load_checked(&summary.checkpoint, false, false)?;
        let reference = reference::reference(&loaded)?;
        let mut bytes = serde_json::to_vec_pretty(&reference)?;
        bytes.push(b'\n');
        redpack_schemas::atomic::write_file(file, &bytes)?;
    }
    if args.json {
        let report = json!({
            "format": "hf",
            "checkpoint": summary.checkpoint,
            "out": summary.out,
            "arch": summary.arch.name(),
            "step": summary.step,
            "tensors": summary.tensors,
            "parameters": summary.parameters,
            "files": summary.files,
            "reference": args.reference,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} (step {}, {} parameters) -> {}: {}",
            summary.checkpoint.display(),
            summary.step,
            summary.parameters,
            summary.out.display(),
            summary.files.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_megatron(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.checkpoint.is_some() || args.reference.is_some() || args.tokenizer_corpus.is_some() {
        anyhow::bail!(
            "--format megatron exports --corpus; --checkpoint, --reference and \
             --tokenizer-corpus go with --format hf"
        );
    }
    let Some(corpus) = args.corpus.as_deref() else {
        anyhow::bail!("--format megatron needs --corpus");
    };
    let summary = megatron::export_megatron(corpus, &args.out)
        .with_context(|| format!("cannot export {}", corpus.display()))?;
    let dtype = match summary.dtype_code {
        megatron::DTYPE_UINT16 => "uint16",
        _ => "int32",
    };
    if args.json {
        let report = json!({
            "format": "megatron",
            "corpus": corpus,
            "bin": summary.bin,
            "idx": summary.idx,
            "sequences": summary.sequences,
            "documents": summary.sequences,
            "tokens": summary.tokens,
            "dtype": dtype,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} sequences, {} tokens ({dtype}) -> {} + {}",
            corpus.display(),
            summary.sequences,
            summary.tokens,
            summary.bin.display(),
            summary.idx.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
