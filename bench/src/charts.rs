//! SVG charts of the load curves and of the delivery latency distributions.

use std::path::Path;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::history::HistoryPoint;
use crate::scenarios::{Curve, Delivery};

/// A line of a chart: label, colour, dashed, points.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

const FLOOR: RGBColor = RGBColor(90, 90, 90);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(230, 120, 20);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("chart: {e}")
}

/// Axes and captions of a chart.
struct Frame<'a> {
    caption: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// Logarithmic x axis (y is always logarithmic).
    log_x: bool,
    x_label: &'a dyn Fn(&f64) -> String,
    legend: SeriesLabelPosition,
}

fn plotted(lines: &[Line]) -> Vec<(f64, f64)> {
    lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0)
        .collect()
}

/// Draws `lines` on log-log axes (or log y with a linear x when `log_x` is false), in a
/// file of their own.
fn draw(path: &Path, frame: Frame<'_>, lines: &[Line]) -> Result<()> {
    if plotted(lines).is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    draw_on(&root, frame, lines)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Draws `lines` on `area` (see [`draw`]).
fn draw_on(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    frame: Frame<'_>,
    lines: &[Line],
) -> Result<()> {
    let Frame {
        caption,
        x_desc,
        y_desc,
        log_x,
        x_label,
        legend,
    } = frame;
    let all = plotted(lines);
    if all.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    let (y0, y1) = (y0 / 1.5, y1 * 1.5);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(x_label)
                .y_label_formatter(&|y| {
                    if *y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y}")
                    }
                })
                .draw()
                .map_err(err)?;
            for l in lines {
                let pts: Vec<(f64, f64)> = l
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0)
                    .collect();
                let color = l.color;
                let style = color.stroke_width(2);
                let series = if l.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                        .map_err(err)?
                } else {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), style))
                        .map_err(err)?
                };
                series.label(l.label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
                if log_x {
                    chart
                        .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                        .map_err(err)?;
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(legend.clone())
                .draw()
                .map_err(err)?;
        }};
    }
    if log_x {
        body!(builder
            .build_cartesian_2d((x0 / 1.2..x1 * 1.2).log_scale(), (y0..y1).log_scale())
            .map_err(err)?);
    } else {
        body!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(err)?);
    }
    Ok(())
}

