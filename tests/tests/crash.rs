//! Crash safety under steady load: while a client posts without pause, kill -9 each role
//! in turn (secondary, primary, both sync services involved, coordinator) and restart
//! it. Every acknowledged post is stored exactly once on both servers and delivered
//! exactly once to each follower; a follow made during the chaos holds; and a journal
//! torn in the middle of a record is repaired when its server restarts. Servers take a
//! checkpoint every few kilobytes, so checkpoints, and deletions of the journal segments
//! they cover, happen throughout.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::Duration;

use tsn_tests::*;

#[test]
fn kill9_each_role_in_turn_under_steady_load() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default().small_checkpoints())?;
    let mut poster = sys.client(3)?; // cluster 1
    let mut near = sys.client(6)?; // cluster 1
    let mut far = sys.client(1)?; // cluster 2
    wait_users(&mut far, &[1, 3, 6])?;
    assert_eq!(near.run("FOLLOW 3", 1)?, ["Command completed successfully"]);
    assert_eq!(far.run("FOLLOW 3", 1)?, ["Command completed successfully"]);
    near.finish(Duration::from_secs(10))?;
    far.finish(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        poster.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );

    const N: usize = 160;
    let load = std::thread::spawn(move || -> anyhow::Result<i32> {
        for k in 0..N {
            poster.send(&format!("steady {k}"))?;
            std::thread::sleep(Duration::from_millis(50));
        }
        poster.finish(Duration::from_secs(60))
    });
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    pause(500);
    sys.kill(1, Role::Secondary);
    pause(500);
    sys.start_node(1, Role::Secondary)?;
    pause(1000);
    sys.kill(1, Role::Primary);
    pause(1000);
    sys.start_node(1, Role::Primary)?;
    // A follow while the cluster has just failed over.
    let mut late = sys.client(4)?; // cluster 2
    assert_eq!(late.run("FOLLOW 3", 1)?, ["Command completed successfully"]);
    late.finish(Duration::from_secs(10))?;
    sys.kill(1, Role::Sync);
    pause(700);
    sys.start_node(1, Role::Sync)?;
    sys.kill(2, Role::Sync);
    pause(700);
    sys.start_node(2, Role::Sync)?;
    let port = sys.coord_port();
    sys.kill_coordinator();
    pause(800);
    sys.start_coordinator(Some(port))?;
    assert_eq!(load.join().unwrap()?, 0, "every post was acknowledged");
    sys.wait_ready(Duration::from_secs(20))?;

    let posts: Vec<String> = (0..N).map(|k| format!("steady {k}")).collect();
    let exactly_once = |text: &str, want: &[String]| want.iter().all(|p| count_text(text, p) == 1);
    // The journal keeps only what the last checkpoint does not cover: the author's own
    // timeline file on each server is where every post of theirs stays.
    let own = "local_clients/3/timeline.data";
    eventually(
        "both servers hold every post once",
        Duration::from_secs(20),
        || {
            Ok(exactly_once(&sys.read(1, Role::Primary, own), &posts)
                && exactly_once(&sys.read(1, Role::Secondary, own), &posts))
        },
    )?;
    for r in [Role::Primary, Role::Secondary] {
        assert!(
            sys.journal_was_compacted(1, r),
            "{r:?} took checkpoints and deleted the segments they cover"
        );
    }
    eventually(
        "followers got every post once",
        Duration::from_secs(30),
        || {
            Ok(exactly_once(
                &sys.read(1, Role::Sync, "local_clients/6/timeline.data"),
                &posts,
            ) && exactly_once(
                &sys.read(2, Role::Sync, "local_clients/1/timeline.data"),
                &posts,
            ))
        },
    )?;
    for (c, r) in [
        (1, Role::Primary),
        (1, Role::Secondary),
        (1, Role::Sync),
        (2, Role::Sync),
    ] {
        let path = sys.role_dir(c, r).join("journal.data");
        tsn_datastore::read_records(&path)?;
    }
    let following = sys.read(2, Role::Primary, "local_clients/4/following.data");
    assert!(following.contains("follow 4 3 "), "{following}");

    // A journal torn mid-record (as a crash during a write leaves it) is repaired.
    let standby = match sys.active_server(1)? {
        Role::Primary => Role::Secondary,
        _ => Role::Primary,
    };
    sys.kill(1, standby);
    let journal = sys.role_dir(1, standby).join("journal.data");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)?
        .write_all(b"post 3 77 1700000000 torn in the midd")?;
    sys.start_node(1, standby)?;
    // Repaired before the server says it is ready. It may be appending what it catches
    // up on while the file is read: a read can end inside such a record.
    let text = std::fs::read_to_string(&journal)?;
    assert!(
        !text.contains("torn in the midd"),
        "torn record dropped: {}",
        text.get(text.len().saturating_sub(300)..).unwrap_or(&text)
    );
    eventually(
        "the journal ends with a whole record",
        Duration::from_secs(10),
        || Ok(std::fs::read_to_string(&journal)?.ends_with('\n')),
    )?;
    eventually(
        "the restarted server still holds every post once",
        Duration::from_secs(20),
        || Ok(exactly_once(&sys.read(1, standby, own), &posts)),
    )?;
    Ok(())
}
