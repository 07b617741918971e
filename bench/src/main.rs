//! `tsn_bench`: starts the real TSN binaries on loopback (the ones next to this
//! executable, so build with `cargo build --release`) and measures them with open-loop
//! load against a plain-quinn floor. Prints Markdown tables, writes the figures as JSON
//! and draws SVG charts. See BENCHMARKS.md.

mod charts;
mod floor;
mod group;
mod history;
mod load;
mod perpost;
mod progress;
mod scenarios;
mod session;
mod stats;
mod wide;

use std::time::Instant;

use clap::Parser;
use scenarios::{Curve, Delivery, Failover, Point};
use stats::{median, row, verdict, Row};

/// Measures TSN on loopback against a plain-quinn floor, with open-loop load.
#[derive(Debug, Parser)]
#[command(name = "tsn_bench", version, about)]
struct Opts {
    /// Sections to run (1-12, comma-separated); all by default. 1 floor, 2 and 3 the
    /// load curves with --ack replicated and --ack durable (they run the floor too, for
    /// the ratios), 4 delivery event vs period, 5 fan-out, 6 connections held, 7
    /// failover, 8 cost at rest, 9 restart and catch-up as history grows, 10 the
    /// coordinator group, 11 cost per post (CPU, wake-ups, system calls, flushes), 12 a
    /// post to 100,000 followers' timeline files (a few minutes: the followers log in and
    /// follow first).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,

    /// Section 12: followers of the author (users 2 and up, over 3 clusters; the first
    /// 1,000 keep a timeline open).
    #[arg(long, default_value_t = 100_000)]
    wide_followers: u32,

    /// Repetitions: each curve point, delivery phase and fan-out is measured this many
    /// times (latency histograms merged, rates the median); 10 failovers per
    /// repetition.
    #[arg(long, default_value_t = 1)]
    runs: usize,

    /// Users for the scale, fan-out and cost sections.
    #[arg(long, default_value_t = 10_000)]
    users: u32,

    /// Recorded seconds of each point of a load curve.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,

    /// Seconds at the start of each point that are not recorded (warm-up).
    #[arg(long, default_value_t = 1.0)]
    warm: f64,

    /// Client sessions of the load curves and the floor, each on a connection of its own.
    #[arg(long, default_value_t = 64)]
    sessions: usize,

