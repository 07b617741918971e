//! Section 10: the coordinator group. Under three coordinators: a leader's kill -9 (with
//! cluster 1's active server killed at the same moment) to a new leader and to that
//! server's failover decided; node failover under three coordinators against one
//! (section 7's measurement); how long a committed change of the tables takes to reach
//! watchers on every member; how long a system started at once with the default 10 s
//! heartbeat takes to be coherent; what each member costs at rest.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::runtime::Runtime;
use tsn_protocol::coord::{CoordReply, CoordRequest, Heartbeat, MemberState, NodeKind};
use tsn_tests::{http_status, Config, Role, System};

use crate::progress;
use crate::scenarios::{self, Settings};
use crate::session;
use crate::stats::{median, row, Row};

const SECTION: &str = "10";

/// Every figure of the section.
pub fn run(rt: &Runtime, s: &Settings) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    rows.extend(leader_loss(rt, 5)?);
    for (n, label) in [(1usize, "one coordinator"), (3, "three coordinators")] {
        progress::stage(format!("failover under {label}"));
        let f = scenarios::failover_under(rt, s, n)?;
        let total: Vec<f64> = f.iter().map(|f| f.detection_ms + f.move_ms).collect();
        let detect: Vec<f64> = f.iter().map(|f| f.detection_ms).collect();
        rows.push(row(
            SECTION,
            format!(
                "node failover under {label}, kill -9 to next post acknowledged, p50 of {}",
                f.len()
            ),
            median(&mut total.clone()),
            "ms",
        ));
        rows.push(row(
            SECTION,
            format!("node failover under {label}, detection, p50"),
            median(&mut detect.clone()),
            "ms",
        ));
    }
    rows.extend(push_latency(rt)?);
    rows.extend(coherent_and_rest()?);
    Ok(rows)
}

fn group_system(clusters: u32, heartbeat_ms: u64, metrics: bool, nodes_of: u32) -> Result<System> {
    let flag = if metrics {
        vec!["--metrics-addr".into(), "127.0.0.1:0".into()]
    } else {
        Vec::new()
    };
    if std::env::var_os("TSN_TEST_LOG").is_none() {
        std::env::set_var("TSN_TEST_LOG", "info,openraft=warn");
    }
    let mut sys = System::coordinator_only(Config {
        clusters,
        heartbeat_ms,
        period_ms: 500,
        server_args: flag.clone(),
        sync_args: flag,
        coordinators: 3,
        coordinator_args: Vec::new(),
        member_args: Vec::new(),
    })?;
    for c in 1..=nodes_of {
        for r in [Role::Sync, Role::Primary, Role::Secondary] {
            sys.start_node(c, r)?;
        }
    }
    Ok(sys)
}

