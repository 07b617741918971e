//! Sections 1-8: the floor and the real system, each on a fresh system.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tsn_protocol::client::{ClientReply, ClientRequest, CommandError, TimelineDown};
use tsn_protocol::coord::{CoordReply, CoordRequest, NodeKind};
use tsn_protocol::UserId;
use tsn_tests::{Config, Role, System};

use crate::load::{self, Arrivals, Plan, Rig, Rx, Tx};
use crate::progress;
use crate::session::{self, Follower, Timeline};
use crate::stats::{hist, median, row, verdict, Hist, Lat, Row};

/// What every scenario needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repetitions: each curve point, delivery phase and fan-out is measured this many
    /// times (histograms merged; rates are medians); failovers are 10 per repetition.
    pub runs: usize,
    /// Users for scale, fan-out and cost.
    pub users: u32,
    /// Recorded seconds of each point of a load curve.
    pub seconds: f64,
    /// Not recorded, before each point.
    pub warm: f64,
    /// Client sessions (one connection each) of the load curves and the floor.
    pub sessions: usize,
    /// Offered rates of the load curves, in order; a curve stops at saturation.
    pub rates: Vec<f64>,
    /// Seconds of each delivery phase of section 4.
    pub delivery_seconds: f64,
    /// Posts per second of section 4 (low load).
    pub delivery_rate: f64,
}

/// One point of a load curve.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Offered requests per second.
    pub offered: f64,
    /// Answers per second received during the recorded window (median over runs).
    pub achieved: f64,
    /// Answer latency from the intended send time.
    pub answer: Lat,
    /// The generator's lag: actual minus intended send time.
    pub send_lag: Lat,
    /// Recorded requests never answered.
    pub unanswered: u64,
    /// Refused posts.
    pub refused: u64,
    /// Delivery to the same-cluster follower, from the intended send time.
    pub same: Option<Lat>,
    /// Delivery to the other cluster's follower, from the intended send time.
    pub cross: Option<Lat>,
    /// Delivery to the same-cluster follower, from the acknowledgement.
    pub same_after_ack: Option<Lat>,
    /// Delivery to the other cluster's follower, from the acknowledgement.
    pub cross_after_ack: Option<Lat>,
    /// Posts that never reached a follower (same, cross).
    pub undelivered: Vec<u64>,
    /// How often the server closed a follower's timeline for falling behind (same,
    /// cross); each was reopened from its last entry, as `tsn_client` does.
    pub reopened: Vec<u64>,
    /// Failed streams.
    pub failures: Vec<String>,
    /// CPU used during the point (warm-up to the end of the drain), % of a core: per
    /// role the busiest process, and the benchmark itself.
    pub cpu: Vec<(String, f64)>,
    /// The system did not keep up: achieved < 95% of offered, answers lost, answer p99
    /// above 1 s, or (where deliveries are observed) posts not delivered within the
    /// drain time. The curve stops here.
    pub saturated: bool,
}

/// A latency-versus-offered-load curve.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    /// Section of the report.
    pub section: String,
    /// What it measures.
    pub label: String,
    /// Its points.
    pub points: Vec<Point>,
}

impl Curve {
    /// The highest point that kept up.
    pub fn sustained(&self) -> Option<&Point> {
        self.points.iter().rev().find(|p| !p.saturated)
    }

    /// The point at `offered`.
    pub fn at(&self, offered: f64) -> Option<&Point> {
        self.points.iter().find(|p| p.offered == offered)
    }
}

/// A delivery latency distribution of section 4.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Sync period.
    pub period_ms: u64,
    /// `event` or `period`.
    pub mode: String,
    /// `same` or `cross` cluster.
    pub path: String,
    /// Its percentiles.
    pub lat: Lat,
    /// Posts never delivered.
    pub undelivered: u64,
    /// Percentile distribution for the chart: (-log10(1 - q), µs).
    pub distribution: Vec<(f64, f64)>,
}

fn sys_log() {
    if std::env::var_os("TSN_TEST_LOG").is_none() {
        // Warnings, and the line that says mirroring has started (see `mirrored`).
        std::env::set_var("TSN_TEST_LOG", "warn,tsn_nodes::server::mirror=info");
    }
}

/// A system of `clusters` clusters; `server_args` go to every server, `sync_args` to
/// every sync service.
fn system_with(
    clusters: u32,
    heartbeat_ms: u64,
    period_ms: u64,
    server_args: Vec<String>,
    sync_args: &[String],
) -> Result<System> {
    system_of(1, clusters, heartbeat_ms, period_ms, server_args, sync_args)
}