    /// Offered rates of the load curves (posts/s, comma-separated); each curve stops at
    /// the first rate the system does not keep up with.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "200,500,1000,2000,5000,10000,20000,30000,40000,50000,60000,80000"
    )]
    rates: Vec<f64>,

    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-results.json")]
    json: std::path::PathBuf,

    /// History sizes of section 9 (posts, comma-separated): a fresh cluster each.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    history_posts: Vec<u64>,

    /// Section 9: TSN_CHECKPOINT_BYTES for the servers (a checkpoint each time their
    /// logs grew by this many bytes); the servers' default when not given.
    #[arg(long)]
    checkpoint_bytes: Option<u64>,

    /// Section 9: heartbeat interval (ms). A restart that takes longer than 2.5 beats is
    /// failed over, and the restarted server, now the standby, answers no LIST.
    #[arg(long, default_value_t = 1000)]
    history_heartbeat_ms: u64,

    /// Section 11: offered rates (posts/s, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "200,1000,10000")]
    cost_rates: Vec<f64>,

    /// Section 11: also profile every process with `perf record` at this rate (posts/s)
    /// and draw a flame graph of each (`flame-<process>-<rate>.svg` in --charts). Needs
    /// Debian's `linux-perf`; takes a few minutes more.
    #[arg(long)]
    profile: Option<f64>,

    /// Directory for the SVG charts.
    #[arg(long, default_value = "bench/charts")]
    charts: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let started = Instant::now();
    // Timers of this thread and of every thread started after it (the runtime's workers,
    // the pacer, the floor's parties) fire within 1 ns of their deadline instead of the
    // default 50 µs, so that requests leave on time. Best effort: the generator's lag is
    // measured and reported either way.
    let slack = std::fs::write("/proc/self/timerslack_ns", "1").is_ok();
    let want = |s: u32| opts.only.is_empty() || opts.only.contains(&s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let s = scenarios::Settings {
        runs: opts.runs.max(1),
        users: opts.users,
        seconds: opts.seconds,
        warm: opts.warm,
        sessions: opts.sessions,
        rates: opts.rates.clone(),
        delivery_seconds: 10.0,
        delivery_rate: 50.0,
    };
    let points = opts.rates.len() as u64;
    let mut steps = 0;
    if want(1) || want(2) || want(3) {
        steps += points;
    }
    steps += points * (u64::from(want(2)) + u64::from(want(3)) + u64::from(want(4)));
    steps += 4 * u64::from(want(4));
    steps += 10 * s.runs as u64 * u64::from(want(7));
    steps += 2 * u64::from(want(8));
    if want(5) || want(6) || want(8) {
        steps += 1 + (1 + scenarios::FANOUT_POSTS as u64 * s.runs as u64) * u64::from(want(5));
    }
    steps += 4 * opts.history_posts.len() as u64 * u64::from(want(9));
    steps +=
        (opts.cost_rates.len() as u64 + u64::from(opts.profile.is_some())) * u64::from(want(11));
    steps += u64::from(want(12));
    progress::start(steps);

    let mut rows: Vec<Row> = Vec::new();
    let mut floor: Option<Curve> = None;
    let mut acks: Vec<Curve> = Vec::new();
    let mut dcurve: Option<Curve> = None;
    let mut delivery: Vec<Delivery> = Vec::new();
    let mut failovers: Vec<Failover> = Vec::new();
    // A section that fails is reported and the others still run.
    let mut errors: Vec<String> = Vec::new();
    let mut keep = |section: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            progress::note(format!("section {section} failed: {e:#}"));
            errors.push(format!("section {section}: {e:#}"));
        }
    };
    if want(1) || want(2) || want(3) {
        keep(
            "1",
            scenarios::floor(&rt, &s).map(|c| {
                floor = Some(c);
            }),
        );
    }
    for (sec, mode) in [(2, "replicated"), (3, "durable")] {
        if want(sec) {
            let section = sec.to_string();
            keep(
                &section,
                scenarios::ack_curve(&rt, &s, mode, &section).map(|c| acks.push(c)),
            );
        }
    }
    if want(4) {
        keep(
            "4",
            scenarios::delivery(&rt, &s).map(|d| {
                delivery = d;
            }),
        );
        keep(
            "4 (under load)",
            scenarios::delivery_curve(&rt, &s).map(|c| {
                dcurve = Some(c);
            }),
        );
    }
    if want(7) {
        keep(
            "7",
            scenarios::failover(&rt, &s).map(|f| {
                failovers = f;
            }),
        );
    }
    if want(8) {
        keep("8", scenarios::cost(&rt, &s).map(|r| rows.extend(r)));
    }
    let mut scale_rows = Vec::new();
    if want(5) || want(6) || want(8) {
        keep(
            "5/6",
            scenarios::scale(&rt, &s, want(5), want(8)).map(|r| {
                scale_rows = r;
            }),
        );
    }
    if want(10) {
        keep("10", group::run(&rt, &s).map(|r| rows.extend(r)));
    }
    let mut per_post = Vec::new();
    if want(11) {
        keep(
            "11",
            perpost::run(
                &rt,
                &s,
                &opts.cost_rates,
                opts.profile.map(|r| (opts.charts.as_path(), r)),
            )
            .map(|p| {
                per_post = p;
            }),
        );
    }
    if want(12) {
        keep(
            "12",
            wide::run(&rt, opts.wide_followers).map(|r| rows.extend(r)),
        );
    }
    let mut history = Vec::new();
    if want(9) {
        let h = history::Settings {
            posts: opts.history_posts.clone(),
            checkpoint_bytes: opts.checkpoint_bytes,
            heartbeat_ms: opts.history_heartbeat_ms,
        };
        let (points, failed) = history::run(&rt, &h);
        history = points;
        errors.extend(failed.into_iter().map(|e| format!("section 9: {e}")));
    }
    progress::finish();

    let mut head = Vec::new();
    if let Some(f) = &floor {
        head.extend(floor_rows(f));
    }
    for c in &acks {
        head.extend(curve_rows(c, floor.as_ref()));
    }
    head.extend(delivery_rows(&delivery));
    if let Some(c) = &dcurve {
        head.extend(delivery_curve_rows(c));
    }
    head.extend(failover_rows(&failovers));
    head.extend(scale_rows);
    head.extend(rows);
    let rows = head;

    println!("{}", stats::table(&rows));
    if let Some(f) = &floor {
        println!("{}", curve_table(f, None, false));
    }
    for c in &acks {
        println!("{}", curve_table(c, floor.as_ref(), false));
    }
    if !delivery.is_empty() {
        println!("{}", delivery_table(&delivery));
    }
    if let Some(c) = &dcurve {
        println!("{}", curve_table(c, None, true));
    }
    if !failovers.is_empty() {
        println!("{}", failover_table(&failovers));
    }
    if !history.is_empty() {
        println!("{}", history::table(&history));
    }
    if !per_post.is_empty() {
        println!("{}", perpost::table(&per_post));
    }
    for e in &errors {
        println!("failed: {e}\n");
    }

    let mut drawn = Vec::new();
    if floor.is_some() || !acks.is_empty() {
        let refs: Vec<&Curve> = acks.iter().collect();
        let p = opts.charts.join("ack-latency-vs-load.svg");
        charts::ack_curves(&p, floor.as_ref(), &refs)?;
        drawn.push(p);
    }
    if let Some(c) = &dcurve {
        let p = opts.charts.join("delivery-latency-vs-load.svg");
        charts::delivery_curves(&p, c)?;
        drawn.push(p);
    }
    for q in [500, 50] {
        if delivery.iter().any(|d| d.period_ms == q) {
            let p = opts
                .charts
                .join(format!("delivery-event-vs-period-q{q}.svg"));
            charts::delivery_distribution(&p, &delivery, q)?;
            drawn.push(p);
        }
    }
    if !history.is_empty() {
        let p = opts.charts.join("restart-vs-history.svg");
        charts::history(&p, &history)?;
        drawn.push(p);
    }
    for p in &drawn {
        eprintln!("chart written to {}", p.display());
    }

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
    let json = serde_json::json!({
        "machine": machine,
        "timer_slack_1ns": slack,
        "args": std::env::args().skip(1).collect::<Vec<_>>(),
        "runs": s.runs,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "rows": rows,
        "floor": floor,
        "curves": acks,
        "delivery_curve": dcurve,
        "delivery": delivery,
        "failovers": failovers,
        "history": history,
        "per_post": per_post,
        "errors": errors,
    });
    std::fs::write(&opts.json, serde_json::to_string_pretty(&json)?)?;
    eprintln!(
        "figures written to {} ({:.0} s in all)",
        opts.json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn floor_rows(f: &Curve) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(p) = f.points.first() {
        for (name, v) in p.answer.named() {
            if name == "p50" || name == "p99" {
                rows.push(row(
                    "1",
                    format!(
                        "floor, 2 quinn round trips, {:.0}/s offered, {name}",
                        p.offered
                    ),
                    v,
                    "us",
                ));
            }
        }
    }
    if let Some(p) = f.sustained() {
        rows.push(row(
            "1",
            "floor: highest offered rate sustained",
            p.offered,
            "req/s",
        ));
    }
    rows
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

fn curve_rows(c: &Curve, floor: Option<&Curve>) -> Vec<Row> {
    let sec = c.section.as_str();
    let mut rows = Vec::new();
    if let Some(p) = c.points.first() {
        let f = floor.and_then(|f| f.at(p.offered));
        for (name, v) in p.answer.named() {
            let mut r = row(
                sec,
                format!(
                    "{} at {:.0}/s offered (low load), {name}",
                    c.label, p.offered
                ),
                v,
                "us",
            );
            if let (Some(f), true) = (f, name != "max") {
                let fv = f
                    .answer
                    .named()
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(f64::NAN, |x| x.1);
                r.vs_floor = ratio(v, fv);
            }
            rows.push(r);
        }
    }
    if let Some(p) = c.sustained() {
        let mut r = row(
            sec,
            format!(
                "{}: highest offered rate sustained (achieved {:.0}/s, p99 {:.0} us)",
                c.label, p.achieved, p.answer.p99_us
            ),
            p.offered,
            "posts/s",
        );
        if c.label.contains("replicated") {
            r.target = Some(format!(">= 20000: {}", verdict(p.achieved >= 20_000.0)));
        }
        rows.push(r);
    }
    if let Some(p) = c
        .points
        .iter()
        .rev()
        .find(|p| !p.saturated && p.answer.p99_us <= 10_000.0)
    {
        rows.push(row(
            sec,
            format!(
                "{}: highest offered rate with p99 <= 10 ms (achieved {:.0}/s, p99 {:.0} us)",
                c.label, p.achieved, p.answer.p99_us
            ),
            p.offered,
            "posts/s",
        ));
    }
    if let Some(p) = c.points.last().filter(|p| p.saturated) {
        rows.push(row(
            sec,
            format!(
                "{}: saturated at {:.0}/s offered, achieved (p99 {:.0} us)",
                c.label, p.offered, p.answer.p99_us
            ),
            p.achieved,
            "posts/s",
        ));
    }
    rows
}

/// Delivery's bound under load at `-q 500`: the period plus 20 ms, in µs.
const DELIVERY_BOUND_US: f64 = 520e3;

/// Whether both followers (same cluster, other cluster) got the posts of `p` within
/// [`DELIVERY_BOUND_US`] at p99, from the intended send time.
fn delivered_within_bound(p: &Point) -> bool {
    [p.same, p.cross]
        .iter()
        .all(|l| l.is_some_and(|l| l.p99_us <= DELIVERY_BOUND_US))
}

fn delivery_curve_rows(c: &Curve) -> Vec<Row> {
    let mut rows = Vec::new();
    // The highest rate up to which every point kept both followers within the bound,
    // end to end (waiting for the acknowledgement included).
    if let Some(p) = c
        .points
        .iter()
        .take_while(|p| !p.saturated && delivered_within_bound(p))
        .last()
    {
        rows.push(row(
            "4",
            format!(
                "{}: highest offered rate with delivery p99 <= 520 ms from the intended send time to both followers (same cluster p99 {:.0} ms, other cluster {:.0} ms)",
                c.label,
                p.same.map_or(f64::NAN, |l| l.p99_us / 1e3),
                p.cross.map_or(f64::NAN, |l| l.p99_us / 1e3),
            ),
            p.offered,
            "posts/s",
        ));
    }
    if let Some(p) = c.sustained() {
        rows.push(row(
            "4",
            format!(
                "{}: highest offered rate delivered in full (achieved {:.0}/s)",
                c.label, p.achieved
            ),
            p.offered,
            "posts/s",
        ));
        rows.extend(delivery_load_rows(c, p, "highest sustained"));
    }
    if let Some(p) = c.points.last().filter(|p| p.saturated) {
        rows.push(row(
            "4",
            format!(
                "{}: saturated at {:.0}/s offered: posts not delivered within 6 s",
                c.label, p.offered
            ),
            p.undelivered.iter().sum::<u64>() as f64,
            "posts",
        ));
        rows.extend(delivery_load_rows(c, p, "saturated"));
    }
    rows
}

/// Delivery at point `p`: from the intended send time (end to end, the wait for the
/// acknowledgement included), and from the acknowledgement (how long a stored post
/// waits for delivery, which the period bounds), the latter judged against
/// [`DELIVERY_BOUND_US`].
fn delivery_load_rows(c: &Curve, p: &Point, at: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let followers = [
        ("the other cluster", p.cross, p.cross_after_ack),
        ("the author's own cluster", p.same, p.same_after_ack),
    ];
    for (whom, from_send, from_ack) in followers {
        let what = format!("{}: to {whom} at {:.0}/s ({at})", c.label, p.offered);
        if let Some(l) = from_send {
            for (name, v) in [("p50", l.p50_us), ("p99", l.p99_us)] {
                rows.push(row(
                    "4",
                    format!("{what}, {name} from the intended send time"),
                    v / 1e3,
                    "ms",
                ));
            }
        }
        if let Some(l) = from_ack {
            let mut r = row(
                "4",
                format!("{what}, p99 from the acknowledgement"),
                l.p99_us / 1e3,
                "ms",
            );
            r.target = Some(format!(
                "<= 520 ms: {}",
                verdict(l.p99_us <= DELIVERY_BOUND_US)
            ));
            rows.push(r);
        }
    }
    rows.push(row(
        "4",
        format!(
            "{}: at {:.0}/s ({at}), followers' timelines closed for falling behind (each reopened from its last entry)",
            c.label, p.offered
        ),
        p.reopened.iter().sum::<u64>() as f64,
        "times",
    ));
    rows
}

fn delivery_rows(d: &[Delivery]) -> Vec<Row> {
    let mut rows = Vec::new();
    for x in d.iter().filter(|x| x.path == "cross") {
        for (name, v) in [("p50", x.lat.p50_us), ("p99", x.lat.p99_us)] {
            let mut r = row(
                "4",
                format!(
                    "delivery to the other cluster, -q {}, --delivery {}, low load, {name}",
                    x.period_ms, x.mode
                ),
                v / 1e3,
                "ms",
            );
            if x.mode == "event" && x.period_ms == 500 {
                let limit = if name == "p50" { 2.0 } else { 10.0 };
                r.target = Some(format!("<= {limit} ms: {}", verdict(v / 1e3 <= limit)));
            }
            rows.push(r);
        }
    }
    rows
}

fn failover_rows(f: &[Failover]) -> Vec<Row> {
    if f.is_empty() {
        return Vec::new();
    }
    let mut det: Vec<f64> = f.iter().map(|x| x.detection_ms).collect();
    let mut mov: Vec<f64> = f.iter().map(|x| x.move_ms).collect();
    let mut tot: Vec<f64> = f.iter().map(|x| x.detection_ms + x.move_ms).collect();
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    let n = f.len();
    let mut r = row(
        "7",
        format!("failover, kill -9 -> next post acknowledged, median of {n} (100 ms heartbeat)"),
        median(&mut tot),
        "ms",
    );
    r.target = Some(format!("< 1000 ms: {}", verdict(max(&tot) < 1000.0)));
    vec![
        row(
            "7",
            format!("failover detection: kill -9 -> promotion, median of {n}"),
            median(&mut det),
            "ms",
        ),
        row("7", "failover detection, max", max(&det), "ms"),
        row(
            "7",
            format!("client's move: promotion -> next acknowledgement, median of {n}"),
            median(&mut mov),
            "ms",
        ),
        row("7", "client's move, max", max(&mov), "ms"),
        r,
        row("7", "failover in all, max", max(&tot), "ms"),
    ]
}

fn us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "-".into()
    }
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}", v / 1e3)
    } else {
        "-".into()
    }
}

