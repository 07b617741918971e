//! Partitions, on hosts made of network namespaces that this test creates: a coordinator
//! host and, for each of two clusters, a host for its primary, one for its secondary and
//! one for its sync service (each with its own datastore), joined by veth pairs to a
//! bridge in a "switch" namespace. Links are cut with blackhole routes:
//! - between the two clusters' hosts, while both sides keep posting; after it heals,
//!   every post must reach its followers exactly once;
//! - between a cluster's two server hosts and between its primary and the coordinator
//!   (split brain inside a cluster: both servers accept posts); after it heals, both
//!   sides' posts survive and are delivered once.
//!
//! Delay and loss are tested on loopback through an impairing UDP relay
//! (tests/impaired.rs): this kernel has no netem.
//!
//! Needs root (CAP_NET_ADMIN), so it is ignored by default; `.ci/run` runs it where
//! namespaces can be created:
//! `cargo test -p tsn-tests --test partition -- --ignored --test-threads 1`.
//! The addresses (10.213.0.0/24) exist only inside the test's own namespaces.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tsn_tests::*;

/// The host of a cluster's node: the coordinator is host 0, then three per cluster.
fn host(cluster: usize, role: Role) -> usize {
    let i = match role {
        Role::Primary => 0,
        Role::Secondary => 1,
        Role::Sync => 2,
    };
    1 + (cluster - 1) * 3 + i
}

const ROLES: [Role; 3] = [Role::Primary, Role::Secondary, Role::Sync];

/// Two clusters on hosts 1..=6, the coordinator on host 0.
struct Sys {
    // Field order is drop order: processes stop before the namespaces go.
    procs: Vec<Proc>,
    net: Net,
    dir: tempfile::TempDir,
    coord: String,
}

impl Sys {
    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn datastore(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("datastore-h{host}"))
    }

    fn node(
        &mut self,
        host: usize,
        name: &str,
        bin: &str,
        mut args: Vec<String>,
    ) -> Result<String> {
        let ready = self.dir.path().join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&ready);
        args.extend([
            "--cert-dir".into(),
            self.certs().display().to_string(),
            "--datastore".into(),
            self.datastore(host).display().to_string(),
            "--heartbeat-ms".into(),
            "200".into(),
            "--bind".into(),
            self.net.addr(host),
            "--ready-file".into(),
            ready.display().to_string(),
        ]);
        let log = self.log(name);
        self.procs
            .push(Proc::spawn_in(&self.net.exec(host), bin, &args, &log)?);
        wait_file(&ready, Duration::from_secs(20)).with_context(|| {
            format!(
                "{name}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
    }

    fn start() -> Result<Option<Sys>> {
        let net = match Net::create(7) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("SKIPPED: cannot create network namespaces here ({e:#}); run as root");
                return Ok(None);
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("tsn-partition-")
            .tempdir()?;
        let mut sys = Sys {
            procs: Vec::new(),
            net,
            dir,
            coord: String::new(),
        };
        sys.coord = sys.node(
            0,
            "coordinator",
            "tsn_coordinator",
            vec!["-p".into(), "0".into(), "--clusters".into(), "2".into()],
        )?;
        for c in 1..=2usize {
            let coord = sys.coord.clone();
            for (t, role) in [("primary", Role::Primary), ("secondary", Role::Secondary)] {
                let args = vec![
                    "-c".into(),
                    coord.clone(),
                    "-p".into(),
                    "0".into(),
                    "-i".into(),
                    c.to_string(),
                    "-t".into(),
                    t.into(),
                    // Checkpoints, and deletions of the segments they cover, during the
                    // test.
                    "--checkpoint-bytes".into(),
                    SMALL_CHECKPOINT_BYTES.to_string(),
                ];
                sys.node(host(c, role), &format!("{t}-{c}"), "tsn_server", args)?;
            }
            let args = vec![
                "-c".into(),
                coord.clone(),
                "-p".into(),
                "0".into(),
                "-s".into(),
                c.to_string(),
                "-q".into(),
                "50".into(),
            ];
            sys.node(
                host(c, Role::Sync),
                &format!("sync-{c}"),
                "tsn_sync_service",
                args,
            )?;
        }
        // Ready when the coordinator sees all six nodes alive.
        eventually("all nodes registered", Duration::from_secs(30), || {
            let out = command(&sys.net.exec(0), "tsn_status")
                .args([
                    "-c",
                    &sys.coord,
                    "--cert-dir",
                    &sys.certs().display().to_string(),
                ])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text.lines().filter(|l| l.contains(" Active ")).count() >= 6
                && text.contains(" yes "))
        })?;
        Ok(Some(sys))
    }

    /// A client for `user` on host `host`.
    fn client(&self, host: usize, user: u32) -> Result<Client> {
        Client::spawn_in(
            &self.net.exec(host),
            &self.coord,
            user,
            &self.certs(),
            &self.log(&format!("client-{user}")),
        )
    }

    /// The sync-delivered timeline file of `user` in `cluster` (on its sync host).
    fn delivered(&self, cluster: usize, user: u32) -> String {
        let p: &Path = &self.datastore(host(cluster, Role::Sync));
        std::fs::read_to_string(
            p.join(format!("{cluster}/sync/local_clients/{user}/timeline.data")),
        )
        .unwrap_or_default()
    }

    /// A file of a server's role directory.
    fn server_file(&self, cluster: usize, role: Role, rel: &str) -> String {
        let name = if role == Role::Primary {
            "primary"
        } else {
            "secondary"
        };
        std::fs::read_to_string(
            self.datastore(host(cluster, role))
                .join(format!("{cluster}/{name}/{rel}")),
        )
        .unwrap_or_default()
    }

    /// The journal segments a server still has (the active one and the sealed ones its
    /// sync service has not read).
    fn journal(&self, cluster: usize, role: Role) -> String {
        let name = if role == Role::Primary {
            "primary"
        } else {
            "secondary"
        };
        journal_segments(
            &self
                .datastore(host(cluster, role))
                .join(format!("{cluster}/{name}")),
        )
    }

    /// Cuts (or with `heal`, restores) every link between two clusters' hosts.
    fn cut_clusters(&self, heal: bool) -> Result<()> {
        for a in ROLES {
            for b in ROLES {
                let (x, y) = (host(1, a), host(2, b));
                if heal {
                    self.net.heal(x, y)?;
                } else {
                    self.net.cut(x, y)?;
                }
            }
        }
        Ok(())
    }
}

