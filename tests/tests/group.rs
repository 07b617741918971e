//! The coordinator group: three `tsn_coordinator` members deciding through Raft, and the
//! watch streams that push every committed change of the routing tables to every node.
//!
//! - Started at once with the default 10 s heartbeat, the system is coherent as soon as
//!   every node's `/ready` answers: a cross-cluster FOLLOW works, a post reaches the
//!   follower, and a SIGTERM hand-over brings the next post through within a second.
//! - kill -9 of the leader under steady posting: a new leader within seconds, then a
//!   server's kill -9 fails over as with one coordinator, a client started meanwhile logs
//!   in, and every acknowledged post reaches its follower exactly once.
//! - A coordinator host lost (kill -9, datastore deleted) and started empty rejoins
//!   through a snapshot and knows the failover decided while it was away.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tsn_tests::*;

fn metrics_flag() -> Vec<String> {
    vec!["--metrics-addr".into(), "127.0.0.1:0".into()]
}

/// The `/metrics` address a node logged last.
fn metrics_addr(sys: &System, cluster: u32, role: Role) -> anyhow::Result<String> {
    let mut found = None;
    eventually(
        "the metrics address in the log",
        Duration::from_secs(10),
        || {
            found = sys.metrics_addr(cluster, role).0;
            Ok(found.is_some())
        },
    )?;
    Ok(found.unwrap())
}

#[test]
fn started_at_once_with_default_heartbeats_the_system_is_coherent_once_ready() -> anyhow::Result<()>
{
    let mut sys = System::coordinator_only(Config {
        heartbeat_ms: 10_000,
        coordinators: 3,
        server_args: metrics_flag(),
        sync_args: metrics_flag(),
        ..Config::default()
    })?;
    let started = Instant::now();
    // Sync services first: at a heartbeat they would learn of the servers only 10 s
    // later.
    for c in 1..=3 {
        sys.start_node(c, Role::Sync)?;
    }
    for c in 1..=3 {
        sys.start_node(c, Role::Primary)?;
        sys.start_node(c, Role::Secondary)?;
    }
    let mut addrs = Vec::new();
    for c in 1..=3 {
        for r in [Role::Primary, Role::Secondary, Role::Sync] {
            addrs.push(metrics_addr(&sys, c, r)?);
        }
    }
    let not_ready = || {
        addrs
            .iter()
            .filter_map(|a| match http_get(a, "/ready") {
                Ok((200, _)) => None,
                Ok((code, body)) => Some(format!("{a}: {code} {}", body.trim())),
                Err(e) => Some(format!("{a}: {e}")),
            })
            .collect::<Vec<_>>()
    };
    // Readiness normally takes well under a second (BENCHMARKS.md section 10 measures
    // it); the bound here is generous for a loaded machine, and what a slow node was
    // waiting for is printed.
    let mut reported = false;
    let waiting = eventually("every node ready", Duration::from_secs(30), || {
        let left = not_ready();
        if !reported && !left.is_empty() && started.elapsed() > Duration::from_secs(8) {
            eprintln!("not ready 8 s after start: {left:#?}");
            reported = true;
        }
        Ok(left.is_empty())
    });
    if let Err(e) = waiting {
        anyhow::bail!("{e:#}; not ready: {:#?}", not_ready());
    }
    eprintln!("every node ready {:?} after start", started.elapsed());

    // User 2 is served by cluster 3, user 1 by cluster 2.
    let mut followee = sys.client(2)?;
    followee.run("LIST", 3)?;
    let mut follower = sys.client(1)?;
    let asked = Instant::now();
    let mut reply = Vec::new();
    // What was ready is coherent: cluster 2 learns of user 2 as fast as the feeds carry
    // it (milliseconds), not at the next 10 s heartbeat.
    eventually("user 2 known in cluster 2", Duration::from_secs(2), || {
        reply = follower.run("FOLLOW 2", 1)?;
        Ok(reply == ["Command completed successfully"])
    })?;
    eprintln!(
        "cross-cluster FOLLOW succeeded {:?} after the followee's login",
        asked.elapsed()
    );
    for c in [&mut follower, &mut followee] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }
    followee.send("first post")?;
    follower.expect_contains(">> first post", Duration::from_secs(2))?;

    // A planned hand-over right away: the standby is mirroring already.
    let active = sys.serving(3)?;
    assert_eq!(active, sys.addr(3, Role::Primary)?);
    assert!(sys.stop(3, Role::Primary), "the primary stops on SIGTERM");
    let sent = Instant::now();
    followee.send("after the hand-over")?;
    follower.expect_contains(">> after the hand-over", Duration::from_secs(15))?;
    let took = sent.elapsed();
    eprintln!("next post shown {took:?} after the hand-over");
    assert!(
        took < Duration::from_secs(1),
        "the next post took {took:?} after a hand-over"
    );
    assert_eq!(sys.serving(3)?, sys.addr(3, Role::Secondary)?);
    Ok(())
}

