//! Restarts: every process (cleanly and with kill -9), a sync service mid-traffic, a
//! whole cluster, and the coordinator. Nothing acknowledged is lost or duplicated.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

fn backlog(sys: &System, user: u32) -> anyhow::Result<Vec<String>> {
    let mut c = sys.client(user)?;
    assert_eq!(
        c.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    std::thread::sleep(Duration::from_millis(500));
    let lines = c.drain();
    c.finish(Duration::from_secs(10))?;
    Ok(lines)
}

fn snapshot(sys: &System) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
    let mut out = Vec::new();
    for u in [1, 2, 3] {
        let mut c = sys.client(u)?;
        let (all, followers) = list(&mut c)?;
        c.finish(Duration::from_secs(10))?;
        out.push((all, followers, backlog(sys, u)?));
    }
    Ok(out)
}

#[test]
fn restart_of_every_process_keeps_the_state() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default())?;
    let mut c1 = sys.client(1)?;
    let mut c2 = sys.client(2)?;
    let mut c3 = sys.client(3)?;
    // Each follower's own cluster must know the user it follows.
    for c in [&mut c1, &mut c2, &mut c3] {
        wait_users(c, &[1, 2, 3])?;
    }
    assert_eq!(c1.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    assert_eq!(c3.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    assert_eq!(c2.run("FOLLOW 1", 1)?, ["Command completed successfully"]);
    std::thread::sleep(Duration::from_millis(300));
    for (c, who) in [(&mut c1, "one"), (&mut c2, "two")] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
        for k in 0..3 {
            c.send(&format!("{who} before restart {k}"))?;
        }
    }
    for c in [c1, c2, c3] {
        assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    }
    // Let deliveries settle, then take the state as seen through the client.
    eventually("deliveries settled", Duration::from_secs(10), || {
        let t = sys.read(1, Role::Sync, "local_clients/3/timeline.data");
        Ok((0..3).all(|k| count_text(&t, &format!("two before restart {k}")) == 1))
    })?;
    let before = snapshot(&sys)?;
    assert!(
        before[0]
            .2
            .iter()
            .any(|l| l.contains("two before restart 2")),
        "{before:?}"
    );

    sys.shutdown();
    sys.start_all()?;
    let mut c = sys.client(1)?;
    wait_users(&mut c, &[1, 2, 3])?;
    c.finish(Duration::from_secs(10))?;
    assert_eq!(snapshot(&sys)?, before, "after a clean restart");

    sys.kill_all();
    sys.start_all()?;
    let mut c = sys.client(1)?;
    wait_users(&mut c, &[1, 2, 3])?;
    c.finish(Duration::from_secs(10))?;
    assert_eq!(snapshot(&sys)?, before, "after kill -9 of everything");
    Ok(())
}

#[test]
fn sync_service_kill9_mid_traffic_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default())?;
    let mut c1 = sys.client(1)?; // cluster 2, the follower
    let mut c2 = sys.client(2)?; // cluster 3, the author
    wait_users(&mut c1, &[1, 2])?;
    assert_eq!(c1.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c2.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    const N: usize = 30;
    for k in 0..N {
        c2.send(&format!("sync survivor {k}"))?;
        std::thread::sleep(Duration::from_millis(30));
        match k {
            8 => sys.kill(3, Role::Sync),
            14 => sys.start_node(3, Role::Sync)?,
            18 => sys.kill(2, Role::Sync),
            24 => sys.start_node(2, Role::Sync)?,
            _ => {}
        }
    }
    assert_eq!(c2.finish(Duration::from_secs(20))?, 0);
    eventually("all delivered", Duration::from_secs(20), || {
        let t = sys.read(2, Role::Sync, "local_clients/1/timeline.data");
        Ok((0..N).all(|k| count_text(&t, &format!("sync survivor {k}")) >= 1))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let t = sys.read(2, Role::Sync, "local_clients/1/timeline.data");
    for k in 0..N {
        assert_eq!(
            count_text(&t, &format!("sync survivor {k}")),
            1,
            "post {k}:\n{t}"
        );
    }
    c1.finish(Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn a_cluster_that_was_down_receives_its_backlog() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default())?;
    let mut c1 = sys.client(1)?; // cluster 2, the author
    let mut c2 = sys.client(2)?; // cluster 3, the follower
    wait_users(&mut c2, &[1, 2])?;
    assert_eq!(c2.run("FOLLOW 1", 1)?, ["Command completed successfully"]);
    c2.finish(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(300));
    for r in [Role::Primary, Role::Secondary, Role::Sync] {
        sys.stop(3, r);
    }
    assert_eq!(
        c1.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    for k in 0..10 {
        c1.send(&format!("while you were away {k}"))?;
    }
    // Cluster 2 keeps serving its own users meanwhile.
    assert_eq!(c1.finish(Duration::from_secs(20))?, 0);
    std::thread::sleep(Duration::from_millis(500));
    for r in [Role::Primary, Role::Secondary, Role::Sync] {
        sys.start_node(3, r)?;
    }
    sys.wait_ready(Duration::from_secs(20))?;
    eventually("backlog delivered", Duration::from_secs(20), || {
        let t = sys.read(3, Role::Sync, "local_clients/2/timeline.data");
        Ok((0..10).all(|k| count_text(&t, &format!("while you were away {k}")) == 1))
    })?;
    let lines = backlog(&sys, 2)?;
    for k in 0..10 {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.ends_with(&format!(">> while you were away {k}")))
                .count(),
            1,
            "{lines:?}"
        );
    }
    Ok(())
}

#[test]
fn coordinator_restart_keeps_clients_working() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default())?;
    let mut c3 = sys.client(3)?;
    assert_eq!(
        c3.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    let port = sys.coord_port();
    sys.kill_coordinator();
    for k in 0..5 {
        c3.send(&format!("no coordinator {k}"))?;
    }
    std::thread::sleep(Duration::from_millis(1000));
    sys.start_coordinator(Some(port))?;
    for k in 5..10 {
        c3.send(&format!("no coordinator {k}"))?;
    }
    assert_eq!(
        c3.finish(Duration::from_secs(20))?,
        0,
        "every post acknowledged"
    );
    sys.wait_ready(Duration::from_secs(20))?;
    // New clients get assignments again once the servers have re-registered.
    let mut c6 = sys.client(6)?;
    wait_users(&mut c6, &[3, 6])?;
    c6.finish(Duration::from_secs(10))?;
    let j = sys.read(1, Role::Primary, "journal.data");
    for k in 0..10 {
        assert_eq!(count_text(&j, &format!("no coordinator {k}")), 1);
    }
    Ok(())
}