/// [`system_with`] under a group of `coordinators`.
pub fn system_of(
    coordinators: usize,
    clusters: u32,
    heartbeat_ms: u64,
    period_ms: u64,
    server_args: Vec<String>,
    sync_args: &[String],
) -> Result<System> {
    progress::note(format!(
        "starting {coordinators} coordinator(s), {clusters} clusters, heartbeat {heartbeat_ms} ms, -q {period_ms} {} {}",
        server_args.join(" "),
        sync_args.join(" ")
    ));
    sys_log();
    let mut sys = System::coordinator_only(Config {
        clusters,
        heartbeat_ms,
        period_ms,
        server_args,
        sync_args: Vec::new(),
        coordinators,
        coordinator_args: Vec::new(),
        member_args: Vec::new(),
    })?;
    for c in 1..=clusters {
        sys.start_node(c, Role::Primary)?;
        sys.start_node(c, Role::Secondary)?;
        sys.start_node_with(c, Role::Sync, sync_args)?;
    }
    sys.wait_ready(Duration::from_secs(30))?;
    Ok(sys)
}

pub(crate) fn system(clusters: u32, heartbeat_ms: u64, period_ms: u64) -> Result<System> {
    system_with(clusters, heartbeat_ms, period_ms, Vec::new(), &[])
}

/// Waits until cluster 1's active server mirrors to its standby (until then it serves
/// alone), `seen` such lines having been logged before.
fn mirrored(sys: &System, role: Role, seen: usize) -> Result<()> {
    tsn_tests::eventually(
        "cluster 1 mirroring to its standby",
        Duration::from_secs(30),
        || Ok(sys.log_count(1, role, MIRRORING) > seen),
    )
}

pub(crate) const MIRRORING: &str = "mirroring to the standby after exchanging state";

/// Users served by cluster 1 of 3: multiples of 3.
fn cluster1_user(k: u32) -> UserId {
    3 * (k + 1)
}

