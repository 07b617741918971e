//! Sections 2-8: the real system under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown};
use tsn_protocol::UserId;
use tsn_tests::{Config, Role, System};

use crate::session::{self, Timeline};
use crate::stats::{median, summarize, Row};

/// What every scenario needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repetitions of latency runs.
    pub runs: usize,
    /// Users for scale, fan-out and cost.
    pub users: u32,
    /// Seconds per throughput run.
    pub seconds: u64,
    /// The floor's RTT p50, for ratios.
    pub floor_rtt_us: f64,
}

fn row(section: &str, metric: impl Into<String>, value: f64, unit: &str) -> Row {
    Row {
        section: section.into(),
        metric: metric.into(),
        value,
        unit: unit.into(),
        vs_floor: None,
        target: None,
    }
}

fn system(clusters: u32, heartbeat_ms: u64, period_ms: u64) -> Result<System> {
    system_with(clusters, heartbeat_ms, period_ms, Vec::new())
}

fn system_with(
    clusters: u32,
    heartbeat_ms: u64,
    period_ms: u64,
    server_args: Vec<String>,
) -> Result<System> {
    eprintln!(
        "starting {clusters} clusters, heartbeat {heartbeat_ms} ms, -q {period_ms} {}",
        server_args.join(" ")
    );
    if std::env::var_os("TSN_TEST_LOG").is_none() {
        // Warnings, and the line that says mirroring has started (see `mirrored`).
        std::env::set_var("TSN_TEST_LOG", "warn,tsn_nodes::server::mirror=info");
    }
    System::start(Config {
        clusters,
        heartbeat_ms,
        period_ms,
        server_args,
    })
}

/// Waits until cluster 1's primary mirrors to its secondary, so that what follows
/// measures acknowledgements with mirroring on (until then the primary serves alone).
fn mirrored(sys: &System) -> Result<()> {
    sys.wait_log(
        1,
        Role::Primary,
        "mirroring to the standby after exchanging state",
        Duration::from_secs(30),
    )
}

/// Users served by cluster 1 of 3: multiples of 3.
fn cluster1_user(k: u32) -> UserId {
    3 * (k + 1)
}

async fn posting_session(
    ep: &quinn::Endpoint,
    coord: &str,
    user: UserId,
) -> Result<(quinn::Connection, Timeline)> {
    let conn = session::login(ep, coord, user).await?;
    let tl = Timeline::open(&conn, user).await?;
    Ok((conn, tl))
}

