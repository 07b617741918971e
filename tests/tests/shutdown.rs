//! A clean stop leaves nothing to complete. On SIGTERM a server lets its journal writer
//! finish every batch it has taken (journal, standby, view files) and joins it, and only
//! then writes the clean-shutdown marker: the marker by which its next start knows that
//! the view files need no completing from the journal. Tried under a stream of FOLLOW
//! and UNFOLLOW commands, stopping one server of a mirrored pair each round (the standby,
//! whose writer takes the active's batches to the last moment, then the active, which
//! hands over first): at exit the marker is there and every follow change in the
//! journal is in the follower's `following.data`, and nothing else is.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tsn_protocol::client::{ClientReply, ClientRequest};
use tsn_tests::*;

/// Users of the one cluster, each sending follows and unfollows to the others.
const USERS: u32 = 16;
/// Commands in flight per user.
const IN_FLIGHT: u32 = 4;
/// Rounds: each stops a server under load and brings it back as the standby.
const ROUNDS: usize = 4;

/// Sends FOLLOW and UNFOLLOW commands as `user` on `conn`, one at a time (the `lane`th
/// of [`IN_FLIGHT`] such loops of the user), until `stop` is set, a command fails (the
/// server is going) or 30 s have passed; counts the answered ones in `answered`.
async fn churn(
    conn: quinn::Connection,
    user: u32,
    lane: u32,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut k = lane;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let target = 1 + (user + k % (USERS - 1)) % USERS;
        let req = if (k / (USERS - 1)).is_multiple_of(2) {
            ClientRequest::Follow { user, target }
        } else {
            ClientRequest::Unfollow { user, target }
        };
        if call::<_, ClientReply>(&conn, &req).await.is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::Relaxed);
        k += IN_FLIGHT;
    }
}

/// Whether process `pid` has exited (gone, or a zombie not yet waited for).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The follow and unfollow lines of a server's journal segments.
fn journal_follows(role_dir: &Path) -> BTreeSet<String> {
    journal_segments(role_dir)
        .lines()
        .filter(|l| l.starts_with("follow ") || l.starts_with("unfollow "))
        .map(str::to_string)
        .collect()
}

/// The lines of every user's `following.data` in a server's role directory.
fn following_files(role_dir: &Path) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for e in std::fs::read_dir(role_dir.join("local_clients"))
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let text = std::fs::read_to_string(e.path().join("following.data")).unwrap_or_default();
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

#[test]
fn sigterm_under_load_writes_the_clean_marker_after_the_view_files() -> anyhow::Result<()> {
    let mut sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let ep = rt.block_on(async { sys.endpoint() });
    // Every user known before the load starts.
    rt.block_on(async {
        for u in 1..=USERS {
            sys.connect(&ep, u).await?.close(0u32.into(), b"");
        }
        anyhow::Ok(())
    })?;
    let (mut active, mut standby) = (Role::Primary, Role::Secondary);
    let mut mirrored_before = 0;
    for round in 0..ROUNDS {
        wait_mirroring(&sys, 1, active, mirrored_before)?;
        let victim = if round.is_multiple_of(2) {
            standby
        } else {
            active
        };
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let pid = sys.pid(1, victim).expect("the server runs");
        let before = rt.block_on(async {
            let mut load = tokio::task::JoinSet::new();
            for user in 1..=USERS {
                let conn = sys.connect(&ep, user).await?;
                for lane in 0..IN_FLIGHT {
                    load.spawn(churn(
                        conn.clone(),
                        user,
                        lane,
                        stop.clone(),
                        answered.clone(),
                    ));
                }
            }
            // SIGTERM once the load is well under way, and keep it up until the server
            // has exited: writes are queued while it stops.
            let until = Instant::now() + Duration::from_secs(10);
            while answered.load(Ordering::Relaxed) < 2_000 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let before = answered.load(Ordering::Relaxed);
            sys.signal(1, victim, "TERM")?;
            let until = Instant::now() + Duration::from_secs(10);
            while !exited(pid) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.store(true, Ordering::Relaxed);
            while load.join_next().await.is_some() {}
            anyhow::Ok(before)
        })?;
        let exited = sys.stop(1, victim);
        assert!(
            exited,
            "round {round}: the {victim:?} did not exit on SIGTERM"
        );
        let dir = sys.role_dir(1, victim);
        assert!(
            dir.join("clean-shutdown").exists(),
            "round {round}: no clean-shutdown marker after SIGTERM"
        );
        let journal = journal_follows(&dir);
        let views = following_files(&dir);
        eprintln!(
            "round {round}: {before} commands answered before SIGTERM to the {victim:?}; {} follow changes in its journal",
            journal.len()
        );
        assert!(
            journal.len() >= 1_000,
            "round {round}: too little load: {}",
            journal.len()
        );
        let missing: Vec<_> = journal.difference(&views).take(5).collect();
        let extra: Vec<_> = views.difference(&journal).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "round {round}: view files differ from the journal at a clean exit: missing {missing:?}, not journaled {extra:?}"
        );
        // Back as the standby.
        if victim == active {
            std::mem::swap(&mut active, &mut standby);
        }
        mirrored_before = sys.log_count(1, active, "mirroring to the standby");
        sys.start_node(1, victim)?;
    }
    Ok(())
}
