//! Section 9: restart and catch-up as the history grows (the "bounded history" issue).
//!
//! For each history size N, a fresh single cluster on loopback (coordinator, primary,
//! secondary, sync service, each with a datastore of its own): [`USERS`] users, each
//! following [`FOLLOWS`] others, post N posts in all as fast as the cluster acknowledges
//! them (one pipelined timeline session per user). The standby is killed (-9) before the
//! last 10% and restarted after them: its catch-up is timed until the active server logs
//! that it mirrors to it again. Once the sync service has delivered everything, the
//! active server is killed (-9) and started again with the same command line (same
//! port, so the coordinator sees the same server come back): timed until its `/ready`
//! says 200 and until a LIST against it succeeds; its resident memory once ready and its
//! journal bytes (see [`tsn_tests::JournalBytes`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tsn_protocol::client::{ClientReply, ClientRequest};
use tsn_protocol::UserId;
use tsn_tests::{Config, Role, System};

use crate::progress;
use crate::scenarios::{follow, MIRRORING};
use crate::session;

/// Users of the cluster; each posts its share of the history.
pub const USERS: u32 = 100;
/// Users each user follows.
pub const FOLLOWS: u32 = 10;
/// Unacknowledged posts per session (the server takes 256 per stream).
const WINDOW: usize = 128;
/// The user whose timeline tells when the sync service has delivered everything.
const WATCHED: UserId = 1;
/// Log filter of the nodes: the server's own lines (state loaded, ready, mirroring)
/// and the metrics listener's address.
const NODE_LOG: &str = "warn,tsn_nodes::server=info,tsn_nodes::metrics=info";

/// What section 9 is asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// History sizes, in posts.
    pub posts: Vec<u64>,
    /// `TSN_CHECKPOINT_BYTES` for the servers (their default when `None`).
    pub checkpoint_bytes: Option<u64>,
    /// Heartbeat interval: the active server learns of a returning standby within one
    /// (part of its catch-up time), and a restart that takes longer than 2.5 of them is
    /// failed over (the restarted server is then the standby and answers no LIST).
    pub heartbeat_ms: u64,
}

/// The figures of one history size.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPoint {
    /// Posts made in all.
    pub posts: u64,
    /// Posts per second acknowledged while posting the first 90% (the standby mirroring).
    pub post_rate: f64,
    /// Seconds from the first post until the last was acknowledged (the last 10% without
    /// a standby, after it was dropped for not answering within 1 s).
    pub posting_s: f64,
    /// From the last acknowledgement until the sync service had delivered every post
    /// (seconds).
    pub delivered_after_s: f64,
    /// Active server: from its spawn until its ready file (listening), seconds.
    pub restart_to_listen_s: f64,
    /// Active server: from its spawn until `/ready` answered 200, seconds.
    pub restart_to_ready_s: Option<f64>,
    /// Active server: from its spawn until a LIST against it succeeded, seconds.
    pub restart_to_list_s: Option<f64>,
    /// Users that LIST showed (all of them when the data is intact).
    pub list_users: Option<usize>,
    /// Its resident memory (VmRSS) once ready, MiB.
    pub rss_mib: Option<f64>,
    /// Its peak resident memory (VmHWM) once ready, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Its resident memory once it mirrors to the standby again, MiB.
    pub rss_mirroring_mib: Option<f64>,
    /// Its journal bytes once ready (logs, sealed segments and checkpoint), MiB.
    pub journal_mib: f64,
    /// Its `checkpoint.data` alone, MiB.
    pub checkpoint_mib: f64,
    /// Standby away for the last 10%: from its spawn until the active server logged
    /// that it mirrors to it again after the exchange, seconds (includes the active
    /// server learning of it: up to one heartbeat, or its mirror retry pause).
    pub standby_catch_up_s: Option<f64>,
    /// Changes the active server received from the standby in that exchange.
    pub exchanged_received: Option<u64>,
    /// Changes the active server sent to the standby in that exchange.
    pub exchanged_sent: Option<u64>,
    /// What did not go as planned.
    pub notes: Vec<String>,
}

