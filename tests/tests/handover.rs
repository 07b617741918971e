//! A planned restart of the active server costs no failover timeout: on SIGTERM it asks
//! the coordinator to make the standby active, tells the standby and its clients, and
//! stops. With 10 s heartbeats (a failover would take 20-25 s), a client's next post is
//! acknowledged through the standby within a second or two, and nothing is lost.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tsn_tests::*;

#[test]
fn sigterm_to_the_active_server_hands_over_at_once() -> anyhow::Result<()> {
    let mut sys = System::start(Config {
        clusters: 1,
        heartbeat_ms: 10_000,
        ..Config::default()
    })?;
    let secondary = sys.addr(1, Role::Secondary)?;
    let mut author = sys.client(1)?;
    let mut reader = sys.client(2)?;
    wait_users(&mut reader, &[1, 2])?;
    assert_eq!(
        reader.run("FOLLOW 1", 1)?,
        ["Command completed successfully"]
    );
    for c in [&mut reader, &mut author] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }
    // The standby must be mirroring before the hand-over.
    sys.wait_log(
        1,
        Role::Primary,
        "mirroring to the standby",
        Duration::from_secs(15),
    )?;
    let mut before = Duration::ZERO;
    for k in 0..5 {
        let sent = Instant::now();
        author.send(&format!("before {k}"))?;
        reader.expect_contains(&format!(">> before {k}"), Duration::from_secs(10))?;
        before = before.max(sent.elapsed());
    }

    let stopped = Instant::now();
    assert!(
        sys.stop(1, Role::Primary),
        "the primary stops by itself on SIGTERM"
    );
    let stop_took = stopped.elapsed();
    let sent = Instant::now();
    author.send("after the hand-over")?;
    // Stored through the standby and delivered: a failover would take 20-25 s here.
    reader.expect_contains(">> after the hand-over", Duration::from_secs(15))?;
    let shown_after = sent.elapsed();
    eprintln!("SIGTERM to exit: {stop_took:?}; next post shown to a follower {shown_after:?} after it was sent");
    assert!(
        shown_after < Duration::from_secs(3),
        "the next post took {shown_after:?}: no failover timeout expected"
    );
    // The new active server tries to mirror to the standby that has just left; posts
    // must not wait on it (waiting on the leaving standby held some for 2-3 s against
    // 0.1 s before, and one for about 20 s). Spread over seconds, as people post, so
    // that they meet its attempts to reach it.
    let bound = (before * 10).max(Duration::from_secs(1));
    for k in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let sent = Instant::now();
        author.send(&format!("later {k}"))?;
        reader.expect_contains(&format!(">> later {k}"), Duration::from_secs(30))?;
        let took = sent.elapsed();
        assert!(
            took < bound,
            "post {k} after the hand-over took {took:?} (before it: at most {before:?}): it waited on the standby that left"
        );
    }
    let err = author.stderr();
    assert_eq!(author.finish(Duration::from_secs(30))?, 0, "{err}");
    assert_eq!(sys.serving(1)?, secondary);
    std::thread::sleep(Duration::from_millis(300));
    reader.drain();
    for text in [
        "before 0",
        "before 4",
        "after the hand-over",
        "later 0",
        "later 19",
    ] {
        let n = reader
            .seen
            .iter()
            .filter(|l| l.ends_with(&format!(">> {text}")))
            .count();
        assert_eq!(n, 1, "{text} shown {n} times");
    }
    let coord = std::fs::read_to_string(sys.dir.path().join("logs/coordinator.log"))?;
    assert!(coord.contains("planned hand-over"), "{coord}");
    Ok(())
}
