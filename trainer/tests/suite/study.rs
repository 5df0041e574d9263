//! Studies (`redpack_trainer::study`): fits recover known exponents and minima, verdicts follow
//! the numbers, the study file's errors name the field, runs are fingerprinted so a rerun skips
//! finished runs and refuses a changed one by name, and the Slurm job chains finetuning after
//! pretraining.

use std::path::{Path, PathBuf};

use redpack_trainer::study::findings::Verdict;
use redpack_trainer::study::fit::{Parabola, PowerLaw};
use redpack_trainer::study::report::{Header, LengthCurve, Report, RunRow, TaskScores};
use redpack_trainer::study::state::{self, RunState};
use redpack_trainer::study::{expand, slurm, Corpora, CorpusShape, RunGroup, Study, StudyError};

/// Deterministic noise in [-amp, amp].
fn wiggle(i: usize, amp: f64) -> f64 {
    amp * ((i as f64 * 2.399).sin())
}

#[test]
fn power_law_recovers_known_exponents() {
    for &(alpha, a) in &[(0.17, 900.0), (0.24, 40.0), (0.05, 3.0)] {
        let points: Vec<(f64, f64)> = (0..8)
            .map(|i| {
                let x = 1e5 * 3f64.powi(i);
                (x, a * x.powf(-alpha) * (1.0 + wiggle(i as usize, 0.002)))
            })
            .collect();
        let fit = PowerLaw::fit(&points).unwrap();
        assert!(
            ((fit.alpha - alpha) / alpha).abs() < 0.01,
            "exponent {} for {alpha}",
            fit.alpha
        );
        assert!(fit.r2 > 0.999, "{fit:?}");
        assert_eq!(fit.residuals.len(), 8);
        assert!(
            fit.rms_residual < 0.003 && fit.rms_residual > 0.0,
            "{fit:?}"
        );
        let exact: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, _)| (x, a * x.powf(-alpha)))
            .collect();
        let fit = PowerLaw::fit(&exact).unwrap();
        assert!((fit.alpha - alpha).abs() < 1e-9 && ((fit.a - a) / a).abs() < 1e-9);
    }
    assert!(PowerLaw::fit(&[(1.0, 2.0)]).is_none());
    assert!(PowerLaw::fit(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
    assert!(PowerLaw::fit(&[(1.0, 2.0), (-1.0, 3.0), (2.0, 1.0)]).is_none());
}

#[test]
fn parabola_finds_the_compute_optimal_size() {
    // loss = 0.3 (ln N - ln 2e6)^2 + 3.1: the optimum is N = 2e6, loss 3.1.
    let n_opt = 2e6f64;
    let points: Vec<(f64, f64)> = [2e5, 5e5, 1e6, 3e6, 8e6, 2e7]
        .iter()
        .map(|&n: &f64| (n, 0.3 * (n.ln() - n_opt.ln()).powi(2) + 3.1))
        .collect();
    let p = Parabola::fit(&points).unwrap();
    let (n, loss) = p.minimum().unwrap();
    assert!(((n - n_opt) / n_opt).abs() < 1e-6, "{n}");
    assert!((loss - 3.1).abs() < 1e-9, "{loss}");
    assert!(p.rms_residual < 1e-9);
    // Opening downwards: no minimum.
    let down: Vec<(f64, f64)> = points.iter().map(|&(n, l)| (n, -l)).collect();
    assert!(Parabola::fit(&down).unwrap().minimum().is_none());
    assert!(Parabola::fit(&points[..2]).is_none());
}

fn row(arch: &str, size: &str, group: RunGroup, params: u64, flops: f64, ppl: f64) -> RunRow {
    RunRow {
        name: format!("{arch}-{size}"),
        arch: arch.into(),
        size: size.into(),
        group,
        params,
        total_params: params,
        steps: 1,
        tokens_seen: 1,
        paper_flops: flops,
        flops,
        final_train_loss: ppl.ln(),
        ppl,
        loss: ppl.ln(),
        inference_flops: (group == RunGroup::Finetune).then_some(params as f64 * 2.0),
        train_seconds: 0.0,
        eval_seconds: 0.0,
        tasks: Vec::new(),
    }
}

fn header() -> Header {
    Header {
        name: "t".into(),
        description: String::new(),
        synthetic: false,
        shape: CorpusShape {
            seq_len: 256,
            prefix_len: 128,
            vocab_size: 100,
        },
    }
}

/// Scaling runs on power laws in FLOPs: DecLLM `a_dec C^-dec`, RedLLM `a_red C^-red`, RedLLM
/// at half DecLLM's FLOPs per parameter.
fn power_runs(sizes: usize, (a_dec, dec): (f64, f64), (a_red, red): (f64, f64)) -> Vec<RunRow> {
    let mut rows = Vec::new();
    for i in 0..sizes {
        let n = 1e6 * 4f64.powi(i as i32);
        let size = format!("s{i}");
        let dec_flops = 6.0 * n * 1e8;
        let red_flops = dec_flops / 2.0;
        rows.push(row(
            "dec",
            &size,
            RunGroup::Scaling,
            n as u64,
            dec_flops,
            a_dec * dec_flops.powf(-dec),
        ));
        rows.push(row(
            "red",
            &size,
            RunGroup::Scaling,
            n as u64,
            red_flops,
            a_red * red_flops.powf(-red),
        ));
    }
    rows
}

/// The paper's exponents (DecLLM 0.20, RedLLM 0.24).
fn paper_like(sizes: usize) -> Vec<RunRow> {
    power_runs(sizes, (3e5, 0.20), (2.2e6, 0.24))
}

fn verdict(report: &Report, id: &str) -> Verdict {
    report
        .findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no finding {id}"))
        .verdict
}

#[test]
fn verdicts_follow_the_numbers() {
    let report = Report::assemble(header(), paper_like(4), vec![], vec![], vec![]);
    let dec = report.flops_fits.iter().find(|f| f.arch == "dec").unwrap();
    let red = report.flops_fits.iter().find(|f| f.arch == "red").unwrap();
    assert!((dec.fit.as_ref().unwrap().alpha - 0.20).abs() < 1e-9);
    assert!((red.fit.as_ref().unwrap().alpha - 0.24).abs() < 1e-9);
    assert_eq!((dec.paper_alpha, red.paper_alpha), (Some(0.20), Some(0.24)));
    assert_eq!(verdict(&report, "flops_exponent"), Verdict::Reproduced);
    // Pure power laws where RedLLM's exponent is the larger cannot have RedLLM ahead at low
    // compute and behind at high compute.
    assert_eq!(verdict(&report, "flops_crossover"), Verdict::Contradicted);
    // Curves crossing inside the range with RedLLM ahead first (they meet at C = 1e16).
    let crossing = power_runs(4, (1e16f64.powf(0.20), 0.20), (1e16f64.powf(0.10), 0.10));
    let report = Report::assemble(header(), crossing.clone(), vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "flops_crossover"), Verdict::Reproduced);
    // Swapping the architectures' numbers contradicts the same findings.
    let swap = |rows: Vec<RunRow>| -> Vec<RunRow> {
        rows.into_iter()
            .map(|mut r| {
                r.arch = if r.arch == "dec" {
                    "red".into()
                } else {
                    "dec".into()
                };
                r
            })
            .collect()
    };
    let report = Report::assemble(header(), swap(paper_like(4)), vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "flops_exponent"), Verdict::Contradicted);
    let report = Report::assemble(header(), swap(crossing), vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "flops_crossover"), Verdict::Contradicted);
    // Two sizes are not enough for a fit.
    let report = Report::assemble(header(), paper_like(2), vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "flops_exponent"), Verdict::NotEnoughPoints);
    assert_eq!(
        verdict(&report, "params_dec_lower"),
        Verdict::NotEnoughPoints
    );
    assert_eq!(
        verdict(&report, "isoflop_frontier"),
        Verdict::NotEnoughPoints
    );
    assert_eq!(verdict(&report, "finetune_red"), Verdict::NotEnoughPoints);

    // Lower DecLLM PPL at every size: reproduced; one size the other way: contradicted.
    let mut rows = paper_like(3);
    for r in rows.iter_mut() {
        r.ppl = if r.arch == "dec" { 10.0 } else { 11.0 };
    }
    let report = Report::assemble(header(), rows.clone(), vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "params_dec_lower"), Verdict::Reproduced);
    rows[5].ppl = 9.0;
    let report = Report::assemble(header(), rows, vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "params_dec_lower"), Verdict::Contradicted);

    // isoFLOP: at the largest budget DecLLM's best loss is lower.
    let mut rows = Vec::new();
    for (b, budget) in [1e15, 1e16].iter().enumerate() {
        for (i, n) in [1e6, 4e6, 1.6e7].iter().enumerate() {
            let dec = 3.0 + 0.1 * (i as f64 - 1.0).powi(2) - 0.2 * b as f64;
            let red = dec + if b == 1 { 0.05 } else { -0.05 };
            let g = RunGroup::IsoFlop { budget: *budget };
            rows.push(row(
                "dec",
                &format!("s{i}"),
                g,
                *n as u64,
                *budget,
                dec.exp(),
            ));
            rows.push(row(
                "red",
                &format!("s{i}"),
                g,
                *n as u64,
                *budget,
                red.exp(),
            ));
        }
    }
    let report = Report::assemble(header(), rows, vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "isoflop_frontier"), Verdict::Reproduced);
    let curve = &report.isoflop[0];
    let (n_opt, _) = curve.optimum.unwrap();
    assert!((n_opt / 4e6 - 1.0).abs() < 1e-6, "{n_opt}");

    // Length extrapolation and prefix 1.
    let curve = |arch: &str, k: usize, points: Vec<(usize, f64)>| LengthCurve {
        arch: arch.into(),
        run: arch.into(),
        prefix_len: k,
        points,
    };
    let lengths = vec![
        curve("dec", 128, vec![(256, 10.0), (512, 10.2), (1024, 30.0)]),
        curve("red", 128, vec![(256, 11.0), (512, 11.5), (1024, 13.0)]),
        curve("dec", 1, vec![(256, 10.5)]),
        curve("red", 1, vec![(256, 14.0)]),
    ];
    let report = Report::assemble(header(), vec![], vec![], lengths.clone(), vec![]);
    assert_eq!(
        verdict(&report, "length_extrapolation"),
        Verdict::Reproduced
    );
    assert_eq!(verdict(&report, "prefix_one"), Verdict::Reproduced);
    let short: Vec<LengthCurve> = lengths
        .into_iter()
        .map(|mut c| {
            c.points.retain(|p| p.0 <= 512);
            c
        })
        .collect();
    let report = Report::assemble(header(), vec![], vec![], short, vec![]);
    assert_eq!(
        verdict(&report, "length_extrapolation"),
        Verdict::NotEnoughPoints
    );

    // After finetuning.
    let rows = vec![
        row("dec", "s0", RunGroup::Finetune, 100, 1.0, 20.0),
        row("red", "s0", RunGroup::Finetune, 100, 1.0, 18.0),
        row("dec-biattn", "s0", RunGroup::Finetune, 100, 1.0, 21.0),
    ];
    let report = Report::assemble(header(), rows, vec![], vec![], vec![]);
    assert_eq!(verdict(&report, "finetune_red"), Verdict::Reproduced);
    assert_eq!(verdict(&report, "finetune_biattn"), Verdict::Contradicted);
    // No run scored on the downstream tasks: no task finding at all.
    assert!(report
        .findings
        .iter()
        .all(|f| f.id != "zero_shot_pretrained"));
}

