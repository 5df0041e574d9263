//! The report's PNG plots, drawn with plotters into an RGB buffer and encoded with `png`. Text
//! uses the bundled DejaVu Sans (`cli/assets/`), so no system font library is needed. One colour
//! per architecture; log scales where the paper uses them.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use anyhow::Context;
use plotters::prelude::*;
use redpack_trainer::study::report::Report;
use redpack_trainer::study::RunGroup;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 640;
const FONT: &str = "sans-serif";

static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font compiled in; a failure would only mean text is
        // not drawn, which the PNG checks would show.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../../assets/DejaVuSans.ttf"),
        );
    });
}

fn arch_colour(arch: &str) -> RGBColor {
    match arch {
        "dec" => RGBColor(31, 119, 180),
        "red" => RGBColor(214, 39, 40),
        _ => RGBColor(44, 160, 44),
    }
}

fn arch_name(arch: &str) -> &str {
    match arch {
        "dec" => "DecLLM",
        "red" => "RedLLM",
        "dec-biattn" => "DecLLM + BiAttn",
        other => other,
    }
}

/// `colour` lightened towards white by `t` in [0, 1).
fn shade(colour: RGBColor, t: f64) -> RGBColor {
    let mix = |c: u8| (c as f64 + (255.0 - c as f64) * t).round() as u8;
    RGBColor(mix(colour.0), mix(colour.1), mix(colour.2))
}

/// Shades for `n` curves of one architecture: darkest last.
fn shade_for(i: usize, n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        0.6 * (n - 1 - i) as f64 / (n - 1) as f64
    }
}

fn sci(x: &f64) -> String {
    format!("{x:.1e}")
}

fn plain(x: &f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn whole(x: &f64) -> String {
    format!("{x:.0}")
}

type Points = Vec<(f64, f64)>;

/// A series to draw: points (markers) and a line through `line` (a fit or the points).
struct Series {
    label: String,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
    line: Vec<(f64, f64)>,
    /// Points drawn as large crosses (optima).
    marks: Vec<(f64, f64)>,
}

struct Axes<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x_fmt: fn(&f64) -> String,
    y_fmt: fn(&f64) -> String,
    /// Log scales: values are drawn at their logarithm, ticks labelled with the values.
    x_log: bool,
    y_log: bool,
    /// A fixed y range (linear axes only); else from the data.
    y_fixed: Option<Range<f64>>,
    /// Where the legend goes: the corner the curves leave free.
    legend: SeriesLabelPosition,
}

fn range_of(values: impl Iterator<Item = f64>, log: bool) -> Option<Range<f64>> {
    let values: Vec<f64> = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .map(|v| if log { v.ln() } else { v })
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return None;
    }
    let pad = ((hi - lo) * 0.08).max(if log { 0.05 } else { 1e-3 });
    Some(lo - pad..hi + pad)
}

