//! Every role started inside the test process: a coordinator, both servers and the sync
//! service of one cluster run as tasks of one runtime, each with a datastore of its own,
//! and stop when told (as they do on SIGTERM). Users reach them with the real client.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use tsn_nodes::coordinator::CoordinatorOpts;
use tsn_nodes::server::ServerOpts;
use tsn_nodes::sync::SyncOpts;
use tsn_tests::*;

/// The common flags of a role with its own datastore under `root/<name>`.
fn flags(root: &Path, certs: &Path, name: &str) -> Vec<String> {
    vec![
        "--datastore".into(),
        root.join(name).display().to_string(),
        "--cert-dir".into(),
        certs.display().to_string(),
        "--heartbeat-ms".into(),
        "200".into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--ready-file".into(),
        root.join(format!("{name}.addr")).display().to_string(),
    ]
}

fn args(binary: &str, role: &[&str], flags: Vec<String>) -> Vec<String> {
    std::iter::once(binary.to_string())
        .chain(role.iter().map(|s| s.to_string()))
        .chain(flags)
        .collect()
}

#[test]
fn roles_run_inside_one_process_and_stop_when_told() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let certs = root.path().join("certs");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut roles = Vec::new();

    let coordinator = CoordinatorOpts::try_parse_from(args(
        "tsn_coordinator",
        &["-p", "0", "--clusters", "1"],
        flags(root.path(), &certs, "coordinator"),
    ))?;
    // The test binds each role's endpoint, as the binaries do, so it knows the address
    // before the role starts.
    let listener = {
        let _rt = rt.enter();
        tsn_nodes::coordinator::bind(&coordinator)?
    };
    let coord = listener.local.to_string();
    roles.push((
        "coordinator",
        rt.spawn(tsn_nodes::coordinator::run(coordinator, listener, stop())),
    ));
    wait_file(
        &root.path().join("coordinator.addr"),
        Duration::from_secs(20),
    )?;
    for (name, kind) in [("primary", "primary"), ("secondary", "secondary")] {
        let opts = ServerOpts::try_parse_from(args(
            "tsn_server",
            &["-c", &coord, "-p", "0", "-i", "1", "-t", kind],
            flags(root.path(), &certs, name),
        ))?;
        let listener = {
            let _rt = rt.enter();
            tsn_nodes::server::bind(&opts)?
        };
        roles.push((
            name,
            rt.spawn(tsn_nodes::server::run(opts, listener, stop())),
        ));
    }
    let sync = SyncOpts::try_parse_from(args(
        "tsn_sync_service",
        &["-c", &coord, "-p", "0", "-s", "1", "-q", "50"],
        flags(root.path(), &certs, "sync"),
    ))?;
    let listener = {
        let _rt = rt.enter();
        tsn_nodes::sync::bind(&sync)?
    };
    roles.push((
        "sync",
        rt.spawn(tsn_nodes::sync::run(sync, listener, stop())),
    ));
    for name in ["primary", "secondary", "sync"] {
        wait_file(
            &root.path().join(format!("{name}.addr")),
            Duration::from_secs(20),
        )?;
    }

    // Two users of the cluster, through the real client.
    let logs = root.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut author = Client::spawn(&coord, 1, &certs, &logs.join("client-1.log"))?;
    let mut reader = Client::spawn(&coord, 2, &certs, &logs.join("client-2.log"))?;
    wait_users(&mut reader, &[1, 2])?;
    assert_eq!(
        reader.run("FOLLOW 1", 1)?,
        ["Command completed successfully"]
    );
    eventually("1 knows its follower", Duration::from_secs(10), || {
        Ok(list(&mut author)?.1 == "Followers: 2, ")
    })?;
    enter_timeline(&mut reader)?;
    enter_timeline(&mut author)?;
    author.send("posted to roles in one process")?;
    reader.expect_contains(">> posted to roles in one process", Duration::from_secs(10))?;
    assert_eq!(author.finish(Duration::from_secs(10))?, 0);
    assert_eq!(reader.finish(Duration::from_secs(10))?, 0);

    // Told to stop, every role returns, and each wrote its clean-stop marker.
    stop_tx.send(true)?;
    for (name, task) in roles {
        let done = rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), task).await });
        match done {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{name} ended with an error: {e:#}"),
            Ok(Err(e)) => panic!("{name} panicked: {e}"),
            Err(_) => panic!("{name} did not stop within 15 s of being told"),
        }
    }
    for (name, kind) in [
        ("primary", "primary"),
        ("secondary", "secondary"),
        ("sync", "sync"),
    ] {
        let marker = root
            .path()
            .join(name)
            .join("1")
            .join(kind)
            .join("clean-shutdown");
        assert!(marker.exists(), "{} missing", marker.display());
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