fn rate_label(x: &f64) -> String {
    if *x >= 1000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// Acknowledgement latency (p50 and p99, µs) against offered posts/s, with the floor.
pub fn ack_curves(path: &Path, floor: Option<&Curve>, acks: &[&Curve]) -> Result<()> {
    let mut lines = Vec::new();
    let mut add = |c: &Curve, color: RGBColor, name: &str| {
        let pts = |f: fn(&crate::stats::Lat) -> f64| -> Vec<(f64, f64)> {
            c.points.iter().map(|p| (p.offered, f(&p.answer))).collect()
        };
        lines.push(Line {
            label: format!("{name} p50"),
            color,
            dashed: false,
            points: pts(|l| l.p50_us),
        });
        lines.push(Line {
            label: format!("{name} p99"),
            color,
            dashed: true,
            points: pts(|l| l.p99_us),
        });
    };
    if let Some(f) = floor {
        add(f, FLOOR, "floor (2 quinn round trips)");
    }
    for (c, color) in acks.iter().zip([BLUE, RED]) {
        add(c, color, &c.label);
    }
    draw(
        path,
        Frame {
            caption:
                "Acknowledgement latency from the intended send time vs offered load (open loop)",
            x_desc: "offered posts/s (log)",
            y_desc: "latency, µs (log)",
            log_x: true,
            x_label: &rate_label,
            legend: SeriesLabelPosition::UpperLeft,
        },
        &lines,
    )
}

/// Delivery latency (p50 and p99, ms) against offered posts/s.
pub fn delivery_curves(path: &Path, c: &Curve) -> Result<()> {
    let mut lines = Vec::new();
    for (which, color, name) in [(0, BLUE, "other cluster"), (1, GREEN, "same cluster")] {
        let get = |p: &crate::scenarios::Point| if which == 0 { p.cross } else { p.same };
        for (dashed, q) in [(false, "p50"), (true, "p99")] {
            lines.push(Line {
                label: format!("{name}, {q}"),
                color,
                dashed,
                points: c
                    .points
                    .iter()
                    .filter_map(|p| {
                        get(p).map(|l| (p.offered, if dashed { l.p99_us } else { l.p50_us } / 1e3))
                    })
                    .collect(),
            });
        }
    }
    draw(
        path,
        Frame {
            caption: "Delivery latency (post -> follower's open timeline) vs offered load, -q 500, event-driven",
            x_desc: "offered posts/s (log)",
            y_desc: "latency from the intended send time, ms (log)",
            log_x: true,
            x_label: &rate_label,
            legend: SeriesLabelPosition::UpperLeft,
        },
        &lines,
    )
}

/// Delivery latency distribution at one period, event- against period-driven.
pub fn delivery_distribution(path: &Path, d: &[Delivery], period_ms: u64) -> Result<()> {
    let mut lines = Vec::new();
    for x in d.iter().filter(|x| x.period_ms == period_ms) {
        let color = match (x.mode.as_str(), x.path.as_str()) {
            ("event", "cross") => BLUE,
            ("event", _) => GREEN,
            (_, "cross") => RED,
            _ => ORANGE,
        };
        lines.push(Line {
            label: format!(
                "--delivery {}, {} cluster",
                x.mode,
                if x.path == "cross" { "other" } else { "same" }
            ),
            color,
            dashed: x.path == "same",
            points: x
                .distribution
                .iter()
                .map(|(q, us)| (*q, us / 1e3))
                .collect(),
        });
    }
    draw(
        path,
        Frame {
            caption: &format!("Delivery latency distribution at low load, -q {period_ms}"),
            x_desc: "percentile",
            y_desc: "latency from the intended send time, ms (log)",
            log_x: false,
            x_label: &|x: &f64| {
                let p = 100.0 * (1.0 - 10f64.powf(-x));
                if p >= 99.0 {
                    format!("{p:.1}%")
                } else {
                    format!("{p:.0}%")
                }
            },
            legend: SeriesLabelPosition::LowerRight,
        },
        &lines,
    )
}

/// Section 9: restart times (above) and memory and disk (below) of the active server
/// against the number of posts in its history.
pub fn history(path: &Path, points: &[HistoryPoint]) -> Result<()> {
    let series = |label: &str,
                  color: RGBColor,
                  dashed: bool,
                  f: &dyn Fn(&HistoryPoint) -> Option<f64>| Line {
        label: label.to_string(),
        color,
        dashed,
        points: points
            .iter()
            .filter_map(|p| Some((p.posts as f64, f(p)?)))
            .collect(),
    };
    let ms = |v: Option<f64>| v.map(|s| s * 1e3);
    let times = [
        series("spawn -> /ready 200", BLUE, false, &|p| {
            ms(p.restart_to_ready_s)
        }),
        series("spawn -> LIST answered", GREEN, true, &|p| {
            ms(p.restart_to_list_s)
        }),
        series(
            "standby away for the last 10%: spawn -> mirrored again",
            ORANGE,
            false,
            &|p| ms(p.standby_catch_up_s),
        ),
    ];
    let sizes = [
        series("resident memory once ready", BLUE, false, &|p| p.rss_mib),
        series("peak resident memory", BLUE, true, &|p| p.peak_rss_mib),
        series("journal bytes (logs + checkpoint)", RED, false, &|p| {
            Some(p.journal_mib)
        }),
        series("checkpoint", GREEN, true, &|p| Some(p.checkpoint_mib)),
    ];
    if plotted(&times).is_empty() && plotted(&sizes).is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (960, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((2, 1));
    let posts = |x: &f64| rate_label(x);
    draw_on(
        &panels[0],
        Frame {
            caption: "Active server restart (kill -9, same command line) vs history",
            x_desc: "posts in the history (log)",
            y_desc: "ms from its spawn (log)",
            log_x: true,
            x_label: &posts,
            legend: SeriesLabelPosition::UpperLeft,
        },
        &times,
    )?;
    draw_on(
        &panels[1],
        Frame {
            caption: "Its memory once ready and its history on disk",
            x_desc: "posts in the history (log)",
            y_desc: "MiB (log)",
            log_x: true,
            x_label: &posts,
            legend: SeriesLabelPosition::UpperLeft,
        },
        &sizes,
    )?;
    root.present().map_err(err)?;
    Ok(())
}