/// A run row with task averages per shots setting.
fn scored(mut row: RunRow, averages: &[(&str, f64)]) -> RunRow {
    row.tasks = averages
        .iter()
        .map(|&(shots, average)| TaskScores {
            shots: shots.into(),
            average,
            scores: [("boolq".to_string(), average)].into_iter().collect(),
        })
        .collect();
    row
}

#[test]
fn task_verdicts_follow_the_scores() {
    let rows = |red_zero: f64, red_tuned: f64| {
        vec![
            scored(
                row("dec", "s0", RunGroup::Scaling, 100, 1.0, 20.0),
                &[("0", 30.0), ("paper", 40.0)],
            ),
            scored(
                row("red", "s0", RunGroup::Scaling, 100, 1.0, 20.0),
                &[("0", red_zero), ("paper", 35.0)],
            ),
            scored(
                row("dec", "s1", RunGroup::Scaling, 200, 2.0, 18.0),
                &[("0", 32.0)],
            ),
            scored(
                row("red", "s1", RunGroup::Scaling, 200, 2.0, 18.0),
                &[("0", 31.0)],
            ),
            scored(
                row("dec", "s1", RunGroup::Finetune, 200, 2.0, 18.0),
                &[("0", 50.0), ("paper", 55.0)],
            ),
            scored(
                row("red", "s1", RunGroup::Finetune, 200, 2.0, 18.0),
                &[("0", red_tuned), ("paper", 55.0)],
            ),
        ]
    };
    let report = Report::assemble(header(), rows(25.0, 52.0), vec![], vec![], vec![]);
    assert_eq!(
        verdict(&report, "zero_shot_pretrained"),
        Verdict::Reproduced
    );
    assert_eq!(verdict(&report, "tasks_finetune_red"), Verdict::Reproduced);
    let measured = &report
        .findings
        .iter()
        .find(|f| f.id == "tasks_finetune_red")
        .unwrap()
        .measured;
    assert!(
        measured.contains("s1 (0 shots): RedLLM 52.00, DecLLM 50.00"),
        "{measured}"
    );
    assert!(
        measured.contains("s1 (paper shots): RedLLM 55.00, DecLLM 55.00"),
        "{measured}"
    );
    // RedLLM ahead at zero-shot at one size; behind after tuning in one setting.
    let report = Report::assemble(header(), rows(30.5, 49.0), vec![], vec![], vec![]);
    assert_eq!(
        verdict(&report, "zero_shot_pretrained"),
        Verdict::Contradicted
    );
    assert_eq!(
        verdict(&report, "tasks_finetune_red"),
        Verdict::Contradicted
    );
    // No finetuned run scored: not enough points for that finding.
    let only_pre: Vec<RunRow> = rows(25.0, 52.0)
        .into_iter()
        .filter(|r| r.group == RunGroup::Scaling)
        .collect();
    let report = Report::assemble(header(), only_pre, vec![], vec![], vec![]);
    assert_eq!(
        verdict(&report, "tasks_finetune_red"),
        Verdict::NotEnoughPoints
    );
    let md = redpack_trainer::study::markdown::render(&report);
    assert!(md.contains("## 7. Downstream tasks"), "{md}");
    assert!(
        md.contains("| red-s0 | RedLLM | s0 | 0 | 25.00 | 25.0 |"),
        "{md}"
    );
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

fn study_text(steps: u64) -> String {
    let c = configs();
    let c = c.display();
    format!(
        r#"
name = "t"
device = "cpu"
[corpus]
pretrain = "p"
pretrain_eval = "pe"
finetune = "f"
finetune_eval = "fe"
[pretrain]
archs = ["dec", "red"]
recipes = {{ dec = "{c}/decllm-tiny-pretrain.toml", red = "{c}/redllm-tiny-pretrain.toml" }}
batch = 4
isoflops = [1e9]
[[sizes]]
name = "a"
model = {{ d_model = 32, d_ffn = 64, n_heads = 2, head_dim = 16, layers = 1, encoder_layers = 1, decoder_layers = 1 }}
steps = {steps}
[[sizes]]
name = "b"
tokens = 4096
[finetune]
archs = ["dec", "dec-biattn", "red"]
sizes = ["a"]
recipes = {{ dec = "{c}/decllm-tiny-finetune.toml", dec-biattn = "{c}/decllm-tiny-finetune.toml", red = "{c}/redllm-tiny-finetune.toml" }}
steps = 3
"#
    )
}

fn parse(text: &str) -> Result<Study, StudyError> {
    Study::parse(text, Path::new("study.toml"), Path::new("."))
}

fn corpora() -> Corpora {
    Corpora {
        pretrain: "p".into(),
        pretrain_eval: "pe".into(),
        finetune: Some("f".into()),
        finetune_eval: Some("fe".into()),
    }
}

const SHAPE: CorpusShape = CorpusShape {
    seq_len: 256,
    prefix_len: 128,
    vocab_size: 4096,
};

#[test]
fn study_file_errors_name_the_field() {
    parse(&study_text(4)).unwrap();
    let cases = [
        (
            study_text(4).replace("batch = 4", "batch = 4\nbatches = 2"),
            "batches",
        ),
        (
            study_text(4).replace(r#"archs = ["dec", "red"]"#, r#"archs = ["dec", "enc"]"#),
            "pretrain.archs: \"enc\"",
        ),
        (
            study_text(4).replace("steps = 4", "steps = 0"),
            "sizes[0] (a): a budget of 0",
        ),
        (
            study_text(4).replace("tokens = 4096", ""),
            "sizes[1] (b): no budget",
        ),
        (
            study_text(4).replace("device = \"cpu\"", "device = \"tpu\""),
            "device: \"tpu\"",
        ),
        (
            study_text(4).replace("isoflops = [1e9]", "isoflops = [-1.0]"),
            "pretrain.isoflops",
        ),
        (
            study_text(4).replace("dec-biattn = ", "x = "),
            "finetune.recipes.dec-biattn",
        ),
        (
            format!(
                "{}\n[tasks]\ndata_root = \"t\"\ntasks = \"boolq,nope\"\n",
                study_text(4)
            ),
            "tasks.tasks: ",
        ),
        (
            format!(
                "{}\n[tasks]\ndata_root = \"t\"\nshots = [\"few\"]\n",
                study_text(4)
            ),
            "tasks.shots: \"few\"",
        ),
        (
            format!("{}\n[tasks]\ndata_root = \"t\"\nlimit = 0\n", study_text(4)),
            "tasks.limit",
        ),
    ];
    for (text, needle) in cases {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("study.toml: "), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn grid_expands_to_named_runs_with_budgets() {
    let out = Path::new("/study");
    let plans = expand(&parse(&study_text(4)).unwrap(), &corpora(), SHAPE, out).unwrap();
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pre-dec-a",
            "iso-dec-a-1e9",
            "pre-dec-b",
            "iso-dec-b-1e9",
            "pre-red-a",
            "iso-red-a-1e9",
            "pre-red-b",
            "iso-red-b-1e9",
            "ft-dec-a",
            "ft-dec-biattn-a",
            "ft-red-a"
        ]
    );
    let by_name = |n: &str| plans.iter().find(|p| p.name == n).unwrap();
    // A token budget of 4096 at 4 x 256 tokens a step: 4 steps.
    assert_eq!(by_name("pre-dec-b").settings.steps, 4);
    assert_eq!(by_name("pre-dec-a").settings.steps, 4);
    assert_eq!(
        by_name("pre-dec-a").settings.out,
        out.join("runs/pre-dec-a")
    );
    // isoFLOP steps: the budget over the paper's FLOPs of a step, rounded.
    let iso = by_name("iso-dec-a-1e9");
    let model = iso.settings.model_config(SHAPE.vocab_size).unwrap();
    let counts = model.stack_param_counts();
    let per_step = 6.0 * counts.decoder as f64 * 4.0 * 256.0;
    assert_eq!(iso.settings.steps, (1e9 / per_step).round() as u64);
    let ft = by_name("ft-dec-biattn-a");
    assert!(ft.settings.objective.bidirectional_prefix);
    assert_eq!(ft.init_from.as_deref(), Some("pre-dec-a"));
    assert_eq!(ft.settings.data, PathBuf::from("f"));
    assert_eq!(ft.settings.eval.as_ref().unwrap().data, PathBuf::from("fe"));
    assert!(!by_name("ft-dec-a").settings.objective.bidirectional_prefix);
}

#[test]
fn rerun_skips_finished_runs_and_refuses_a_changed_study() {
    let dir = tempfile::tempdir().unwrap();
    let plans = expand(
        &parse(&study_text(4)).unwrap(),
        &corpora(),
        SHAPE,
        dir.path(),
    )
    .unwrap();
    let plan = &plans[0];
    assert_eq!(state::check(plan, "e").unwrap(), RunState::New);
    state::start(plan).unwrap();
    assert_eq!(state::check(plan, "e").unwrap(), RunState::Interrupted);
    let model = plan.settings.model_config(SHAPE.vocab_size).unwrap();
    let done = state::DoneRecord {
        fingerprint: state::fingerprint(plan),
        evaluation: "e".into(),
        model,
        final_checkpoint: plan.dir().join("checkpoints/step-4"),
        train_seconds: 1.0,
        eval_seconds: 2.0,
    };
    state::finish(plan.dir(), &done).unwrap();
    assert_eq!(state::check(plan, "e").unwrap(), RunState::Finished(done));
    // Other evaluation settings: evaluate again, without training again.
    assert_eq!(state::check(plan, "other").unwrap(), RunState::Stale);
    // The same study in another folder spelling gives the same fingerprint.
    let again = expand(
        &parse(&study_text(4)).unwrap(),
        &corpora(),
        SHAPE,
        dir.path(),
    )
    .unwrap();
    assert_eq!(state::fingerprint(&again[0]), state::fingerprint(plan));
    // A changed size: the finished run is refused by name, with what changed.
    let changed = expand(
        &parse(&study_text(5)).unwrap(),
        &corpora(),
        SHAPE,
        dir.path(),
    )
    .unwrap();
    let err = state::check(&changed[0], "e").unwrap_err().to_string();
    assert!(err.starts_with("run pre-dec-a ("), "{err}");
    assert!(err.contains("settings.steps: 4 -> 5"), "{err}");
    // Runs the change does not touch are unaffected.
    assert_eq!(state::check(&changed[2], "e").unwrap(), RunState::New);
    // A folder that is not a study run is refused.
    std::fs::create_dir_all(changed[2].dir()).unwrap();
    std::fs::write(changed[2].dir().join("x"), "x").unwrap();
    let err = state::check(&changed[2], "e").unwrap_err().to_string();
    assert!(err.contains("not a run of this study"), "{err}");
}

#[test]
fn slurm_job_chains_finetuning_after_pretraining() {
    let out = Path::new("/scratch/study");
    let plans = expand(&parse(&study_text(4)).unwrap(), &corpora(), SHAPE, out).unwrap();
    let files = slurm::emit(
        &plans,
        Path::new("/home/s/study.toml"),
        out,
        &Default::default(),
    );
    let get = |name: &str| &files.iter().find(|f| f.0 == name).unwrap().1;
    let runs: Vec<&str> = get("runs.txt").lines().collect();
    assert_eq!(runs.len(), plans.len());
    assert_eq!(runs[0], "pre-dec-a");
    let task = get("study.sbatch");
    assert!(task.contains("--only \"$RUN\""), "{task}");
    assert!(task.contains("#SBATCH --gres=gpu:1"), "{task}");
    let submit = get("submit.sh");
    assert!(
        submit.contains("PRE=$(sbatch --parsable --array=0-7 study.sbatch)"),
        "{submit}"
    );
    // ft-dec-a (index 8) and ft-dec-biattn-a (9) wait for pre-dec-a (0); ft-red-a (10) for
    // pre-red-a (4).
    assert!(
        submit.contains("--array=8 --dependency=afterok:${PRE}_0 "),
        "{submit}"
    );
    assert!(
        submit.contains("--array=9 --dependency=afterok:${PRE}_0 "),
        "{submit}"
    );
    assert!(
        submit.contains("--array=10 --dependency=afterok:${PRE}_4 "),
        "{submit}"
    );
}
