//! `tsn_bench`: starts the real TSN binaries on loopback (the ones next to this
//! executable, so build with `cargo build --release`) and measures them. Prints a
//! Markdown table and writes the figures as JSON. See BENCHMARKS.md.

mod floor;
mod scenarios;
mod session;
mod stats;

use clap::Parser;

/// Measures TSN on loopback against a raw-quinn floor.
#[derive(Debug, Parser)]
#[command(name = "tsn_bench", version, about)]
struct Opts {
    /// Sections to run (1-8, comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,

    /// Repetitions of each latency run; figures are medians over them.
    #[arg(long, default_value_t = 3)]
    runs: usize,

    /// Users for the scale, fan-out and cost sections.
    #[arg(long, default_value_t = 10_000)]
    users: u32,

    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,

    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-results.json")]
    json: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let want = |s: u32| opts.only.is_empty() || opts.only.contains(&s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let floor = rt.block_on(floor::measure(opts.runs))?;
    rows.extend(floor.rows());
    let cfg = scenarios::Settings {
        runs: opts.runs,
        users: opts.users,
        seconds: opts.seconds,
        floor_rtt_us: floor.rtt.p50_us,
    };
    if want(2) || want(3) {
        rows.extend(scenarios::ack_and_throughput(&rt, &cfg, want(2), want(3))?);
    }
    if want(4) {
        rows.extend(scenarios::delivery(&rt, &cfg)?);
    }
    if want(7) {
        rows.extend(scenarios::failover(&rt, &cfg)?);
    }
    if want(5) || want(6) || want(8) {
        rows.extend(scenarios::scale(&rt, &cfg, want(5), want(6), want(8))?);
    }
    println!("{}", stats::table(&rows));
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    let json = serde_json::json!({ "machine": machine, "runs": opts.runs, "rows": rows });
    std::fs::write(&opts.json, serde_json::to_string_pretty(&json)?)?;
    eprintln!("figures written to {}", opts.json.display());
    Ok(())
}
