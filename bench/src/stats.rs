//! Percentiles and the result table.

use std::time::Duration;

use serde::Serialize;

/// Summary of a set of latency samples, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// Summarises samples (nearest-rank percentiles).
pub fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let pick = |q: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        let idx = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[idx].as_secs_f64() * 1e6
    };
    Summary {
        n: samples.len(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: samples.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
    }
}

/// Median of plain numbers.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Section (1..8 as in BENCHMARKS.md).
    pub section: String,
    /// What was measured.
    pub metric: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Ratio to the quinn floor, where it applies.
    pub vs_floor: Option<f64>,
    /// Target and whether it was met, where there is one.
    pub target: Option<String>,
}

/// Formats rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| # | metric | value | unit | x floor | target |\n|---|---|---:|---|---:|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {} |\n",
            r.section,
            r.metric,
            r.value,
            r.unit,
            r.vs_floor.map(|v| format!("{v:.2}")).unwrap_or_default(),
            r.target.clone().unwrap_or_default()
        ));
    }
    out
}
