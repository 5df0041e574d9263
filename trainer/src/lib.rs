//! redpack-trainer: RedLLM (encoder-decoder, prefix LM) and DecLLM (decoder-only, causal LM)
//! trained directly from redpack corpora.
//!
//! Layout: `config` (model shapes and presets), `params` (named f32 tensors in checkpoint order),
//! `batch` (what a training step consumes), `backend` (the seam between the model math and the
//! device: a trait for implementers, one implementation per device).

pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod flops;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod run;
pub mod schedule;
