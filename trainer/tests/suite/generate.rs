//! Decoding with a key/value cache (`redpack_trainer::generate`): at every step the cached
//! logits equal the training forward's over the whole row (RedLLM, DecLLM, DecLLM + BiAttn,
//! ragged prompts in one batch); log-likelihoods equal an independent numpy forward
//! (`tests/python/lm_reference.py`); results do not depend on the batch; greedy decoding is
//! deterministic; sampling repeats with its seed; decoding stops at EOD, stop sequences and the
//! limit; bad requests are refused by index.

use super::train_common::{examples_corpus, packed_corpus, tiny_settings, VOCAB};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::DeviceChoice;
use redpack_trainer::batch::{Batch, StepOptions};
use redpack_trainer::checkpoint;
use redpack_trainer::config::Arch;
use redpack_trainer::generate::cpu::CpuDecoder;
use redpack_trainer::generate::sample::log_prob;
use redpack_trainer::generate::{
    open, open_model, DecodeMode, Decoder, OpenOptions, Sampling, StopReason,
};
use redpack_trainer::lm::{GenerateRequest, LmError, LoglikRequest};
use redpack_trainer::metrics::Quiet;
use redpack_trainer::run::{Mode, TrainRun};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Red,
    Dec,
    DecBiAttn,
}

pub const KINDS: [Kind; 3] = [Kind::Red, Kind::Dec, Kind::DecBiAttn];

/// A checkpoint of a 3-step `tiny` run of `kind`, trained once per test process.
pub fn checkpoint_of(kind: Kind) -> PathBuf {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    static DONE: OnceLock<std::sync::Mutex<Vec<(Kind, PathBuf)>>> = OnceLock::new();
    let root = ROOT.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = done.iter().find(|(k, _)| *k == kind) {
        return p.clone();
    }
    let out = root.join(format!("{kind:?}"));
    let settings = match kind {
        Kind::Red | Kind::Dec => {
            let packed = packed_corpus(&root.join(format!("packed-{kind:?}")), 16, 32);
            let arch = if kind == Kind::Red {
                Arch::Red
            } else {
                Arch::Dec
            };
            tiny_settings(arch, Mode::Pretrain, &packed, &out, 3)
        }
        Kind::DecBiAttn => {
            let examples = examples_corpus(&root.join("examples"), 16);
            let mut s = tiny_settings(Arch::Dec, Mode::Finetune, &examples, &out, 3);
            s.objective.bidirectional_prefix = true;
            s
        }
    };
    let outcome = TrainRun::prepare(settings)
        .unwrap()
        .run(&mut CpuBackend::new(Some(2)).unwrap(), &mut Quiet)
        .unwrap();
    done.push((kind, outcome.final_checkpoint.clone()));
    outcome.final_checkpoint
}

fn cpu_options() -> OpenOptions {
    OpenOptions {
        device: DeviceChoice::Cpu,
        threads: Some(2),
        batch: 4,
        max_len: 64,
        verify: true,
    }
}

/// Ragged prompts (1 to 9 tokens).
pub fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 13, 17, 21, 25, 29],
        vec![40],
        vec![3, 3, 8, 30, 2, 11, 7, 19, 44],
        vec![12, 6, 33],
    ]
}

/// The log-softmax of the next token after `row[..k + s]` for every vocabulary id, from the
/// training forward over whole rows (`CpuBackend::token_losses`): row `v` is `row ++ [v]`, split
/// at the prompt length `k`, and its last cross-entropy is `−log p(v)`.
pub fn reference_log_probs(kind: Kind, ckpt: &Path, row: &[u32], k: usize) -> Vec<f64> {
    let loaded = checkpoint::load(ckpt, false).unwrap();
    let vocab = loaded.meta.model.vocab_size;
    let seq = row.len() + 1;
    let mut tokens = Vec::new();
    for v in 0..vocab as u32 {
        tokens.extend_from_slice(row);
        tokens.push(v);
    }
    let batch = Batch {
        rows: vocab,
        seq,
        tokens,
        prefix_len: vec![k; vocab],
        length: vec![seq; vocab],
        doc_starts: vec![Vec::new(); vocab],
        source: vec![String::new(); vocab],
    };
    let options = StepOptions {
        bidirectional_prefix: kind == Kind::DecBiAttn,
        ..StepOptions::default()
    };
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let losses = cpu
        .token_losses(&loaded.meta.model, &loaded.params, &batch, &options)
        .unwrap();
    losses
        .iter()
        .map(|row| -row.last().copied().unwrap())
        .collect()
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    (0..logits.len()).map(|t| log_prob(logits, t)).collect()
}

