//! A coordinator group split by a partition, on hosts made of network namespaces that
//! this test creates: three coordinator hosts and one cluster's primary, secondary and
//! sync service on hosts of their own. The leader is cut from both other members while
//! the active server (on the majority's side) dies: the majority elects a leader and
//! fails the server over; the cut-off leader, which can commit nothing, promotes no one.
//! After the partition heals there is one active server and one epoch history, and every
//! member agrees on it.
//!
//! Needs root (CAP_NET_ADMIN), so it is ignored by default; `.ci/run` runs it where
//! namespaces can be created:
//! `cargo test -p tsn-tests --test group_partition -- --ignored`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tsn_tests::*;

const PORT: &str = "7000";
/// Hosts 0..3 run coordinators; then the primary, the secondary, the sync service.
const PRIMARY: usize = 3;
const SECONDARY: usize = 4;
const SYNC: usize = 5;

struct Sys {
    // Field order is drop order: processes stop before the namespaces go.
    procs: Vec<(usize, Proc)>,
    net: Net,
    dir: tempfile::TempDir,
    group: String,
}

impl Sys {
    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn spawn(&mut self, host: usize, name: &str, bin: &str, mut args: Vec<String>) -> Result<()> {
        let ready = self.dir.path().join(format!("{name}.addr"));
        args.extend([
            "--cert-dir".into(),
            self.certs().display().to_string(),
            "--datastore".into(),
            self.dir
                .path()
                .join(format!("datastore-h{host}"))
                .display()
                .to_string(),
            "--heartbeat-ms".into(),
            "200".into(),
            "--bind".into(),
            self.net.addr(host),
            "--ready-file".into(),
            ready.display().to_string(),
        ]);
        let p = Proc::spawn_in(&self.net.exec(host), bin, &args, &self.log(name))?;
        self.procs.push((host, p));
        wait_file(&ready, Duration::from_secs(30))
            .with_context(|| format!("{name} did not start"))?;
        Ok(())
    }

    fn kill(&mut self, host: usize) {
        for (h, p) in &mut self.procs {
            if *h == host {
                p.kill9();
            }
        }
    }

    /// `tsn_status --json` run on host `from`, asking the members `members`.
    fn status(&self, from: usize, members: &[usize]) -> Result<serde_json::Value> {
        let coord: Vec<String> = members
            .iter()
            .map(|m| format!("{}:{PORT}", self.net.addr(*m)))
            .collect();
        let out = command(&self.net.exec(from), "tsn_status")
            .args([
                "-c",
                &coord.join(","),
                "--cert-dir",
                &self.certs().display().to_string(),
                "--json",
            ])
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The member (from 0) that says it leads, among `members`.
    fn leader(&self, members: &[usize]) -> Option<usize> {
        let s = self.status(members[0], members).ok()?;
        s["coordinators"].as_array()?.iter().find_map(|c| {
            (c["state"] == "leader").then(|| c["id"].as_u64().map(|i| i as usize - 1))?
        })
    }
}

/// The active server's kind and the epoch in a `tsn_status --json`.
fn active(s: &serde_json::Value) -> Option<(String, u64)> {
    s["nodes"].as_array()?.iter().find_map(|n| {
        (n["active"] == true).then(|| {
            (
                n["kind"].as_str().unwrap_or("").to_string(),
                n["epoch"].as_u64().unwrap_or(0),
            )
        })
    })
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_cut_off_leader_promotes_no_one_and_the_majority_fails_over() -> Result<()> {
    let net = match Net::create(6) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("SKIPPED: cannot create network namespaces here ({e:#}); run as root");
            return Ok(());
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("tsn-group-partition-")
        .tempdir()?;
    let group: Vec<String> = (0..3).map(|i| format!("{}:{PORT}", net.addr(i))).collect();
    let mut sys = Sys {
        procs: Vec::new(),
        net,
        dir,
        group: group.join(","),
    };
    for i in 0..3 {
        let args = vec![
            "-p".into(),
            PORT.into(),
            "--id".into(),
            (i + 1).to_string(),
            "--members".into(),
            sys.group.clone(),
            "--clusters".into(),
            "1".into(),
        ];
        sys.spawn(
            i,
            &format!("coordinator-{}", i + 1),
            "tsn_coordinator",
            args,
        )?;
    }
    for (host, t) in [(PRIMARY, "primary"), (SECONDARY, "secondary")] {
        let args = vec![
            "-c".into(),
            sys.group.clone(),
            "-p".into(),
            "0".into(),
            "-i".into(),
            "1".into(),
            "-t".into(),
            t.into(),
        ];
        sys.spawn(host, t, "tsn_server", args)?;
    }
    let args = vec![
        "-c".into(),
        sys.group.clone(),
        "-p".into(),
        "0".into(),
        "-s".into(),
        "1".into(),
    ];
    sys.spawn(SYNC, "sync", "tsn_sync_service", args)?;
    eventually(
        "the primary active, a leader",
        Duration::from_secs(30),
        || {
            let s = sys.status(PRIMARY, &[0, 1, 2])?;
            Ok(active(&s) == Some(("primary".into(), 1)) && sys.leader(&[0, 1, 2]).is_some())
        },
    )?;
    let leader = sys.leader(&[0, 1, 2]).unwrap();
    let majority: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for m in &majority {
        sys.net.cut(leader, *m)?;
    }
    sys.kill(PRIMARY);

    // The majority elects a leader of its own and fails the primary over.
    eventually(
        "the majority fails the primary over",
        Duration::from_secs(30),
        || {
            let s = sys.status(SECONDARY, &majority)?;
            Ok(active(&s) == Some(("secondary".into(), 2)))
        },
    )?;
    // The cut-off leader, asked alone, still shows the primary: it could commit nothing.
    std::thread::sleep(Duration::from_secs(3));
    let alone = sys.status(SECONDARY, &[leader])?;
    assert_eq!(
        active(&alone),
        Some(("primary".into(), 1)),
        "the cut-off leader decided something: {alone:#}"
    );
    let cut_log = std::fs::read_to_string(sys.log(&format!("coordinator-{}", leader + 1)))?;
    assert!(
        !cut_log.contains("active server is now the secondary"),
        "the cut-off leader promoted the secondary:\n{cut_log}"
    );

    for m in &majority {
        sys.net.heal(leader, *m)?;
    }
    // One history: every member, asked alone, shows the secondary active at epoch 2.
    eventually(
        "every member agrees after the heal",
        Duration::from_secs(30),
        || {
            for m in 0..3 {
                let s = sys.status(SECONDARY, &[m])?;
                let one_active = s["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().filter(|e| e["active"] == true).count() == 1);
                if !(one_active && active(&s) == Some(("secondary".into(), 2))) {
                    return Ok(false);
                }
            }
            let all = sys.status(SECONDARY, &[0, 1, 2])?;
            let applied: Vec<Option<u64>> = all["coordinators"]
                .as_array()
                .map(|c| c.iter().map(|m| m["applied_index"].as_u64()).collect())
                .unwrap_or_default();
            Ok(applied.len() == 3 && applied.iter().all(|a| a.is_some() && *a == applied[0]))
        },
    )?;
    Ok(())
}