/// Closed loop: post, wait for the ack, repeat, until `until`. Returns ack latencies.
async fn closed_loop(mut tl: Timeline, until: Instant) -> Result<Vec<Duration>> {
    let mut lat = Vec::new();
    let mut nonce: u64 = rand::random();
    while Instant::now() < until {
        nonce = nonce.wrapping_add(1);
        let t = Instant::now();
        tl.post(nonce, format!("benchmark post {nonce}")).await?;
        tl.ack(nonce, Duration::from_secs(10)).await?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

/// Sections 2 and 3: acknowledgement latency and throughput of one cluster (mirroring
/// on), with the servers' default `--ack replicated` and with `--ack durable`.
pub fn ack_and_throughput(
    rt: &Runtime,
    s: &Settings,
    latency: bool,
    throughput: bool,
) -> Result<Vec<Row>> {
    let mut rows = ack_and_throughput_in(rt, s, latency, throughput, "replicated")?;
    rows.extend(ack_and_throughput_in(
        rt, s, latency, throughput, "durable",
    )?);
    Ok(rows)
}

fn ack_and_throughput_in(
    rt: &Runtime,
    s: &Settings,
    latency: bool,
    throughput: bool,
    ack: &str,
) -> Result<Vec<Row>> {
    let sys = system_with(3, 1000, 500, vec!["--ack".into(), ack.into()])?;
    mirrored(&sys)?;
    let targeted = ack == "replicated";
    let certs = sys.certs();
    let coord = sys.coord.clone();
    let mut rows = Vec::new();
    rt.block_on(async {
        let ep = session::endpoint(&certs)?;
        if latency {
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            for _ in 0..s.runs {
                let (_c, tl) = posting_session(&ep, &coord, cluster1_user(0)).await?;
                let mut lat = closed_loop(tl, Instant::now() + Duration::from_secs(2)).await?;
                let sum = summarize(&mut lat);
                p50.push(sum.p50_us);
                p99.push(sum.p99_us);
            }
            let (p50, p99) = (median(&mut p50), median(&mut p99));
            let mut r = row(
                "2",
                format!("post ack latency, 1 client (low load), --ack {ack}, p50"),
                p50,
                "us",
            );
            r.vs_floor = Some(p50 / s.floor_rtt_us);
            r.target = targeted.then(|| format!(
                "<= 3x floor: {}",
                if p50 <= 3.0 * s.floor_rtt_us {
                    "met"
                } else {
                    "missed"
                }
            ));
            rows.push(r);
            rows.push(row(
                "2",
                format!("post ack latency, 1 client (low load), --ack {ack}, p99"),
                p99,
                "us",
            ));
        }
        for clients in [1u32, 16, 256] {
            if !(throughput || (latency && clients == 256)) {
                continue;
            }
            let mut rates = Vec::new();
            let mut all_lat = Vec::new();
            for _ in 0..s.runs {
                let mut sessions = Vec::new();
                for k in 0..clients {
                    sessions.push(posting_session(&ep, &coord, cluster1_user(k)).await?);
                }
                let until = Instant::now() + Duration::from_secs(s.seconds);
                let start = Instant::now();
                let mut tasks = Vec::new();
                let mut conns = Vec::new();
                for (c, tl) in sessions {
                    conns.push(c);
                    tasks.push(tokio::spawn(closed_loop(tl, until)));
                }
                let mut acked = 0usize;
                for t in tasks {
                    let lat = t.await??;
                    acked += lat.len();
                    all_lat.extend(lat);
                }
                rates.push(acked as f64 / start.elapsed().as_secs_f64());
                for c in conns {
                    c.close(0u32.into(), b"");
                }
            }
            if throughput {
                let rate = median(&mut rates);
                let mut r = row(
                    "3",
                    format!("acknowledged posts/s, one cluster, mirroring on, --ack {ack}, {clients} clients"),
                    rate,
                    "posts/s",
                );
                if clients == 256 && targeted {
                    r.target = Some(format!(
                        ">= 20000: {}",
                        if rate >= 20_000.0 { "met" } else { "missed" }
                    ));
                }
                rows.push(r);
            }
            if latency && clients == 256 {
                let sum = summarize(&mut all_lat);
                let mut r = row(
                    "2",
                    format!("post ack latency at saturation (256 clients), --ack {ack}, p50"),
                    sum.p50_us,
                    "us",
                );
                r.vs_floor = Some(sum.p50_us / s.floor_rtt_us);
                rows.push(r);
                rows.push(row(
                    "2",
                    format!("post ack latency at saturation (256 clients), --ack {ack}, p99"),
                    sum.p99_us,
                    "us",
                ));
            }
        }
        anyhow::Ok(())
    })?;
    Ok(rows)
}

/// Retries FOLLOW until the followee is known in the follower's cluster.
async fn follow(conn: &quinn::Connection, user: UserId, target: UserId) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match session::call::<_, ClientReply>(conn, &ClientRequest::Follow { user, target }).await?
        {
            ClientReply::Ok => return Ok(()),
            ClientReply::Failed(tsn_protocol::client::CommandError::AlreadyExists) => return Ok(()),
            other if Instant::now() > deadline => bail!("follow {user}->{target}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Section 4: post -> a follower's open timeline, same cluster and across clusters.
pub fn delivery(rt: &Runtime, s: &Settings) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for q in [500u64, 50, 10] {
        let sys = system(3, 1000, q)?;
        let (certs, coord) = (sys.certs(), sys.coord.clone());
        let (same, cross) = rt.block_on(async {
            let ep = session::endpoint(&certs)?;
            // Author 1 (cluster 2); follower 4 in the same cluster, follower 3 in cluster 1.
            let (_ca, mut author) = posting_session(&ep, &coord, 1).await?;
            let c4 = session::login(&ep, &coord, 4).await?;
            let c3 = session::login(&ep, &coord, 3).await?;
            follow(&c4, 4, 1).await?;
            follow(&c3, 3, 1).await?;
            let t4 = Timeline::open(&c4, 4).await?;
            let t3 = Timeline::open(&c3, 3).await?;
            tokio::time::sleep(Duration::from_millis(2 * q + 200)).await;
            let posts = 60 * s.runs.max(1);
            let sent: Arc<std::sync::Mutex<HashMap<u64, Instant>>> = Arc::default();
            let collect = |tl: Timeline, sent: Arc<std::sync::Mutex<HashMap<u64, Instant>>>| {
                tokio::spawn(async move {
                    // The whole session moves here: dropping its sending half would end it.
                    let mut tl = tl;
                    let mut lat = Vec::new();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    while lat.len() < posts {
                        match tokio::time::timeout_at(deadline, tl.next()).await {
                            Ok(Some(TimelineDown::Entry { post: p, .. })) => {
                                if let Some(t) = sent.lock().expect("lock").get(&p.id.nonce) {
                                    lat.push(t.elapsed());
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                eprintln!("a follower's timeline stream closed");
                                break;
                            }
                            Err(_) => {
                                eprintln!("timed out waiting for deliveries");
                                break;
                            }
                        }
                    }
                    lat
                })
            };
            let j4 = collect(t4, sent.clone());
            let j3 = collect(t3, sent.clone());
            let mut nonce: u64 = rand::random();
            for _ in 0..posts {
                nonce = nonce.wrapping_add(1);
                sent.lock().expect("lock").insert(nonce, Instant::now());
                author.post(nonce, format!("delivery {nonce}")).await?;
                author.ack(nonce, Duration::from_secs(10)).await?;
                // Spread posts over the sync period so that every phase of it is sampled.
                tokio::time::sleep(Duration::from_millis((q / 10).clamp(5, 50))).await;
            }
            let mut same = j4.await?;
            let mut cross = j3.await?;
            if same.len() < posts || cross.len() < posts {
                bail!(
                    "-q {q}: delivered {} and {} of {posts} posts",
                    same.len(),
                    cross.len()
                );
            }
            anyhow::Ok((summarize(&mut same), summarize(&mut cross)))
        })?;
        rows.push(row(
            "4",
            format!("delivery same cluster, -q {q}, p50"),
            same.p50_us / 1000.0,
            "ms",
        ));
        rows.push(row(
            "4",
            format!("delivery same cluster, -q {q}, p99"),
            same.p99_us / 1000.0,
            "ms",
        ));
        rows.push(row(
            "4",
            format!("delivery cross cluster, -q {q}, p50"),
            cross.p50_us / 1000.0,
            "ms",
        ));
        let mut r = row(
            "4",
            format!("delivery cross cluster, -q {q}, p99"),
            cross.p99_us / 1000.0,
            "ms",
        );
        let limit = q as f64 + 20.0;
        r.target = Some(format!(
            "<= {limit} ms: {}",
            if cross.p99_us / 1000.0 <= limit {
                "met"
            } else {
                "missed"
            }
        ));
        rows.push(r);
        drop(sys);
    }
    Ok(rows)
}

/// Section 7: kill -9 of the active server of cluster 1 -> the client's next post is
/// acknowledged through the other server, with a 100 ms heartbeat. The client side
/// follows `tsn_client`'s own rule: a post unacknowledged for
/// `tsn_nodes::client::timeline::ACK_SUSPECT` makes it ask the coordinator, every
/// `CHECK_EVERY`, whether the server moved.
pub fn failover(rt: &Runtime, _s: &Settings) -> Result<Vec<Row>> {
    use tsn_nodes::client::timeline::{ACK_SUSPECT, CHECK_EVERY};
    let mut sys = system(3, 100, 50)?;
    let (certs, coord) = (sys.certs(), sys.coord.clone());
    let ep = rt.block_on(async { session::endpoint(&certs) })?;
    let user = cluster1_user(0);
    let mut times = Vec::new();
    for run in 0..10 {
        let active_addr = sys.serving(1)?;
        let active = if sys.addr(1, Role::Primary)? == active_addr {
            Role::Primary
        } else {
            Role::Secondary
        };
        let (conn, mut tl) = rt.block_on(posting_session(&ep, &coord, user))?;
        let nonce: u64 = rand::random();
        let t0 = Instant::now();
        sys.kill(1, active);
        let took = rt.block_on(async {
            tl.post(nonce, format!("failover {run}")).await?;
            if tl.ack(nonce, ACK_SUSPECT).await.is_ok() {
                bail!("acknowledged by a killed server");
            }
            loop {
                if t0.elapsed() > Duration::from_secs(10) {
                    bail!("no failover within 10 s");
                }
                let now_addr = session::assigned(&ep, &coord, user)
                    .await
                    .unwrap_or_default();
                if !now_addr.is_empty() && now_addr != active_addr {
                    // The server named may not know yet that it is active (it learns it
                    // from its next heartbeat reply) and answer NotActive: as the client
                    // does, ask again.
                    match posting_session(&ep, &coord, user).await {
                        Ok((_c, mut tl2)) => {
                            tl2.post(nonce, format!("failover {run}")).await?;
                            tl2.ack(nonce, Duration::from_secs(5)).await?;
                            return anyhow::Ok(t0.elapsed());
                        }
                        Err(e) => eprintln!("failover run {run}: {e:#}; asking again"),
                    }
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        })?;
        conn.close(0u32.into(), b"");
        eprintln!("failover run {run}: {took:?}");
        times.push(took);
        sys.start_node(1, active)?;
        sys.wait_ready(Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let sum = summarize(&mut times);
    let mut r = row(
        "7",
        "failover: kill -9 -> next post acked via the other server, p50 of 10 (100 ms heartbeat)",
        sum.p50_us / 1000.0,
        "ms",
    );
    r.target = Some(format!(
        "< 1000 ms: {}",
        if sum.p50_us < 1e6 { "met" } else { "missed" }
    ));
    Ok(vec![
        r,
        row("7", "failover, max of 10", sum.max_us / 1000.0, "ms"),
    ])
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
fn proc_usage(pid: u32) -> Result<(f64, f64)> {
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

/// Logs in `users` users (1..=users) on their clusters, `follow`ing `author` if given.
async fn populate(
    ep: &quinn::Endpoint,
    coord: &str,
    users: u32,
    author: Option<UserId>,
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
                if let Some(a) = author.filter(|a| *a != u) {
                    follow(&conn, u, a).await?;
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
            let cpu = median(cpu);
            let mut r = row(
                "8",
                format!("{role} at rest, {label}: CPU (median of its processes)"),
                cpu,
                "% of a core",
            );
            if role == "sync" && label.contains("-q 10") {
                r.target = Some(format!(
                    "< 2%: {}",
                    if cpu < 2.0 { "met" } else { "missed" }
                ));
            }
            rows.push(r);
            rows.push(row(
                "8",
                format!("{role} at rest, {label}: resident memory"),
                median(rss),
                "MiB",
            ));
        }
    }
    Ok(rows)
}

/// Sections 5, 6 and 8: fan-out to 10,000 followers, 10,000 open streams on one server,
/// and the cost of each role at rest with 10,000 users.
pub fn scale(
    rt: &Runtime,
    s: &Settings,
    fanout: bool,
    streams: bool,
    cost: bool,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    if cost {
        let sys = system(3, 1000, 500)?;
        let (certs, coord) = (sys.certs(), sys.coord.clone());
        rt.block_on(async {
            let ep = session::endpoint(&certs)?;
            populate(&ep, &coord, s.users, None).await
        })?;
        std::thread::sleep(Duration::from_secs(3));
        rows.extend(measure_cost(&sys, &format!("{} users, -q 500", s.users))?);
    }
    if !(fanout || streams || cost) {
        return Ok(rows);
    }
    let sys = system(3, 1000, 10)?;
    let (certs, coord) = (sys.certs(), sys.coord.clone());
    let author: UserId = 1;
    let ep = rt.block_on(async { session::endpoint(&certs) })?;
    let _conns = rt.block_on(populate(
        &ep,
        &coord,
        s.users,
        (fanout || streams).then_some(author),
    ))?;
    std::thread::sleep(Duration::from_secs(3));
    if cost {
        rows.extend(measure_cost(&sys, &format!("{} users, -q 10", s.users))?);
    }
    if fanout || streams {
        let server1 = sys.serving(1)?;
        let active1 = if sys.addr(1, Role::Primary)? == server1 {
            Role::Primary
        } else {
            Role::Secondary
        };
        let pid1 = sys.pid(1, active1).context("pid")?;
        let rss_before = proc_usage(pid1)?.1;
        let (fan, per_stream, held) = rt.block_on(async {
            // One timeline stream per follower, on its own server; then more sessions of
            // cluster 1's users until cluster 1's server holds `users` streams.
            let mut by_addr: HashMap<String, Vec<quinn::Connection>> = HashMap::new();
            let mut open = Vec::new();
            let followers: Vec<UserId> = (1..=s.users).filter(|u| *u != author).collect();
            let mut plan: Vec<(UserId, bool)> = followers.iter().map(|u| (*u, true)).collect();
            let cluster1: Vec<UserId> = followers.iter().copied().filter(|u| u % 3 == 0).collect();
            let mut extra = (s.users as usize).saturating_sub(cluster1.len());
            let mut i = 0;
            while extra > 0 && !cluster1.is_empty() {
                plan.push((cluster1[i % cluster1.len()], false));
                i += 1;
                extra -= 1;
            }
            let mut addr_of = HashMap::new();
            for c in 0..3u32 {
                addr_of.insert(c, session::assigned(&ep, &coord, c).await?);
            }
            let mut held = 0usize;
            for (u, counts_for_fanout) in plan {
                let addr = addr_of[&(u % 3)].clone();
                let list = by_addr.entry(addr.clone()).or_default();
                if list.last().is_none_or(|_| {
                    list.len() * 250
                        <= open
                            .iter()
                            .filter(|(a, _, _): &&(String, Timeline, bool)| *a == addr)
                            .count()
                }) {
                    list.push(session::connect(&ep, &addr).await?);
                }
                let conn = list.last().context("connection")?.clone();
                let tl = Timeline::open(&conn, u).await?;
                if addr == server1 {
                    held += 1;
                }
                open.push((addr, tl, counts_for_fanout));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss_after = proc_usage(pid1)?.1;
            let per_stream_kib = (rss_after - rss_before) * 1024.0 / held.max(1) as f64;
            // Fan-out: the author posts; wait until every follower's stream shows it.
            let mut fan_times = Vec::new();
            let (_ac, mut atl) = posting_session(&ep, &coord, author).await?;
            let mut receivers: Vec<Timeline> = open
                .into_iter()
                .filter(|(_, _, f)| *f)
                .map(|(_, t, _)| t)
                .collect();
            for run in 0..s.runs.max(1) {
                let nonce: u64 = rand::random();
                let t0 = Instant::now();
                atl.post(nonce, format!("fan-out {run}")).await?;
                atl.ack(nonce, Duration::from_secs(10)).await?;
                let mut waits = Vec::new();
                for mut tl in receivers.drain(..) {
                    waits.push(tokio::spawn(async move {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                        loop {
                            match tokio::time::timeout_at(deadline, tl.next()).await {
                                Ok(Some(TimelineDown::Entry { post: p, .. }))
                                    if p.id.nonce == nonce =>
                                {
                                    return Ok((tl, Instant::now()))
                                }
                                Ok(Some(_)) => {}
                                _ => return Err(anyhow::anyhow!("a follower never saw the post")),
                            }
                        }
                    }));
                }
                let mut last = t0;
                for w in waits {
                    let (tl, at) = w.await??;
                    last = last.max(at);
                    receivers.push(tl);
                }
                fan_times.push(last - t0);
            }
            let fan = summarize(&mut fan_times);
            anyhow::Ok((fan, per_stream_kib, held))
        })?;
        if fanout {
            rows.push(row(
                "5",
                format!(
                    "fan-out: post -> last of {} followers' streams (3 clusters, -q 10), median",
                    s.users - 1
                ),
                fan.p50_us / 1000.0,
                "ms",
            ));
        }
        if streams {
            let mut r = row(
                "6",
                "open timeline streams held by one server",
                held as f64,
                "streams",
            );
            r.target = Some(format!(
                ">= 10000: {}",
                if held >= 10_000 { "met" } else { "missed" }
            ));
            rows.push(r);
            rows.push(row(
                "6",
                "server resident memory per open stream",
                per_stream,
                "KiB",
            ));
        }
    }
    Ok(rows)
}
