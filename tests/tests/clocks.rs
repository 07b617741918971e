//! Order that does not depend on synchronised clocks: with one server's wall clock 5 s
//! behind (libfaketime), an UNFOLLOW made through it holds, and its posts reach a follower
//! who followed a second earlier. 5 s is more than the default `--max-clock-offset-ms`,
//! beyond which a node's clock counts as wrong (see `clock_drag.rs`), so the skewed node
//! runs with a limit of 10 s. Skipped (with a message) where libfaketime is missing;
//! `.ci/run` installs it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tsn_tests::*;

const LIVE: Duration = Duration::from_secs(15);

/// A system whose node (`cluster`, `role`) runs with its clock 5 s behind.
fn with_skew(cluster: u32, role: Role) -> anyhow::Result<Option<System>> {
    let Some(prefix) = skewed_clock("-5s") else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install libfaketime)");
        return Ok(None);
    };
    let mut sys = System::coordinator_only(Config::default())?;
    for c in 1..=sys.config.clusters {
        for r in [Role::Primary, Role::Secondary, Role::Sync] {
            if (c, r) == (cluster, role) {
                let limit = ["--max-clock-offset-ms".to_string(), "10000".to_string()];
                sys.start_node_in(c, r, &prefix, &limit)?;
            } else {
                sys.start_node(c, r)?;
            }
        }
    }
    sys.wait_ready(Duration::from_secs(30))?;
    assert_clock_behind(&sys, cluster, role);
    Ok(Some(sys))
}

/// Seconds into the UTC day of the newest log line of a node (its own clock's view).
fn log_clock(sys: &System, cluster: u32, role: Role) -> Option<i64> {
    let log = sys.read_log(cluster, role);
    let line = log
        .lines()
        .rev()
        .find(|l| l.len() > 19 && &l[10..11] == "T")?;
    let hms: Vec<i64> = line[11..19]
        .split(':')
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some(hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// The skew is real: the node's log lines are stamped about 5 s in the past.
fn assert_clock_behind(sys: &System, cluster: u32, role: Role) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        % 86_400;
    let theirs = log_clock(sys, cluster, role).expect("a log line with a time");
    let behind = (now - theirs).rem_euclid(86_400);
    assert!(
        (3..=8).contains(&behind),
        "the node's clock should be ~5 s behind, is {behind} s"
    );
}

#[test]
fn an_unfollow_through_a_server_whose_clock_is_behind_holds() -> anyhow::Result<()> {
    let Some(mut sys) = with_skew(1, Role::Secondary)? else {
        return Ok(());
    };
    let mut author = sys.client(3)?; // cluster 1
    let mut reader = sys.client(6)?; // cluster 1
    let mut control = sys.client(9)?; // cluster 1, follows throughout
    wait_users(&mut reader, &[3, 6, 9])?;
    assert_eq!(
        reader.run("FOLLOW 3", 1)?,
        ["Command completed successfully"]
    );
    assert_eq!(
        control.run("FOLLOW 3", 1)?,
        ["Command completed successfully"]
    );
    eventually("the follows listed", LIVE, || {
        Ok(list(&mut author)?.1 == "Followers: 6, 9, ")
    })?;

    // The primary (right clock) goes; the secondary (5 s behind) serves.
    let secondary = sys.addr(1, Role::Secondary)?;
    sys.kill(1, Role::Primary);
    eventually("the secondary serves", LIVE, || {
        Ok(sys.serving(1)? == secondary)
    })?;
    let mut reader = sys.client(6)?;
    assert_eq!(
        reader.run("UNFOLLOW 3", 1)?,
        ["Command completed successfully"]
    );

    // It is journaled, LIST no longer shows the follower, and posts no longer arrive.
    let journal = sys.read(1, Role::Secondary, "journal.data");
    assert!(journal.contains("unfollow 6 3 "), "{journal}");
    let mut author = sys.client(3)?;
    eventually("the unfollow listed", LIVE, || {
        Ok(list(&mut author)?.1 == "Followers: 9, ")
    })?;
    let mut control = sys.client(9)?;
    for c in [&mut reader, &mut author, &mut control] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }
    author.send("after the unfollow")?;
    control.expect_contains(">> after the unfollow", LIVE)?;
    assert_eq!(author.finish(LIVE)?, 0);
    std::thread::sleep(Duration::from_secs(1));
    reader.drain();
    assert!(
        !reader
            .seen
            .iter()
            .any(|l| l.ends_with(">> after the unfollow")),
        "the unfollowed author's post was delivered: {:?}",
        reader.seen
    );
    Ok(())
}

#[test]
fn posts_through_a_server_whose_clock_is_behind_reach_a_new_follower() -> anyhow::Result<()> {
    let Some(sys) = with_skew(1, Role::Primary)? else {
        return Ok(());
    };
    let mut author = sys.client(3)?; // cluster 1, served by the skewed primary
    let mut far = sys.client(4)?; // cluster 2
    let mut near = sys.client(6)?; // cluster 1
    wait_users(&mut far, &[3, 4, 6])?;
    wait_users(&mut near, &[3, 4, 6])?;
    for c in [&mut far, &mut near] {
        assert_eq!(c.run("FOLLOW 3", 1)?, ["Command completed successfully"]);
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        author.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    author.send("one second after the follow")?;
    far.expect_contains(">> one second after the follow", LIVE)?;
    near.expect_contains(">> one second after the follow", LIVE)?;
    Ok(())
}
