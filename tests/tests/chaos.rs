//! Chaos soak: for a minute, a random node (server, sync service or the coordinator) is
//! killed with SIGKILL every few seconds and started again, while six users post; every
//! post must appear exactly once on the open timeline of every follower.
//!
//! Long, so ignored by default:
//! `cargo test -p tsn-tests --test chaos -- --ignored --nocapture`
//! (`TSN_CHAOS_SECS` sets the length, `TSN_CHAOS_SEED` the seed of the kills).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tsn_tests::*;

const USERS: [u32; 6] = [1, 2, 3, 4, 5, 6];

#[test]
#[ignore = "a minute of kill -9; run with --ignored"]
fn random_kill9_for_a_minute_every_post_shown_once() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("TSN_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("TSN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos: {secs} s, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sys = System::start(Config::default())?;
    let mut clients = Vec::new();
    for u in USERS {
        clients.push(sys.client(u)?);
    }
    // Every client follows every other user: each cluster must know them all first.
    for c in &mut clients {
        wait_users(c, &USERS)?;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for other in USERS {
            if other != USERS[i] {
                assert_eq!(
                    c.run(&format!("FOLLOW {other}"), 1)?,
                    ["Command completed successfully"]
                );
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    for c in clients.iter_mut() {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }

    let nodes: Vec<(u32, Role)> = (1..=3)
        .flat_map(|c| [(c, Role::Primary), (c, Role::Secondary), (c, Role::Sync)])
        .collect();
    let start = Instant::now();
    let mut next_kill = start + Duration::from_secs(2);
    let mut down: Option<(Option<(u32, Role)>, Instant)> = None;
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); USERS.len()];
    let mut k = 0u64;
    let mut kills = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        for (i, c) in clients.iter_mut().enumerate() {
            let text = format!("chaos {} {k}", USERS[i]);
            c.send(&text)?;
            sent[i].push(text);
        }
        k += 1;
        std::thread::sleep(Duration::from_millis(150));
        if let Some((node, back_at)) = down {
            if Instant::now() >= back_at {
                match node {
                    Some((c, r)) => sys.start_node(c, r)?,
                    None => {
                        let port = sys.coord_port();
                        sys.start_coordinator(Some(port))?;
                    }
                }
                down = None;
                next_kill = Instant::now() + Duration::from_millis(rng.random_range(1500..4000));
            }
        } else if Instant::now() >= next_kill {
            // One failure at a time: a node, or (now and then) the coordinator.
            let pick = rng.random_range(0..nodes.len() + 1);
            let node = nodes.get(pick).copied();
            match node {
                Some((c, r)) => sys.kill(c, r),
                None => sys.kill_coordinator(),
            }
            kills += 1;
            eprintln!("chaos: kill -9 {node:?} at {:?}", start.elapsed());
            down = Some((
                node,
                Instant::now() + Duration::from_millis(rng.random_range(300..2500)),
            ));
        }
    }
    if let Some((node, _)) = down {
        match node {
            Some((c, r)) => sys.start_node(c, r)?,
            None => {
                let port = sys.coord_port();
                sys.start_coordinator(Some(port))?;
            }
        }
    }
    sys.wait_ready(Duration::from_secs(30))?;
    eprintln!("chaos: {kills} kills, {k} rounds of posts; checking every timeline");
    for (i, c) in clients.iter_mut().enumerate() {
        let want: Vec<String> = sent
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, texts)| texts.iter().map(|t| format!(">> {t}")))
            .collect();
        c.expect_all(&want, Duration::from_secs(120))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    for (i, c) in clients.iter_mut().enumerate() {
        c.drain();
        for (j, texts) in sent.iter().enumerate() {
            if j == i {
                continue;
            }
            for t in texts {
                let end = format!(">> {t}");
                let n = c.seen.iter().filter(|l| l.ends_with(&end)).count();
                assert_eq!(n, 1, "user {}: {t:?} shown {n} times", USERS[i]);
            }
        }
    }
    for c in clients {
        assert_eq!(c.finish(Duration::from_secs(60))?, 0);
    }
    Ok(())
}
