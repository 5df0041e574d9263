//! The paper's findings, each with the test this study applies and a verdict computed from the
//! report's numbers: reproduced, contradicted, or not enough points (a fit with fewer than
//! `fit::MIN_POINTS` runs, a comparison with no run on one side).

use std::collections::BTreeMap;

use super::fit::MIN_POINTS;
pub use super::model::{Finding, Verdict};
use super::model::{FitRow, Report, RunRow};
use super::RunGroup;

fn finding(id: &str, paper: &str, test: &str, measured: String, verdict: Verdict) -> Finding {
    Finding {
        id: id.into(),
        paper: paper.into(),
        test: test.into(),
        measured,
        verdict,
    }
}

fn alpha(fits: &[FitRow], arch: &str) -> Option<f64> {
    fits.iter()
        .find(|f| f.arch == arch)
        .and_then(|f| f.fit.as_ref())
        .filter(|f| f.points >= MIN_POINTS)
        .map(|f| f.alpha)
}

fn by_size<'a>(rows: &'a [RunRow], arch: &str, group: RunGroup) -> BTreeMap<&'a str, &'a RunRow> {
    rows.iter()
        .filter(|r| r.arch == arch && r.group == group)
        .map(|r| (r.size.as_str(), r))
        .collect()
}

/// Per size present on both sides: (size, left, right).
fn paired<'a>(
    rows: &'a [RunRow],
    left: &str,
    right: &str,
    group: RunGroup,
) -> Vec<(&'a str, &'a RunRow, &'a RunRow)> {
    let l = by_size(rows, left, group);
    let r = by_size(rows, right, group);
    l.iter()
        .filter_map(|(size, a)| r.get(size).map(|b| (*size, *a, *b)))
        .collect()
}

fn exponent_finding(id: &str, paper: &str, fits: &[FitRow], what: &str) -> Finding {
    let test = format!("the fitted exponent of PPL against {what} is larger for RedLLM than for DecLLM (fits of at least {MIN_POINTS} sizes)");
    match (alpha(fits, "dec"), alpha(fits, "red")) {
        (Some(d), Some(r)) => finding(
            id,
            paper,
            &test,
            format!("DecLLM {d:.3}, RedLLM {r:.3}"),
            Verdict::of(r > d),
        ),
        _ => finding(
            id,
            paper,
            &test,
            "no fit of both architectures".into(),
            Verdict::NotEnoughPoints,
        ),
    }
}

