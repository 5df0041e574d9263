//! `redpack train-tokenizer`: train a byte-level BPE on the inputs and write tokenizer.json.

use std::process::ExitCode;
use std::time::Instant;

use crate::cli::train_tokenizer::TrainTokenizerArgs;
use crate::commands::build_corpus::format_choice;
use redpack::pipeline::config::FormatChoice;
use redpack::train_tokenizer::{self, TrainConfig};

pub fn run(args: TrainTokenizerArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let hint = args
        .format
        .map(format_choice)
        .unwrap_or(FormatChoice::Auto)
        .hint();
    let files = redpack::input::discover(&args.inputs, hint)?;
    let config = TrainConfig {
        vocab_size: args.vocab_size,
        min_frequency: args.min_frequency,
        max_bytes: args.max_bytes,
        ..TrainConfig::default()
    };
    let pool = crate::commands::build_corpus::thread_pool(args.threads)?;
    let fields = redpack::input::FieldMap::default();
    let tokenizer = pool.install(|| train_tokenizer::train_on_inputs(&files, &fields, &config))?;
    train_tokenizer::save(&tokenizer, &args.out)?;
    println!(
        "trained a {}-entry byte-level BPE ([EOD] = {}, [PAD] = {}) on {} file(s) in {:.1} s: {}",
        tokenizer.get_vocab_size(true),
        tokenizer.token_to_id(&config.eod_token).unwrap_or(0),
        tokenizer.token_to_id(&config.pad_token).unwrap_or(1),
        files.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