/// Posts `n` numbered posts, each once its predecessor is shown to the follower.
fn post_and_see(
    author: &mut Client,
    follower: &mut Client,
    prefix: &str,
    range: std::ops::Range<u32>,
) -> anyhow::Result<()> {
    for k in range {
        author.send(&format!("{prefix} {k}"))?;
        follower.expect_contains(&format!(">> {prefix} {k}"), Duration::from_secs(20))?;
    }
    Ok(())
}

#[test]
fn the_group_survives_its_leader_and_still_fails_servers_over() -> anyhow::Result<()> {
    let mut sys = System::start(Config {
        coordinators: 3,
        ..Config::default()
    })?;
    let (mut author, mut follower, _) = author_and_followers(&sys)?;
    post_and_see(&mut author, &mut follower, "steady", 0..10)?;

    let leader = sys.leader().expect("the group has a leader");
    let killed = Instant::now();
    sys.kill_member(leader);
    let mut new_leader = None;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    eventually("a new leader", Duration::from_secs(10), || {
        new_leader = sys.leader_among(&others);
        Ok(new_leader.is_some())
    })?;
    let elected = killed.elapsed();
    eprintln!(
        "new leader {:?} {elected:?} after the leader's kill -9",
        new_leader
    );
    assert!(
        elected < Duration::from_secs(2),
        "a new leader took {elected:?}"
    );
    // Posting goes on, and a client started while the old leader is down logs in.
    post_and_see(&mut author, &mut follower, "no leader lost", 0..10)?;
    let mut late = sys.client(5)?;
    assert_eq!(late.run("LIST", 3)?[0], "Command completed successfully");

    // A server failover is decided by the new leader as by one coordinator.
    let cluster = 2; // user 1's, the author's
    let was = sys.serving(cluster)?;
    let primary = sys.addr(cluster, Role::Primary)?;
    assert_eq!(was, primary);
    sys.kill(cluster, Role::Primary);
    eventually("the secondary serves", Duration::from_secs(15), || {
        Ok(sys.serving(cluster).ok() == Some(sys.addr(cluster, Role::Secondary)?))
    })?;
    post_and_see(&mut author, &mut follower, "after failover", 0..10)?;
    let err = author.stderr();
    assert_eq!(author.finish(Duration::from_secs(30))?, 0, "{err}");
    std::thread::sleep(Duration::from_millis(300));
    follower.drain();
    for (prefix, n) in [
        ("steady", 10),
        ("no leader lost", 10),
        ("after failover", 10),
    ] {
        for k in 0..n {
            let text = format!(">> {prefix} {k}");
            let seen = follower.seen.iter().filter(|l| l.ends_with(&text)).count();
            assert_eq!(seen, 1, "{text:?} shown {seen} times");
        }
    }
    let epochs: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| sys.member_log(i))
        .collect();
    assert!(
        epochs
            .iter()
            .any(|l| l.contains("leading the coordinator group")),
        "a member took the lead"
    );
    Ok(())
}

