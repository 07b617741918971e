//! Section 11: what one post costs each TSN process. Section 4's rig (authors of cluster
//! 1, two followers of them all, one in cluster 1 and one in cluster 2, their timelines
//! open) at a few offered rates; for each rate and process: CPU (user + system), wake-ups
//! (voluntary context switches), preemptions, system calls and fdatasyncs, each divided
//! by the posts of the point. The counters cover the whole point: warm-up, recorded
//! window and the drain until every delivery arrived (a system at rest costs under 2% of
//! a core, section 8). System calls are counted by `perf stat` on the kernel's
//! tracepoints; without a working `perf` those columns are empty.
//!
//! With `--profile DIR`, one more point at the profiled rate records each process with
//! `perf record` (on its own pass, so that the profiler's cost is not in the figures)
//! and writes a flame graph per process as SVG.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::load;
use crate::progress;
use crate::scenarios::{self, Settings, Watched};

/// One process at one rate, per post.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCost {
    /// Role and cluster ("primary 1").
    pub process: String,
    /// CPU, user + system, µs.
    pub cpu_us: f64,
    /// Voluntary context switches (the process slept and was woken).
    pub wakeups: f64,
    /// Involuntary context switches (preempted).
    pub preempted: f64,
    /// System calls, where `perf` counted them.
    pub syscalls: Option<f64>,
    /// fdatasync and fsync calls, where `perf` counted them.
    pub syncs: Option<f64>,
}

/// One offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct RateCost {
    /// Posts/s offered.
    pub offered: f64,
    /// Acknowledgements/s in the recorded window.
    pub achieved: f64,
    /// Posts sent in the point (warm-up included): the divisor.
    pub posts: u64,
    /// Acknowledgement p50 (µs).
    pub ack_p50_us: f64,
    /// Every TSN process together, per post.
    pub total: ProcessCost,
    /// Each process, per post.
    pub processes: Vec<ProcessCost>,
    /// Not every post was acknowledged and delivered in time.
    pub saturated: bool,
}

/// What the kernel counts for a process.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    cpu_s: f64,
    voluntary: f64,
    involuntary: f64,
}

