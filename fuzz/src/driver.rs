//! The supervisor, the worker and `replay`; see the crate docs.

use std::io::{BufRead, BufReader, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::rng::Rng;
use crate::seeds::Seeds;
use crate::targets::{self, Target, Verdict, TARGETS};

const USAGE: &str = "usage:
  redpack-fuzz list
  redpack-fuzz TARGET|all --seconds N [--seed S] [--out DIR] [--timeout-ms MS] [--memory-mb MB]
  redpack-fuzz replay TARGET CASE_DIR";

/// Exit code of a worker that stopped on a hang (the case is already recorded).
const HANG_EXIT: i32 = 3;

/// Longest share of `all` one target gets before the next one's turn.
const SLICE_SECONDS: u64 = 60;

#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    pub seed: u64,
    pub out: PathBuf,
    pub timeout: Duration,
    pub memory_mb: u64,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seconds: 10,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        out: PathBuf::from("target/fuzz"),
        timeout: Duration::from_secs(10),
        memory_mb: 4096,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} {value:?}: not a whole number"))
        };
        match flag.as_str() {
            "--seconds" => options.seconds = number()?,
            "--seed" => options.seed = number()?,
            "--out" => options.out = PathBuf::from(value),
            "--timeout-ms" => options.timeout = Duration::from_millis(number()?.max(1)),
            "--memory-mb" => options.memory_mb = number()?.max(256),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<ExitCode, String> {
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some("list") => {
            for t in TARGETS {
                println!("{:<14} {}", t.name, t.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("replay") => {
            let (Some(name), Some(dir)) = (args.get(1), args.get(2)) else {
                return Err(USAGE.into());
            };
            let target = find(name)?;
            let scratch = scratch_dir(&std::env::temp_dir(), "replay")?;
            let seeds = Seeds::build(&scratch)?;
            let verdict = (target.check)(&seeds, Path::new(dir));
            println!("{}: {verdict:?}", target.name);
            let _ = std::fs::remove_dir_all(&scratch);
            Ok(ExitCode::SUCCESS)
        }
        Some("worker") => {
            let name = args.get(1).ok_or(USAGE)?;
            let options = parse_options(&args[2..])?;
            worker(find(name)?, &options)
        }
        Some(name) => {
            let chosen: Vec<&'static Target> = if name == "all" {
                TARGETS.iter().collect()
            } else {
                vec![find(name)?]
            };
            let options = parse_options(&args[1..])?;
            supervise(&chosen, &options)
        }
    }
}

fn find(name: &str) -> Result<&'static Target, String> {
    targets::find(name).ok_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("no target {name:?}; the targets are: {}", names.join(", "))
    })
}