/// Users: with 2 clusters, user 2 is in cluster 1 (host 1), user 1 in cluster 2 (host 2).
fn post_all(c: &mut Client, tag: &str, n: usize) -> Result<()> {
    for k in 0..n {
        c.send(&format!("{tag} {k}"))?;
    }
    Ok(())
}

fn delivered_once(sys: &Sys, cluster: usize, user: u32, tag: &str, n: usize) -> Result<bool> {
    let t = sys.delivered(cluster, user);
    let counts: Vec<usize> = (0..n)
        .map(|k| count_text(&t, &format!("{tag} {k}")))
        .collect();
    if counts.iter().any(|c| *c > 1) {
        bail!("duplicated delivery of {tag}: {counts:?}");
    }
    Ok(counts.iter().all(|c| *c == 1))
}

#[test]
#[ignore = "needs root to create network namespaces; run with --ignored"]
fn partition_between_clusters_then_heal_delivers_the_backlog_once() -> Result<()> {
    let Some(sys) = Sys::start()? else {
        return Ok(());
    };
    let mut a = sys.client(host(1, Role::Sync), 2)?; // cluster 1
    let mut b = sys.client(host(2, Role::Sync), 1)?; // cluster 2
    wait_users(&mut a, &[1, 2])?;
    wait_users(&mut b, &[1, 2])?;
    assert_eq!(a.run("FOLLOW 1", 1)?, ["Command completed successfully"]);
    assert_eq!(b.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    std::thread::sleep(Duration::from_millis(500));

    sys.cut_clusters(false)?;
    // Both sides keep serving their own users while cut off from each other.
    for (c, tag) in [(&mut a, "from one"), (&mut b, "from two")] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
        post_all(c, tag, 10)?;
    }
    assert_eq!(
        a.finish(Duration::from_secs(20))?,
        0,
        "cluster 1 acknowledged every post during the partition"
    );
    assert_eq!(
        b.finish(Duration::from_secs(20))?,
        0,
        "cluster 2 acknowledged every post during the partition"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !delivered_once(&sys, 2, 1, "from one", 10)?,
        "nothing crosses a cut link"
    );

    sys.cut_clusters(true)?;
    eventually("backlog to cluster 2", Duration::from_secs(30), || {
        delivered_once(&sys, 2, 1, "from one", 10)
    })?;
    eventually("backlog to cluster 1", Duration::from_secs(30), || {
        delivered_once(&sys, 1, 2, "from two", 10)
    })?;

    Ok(())
}

