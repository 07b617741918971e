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