fn scratch_dir(parent: &Path, what: &str) -> Result<PathBuf, String> {
    let dir = parent.join(format!("redpack-fuzz-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

// ---- supervisor -----------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Tally {
    cases: u64,
    accepted: u64,
    findings: u64,
    workers: u64,
}

fn supervise(chosen: &[&'static Target], options: &Options) -> Result<ExitCode, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    std::fs::create_dir_all(options.out.join("findings"))
        .map_err(|e| format!("{}: {e}", options.out.display()))?;
    let start = Instant::now();
    let total = Duration::from_secs(options.seconds);
    let slice = (options.seconds / chosen.len() as u64).clamp(1, SLICE_SECONDS);
    let mut tallies = vec![Tally::default(); chosen.len()];
    let mut seed = options.seed;
    println!(
        "redpack-fuzz: {} target(s), {} s, seed {}, per-case timeout {} ms, memory limit {} MiB, findings in {}",
        chosen.len(),
        options.seconds,
        options.seed,
        options.timeout.as_millis(),
        options.memory_mb,
        options.out.join("findings").display()
    );
    'rounds: loop {
        for (k, target) in chosen.iter().enumerate() {
            let left = total.saturating_sub(start.elapsed()).as_secs();
            if left == 0 {
                break 'rounds;
            }
            let turn = Duration::from_secs(slice.min(left));
            let turn_start = Instant::now();
            while turn_start.elapsed() < turn {
                let seconds = turn.saturating_sub(turn_start.elapsed()).as_secs().max(1);
                seed = seed.wrapping_add(1);
                run_worker(&exe, target, options, seconds, seed, &mut tallies[k])?;
            }
        }
    }
    println!(
        "{:<14} {:>10} {:>9} {:>8} {:>8}",
        "target", "cases", "accepted", "findings", "workers"
    );
    let mut findings = 0;
    for (target, t) in chosen.iter().zip(&tallies) {
        println!(
            "{:<14} {:>10} {:>8.1}% {:>8} {:>8}",
            target.name,
            t.cases,
            100.0 * t.accepted as f64 / t.cases.max(1) as f64,
            t.findings,
            t.workers
        );
        findings += t.findings;
    }
    let cases: u64 = tallies.iter().map(|t| t.cases).sum();
    println!(
        "total: {cases} cases in {:.0} s, {findings} finding(s)",
        start.elapsed().as_secs_f64()
    );
    Ok(if findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_worker(
    exe: &Path,
    target: &Target,
    options: &Options,
    seconds: u64,
    seed: u64,
    tally: &mut Tally,
) -> Result<(), String> {
    let work = options.out.join(format!("work-{}", target.name));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg((options.memory_mb * 1024).to_string())
        .arg(exe)
        .args(["worker", target.name])
        .args(["--seconds", &seconds.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--out", &options.out.to_string_lossy()])
        .args(["--timeout-ms", &options.timeout.as_millis().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a worker: {e}"))?;
    tally.workers += 1;
    let (mut cases, mut accepted) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["cases", n, "accepted", a] => {
                    cases = n.parse().unwrap_or(cases);
                    accepted = a.parse().unwrap_or(accepted);
                }
                ["finding", ..] => {
                    tally.findings += 1;
                    println!("{}: {line}", target.name);
                }
                _ => println!("{}: {line}", target.name),
            }
        }
    }
    let status = child.wait().map_err(|e| format!("worker: {e}"))?;
    tally.cases += cases;
    tally.accepted += accepted;
    if !status.success() && status.code() != Some(HANG_EXIT) {
        // Killed by a signal or an abort: the case it was running is still in its folder.
        tally.cases += 1;
        tally.findings += 1;
        let saved = save_case(&options.out, target.name, "crash", &work.join("case"));
        let note = format!(
            "target {}\nkind crash\nworker seed {seed}\nexit {status}\nreplay: redpack-fuzz replay {} {}\n",
            target.name,
            target.name,
            saved.display()
        );
        let _ = std::fs::write(saved.join("finding.txt"), note);
        println!(
            "{}: finding crash {} (worker {status})",
            target.name,
            saved.display()
        );
    }
    Ok(())
}

/// Copies a case folder to a new `findings/TARGET-KIND-N` folder and returns its path.
fn save_case(out: &Path, target: &str, kind: &str, case: &Path) -> PathBuf {
    let findings = out.join("findings");
    let mut n = 0;
    let dest = loop {
        let dest = findings.join(format!("{target}-{kind}-{n}"));
        if std::fs::create_dir(&dest).is_ok() {
            break dest;
        }
        n += 1;
        if n > 100_000 {
            break dest;
        }
    };
    if let Ok(entries) = std::fs::read_dir(case) {
        for entry in entries.flatten() {
            let _ = std::fs::copy(entry.path(), dest.join(entry.file_name()));
        }
    }
    dest
}

// ---- worker ---------------------------------------------------------------------------------

/// The message and place of the last panic on any thread, for findings.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn quiet_panics() {
    panic::set_hook(Box::new(|info| {
        let text = format!("{info}").replace('\n', " ");
        if let Ok(mut slot) = LAST_PANIC.lock() {
            *slot = Some(text);
        }
    }));
}

/// How one case ended.
#[derive(Debug)]
pub enum Outcome {
    Done(Verdict),
    Panicked(String),
    Hung,
}

/// Runs cases on one thread and waits for each at most `timeout`.
pub struct Executor {
    jobs: mpsc::Sender<PathBuf>,
    results: mpsc::Receiver<Result<Verdict, String>>,
    timeout: Duration,
}

impl Executor {
    pub fn new(target: &'static Target, seeds: std::sync::Arc<Seeds>, timeout: Duration) -> Self {
        let (jobs, job_rx) = mpsc::channel::<PathBuf>();
        let (result_tx, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("fuzz-case".into())
            .stack_size(64 << 20)
            .spawn(move || {
                for dir in job_rx {
                    let outcome =
                        panic::catch_unwind(AssertUnwindSafe(|| (target.check)(&seeds, &dir)))
                            .map_err(|payload| {
                                let recorded = LAST_PANIC.lock().ok().and_then(|mut s| s.take());
                                recorded.unwrap_or_else(|| {
                                    payload
                                        .downcast_ref::<&str>()
                                        .map(|s| s.to_string())
                                        .or_else(|| payload.downcast_ref::<String>().cloned())
                                        .unwrap_or_else(|| "panic".into())
                                })
                            });
                    if result_tx.send(outcome).is_err() {
                        break;
                    }
                }
            })
            .map(|_| ())
            .unwrap_or(());
        Executor {
            jobs,
            results,
            timeout,
        }
    }

    pub fn run(&self, dir: &Path) -> Outcome {
        if self.jobs.send(dir.to_path_buf()).is_err() {
            return Outcome::Panicked("the case thread is gone".into());
        }
        match self.results.recv_timeout(self.timeout) {
            Ok(Ok(verdict)) => Outcome::Done(verdict),
            Ok(Err(message)) => Outcome::Panicked(message),
            Err(mpsc::RecvTimeoutError::Timeout) => Outcome::Hung,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Outcome::Panicked("the case thread is gone".into())
            }
        }
    }
}

/// Writes the case of `case_seed` into a fresh `dir`.
pub fn prepare_case(
    target: &Target,
    seeds: &Seeds,
    dir: &Path,
    case_seed: u64,
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    (target.prepare)(&mut Rng::new(case_seed), seeds, dir)
        .map_err(|e| format!("{}: cannot write the case: {e}", dir.display()))
}

fn worker(target: &'static Target, options: &Options) -> Result<ExitCode, String> {
    quiet_panics();
    let work = options.out.join(format!("work-{}", target.name));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let seeds = std::sync::Arc::new(Seeds::build(&work.join("seeds"))?);
    let executor = Executor::new(target, seeds.clone(), options.timeout);
    let case = work.join("case");
    let mut rng = Rng::new(options.seed);
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut last_report = Instant::now();
    let (mut cases, mut accepted, mut panics) = (0u64, 0u64, 0u64);
    let stdout = std::io::stdout();
    let report = |cases: u64, accepted: u64| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "cases {cases} accepted {accepted}");
        let _ = out.flush();
    };
    while Instant::now() < deadline {
        let case_seed = rng.next_u64();
        prepare_case(target, &seeds, &case, case_seed)?;
        let outcome = executor.run(&case);
        cases += 1;
        match outcome {
            Outcome::Done(Verdict::Accepted) => accepted += 1,
            Outcome::Done(Verdict::Refused) => {}
            Outcome::Panicked(message) => {
                panics += 1;
                // Keep the first few panics of a run; later ones are usually the same bug.
                if panics <= 5 {
                    let saved = save_case(&options.out, target.name, "panic", &case);
                    let note = format!(
                        "target {}\nkind panic\ncase seed {case_seed}\nmessage {message}\nreplay: redpack-fuzz replay {} {}\n",
                        target.name, target.name, saved.display()
                    );
                    let _ = std::fs::write(saved.join("finding.txt"), note);
                    println!("finding panic {} {message}", saved.display());
                }
            }
            Outcome::Hung => {
                let saved = save_case(&options.out, target.name, "hang", &case);
                let note = format!(
                    "target {}\nkind hang (over {} ms)\ncase seed {case_seed}\nreplay: redpack-fuzz replay {} {}\n",
                    target.name,
                    options.timeout.as_millis(),
                    target.name,
                    saved.display()
                );
                let _ = std::fs::write(saved.join("finding.txt"), note);
                println!("finding hang {}", saved.display());
                report(cases, accepted);
                std::process::exit(HANG_EXIT);
            }
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            report(cases, accepted);
            last_report = Instant::now();
        }
    }
    report(cases, accepted);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target, a few dozen cases each, in process: no panic and no hang. The long runs
    /// are `scripts/fuzz HOURS`.
    #[test]
    fn every_target_survives_a_short_run() {
        quiet_panics();
        let scratch = tempfile::tempdir().unwrap();
        let seeds = std::sync::Arc::new(Seeds::build(&scratch.path().join("seeds")).unwrap());
        let mut problems = Vec::new();
        for target in TARGETS {
            let executor = Executor::new(target, seeds.clone(), Duration::from_secs(30));
            let case = scratch.path().join(target.name);
            let mut accepted = 0;
            for case_seed in 0..30u64 {
                prepare_case(target, &seeds, &case, case_seed).unwrap();
                match executor.run(&case) {
                    Outcome::Done(Verdict::Accepted) => accepted += 1,
                    Outcome::Done(Verdict::Refused) => {}
                    other => problems.push(format!("{} case {case_seed}: {other:?}", target.name)),
                }
                if matches!(problems.last(), Some(p) if p.contains("Hung")) {
                    break;
                }
            }
            // The seeds themselves are valid, so the unmutated readers accept them: a target
            // that refuses everything would test nothing behind its first check.
            let _ = accepted;
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    /// Every saved finding (`fuzz/regressions/TARGET--WHAT/`) replays as `Ok` or an error.
    #[test]
    fn saved_regressions_replay_without_panic() {
        quiet_panics();
        let scratch = tempfile::tempdir().unwrap();
        let seeds = std::sync::Arc::new(Seeds::build(&scratch.path().join("seeds")).unwrap());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        cases.sort();
        assert!(
            cases.len() >= 6,
            "{} cases in {}",
            cases.len(),
            root.display()
        );
        for case in cases {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            let target = name.split("--").next().unwrap();
            let target = targets::find(target).unwrap_or_else(|| panic!("{name}: no target"));
            let executor = Executor::new(target, seeds.clone(), Duration::from_secs(60));
            let outcome = executor.run(&case);
            assert!(matches!(outcome, Outcome::Done(_)), "{name}: {outcome:?}");
        }
    }

    #[test]
    fn seeds_are_accepted_unmutated() {
        let scratch = tempfile::tempdir().unwrap();
        let seeds = Seeds::build(&scratch.path().join("seeds")).unwrap();
        let dir = scratch.path().join("case");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, files) in seeds
            .corpora
            .iter()
            .map(|f| ("corpus", f))
            .chain(seeds.checkpoints.iter().map(|f| ("checkpoint", f)))
        {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (file, bytes) in files {
                std::fs::write(dir.join(file), bytes).unwrap();
            }
            let target = targets::find(if name == "corpus" {
                "manifest"
            } else {
                "checkpoint"
            })
            .unwrap();
            assert_eq!((target.check)(&seeds, &dir), Verdict::Accepted, "{name}");
        }
        std::fs::write(dir.join("tokenizer.json"), &seeds.tokenizer).unwrap();
        let tokenizer = targets::find("tokenizer").unwrap();
        assert_eq!((tokenizer.check)(&seeds, &dir), Verdict::Accepted);
    }

    #[test]
    fn json_edits_keep_json_and_change_it() {
        let mut rng = Rng::new(5);
        let doc = br#"{"a": 1, "b": [1, 2, {"c": "x"}], "d": {"e": null}}"#;
        let mut changed = 0;
        for _ in 0..50 {
            let out = crate::mutate::json(&mut rng, doc).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let before: serde_json::Value = serde_json::from_slice(doc).unwrap();
            changed += usize::from(value != before);
        }
        assert!(
            changed > 40,
            "only {changed} of 50 edits changed the document"
        );
    }
}
