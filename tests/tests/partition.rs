//! Partitions between clusters, on hosts made of network namespaces that this test
//! creates: a coordinator host and one host per cluster (primary, secondary and sync
//! service), joined by veth pairs to a bridge in a "switch" namespace. The link between
//! the two cluster hosts is cut (blackhole routes) while both sides keep posting; after
//! it heals, every post must reach its followers exactly once. Delay and loss are tested
//! on loopback through an impairing UDP relay (tests/impaired.rs): this kernel has no
//! netem.
//!
//! Needs root (CAP_NET_ADMIN), so it is ignored by default; `.ci/run` runs it where
//! namespaces can be created:
//! `cargo test -p tsn-tests --test partition -- --ignored --test-threads 1`.
//! The addresses (10.213.0.0/24) exist only inside the test's own namespaces.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tsn_tests::*;

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Test hosts: namespace `h<i>` with address 10.213.0.<i+1> on a shared bridge.
struct Net {
    prefix: String,
    hosts: usize,
}

impl Net {
    fn create(hosts: usize) -> Result<Net> {
        let prefix = format!("tsnp{}", std::process::id());
        let net = Net { prefix, hosts: 0 };
        let sw = net.switch();
        ip(&["netns", "add", &sw])?;
        let mut net = net;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let h = net.host(i);
            ip(&["netns", "add", &h])?;
            net.hosts = i + 1;
            let v = format!("v{i}");
            ip(&[
                "link", "add", &v, "netns", &sw, "type", "veth", "peer", "name", "eth0", "netns",
                &h,
            ])?;
            ip(&["-n", &sw, "link", "set", &v, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &h, "link", "set", "eth0", "up"])?;
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.213.0.{}", i + 1)
    }

    fn exec(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.host(i)]
    }

    /// Drops all traffic between hosts `a` and `b`, both ways: each gets a blackhole
    /// route to the other (this kernel has no queueing disciplines to filter with).
    fn cut(&self, a: usize, b: usize) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            ip(&[
                "-n",
                &self.host(from),
                "route",
                "add",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ])?;
        }
        Ok(())
    }

    /// Restores the link between hosts `a` and `b`.
    fn heal(&self, a: usize, b: usize) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            ip(&[
                "-n",
                &self.host(from),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.host(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

/// Two clusters on hosts 1 and 2, the coordinator on host 0.
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
        let net = match Net::create(3) {
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
            for t in ["primary", "secondary"] {
                let args = vec![
                    "-c".into(),
                    coord.clone(),
                    "-p".into(),
                    "0".into(),
                    "-i".into(),
                    c.to_string(),
                    "-t".into(),
                    t.into(),
                ];
                sys.node(c, &format!("{t}-{c}"), "tsn_server", args)?;
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
            sys.node(c, &format!("sync-{c}"), "tsn_sync_service", args)?;
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

    /// A client for `user` on host `host` (its cluster's host).
    fn client(&self, host: usize, user: u32) -> Result<Client> {
        Client::spawn_in(
            &self.net.exec(host),
            &self.coord,
            user,
            &self.certs(),
            &self.log(&format!("client-{user}")),
        )
    }

    /// The sync-delivered timeline file of `user` in `cluster` (on that cluster's host).
    fn delivered(&self, cluster: usize, user: u32) -> String {
        let p: &Path = self.dir.path();
        std::fs::read_to_string(p.join(format!(
            "datastore-h{cluster}/{cluster}/sync/local_clients/{user}/timeline.data"
        )))
        .unwrap_or_default()
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
    let mut a = sys.client(1, 2)?; // cluster 1
    let mut b = sys.client(2, 1)?; // cluster 2
    wait_users(&mut a, &[1, 2])?;
    wait_users(&mut b, &[1, 2])?;
    assert_eq!(a.run("FOLLOW 1", 1)?, ["Command completed successfully"]);
    assert_eq!(b.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    std::thread::sleep(Duration::from_millis(500));

    sys.net.cut(1, 2)?;
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

    sys.net.heal(1, 2)?;
    eventually("backlog to cluster 2", Duration::from_secs(30), || {
        delivered_once(&sys, 2, 1, "from one", 10)
    })?;
    eventually("backlog to cluster 1", Duration::from_secs(30), || {
        delivered_once(&sys, 1, 2, "from two", 10)
    })?;

    Ok(())
}
