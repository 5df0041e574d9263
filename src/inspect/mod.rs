//! `redpack inspect`: a corpus summarized (text or JSON), examples shown decoded or as ids.
//! Verification itself lives in `redpack-schemas` (`Corpus::verify`); the command adds the
//! progress bar and the exit code.

mod histogram;
mod numbers;
mod show;
mod summary;

pub use histogram::{Bucket, Histogram};
pub use numbers::thousands;
pub use show::{write_example, ExampleRange, ShowError, TokenView, DOC_MARK};
pub use summary::{counts_table, human_bytes, Summary};
