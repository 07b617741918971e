//! What an acknowledgement waits for: with a standby that has stopped answering (SIGSTOP),
//! a post is not acknowledged until the active server gives up on the standby and has
//! flushed the post itself; the standby, resumed, catches up. Run in both `--ack` modes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

const STANDBY_LOST: &str = "standby lost";

fn post_while_standby_is_stopped(ack: &str) -> anyhow::Result<()> {
    // Beats of 1 s: the coordinator would declare the stopped standby dead only after
    // 2.5 s, so the active server's own 1 s acknowledgement timeout is what releases it.
    let sys = System::start(Config {
        clusters: 1,
        heartbeat_ms: 1000,
        period_ms: 50,
        server_args: vec!["--ack".into(), ack.into()],
        sync_args: Vec::new(),
        coordinators: 1,
        coordinator_args: Vec::new(),
        member_args: Vec::new(),
    })?;
    sys.wait_log(
        1,
        Role::Primary,
        "mirroring to the standby after exchanging state",
        Duration::from_secs(20),
    )?;
    let mut author = sys.client(1)?;
    assert_eq!(
        author.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );

    sys.signal(1, Role::Secondary, "STOP")?;
    author.send("posted while the standby sleeps")?;
    // End of input: the client exits 0 once its post is acknowledged.
    let code = author.finish(Duration::from_secs(20));
    let primary_log = sys.read_log(1, Role::Primary);
    sys.signal(1, Role::Secondary, "CONT")?;
    assert_eq!(code?, 0, "the post was acknowledged in the end");
    // The primary says it lost the standby before it completes what was waiting for it;
    // an acknowledgement that had not waited would have come before this line existed.
    assert!(
        primary_log.contains(STANDBY_LOST),
        "acknowledged without the standby and before giving up on it:\n{primary_log}"
    );
    assert_eq!(
        count_text(
            &sys.read(1, Role::Primary, "journal.data"),
            "posted while the standby sleeps"
        ),
        1
    );
    // The standby, resumed, gets the post through the catch-up exchange.
    eventually("the standby catches up", Duration::from_secs(20), || {
        Ok(count_text(
            &sys.read(1, Role::Secondary, "journal.data"),
            "posted while the standby sleeps",
        ) == 1)
    })?;
    Ok(())
}

#[test]
fn ack_replicated_waits_for_the_standby_or_the_local_flush() -> anyhow::Result<()> {
    post_while_standby_is_stopped("replicated")
}

#[test]
fn ack_durable_waits_for_the_standby_or_the_local_flush() -> anyhow::Result<()> {
    post_while_standby_is_stopped("durable")
}