#[test]
fn a_coordinator_host_lost_rejoins_empty_and_knows_what_was_decided() -> anyhow::Result<()> {
    let mut sys = System::coordinator_only(Config {
        coordinators: 3,
        clusters: 1,
        coordinator_args: vec!["--snapshot-every".into(), "4".into()],
        ..Config::default()
    })?;
    for r in [Role::Primary, Role::Secondary, Role::Sync] {
        sys.start_node(1, r)?;
    }
    sys.wait_ready(Duration::from_secs(30))?;
    let leader = sys.leader().expect("a leader");
    let lost = (leader + 1) % 3;
    sys.kill_member(lost);
    std::fs::remove_dir_all(sys.member_datastore(lost))?;

    // Decided while it is away: a failover, and enough re-registrations (a sync service
    // restarted on new ports) that the log is compacted past all it had.
    sys.kill(1, Role::Primary);
    eventually("the secondary serves", Duration::from_secs(15), || {
        Ok(sys.serving(1).ok() == Some(sys.addr(1, Role::Secondary)?))
    })?;
    for _ in 0..6 {
        sys.kill(1, Role::Sync);
        sys.start_node(1, Role::Sync)?;
    }
    sys.wait_ready(Duration::from_secs(30))?;

    sys.start_member(lost)?;
    let alone = sys.coord.split(',').nth(lost).unwrap().to_string();
    // The rejoined member answers assignments from what it has applied: a client that
    // asks it alone is sent to the secondary, active since the failover.
    eventually(
        "a client served through the rejoined member alone",
        Duration::from_secs(20),
        || {
            let log = sys.dir.path().join("logs/client-3.log");
            let mut c = Client::spawn(&alone, 3, &sys.certs(), &log)?;
            let ok = c
                .run("LIST", 3)
                .is_ok_and(|r| r[0] == "Command completed successfully");
            let _ = c.finish(Duration::from_secs(5));
            Ok(ok)
        },
    )?;
    let log = sys.member_log(lost);
    assert!(log.contains("joining it as it is"), "{log}");
    assert!(
        log.contains("installed a snapshot"),
        "the empty member should have been sent a snapshot:\n{log}"
    );
    // Its log, like every member's, holds what is needed, not the history.
    for i in 0..3 {
        let raft_log = sys.member_datastore(i).join("coordinator/raft.log");
        let lines = std::fs::read_to_string(&raft_log)?.lines().count();
        assert!(lines < 400, "{} has {lines} lines", raft_log.display());
    }
    Ok(())
}

#[test]
fn a_member_is_replaced_with_two_admin_commands() -> anyhow::Result<()> {
    let mut sys = System::start(Config {
        coordinators: 3,
        clusters: 1,
        ..Config::default()
    })?;
    let new = sys.start_extra_member()?;
    let admin = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let certs = sys.certs().display().to_string();
        let out = std::process::Command::new(bin("tsn_admin"))
            .args(["-c", &sys.coord, "--cert-dir", &certs])
            .args(args)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    };
    let addr = sys.member_addr(new);
    let (ok, text) = admin(&["members", "add", "4", &addr])?;
    assert!(ok, "{text}");
    assert!(text.contains(&format!("4 {addr}")), "{text}");
    eventually("the new member follows", Duration::from_secs(10), || {
        Ok(sys.member_view(new).is_some_and(|v| {
            v.state == tsn_protocol::coord::MemberState::Follower && v.applied_index.is_some()
        }))
    })?;
    // The old member 1 goes: removed, then its host lost.
    let (ok, text) = admin(&["members", "remove", "1"])?;
    assert!(ok, "{text}");
    assert!(
        !text.contains(&format!("1 {}", sys.member_addr(0))),
        "{text}"
    );
    sys.kill_member(0);
    eventually("a leader among 2, 3 and 4", Duration::from_secs(10), || {
        Ok(sys.leader_among(&[1, 2, new]).is_some())
    })?;
    // Failovers are still decided.
    sys.kill(1, Role::Primary);
    eventually("the secondary serves", Duration::from_secs(15), || {
        Ok(sys.serving(1).ok() == Some(sys.addr(1, Role::Secondary)?))
    })?;
    let mut c = sys.client(3)?;
    assert_eq!(c.run("LIST", 3)?[0], "Command completed successfully");
    Ok(())
}
