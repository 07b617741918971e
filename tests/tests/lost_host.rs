//! A host whose disk is lost comes back empty and rebuilds from its peers over QUIC:
//! every process has a datastore of its own, and nothing acknowledged is lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

const LIVE: Duration = Duration::from_secs(20);

#[test]
fn losing_each_server_host_in_turn_loses_no_post() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default().small_checkpoints())?;
    let (mut author, mut near, mut far) = author_and_followers(&sys)?;

    let texts: Vec<String> = (0..80).map(|k| format!("lost host post {k}")).collect();
    for (k, t) in texts.iter().enumerate() {
        author.send(t)?;
        std::thread::sleep(Duration::from_millis(40));
        match k {
            // The active server's host is lost; the secondary takes over.
            15 => sys.lose_host(1, Role::Primary)?,
            // It comes back empty, and catches up as the standby.
            30 => {
                let before = sys.log_count(1, Role::Secondary, "mirroring to the standby");
                sys.start_node(1, Role::Primary)?;
                wait_mirroring(&sys, 1, Role::Secondary, before)?;
            }
            // Then the other server's host is lost: the returned one serves.
            45 => sys.lose_host(1, Role::Secondary)?,
            60 => sys.start_node(1, Role::Secondary)?,
            _ => {}
        }
    }
    let err = author.stderr();
    assert_eq!(author.finish(Duration::from_secs(60))?, 0, "{err}");

    // Every follower's open timeline shows every post once.
    for c in [&mut near, &mut far] {
        shown_once(c, &shown(&texts), LIVE)?;
    }

    // The author's timeline is complete on the server that serves now, and on the one
    // that came back last once it has caught up.
    let serving = sys.serving(1)?;
    let active = if serving == sys.addr(1, Role::Primary)? {
        Role::Primary
    } else {
        Role::Secondary
    };
    let check = |role: Role| -> anyhow::Result<bool> {
        let own = sys.read(1, role, "local_clients/3/timeline.data");
        Ok(texts.iter().all(|t| count_text(&own, t) == 1))
    };
    assert!(check(active)?, "author's timeline on the active server");
    eventually(
        "the other server's copy complete",
        Duration::from_secs(30),
        || {
            check(if active == Role::Primary {
                Role::Secondary
            } else {
                Role::Primary
            })
        },
    )?;
    // The returned servers rebuilt what they serve from the sync service too.
    let mut again = sys.client(6)?;
    let (users, followers) = list(&mut again)?;
    assert_eq!(users, "All users: 3, 4, 6, ");
    assert_eq!(followers, "Followers: ");
    Ok(())
}

#[test]
fn losing_the_sync_service_host_loses_and_repeats_no_delivery() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default().small_checkpoints())?;
    let mut local_author = sys.client(3)?; // cluster 1
    let mut far_author = sys.client(4)?; // cluster 2
    let mut near = sys.client(6)?; // cluster 1
    let mut far = sys.client(7)?; // cluster 2
    wait_users(&mut near, &[3, 4, 6, 7])?;
    wait_users(&mut far, &[3, 4, 6, 7])?;
    assert_eq!(near.run("FOLLOW 3", 1)?, ["Command completed successfully"]);
    assert_eq!(near.run("FOLLOW 4", 1)?, ["Command completed successfully"]);
    assert_eq!(far.run("FOLLOW 3", 1)?, ["Command completed successfully"]);
    for c in [&mut near, &mut far, &mut local_author, &mut far_author] {
        enter_timeline(c)?;
    }
    std::thread::sleep(Duration::from_millis(500));

    let local: Vec<String> = (0..40).map(|k| format!("from three {k}")).collect();
    let remote: Vec<String> = (0..40).map(|k| format!("from four {k}")).collect();
    for k in 0..40 {
        local_author.send(&local[k])?;
        far_author.send(&remote[k])?;
        std::thread::sleep(Duration::from_millis(50));
        match k {
            12 => sys.lose_host(1, Role::Sync)?,
            24 => sys.start_node(1, Role::Sync)?,
            _ => {}
        }
    }
    assert_eq!(local_author.finish(Duration::from_secs(30))?, 0);
    assert_eq!(far_author.finish(Duration::from_secs(30))?, 0);

    let mut want_near = shown(&local);
    want_near.extend(shown(&remote));
    shown_once(&mut near, &want_near, Duration::from_secs(30))?;
    shown_once(&mut far, &shown(&local), Duration::from_secs(30))?;
    // The rebuilt sync service holds each delivery once.
    let t = sys.read(1, Role::Sync, "local_clients/6/timeline.data");
    for text in local.iter().chain(&remote) {
        assert_eq!(count_text(&t, text), 1, "{text} in {t}");
    }
    Ok(())
}
