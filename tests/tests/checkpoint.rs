//! Bounded history through the real binaries: servers take a checkpoint every few
//! kilobytes and delete the journal segments it covers once the sync service has read
//! them. A standby away while that happens comes back through a state transfer (the
//! checkpointed state and the segments kept) and then serves with nothing lost; a server
//! restarted after kill -9 starts from its checkpoint; a sync service whose disk is lost
//! rebuilds from the servers' transfers.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

const LIVE: Duration = Duration::from_secs(30);

/// Every journal segment a server of cluster 1 still has, oldest first.
fn journal_text(sys: &System, role: Role) -> String {
    journal_segments(&sys.role_dir(1, role))
}

#[test]
fn a_standby_behind_the_deleted_segments_comes_back_through_a_state_transfer() -> anyhow::Result<()>
{
    let mut sys = System::start(Config::default().small_checkpoints())?;
    let (mut author, mut near, mut far) = author_and_followers(&sys)?;
    assert_eq!(sys.serving(1)?, sys.addr(1, Role::Primary)?);

    // The standby goes away, keeping its disk; the active server goes on.
    sys.kill(1, Role::Secondary);
    // A follow made while it is away: it ends up in a segment that is deleted.
    let mut second = sys.client(6)?;
    assert_eq!(
        second.run("FOLLOW 4", 1)?,
        ["Command completed successfully"]
    );
    assert_eq!(second.finish(Duration::from_secs(10))?, 0);
    let mut texts: Vec<String> = (0..200).map(|k| format!("while away {k}")).collect();
    for t in &texts {
        author.send(t)?;
    }
    let err = author.stderr();
    assert_eq!(author.finish(LIVE)?, 0, "{err}");
    eventually(
        "the active server deleted journal segments the standby lacks",
        LIVE,
        || Ok(!journal_text(&sys, Role::Primary).contains("while away 0")),
    )?;
    assert!(sys.journal_was_compacted(1, Role::Primary));

    // It returns: the exchange gives it the checkpointed state and the segments kept.
    let before = sys.log_count(1, Role::Primary, "mirroring to the standby");
    sys.start_node(1, Role::Secondary)?;
    wait_mirroring(&sys, 1, Role::Primary, before)?;
    let secondary = sys.addr(1, Role::Secondary)?;

    // The active server is lost; the returned standby serves: the author's key, the
    // follows and every post are there.
    sys.kill(1, Role::Primary);
    eventually("the secondary serves", LIVE, || {
        Ok(sys.serving(1).ok().as_deref() == Some(secondary.as_str()))
    })?;
    let mut author = sys.client(3)?;
    enter_timeline(&mut author)?;
    let more: Vec<String> = (0..20).map(|k| format!("after the transfer {k}")).collect();
    for t in &more {
        author.send(t)?;
    }
    let err = author.stderr();
    assert_eq!(author.finish(LIVE)?, 0, "{err}");
    texts.extend(more);
    for c in [&mut near, &mut far] {
        shown_once(c, &shown(&texts), LIVE)?;
    }
    let own = "local_clients/3/timeline.data";
    eventually(
        "the author's timeline complete on the secondary",
        LIVE,
        || {
            let t = sys.read(1, Role::Secondary, own);
            Ok(texts.iter().all(|p| count_text(&t, p) == 1))
        },
    )?;
    let mut lister = sys.client(3)?;
    let (_, followers) = list(&mut lister)?;
    assert_eq!(followers, "Followers: 4, 6, ");
    // The follow made while it was away came with the checkpointed state.
    let mut second = sys.client(6)?;
    assert!(!journal_text(&sys, Role::Primary).contains("follow 6 4 "));
    assert_eq!(
        second.run("UNFOLLOW 4", 1)?,
        ["Command completed successfully"]
    );

    // The primary, restarted after its kill -9, starts from its checkpoint.
    sys.start_node(1, Role::Primary)?;
    let log = sys.read_log(1, Role::Primary);
    let loaded = log
        .lines()
        .rfind(|l| l.contains("state loaded"))
        .unwrap_or_default()
        .to_string();
    assert!(
        loaded.contains("checkpoint_journal=") && !loaded.contains("checkpoint_journal=0 "),
        "{loaded}"
    );

    // Back as the standby, it catches up from its cursor; restarted again with nothing
    // new meanwhile, it is sent nothing: each side sends only what the other lacks.
    let exchanged = |sys: &System| -> String {
        sys.read_log(1, Role::Secondary)
            .lines()
            .rfind(|l| l.contains("mirroring to the standby after exchanging state"))
            .unwrap_or_default()
            .to_string()
    };
    wait_mirroring(&sys, 1, Role::Secondary, 0)?;
    eventually("the standby caught up", LIVE, || {
        let t = sys.read(1, Role::Primary, own);
        Ok(texts.iter().all(|p| count_text(&t, p) == 1))
    })?;
    std::thread::sleep(Duration::from_millis(1500)); // both cursors saved
    sys.kill(1, Role::Primary);
    let before = sys.log_count(1, Role::Secondary, "mirroring to the standby");
    sys.start_node(1, Role::Primary)?;
    wait_mirroring(&sys, 1, Role::Secondary, before)?;
    let line = exchanged(&sys);
    assert!(
        line.contains(" sent=0 ") && line.contains("state_transfer=false"),
        "{line}"
    );

    // The sync service's host is lost after the servers deleted the segments it had
    // read: it rebuilds from their transfers, and every post stays delivered once.
    sys.lose_host(1, Role::Sync)?;
    sys.start_node(1, Role::Sync)?;
    eventually(
        "the rebuilt sync service delivered every post again",
        LIVE,
        || {
            let t = sys.read(1, Role::Sync, "local_clients/6/timeline.data");
            Ok(texts.iter().all(|p| count_text(&t, p) == 1))
        },
    )?;
    eventually(
        "the active server's timeline files rebuilt once each",
        LIVE,
        || {
            let t = sys.read(1, Role::Secondary, own);
            Ok(texts.iter().all(|p| count_text(&t, p) == 1))
        },
    )?;
    for c in [near, far] {
        assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    }
    Ok(())
}