pub fn worst(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn cpu_decoder(kind: Kind, ckpt: &Path) -> CpuDecoder {
    let loaded = checkpoint::load(ckpt, false).unwrap();
    CpuDecoder::new(
        &loaded.meta.model,
        Arc::new(loaded.params),
        DecodeMode {
            bidirectional_prompt: kind == Kind::DecBiAttn,
        },
        64,
        Some(2),
    )
    .unwrap()
}

/// Decodes `steps` greedy tokens per prompt, all rows together, returning per row the tokens
/// and the logits before each of them.
pub fn greedy_with_logits(
    decoder: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let refs: Vec<&[u32]> = prompts.iter().map(|p| &p[..]).collect();
    let mut logits = decoder.start(&refs).unwrap();
    let mut out: Vec<(Vec<u32>, Vec<Vec<f32>>)> = vec![Default::default(); prompts.len()];
    let rows: Vec<usize> = (0..prompts.len()).collect();
    for step in 0..steps {
        let mut next = Vec::new();
        for (r, l) in logits.iter().enumerate() {
            let t = redpack_trainer::generate::sample::argmax(l).unwrap() as u32;
            out[r].0.push(t);
            out[r].1.push(l.clone());
            next.push([t]);
        }
        if step + 1 == steps {
            break;
        }
        let tokens: Vec<&[u32]> = next.iter().map(|t| &t[..]).collect();
        logits = decoder.extend(&rows, &tokens).unwrap();
    }
    out
}

#[test]
fn cached_logits_equal_the_training_forward_at_every_step() {
    for kind in KINDS {
        let ckpt = checkpoint_of(kind);
        let mut decoder = cpu_decoder(kind, &ckpt);
        let prompts = prompts();
        let decoded = greedy_with_logits(&mut decoder, &prompts, 5);
        let mut worst_seen = 0.0f64;
        for (prompt, (tokens, logits)) in prompts.iter().zip(&decoded) {
            for (s, l) in logits.iter().enumerate() {
                let mut row = prompt.clone();
                row.extend_from_slice(&tokens[..s]);
                let want = reference_log_probs(kind, &ckpt, &row, prompt.len());
                let got = log_softmax(l);
                worst_seen = worst_seen.max(worst(&got, &want));
            }
        }
        println!("{kind:?}: worst |log p| difference {worst_seen:.2e}");
        assert!(
            worst_seen < 1e-4,
            "{kind:?}: cached decoding differs from the full forward by {worst_seen:e}"
        );
    }
}

#[test]
fn appending_many_tokens_at_once_equals_one_at_a_time() {
    for kind in KINDS {
        let ckpt = checkpoint_of(kind);
        let mut decoder = cpu_decoder(kind, &ckpt);
        let prompts = prompts();
        let decoded = greedy_with_logits(&mut decoder, &prompts, 4);
        let refs: Vec<&[u32]> = prompts.iter().map(|p| &p[..]).collect();
        decoder.start(&refs).unwrap();
        let chunks: Vec<&[u32]> = decoded.iter().map(|(t, _)| &t[..3]).collect();
        let rows: Vec<usize> = (0..prompts.len()).collect();
        let all = decoder.extend(&rows, &chunks).unwrap();
        for (r, (_, logits)) in decoded.iter().enumerate() {
            for s in 0..3 {
                let v = VOCAB as usize;
                let a = log_softmax(&all[r][s * v..(s + 1) * v]);
                let b = log_softmax(&logits[s + 1]);
                assert!(worst(&a, &b) < 1e-5, "{kind:?} row {r} step {s}");
            }
        }
    }
}

/// `[{"context": [...], "continuation": [...]}]` scored by the numpy reference.
fn numpy_logprobs(ckpt: &Path, requests: &[LoglikRequest]) -> Vec<f64> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/lm_reference.py"
    );
    let json: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| serde_json::json!({"context": r.context, "continuation": r.continuation}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let output = Command::new("python3")
        .arg(script)
        .arg(ckpt)
        .arg(&path)
        .output()
        .expect("python3 runs (install numpy: pip install -r tests/python/requirements.txt)");
    assert!(
        output.status.success(),
        "lm_reference.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("reference prints a JSON list")
}

fn loglik_requests() -> Vec<LoglikRequest> {
    let p = prompts();
    vec![
        LoglikRequest {
            context: p[0].clone(),
            continuation: vec![33, 2, 9],
        },
        LoglikRequest {
            context: p[1].clone(),
            continuation: vec![7],
        },
        LoglikRequest {
            context: p[2].clone(),
            continuation: vec![4, 4, 4, 4, 4, 20],
        },
        LoglikRequest {
            context: p[3].clone(),
            continuation: vec![47, 0],
        },
        LoglikRequest {
            context: vec![8, 16, 24],
            continuation: vec![32, 40],
        },
    ]
}

#[test]
fn loglikelihood_equals_a_numpy_forward_and_ignores_batching() {
    let requests = loglik_requests();
    for kind in KINDS {
        let ckpt = checkpoint_of(kind);
        let reference = numpy_logprobs(&ckpt, &requests);
        let mut by_four = open(&ckpt, &cpu_options()).unwrap();
        let mut one = open(
            &ckpt,
            &OpenOptions {
                batch: 1,
                ..cpu_options()
            },
        )
        .unwrap();
        let a = by_four.loglikelihood(&requests).unwrap();
        let b = one.loglikelihood(&requests).unwrap();
        for (i, ((x, y), want)) in a.iter().zip(&b).zip(&reference).enumerate() {
            assert_eq!(x, y, "{kind:?} request {i}: batch 4 and batch 1 differ");
            let diff = (x.logprob - want).abs();
            println!(
                "{kind:?} request {i}: ours {:.6} numpy {want:.6}",
                x.logprob
            );
            assert!(
                diff < 1e-4,
                "{kind:?} request {i}: {} vs numpy {want}",
                x.logprob
            );
            assert_eq!(x.truncated, 0);
        }
    }
}

#[test]
fn greedy_flags_and_truncation_follow_the_model() {
    let kind = Kind::Dec;
    let ckpt = checkpoint_of(kind);
    let mut model = open(&ckpt, &cpu_options()).unwrap();
    let prompt = prompts()[0].clone();
    let generated = model
        .generate_greedy(&[GenerateRequest {
            prompt: prompt.clone(),
            max_new_tokens: 3,
            stop: Vec::new(),
        }])
        .unwrap();
    let greedy = generated[0].clone();
    assert_eq!(greedy.len(), 3);
    let mut other = greedy.clone();
    // The last token changed: same prefix, so a lower log-probability than the argmax.
    other[2] = (other[2] + 1) % VOCAB;
    let scored = model
        .loglikelihood(&[
            LoglikRequest {
                context: prompt.clone(),
                continuation: greedy.clone(),
            },
            LoglikRequest {
                context: prompt.clone(),
                continuation: other,
            },
        ])
        .unwrap();
    assert!(scored[0].greedy && !scored[1].greedy);
    assert!(scored[0].logprob > scored[1].logprob);
    // A context longer than the model's 64 tokens loses its left end.
    let long: Vec<u32> = (0..70).map(|i| 2 + i % 40).collect();
    let cut = model
        .loglikelihood(&[LoglikRequest {
            context: long.clone(),
            continuation: vec![5, 6],
        }])
        .unwrap();
    let kept = model
        .loglikelihood(&[LoglikRequest {
            context: long[8..].to_vec(),
            continuation: vec![5, 6],
        }])
        .unwrap();
    assert_eq!(cut[0].truncated, 8);
    assert_eq!(cut[0].logprob, kept[0].logprob);
}

#[test]
fn greedy_is_deterministic_and_sampling_repeats_with_its_seed() {
    for kind in KINDS {
        let ckpt = checkpoint_of(kind);
        let requests: Vec<GenerateRequest> = prompts()
            .into_iter()
            .map(|prompt| GenerateRequest {
                prompt,
                max_new_tokens: 6,
                stop: Vec::new(),
            })
            .collect();
        let mut a = open_model(&ckpt, &cpu_options()).unwrap();
        let mut b = open_model(
            &ckpt,
            &OpenOptions {
                batch: 3,
                threads: Some(1),
                ..cpu_options()
            },
        )
        .unwrap();
        let ga = a.generate(&requests, &Sampling::Greedy).unwrap();
        let gb = b.generate(&requests, &Sampling::Greedy).unwrap();
        assert_eq!(ga, gb, "{kind:?}: greedy depends on batch or threads");
        let sampling = |seed| Sampling::TopP {
            temperature: 1.5,
            top_p: 0.95,
            seed,
        };
        let s1 = a.generate(&requests, &sampling(1)).unwrap();
        let s1_again = b.generate(&requests, &sampling(1)).unwrap();
        let s2 = a.generate(&requests, &sampling(2)).unwrap();
        assert_eq!(s1, s1_again, "{kind:?}: a seed does not repeat");
        assert_ne!(s1, s2, "{kind:?}: two seeds gave the same samples");
    }
}

#[test]
fn decoding_stops_at_eod_stop_sequences_and_the_limit() {
    let kind = Kind::Red;
    let ckpt = checkpoint_of(kind);
    let prompt = prompts()[2].clone();
    let request = |max_new_tokens, stop: Vec<Vec<u32>>| GenerateRequest {
        prompt: prompt.clone(),
        max_new_tokens,
        stop,
    };
    let mut model = open_model(&ckpt, &cpu_options()).unwrap();
    let free = model
        .generate(&[request(6, Vec::new())], &Sampling::Greedy)
        .unwrap()
        .remove(0);
    assert_eq!(free.tokens.len(), 6);
    assert_eq!(free.stop, StopReason::Length);
    let stop = vec![free.tokens[1..3].to_vec()];
    let stopped = model
        .generate(&[request(6, stop)], &Sampling::Greedy)
        .unwrap()
        .remove(0);
    assert_eq!(stopped.tokens, free.tokens[..3]);
    assert_eq!(stopped.stop, StopReason::Stop);
    // The same checkpoint with its end-of-document id set to the fourth greedy token: decoding
    // ends there, without it.
    let copy = tempfile::tempdir().unwrap();
    for name in ["checkpoint.json", "model.safetensors"] {
        std::fs::copy(ckpt.join(name), copy.path().join(name)).unwrap();
    }
    let meta_path = copy.path().join("checkpoint.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["tokenizer"]["eod_id"] = free.tokens[3].into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let mut eod_model = open_model(copy.path(), &cpu_options()).unwrap();
    let ended = eod_model
        .generate(&[request(6, Vec::new())], &Sampling::Greedy)
        .unwrap()
        .remove(0);
    let first_eod = free
        .tokens
        .iter()
        .position(|&t| t == free.tokens[3])
        .unwrap();
    assert_eq!(ended.tokens, free.tokens[..first_eod]);
    assert_eq!(ended.stop, StopReason::Eod);
    // The context limit (64) ends decoding before max_new_tokens.
    let near: Vec<u32> = (0..60).map(|i| 2 + i % 40).collect();
    let limited = model
        .generate(
            &[GenerateRequest {
                prompt: near,
                max_new_tokens: 50,
                stop: Vec::new(),
            }],
            &Sampling::Greedy,
        )
        .unwrap()
        .remove(0);
    assert!(limited.tokens.len() <= 4, "{limited:?}");
}

#[test]
fn bad_requests_are_refused_by_index() {
    let ckpt = checkpoint_of(Kind::Dec);
    let mut model = open(&ckpt, &cpu_options()).unwrap();
    let ok = LoglikRequest {
        context: vec![3, 4],
        continuation: vec![5],
    };
    let cases = [
        (
            LoglikRequest {
                context: vec![3],
                continuation: Vec::new(),
            },
            "continuation is empty",
        ),
        (
            LoglikRequest {
                context: vec![3, 999],
                continuation: vec![4],
            },
            "token id 999 is outside the model's vocabulary of 48",
        ),
        (
            LoglikRequest {
                context: vec![3],
                continuation: vec![4; 64],
            },
            "the continuation has 64 tokens",
        ),
    ];
    for (bad, want) in cases {
        let err = model.loglikelihood(&[ok.clone(), bad]).unwrap_err();
        match &err {
            LmError::BadRequest { index: 1, reason } => {
                assert!(reason.contains(want), "{reason}")
            }
            other => panic!("expected request 1 to be refused, got {other}"),
        }
    }
    let mut concrete = open_model(&ckpt, &cpu_options()).unwrap();
    let err = concrete
        .generate(
            &[GenerateRequest {
                prompt: vec![2; 64],
                max_new_tokens: 1,
                stop: Vec::new(),
            }],
            &Sampling::Greedy,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("the prompt has 64 tokens"),
        "{err}"
    );
}
