//! A clock that was wrong leaves no trace once it is corrected: a server a day ahead
//! (libfaketime `+1d`) serves for a while and is restarted with a correct clock; posts
//! made afterwards through every cluster show today's date, the skewed server was
//! reported while it was wrong, an UNFOLLOW made after the correction undoes a FOLLOW
//! made through it while it was ahead, and nothing acknowledged is lost. Skipped (with a
//! message) where libfaketime is missing.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tsn_tests::*;

const LIVE: Duration = Duration::from_secs(20);
const DAY_MS: i64 = 86_400_000;

/// `/ready` of a node (the one whose `metrics listening` line came last in its log).
fn ready(sys: &System, cluster: u32, role: Role) -> anyhow::Result<(u16, String)> {
    let addr = sys
        .metrics_addr(cluster, role)
        .0
        .ok_or_else(|| anyhow::anyhow!("no metrics address in the log yet"))?;
    http_get(&addr, "/ready")
}

/// The date as the client prints it (`Thu Dec  3`, and the year), by this machine's
/// clock and time zone, as the client's are.
fn today() -> (String, String) {
    let out = Command::new("date")
        .arg("+%a %b %e|%Y")
        .output()
        .expect("date");
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (day, year) = s.split_once('|').unwrap();
    (day.to_string(), year.to_string())
}

/// The date part of a timeline line `<author> (<Thu Dec  3 06:40:00 2026>) >> <text>`.
fn date_of(line: &str) -> (String, String) {
    let inner = line
        .split_once(" (")
        .and_then(|(_, rest)| rest.split_once(") >> "))
        .map(|(t, _)| t)
        .unwrap_or_else(|| panic!("not a timeline line: {line:?}"));
    (
        inner[..10].to_string(),
        inner[inner.len() - 4..].to_string(),
    )
}

/// The line a client saw that ends with `>> text`.
fn line_of(c: &Client, text: &str) -> String {
    let end = format!(">> {text}");
    c.seen
        .iter()
        .find(|l| l.ends_with(&end))
        .cloned()
        .unwrap_or_else(|| panic!("user {} did not see {text:?}: {:?}", c.user, c.seen))
}

/// `clock_offset_ms` of a node in `tsn_status --json`.
fn reported_offset(sys: &System, cluster: u32, kind: &str) -> anyhow::Result<Option<i64>> {
    let v = sys.status_json()?;
    Ok(v["nodes"].as_array().and_then(|nodes| {
        nodes
            .iter()
            .find(|n| n["cluster"] == cluster && n["kind"] == kind)
            .and_then(|n| n["clock_offset_ms"].as_i64())
    }))
}