/// Draws `series` into a PNG at `path`; nothing is written when no series has a point.
fn draw(path: &Path, axes: &Axes, series: &[Series]) -> anyhow::Result<bool> {
    let map = |(x, y): (f64, f64)| {
        (
            if axes.x_log { x.ln() } else { x },
            if axes.y_log { y.ln() } else { y },
        )
    };
    let drawn: Vec<[Points; 3]> = series
        .iter()
        .map(|s| {
            let keep = |p: &&(f64, f64)| {
                p.0.is_finite()
                    && p.1.is_finite()
                    && (!axes.x_log || p.0 > 0.0)
                    && (!axes.y_log || p.1 > 0.0)
            };
            let conv = |v: &[(f64, f64)]| v.iter().filter(keep).map(|&p| map(p)).collect();
            [conv(&s.points), conv(&s.line), conv(&s.marks)]
        })
        .collect();
    let all = || {
        drawn
            .iter()
            .flat_map(|parts| parts.iter().flatten().copied())
    };
    let raw = |v: f64, log: bool| if log { v.exp() } else { v };
    let Some(x_range) = range_of(all().map(|p| raw(p.0, axes.x_log)), axes.x_log) else {
        return Ok(false);
    };
    let y_range = match &axes.y_fixed {
        Some(r) => r.clone(),
        None => match range_of(all().map(|p| raw(p.1, axes.y_log)), axes.y_log) {
            Some(r) => r,
            None => return Ok(false),
        },
    };
    register_font();
    let x_label = |v: &f64| (axes.x_fmt)(&raw(*v, axes.x_log));
    let y_label = |v: &f64| (axes.y_fmt)(&raw(*v, axes.y_log));
    let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        let fail =
            |e: &dyn std::fmt::Debug| anyhow::anyhow!("{}: drawing failed: {e:?}", path.display());
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(80)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(|e| fail(&e))?;
        for (s, [points, line, marks]) in series.iter().zip(&drawn) {
            let colour = s.colour;
            if line.len() > 1 {
                chart
                    .draw_series(LineSeries::new(
                        line.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| fail(&e))?;
            }
            let legend = if points.is_empty() {
                chart.draw_series(std::iter::once(PathElement::new(
                    line.clone(),
                    colour.stroke_width(2),
                )))
            } else {
                chart.draw_series(
                    points
                        .iter()
                        .map(move |&p| Circle::new(p, 5, colour.filled())),
                )
            };
            legend
                .map_err(|e| fail(&e))?
                .label(s.label.clone())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
            chart
                .draw_series(
                    marks
                        .iter()
                        .map(|&p| Cross::new(p, 9, BLACK.stroke_width(3))),
                )
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(axes.legend.clone())
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .with_context(|| format!("{}: cannot encode the PNG", path.display()))?;
        writer
            .write_image_data(&buffer)
            .with_context(|| format!("{}: cannot encode the PNG", path.display()))?;
    }
    redpack_schemas::atomic::write_file(path, &png_bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(true)
}

/// A fitted power law drawn over the span of its points.
fn power_line(fit: &redpack_trainer::study::fit::PowerLaw, xs: &[f64]) -> Vec<(f64, f64)> {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(0.0, f64::max);
    (0..=40)
        .map(|i| {
            let x = lo * (hi / lo).powf(i as f64 / 40.0);
            (x, fit.predict(x))
        })
        .collect()
}

fn scaling_series(report: &Report, by_flops: bool) -> Vec<Series> {
    let fits = if by_flops {
        &report.flops_fits
    } else {
        &report.params_fits
    };
    fits.iter()
        .map(|f| {
            let points: Vec<(f64, f64)> = report
                .runs
                .iter()
                .filter(|r| r.arch == f.arch && r.group == RunGroup::Scaling)
                .map(|r| {
                    let x = if by_flops {
                        r.paper_flops
                    } else {
                        r.params as f64
                    };
                    (x, r.ppl)
                })
                .collect();
            let xs: Vec<f64> = points.iter().map(|p| p.0).collect();
            let label = match &f.fit {
                Some(fit) => format!(
                    "{} (exponent {:.3}; paper {})",
                    arch_name(&f.arch),
                    fit.alpha,
                    f.paper_alpha.map_or("-".into(), |a| format!("{a:.2}"))
                ),
                None => arch_name(&f.arch).to_string(),
            };
            Series {
                label,
                colour: arch_colour(&f.arch),
                line: f
                    .fit
                    .as_ref()
                    .map_or_else(Vec::new, |fit| power_line(fit, &xs)),
                points,
                marks: Vec::new(),
            }
        })
        .collect()
}

/// Writes every plot the report has data for into `dir`; returns their file names.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |file: &str, axes: &Axes, series: &[Series]| -> anyhow::Result<()> {
        if draw(&dir.join(file), axes, series)? {
            written.push(file.to_string());
        }
        Ok(())
    };

    for (file, by_flops) in [("ppl_vs_params.png", false), ("ppl_vs_flops.png", true)] {
        let axes = Axes {
            title: if by_flops {
                "PPL against training FLOPs"
            } else {
                "PPL against parameters"
            },
            x_desc: if by_flops {
                "training FLOPs (6·N·D per stack, log scale)"
            } else {
                "non-embedding parameters (log scale)"
            },
            y_desc: "held-out PPL, source average (log scale)",
            x_fmt: sci,
            y_fmt: plain,
            x_log: true,
            y_log: true,
            y_fixed: None,
            legend: SeriesLabelPosition::UpperRight,
        };
        put(file, &axes, &scaling_series(report, by_flops))?;
    }

    if !report.isoflop.is_empty() {
        let mut series = Vec::new();
        for arch in ["dec", "red"] {
            let curves: Vec<_> = report.isoflop.iter().filter(|c| c.arch == arch).collect();
            for (i, c) in curves.iter().enumerate() {
                let line = match &c.parabola {
                    Some(p) => {
                        let lo = c.points.iter().map(|q| q.0).fold(f64::INFINITY, f64::min);
                        let hi = c.points.iter().map(|q| q.0).fold(0.0, f64::max);
                        (0..=40)
                            .map(|k| {
                                let x = lo * (hi / lo).powf(k as f64 / 40.0);
                                (x, p.predict(x))
                            })
                            .collect()
                    }
                    None => c.points.clone(),
                };
                series.push(Series {
                    label: format!("{} {:.1e} FLOPs", arch_name(arch), c.budget),
                    colour: shade(arch_colour(arch), shade_for(i, curves.len())),
                    points: c.points.clone(),
                    line,
                    marks: c
                        .optimum
                        .map(|(n, ppl)| vec![(n, ppl.ln())])
                        .unwrap_or_default(),
                });
            }
        }
        let axes = Axes {
            title: "isoFLOP curves (crosses: fitted compute-optimal size)",
            x_desc: "non-embedding parameters (log scale)",
            y_desc: "held-out loss, source average (nats per token)",
            x_fmt: sci,
            y_fmt: plain,
            x_log: true,
            y_log: false,
            y_fixed: None,
            legend: SeriesLabelPosition::LowerRight,
        };
        put("isoflop.png", &axes, &series)?;
    }

    if !report.lengths.is_empty() {
        let mut series = Vec::new();
        for arch in ["dec", "red"] {
            let curves: Vec<_> = report.lengths.iter().filter(|c| c.arch == arch).collect();
            for (i, c) in curves.iter().enumerate() {
                let points: Vec<(f64, f64)> =
                    c.points.iter().map(|&(l, p)| (l as f64, p)).collect();
                series.push(Series {
                    label: format!("{} prefix {} ({})", arch_name(arch), c.prefix_len, c.run),
                    colour: shade(arch_colour(arch), shade_for(i, curves.len())),
                    line: points.clone(),
                    points,
                    marks: Vec::new(),
                });
            }
        }
        let axes = Axes {
            title: "Length extrapolation",
            x_desc: "context length in tokens (log scale)",
            y_desc: "held-out PPL of tokens [k, L) (log scale)",
            x_fmt: whole,
            y_fmt: plain,
            x_log: true,
            y_log: true,
            y_fixed: None,
            legend: SeriesLabelPosition::UpperRight,
        };
        put("length_extrapolation.png", &axes, &series)?;
    }

    if !report.locality.is_empty() {
        let mut series = Vec::new();
        for arch in ["dec", "red"] {
            let curves: Vec<_> = report.locality.iter().filter(|c| c.arch == arch).collect();
            for (i, c) in curves.iter().enumerate() {
                series.push(Series {
                    label: format!("{} {} ({})", arch_name(arch), c.attention, c.run),
                    colour: shade(arch_colour(arch), shade_for(i, curves.len())),
                    line: c.points.iter().map(|&(p, m)| (p as f64, m)).collect(),
                    points: Vec::new(),
                    marks: Vec::new(),
                });
            }
        }
        let axes = Axes {
            title: "Local attention probability by position",
            x_desc: "query position in the row (token index)",
            y_desc: "attention mass within the local window",
            x_fmt: whole,
            y_fmt: plain,
            x_log: false,
            y_log: false,
            y_fixed: Some(0.0..1.0),
            legend: SeriesLabelPosition::UpperRight,
        };
        put("locality.png", &axes, &series)?;
    }

    let tuned: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.group == RunGroup::Finetune)
        .collect();
    if !tuned.is_empty() {
        let mut series = Vec::new();
        for arch in ["dec", "red", "dec-biattn"] {
            let mut points: Vec<(f64, f64)> = tuned
                .iter()
                .filter(|r| r.arch == arch)
                .filter_map(|r| Some((r.inference_flops?, r.loss)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !points.is_empty() {
                series.push(Series {
                    label: arch_name(arch).to_string(),
                    colour: arch_colour(arch),
                    line: points.clone(),
                    points,
                    marks: Vec::new(),
                });
            }
        }
        let axes = Axes {
            title: "After finetuning: quality against inference cost",
            x_desc: "inference FLOPs per held-out example (2·N per token per stack, log scale)",
            y_desc: "held-out loss, best checkpoint (nats per token)",
            x_fmt: sci,
            y_fmt: plain,
            x_log: true,
            y_log: false,
            y_fixed: None,
            legend: SeriesLabelPosition::UpperRight,
        };
        put("finetune.png", &axes, &series)?;
    }

    // Downstream tasks: one series per architecture, stage and shots setting, told apart by
    // shade within an architecture's colour.
    let mut settings: Vec<&str> = report
        .runs
        .iter()
        .flat_map(|r| r.tasks.iter().map(|t| t.shots.as_str()))
        .collect();
    settings.sort_unstable();
    settings.dedup();
    let mut series = Vec::new();
    for (group, stage) in [
        (RunGroup::Scaling, "pretrained"),
        (RunGroup::Finetune, "finetuned"),
    ] {
        for arch in ["dec", "red", "dec-biattn"] {
            for (i, shots) in settings.iter().enumerate() {
                let mut points: Vec<(f64, f64)> = report
                    .runs
                    .iter()
                    .filter(|r| r.arch == arch && r.group == group)
                    .filter_map(|r| {
                        let t = r.tasks.iter().find(|t| t.shots == *shots)?;
                        Some((r.params as f64, t.average))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                if points.is_empty() {
                    continue;
                }
                let stage_index = usize::from(group == RunGroup::Finetune);
                let t = shade_for(stage_index * settings.len() + i, 2 * settings.len());
                series.push(Series {
                    label: format!("{} {stage}, {shots} shots", arch_name(arch)),
                    colour: shade(arch_colour(arch), t),
                    line: points.clone(),
                    points,
                    marks: Vec::new(),
                });
            }
        }
    }
    if !series.is_empty() {
        let axes = Axes {
            title: "Downstream tasks",
            x_desc: "non-embedding parameters (log scale)",
            y_desc: "task average (percent)",
            x_fmt: sci,
            y_fmt: plain,
            x_log: true,
            y_log: false,
            y_fixed: None,
            legend: SeriesLabelPosition::UpperLeft,
        };
        put("tasks.png", &axes, &series)?;
    }
    Ok(written)
}
