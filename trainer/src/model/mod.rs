//! The model plan both backends run, independent of any device: what a batch becomes before any
//! arithmetic. The CPU and CUDA backends build their work from it, never from each other.
//!
//! - `stream`: the token streams a stack reads (tokens, rows, positions, documents) and the
//!   scored predictions;
//! - `attention`: the attention rows (which keys each row's queries see);
//! - `stack`: the stack plans (blocks in order, their parameter indices, dropout sites);
//! - `rope`: the RoPE tables;
//! - `validate`: the checks a batch and its step options pass before a backend runs them.
//!
//! The parameters themselves (names, shapes and checkpoint order) are `crate::params`.

pub mod attention;
pub mod rope;
pub mod stack;
pub mod stream;
pub mod validate;