#[test]
fn a_server_a_day_ahead_leaves_no_trace_once_corrected() -> anyhow::Result<()> {
    let Some(prefix) = skewed_clock("+1d") else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install libfaketime)");
        return Ok(());
    };
    let metrics = ["--metrics-addr".to_string(), "127.0.0.1:0".to_string()];
    let mut sys = System::coordinator_only(Config::default())?;
    for c in 1..=sys.config.clusters {
        for r in [Role::Primary, Role::Secondary, Role::Sync] {
            if (c, r) == (1, Role::Primary) {
                sys.start_node_in(c, r, &prefix, &metrics)?;
            } else {
                sys.start_node(c, r)?;
            }
        }
    }
    sys.wait_ready(Duration::from_secs(30))?;

    // While it is wrong, the skewed server says so, is not ready, and tsn_status shows
    // its offset.
    sys.wait_log(1, Role::Primary, "ahead of the coordinator's", LIVE)?;
    eventually("/ready of the skewed server names its clock", LIVE, || {
        let (code, body) = ready(&sys, 1, Role::Primary)?;
        Ok(code == 503 && body.contains("clock"))
    })?;
    eventually("tsn_status shows the skewed server's offset", LIVE, || {
        Ok(reported_offset(&sys, 1, "primary")?.is_some_and(|o| o > DAY_MS - 60_000))
    })?;
    let offset = reported_offset(&sys, 2, "primary")?;
    assert!(
        offset.is_some_and(|o| o.abs() < 500),
        "a right clock: {offset:?}"
    );

    // Users: 3 and 6 on cluster 1 (served by the skewed primary), 4 on cluster 2, 2 and
    // 5 on cluster 3. The viewer 5 follows one author of each cluster.
    let mut viewer = sys.client(5)?;
    let mut follower = sys.client(3)?;
    let mut ahead = sys.client(6)?;
    let mut four = sys.client(4)?;
    let mut two = sys.client(2)?;
    wait_users(&mut viewer, &[2, 3, 4, 5, 6])?;
    for target in [6, 4, 2] {
        assert_eq!(
            viewer.run(&format!("FOLLOW {target}"), 1)?,
            ["Command completed successfully"]
        );
    }
    // A follow stamped by the clock a day ahead.
    assert_eq!(
        follower.run("FOLLOW 4", 1)?,
        ["Command completed successfully"]
    );
    let mut lister = sys.client(4)?;
    eventually("4's followers listed", LIVE, || {
        Ok(list(&mut lister)?.1 == "Followers: 3, 5, ")
    })?;
    drop(lister);
    for c in [&mut viewer, &mut follower, &mut ahead, &mut four, &mut two] {
        enter_timeline(c)?;
    }

    // Posts through the skewed server are acknowledged and keep their timestamp.
    let while_ahead: Vec<String> = (1..=3).map(|i| format!("made a day ahead {i}")).collect();
    for t in &while_ahead {
        ahead.send(t)?;
    }
    assert_eq!(ahead.finish(LIVE)?, 0, "every post acknowledged");
    viewer.expect_all(&shown(&while_ahead), LIVE)?;
    assert_ne!(
        date_of(&line_of(&viewer, &while_ahead[0])).0,
        today().0,
        "a post made a day ahead shows that day"
    );
    // The follow made a day ahead holds at once.
    four.send("while the follow is ahead")?;
    follower.expect_contains(">> while the follow is ahead", LIVE)?;

    // The clock is corrected: the server restarts with the right time.
    let secondary = sys.addr(1, Role::Secondary)?;
    sys.kill(1, Role::Primary);
    eventually("the secondary serves", LIVE, || {
        Ok(sys.serving(1)? == secondary)
    })?;
    let (_, lines_before) = sys.metrics_addr(1, Role::Primary);
    sys.start_node_with(1, Role::Primary, &metrics)?;
    eventually(
        "the corrected server is ready",
        Duration::from_secs(30),
        || {
            let (_, n) = sys.metrics_addr(1, Role::Primary);
            Ok(n > lines_before && ready(&sys, 1, Role::Primary)?.0 == 200)
        },
    )?;
    eventually("tsn_status shows the corrected offset", LIVE, || {
        Ok(reported_offset(&sys, 1, "primary")?.is_some_and(|o| o.abs() < 500))
    })?;

    // Posts made afterwards through every cluster show today's date.
    let mut six = sys.client(6)?;
    enter_timeline(&mut six)?;
    let after = [
        (&mut six, "after the correction, cluster 1"),
        (&mut four, "after the correction, cluster 2"),
        (&mut two, "after the correction, cluster 3"),
    ];
    let mut texts = Vec::new();
    for (c, t) in after {
        c.send(t)?;
        texts.push(t.to_string());
    }
    viewer.expect_all(&shown(&texts), LIVE)?;
    let (day, year) = today();
    for t in &texts {
        let line = line_of(&viewer, t);
        assert_eq!(
            date_of(&line),
            (day.clone(), year.clone()),
            "a post made after the correction shows today's date: {line}"
        );
    }
    // The follow made a day ahead still holds.
    follower.expect_contains(">> after the correction, cluster 2", LIVE)?;

    // An UNFOLLOW made now undoes the FOLLOW stamped a day ahead.
    let mut unfollower = sys.client(3)?;
    assert_eq!(
        unfollower.run("UNFOLLOW 4", 1)?,
        ["Command completed successfully"]
    );
    let mut lister = sys.client(4)?;
    eventually("the unfollow listed", LIVE, || {
        Ok(list(&mut lister)?.1 == "Followers: 5, ")
    })?;
    four.send("after the unfollow")?;
    viewer.expect_contains(">> after the unfollow", LIVE)?;
    std::thread::sleep(Duration::from_secs(1));
    follower.drain();
    assert!(
        !follower
            .seen
            .iter()
            .any(|l| l.ends_with(">> after the unfollow")),
        "the unfollowed author's post was delivered: {:?}",
        follower.seen
    );

    // Nothing acknowledged was lost: each post made a day ahead was shown once, and the
    // corrected server's journal still holds them.
    shown_once(&mut viewer, &shown(&while_ahead), LIVE)?;
    let journal = sys.read(1, Role::Primary, "journal.data");
    for t in &while_ahead {
        assert!(journal.contains(t.as_str()), "{t} not in the journal");
    }
    Ok(())
}
