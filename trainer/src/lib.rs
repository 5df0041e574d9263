//! redpack-trainer: RedLLM (encoder-decoder, prefix LM) and DecLLM (decoder-only, causal LM)
//! trained directly from redpack corpora.
//!
//! Modules:
//! - `config`: model configuration, the two architectures and their sizes;
//! - `params`: the parameters, named f32 tensors in checkpoint order, and their initialization;
//! - `batch`: a batch as the backends consume it, with the step's options and loss sums;
//! - `model`: the device-independent model plan (token streams, attention rows, stack plans,
//!   RoPE tables, batch validation) that every backend runs;
//! - `backend`: the seam between the model math and a device (the `Backend` trait,
//!   `DeviceChoice`, `Precision`, `open_backend`) with the CPU reference and the CUDA backend;
//! - `optim`: Adafactor and global gradient-norm clipping;
//! - `schedule`: learning-rate schedules;
//! - `data`: examples from a corpus in a seeded order, assembled into batches on a background
//!   thread;
//! - `dist`: data-parallel training over NCCL (launch variables, rendezvous, liveness);
//! - `run`: the training loop (settings, preparation, steps, logging, checkpoints);
//! - `checkpoint`: saving and loading a run's parameters, optimizer state and settings;
//! - `eval`: loss and perplexity of a checkpoint on a corpus;
//! - `export`: a checkpoint as a Hugging Face model directory, a corpus as a Megatron-LM indexed
//!   dataset;
//! - `generate`: a checkpoint opened for decoding: KV-cache decoding on the CPU and CUDA,
//!   sampling, and the `lm` interface over it;
//! - `lm`: the interface downstream evaluation uses (log-likelihood of continuations, greedy
//!   generation);
//! - `analysis`: attention analysis (local attention probability, heat maps) on the CPU;
//! - `tasks`: the paper's downstream tasks (readers, prompts, few-shot draws, scoring) through
//!   `lm`;
//! - `study`: the paper's comparisons from one study file (grid, resume, fits, findings, report);
//! - `metrics`: the per-step metrics record and its observers;
//! - `flops`: training FLOPs per step, counted per stack;
//! - `rng`: the deterministic random numbers (initialization, dropout masks).

pub mod analysis;
pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod export;
pub mod flops;
pub mod generate;
pub mod lm;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod study;
pub mod tasks;