#[test]
#[ignore = "needs root to create network namespaces; run with --ignored"]
fn split_brain_inside_a_cluster_then_heal_keeps_both_sides_posts() -> Result<()> {
    let Some(sys) = Sys::start()? else {
        return Ok(());
    };
    // With 2 clusters: users 2 and 4 in cluster 1, user 1 in cluster 2. User 2's client
    // runs on the primary's host, so it stays with the primary through the split.
    let mut early = sys.client(host(1, Role::Primary), 2)?;
    let mut reader = sys.client(host(2, Role::Sync), 1)?;
    // Each cluster learns of the other's users through its sync service: both must
    // know user 2 before user 1 can follow them.
    wait_users(&mut early, &[1, 2])?;
    wait_users(&mut reader, &[1, 2])?;
    assert_eq!(
        reader.run("FOLLOW 2", 1)?,
        ["Command completed successfully"]
    );
    assert_eq!(
        early.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    std::thread::sleep(Duration::from_millis(500));

    // The primary's host loses the secondary's and the coordinator's, but keeps its
    // clients and its sync service: the primary goes on serving alone, while the coordinator makes the secondary
    // active for everyone else. Both accept posts.
    let (p, s, coord) = (host(1, Role::Primary), host(1, Role::Secondary), 0);
    sys.net.cut(p, s)?;
    sys.net.cut(p, coord)?;
    post_all(&mut early, "primary side", 10)?;
    std::thread::sleep(Duration::from_secs(2));
    let mut late = sys.client(host(1, Role::Sync), 4)?;
    assert_eq!(
        late.run("FOLLOW 2", 1)?[0],
        "Command completed successfully"
    );
    assert_eq!(
        late.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    post_all(&mut late, "secondary side", 10)?;
    assert_eq!(late.finish(Duration::from_secs(20))?, 0);
    eventually(
        "the primary stores its side alone",
        Duration::from_secs(20),
        || {
            Ok((0..10).all(|k| {
                count_text(&sys.journal(1, Role::Primary), &format!("primary side {k}")) == 1
            }))
        },
    )?;
    assert!(
        !sys.journal(1, Role::Primary).contains("secondary side"),
        "the primary was cut off from the secondary's posts"
    );
    assert!(
        !sys.journal(1, Role::Secondary).contains("primary side"),
        "the secondary was cut off from the primary's posts: a split brain"
    );

    sys.net.heal(p, s)?;
    sys.net.heal(p, coord)?;
    assert_eq!(early.finish(Duration::from_secs(30))?, 0);
    // Both servers end with both sides' posts, once each, in their authors' own
    // timeline files (the journal keeps only what the last checkpoint does not cover).
    for role in [Role::Primary, Role::Secondary] {
        eventually("both sides merged", Duration::from_secs(30), || {
            let of_2 = sys.server_file(1, role, "local_clients/2/timeline.data");
            let of_4 = sys.server_file(1, role, "local_clients/4/timeline.data");
            let counts: Vec<usize> = (0..10)
                .flat_map(|k| {
                    [
                        count_text(&of_2, &format!("primary side {k}")),
                        count_text(&of_4, &format!("secondary side {k}")),
                    ]
                })
                .collect();
            if counts.iter().any(|c| *c > 1) {
                bail!("{role:?}: a post stored twice: {counts:?}");
            }
            Ok(counts.iter().all(|c| *c == 1))
        })?;
    }
    // And the follower in the other cluster got every post of user 2, once.
    eventually("delivered once", Duration::from_secs(30), || {
        delivered_once(&sys, 2, 1, "primary side", 10)
    })?;
    Ok(())
}