/// kill -9 of the leader and of cluster 1's active server at once, `runs` times: to a
/// new leader (asked directly, every 5 ms), and to the failover of the server (a
/// surviving member's assignment names the other server).
fn leader_loss(rt: &Runtime, runs: usize) -> Result<Vec<Row>> {
    let mut sys = group_system(3, 100, false, 3)?;
    sys.wait_ready(Duration::from_secs(30))?;
    let ep = rt.block_on(async { session::endpoint(&sys.certs()) })?;
    let members: Vec<String> = sys.coord.split(',').map(String::from).collect();
    let (mut elected, mut failed_over) = (Vec::new(), Vec::new());
    for run in 0..runs {
        progress::stage(format!("leader kill -9 {}/{runs}", run + 1));
        let Some(leader) = sys.leader() else {
            bail!("no leader before run {run}");
        };
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let old = sys.serving(1)?;
        let active = if sys.addr(1, Role::Primary)? == old {
            Role::Primary
        } else {
            Role::Secondary
        };
        let t0 = Instant::now();
        sys.kill_member(leader);
        sys.kill(1, active);
        let leader_at = loop {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("no new leader within 10 s");
            }
            if sys.leader_among(&others).is_some() {
                break t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let survivor = members[others[0]].clone();
        let moved_at = rt.block_on(async {
            let conn = session::connect(&ep, &survivor).await?;
            loop {
                if t0.elapsed() > Duration::from_secs(20) {
                    bail!("no failover within 20 s");
                }
                let reply = session::call::<_, CoordReply>(
                    &conn,
                    &CoordRequest::AssignClient { client: 3 },
                )
                .await?;
                if matches!(reply, CoordReply::Assigned { ref addr, .. } if *addr != old) {
                    return anyhow::Ok(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })?;
        progress::note(format!(
            "leader kill -9: new leader after {:.0} ms, failover decided after {:.0} ms",
            leader_at.as_secs_f64() * 1e3,
            moved_at.as_secs_f64() * 1e3
        ));
        elected.push(leader_at.as_secs_f64() * 1e3);
        failed_over.push(moved_at.as_secs_f64() * 1e3);
        sys.start_member(leader)?;
        sys.start_node(1, active)?;
        sys.wait_ready(Duration::from_secs(30))?;
    }
    Ok(vec![
        row(SECTION, format!("leader kill -9 to a new leader, p50 of {runs}"), median(&mut elected.clone()), "ms"),
        row(
            SECTION,
            format!("leader kill -9 to the failover of a server killed with it, p50 of {runs} (heartbeat 100 ms; a new leader waits at least 3 s)"),
            median(&mut failed_over.clone()),
            "ms",
        ),
    ])
}

/// Changes of the tables (a node of cluster 4 registering at a new address, 40 times)
/// and watch streams, three on each member: from the request that commits a change to
/// its reply, and from that reply to the last watcher having the new tables.
fn push_latency(rt: &Runtime) -> Result<Vec<Row>> {
    progress::stage("pushes to watchers");
    let sys = group_system(4, 100, false, 3)?;
    sys.wait_ready(Duration::from_secs(30))?;
    let members: Vec<String> = sys.coord.split(',').map(String::from).collect();
    let identity = tsn_certs::node_identity(&sys.certs(), &[])?;
    let (commit, known) = rt.block_on(async {
        let mut node = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        node.set_default_client_config(identity.client_config(session::transport())?);
        let ep = session::endpoint(&sys.certs())?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Instant)>();
        let mut watchers = Vec::new();
        for w in 0..9 {
            let conn = session::connect(&ep, &members[w % 3]).await?;
            let tx = tx.clone();
            watchers.push(tokio::spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await?;
                tsn_protocol::write_msg(&mut send, &CoordRequest::Watch).await?;
                send.finish()?;
                while let Some(CoordReply::Status(t)) =
                    tsn_protocol::read_msg::<CoordReply, _>(&mut recv).await?
                {
                    let now = Instant::now();
                    for e in t.entries.iter().filter(|e| e.cluster == 4) {
                        let _ = tx.send((w, e.addr.clone(), now));
                    }
                }
                anyhow::Ok(())
            }));
        }
        let conn = session::connect(&node, &members[0]).await?;
        let (mut commit, mut known) = (Vec::new(), Vec::new());
        for k in 0..40u16 {
            let addr = format!("127.0.0.1:{}", 40_000 + k);
            let hb = CoordRequest::Heartbeat(Heartbeat {
                cluster: 4,
                kind: NodeKind::Sync,
                addr: addr.clone(),
                active: false,
                epoch: 0,
                clock_offset_ms: 0,
                web_hashes: Vec::new(),
            });
            let sent = Instant::now();
            match session::call::<_, CoordReply>(&conn, &hb).await? {
                CoordReply::Beat(_) => {}
                other => bail!("registration {k}: {other:?}"),
            }
            let replied = Instant::now();
            let mut seen = std::collections::HashSet::new();
            let mut last = replied;
            while seen.len() < 9 {
                let Ok(Some((w, a, at))) =
                    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
                else {
                    bail!("change {k} reached {} of 9 watchers", seen.len());
                };
                if a == addr && seen.insert(w) {
                    last = last.max(at);
                }
            }
            commit.push((replied - sent).as_secs_f64() * 1e3);
            known.push((last.max(replied) - replied).as_secs_f64() * 1e3);
            // Past the failure delay, so that the next address may take the role.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for w in watchers {
            w.abort();
        }
        anyhow::Ok((commit, known))
    })?;
    let mut sorted = known.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    Ok(vec![
        row(
            SECTION,
            "a change of the tables committed (request to reply through a member), p50 of 40",
            median(&mut commit.clone()),
            "ms",
        ),
        row(
            SECTION,
            "committed change to the last of 9 watchers (3 per member), p50",
            median(&mut known.clone()),
            "ms",
        ),
        row(
            SECTION,
            "committed change to the last of 9 watchers, p99",
            p99,
            "ms",
        ),
    ])
}

/// A system started at once with the default 10 s heartbeat: from the first process
/// started to every node's `/ready` answering 200, and to a cross-cluster FOLLOW that
/// succeeds; then each coordinator's CPU and memory over 20 s at rest.
fn coherent_and_rest() -> Result<Vec<Row>> {
    progress::stage("coherent at the default heartbeat");
    let started = Instant::now();
    let sys = group_system(3, 10_000, true, 3)?;
    let mut addrs = Vec::new();
    for c in 1..=3 {
        for r in [Role::Primary, Role::Secondary, Role::Sync] {
            let mut a = None;
            tsn_tests::eventually("a metrics address", Duration::from_secs(10), || {
                a = sys.metrics_addr(c, r).0;
                Ok(a.is_some())
            })?;
            addrs.extend(a);
        }
    }
    tsn_tests::eventually("every node ready", Duration::from_secs(60), || {
        Ok(addrs
            .iter()
            .all(|a| http_status(a, "/ready").ok() == Some(200)))
    })?;
    let ready = started.elapsed();
    let mut followee = sys.client(2)?;
    followee.run("LIST", 3)?;
    let mut follower = sys.client(1)?;
    tsn_tests::eventually("a cross-cluster FOLLOW", Duration::from_secs(30), || {
        Ok(follower.run("FOLLOW 2", 1)? == ["Command completed successfully"])
    })?;
    let coherent = started.elapsed();
    drop(follower);
    drop(followee);
    progress::stage("coordinators at rest");
    let pids: Vec<u32> = (0..3).filter_map(|i| sys.member_pid(i)).collect();
    let before: Vec<(f64, f64)> = pids
        .iter()
        .map(|p| scenarios::proc_usage(*p))
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(20));
    let after: Vec<(f64, f64)> = pids
        .iter()
        .map(|p| scenarios::proc_usage(*p))
        .collect::<Result<_>>()?;
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) / 20.0 * 100.0)
        .collect();
    let rss: Vec<f64> = after.iter().map(|a| a.1).collect();
    let views: Vec<String> = (0..3)
        .filter_map(|i| sys.member_view(i))
        .map(|v| match v.state {
            MemberState::Leader => "leader".to_string(),
            s => s.as_str().to_string(),
        })
        .collect();
    let mut rows = vec![
        row(SECTION, "started at once, default 10 s heartbeat: first process to every node's /ready 200", ready.as_secs_f64() * 1e3, "ms"),
        row(SECTION, "started at once, default 10 s heartbeat: first process to a cross-cluster FOLLOW that succeeds", coherent.as_secs_f64() * 1e3, "ms"),
    ];
    for (i, (c, r)) in cpu.iter().zip(&rss).enumerate() {
        let state = views.get(i).map_or("?", String::as_str);
        rows.push(row(
            SECTION,
            format!("coordinator {} ({state}) at rest, CPU", i + 1),
            *c,
            "% of a core",
        ));
        rows.push(row(
            SECTION,
            format!("coordinator {} ({state}) at rest, resident memory", i + 1),
            *r,
            "MiB",
        ));
    }
    Ok(rows)
}
