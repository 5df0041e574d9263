//! The format's test suite, one binary: round trips, corruption handling, and the Python
//! cross-check (numpy + pyarrow read what the writer wrote).

mod corruption;
mod harness;
mod python;
mod roundtrip;
mod split;
