//! Data-parallel `redpack train`: 2 and 3 ranks (processes with torchrun's variables) on the
//! CPU emulation of CUDA and its emulated NCCL (`cuda-emu/cpp/fake_nccl.cpp`: shared memory,
//! sums in rank order), against one process on the same global batch; a checkpoint resumed on
//! another world size; validation shared out among the ranks; a killed rank; a hung (stopped)
//! rank. Each rank runs with `LOCAL_RANK=0`, as one GPU per node would, since the emulation has
//! one device.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cuda_libraries, gpu_command};

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    corpus: PathBuf,
    libraries: Option<PathBuf>,
    /// The global batch (rows) and its micro-batches.
    shape: [&'static str; 2],
    /// The recipe.
    config: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let corpus = crate::common::sample_corpus(&root, None);
    Setup {
        _dir: dir,
        root,
        corpus: corpus.join("packed"),
        libraries: cuda_libraries(),
        shape: ["6", "6"],
        config: crate::common::repo_path("trainer/configs/decllm-tiny-pretrain.toml"),
    }
}

impl Setup {
    /// `redpack train` on a tiny DecLLM with the global batch `shape`.
    fn command(&self, out: &str, steps: u64, extra: &[&str]) -> Command {
        let mut command = gpu_command(self.libraries.as_deref());
        command
            .args(["train", "--config", self.config.to_str().unwrap(), "--data"])
            .arg(&self.corpus)
            .arg("--out")
            .arg(self.root.join(out))
            .args(["--steps", &steps.to_string()])
            .args(["--batch", self.shape[0], "--accum", self.shape[1]])
            .args(["--checkpoint-every", "1", "--device", "cuda"])
            .args(extra)
            .env_remove("WORLD_SIZE")
            .env_remove("SLURM_NTASKS")
            .env_remove("SLURM_PROCID");
        command
    }

    /// Starts `world` ranks of one job, finding rank 0 through a rendezvous file.
    fn spawn(&self, world: usize, out: &str, steps: u64, extra: &[&str]) -> Vec<Child> {
        let rendezvous = format!("file:{}", self.root.join(format!("{out}.rdv")).display());
        (0..world)
            .map(|rank| {
                self.command(out, steps, extra)
                    .args(["--rendezvous", &rendezvous])
                    .env("WORLD_SIZE", world.to_string())
                    .env("RANK", rank.to_string())
                    .env("LOCAL_RANK", "0")
                    .env("MASTER_ADDR", "127.0.0.1")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("starting redpack")
            })
            .collect()
    }

