//! `report.md`: the report's tables, plots and findings as Markdown.

use std::fmt::Write;

use super::fit::{PowerLaw, MIN_POINTS};
use super::model::{FitRow, Report};
use super::RunGroup;
use crate::config::human_count;

fn arch_name(arch: &str) -> &str {
    match arch {
        "dec" => "DecLLM",
        "red" => "RedLLM",
        "dec-biattn" => "DecLLM + BiAttn",
        other => other,
    }
}

fn fit_cell(fit: &Option<PowerLaw>) -> (String, String, String) {
    match fit {
        Some(f) => (
            format!(
                "{:.3}{}",
                f.alpha,
                if f.points < MIN_POINTS {
                    " (too few points)"
                } else {
                    ""
                }
            ),
            format!("{:.4}", f.r2),
            f.residuals
                .iter()
                .map(|r| format!("{r:+.4}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    }
}

fn fit_table(out: &mut String, fits: &[FitRow], x: &str) {
    let _ = writeln!(out, "| architecture | runs | exponent (ours) | exponent (paper, RedPajama) | R² (log) | residuals of ln PPL |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for f in fits {
        let (alpha, r2, residuals) = fit_cell(&f.fit);
        let _ = writeln!(
            out,
            "| {} | {} | {alpha} | {} | {r2} | {residuals} |",
            arch_name(&f.arch),
            f.runs.len(),
            f.paper_alpha.map_or("-".into(), |a| format!("{a:.2}")),
        );
    }
    let _ = writeln!(
        out,
        "\nPPL = A · {x}^(−exponent), fitted by least squares on ln PPL against ln {x}.\n"
    );
}

/// The whole report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Study report: {}\n", report.name);
    if !report.description.is_empty() {
        let _ = writeln!(out, "{}\n", report.description.trim());
    }
    if report.synthetic {
        let _ = writeln!(
            out,
            "**This study ran on generated text (the built-in default corpus). It proves that the path works (training, evaluation, fits, plots, report); its numbers say nothing about the paper's science.**\n"
        );
    }
    let _ = writeln!(
        out,
        "Every number below is read from the run folders (`runs/<name>/metrics.jsonl`, `study-eval.json`, `study-locality/`); only the paper's exponents are quoted. PPL is the source-averaged perplexity (mean over sources of each source's PPL) on the held-out split at the training length {} with prefix {}. Parameters are non-embedding (encoder + decoder stacks); training FLOPs are the paper's 6 · N · D per stack.\n",
        report.shape.seq_len, report.shape.prefix_len
    );
    if !report.unfinished.is_empty() {
        let _ = writeln!(
            out,
            "Unfinished runs, left out of every table and fit: {}.\n",
            report.unfinished.join(", ")
        );
    }

    let _ = writeln!(out, "## Findings\n");
    let _ = writeln!(out, "| finding (paper) | test | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|---|");
    for f in &report.findings {
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{}** |",
            f.paper,
            f.test,
            f.measured,
            f.verdict.text()
        );
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## Runs\n");
    let _ = writeln!(out, "| run | arch | size | params | all params | steps | scored tokens | training FLOPs (6ND) | final train loss | eval loss | PPL | train s | eval s |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &report.runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.3e} | {:.4} | {:.4} | {:.2} | {:.1} | {:.1} |",
            r.name,
            arch_name(&r.arch),
            r.size,
            human_count(r.params),
            human_count(r.total_params),
            r.steps,
            human_count(r.tokens_seen),
            r.paper_flops,
            r.final_train_loss,
            r.loss,
            r.ppl,
            r.train_seconds,
            r.eval_seconds
        );
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## 1. PPL against parameters\n");
    plot(
        &mut out,
        report,
        "ppl_vs_params.png",
        "PPL against non-embedding parameters",
    );
    fit_table(&mut out, &report.params_fits, "N");
    let _ = writeln!(out, "## 2. PPL against training FLOPs (Table 2(b))\n");
    plot(
        &mut out,
        report,
        "ppl_vs_flops.png",
        "PPL against training FLOPs",
    );
    fit_table(&mut out, &report.flops_fits, "C");

    let _ = writeln!(out, "## 3. isoFLOP curves\n");
    if report.isoflop.is_empty() {
        let _ = writeln!(
            out,
            "The grid has no FLOPs budgets (`isoflops` in `[pretrain]`).\n"
        );
    } else {
        plot(
            &mut out,
            report,
            "isoflop.png",
            "loss against parameters per FLOPs budget",
        );
        let _ = writeln!(out, "| architecture | budget (FLOPs) | runs | lowest loss (params) | parabola minimum: params | PPL there | residuals of loss |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for c in &report.isoflop {
            let lowest = c
                .points
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or("-".into(), |p| {
                    format!("{:.4} ({})", p.1, human_count(p.0 as u64))
                });
            let (n, ppl) = c.optimum.map_or(("-".into(), "-".into()), |(n, p)| {
                (human_count(n as u64), format!("{p:.2}"))
            });
            let residuals = c.parabola.as_ref().map_or(
                if c.points.len() < MIN_POINTS {
                    "too few points".into()
                } else {
                    "-".into()
                },
                |p| {
                    p.residuals
                        .iter()
                        .map(|r| format!("{r:+.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            );
            let _ = writeln!(
                out,
                "| {} | {:.3e} | {} | {lowest} | {n} | {ppl} | {residuals} |",
                arch_name(&c.arch),
                c.budget,
                c.runs.len()
            );
        }
        let _ = writeln!(out, "\nA parabola of loss in ln(parameters) per budget; its minimum is the compute-optimal size (\"-\" when it opens downwards: the optimum is at an edge of the grid).\n");
    }

    let _ = writeln!(out, "## 4. Length extrapolation\n");
    plot(
        &mut out,
        report,
        "length_extrapolation.png",
        "PPL against context length",
    );
    let mut lengths: Vec<usize> = report
        .lengths
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    if !lengths.is_empty() {
        let head: Vec<String> = lengths.iter().map(|l| format!("L = {l}")).collect();
        let _ = writeln!(out, "| run | prefix | {} |", head.join(" | "));
        let _ = writeln!(out, "|---|---|{}", "---|".repeat(lengths.len()));
        for c in &report.lengths {
            let cells: Vec<String> = lengths
                .iter()
                .map(|l| {
                    c.points
                        .iter()
                        .find(|p| p.0 == *l)
                        .map_or("-".into(), |p| format!("{:.2}", p.1))
                })
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                c.run,
                c.prefix_len,
                cells.join(" | ")
            );
        }
        let _ = writeln!(out, "\nThe largest scaling run of each architecture; source-averaged PPL of tokens [k, L).\n");
    }

    let _ = writeln!(out, "## 5. Local attention probability\n");
    plot(
        &mut out,
        report,
        "locality.png",
        "local attention probability against position",
    );
    let _ = writeln!(out, "| run | attention | overall |");
    let _ = writeln!(out, "|---|---|---|");
    for c in &report.locality {
        let _ = writeln!(out, "| {} | {} | {:.4} |", c.run, c.attention, c.overall);
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## 6. After finetuning\n");
    let tuned: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.group == RunGroup::Finetune)
        .collect();
    if tuned.is_empty() {
        let _ = writeln!(out, "The study has no finetuning runs.\n");
    } else {
        plot(
            &mut out,
            report,
            "finetune.png",
            "held-out loss against inference FLOPs",
        );
        let _ = writeln!(out, "| run | arch | size | inference FLOPs per example | held-out loss (best checkpoint) | PPL |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for r in tuned {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3e} | {:.4} | {:.2} |",
                r.name,
                arch_name(&r.arch),
                r.size,
                r.inference_flops.unwrap_or(f64::NAN),
                r.loss,
                r.ppl
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## 7. Downstream tasks\n");
    let scored: Vec<_> = report.runs.iter().filter(|r| !r.tasks.is_empty()).collect();
    if scored.is_empty() {
        let _ = writeln!(
            out,
            "The study scores no downstream tasks (add a `[tasks]` table to the study file).\n"
        );
        return out;
    }
    plot(
        &mut out,
        report,
        "tasks.png",
        "task average against non-embedding parameters",
    );
    let mut names: Vec<&str> = scored
        .iter()
        .flat_map(|r| {
            r.tasks
                .iter()
                .flat_map(|t| t.scores.keys().map(String::as_str))
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let _ = writeln!(
        out,
        "Scores in percent: accuracy, exact match, or ChrF for WMT; pretrained runs from their \
         final checkpoint, finetuned runs from their best.\n"
    );
    let _ = writeln!(
        out,
        "| run | arch | size | shots | average | {} |",
        names.join(" | ")
    );
    let _ = writeln!(out, "|---|---|---|---|---|{}", "---|".repeat(names.len()));
    for r in scored {
        for t in &r.tasks {
            let cells: Vec<String> = names
                .iter()
                .map(|n| t.scores.get(*n).map_or("-".into(), |v| format!("{v:.1}")))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {} |",
                r.name,
                arch_name(&r.arch),
                r.size,
                t.shots,
                t.average,
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(out);
    out
}

fn plot(out: &mut String, report: &Report, file: &str, title: &str) {
    if report.plots.iter().any(|p| p == file) {
        let _ = writeln!(out, "![{title}](plots/{file})\n");
    }
}