/// Retries FOLLOW until the followee is known in the follower's cluster.
pub(crate) async fn follow(conn: &quinn::Connection, user: UserId, target: UserId) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match session::call::<_, ClientReply>(conn, &ClientRequest::Follow { user, target }).await?
        {
            ClientReply::Ok => return Ok(()),
            ClientReply::Failed(CommandError::AlreadyExists) => return Ok(()),
            other if Instant::now() > deadline => bail!("follow {user}->{target}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub(crate) fn plan(s: &Settings, rate: f64) -> Plan {
    Plan {
        rate,
        warm: Duration::from_secs_f64(s.warm),
        measure: Duration::from_secs_f64(s.seconds),
        drain: Duration::from_secs(5),
        deliver_drain: Duration::from_secs(6),
        arrivals: Arrivals::Even,
    }
}

/// Runs `rig` through the rates of `s` until saturation.
/// Processes whose CPU use a curve reports: (role, pid). The benchmark itself is added.
pub(crate) type Watched = Vec<(String, u32)>;

/// Every process of a system, by role.
pub(crate) fn watched(sys: &System) -> Watched {
    let mut w = Vec::new();
    if let Some(p) = sys.coordinator_pid() {
        w.push(("coordinator".to_string(), p));
    }
    for c in 1..=sys.config.clusters {
        for (r, name) in [
            (Role::Primary, "primary"),
            (Role::Secondary, "secondary"),
            (Role::Sync, "sync"),
        ] {
            if let Some(p) = sys.pid(c, r) {
                w.push((format!("{name} {c}"), p));
            }
        }
    }
    w
}

/// CPU seconds of each watched process and of the benchmark.
fn cpu_now(w: &Watched) -> Vec<f64> {
    w.iter()
        .map(|(_, p)| *p)
        .chain(std::iter::once(std::process::id()))
        .map(|p| proc_usage(p).map(|u| u.0).unwrap_or(f64::NAN))
        .collect()
}

/// % of a core per watched process and for the benchmark, between two `cpu_now`.
fn cpu_share(w: &Watched, before: &[f64], after: &[f64], secs: f64) -> Vec<(String, f64)> {
    w.iter()
        .map(|(n, _)| n.clone())
        .chain(std::iter::once("benchmark".to_string()))
        .zip(before.iter().zip(after))
        .map(|(n, (b, a))| (n, (a - b) / secs * 100.0))
        .collect()
}

async fn curve(
    rig: &mut Rig,
    s: &Settings,
    section: &str,
    label: &str,
    w: &Watched,
) -> Result<Curve> {
    let mut points = Vec::new();
    for &rate in &s.rates {
        let (t_cpu, cpu_before) = (Instant::now(), cpu_now(w));
        progress::stage(format!("{label}: {rate:.0}/s offered"));
        let mut answer = hist();
        let mut lag = hist();
        let mut achieved = Vec::new();
        let (mut unanswered, mut refused) = (0, 0);
        let mut delivered: Vec<Hist> = Vec::new();
        let mut after_ack: Vec<Hist> = Vec::new();
        let mut undelivered: Vec<u64> = Vec::new();
        let mut reopened: Vec<u64> = Vec::new();
        let mut failures = Vec::new();
        for _ in 0..s.runs.max(1) {
            let o = load::run(rig, &plan(s, rate)).await?;
            answer.add(&o.answer).ok();
            lag.add(&o.send_lag).ok();
            achieved.push(o.achieved);
            unanswered += o.unanswered;
            refused += o.refused;
            delivered.resize_with(o.delivered.len(), hist);
            after_ack.resize_with(o.after_ack.len(), hist);
            undelivered.resize(o.undelivered.len(), 0);
            for (i, h) in o.delivered.iter().enumerate() {
                delivered[i].add(h).ok();
            }
            for (i, h) in o.after_ack.iter().enumerate() {
                after_ack[i].add(h).ok();
            }
            for (i, m) in o.undelivered.iter().enumerate() {
                undelivered[i] += m;
            }
            reopened.resize(o.reopened.len(), 0);
            for (i, r) in o.reopened.iter().enumerate() {
                reopened[i] += r;
            }
            failures.extend(o.failures);
        }
        progress::step();
        let cpu = cpu_share(w, &cpu_before, &cpu_now(w), t_cpu.elapsed().as_secs_f64());
        let achieved = median(&mut achieved);
        let a = Lat::of(&answer);
        let saturated = achieved < 0.95 * rate
            || unanswered > 0
            || a.p99_us > 1e6
            || undelivered.iter().any(|m| *m > 0)
            || !failures.is_empty();
        let p = Point {
            offered: rate,
            achieved,
            answer: a,
            send_lag: Lat::of(&lag),
            unanswered,
            refused,
            same: delivered.first().map(Lat::of),
            cross: delivered.get(1).map(Lat::of),
            same_after_ack: after_ack.first().map(Lat::of),
            cross_after_ack: after_ack.get(1).map(Lat::of),
            undelivered,
            reopened,
            failures: failures.clone(),
            cpu: cpu.clone(),
            saturated,
        };
        progress::note(format!(
            "  cpu % of a core: {}",
            cpu.iter()
                .map(|(n, c)| format!("{n} {c:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        progress::note(format!(
            "{label}: offered {rate:.0}/s, achieved {:.0}/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us{}{}",
            p.achieved,
            a.p50_us,
            a.p99_us,
            a.p999_us,
            a.max_us,
            p.cross
                .map(|c| format!("; delivery cross p50 {:.1} ms p99 {:.1} ms", c.p50_us / 1e3, c.p99_us / 1e3))
                .unwrap_or_default(),
            if failures.is_empty() { String::new() } else { format!("; failures: {failures:?}") }
        ));
        points.push(p);
        if saturated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(Curve {
        section: section.into(),
        label: label.into(),
        points,
    })
}

/// Section 1: the floor's curve.
pub fn floor(rt: &Runtime, s: &Settings) -> Result<Curve> {
    progress::note(format!(
        "floor: client -> A -> B -> A -> client, {} sessions",
        s.sessions
    ));
    let f = crate::floor::Floor::start()?;
    rt.block_on(async {
        let mut rig = f.rig(s.sessions).await?;
        curve(&mut rig, s, "1", "floor", &Vec::new()).await
    })
}

/// Sections 2 and 3: acknowledgement latency against offered load, with the servers'
/// `--ack` mode `ack`: `s.sessions` authors of cluster 1 post, each on a connection of
/// its own. Nobody follows them, so that the curve is the acknowledgement's alone.
pub fn ack_curve(rt: &Runtime, s: &Settings, ack: &str, section: &str) -> Result<Curve> {
    let sys = system_with(3, 1000, 500, vec!["--ack".into(), ack.into()], &[])?;
    mirrored(&sys, Role::Primary, 0)?;
    let (certs, coord) = (sys.certs(), sys.coord.clone());
    let w = watched(&sys);
    let curve = rt.block_on(async {
        let ep = session::endpoint(&certs)?;
        let mut rig = Rig::new();
        for k in 0..s.sessions as u32 {
            let u = cluster1_user(k);
            let conn = session::login(&ep, &coord, u).await?;
            let (send, recv) = Timeline::open(&conn, u).await?.into_parts();
            rig.sessions.push((Tx::Tsn(send), Rx::Tsn(recv)));
            rig.conns.push(conn);
        }
        curve(&mut rig, s, section, &format!("ack, --ack {ack}"), &w).await
    })?;
    drop(sys);
    Ok(curve)
}

/// Section 4, under load: delivery latency against offered load, `-q 500`, the sync
/// services' default (event-driven) delivery. `s.sessions` authors of cluster 1 post,
/// each on a connection of its own; a follower in cluster 1 (same cluster) and one in
/// cluster 2 (other cluster) follow them all and have their timelines open.
pub fn delivery_curve(rt: &Runtime, s: &Settings) -> Result<Curve> {
    let sys = delivery_system()?;
    let w = watched(&sys);
    let curve = rt.block_on(async {
        let mut rig = delivery_rig(&sys, s).await?;
        curve(&mut rig, s, "4", "delivery, -q 500, --delivery event", &w).await
    })?;
    drop(sys);
    Ok(curve)
}

/// The sync period of the delivery rig's system.
pub(crate) const DELIVERY_Q: u64 = 500;

/// A system for [`delivery_rig`]: 3 clusters, 1 s heartbeats, `-q 500`, cluster 1
/// mirroring to its standby.
pub(crate) fn delivery_system() -> Result<System> {
    let sys = system(3, 1000, DELIVERY_Q)?;
    mirrored(&sys, Role::Primary, 0)?;
    Ok(sys)
}

/// Section 4's rig: `s.sessions` authors of cluster 1, each with its timeline open on a
/// connection of its own; a follower in cluster 1 (same cluster) and one in cluster 2
/// (other cluster) follow them all and have their timelines open.
pub(crate) async fn delivery_rig(sys: &System, s: &Settings) -> Result<Rig> {
    let (certs, coord) = (sys.certs(), sys.coord.clone());
    let ep = session::endpoint(&certs)?;
    let mut rig = Rig::new();
    let authors: Vec<UserId> = (0..s.sessions as u32).map(cluster1_user).collect();
    for &u in &authors {
        let conn = session::login(&ep, &coord, u).await?;
        let (send, recv) = Timeline::open(&conn, u).await?.into_parts();
        rig.sessions.push((Tx::Tsn(send), Rx::Tsn(recv)));
        rig.conns.push(conn);
    }
    for follower in [cluster1_user(s.sessions as u32), 1] {
        let conn = session::login(&ep, &coord, follower).await?;
        for &a in &authors {
            follow(&conn, follower, a).await?;
        }
        let f = Follower::open(&conn, follower).await?;
        rig.observers.push(Rx::Follower(Box::new(f)));
        rig.conns.push(conn);
    }
    // The follows reach the other cluster within a period.
    tokio::time::sleep(Duration::from_millis(2 * DELIVERY_Q + 200)).await;
    Ok(rig)
}

/// Section 4: delivery with `--delivery event` and `--delivery period`, at each period,
/// at low load: author 1 (cluster 2) posts at `s.delivery_rate` per second (Poisson);
/// user 4 (same cluster) and user 3 (cluster 1) have its timeline open.
pub fn delivery(rt: &Runtime, s: &Settings) -> Result<Vec<Delivery>> {
    let mut out = Vec::new();
    for q in [500u64, 50] {
        for mode in ["event", "period"] {
            progress::stage(format!("delivery -q {q} --delivery {mode}"));
            // Period-driven delivery brings posts back a period late by design: the
            // servers' admission (which holds posts while they come back late) is off,
            // as in the original system.
            let server_args = if mode == "period" {
                vec!["--admit-lag-ms".into(), "0".into()]
            } else {
                Vec::new()
            };
            let sys = system_with(3, 1000, q, server_args, &["--delivery".into(), mode.into()])?;
            let (certs, coord) = (sys.certs(), sys.coord.clone());
            let (same, cross, missing) = rt.block_on(async {
                let ep = session::endpoint(&certs)?;
                let mut rig = Rig::new();
                let ca = session::login(&ep, &coord, 1).await?;
                let (send, recv) = Timeline::open(&ca, 1).await?.into_parts();
                rig.sessions.push((Tx::Tsn(send), Rx::Tsn(recv)));
                rig.conns.push(ca);
                for follower in [4, 3] {
                    let conn = session::login(&ep, &coord, follower).await?;
                    follow(&conn, follower, 1).await?;
                    let f = Follower::open(&conn, follower).await?;
                    rig.observers.push(Rx::Follower(Box::new(f)));
                    rig.conns.push(conn);
                }
                tokio::time::sleep(Duration::from_millis(2 * q + 200)).await;
                let (mut same, mut cross) = (hist(), hist());
                let mut missing = [0u64; 2];
                for _ in 0..s.runs.max(1) {
                    let o = load::run(
                        &mut rig,
                        &Plan {
                            rate: s.delivery_rate,
                            warm: Duration::from_secs(1),
                            measure: Duration::from_secs_f64(s.delivery_seconds),
                            drain: Duration::from_secs(5),
                            deliver_drain: Duration::from_millis(3 * q + 3000),
                            arrivals: Arrivals::Poisson,
                        },
                    )
                    .await?;
                    if !o.failures.is_empty() {
                        bail!("-q {q} {mode}: {:?}", o.failures);
                    }
                    same.add(&o.delivered[0]).ok();
                    cross.add(&o.delivered[1]).ok();
                    missing[0] += o.undelivered[0];
                    missing[1] += o.undelivered[1];
                }
                anyhow::Ok((same, cross, missing))
            })?;
            progress::step();
            for (path, h, m) in [("same", &same, missing[0]), ("cross", &cross, missing[1])] {
                let lat = Lat::of(h);
                progress::note(format!(
                    "delivery -q {q} {mode} {path}: p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} posts, {m} missing)",
                    lat.p50_us / 1e3,
                    lat.p99_us / 1e3,
                    lat.max_us / 1e3,
                    lat.n
                ));
                out.push(Delivery {
                    period_ms: q,
                    mode: mode.into(),
                    path: path.into(),
                    lat,
                    undelivered: m,
                    distribution: crate::stats::distribution(h),
                });
            }
            drop(sys);
        }
    }
    Ok(out)
}

/// One failover's figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Failover {
    /// kill -9 -> the coordinator names the other server active (ms).
    pub detection_ms: f64,
    /// That moment -> the client's next post acknowledged through the other server (ms).
    pub move_ms: f64,
    /// Times the new server answered "not active" first.
    pub not_active: u32,
}

/// The active server of cluster 1 in the coordinator's tables, if any.
pub async fn active_of(conn: &quinn::Connection) -> Result<Option<String>> {
    match session::call::<_, CoordReply>(conn, &CoordRequest::Status).await? {
        CoordReply::Status(t) => Ok(t
            .entries
            .into_iter()
            .find(|e| e.cluster == 1 && e.kind != NodeKind::Sync && e.active && e.alive)
            .map(|e| e.addr)),
        other => bail!("status: {other:?}"),
    }
}

/// Section 7: kill -9 of cluster 1's active server with a 100 ms heartbeat, split in
/// two. Detection: from the kill until the coordinator's Status request (asked again
/// as soon as each answer comes) names the other server active. The move: from then
/// until a client that asks at once (no timer: assignment, connect, log in, open the
/// timeline, post; asked again at once when the new server still says it is not
/// active) has its post acknowledged.
pub fn failover(rt: &Runtime, s: &Settings) -> Result<Vec<Failover>> {
    failover_under(rt, s, 1)
}

/// [`failover`] under a group of `coordinators`.
pub fn failover_under(rt: &Runtime, s: &Settings, coordinators: usize) -> Result<Vec<Failover>> {
    let mut sys = system_of(coordinators, 3, 100, 500, Vec::new(), &[])?;
    // One member answers everything (it passes writes to the leader).
    let coord = sys.coord.split(',').next().unwrap_or_default().to_string();
    let certs = sys.certs();
    let ep = rt.block_on(async { session::endpoint(&certs) })?;
    let user = cluster1_user(0);
    let mut out = Vec::new();
    let mut mirror_lines: HashMap<Role, usize> = HashMap::new();
    mirrored(&sys, Role::Primary, 0)?;
    let count = 10 * s.runs.max(1);
    for run in 0..count {
        progress::stage(format!("failover {}/{count}", run + 1));
        let old = sys.serving(1)?;
        let active = if sys.addr(1, Role::Primary)? == old {
            Role::Primary
        } else {
            Role::Secondary
        };
        let f = rt.block_on(async {
            let cc = session::connect(&ep, &coord).await?;
            // A session on the active server, with one post acknowledged.
            let conn = session::login(&ep, &coord, user).await?;
            let mut tl = Timeline::open(&conn, user).await?;
            let nonce: u64 = rand::random();
            tl.post(nonce, format!("before failover {run}")).await?;
            tl.ack(nonce, Duration::from_secs(5)).await?;
            let t_kill = Instant::now();
            sys.kill(1, active);
            let detected = loop {
                if t_kill.elapsed() > Duration::from_secs(10) {
                    bail!("no promotion within 10 s");
                }
                if let Some(a) = active_of(&cc).await? {
                    if a != old {
                        break Instant::now();
                    }
                }
            };
            let mut not_active = 0;
            let nonce: u64 = rand::random();
            loop {
                if detected.elapsed() > Duration::from_secs(10) {
                    bail!("no acknowledgement within 10 s of the promotion");
                }
                let addr = match session::call::<_, CoordReply>(
                    &cc,
                    &CoordRequest::AssignClient { client: user },
                )
                .await?
                {
                    CoordReply::Assigned { addr, .. } => addr,
                    other => bail!("assignment: {other:?}"),
                };
                let attempt = async {
                    let conn = session::connect(&ep, &addr).await?;
                    tsn_tests::login(&conn, user, &session::keys()).await?;
                    let mut tl = Timeline::open(&conn, user).await?;
                    tl.post(nonce, format!("failover {run}")).await?;
                    tl.ack(nonce, Duration::from_secs(5)).await?;
                    anyhow::Ok(conn)
                };
                match attempt.await {
                    Ok(c) => {
                        c.close(0u32.into(), b"");
                        break;
                    }
                    Err(e) => {
                        not_active += 1;
                        if not_active > 1000 {
                            bail!("the new server kept refusing: {e:#}");
                        }
                    }
                }
            }
            let moved = Instant::now();
            conn.close(0u32.into(), b"");
            cc.close(0u32.into(), b"");
            anyhow::Ok(Failover {
                detection_ms: (detected - t_kill).as_secs_f64() * 1e3,
                move_ms: (moved - detected).as_secs_f64() * 1e3,
                not_active,
            })
        })?;
        progress::note(format!(
            "failover {run}: detection {:.1} ms, move {:.1} ms ({} refusals first)",
            f.detection_ms, f.move_ms, f.not_active
        ));
        progress::step();
        out.push(f);
        // The killed server comes back as the standby; wait until the active one
        // mirrors to it again before the next kill.
        let now_active = match active {
            Role::Primary => Role::Secondary,
            _ => Role::Primary,
        };
        let seen = *mirror_lines
            .entry(now_active)
            .or_insert_with(|| sys.log_count(1, now_active, MIRRORING));
        sys.start_node(1, active)?;
        sys.wait_ready(Duration::from_secs(10))?;
        mirrored(&sys, now_active, seen)?;
        mirror_lines.insert(now_active, sys.log_count(1, now_active, MIRRORING));
    }
    Ok(out)
}

/// CPU seconds (user + system) and resident memory (MiB) of a process, from /proc.
pub fn proc_usage(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    Ok((ticks / 100.0, rss_kb / 1024.0))
}

/// Logs in users 1..=users over one connection per server, all but `author` following
/// it. Returns the connections.
async fn populate(
    ep: &quinn::Endpoint,
    coord: &str,
    users: u32,
    author: UserId,
) -> Result<HashMap<String, quinn::Connection>> {
    let mut conns: HashMap<String, quinn::Connection> = HashMap::new();
    let mut addr_of = HashMap::new();
    for c in 0..3u32 {
        let addr = session::assigned(ep, coord, c).await?;
        conns.insert(addr.clone(), session::connect(ep, &addr).await?);
        addr_of.insert(c, addr);
    }
    // A connection acts for one user: each user logs in (and follows) on its own.
    let permits = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::new();
    for u in 1..=users {
        let addr = addr_of[&(u % 3)].clone();
        let ep = ep.clone();
        let permit = permits.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let r = async {
                let conn = session::connect(&ep, &addr).await?;
                tsn_tests::login(&conn, u, &session::keys()).await?;
                if u != author {
                    follow(&conn, u, author).await?;
                }
                conn.close(0u32.into(), b"done");
                anyhow::Ok(())
            }
            .await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(conns)
}

fn measure_cost(sys: &System, label: &str) -> Result<Vec<Row>> {
    let mut pids = vec![(
        "coordinator".to_string(),
        sys.coordinator_pid().context("coordinator pid")?,
    )];
    for c in 1..=3 {
        for (r, name) in [
            (Role::Primary, "primary"),
            (Role::Secondary, "secondary"),
            (Role::Sync, "sync"),
        ] {
            pids.push((format!("{name} {c}"), sys.pid(c, r).context("pid")?));
        }
    }
    let before: Vec<(f64, f64)> = pids
        .iter()
        .map(|(_, p)| proc_usage(*p))
        .collect::<Result<_>>()?;
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let after: Vec<(f64, f64)> = pids
        .iter()
        .map(|(_, p)| proc_usage(*p))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    let mut by_role: HashMap<&str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for (((name, _), b), a) in pids.iter().zip(&before).zip(&after) {
        let role = name.split(' ').next().unwrap_or("");
        let e = by_role.entry(role).or_default();
        e.0.push((a.0 - b.0) / window.as_secs_f64() * 100.0);
        e.1.push(a.1);
    }
    for role in ["coordinator", "primary", "secondary", "sync"] {
        if let Some((cpu, rss)) = by_role.get_mut(role) {
            let cpu_max = cpu.iter().copied().fold(0.0, f64::max);
            let cpu = median(cpu);
            let mut r = row(
                "8",
                format!("{role} at rest, {label}: CPU (median of its processes)"),
                cpu,
                "% of a core",
            );
            if role == "sync" && label.contains("-q 10,") {
                r.target = Some(format!("< 2%: {}", verdict(cpu < 2.0)));
            }
            rows.push(r);
            if role != "coordinator" {
                rows.push(row(
                    "8",
                    format!("{role} at rest, {label}: CPU (busiest of its processes)"),
                    cpu_max,
                    "% of a core",
                ));
            }
            rows.push(row(
                "8",
                format!("{role} at rest, {label}: resident memory (median)"),
                median(rss),
                "MiB",
            ));
        }
    }
    Ok(rows)
}

/// Section 8: the cost of each role at rest with `users` users logged in (over one
/// connection per server) and following user 1, at `-q 500` and `-q 10`.
pub fn cost(rt: &Runtime, s: &Settings) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for q in [500u64, 10] {
        progress::stage(format!("cost at rest, -q {q}"));
        let sys = system(3, 1000, q)?;
        let (certs, coord) = (sys.certs(), sys.coord.clone());
        let _conns = rt.block_on(async {
            let ep = session::endpoint(&certs)?;
            populate(&ep, &coord, s.users, 1).await
        })?;
        std::thread::sleep(Duration::from_secs(3));
        rows.extend(measure_cost(
            &sys,
            &format!("{} users, -q {q}, 3 client connections", s.users),
        )?);
        progress::step();
    }
    Ok(rows)
}

/// Clients that each ask the coordinator for their server (over one shared connection
/// to it), connect on a connection of their own, log in, follow `follow` if given, and
/// open their timeline; a client that fails asks again, up to 3 times in all, as
/// `tsn_client` does. At most 32 at a time, over 16 client endpoints (UDP sockets) so
/// that the benchmark's own receive path is not one socket. Returns the clients that
/// made it and why the others did not.
pub(crate) async fn connect_clients(
    eps: &[quinn::Endpoint],
    coord: &quinn::Connection,
    plan: Vec<UserId>,
    how: Joining,
) -> Result<(Vec<(quinn::Connection, Timeline)>, Vec<String>)> {
    let permits = Arc::new(Semaphore::new(how.in_flight));
    let mut tasks = Vec::new();
    for (i, u) in plan.into_iter().enumerate() {
        let ep = eps[i % eps.len()].clone();
        let coord = coord.clone();
        let permit = permits.clone().acquire_owned().await?;
        let stays = i < how.open;
        tasks.push(tokio::spawn(async move {
            let attempt = || async {
                let addr = match session::call::<_, CoordReply>(
                    &coord,
                    &CoordRequest::AssignClient { client: u },
                )
                .await?
                {
                    CoordReply::Assigned { addr, .. } => addr,
                    other => bail!("assignment: {other:?}"),
                };
                let conn = session::connect(&ep, &addr).await?;
                tsn_tests::login(&conn, u, &session::keys()).await?;
                if let Some(a) = how.follow {
                    follow(&conn, u, a).await?;
                }
                if !stays {
                    conn.close(0u32.into(), b"");
                    return Ok(None);
                }
                let tl = Timeline::open(&conn, u).await?;
                anyhow::Ok(Some((conn, tl)))
            };
            let mut r = attempt().await;
            for _ in 0..2 {
                if r.is_ok() {
                    break;
                }
                r = attempt().await;
            }
            drop(permit);
            r
        }));
    }
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await? {
            Ok(Some(c)) => ok.push(c),
            Ok(None) => {}
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    Ok((ok, failed))
}

/// What each client of [`connect_clients`] does after logging in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Joining {
    /// Follows this user.
    pub follow: Option<UserId>,
    /// The first this many of the plan open their timelines and stay; the others leave.
    pub open: usize,
    /// Clients logging in at once.
    pub in_flight: usize,
}

impl Joining {
    /// Every client stays with its timeline open, 32 logging in at once.
    fn all(follow: Option<UserId>) -> Joining {
        Joining {
            follow,
            open: usize::MAX,
            in_flight: 32,
        }
    }
}

/// Posts measured in section 5 per `--runs` (the medians are over them), after the one
/// that settles the system.
pub const FANOUT_POSTS: usize = 5;

/// Sections 6 (and 8 with every client connected) and 5, each client with a QUIC
/// connection of its own. First `users` clients of cluster 1's users connect to
/// cluster 1's active server and open their timelines: its memory growth per client,
/// its and every role's cost at rest, and how many connections are still up at the
/// end. They leave; then users 2..=`users` over 3 clusters connect, follow user 1 and
/// open their timelines; user 1 posts once to settle the system (that post comes behind
/// the follows), then [`FANOUT_POSTS`] times, and the time until each follower's stream
/// shows each post is taken.
pub fn scale(rt: &Runtime, s: &Settings, fanout: bool, cost: bool) -> Result<Vec<Row>> {
    progress::stage("scale: connecting clients");
    let sys = system(3, 1000, 500)?;
    let (certs, coord) = (sys.certs(), sys.coord.clone());
    let author: UserId = 1;
    let server1 = sys.serving(1)?;
    let active1 = if sys.addr(1, Role::Primary)? == server1 {
        Role::Primary
    } else {
        Role::Secondary
    };
    let pid1 = sys.pid(1, active1).context("pid")?;
    let users = s.users;
    let mut rows = Vec::new();
    let eps = session::endpoints(rt, &certs, 16)?;
    let cc = rt.block_on(session::connect(&eps[0], &coord))?;

    // Section 6: connections held by one server.
    let rss_before = proc_usage(pid1)?.1;
    let cluster1: Vec<UserId> = (1..=users).filter(|u| u % 3 == 0).collect();
    let plan: Vec<UserId> = (0..users as usize)
        .map(|i| cluster1[i % cluster1.len().max(1)])
        .collect();
    let (clients, failed) = rt.block_on(connect_clients(&eps, &cc, plan, Joining::all(None)))?;
    if let Some(first) = failed.first() {
        progress::note(format!(
            "scale: {} of {users} clients failed to connect; first: {first}",
            failed.len()
        ));
    }
    let connected = clients.len();
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = proc_usage(pid1)?.1;
    let per_client_kib = (rss_after - rss_before) * 1024.0 / connected.max(1) as f64;
    progress::note(format!(
        "scale: cluster 1's server holds {connected} client connections, +{:.1} MiB",
        rss_after - rss_before
    ));
    if cost {
        progress::stage("cost at rest, every client connected");
        rows.extend(measure_cost(
            &sys,
            &format!("{users} users, -q 500, {connected} clients connected to cluster 1"),
        )?);
    }
    let still = clients
        .iter()
        .filter(|(c, _)| c.close_reason().is_none())
        .count();
    let moved = sys.serving(1).map(|a| a != server1).unwrap_or(true);
    if moved {
        progress::note("scale: cluster 1 failed over while its server held the clients");
    }
    rows.push(row(
        "6",
        "cluster 1 failed over meanwhile (its server missed heartbeats): 1 = yes",
        f64::from(u8::from(moved)),
        "",
    ));
    let mut r = row(
        "6",
        format!(
            "client connections with an open timeline held by one server ({} asked; still up {} s later)",
            users,
            if cost { 13 } else { 3 }
        ),
        still as f64,
        "connections",
    );
    r.target = Some(format!(">= 10000: {}", verdict(still >= 10_000)));
    rows.push(r);
    rows.push(row(
        "6",
        "server resident memory per client (connection + open timeline)",
        per_client_kib,
        "KiB",
    ));
    for (c, _) in &clients {
        c.close(0u32.into(), b"");
    }
    drop(clients);
    progress::step();

    // Section 5: fan-out.
    if fanout {
        progress::stage("fan-out: connecting followers");
        let out = rt.block_on(async {
            let ac = session::login(&eps[0], &coord, author).await?;
            let mut atl = Timeline::open(&ac, author).await?;
            let plan: Vec<UserId> = (2..=users).collect();
            let n_followers = plan.len();
            let (clients, failed) = connect_clients(&eps, &cc, plan, Joining::all(Some(author))).await?;
            if let Some(first) = failed.first() {
                progress::note(format!(
                    "fan-out: {} of {n_followers} followers failed to connect; first: {first}",
                    failed.len()
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut conns = Vec::new();
            let mut receivers = Vec::new();
            for (c, tl) in clients {
                conns.push(c);
                receivers.push(tl);
            }
            let (mut fan_first, mut fan_half, mut fan_last, mut fan_seen) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            // Post 0 settles the system: it comes behind the 9,999 follows (and logins)
            // still on their way through the sync services, so its time says how long
            // they took to drain, not how long a post takes to fan out. It is reported
            // apart; the figures are those of the posts after it.
            let mut first = (f64::NAN, f64::NAN);
            for run in 0..=FANOUT_POSTS * s.runs.max(1) {
                progress::stage(format!("fan-out {run}"));
                let nonce: u64 = rand::random();
                let t0 = Instant::now();
                atl.post(nonce, format!("fan-out {run}")).await?;
                atl.ack(nonce, Duration::from_secs(10)).await?;
                let mut waits = Vec::new();
                for mut tl in receivers.drain(..) {
                    waits.push(tokio::spawn(async move {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                        loop {
                            match tokio::time::timeout_at(deadline, tl.next()).await {
                                Ok(Some(TimelineDown::Entry { post: p, .. })) if p.id.nonce == nonce => {
                                    return (Some(tl), Some(Instant::now()))
                                }
                                Ok(Some(_)) => {}
                                // The stream ended (the connection was lost).
                                Ok(None) => return (None, None),
                                Err(_) => return (Some(tl), None),
                            }
                        }
                    }));
                }
                let mut times = Vec::new();
                let (mut unseen, mut lost) = (0, 0);
                for w in waits {
                    match w.await? {
                        (Some(tl), Some(at)) => {
                            times.push((at - t0).as_secs_f64() * 1e3);
                            receivers.push(tl);
                        }
                        (Some(tl), None) => {
                            unseen += 1;
                            receivers.push(tl);
                        }
                        (None, _) => lost += 1,
                    }
                }
                let half = median(&mut times);
                let (earliest, last) = (
                    times.first().copied().unwrap_or(f64::NAN),
                    times.last().copied().unwrap_or(f64::NAN),
                );
                progress::note(format!(
                    "fan-out {run}: {} of {n_followers} followers saw it, the first in {earliest:.1} ms, half in {half:.1} ms, the last in {last:.1} ms; {unseen} not within 30 s, {lost} streams lost",
                    times.len()
                ));
                if run == 0 {
                    first = (half, last);
                } else {
                    fan_seen.push(times.len() as f64);
                    fan_first.push(earliest);
                    fan_half.push(half);
                    fan_last.push(last);
                }
                progress::step();
            }
            for c in &conns {
                c.close(0u32.into(), b"");
            }
            anyhow::Ok((
                median(&mut fan_first),
                median(&mut fan_half),
                median(&mut fan_last),
                median(&mut fan_seen),
                n_followers,
                first,
            ))
        })?;
        let (earliest, half, last, seen, n_followers, first) = out;
        rows.push(row(
            "5",
            format!(
                "fan-out: the first post after the {n_followers} follows -> the last of the followers' streams (the follows drain first; not the fan-out figure)"
            ),
            first.1,
            "ms",
        ));
        rows.push(row(
            "5",
            "fan-out: post -> the first of the followers' streams",
            earliest,
            "ms",
        ));
        rows.push(row(
            "5",
            format!(
                "fan-out: post -> half of {n_followers} followers' streams (3 clusters, -q 500, a connection per client)"
            ),
            half,
            "ms",
        ));
        rows.push(row(
            "5",
            "fan-out: post -> the last of the followers' streams that saw it within 30 s",
            last,
            "ms",
        ));
        let mut r = row(
            "5",
            format!("fan-out: followers' streams that saw the post within 30 s, of {n_followers}"),
            seen,
            "streams",
        );
        r.target = Some(format!("all: {}", verdict(seen >= n_followers as f64)));
        rows.push(r);
    }
    drop(sys);
    Ok(rows)
}