    /// Runs `world` ranks (or one plain process for 0) to the end; every one must succeed.
    fn train(&self, world: usize, out: &str, steps: u64, extra: &[&str]) {
        let outputs: Vec<Output> = if world == 0 {
            vec![self.command(out, steps, extra).output().unwrap()]
        } else {
            self.spawn(world, out, steps, extra)
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect()
        };
        for (rank, o) in outputs.iter().enumerate() {
            assert!(
                o.status.success(),
                "{out}: rank {rank} failed ({}):\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    /// Waits until run `out` has written its first step's metrics (rank 0's).
    fn wait_for_first_step(&self, out: &str) {
        let metrics = self.root.join(out).join("metrics.jsonl");
        let started = Instant::now();
        while !std::fs::read_to_string(&metrics).is_ok_and(|m| !m.is_empty()) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{out}: no step within 2 minutes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The losses of `metrics.jsonl`, by step.
    fn losses(&self, out: &str) -> Vec<(u64, f64)> {
        std::fs::read_to_string(self.root.join(out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
            })
            .collect()
    }

    /// The evaluations of `metrics.jsonl`, by step.
    fn evals(&self, out: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.root.join(out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                (!v["eval"].is_null()).then(|| v["eval"].clone())
            })
            .collect()
    }

    /// The parameters and optimizer state of a run's checkpoint of `step`, as f32 values per
    /// tensor name.
    fn weights(&self, out: &str, step: u64) -> Vec<(String, Vec<f32>)> {
        let path = self
            .root
            .join(out)
            .join(format!("checkpoints/step-{step:08}/model.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // safetensors: an 8-byte little-endian header length, a JSON header of
        // name -> {dtype, shape, data_offsets}, then the data.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut all: Vec<(String, Vec<f32>)> = header
            .iter()
            .filter(|(name, _)| name.as_str() != "__metadata__")
            .map(|(name, t)| {
                assert_eq!(t["dtype"], "F32", "{name}");
                let at = |i: usize| t["data_offsets"][i].as_u64().unwrap() as usize;
                let values = data[at(0)..at(1)]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (name.clone(), values)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The largest difference between two runs' values, relative to the value's magnitude (with a
/// floor for values near zero).
fn max_relative(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!((na, va.len()), (nb, vb.len()));
        for (x, y) in va.iter().zip(vb) {
            let d = (*x as f64 - *y as f64).abs() / (x.abs() as f64).max(1e-3);
            worst = worst.max(d);
        }
    }
    worst
}

fn bit_identical(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((_, x), (_, y))| {
            x.iter()
                .map(|v| v.to_bits())
                .eq(y.iter().map(|v| v.to_bits()))
        })
}

#[test]
fn two_and_three_ranks_train_as_one_process_and_resume_on_another_world_size() {
    let s = setup();
    // Validation after each step on 14 rows: batches of 6, 6 and 2 rows, shared out among the
    // ranks (2 ranks: two batches and one).
    let corpus = s.corpus.to_str().unwrap().to_string();
    let eval = [
        "--eval-data",
        &corpus,
        "--eval-every",
        "1",
        "--eval-rows",
        "14",
    ];
    s.train(0, "one", 2, &eval);
    s.train(2, "two", 2, &eval);
    s.train(3, "three", 2, &eval);
    let one = s.losses("one");
    let one_eval = s.evals("one");
    assert_eq!(one_eval.len(), 2);
    assert_eq!(one_eval[0]["examples"], 14);
    assert_eq!(one.len(), 2);
    let reference = s.weights("one", 2);
    for run in ["two", "three"] {
        let losses = s.losses(run);
        assert_eq!(losses.len(), 2, "{run}");
        for ((step, a), (_, b)) in one.iter().zip(&losses) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs(),
                "{run}, step {step}: loss {b} against one process's {a}"
            );
        }
        for (a, b) in one_eval.iter().zip(s.evals(run)) {
            for key in ["examples", "tokens"] {
                assert_eq!(a[key], b[key], "{run}: eval {key}");
            }
            let sources = |e: &serde_json::Value| {
                e["sources"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(sources(a), sources(&b), "{run}: eval sources");
            let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * x.abs(),
                "{run}: eval loss {y} against {x}"
            );
        }
        let weights = s.weights(run, 2);
        let worst = max_relative(&reference, &weights);
        eprintln!(
            "{run}: parameters and optimizer state after 2 steps differ from one process's by at most {worst:.3e} (relative){}",
            if bit_identical(&reference, &weights) { ", bit-identical" } else { "" }
        );
        assert!(worst <= 1e-5, "{run}: {worst}");
    }

    // Two ranks to step 1, then three ranks resume their checkpoint to step 2.
    s.train(2, "switch", 1, &[]);
    s.train(3, "switch", 2, &["--resume"]);
    let resumed = s.losses("switch");
    assert_eq!(resumed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
    for ((step, a), (_, b)) in one.iter().zip(&resumed) {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs(),
            "resumed, step {step}: loss {b} against one process's {a}"
        );
    }
    assert!(max_relative(&reference, &s.weights("switch", 2)) <= 1e-5);
}

#[test]
fn one_rank_is_one_process_and_ranks_repeat_their_bits() {
    // One micro-batch per rank, so the ranks' sum runs in the order one process accumulates in;
    // Adafactor factored and with momentum, so the sharded state has every kind of tensor.
    let mut s = setup();
    s.shape = ["2", "2"];
    let recipe = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("factored = false", "factored = true\nbeta1 = 0.9");
    assert!(recipe.contains("beta1 = 0.9"));
    s.config = s.root.join("factored.toml");
    std::fs::write(&s.config, recipe).unwrap();
    s.train(0, "one", 2, &[]);
    s.train(1, "world1", 2, &[]);
    s.train(2, "two", 2, &[]);
    s.train(2, "again", 2, &[]);
    // World size 1 through NCCL is the single-process run, bit for bit.
    assert_eq!(s.losses("one"), s.losses("world1"));
    assert!(bit_identical(&s.weights("one", 2), &s.weights("world1", 2)));
    // The emulated NCCL sums in rank order: a job repeats its bits.
    assert_eq!(s.losses("two"), s.losses("again"));
    assert!(bit_identical(&s.weights("two", 2), &s.weights("again", 2)));
    // Against one process: the first step's loss is the same sum of the same values; the
    // gradients are not bit-identical (one process adds the second micro-batch's products into
    // the first's inside the product, fl(AB + C); two ranks round each first, fl(fl(AB) + C)).
    let (one, two) = (s.losses("one"), s.losses("two"));
    assert_eq!(one[0], two[0]);
    for ((step, a), (_, b)) in one.iter().zip(&two) {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs(),
            "step {step}: {b} against {a}"
        );
    }
    let worst = max_relative(&s.weights("one", 2), &s.weights("two", 2));
    assert!(worst <= 1e-5, "{worst}");
}

#[test]
fn a_killed_rank_stops_the_job_with_an_error_naming_it() {
    let s = setup();
    let mut children = s.spawn(3, "killed", 10_000, &[]);
    s.wait_for_first_step("killed");
    children[2].kill().unwrap();
    let killed_at = Instant::now();
    children[2].wait().unwrap();
    for (rank, child) in children.into_iter().enumerate().take(2) {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "rank {rank}:\n{stderr}");
        assert!(
            stderr.contains("rank 2 stopped"),
            "rank {rank} does not name rank 2:\n{stderr}"
        );
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "the job took {:?} to stop",
        killed_at.elapsed()
    );
}

#[test]
fn a_hung_rank_stops_the_job_with_an_error_naming_it() {
    let s = setup();
    // A short heartbeat limit; the progress limit long enough never to fire on a slow machine.
    let limits = ["--heartbeat-timeout", "4", "--hang-timeout", "600"];
    // Rank 2 (watched by rank 0), then rank 0 (watched by the others), stops without dying: its
    // connection stays open, it sends nothing and issues no collective, as a stuck process would.
    for (stopped, named) in [
        (2, "rank(s) 2 sent no heartbeat for 4 s"),
        (0, "rank 0 sent no heartbeat for 4 s"),
    ] {
        let out = format!("hung{stopped}");
        let mut children = s.spawn(3, &out, 10_000, &limits);
        s.wait_for_first_step(&out);
        let pid = children[stopped].id().to_string();
        let stop = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(stop.success());
        let stopped_at = Instant::now();
        let mut hung = children.remove(stopped);
        let outputs: Vec<Output> = children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect();
        let took = stopped_at.elapsed();
        hung.kill().unwrap();
        hung.wait().unwrap();
        for (i, out) in outputs.iter().enumerate() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let rank = if i < stopped { i } else { i + 1 };
            assert_eq!(out.status.code(), Some(1), "rank {rank}:\n{stderr}");
            assert!(
                stderr.contains(named),
                "rank {rank} does not say {named:?}:\n{stderr}"
            );
        }
        assert!(
            took < Duration::from_secs(40),
            "rank {stopped} stopped: the job took {took:?} to stop"
        );
    }
}