/// Computes every finding from the report's numbers.
pub fn judge(report: &Report) -> Vec<Finding> {
    let mut out = Vec::new();
    let rows = &report.runs;

    // 1. PPL against parameters.
    let pairs = paired(rows, "dec", "red", RunGroup::Scaling);
    let paper = "Against parameters DecLLM has a consistently lower PPL than RedLLM.";
    let test = format!(
        "at every size (at least {MIN_POINTS}) DecLLM's source-averaged PPL is below RedLLM's"
    );
    let measured = pairs
        .iter()
        .map(|(s, d, r)| {
            format!(
                "{s}: DecLLM {:.2} ({} params), RedLLM {:.2} ({} params)",
                d.ppl, d.params, r.ppl, r.params
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    out.push(if pairs.len() < MIN_POINTS {
        finding(
            "params_dec_lower",
            paper,
            &test,
            or_none(measured),
            Verdict::NotEnoughPoints,
        )
    } else {
        let holds = pairs.iter().all(|(_, d, r)| d.ppl < r.ppl);
        finding(
            "params_dec_lower",
            paper,
            &test,
            measured,
            Verdict::of(holds),
        )
    });

    // 2, 3. Exponents (Table 2(b)).
    out.push(exponent_finding(
        "flops_exponent",
        "PPL falls faster with training FLOPs for RedLLM than for DecLLM (exponents 0.24 and 0.20 on RedPajama).",
        &report.flops_fits,
        "training FLOPs",
    ));
    out.push(exponent_finding(
        "params_exponent",
        "Against parameters RedLLM's exponent is slightly above DecLLM's (0.18 and 0.17 on RedPajama).",
        &report.params_fits,
        "parameters",
    ));

    // 4. The FLOPs curves cross.
    let paper = "Against training FLOPs the curves nearly overlap: RedLLM slightly ahead at low compute, DecLLM ahead as compute grows.";
    let test = "at the smallest FLOPs of the scaling runs RedLLM's fitted PPL is below DecLLM's, and at the largest DecLLM's is below RedLLM's";
    let fit_of = |arch: &str| {
        report
            .flops_fits
            .iter()
            .find(|f| f.arch == arch)
            .and_then(|f| f.fit.clone())
            .filter(|f| f.points >= MIN_POINTS)
    };
    let flops: Vec<f64> = rows
        .iter()
        .filter(|r| r.group == RunGroup::Scaling)
        .map(|r| r.paper_flops)
        .collect();
    out.push(match (fit_of("dec"), fit_of("red")) {
        (Some(d), Some(r)) if !flops.is_empty() => {
            let lo = flops.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = flops.iter().copied().fold(0.0, f64::max);
            let measured = format!(
                "at {lo:.3e} FLOPs DecLLM {:.2}, RedLLM {:.2}; at {hi:.3e} FLOPs DecLLM {:.2}, RedLLM {:.2}",
                d.predict(lo),
                r.predict(lo),
                d.predict(hi),
                r.predict(hi)
            );
            let holds = r.predict(lo) < d.predict(lo) && d.predict(hi) < r.predict(hi);
            finding("flops_crossover", paper, test, measured, Verdict::of(holds))
        }
        _ => finding("flops_crossover", paper, test, "no fit of both architectures".into(), Verdict::NotEnoughPoints),
    });

    // 5. The compute-optimal frontier.
    let paper = "DecLLM dominates the compute-optimal frontier as compute grows.";
    let test = format!("at the largest FLOPs budget with at least {MIN_POINTS} sizes of both architectures, DecLLM's best loss is below RedLLM's");
    let mut budgets: Vec<f64> = report.isoflop.iter().map(|c| c.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let best = |arch: &str, budget: f64| {
        report
            .isoflop
            .iter()
            .find(|c| c.arch == arch && c.budget == budget && c.points.len() >= MIN_POINTS)
            .map(|c| c.points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min))
    };
    let top = budgets
        .iter()
        .rev()
        .find_map(|&b| Some((b, best("dec", b)?, best("red", b)?)));
    out.push(match top {
        Some((b, d, r)) => finding(
            "isoflop_frontier",
            paper,
            &test,
            format!(
                "at {b:.3e} FLOPs DecLLM {d:.4} (PPL {:.2}), RedLLM {r:.4} (PPL {:.2})",
                d.exp(),
                r.exp()
            ),
            Verdict::of(d < r),
        ),
        None => finding(
            "isoflop_frontier",
            paper,
            &test,
            "no isoFLOP budget with enough runs of both".into(),
            Verdict::NotEnoughPoints,
        ),
    });

    // 6. Length extrapolation.
    let train = report.shape.seq_len;
    let k = report.shape.prefix_len;
    let paper = "DecLLM's PPL is stable to about twice the trained length and then diverges; RedLLM's rises smoothly.";
    let test = "at the training split, PPL at the longest length over PPL at the training length rises more for DecLLM than for RedLLM (needs a length beyond twice the training length)";
    let ratio = |arch: &str| {
        let curve = report
            .lengths
            .iter()
            .find(|c| c.arch == arch && c.prefix_len == k)?;
        let base = curve.points.iter().find(|p| p.0 == train)?.1;
        let last = curve.points.iter().max_by_key(|p| p.0)?;
        (last.0 > 2 * train).then_some((last.0, last.1 / base))
    };
    out.push(match (ratio("dec"), ratio("red")) {
        (Some((ld, d)), Some((lr, r))) => finding(
            "length_extrapolation",
            paper,
            test,
            format!(
                "PPL ratio DecLLM {d:.3} (at {ld}), RedLLM {r:.3} (at {lr}), trained at {train}"
            ),
            Verdict::of(d > r),
        ),
        _ => finding(
            "length_extrapolation",
            paper,
            test,
            "no length beyond twice the training length for both".into(),
            Verdict::NotEnoughPoints,
        ),
    });

    // 7. Prefix length 1.
    let paper = "Prefix length 1 hurts RedLLM on short sequences.";
    let test = "at the training length, PPL with prefix 1 over PPL with the training split is larger for RedLLM than for DecLLM";
    let prefix_ratio = |arch: &str| {
        let at = |p: usize| {
            report
                .lengths
                .iter()
                .find(|c| c.arch == arch && c.prefix_len == p)?
                .points
                .iter()
                .find(|q| q.0 == train)
                .map(|q| q.1)
        };
        Some(at(1)? / at(k)?)
    };
    out.push(match (prefix_ratio("dec"), prefix_ratio("red")) {
        (Some(d), Some(r)) if k > 1 => finding(
            "prefix_one",
            paper,
            test,
            format!("PPL(k=1) / PPL(k={k}) at length {train}: DecLLM {d:.3}, RedLLM {r:.3}"),
            Verdict::of(r > d),
        ),
        _ => finding(
            "prefix_one",
            paper,
            test,
            "prefix length 1 was not evaluated for both".into(),
            Verdict::NotEnoughPoints,
        ),
    });

    // 8, 9. After finetuning.
    let pairs = paired(rows, "red", "dec", RunGroup::Finetune);
    let paper = "After instruction tuning RedLLM matches or beats DecLLM at equal parameters.";
    let test = "at every finetuned size RedLLM's held-out loss is at most DecLLM's";
    let measured = pairs
        .iter()
        .map(|(s, r, d)| format!("{s}: RedLLM {:.4}, DecLLM {:.4}", r.loss, d.loss))
        .collect::<Vec<_>>()
        .join("; ");
    out.push(if pairs.is_empty() {
        finding(
            "finetune_red",
            paper,
            test,
            or_none(measured),
            Verdict::NotEnoughPoints,
        )
    } else {
        let holds = pairs.iter().all(|(_, r, d)| r.loss <= d.loss);
        finding("finetune_red", paper, test, measured, Verdict::of(holds))
    });
    let pairs = paired(rows, "dec-biattn", "dec", RunGroup::Finetune);
    let paper = "DecLLM + BiAttn improves greatly on DecLLM after instruction tuning.";
    let test = "at every finetuned size DecLLM + BiAttn's held-out loss is below DecLLM's";
    let measured = pairs
        .iter()
        .map(|(s, b, d)| format!("{s}: DecLLM + BiAttn {:.4}, DecLLM {:.4}", b.loss, d.loss))
        .collect::<Vec<_>>()
        .join("; ");
    out.push(if pairs.is_empty() {
        finding(
            "finetune_biattn",
            paper,
            test,
            or_none(measured),
            Verdict::NotEnoughPoints,
        )
    } else {
        let holds = pairs.iter().all(|(_, b, d)| b.loss < d.loss);
        finding("finetune_biattn", paper, test, measured, Verdict::of(holds))
    });
    if rows.iter().any(|r| !r.tasks.is_empty()) {
        out.extend(task_findings(rows));
    }
    out
}

/// `row`'s task average under `shots`.
fn task_average(row: &RunRow, shots: &str) -> Option<f64> {
    row.tasks
        .iter()
        .find(|t| t.shots == shots)
        .map(|t| t.average)
}

/// Per size with both runs scored under `shots`: (size, RedLLM, DecLLM) task averages.
fn task_pairs(rows: &[RunRow], group: RunGroup, shots: &str) -> Vec<(String, f64, f64)> {
    paired(rows, "red", "dec", group)
        .into_iter()
        .filter_map(|(size, r, d)| {
            Some((
                size.to_string(),
                task_average(r, shots)?,
                task_average(d, shots)?,
            ))
        })
        .collect()
}

/// A finding that compares RedLLM's and DecLLM's task averages, `(label, red, dec)` per pair;
/// reproduced when `holds` for every pair.
fn task_finding(
    id: &str,
    paper: &str,
    test: &str,
    pairs: &[(String, f64, f64)],
    holds: fn(f64, f64) -> bool,
) -> Finding {
    let measured = pairs
        .iter()
        .map(|(s, r, d)| format!("{s}: RedLLM {r:.2}, DecLLM {d:.2}"))
        .collect::<Vec<_>>()
        .join("; ");
    if pairs.is_empty() {
        finding(id, paper, test, or_none(measured), Verdict::NotEnoughPoints)
    } else {
        let verdict = Verdict::of(pairs.iter().all(|&(_, r, d)| holds(r, d)));
        finding(id, paper, test, measured, verdict)
    }
}

/// The downstream findings, for a study whose runs were scored on the tasks.
fn task_findings(rows: &[RunRow]) -> Vec<Finding> {
    let zero_shot = task_finding(
        "zero_shot_pretrained",
        "Before instruction tuning RedLLM is weak at zero-shot.",
        "at every pretrained size RedLLM's zero-shot task average is below DecLLM's (tasks.shots includes 0)",
        &task_pairs(rows, RunGroup::Scaling, "0"),
        |red, dec| red < dec,
    );
    let mut settings: Vec<&str> = rows
        .iter()
        .filter(|r| r.group == RunGroup::Finetune)
        .flat_map(|r| r.tasks.iter().map(|t| t.shots.as_str()))
        .collect();
    settings.sort_unstable();
    settings.dedup();
    let tuned: Vec<(String, f64, f64)> = settings
        .iter()
        .flat_map(|shots| {
            task_pairs(rows, RunGroup::Finetune, shots)
                .into_iter()
                .map(move |(size, r, d)| (format!("{size} ({shots} shots)"), r, d))
        })
        .collect();
    let finetuned = task_finding(
        "tasks_finetune_red",
        "After instruction tuning RedLLM matches or beats DecLLM on the downstream tasks at equal parameters.",
        "at every finetuned size and shots setting RedLLM's task average is at least DecLLM's",
        &tuned,
        |red, dec| red >= dec,
    );
    vec![zero_shot, finetuned]
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "no run on one side".into()
    } else {
        text
    }
}
