//! The trainer's integration tests, in one binary (one link instead of one per file). Each
//! module is one area; tests are named `<module>::<test>`, so `cargo test -p redpack-trainer
//! --test suite cuda_model::` runs one area.
//!
//! The tests share this process: the CUDA tests load the CPU emulation of a GPU once for all of
//! them (where no driver is), and no test changes the environment or the current directory.
//! `cuda_model::steps_stay_inside_their_buffers_under_addresssanitizer` runs steps in a child
//! process of this binary, which needs the sanitizer's runtime preloaded.

mod cuda_support;
mod model_support;
mod train_common;

mod attention_locality;
mod cuda_adafactor;
mod cuda_attention;
mod cuda_emulated;
mod cuda_kernels;
mod cuda_model;
mod cuda_train;
mod eval_grid;
mod flops_mixture;
mod generate;
mod generate_cuda;
mod model_config;
mod model_gradcheck;
mod model_layers;
mod model_masks;
mod model_overfit;
mod study;
mod tasks;
mod train_configs;
mod train_data;
mod train_health;
mod train_optim;
mod train_overrides;
mod train_run;
mod train_validate;
