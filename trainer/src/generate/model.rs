//! A checkpoint opened for decoding: the generation loop and log-likelihoods over a `Decoder`,
//! and the `LanguageModel` implementation on top of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cpu::CpuDecoder;
use super::decoder::{DecodeMode, Decoder};
use super::sample::{argmax, choose, log_prob, Sampling};
use super::GenerateError;
use crate::backend::cuda::decode::CudaDecoder;
use crate::backend::cuda::runtime::probe::ProbeError;
use crate::backend::{probe_cuda, CudaAvailability, DeviceChoice};
use crate::checkpoint;
use crate::config::{Arch, ModelConfig};
use crate::eval::AttentionMode;
use crate::lm::{GenerateRequest, LanguageModel, LmError, Loglik, LoglikRequest};

/// How to open a checkpoint for decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// The device (`auto`: CUDA when a device is found, else the CPU).
    pub device: DeviceChoice,
    /// CPU threads (`None` or 0: one per core).
    pub threads: Option<usize>,
    /// Rows decoded together (requests are served in batches of this many, in order).
    pub batch: usize,
    /// The longest sequence (prompt and output, or context and continuation) the model is run
    /// on.
    pub max_len: usize,
    /// Check `model.safetensors` against the sha256 in `checkpoint.json`.
    pub verify: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            device: DeviceChoice::Auto,
            threads: None,
            batch: 8,
            max_len: 2048,
            verify: true,
        }
    }
}

/// Why generation of a row ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model chose the end-of-document token (not part of the output).
    Eod,
    /// The output ends with one of the request's stop sequences.
    Stop,
    /// `max_new_tokens` or the model's context was reached.
    Length,
}

impl StopReason {
    /// `eod`, `stop` or `length`.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eod => "eod",
            StopReason::Stop => "stop",
            StopReason::Length => "length",
        }
    }
}

/// One request's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// A checkpoint ready to decode on a device.
pub struct CheckpointModel {
    pub checkpoint: PathBuf,
    pub config: ModelConfig,
    pub step: u64,
    pub attention: AttentionMode,
    /// What to log about the device choice.
    pub device_note: String,
    eod: u32,
    max_len: usize,
    batch: usize,
    decoder: Box<dyn Decoder>,
}

/// Opens a checkpoint (a checkpoint directory, or a run directory: its latest healthy
/// checkpoint) as a `LanguageModel`.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Box<dyn LanguageModel>, GenerateError> {
    Ok(Box::new(open_model(path, options)?))
}

/// `open`, keeping the concrete type (for sampling, stop reasons and the checkpoint's
/// description).
pub fn open_model(path: &Path, options: &OpenOptions) -> Result<CheckpointModel, GenerateError> {
    if options.batch == 0 {
        return Err(GenerateError::Model(
            "the batch must be at least 1 row".into(),
        ));
    }
    if options.max_len < 2 {
        return Err(GenerateError::Model(format!(
            "the context must be at least 2 tokens, got {}",
            options.max_len
        )));
    }
    let dir = checkpoint::resolve(path)?;
    let ckpt = checkpoint::load_checked(&dir, false, options.verify)?;
    let attention = AttentionMode::of_checkpoint(&ckpt.meta);
    // Document resets change nothing here: a prompt is read as one document, and decoding
    // stops at EOD, the only document boundary.
    let mode = DecodeMode {
        bidirectional_prompt: attention.bidirectional_prefix,
    };
    let config = ckpt.meta.model.clone();
    let params = Arc::new(ckpt.params);
    let found = match options.device {
        DeviceChoice::Cpu => CudaAvailability::NoDriver,
        DeviceChoice::Cuda | DeviceChoice::Auto => probe_cuda(),
    };
    let (decoder, device_note): (Box<dyn Decoder>, String) = match (options.device, found) {
        (DeviceChoice::Cuda | DeviceChoice::Auto, CudaAvailability::Device(_)) => {
            let d = CudaDecoder::open(&config, &params, mode, options.max_len)?;
            let note = format!("device: {}", d.name());
            (Box::new(d), note)
        }
        (DeviceChoice::Cuda, CudaAvailability::NoDriver) => {
            return Err(GenerateError::Model(ProbeError::NoDriver.to_string()))
        }
        (DeviceChoice::Cuda, CudaAvailability::NoDevice { reason }) => {
            return Err(GenerateError::Model(
                ProbeError::NoDevice { reason }.to_string(),
            ))
        }
        (_, found) => {
            let d = CpuDecoder::new(&config, params, mode, options.max_len, options.threads)?;
            let why = match (options.device, found) {
                (DeviceChoice::Auto, CudaAvailability::NoDriver) => {
                    " (--device auto: no CUDA driver found)".to_string()
                }
                (DeviceChoice::Auto, CudaAvailability::NoDevice { reason }) => {
                    format!(" (--device auto: no usable CUDA device: {reason})")
                }
                _ => String::new(),
            };
            let note = format!("device: {}{why}", d.name());
            (Box::new(d), note)
        }
    };
    Ok(CheckpointModel {
        checkpoint: dir,
        step: ckpt.meta.step,
        eod: ckpt.meta.tokenizer.eod_id,
        config,
        attention,
        device_note,
        max_len: options.max_len,
        batch: options.batch,
        decoder,
    })
}

