//! The CLI's integration tests, one binary: each module runs the built `redpack`
//! (`CARGO_BIN_EXE_redpack`) on fixtures from the repository's `tests/fixtures` and on
//! generated inputs. Every test works in its own temporary directory and passes paths and
//! environment to the child process explicitly, so the tests run side by side in one process.

mod analyze_attention;
mod build_corpus;
mod cli_inspect;
mod common;
mod encoder;
mod eval_grid;
mod eval_split;
mod eval_tasks;
mod export;
mod failure;
mod fetch;
mod generate;
mod stages;
mod study;
mod synth;
mod train_cuda;
mod train_failure;
mod train_parallel;
