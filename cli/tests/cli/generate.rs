//! `redpack generate` through the CLI, on a tiny DecLLM trained on the built-in sample: text
//! through the run's tokenizer copy, the `--json` lines and their keys, greedy output that
//! repeats, seeded sampling that repeats with its seed, JSONL prompts with stop sequences, and
//! clear errors (a bad JSONL line by number, a prompt too long, conflicting flags).

use crate::common::{cuda_libraries, fails, gpu_command, ok, tiny_run};

fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("--json prints one JSON object per line"))
        .collect()
}

#[test]
fn generate_from_a_trained_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run = tiny_run(root, "decllm-tiny-pretrain.toml", 3);
    let run = run.to_str().unwrap();
    let base = [
        "generate",
        "--checkpoint",
        run,
        "--device",
        "cpu",
        "--max-new-tokens",
        "5",
    ];
    let run_ok = |extra: &[&str]| ok(&[&base[..], extra].concat());
    let run_fails = |extra: &[&str]| fails(&[&base[..], extra].concat());

    let greedy = run_ok(&["--prompt", "The history of the", "--json"]);
    let out = lines(&greedy);
    assert_eq!(out.len(), 1);
    for key in [
        "index",
        "prompt",
        "completion",
        "prompt_tokens",
        "tokens",
        "stop",
    ] {
        assert!(out[0].get(key).is_some(), "no {key} in {}", out[0]);
    }
    assert_eq!(out[0]["prompt"], "The history of the");
    let tokens = out[0]["tokens"].as_array().unwrap();
    assert!(tokens.len() <= 5);
    let stop = out[0]["stop"].as_str().unwrap();
    assert!(
        (stop == "length" && tokens.len() == 5) || (stop == "eod" && tokens.len() < 5),
        "{}",
        out[0]
    );
    assert_eq!(
        greedy,
        run_ok(&["--prompt", "The history of the", "--json", "--greedy"])
    );
    // Plain text: the completion alone.
    let text = run_ok(&["--prompt", "The history of the"]);
    assert_eq!(
        text.trim_end_matches('\n'),
        out[0]["completion"].as_str().unwrap()
    );

    let sample = |seed: &str| {
        run_ok(&[
            "--prompt",
            "The history of the",
            "--temperature",
            "2",
            "--top-p",
            "1",
            "--seed",
            seed,
            "--json",
        ])
    };
    assert_eq!(sample("3"), sample("3"));
    assert_ne!(sample("3"), sample("4"));

    // JSONL prompts, in order, batched; a stop sequence taken from the greedy completion.
    let first_token_text = out[0]["completion"].as_str().unwrap().to_string();
    let prompts = root.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        format!(
            "{}\n\n{}\n{}\n",
            serde_json::json!({"prompt": "The history of the"}),
            serde_json::json!({"prompt": "Water is"}),
            serde_json::json!({"prompt": "The history of the", "stop": [first_token_text]}),
        ),
    )
    .unwrap();
    let many = lines(&run_ok(&[
        "--prompts",
        prompts.to_str().unwrap(),
        "--json",
        "--batch",
        "2",
    ]));
    assert_eq!(many.len(), 3);
    assert_eq!(
        many[0]["tokens"], out[0]["tokens"],
        "batching changed greedy output"
    );
    assert_eq!(many[1]["prompt"], "Water is");
    if !first_token_text.is_empty() {
        assert_eq!(many[2]["stop"], "stop", "{}", many[2]);
    }

    // Errors.
    let bad = root.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"fine\"}\n{\"text\": \"no prompt key\"}\n",
    )
    .unwrap();
    let err = run_fails(&["--prompts", bad.to_str().unwrap()]);
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    let long = "word ".repeat(40);
    let err = run_fails(&["--prompt", &long, "--max-len", "16"]);
    assert!(
        err.contains("--prompt: the prompt is") && err.contains("--max-len 16"),
        "{err}"
    );
    let err = run_fails(&["--prompt", "x", "--greedy", "--temperature", "1"]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = run_fails(&["--prompt", "x", "--temperature", "0"]);
    assert!(err.contains("temperature must be above 0"), "{err}");
    let err = fails(&["generate", "--checkpoint", run]);
    assert!(err.contains("--prompt"), "{err}");
}

/// `--device cuda` (a GPU, or the CPU emulation of one that the child finds on its
/// `LD_LIBRARY_PATH`) gives the CPU's greedy tokens.
#[test]
fn generate_on_the_gpu_gives_the_cpu_tokens() {
    let libraries = cuda_libraries();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run = tiny_run(root, "redllm-tiny-pretrain.toml", 3);
    let run = run.to_str().unwrap();
    let prompts = root.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"The history of the\"}\n{\"prompt\": \"Water\"}\n",
    )
    .unwrap();
    let generate = |device: &str| {
        let out = gpu_command(libraries.as_deref())
            .args(["generate", "--checkpoint", run, "--prompts"])
            .arg(&prompts)
            .args(["--max-new-tokens", "4", "--json", "--device", device])
            .output()
            .expect("running redpack");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "generate --device {device}:\n{stderr}"
        );
        let tokens: Vec<serde_json::Value> = lines(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .map(|l| l["tokens"].clone())
            .collect();
        (tokens, stderr)
    };
    let (cpu, _) = generate("cpu");
    let (gpu, log) = generate("cuda");
    assert!(log.contains("device: cuda"), "{log}");
    assert_eq!(gpu, cpu, "CUDA greedy tokens differ from the CPU's");
}