impl CheckpointModel {
    /// Generates after each request's prompt, `batch` requests at a time, choosing tokens by
    /// `sampling`. A prompt must be non-empty and shorter than the context; the output stops at
    /// EOD (not kept), a stop sequence (kept), `max_new_tokens` or the context's end.
    pub fn generate(
        &mut self,
        requests: &[GenerateRequest],
        sampling: &Sampling,
    ) -> Result<Vec<Generated>, GenerateError> {
        sampling
            .validate()
            .map_err(|reason| GenerateError::BadRequest { index: 0, reason })?;
        for (index, r) in requests.iter().enumerate() {
            self.check_tokens(index, &r.prompt)?;
            if r.prompt.is_empty() {
                return Err(bad(index, "the prompt is empty".into()));
            }
            if r.prompt.len() >= self.max_len {
                return Err(bad(
                    index,
                    format!(
                        "the prompt has {} tokens; the model's context is {} (prompt and output)",
                        r.prompt.len(),
                        self.max_len
                    ),
                ));
            }
        }
        let mut out = Vec::with_capacity(requests.len());
        for (b, chunk) in requests.chunks(self.batch).enumerate() {
            out.extend(self.generate_batch(b * self.batch, chunk, sampling)?);
        }
        Ok(out)
    }

    fn generate_batch(
        &mut self,
        first: usize,
        requests: &[GenerateRequest],
        sampling: &Sampling,
    ) -> Result<Vec<Generated>, GenerateError> {
        let mut out: Vec<Generated> = requests
            .iter()
            .map(|_| Generated {
                tokens: Vec::new(),
                stop: StopReason::Length,
            })
            .collect();
        let budget: Vec<usize> = requests
            .iter()
            .map(|r| r.max_new_tokens.min(self.max_len - r.prompt.len()))
            .collect();
        let live: Vec<usize> = (0..requests.len()).filter(|&i| budget[i] > 0).collect();
        if live.is_empty() {
            return Ok(out);
        }
        let prompts: Vec<&[u32]> = live.iter().map(|&i| &requests[i].prompt[..]).collect();
        // Rows of the decoder are the live requests, in order.
        let mut logits = self.decoder.start(&prompts)?;
        let mut active: Vec<usize> = (0..live.len()).collect();
        for step in 0.. {
            let mut still = Vec::new();
            let mut next = Vec::new();
            for (row, row_logits) in active.iter().zip(&logits) {
                let i = live[*row];
                let token = choose(sampling, row_logits, first + i, step).ok_or(
                    GenerateError::NotFinite {
                        index: first + i,
                        step,
                    },
                )? as u32;
                let g = &mut out[i];
                if token == self.eod {
                    g.stop = StopReason::Eod;
                    continue;
                }
                g.tokens.push(token);
                if requests[i]
                    .stop
                    .iter()
                    .any(|s| !s.is_empty() && g.tokens.ends_with(s))
                {
                    g.stop = StopReason::Stop;
                } else if g.tokens.len() >= budget[i] {
                    g.stop = StopReason::Length;
                } else {
                    still.push(*row);
                    next.push([token]);
                }
            }
            if still.is_empty() {
                break;
            }
            let tokens: Vec<&[u32]> = next.iter().map(|t| &t[..]).collect();
            logits = self.decoder.extend(&still, &tokens)?;
            active = still;
        }
        Ok(out)
    }

