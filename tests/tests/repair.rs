//! A write that failed is repaired or remembered: a view file that cannot be appended to
//! for a moment is completed once it can, before any checkpoint could drop what it lacks,
//! and a checkpoint that fails halfway through sealing the logs leaves them as they were,
//! so that the next one succeeds. The failures are injected through the debug build's
//! failpoints (see `tsn_datastore::failpoint`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

const LIVE: Duration = Duration::from_secs(30);

/// Posts numbers `from..to` as the author, 59 bytes each.
fn post(author: &mut Client, from: usize, to: usize) -> anyhow::Result<()> {
    for k in from..to {
        author.send(&format!("post {k:05} {}", "x".repeat(48)))?;
    }
    Ok(())
}

fn marker(sys: &System) -> std::path::PathBuf {
    sys.role_dir(1, Role::Primary).join("clean-shutdown")
}

/// A primary whose failpoints are in the returned directory (run it again through the
/// returned prefix), and the author of user 2's timeline, with `posts` posts made and in
/// the primary's file.
fn start(posts: usize) -> anyhow::Result<(tempfile::TempDir, Vec<String>, System, Client)> {
    let fail = tempfile::tempdir()?;
    let prefix = with_failpoints(fail.path());
    let (sys, mut author) = author_on_a_primary_run_with(&prefix, &[])?;
    post(&mut author, 0, posts)?;
    wait_timeline_complete(&sys, posts as u64, LIVE)?;
    Ok((fail, prefix, sys, author))
}

/// Turns the primary's view-append failpoint on (in `fail`) and posts `from..to`; returns
/// once the primary says an append failed.
fn views_fail_while_posting(
    fail: &std::path::Path,
    sys: &System,
    author: &mut Client,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    std::fs::write(fail.join("view-append"), b"")?;
    post(author, from, to)?;
    sys.wait_log(1, Role::Primary, "view file append failed", LIVE)
}

#[test]
fn a_view_file_that_could_not_be_written_is_completed_across_a_restart_and_a_checkpoint(
) -> anyhow::Result<()> {
    let (fail, prefix, mut sys, mut author) = start(20)?;
    // The view files cannot be written for a moment.
    views_fail_while_posting(fail.path(), &sys, &mut author, 20, 40)?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        timeline_numbers(&sys, 1, Role::Primary, 2).len() < 40,
        "the failure kept entries out of the file"
    );
    std::fs::remove_file(fail.path().join("view-append"))?;
    // Completed once writes work again, with no new post needed.
    wait_timeline_complete(&sys, 40, LIVE)?;

    // Across a clean restart and the checkpoints of 300 more posts.
    assert!(sys.stop(1, Role::Primary), "the primary stops by itself");
    assert!(marker(&sys).exists(), "nothing owed: the stop is clean");
    let before = sys.read(1, Role::Primary, "checkpoint.data");
    sys.restart_node_in_place(1, Role::Primary, &prefix, &[], LIVE)?;
    post(&mut author, 40, 340)?;
    let err = author.stderr();
    assert_eq!(author.finish(LIVE)?, 0, "{err}");
    wait_timeline_complete(&sys, 340, LIVE)?;
    eventually("a checkpoint after the restart", LIVE, || {
        Ok(sys.read(1, Role::Primary, "checkpoint.data") != before)
    })?;
    wait_timeline_complete(&sys, 340, LIVE)?;
    Ok(())
}

#[test]
fn while_a_view_file_is_owed_entries_no_checkpoint_drops_them_and_the_stop_says_unclean(
) -> anyhow::Result<()> {
    let (fail, prefix, mut sys, mut author) = start(10)?;
    // Enough for several checkpoints: none may be taken while the file is owed entries.
    views_fail_while_posting(fail.path(), &sys, &mut author, 10, 310)?;
    let err = author.stderr();
    assert_eq!(author.finish(LIVE)?, 0, "{err}");
    sys.wait_log(1, Role::Primary, "checkpoint failed", LIVE)?;
    assert!(sys.stop(1, Role::Primary), "the stop completes");
    assert!(
        !marker(&sys).exists(),
        "no clean-shutdown marker while entries are owed"
    );
    // The cause is gone: the restart completes the file from the logs.
    std::fs::remove_file(fail.path().join("view-append"))?;
    sys.restart_node_in_place(1, Role::Primary, &prefix, &[], LIVE)?;
    wait_timeline_complete(&sys, 310, LIVE)?;
    Ok(())
}

#[test]
fn a_checkpoint_that_fails_mid_seal_leaves_the_logs_whole_and_the_next_one_succeeds(
) -> anyhow::Result<()> {
    let (fail, prefix, mut sys, mut author) = start(0)?;
    let dir = sys.role_dir(1, Role::Primary);
    // The journal's new active segment cannot be put in place.
    std::fs::write(fail.path().join("seal-journal.data"), b"")?;
    post(&mut author, 0, 200)?;
    sys.wait_log(1, Role::Primary, "checkpoint failed", LIVE)?;
    wait_timeline_complete(&sys, 200, LIVE)?;
    assert!(dir.join("journal.data").exists(), "the journal is whole");
    assert!(!dir.join("checkpoint.data").exists());

    std::fs::remove_file(fail.path().join("seal-journal.data"))?;
    post(&mut author, 200, 400)?;
    let err = author.stderr();
    assert_eq!(author.finish(LIVE)?, 0, "{err}");
    eventually("a checkpoint once the cause is gone", LIVE, || {
        Ok(dir.join("checkpoint.data").exists())
    })?;
    wait_timeline_complete(&sys, 400, LIVE)?;
    let log = sys.read_log(1, Role::Primary);
    assert!(!log.contains("No such file"), "{log}");
    assert!(sys.stop(1, Role::Primary), "the stop completes");
    assert!(marker(&sys).exists(), "and writes its marker");
    // Nothing lost: it starts again from its checkpoint and the logs after it.
    sys.restart_node_in_place(1, Role::Primary, &prefix, &[], LIVE)?;
    wait_timeline_complete(&sys, 400, LIVE)?;
    Ok(())
}
