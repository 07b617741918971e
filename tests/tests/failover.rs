//! kill -9 of a primary while a client posts in timeline mode: the client carries on
//! through the secondary, every acknowledged post is stored exactly once, followers see
//! each post once, and the old primary, restarted, catches up. Servers take a checkpoint
//! every few kilobytes, so the old primary, away while checkpoints delete the journal
//! segments it missed, comes back through a state transfer.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

#[test]
fn primary_kill9_during_timeline_posting() -> anyhow::Result<()> {
    kill9_during_posting(Config::default().small_checkpoints())
}

/// The same with acknowledgements only after a flush on both servers.
#[test]
fn primary_kill9_during_timeline_posting_ack_durable() -> anyhow::Result<()> {
    kill9_during_posting(
        Config {
            server_args: vec!["--ack".into(), "durable".into()],
            ..Config::default()
        }
        .small_checkpoints(),
    )
}

fn kill9_during_posting(config: Config) -> anyhow::Result<()> {
    let mut sys = System::start(config)?;
    let secondary_addr = std::fs::read_to_string(sys.dir.path().join("secondary-1.addr"))?
        .trim()
        .to_string();
    let mut author = sys.client(3)?; // cluster 1
    let mut reader = sys.client(6)?; // cluster 1
    wait_users(&mut reader, &[3, 6])?;
    assert_eq!(
        reader.run("FOLLOW 3", 1)?,
        ["Command completed successfully"]
    );
    assert_eq!(
        reader.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    assert_eq!(
        author.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    std::thread::sleep(Duration::from_millis(300));

    // 45 posts after the kill: more than the 20-entry backlog, so a follower that
    // reconnects late must resume from where it was to see them all.
    const N: usize = 60;
    for k in 0..N {
        author.send(&format!("failover post {k}"))?;
        std::thread::sleep(Duration::from_millis(50));
        if k == 15 {
            sys.kill(1, Role::Primary);
        }
    }
    let stderr_before_exit = author.stderr();
    // Exit 0 at end of input means every post was acknowledged.
    assert_eq!(
        author.finish(Duration::from_secs(40))?,
        0,
        "{stderr_before_exit}"
    );
    assert_eq!(
        sys.serving(1)?,
        secondary_addr,
        "the secondary serves cluster 1"
    );

    // Every post once in the author's own timeline file (the journal keeps only what the
    // last checkpoint does not cover).
    let own = "local_clients/3/timeline.data";
    eventually(
        "the secondary holds every post once",
        Duration::from_secs(20),
        || {
            let t = sys.read(1, Role::Secondary, own);
            Ok((0..N).all(|k| count_text(&t, &format!("failover post {k}")) == 1))
        },
    )?;
    let t = sys.read(1, Role::Secondary, own);
    for k in 0..N {
        let n = count_text(&t, &format!("failover post {k}"));
        assert_eq!(n, 1, "post {k} in:\n{t}");
    }
    let want: Vec<String> = (0..N).map(|k| format!(">> failover post {k}")).collect();
    reader.expect_all(&want, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(500));
    reader.drain();
    for k in 0..N {
        let n = reader
            .seen
            .iter()
            .filter(|l| l.ends_with(&format!(">> failover post {k}")))
            .count();
        assert_eq!(n, 1, "post {k} shown {n} times");
    }
    assert!(
        reader.stderr().contains("Reconnecting to"),
        "the reader was told on stderr"
    );

    // The old primary comes back as the standby and catches up from the secondary.
    sys.start_node(1, Role::Primary)?;
    eventually("old primary caught up", Duration::from_secs(20), || {
        let t = sys.read(1, Role::Primary, own);
        Ok((0..N).all(|k| count_text(&t, &format!("failover post {k}")) == 1))
    })?;
    assert_eq!(
        sys.serving(1)?,
        secondary_addr,
        "a returning primary does not take over"
    );
    assert_eq!(reader.finish(Duration::from_secs(10))?, 0);
    Ok(())
}