    /// Scores each request (`LanguageModel::loglikelihood`), `batch` at a time.
    pub fn score(&mut self, requests: &[LoglikRequest]) -> Result<Vec<Loglik>, GenerateError> {
        let mut prepared = Vec::with_capacity(requests.len());
        for (index, r) in requests.iter().enumerate() {
            self.check_tokens(index, &r.context)?;
            self.check_tokens(index, &r.continuation)?;
            if r.continuation.is_empty() {
                return Err(bad(index, "the continuation is empty".into()));
            }
            if r.continuation.len() >= self.max_len {
                return Err(bad(
                    index,
                    format!(
                        "the continuation has {} tokens; the model's context is {} and keeps at least one context token",
                        r.continuation.len(),
                        self.max_len
                    ),
                ));
            }
            // Without a context the continuation starts a document: it follows EOD.
            let eod = [self.eod];
            let context: &[u32] = if r.context.is_empty() {
                &eod
            } else {
                &r.context
            };
            let over = (context.len() + r.continuation.len()).saturating_sub(self.max_len);
            prepared.push((context[over..].to_vec(), over));
        }
        let mut out = Vec::with_capacity(requests.len());
        for (reqs, prep) in requests.chunks(self.batch).zip(prepared.chunks(self.batch)) {
            let contexts: Vec<&[u32]> = prep.iter().map(|p| &p.0[..]).collect();
            let first = self.decoder.start(&contexts)?;
            let rows: Vec<usize> = (0..reqs.len())
                .filter(|&i| reqs[i].continuation.len() > 1)
                .collect();
            let tokens: Vec<&[u32]> = rows
                .iter()
                .map(|&i| &reqs[i].continuation[..reqs[i].continuation.len() - 1])
                .collect();
            let rest = match rows.is_empty() {
                true => Vec::new(),
                false => self.decoder.extend(&rows, &tokens)?,
            };
            let v = self.config.vocab_size;
            for (i, r) in reqs.iter().enumerate() {
                let mut logprob = 0.0;
                let mut greedy = true;
                let later = rows.iter().position(|&x| x == i).map(|p| &rest[p]);
                for (t, &target) in r.continuation.iter().enumerate() {
                    let logits = match t {
                        0 => &first[i][..],
                        _ => &later.expect("rows with more than one token were extended")
                            [(t - 1) * v..t * v],
                    };
                    logprob += log_prob(logits, target as usize);
                    greedy &= argmax(logits) == Some(target as usize);
                }
                out.push(Loglik {
                    logprob,
                    greedy,
                    truncated: prep[i].1,
                });
            }
        }
        Ok(out)
    }

    fn check_tokens(&self, index: usize, tokens: &[u32]) -> Result<(), GenerateError> {
        match tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            Some(t) => Err(bad(
                index,
                format!(
                    "token id {t} is outside the model's vocabulary of {}",
                    self.config.vocab_size
                ),
            )),
            None => Ok(()),
        }
    }
}

fn bad(index: usize, reason: String) -> GenerateError {
    GenerateError::BadRequest { index, reason }
}

impl LanguageModel for CheckpointModel {
    fn describe(&self) -> String {
        let arch = match (self.config.arch, self.attention.bidirectional_prefix) {
            (Arch::Red, _) => "RedLLM",
            (Arch::Dec, true) => "DecLLM + BiAttn",
            (Arch::Dec, false) => "DecLLM",
        };
        format!(
            "{arch} ({}; {} parameters), step {}, {}",
            self.config.describe(),
            self.config.param_count(),
            self.step,
            self.checkpoint.display()
        )
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn eod_id(&self) -> u32 {
        self.eod
    }

    fn loglikelihood(&mut self, requests: &[LoglikRequest]) -> Result<Vec<Loglik>, LmError> {
        Ok(self.score(requests)?)
    }

    /// Prompts longer than the context allows are cut from the left (the most recent tokens
    /// stay), an empty prompt reads as EOD.
    fn generate_greedy(&mut self, requests: &[GenerateRequest]) -> Result<Vec<Vec<u32>>, LmError> {
        let fitted: Vec<GenerateRequest> = requests
            .iter()
            .map(|r| {
                let keep = self.max_len - 1;
                let prompt = match r.prompt.len() {
                    0 => vec![self.eod],
                    n if n > keep => r.prompt[n - keep..].to_vec(),
                    _ => r.prompt.clone(),
                };
                GenerateRequest {
                    prompt,
                    ..r.clone()
                }
            })
            .collect();
        Ok(self
            .generate(&fitted, &Sampling::Greedy)?
            .into_iter()
            .map(|g| g.tokens)
            .collect())
    }
}