/// Runs every history size; a size that fails is reported in the second list and the
/// others still run.
pub fn run(rt: &Runtime, s: &Settings) -> (Vec<HistoryPoint>, Vec<String>) {
    let mut points = Vec::new();
    let mut errors = Vec::new();
    for &n in &s.posts {
        match one(rt, s, n) {
            Ok(p) => points.push(p),
            Err(e) => {
                progress::note(format!("history, {n} posts, failed: {e:#}"));
                errors.push(format!("history, {n} posts: {e:#}"));
            }
        }
    }
    (points, errors)
}

/// Whom `user` follows: [`FOLLOWS`] others, spread over the population.
fn followees(user: UserId) -> impl Iterator<Item = UserId> {
    // 7 is prime to 100 and 7 * FOLLOWS < USERS: distinct users, never oneself.
    (1..=FOLLOWS).map(move |k| (user - 1 + 7 * k) % USERS + 1)
}

/// Posts of each user (index `user - 1`), N in all.
fn shares(total: u64) -> Vec<u64> {
    let n = u64::from(USERS);
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

/// The environment of the nodes, as a command prefix.
fn prefix(checkpoint_bytes: Option<u64>) -> Vec<String> {
    let mut p = vec!["env".to_string(), format!("RUST_LOG={NODE_LOG}")];
    if let Some(b) = checkpoint_bytes {
        p.push(format!("TSN_CHECKPOINT_BYTES={b}"));
    }
    p
}

fn start(s: &Settings) -> Result<System> {
    progress::note(format!(
        "history: starting 1 cluster, heartbeat {} ms, TSN_CHECKPOINT_BYTES {}",
        s.heartbeat_ms,
        s.checkpoint_bytes
            .map_or("unset (server default)".to_string(), |b| b.to_string())
    ));
    let mut sys = System::coordinator_only(Config {
        clusters: 1,
        heartbeat_ms: s.heartbeat_ms,
        period_ms: 500,
        server_args: vec!["--metrics-addr".into(), "127.0.0.1:0".into()],
        sync_args: Vec::new(),
        coordinators: 1,
        coordinator_args: Vec::new(),
        member_args: Vec::new(),
    })?;
    let servers = prefix(s.checkpoint_bytes);
    sys.start_node_in(1, Role::Primary, &servers, &[])?;
    sys.start_node_in(1, Role::Secondary, &servers, &[])?;
    sys.start_node_in(1, Role::Sync, &prefix(None), &[])?;
    sys.wait_ready(Duration::from_secs(30))?;
    Ok(sys)
}

fn other(role: Role) -> Role {
    match role {
        Role::Primary => Role::Secondary,
        _ => Role::Primary,
    }
}

/// Logs every user in on a connection of its own, then makes the follows.
async fn populate(ep: &quinn::Endpoint, coord: &str) -> Result<Vec<quinn::Connection>> {
    let permits = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for u in 1..=USERS {
        let (ep, coord) = (ep.clone(), coord.to_string());
        let permit = permits.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let r = session::login(&ep, &coord, u).await;
            drop(permit);
            r
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await??);
    }
    let mut tasks = Vec::new();
    for u in 1..=USERS {
        let conn = conns[(u - 1) as usize].clone();
        tasks.push(tokio::spawn(async move {
            for f in followees(u) {
                follow(&conn, u, f).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(conns)
}

/// Posts `counts[i]` posts as user `i + 1`, nonces from `bases[i]` on, every user at
/// once; returns the acknowledged posts per second.
async fn post_all(
    conns: &[quinn::Connection],
    bases: &[u64],
    counts: &[u64],
    what: &str,
) -> Result<f64> {
    let total: u64 = counts.iter().sum();
    let started = Instant::now();
    // Generous: the slowest server seen here takes a few thousand posts a second.
    let deadline = started + Duration::from_secs(120 + total / 200);
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        let (conn, acked) = (conn.clone(), acked.clone());
        let nonces = bases[i]..bases[i] + counts[i];
        tasks.push(tokio::spawn(async move {
            tsn_tests::post_pipelined(&conn, i as u32 + 1, nonces, WINDOW, &acked, deadline).await
        }));
    }
    let label = what.to_string();
    let shown = acked.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            progress::stage(format!(
                "{label}: {} of {total} acknowledged",
                shown.load(Ordering::Relaxed)
            ));
        }
    });
    let mut result = Ok(());
    for t in tasks {
        if let Err(e) = t.await? {
            result = Err(e);
        }
    }
    ticker.abort();
    result?;
    let secs = started.elapsed().as_secs_f64();
    progress::note(format!(
        "{what}: {total} posts in {secs:.1} s ({:.0}/s)",
        total as f64 / secs
    ));
    Ok(total as f64 / secs)
}

/// Bytes of the files at the top of each of `dirs` (logs, cursors: what grows while
/// the sync service delivers).
fn top_bytes(dirs: &[std::path::PathBuf]) -> u64 {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Waits until `server`'s copy of the watched user's timeline holds `want` entries and
/// the logs of `roles` have not grown for a second.
fn delivered(
    sys: &System,
    server: Role,
    roles: &[Role],
    want: usize,
    timeout: Duration,
) -> Result<()> {
    let timeline = sys
        .role_dir(1, server)
        .join(format!("local_clients/{WATCHED}/timeline.data"));
    let dirs: Vec<_> = roles.iter().map(|r| sys.role_dir(1, *r)).collect();
    let deadline = Instant::now() + timeout;
    let (mut last, mut since) = (u64::MAX, Instant::now());
    let mut shown = (usize::MAX, Instant::now());
    loop {
        let have = lines(&timeline);
        let bytes = top_bytes(&dirs);
        if bytes != last {
            (last, since) = (bytes, Instant::now());
        }
        if have >= want && since.elapsed() >= Duration::from_secs(1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not delivered within {timeout:?}: user {WATCHED}'s timeline on the {server:?} has {have} of {want} entries"
            );
        }
        if have != shown.0 && shown.1.elapsed() >= Duration::from_secs(2) {
            shown = (have, Instant::now());
            progress::stage(format!(
                "waiting for the sync service: user {WATCHED} has {have} of {want} entries"
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the log of `role` has more than `seen` lines saying it mirrors to its
/// standby; returns that line.
fn mirroring_line(sys: &System, role: Role, seen: usize, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = sys.read_log(1, role);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(MIRRORING)).collect();
        if lines.len() > seen {
            return Ok(lines[lines.len() - 1].to_string());
        }
        if Instant::now() > deadline {
            bail!("the {role:?} did not mirror to its standby within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `name=<n>` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Polls the new process's `/ready` until it says 200; returns when, from `t0`, and its
/// memory then (VmRSS, VmHWM in KiB).
fn wait_ready_200(
    sys: &System,
    role: Role,
    metrics_seen: usize,
    pid: u32,
    t0: Instant,
    timeout: Duration,
) -> Result<(Duration, u64, u64)> {
    let deadline = t0 + timeout;
    let addr = loop {
        match sys.metrics_addr(1, role) {
            (Some(a), n) if n > metrics_seen => break a,
            _ if Instant::now() > deadline => bail!("the {role:?} logged no metrics address"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    loop {
        if let Ok(200) = tsn_tests::http_status(&addr, "/ready") {
            let at = t0.elapsed();
            let rss = tsn_tests::proc_status_kib(pid, "VmRSS")?;
            let hwm = tsn_tests::proc_status_kib(pid, "VmHWM")?;
            return Ok((at, rss, hwm));
        }
        if Instant::now() > deadline {
            bail!("/ready of the {role:?} did not say 200 within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asks for LIST against `addr` (logging in first) until it succeeds; returns when,
/// from `t0`, and how many users it showed. `None` when the cluster failed over to
/// `standby_addr` meanwhile (a LIST against the restarted server cannot succeed then).
async fn list_until(
    ep: &quinn::Endpoint,
    coord: &str,
    addr: &str,
    standby_addr: &str,
    t0: Instant,
    timeout: Duration,
) -> Result<Option<(Duration, usize)>> {
    let user = WATCHED;
    let mut checked = Instant::now();
    loop {
        let attempt = async {
            let conn = session::connect(ep, addr).await?;
            let r = async {
                tsn_tests::login(&conn, user, &session::keys()).await?;
                tsn_tests::call::<_, ClientReply>(&conn, &ClientRequest::List { user }).await
            }
            .await;
            conn.close(0u32.into(), b"");
            match r? {
                ClientReply::List { all_users, .. } => anyhow::Ok(all_users.len()),
                other => bail!("LIST: {other:?}"),
            }
        };
        if let Ok(n) = attempt.await {
            return Ok(Some((t0.elapsed(), n)));
        }
        if t0.elapsed() > timeout {
            bail!("no LIST against the restarted server within {timeout:?}");
        }
        if checked.elapsed() > Duration::from_millis(500) {
            checked = Instant::now();
            if session::assigned(ep, coord, user).await.ok().as_deref() == Some(standby_addr) {
                return Ok(None);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One history size on a fresh system.
fn one(rt: &Runtime, s: &Settings, total: u64) -> Result<HistoryPoint> {
    let label = format!("history, {total} posts");
    progress::stage(format!("{label}: starting"));
    let mut sys = start(s)?;
    // The primary learns of its standby on a heartbeat: within one.
    mirroring_line(
        &sys,
        Role::Primary,
        0,
        Duration::from_millis(2 * s.heartbeat_ms) + Duration::from_secs(30),
    )?;
    let act = sys.active_server(1)?;
    let standby = other(act);
    let (certs, coord) = (sys.certs(), sys.coord.clone());
    let servers = prefix(s.checkpoint_bytes);
    let mut notes = Vec::new();
    // Bounds, generous for today's server (whose costs grow with the history).
    let delivery = Duration::from_secs(120 + total / 1000);
    let long = Duration::from_secs(60 + total / 10_000);

    let ep = rt.block_on(async { session::endpoint(&certs) })?;
    progress::stage(format!("{label}: {USERS} users, each following {FOLLOWS}"));
    let conns = rt.block_on(populate(&ep, &coord))?;
    // The follows reach the sync service before the first post.
    std::thread::sleep(Duration::from_secs(1));
    progress::step();

    let counts = shares(total);
    let first: Vec<u64> = counts.iter().map(|c| c * 9 / 10).collect();
    let rest: Vec<u64> = counts.iter().zip(&first).map(|(c, f)| c - f).collect();
    let bases: Vec<u64> = counts.iter().map(|_| rand::random::<u64>() >> 2).collect();
    let later: Vec<u64> = bases.iter().zip(&first).map(|(b, f)| b + f).collect();
    let posting = Instant::now();
    let post_rate = rt.block_on(post_all(
        &conns,
        &bases,
        &first,
        &format!("{label}, first 90%"),
    ))?;

    // The standby is away for the last 10%.
    sys.kill(1, standby);
    rt.block_on(post_all(
        &conns,
        &later,
        &rest,
        &format!("{label}, last 10%"),
    ))?;
    let posting_s = posting.elapsed().as_secs_f64();
    let last_ack = Instant::now();
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    progress::step();
    let want = (counts[(WATCHED - 1) as usize]
        + followees(WATCHED)
            .map(|f| counts[(f - 1) as usize])
            .sum::<u64>()) as usize;
    delivered(&sys, act, &[act, Role::Sync], want, delivery)?;
    let delivered_after = last_ack.elapsed().as_secs_f64();
    progress::note(format!(
        "{label}: delivered {delivered_after:.1} s after the last acknowledgement"
    ));

    progress::stage(format!("{label}: standby back after the last 10%"));
    let seen = sys.log_count(1, act, MIRRORING);
    let t0 = Instant::now();
    sys.restart_node_in_place(1, standby, &servers, &[], long)?;
    let (catch_up, received, sent) = match mirroring_line(&sys, act, seen, long) {
        Ok(line) => (
            Some(t0.elapsed().as_secs_f64()),
            field(&line, "received"),
            field(&line, "sent"),
        ),
        Err(e) => {
            notes.push(format!("standby catch-up: {e:#}"));
            (None, None, None)
        }
    };
    progress::note(format!(
        "{label}: standby caught up in {} (received {received:?}, sent {sent:?})",
        catch_up.map_or("-".into(), |c| format!("{c:.2} s"))
    ));
    delivered(&sys, standby, &[act, standby, Role::Sync], want, delivery)?;
    progress::step();

    progress::stage(format!("{label}: restarting the active server"));
    let (addr, standby_addr) = (sys.addr(1, act)?, sys.addr(1, standby)?);
    let metrics_seen = sys.metrics_addr(1, act).1;
    let mirror_seen = sys.log_count(1, act, MIRRORING);
    sys.kill(1, act);
    let t0 = Instant::now();
    sys.restart_node_in_place(1, act, &servers, &[], long)?;
    let listening = t0.elapsed();
    let pid = sys.pid(1, act).context("restarted server's pid")?;
    let (ready, list) = std::thread::scope(|scope| {
        let sys = &sys;
        let ready = scope.spawn(move || wait_ready_200(sys, act, metrics_seen, pid, t0, long));
        let list = rt.block_on(list_until(&ep, &coord, &addr, &standby_addr, t0, long));
        (ready.join(), list)
    });
    let ready = ready.map_err(|_| anyhow::anyhow!("/ready poller panicked"))?;
    let (ready_at, rss, hwm) = match ready {
        Ok((at, rss, hwm)) => (Some(at.as_secs_f64()), Some(mib(rss)), Some(mib(hwm))),
        Err(e) => {
            notes.push(format!("restart: {e:#}"));
            (None, None, None)
        }
    };
    let (list_at, list_users) = match list {
        Ok(Some((at, n))) => {
            if n != USERS as usize {
                notes.push(format!("LIST showed {n} of {USERS} users"));
            }
            (Some(at.as_secs_f64()), Some(n))
        }
        Ok(None) => {
            notes.push(format!(
                "the restart outlasted the failover timeout ({} ms): the other server took over, so no LIST against the restarted one",
                s.heartbeat_ms * 5 / 2
            ));
            (None, None)
        }
        Err(e) => {
            notes.push(format!("LIST: {e:#}"));
            (None, None)
        }
    };
    let bytes = tsn_tests::journal_bytes(&sys.role_dir(1, act))?;
    // Still the active server (it answered LIST): its memory once it has sent the
    // standby its journal again.
    let rss_mirroring = match list_at {
        Some(_) => match mirroring_line(&sys, act, mirror_seen, long) {
            Ok(_) => tsn_tests::proc_status_kib(pid, "VmRSS").ok().map(mib),
            Err(e) => {
                notes.push(format!("after the restart: {e:#}"));
                None
            }
        },
        None => None,
    };
    progress::step();
    let point = HistoryPoint {
        posts: total,
        post_rate,
        posting_s,
        delivered_after_s: delivered_after,
        restart_to_listen_s: listening.as_secs_f64(),
        restart_to_ready_s: ready_at,
        restart_to_list_s: list_at,
        list_users,
        rss_mib: rss,
        peak_rss_mib: hwm,
        rss_mirroring_mib: rss_mirroring,
        journal_mib: bytes.total as f64 / 1048576.0,
        checkpoint_mib: bytes.checkpoint as f64 / 1048576.0,
        standby_catch_up_s: catch_up,
        exchanged_received: received,
        exchanged_sent: sent,
        notes,
    };
    progress::note(format!("{label}: {point:?}"));
    drop(sys);
    Ok(point)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The Markdown table of the section.
pub fn table(points: &[HistoryPoint]) -> String {
    let mut out = String::from(
        "restart and catch-up as history grows (kill -9, then the same command line)\n\n\
         | posts | restart-to-ready s | restart-to-LIST s | RSS MiB | journal MiB | checkpoint MiB | standby catch-up s |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} |\n",
            p.posts,
            opt(p.restart_to_ready_s, 2),
            opt(p.restart_to_list_s, 2),
            opt(p.rss_mib, 1),
            p.journal_mib,
            p.checkpoint_mib,
            opt(p.standby_catch_up_s, 2),
        ));
    }
    let notes: Vec<String> = points
        .iter()
        .flat_map(|p| {
            p.notes
                .iter()
                .map(move |n| format!("- {} posts: {n}", p.posts))
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}