fn curve_table(c: &Curve, floor: Option<&Curve>, deliveries: bool) -> String {
    let mut out = format!(
        "{} (µs from the intended send time{})\n\n",
        c.label,
        if deliveries { "; deliveries in ms" } else { "" }
    );
    out.push_str("| offered/s | achieved/s | p50 | p90 | p99 | p99.9 | max | send lag p50/p99 |");
    let mut cols = 8;
    if floor.is_some() {
        out.push_str(" floor p50 | floor p99 | × floor p50 | × floor p99 |");
        cols += 4;
    }
    if deliveries {
        out.push_str(
            " other cluster p50 | p90 | p99 | p99.9 | max | p99 from the ack | same cluster p50 | p99 | p99 from the ack | not delivered | reopened |",
        );
        cols += 11;
    }
    out.push_str(" busiest processes, % of a core |");
    cols += 1;
    out.push_str("\n|");
    for _ in 0..cols {
        out.push_str("---:|");
    }
    out.push('\n');
    for p in &c.points {
        let a = p.answer;
        out.push_str(&format!(
            "| {:.0}{} | {:.0} | {} | {} | {} | {} | {} | {}/{} |",
            p.offered,
            if p.saturated { " (saturated)" } else { "" },
            p.achieved,
            us(a.p50_us),
            us(a.p90_us),
            us(a.p99_us),
            us(a.p999_us),
            us(a.max_us),
            us(p.send_lag.p50_us),
            us(p.send_lag.p99_us),
        ));
        if let Some(f) = floor {
            let fl = f.at(p.offered).map(|x| x.answer);
            let fp50 = fl.map_or(f64::NAN, |l| l.p50_us);
            let fp99 = fl.map_or(f64::NAN, |l| l.p99_us);
            let x = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("-".into());
            out.push_str(&format!(
                " {} | {} | {} | {} |",
                us(fp50),
                us(fp99),
                x(ratio(a.p50_us, fp50)),
                x(ratio(a.p99_us, fp99)),
            ));
        }
        if deliveries {
            let cross = p.cross.unwrap_or_default();
            let same = p.same.unwrap_or_default();
            let after = p.cross_after_ack.unwrap_or_default();
            let same_after = p.same_after_ack.unwrap_or_default();
            out.push_str(&format!(
                " {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ms(cross.p50_us),
                ms(cross.p90_us),
                ms(cross.p99_us),
                ms(cross.p999_us),
                ms(cross.max_us),
                ms(after.p99_us),
                ms(same.p50_us),
                ms(same.p99_us),
                ms(same_after.p99_us),
                p.undelivered.iter().sum::<u64>(),
                p.reopened.iter().sum::<u64>(),
            ));
        }
        let mut cpu = p.cpu.clone();
        cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.push_str(&format!(
            " {} |",
            cpu.iter()
                .take(4)
                .map(|(n, c)| format!("{n} {c:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.push('\n');
    }
    out
}

fn delivery_table(d: &[Delivery]) -> String {
    let mut out = String::from(
        "delivery at low load (ms from the intended send time)\n\n| -q | --delivery | follower | posts | p50 | p90 | p99 | p99.9 | max | missing |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for x in d {
        let l = x.lat;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            x.period_ms,
            x.mode,
            if x.path == "cross" {
                "other cluster"
            } else {
                "same cluster"
            },
            l.n,
            l.p50_us / 1e3,
            l.p90_us / 1e3,
            l.p99_us / 1e3,
            l.p999_us / 1e3,
            l.max_us / 1e3,
            x.undelivered
        ));
    }
    out
}

fn failover_table(f: &[Failover]) -> String {
    let mut out = String::from(
        "failovers (ms)\n\n| run | detection | move | in all | refused first |\n|---:|---:|---:|---:|---:|\n",
    );
    for (i, x) in f.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {} |\n",
            i + 1,
            x.detection_ms,
            x.move_ms,
            x.detection_ms + x.move_ms,
            x.not_active
        ));
    }
    out
}
