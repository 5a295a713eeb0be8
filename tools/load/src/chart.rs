//! The chart: an SVG with throughput over time and, for a ramp, latency percentiles against
//! the offered rate, drawn with plotters' SVG backend (no fonts or image libraries needed).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::{LoadResult, Mode};
use crate::stats::Second;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 460;
/// Latencies are drawn on a log axis, which cannot show zero: this is its floor.
const FLOOR_MS: f64 = 0.1;

/// Colours of the series, in the order they are listed.
const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

/// A line of a chart: its legend and how to read its value from a data point.
type Series<T, V> = (&'static str, fn(&T) -> V);

fn drawing<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow!("drawing the chart: {error}")
}

/// Writes the chart of `result` to `path`.
pub fn write(path: &Path, result: &LoadResult) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    match &result.mode {
        Mode::Run { run } => {
            let title = format!(
                "Throughput at {:.0} orders/s offered ({:?})",
                run.offered_rate, result.arrivals
            );
            throughput(&root, &title, &run.timeline)?;
        }
        Mode::Ramp { ramp } => {
            let panels = root.split_evenly((1, 2));
            let [left, right] = panels.as_slice() else {
                return Err(anyhow!("drawing the chart: two panels expected"));
            };
            let points: Vec<LatencyPoint> = ramp
                .steps
                .iter()
                .map(|step| LatencyPoint {
                    rate: step.phase.offered_rate,
                    post_p99: step.phase.post_all.p99_ms,
                    p50: step.phase.terminal.p50_ms,
                    p99: step.phase.terminal.p99_ms,
                    p999: step.phase.terminal.p999_ms,
                })
                .collect();
            latency_against_rate(left, &points, ramp.slo_p99_ms)?;
            // The steps ran one after the other: their timelines, end to end, are the run.
            let timeline: Vec<Second> = ramp
                .steps
                .iter()
                .flat_map(|step| step.phase.timeline.iter().copied())
                .collect();
            throughput(right, "Throughput over the ramp", &timeline)?;
        }
    }
    root.present().map_err(drawing)?;
    Ok(())
}

struct LatencyPoint {
    rate: f64,
    post_p99: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

fn latency_against_rate<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    points: &[LatencyPoint],
    slo_ms: f64,
) -> anyhow::Result<()> {
    let max_rate = points.iter().map(|p| p.rate).fold(1.0, f64::max) * 1.05;
    let max_ms = points
        .iter()
        .map(|p| p.p999.max(p.post_p99))
        .fold(slo_ms, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption("Latency against offered rate", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate, (FLOOR_MS..max_ms).log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("offered orders/s")
        .y_desc("ms from intended send (log)")
        .draw()
        .map_err(drawing)?;
    let series: [Series<LatencyPoint, f64>; 4] = [
        ("order to terminal p50", |p| p.p50),
        ("order to terminal p99", |p| p.p99),
        ("order to terminal p99.9", |p| p.p999),
        ("POST p99", |p| p.post_p99),
    ];
    for (index, (name, value)) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.rate, value(p).max(FLOOR_MS)))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
            .map_err(drawing)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(
                line.iter()
                    .map(|point| Circle::new(*point, 3, colour.filled())),
            )
            .map_err(drawing)?;
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, slo_ms), (max_rate, slo_ms)],
            BLACK.stroke_width(1),
        ))
        .map_err(drawing)?
        .label("SLO p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)?;
    Ok(())
}

fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    timeline: &[Second],
) -> anyhow::Result<()> {
    let seconds = timeline.len().max(1) as f64;
    let peak = timeline
        .iter()
        .map(|s| s.sent.max(s.completed).max(s.accepted))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..peak)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("orders per second")
        .draw()
        .map_err(drawing)?;
    let series: [Series<Second, u64>; 4] = [
        ("offered (sent)", |s| s.sent),
        ("accepted (202)", |s| s.accepted),
        ("completed (terminal)", |s| s.completed),
        ("shed (503)", |s| s.shed),
    ];
    for (index, (name, value)) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let line = timeline
            .iter()
            .enumerate()
            .map(|(second, s)| (second as f64 + 0.5, value(s) as f64));
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(2)))
            .map_err(drawing)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)?;
    Ok(())
}
