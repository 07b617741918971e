//! Latency histograms (HDR), their summaries, and the result table.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds: 1 µs to 10 min, 3 significant digits. Values
/// outside the range are clamped to it.
pub type Hist = Histogram<u64>;

/// An empty latency histogram.
pub fn hist() -> Hist {
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency.
pub fn record(h: &mut Hist, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns);
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Lat {
    /// Number of samples.
    pub n: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Lat {
    /// Summarises a histogram.
    pub fn of(h: &Hist) -> Lat {
        if h.is_empty() {
            let nan = f64::NAN;
            return Lat {
                n: 0,
                p50_us: nan,
                p90_us: nan,
                p99_us: nan,
                p999_us: nan,
                max_us: nan,
            };
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Lat {
            n: h.len(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }

    /// The five figures with their names.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50_us),
            ("p90", self.p90_us),
            ("p99", self.p99_us),
            ("p99.9", self.p999_us),
            ("max", self.max_us),
        ]
    }
}

/// Points of the percentile distribution of `h` for a chart: (x, value in µs) where
/// x = -log10(1 - quantile), from the least (x = 0) to 99.9% (x = 3).
pub fn distribution(h: &Hist) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=60)
        .map(|i| {
            let x = 3.0 * f64::from(i) / 60.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
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

/// A row without ratio or target.
pub fn row(section: &str, metric: impl Into<String>, value: f64, unit: &str) -> Row {
    Row {
        section: section.into(),
        metric: metric.into(),
        value,
        unit: unit.into(),
        vs_floor: None,
        target: None,
    }
}

/// "met" or "missed".
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

/// Formats rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| # | metric | value | unit | x floor | target |\n|---|---|---:|---|---:|---|\n",
    );
    for r in rows {
        let value = if r.value.abs() >= 100.0 || r.value == r.value.trunc() {
            format!("{:.0}", r.value)
        } else if r.value.abs() >= 10.0 {
            format!("{:.1}", r.value)
        } else {
            format!("{:.2}", r.value)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.section,
            r.metric,
            value,
            r.unit,
            r.vs_floor.map(|v| format!("{v:.2}")).unwrap_or_default(),
            r.target.clone().unwrap_or_default()
        ));
    }
    out
}