fn counters(pid: u32) -> Result<Counters> {
    let (cpu_s, _) = scenarios::proc_usage(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok(Counters {
        cpu_s,
        voluntary: field("voluntary_ctxt_switches:")?,
        involuntary: field("nonvoluntary_ctxt_switches:")?,
    })
}

/// The tracepoints `perf stat` counts: every system call, and the two that flush.
const EVENTS: &str = "raw_syscalls:sys_enter,syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync";

/// A `perf` attached to a process until stopped.
struct Perf {
    child: Child,
    out: PathBuf,
}

impl Perf {
    /// `perf <args> -p pid`, writing to `out`; `None` when perf does not start.
    fn attach(args: &[&str], pid: u32, out: PathBuf) -> Option<Perf> {
        let child = Command::new("perf")
            .args(args)
            .arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Perf { child, out })
    }

    /// Stops it as Ctrl-C would (perf then writes its output) and waits up to `wait`; the
    /// output, if perf wrote one.
    fn stop(mut self, wait: Duration) -> Option<PathBuf> {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            // perf stat exits with 130 after SIGINT, having written its counts.
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.out.exists().then_some(self.out);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

/// (system calls, fdatasync + fsync) from `perf stat -x,` output.
fn parse_stat(text: &str) -> Option<(f64, f64)> {
    let mut calls = None;
    let mut syncs = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split(',').collect();
        let (Some(n), Some(event)) = (cols.first(), cols.get(2)) else {
            continue;
        };
        let Ok(n) = n.trim().parse::<f64>() else {
            continue;
        };
        match event.trim() {
            "raw_syscalls:sys_enter" => calls = Some(n),
            "syscalls:sys_enter_fdatasync" | "syscalls:sys_enter_fsync" => syncs += n,
            _ => {}
        }
    }
    calls.map(|c| (c, syncs))
}

/// Runs the section: each of `rates`, then (with `profile`) the profiled point.
pub fn run(
    rt: &Runtime,
    s: &Settings,
    rates: &[f64],
    profile: Option<(&Path, f64)>,
) -> Result<Vec<RateCost>> {
    let sys = scenarios::delivery_system()?;
    let w = scenarios::watched(&sys);
    let scratch = tempfile::tempdir()?;
    let mut rig = rt.block_on(scenarios::delivery_rig(&sys, s))?;
    let mut out = Vec::new();
    for &rate in rates {
        progress::stage(format!("11: cost per post at {rate:.0}/s"));
        let before: Vec<Counters> = w.iter().map(|(_, p)| counters(*p)).collect::<Result<_>>()?;
        let perfs: Vec<Option<Perf>> = w
            .iter()
            .enumerate()
            .map(|(i, (_, p))| {
                Perf::attach(
                    &["stat", "-x", ",", "-e", EVENTS],
                    *p,
                    scratch.path().join(format!("stat-{i}.csv")),
                )
            })
            .collect();
        // perf needs a moment to attach to every thread.
        std::thread::sleep(Duration::from_millis(300));
        let o = rt.block_on(load::run(&mut rig, &scenarios::plan(s, rate)))?;
        let stats: Vec<Option<(f64, f64)>> = perfs
            .into_iter()
            .map(|p| {
                p.and_then(|p| p.stop(Duration::from_secs(10)))
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .and_then(|t| parse_stat(&t))
            })
            .collect();
        let after: Vec<Counters> = w.iter().map(|(_, p)| counters(*p)).collect::<Result<_>>()?;
        progress::step();
        let posts = o.sent.max(1);
        let per = posts as f64;
        let processes: Vec<ProcessCost> = w
            .iter()
            .zip(before.iter().zip(&after))
            .zip(&stats)
            .map(|(((name, _), (b, a)), st)| ProcessCost {
                process: name.clone(),
                cpu_us: (a.cpu_s - b.cpu_s) * 1e6 / per,
                wakeups: (a.voluntary - b.voluntary) / per,
                preempted: (a.involuntary - b.involuntary) / per,
                syscalls: st.map(|(c, _)| c / per),
                syncs: st.map(|(_, f)| f / per),
            })
            .collect();
        let sum = |f: &dyn Fn(&ProcessCost) -> Option<f64>| -> Option<f64> {
            processes.iter().map(f).sum::<Option<f64>>()
        };
        let total = ProcessCost {
            process: "all TSN processes".into(),
            cpu_us: processes.iter().map(|p| p.cpu_us).sum(),
            wakeups: processes.iter().map(|p| p.wakeups).sum(),
            preempted: processes.iter().map(|p| p.preempted).sum(),
            syscalls: sum(&|p| p.syscalls),
            syncs: sum(&|p| p.syncs),
        };
        let saturated = o.achieved < 0.95 * rate
            || o.unanswered > 0
            || o.undelivered.iter().any(|m| *m > 0)
            || !o.failures.is_empty();
        let ack = crate::stats::Lat::of(&o.answer);
        progress::note(format!(
            "11: {rate:.0}/s offered, {:.0}/s achieved: {:.0} µs of CPU per post in all, {:.1} wake-ups, {} syscalls, {} flushes{}",
            o.achieved,
            total.cpu_us,
            total.wakeups,
            total.syscalls.map_or("?".into(), |c| format!("{c:.1}")),
            total.syncs.map_or("?".into(), |c| format!("{c:.2}")),
            if saturated { " (saturated)" } else { "" }
        ));
        out.push(RateCost {
            offered: rate,
            achieved: o.achieved,
            posts,
            ack_p50_us: ack.p50_us,
            total,
            processes,
            saturated,
        });
    }
    if let Some((dir, rate)) = profile {
        progress::stage(format!("11: profiling every process at {rate:.0}/s"));
        flame_graphs(rt, s, &mut rig, &w, dir, rate)?;
        progress::step();
    }
    drop(rig);
    drop(sys);
    Ok(out)
}

/// One point at `rate` with every process under `perf record`; a flame graph of each,
/// `flame-<process>-<rate>.svg` in `dir`.
fn flame_graphs(
    rt: &Runtime,
    s: &Settings,
    rig: &mut load::Rig,
    w: &Watched,
    dir: &Path,
    rate: f64,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let scratch = tempfile::tempdir()?;
    let perfs: Vec<Option<Perf>> = w
        .iter()
        .enumerate()
        .map(|(i, (_, p))| {
            Perf::attach(
                &[
                    "record",
                    "-q",
                    "-F",
                    "499",
                    "-e",
                    "cpu-clock",
                    "--call-graph",
                    "dwarf,16384",
                ],
                *p,
                scratch.path().join(format!("perf-{i}.data")),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(load::run(rig, &scenarios::plan(s, rate)))?;
    let recorded: Vec<Option<PathBuf>> = perfs
        .into_iter()
        .map(|p| p.and_then(|p| p.stop(Duration::from_secs(60))))
        .collect();
    for ((name, _), data) in w.iter().zip(recorded) {
        let Some(data) = data else {
            progress::note(format!("11: no profile of {name} (perf record failed)"));
            continue;
        };
        let svg = dir.join(format!("flame-{}-{rate:.0}.svg", name.replace(' ', "-")));
        flame_graph(
            &data,
            &svg,
            &format!("{name} at {rate:.0} posts/s (cpu-clock)"),
        )
        .with_context(|| format!("flame graph of {name}"))?;
        eprintln!("flame graph written to {}", svg.display());
    }
    Ok(())
}

/// `perf script` of `data`, folded and drawn as a flame graph in `svg`.
fn flame_graph(data: &Path, svg: &Path, title: &str) -> Result<()> {
    use inferno::collapse::Collapse;
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("perf script")?;
    anyhow::ensure!(script.status.success(), "perf script failed");
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default())
        .collapse(&script.stdout[..], &mut folded)?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    let file = std::fs::File::create(svg)?;
    inferno::flamegraph::from_reader(&mut opts, &folded[..], std::io::BufWriter::new(file))?;
    Ok(())
}

/// The section's table (markdown).
pub fn table(points: &[RateCost]) -> String {
    let mut t = String::from(
        "Section 11: cost per post (section 4's rig, two followers per post; per post, every counter over the whole point)\n\n\
         | offered/s | achieved/s | ack p50 (µs) | process | CPU (µs) | wake-ups | preempted | syscalls | fdatasync+fsync |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for p in points {
        for (i, c) in std::iter::once(&p.total).chain(&p.processes).enumerate() {
            let head = if i == 0 {
                format!(
                    "{:.0} | {:.0}{} | {:.0}",
                    p.offered,
                    p.achieved,
                    if p.saturated { " (saturated)" } else { "" },
                    p.ack_p50_us
                )
            } else {
                " | | ".to_string()
            };
            t.push_str(&format!(
                "| {head} | {} | {:.0} | {:.2} | {:.2} | {} | {} |\n",
                c.process,
                c.cpu_us,
                c.wakeups,
                c.preempted,
                opt(c.syscalls, 1),
                opt(c.syncs, 3)
            ));
        }
    }
    t
}
