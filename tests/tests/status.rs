//! `tsn_status` for scripts: `--json` parses, and the exit status says whether every
//! cluster has a live active server and a live sync service.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

fn status_json(sys: &System) -> anyhow::Result<(Option<i32>, serde_json::Value)> {
    let out = std::process::Command::new(bin("tsn_status"))
        .args(["-c", &sys.coord, "--cert-dir"])
        .arg(sys.certs())
        .arg("--json")
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((out.status.code(), v))
}

#[test]
fn json_status_and_exit_code_follow_the_clusters_health() -> anyhow::Result<()> {
    let mut sys = System::start(Config {
        clusters: 2,
        ..Config::default()
    })?;
    let (code, v) = status_json(&sys)?;
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["clusters"], 2);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 6);

    sys.kill(2, Role::Primary);
    sys.kill(2, Role::Secondary);
    eventually("cluster 2 reported down", Duration::from_secs(10), || {
        let (code, v) = status_json(&sys)?;
        Ok(code == Some(2)
            && v["healthy"] == false
            && v["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "cluster 2 has no live active server"))
    })?;
    sys.start_node(2, Role::Primary)?;
    eventually("healthy again", Duration::from_secs(10), || {
        Ok(status_json(&sys)?.0 == Some(0))
    })?;
    Ok(())
}

/// The heartbeat interval belongs to the coordinator: a node started with another one
/// says so and beats at the coordinator's, so it stays alive in the tables and delivers.
#[test]
fn a_node_with_another_heartbeat_interval_uses_the_coordinators() -> anyhow::Result<()> {
    let mut sys = System::start(Config {
        clusters: 2,
        ..Config::default()
    })?;
    sys.stop(1, Role::Sync);
    sys.start_node_with(1, Role::Sync, &["--heartbeat-ms".into(), "10000".into()])?;
    sys.wait_log(
        1,
        Role::Sync,
        "differs from the coordinator's",
        Duration::from_secs(10),
    )?;
    // Alive in every look at the tables for two seconds (ten of the coordinator's beats).
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let (_, v) = status_json(&sys)?;
        let sync1 = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["cluster"] == 1 && n["kind"] == "sync")
            .cloned()
            .unwrap();
        assert_eq!(sync1["alive"], true, "{sync1}");
    }
    // And it delivers: user 1 (cluster 2) follows user 2 (cluster 1) and sees its post.
    let mut reader = sys.client(1)?;
    let mut author = sys.client(2)?;
    wait_users(&mut reader, &[1, 2])?;
    assert_eq!(
        reader.run("FOLLOW 2", 1)?,
        ["Command completed successfully"]
    );
    std::thread::sleep(Duration::from_millis(500));
    for c in [&mut reader, &mut author] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }
    author.send("across a heartbeat mismatch")?;
    reader.expect_contains(">> across a heartbeat mismatch", Duration::from_secs(10))?;
    Ok(())
}

/// A normal start-up says what happens at info and warns about nothing.
#[test]
fn a_normal_start_up_logs_no_warning() -> anyhow::Result<()> {
    let sys = System::start(Config::default())?;
    std::thread::sleep(Duration::from_secs(2));
    let logs = std::fs::read_dir(sys.dir.path().join("logs"))?;
    for entry in logs {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let loud: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        assert!(loud.is_empty(), "{}: {loud:#?}", path.display());
    }
    Ok(())
}
