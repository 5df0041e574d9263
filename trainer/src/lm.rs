//! The interface through which downstream evaluation uses a trained model: the log-likelihood of
//! continuations and greedy generation, in token ids.
//!
//! The architecture is hidden behind it: for a RedLLM the context goes to the encoder and the
//! continuation is decoded; for a DecLLM the two run together through the decoder (with a
//! bidirectional context for a "DecLLM + BiAttn" checkpoint). Implementations: a checkpoint
//! opened on a backend (`generate`), and test doubles.

/// Score `continuation` given `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoglikRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// The score of one `LoglikRequest`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loglik {
    /// Sum over the continuation's tokens of ln p(token | everything before it).
    pub logprob: f64,
    /// Whether every continuation token is the model's argmax at its position.
    pub greedy: bool,
    /// Context tokens dropped from the left to fit the model's context.
    pub truncated: usize,
}

/// Decode greedily after `prompt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Stop once the output ends with one of these token sequences (kept in the output). EOD
    /// always stops (and is not part of the output).
    pub stop: Vec<Vec<u32>>,
}

/// Errors of a language model behind this interface.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// A request the model cannot serve (empty continuation, a token outside the vocabulary, a
    /// prompt longer than the model's context with nothing to truncate), naming the request.
    #[error("request {index}: {reason}")]
    BadRequest { index: usize, reason: String },
    /// The model failed (backend, checkpoint).
    #[error("{0}")]
    Model(String),
}

/// A trained model as downstream evaluation sees it.
pub trait LanguageModel {
    /// A short description for reports (architecture, parameters, checkpoint step).
    fn describe(&self) -> String;
    /// The longest sequence the model is run on (context + continuation).
    fn max_len(&self) -> usize;
    /// The end-of-document id: generation stops on it.
    fn eod_id(&self) -> u32;
    /// Scores each request, in order. Results do not depend on how requests are batched.
    fn loglikelihood(&mut self, requests: &[LoglikRequest]) -> Result<Vec<Loglik>, LmError>;
    /// Greedy continuation of each request, in order, without EOD. Deterministic.
    fn generate_greedy(&mut self, requests: &[GenerateRequest]) -> Result<Vec<Vec<u32>>, LmError>;
}
