//! Bounded history: what a server costs to restart (time, resident memory, bytes on
//! disk) does not grow with the history it has served. Servers take a checkpoint each
//! time their logs grew by `TSN_CHECKPOINT_BYTES` and delete the journal segments it
//! covers, so after ten times the posts a restarted server holds about as much memory
//! and disk, and still has every post.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tsn_protocol::client::{ClientReply, ClientRequest};
use tsn_tests::*;

/// Users who post; each posts its share of the history.
const AUTHORS: [u32; 4] = [1, 2, 3, 4];
/// Follows every author: its timeline holds every post.
const FOLLOWER: u32 = 5;
/// Posts before the first restart.
const FIRST: u64 = 20_000;
/// Posts before the second restart, in all.
const TOTAL: u64 = 200_000;
/// Several checkpoints before the first restart, many before the second.
const CHECKPOINT_BYTES: u64 = 1 << 20;
/// Unacknowledged posts per author (the server takes 256 per timeline stream).
const WINDOW: usize = 200;

/// Posts `count` more posts, spread over the authors, `done` of them having been posted
/// before (nonces follow on).
async fn post(sys: &System, ep: &quinn::Endpoint, done: u64, count: u64) -> anyhow::Result<()> {
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(300);
    let per_author = count / AUTHORS.len() as u64;
    let first = done / AUTHORS.len() as u64;
    let mut tasks = Vec::new();
    for a in AUTHORS {
        let conn = sys.connect(ep, a).await?;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let r = post_pipelined(
                &conn,
                a,
                first..first + per_author,
                WINDOW,
                &acked,
                deadline,
            )
            .await;
            conn.close(0u32.into(), b"");
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// LIST as the follower, through the coordinator's assignment (retried while the cluster
/// settles after a restart): every user.
async fn list(sys: &System, ep: &quinn::Endpoint) -> anyhow::Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let conn = sys.connect(ep, FOLLOWER).await?;
            let r = call(&conn, &ClientRequest::List { user: FOLLOWER }).await;
            conn.close(0u32.into(), b"");
            match r? {
                ClientReply::List { all_users, .. } => anyhow::Ok(all_users),
                other => anyhow::bail!("LIST: {other:?}"),
            }
        };
        match attempt.await {
            Ok(users) => return Ok(users),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// (lines, distinct post ids) of a `timeline.data`.
fn entries(timeline: &str) -> (usize, usize) {
    let mut ids = HashSet::new();
    let mut lines = 0;
    for l in timeline.lines() {
        lines += 1;
        // deliver <to> <seq> <author> <nonce> <ts_us> <text>
        let f: Vec<&str> = l.splitn(7, ' ').collect();
        if f.len() == 7 && f[0] == "deliver" {
            ids.insert((f[3].to_string(), f[4].to_string()));
        }
    }
    (lines, ids.len())
}

fn timeline(sys: &System, role: Role) -> String {
    sys.read(1, role, &format!("local_clients/{FOLLOWER}/timeline.data"))
}

/// What a restart cost.
#[derive(Debug, Clone, Copy)]
struct Restart {
    /// From the spawn until `/ready` said 200.
    ready: Duration,
    /// VmRSS then.
    rss_kib: u64,
    /// Its journal bytes then.
    bytes: JournalBytes,
}

/// Kills (-9) the active server and starts it again with the same command line.
fn restart_active(sys: &mut System, env: &[String]) -> anyhow::Result<(Role, Restart)> {
    let role = sys.active_server(1)?;
    let seen = sys.metrics_addr(1, role).1;
    sys.kill(1, role);
    let t0 = Instant::now();
    sys.restart_node_in_place(1, role, env, &[], Duration::from_secs(120))?;
    let mut addr = None;
    eventually("its metrics address", Duration::from_secs(10), || {
        let (a, n) = sys.metrics_addr(1, role);
        addr = a.filter(|_| n > seen);
        Ok(addr.is_some())
    })?;
    let addr = addr.unwrap();
    let deadline = t0 + Duration::from_secs(120);
    while http_status(&addr, "/ready").ok() != Some(200) {
        anyhow::ensure!(Instant::now() < deadline, "not ready within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = t0.elapsed();
    let rss_kib = proc_status_kib(sys.pid(1, role).unwrap(), "VmRSS")?;
    let bytes = journal_bytes(&sys.role_dir(1, role))?;
    Ok((
        role,
        Restart {
            ready,
            rss_kib,
            bytes,
        },
    ))
}

/// Waits until the follower's timeline on `role` holds `n` entries.
fn delivered(sys: &System, role: Role, n: u64) -> anyhow::Result<()> {
    eventually(
        &format!("{n} posts delivered to the follower on the {role:?}"),
        Duration::from_secs(120),
        || Ok(timeline(sys, role).lines().count() as u64 >= n),
    )
}

/// After a restart: LIST shows every user, and the restarted server's copy of the
/// follower's timeline holds each of the `n` posts once.
fn intact(
    sys: &System,
    rt: &tokio::runtime::Runtime,
    ep: &quinn::Endpoint,
    role: Role,
    n: u64,
) -> anyhow::Result<()> {
    let users = rt.block_on(list(sys, ep))?;
    let mut want: Vec<u32> = AUTHORS.to_vec();
    want.push(FOLLOWER);
    assert_eq!(users, want, "LIST after the restart");
    let mut last = (0, 0);
    let settled = eventually(
        "the restarted server's timeline holds every post once",
        Duration::from_secs(30),
        || {
            last = entries(&timeline(sys, role));
            Ok(last == (n as usize, n as usize))
        },
    );
    assert!(
        settled.is_ok(),
        "follower's timeline on the restarted {role:?}: (lines, distinct posts) = {last:?}, want {n} of each"
    );
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// About 20 s in a debug build on 2 cores (most of it posting). The figures it prints:
/// `cargo test -p tsn-tests --test history -- --nocapture`.
#[test]
fn restart_cost_does_not_grow_with_the_history() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut sys = System::coordinator_only(Config {
        clusters: 1,
        // A restart of a bounded server fits in the failover delay (2.5 beats): the
        // restarted server stays active.
        heartbeat_ms: 1000,
        server_args: vec!["--metrics-addr".into(), "127.0.0.1:0".into()],
        ..Config::default()
    })?;
    // The metrics listener's address is read from the log.
    let log = std::env::var("TSN_TEST_LOG").unwrap_or_else(|_| "info".into());
    let env = vec![
        "env".to_string(),
        format!("TSN_CHECKPOINT_BYTES={CHECKPOINT_BYTES}"),
        format!("RUST_LOG={log},tsn_nodes::metrics=info"),
    ];
    sys.start_node_in(1, Role::Primary, &env, &[])?;
    sys.start_node_in(1, Role::Secondary, &env, &[])?;
    sys.start_node(1, Role::Sync)?;
    sys.wait_ready(Duration::from_secs(30))?;

    let rt = tokio::runtime::Runtime::new()?;
    let ep = rt.block_on(async { sys.endpoint() });
    rt.block_on(async {
        for u in AUTHORS.into_iter().chain([FOLLOWER]) {
            sys.connect(&ep, u).await?.close(0u32.into(), b"");
        }
        let conn = sys.connect(&ep, FOLLOWER).await?;
        for a in AUTHORS {
            let deadline = Instant::now() + Duration::from_secs(30);
            // Until the author is known to the cluster (the sync service brings users).
            loop {
                let r: ClientReply = call(
                    &conn,
                    &ClientRequest::Follow {
                        user: FOLLOWER,
                        target: a,
                    },
                )
                .await?;
                if r == ClientReply::Ok {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "FOLLOW {a}: {r:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        conn.close(0u32.into(), b"");
        anyhow::Ok(())
    })?;
    // The follows reach the sync service before the first post.
    std::thread::sleep(Duration::from_secs(1));

    let mut figures = Vec::new();
    for (done, upto) in [(0, FIRST), (FIRST, TOTAL)] {
        let t = Instant::now();
        rt.block_on(post(&sys, &ep, done, upto - done))?;
        let posted = t.elapsed();
        let role = sys.active_server(1)?;
        delivered(&sys, role, upto)?;
        println!(
            "{} posts: posted in {:.1} s, delivered {:.1} s later",
            upto - done,
            posted.as_secs_f64(),
            (t.elapsed() - posted).as_secs_f64()
        );
        // The sync service reads the server's journal feed too, and may still be taking
        // the last posts from it (it had them from the standby's feed first): the
        // segments it has not read are kept until it has. Measured once it has caught
        // up and the server has deleted what it read (or after 30 s, as it is then).
        let caught_up = eventually(
            "the server's journal trimmed to what its checkpoints leave",
            Duration::from_secs(30),
            || Ok(journal_bytes(&sys.role_dir(1, role))?.total <= 2 * CHECKPOINT_BYTES),
        );
        if let Err(e) = caught_up {
            println!("{e:#}");
        }
        let (role, r) = restart_active(&mut sys, &env)?;
        println!(
            "restart of the {role:?} at {upto} posts: ready in {:.2} s, VmRSS {:.1} MiB, journal bytes {:.2} MiB (checkpoint {:.2} MiB)",
            r.ready.as_secs_f64(),
            r.rss_kib as f64 / 1024.0,
            mib(r.bytes.total),
            mib(r.bytes.checkpoint)
        );
        intact(&sys, &rt, &ep, role, upto)?;
        figures.push(r);
    }

    let (small, large) = (figures[0], figures[1]);
    let rss = large.rss_kib as f64 / small.rss_kib as f64;
    let bytes = large.bytes.total as f64 / small.bytes.total.max(1) as f64;
    println!(
        "at {TOTAL} posts against {FIRST}: restart time x{:.2}, VmRSS x{rss:.2}, journal bytes x{bytes:.2} ({:.0} s in all)",
        large.ready.as_secs_f64() / small.ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        rss <= 1.25,
        "resident memory after a restart grew x{rss:.2} with ten times the history: {small:?} -> {large:?}"
    );
    // Where each restart falls in the checkpoint cycle decides how much of the interval
    // its logs hold: within 2x of the smaller history, or (when the smaller one happened
    // to be measured just after a checkpoint) within what two intervals hold.
    let cycle = 2 * CHECKPOINT_BYTES + large.bytes.checkpoint;
    assert!(
        bytes <= 2.0 || large.bytes.total <= cycle,
        "journal bytes grew x{bytes:.2} with ten times the history, past two checkpoint intervals: {small:?} -> {large:?}"
    );
    Ok(())
}
