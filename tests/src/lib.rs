//! Harness for end-to-end tests: starts the real TSN binaries on loopback, drives
//! `tsn_client` through pipes, and stops everything it started (also when a test fails:
//! every process is killed when its handle is dropped).
//!
//! Binaries are found next to the test executable's directory (`target/<profile>/`),
//! where `cargo test --workspace` builds them, or in `$TSN_BIN_DIR`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub mod browser;
pub mod netns;
pub use netns::Net;

/// Kinds of node process in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `tsn_server -t primary`
    Primary,
    /// `tsn_server -t secondary`
    Secondary,
    /// `tsn_sync_service`
    Sync,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Sync => "sync",
        }
    }
}

/// Where the binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TSN_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let profile = if deps.ends_with("deps") {
        deps.parent().expect("profile dir")
    } else {
        deps
    };
    profile.to_path_buf()
}

/// Path of one binary.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built (run `cargo build --workspace` or set TSN_BIN_DIR)",
        p.display()
    );
    p
}

/// A command for binary `name`, run through `prefix` (e.g. `ip netns exec NS`) if any.
pub fn command(prefix: &[String], name: &str) -> Command {
    match prefix.split_first() {
        None => Command::new(bin(name)),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin(name));
            c
        }
    }
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, args: &[String], log: &Path) -> Result<Proc> {
        Proc::spawn_in(&[], name, args, log)
    }

    /// Starts binary `name` through `prefix` (see [`command`]), stderr to `log`.
    pub fn spawn_in(prefix: &[String], name: &str, args: &[String], log: &Path) -> Result<Proc> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = command(prefix, name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .env(
                "RUST_LOG",
                std::env::var("TSN_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
        })
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait up to 5 s (then SIGKILL). Returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        false
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Settings of a test system.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of clusters.
    pub clusters: u32,
    /// Heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Sync period (ms).
    pub period_ms: u64,
    /// Extra flags for every `tsn_server` (e.g. `--ack durable`).
    pub server_args: Vec<String>,
    /// Extra flags for every `tsn_sync_service`.
    pub sync_args: Vec<String>,
    /// Coordinators: 1 is a lone coordinator (no `--members`), 3 or 5 a group.
    pub coordinators: usize,
    /// Extra flags for every `tsn_coordinator`.
    pub coordinator_args: Vec<String>,
    /// Extra flags for group member i (from 0) alone, after `coordinator_args`.
    pub member_args: Vec<Vec<String>>,
}

/// A checkpoint interval small enough that checkpoints, sealed segments and deleted
/// segments happen within a test's few hundred posts.
pub const SMALL_CHECKPOINT_BYTES: u64 = 8 * 1024;

impl Config {
    /// The same, with servers and sync services taking a checkpoint every
    /// [`SMALL_CHECKPOINT_BYTES`].
    pub fn small_checkpoints(mut self) -> Config {
        let flag = [
            "--checkpoint-bytes".into(),
            SMALL_CHECKPOINT_BYTES.to_string(),
        ];
        self.server_args.extend(flag.clone());
        self.sync_args.extend(flag);
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clusters: 3,
            heartbeat_ms: 200,
            period_ms: 50,
            server_args: Vec::new(),
            sync_args: Vec::new(),
            coordinators: 1,
            coordinator_args: Vec::new(),
            member_args: Vec::new(),
        }
    }
}

/// A whole TSN system on loopback, under one temporary run directory.
#[derive(Debug)]
pub struct System {
    /// The run directory (datastore, certs, logs).
    pub dir: tempfile::TempDir,
    /// Settings.
    pub config: Config,
    /// Coordinator address (every member's, comma-separated, for a group).
    pub coord: String,
    coordinator: Option<Proc>,
    /// A group's members (index i is member i + 1), `None` while one is stopped.
    members: Vec<Option<Proc>>,
    member_addrs: Vec<String>,
    nodes: HashMap<(u32, Role), Proc>,
}

impl System {
    /// Starts a coordinator and, for each cluster, a primary, a secondary and a sync
    /// service; returns once every cluster has an active server and a sync service.
    pub fn start(config: Config) -> Result<System> {
        let mut sys = System::coordinator_only(config)?;
        for c in 1..=sys.config.clusters {
            for r in [Role::Primary, Role::Secondary, Role::Sync] {
                sys.start_node(c, r)?;
            }
        }
        sys.wait_ready(Duration::from_secs(30))?;
        Ok(sys)
    }

    /// Starts only the coordinator; nodes are started one by one with `start_node`.
    pub fn coordinator_only(config: Config) -> Result<System> {
        let dir = tempfile::Builder::new().prefix("tsn-e2e-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        let mut sys = System {
            dir,
            config,
            coord: String::new(),
            coordinator: None,
            members: Vec::new(),
            member_addrs: Vec::new(),
            nodes: HashMap::new(),
        };
        if sys.config.coordinators > 1 {
            sys.start_group()?;
        } else {
            sys.start_coordinator(None)?;
        }
        Ok(sys)
    }

    /// Starts every member of a coordinator group (on free loopback ports) at once.
    fn start_group(&mut self) -> Result<()> {
        for _ in 0..self.config.coordinators {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
            self.member_addrs.push(sock.local_addr()?.to_string());
        }
        self.coord = self.member_addrs.join(",");
        self.members = (0..self.config.coordinators).map(|_| None).collect();
        for i in 0..self.config.coordinators {
            self.spawn_member(i)?;
        }
        for i in 0..self.config.coordinators {
            let ready = self.member_ready_file(i);
            wait_file(&ready, Duration::from_secs(20))
                .with_context(|| format!("coordinator {} did not start", i + 1))?;
        }
        Ok(())
    }

    fn member_ready_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("coordinator-{}.addr", i + 1))
    }

    /// The datastore root of group member `i` (from 0).
    pub fn member_datastore(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("host-coordinator-{}", i + 1))
            .join("datastore")
    }

    fn spawn_member(&mut self, i: usize) -> Result<()> {
        let ready = self.member_ready_file(i);
        let _ = std::fs::remove_file(&ready);
        let port = self.member_addrs[i]
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let mut args = vec![
            "-p".into(),
            port,
            "--id".into(),
            (i + 1).to_string(),
            "--members".into(),
            self.coord.clone(),
            "--clusters".into(),
            self.config.clusters.to_string(),
        ];
        args.extend(self.common(&self.member_datastore(i)));
        args.extend(self.config.coordinator_args.iter().cloned());
        args.extend(
            self.config
                .member_args
                .get(i)
                .into_iter()
                .flatten()
                .cloned(),
        );
        args.extend(["--ready-file".into(), ready.display().to_string()]);
        let log = self.log(&format!("coordinator-{}", i + 1));
        self.members[i] = Some(Proc::spawn("tsn_coordinator", &args, &log)?);
        Ok(())
    }

    /// Starts one more coordinator process on a free port, with `--id` the next number
    /// and `--members` every address so far and its own (it is not a member until the
    /// group adds it: `tsn_admin members add`). Returns its index.
    pub fn start_extra_member(&mut self) -> Result<usize> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        self.member_addrs.push(sock.local_addr()?.to_string());
        drop(sock);
        self.coord = self.member_addrs.join(",");
        self.members.push(None);
        let i = self.members.len() - 1;
        self.start_member(i)?;
        Ok(i)
    }

    /// The address of group member `i` (from 0).
    pub fn member_addr(&self, i: usize) -> String {
        self.member_addrs[i].clone()
    }

    /// (Re)starts group member `i` (from 0) and waits until it serves.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        self.spawn_member(i)?;
        wait_file(&self.member_ready_file(i), Duration::from_secs(20))
            .with_context(|| format!("coordinator {} did not start", i + 1))?;
        Ok(())
    }

    /// Kills group member `i` (SIGKILL).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members.get_mut(i).and_then(Option::take) {
            p.kill9();
        }
    }

    /// Process id of group member `i`, while it runs.
    pub fn member_pid(&self, i: usize) -> Option<u32> {
        self.members.get(i).and_then(Option::as_ref).map(Proc::pid)
    }

    /// The log of group member `i`.
    pub fn member_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log(&format!("coordinator-{}", i + 1))).unwrap_or_default()
    }

    /// The index (from 0) of the group member that leads, asking every member.
    pub fn leader(&self) -> Option<usize> {
        let all: Vec<usize> = (0..self.member_addrs.len()).collect();
        self.leader_among(&all)
    }

    /// What group member `i` (from 0) says of itself, asked directly (within 300 ms).
    pub fn member_view(&self, i: usize) -> Option<tsn_protocol::coord::GroupView> {
        use tsn_protocol::coord::{CoordReply, CoordRequest};
        let addr: std::net::SocketAddr = self.member_addrs.get(i)?.parse().ok()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let ep = self.endpoint();
            let ask = async {
                let conn = ep.connect(addr, tsn_certs::SERVER_NAME).ok()?.await.ok()?;
                let reply = call::<_, CoordReply>(&conn, &CoordRequest::Group)
                    .await
                    .ok();
                conn.close(0u32.into(), b"done");
                match reply? {
                    CoordReply::Group(v) => Some(v),
                    _ => None,
                }
            };
            tokio::time::timeout(Duration::from_millis(300), ask)
                .await
                .ok()
                .flatten()
        })
    }

    /// The index (from 0) of the member that leads, asking only the members `among`
    /// directly (so that a stopped member costs no time).
    pub fn leader_among(&self, among: &[usize]) -> Option<usize> {
        among.iter().copied().find(|i| {
            self.member_view(*i)
                .is_some_and(|v| v.state == tsn_protocol::coord::MemberState::Leader)
        })
    }

    /// `tsn_status --json`, parsed.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let out = Command::new(bin("tsn_status"))
            .args([
                "-c",
                &self.coord,
                "--cert-dir",
                &self.certs().display().to_string(),
                "--json",
            ])
            .output()?;
        if !out.status.success() && out.status.code() != Some(2) {
            bail!(
                "tsn_status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The datastore root of one node: every process has its own, as if each ran on a
    /// host of its own.
    pub fn datastore(&self, cluster: u32, role: Role) -> PathBuf {
        self.dir
            .path()
            .join(format!("host-{}", node_name(cluster, role)))
            .join("datastore")
    }

    /// The role directory of one node (`<its datastore>/<cluster>/<role>`).
    pub fn role_dir(&self, cluster: u32, role: Role) -> PathBuf {
        self.datastore(cluster, role)
            .join(cluster.to_string())
            .join(role.name())
    }

    /// The coordinator's datastore root.
    pub fn coordinator_datastore(&self) -> PathBuf {
        self.dir.path().join("host-coordinator").join("datastore")
    }

    /// Cert dir.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn common(&self, datastore: &Path) -> Vec<String> {
        vec![
            "--cert-dir".into(),
            self.certs().display().to_string(),
            "--datastore".into(),
            datastore.display().to_string(),
            "--heartbeat-ms".into(),
            self.config.heartbeat_ms.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ]
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    /// (Re)starts the coordinator, on `port` (or a free one when `None`).
    pub fn start_coordinator(&mut self, port: Option<u16>) -> Result<()> {
        let ready = self.dir.path().join("coordinator.addr");
        let _ = std::fs::remove_file(&ready);
        let mut args = vec![
            "-p".into(),
            port.unwrap_or(0).to_string(),
            "--clusters".into(),
            self.config.clusters.to_string(),
        ];
        args.extend(self.common(&self.coordinator_datastore()));
        args.extend(self.config.coordinator_args.iter().cloned());
        args.extend(["--ready-file".into(), ready.display().to_string()]);
        self.coordinator = Some(Proc::spawn(
            "tsn_coordinator",
            &args,
            &self.log("coordinator"),
        )?);
        self.coord = wait_file(&ready, Duration::from_secs(10))?;
        Ok(())
    }

    /// Kills the coordinator (SIGKILL).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut p) = self.coordinator.take() {
            p.kill9();
        }
    }

    /// Port of the coordinator.
    pub fn coord_port(&self) -> u16 {
        self.coord
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// Whether a server has taken a checkpoint and deleted journal segments it covered
    /// (the segment that began the journal is gone).
    pub fn journal_was_compacted(&self, cluster: u32, role: Role) -> bool {
        let dir = self.role_dir(cluster, role);
        dir.join("checkpoint.data").exists()
            && std::fs::read_to_string(dir.join("journal.data.base")).is_ok_and(|b| b.trim() != "0")
            && !dir.join("journal.00000000000000000000.data").exists()
    }

    /// Starts (or restarts) one node.
    pub fn start_node(&mut self, cluster: u32, role: Role) -> Result<()> {
        self.start_node_with(cluster, role, &[])
    }

    /// Starts (or restarts) one node with extra flags.
    pub fn start_node_with(&mut self, cluster: u32, role: Role, extra: &[String]) -> Result<()> {
        self.start_node_in(cluster, role, &[], extra)
    }

    /// Starts (or restarts) one node through `prefix` (see [`command`]; e.g. `env
    /// LD_PRELOAD=...` for a skewed clock) with extra flags.
    pub fn start_node_in(
        &mut self,
        cluster: u32,
        role: Role,
        prefix: &[String],
        extra: &[String],
    ) -> Result<()> {
        let name = node_name(cluster, role);
        let ready = self.dir.path().join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&ready);
        let mut args: Vec<String> = match role {
            Role::Primary | Role::Secondary => vec![
                "-c".into(),
                self.coord.clone(),
                "-p".into(),
                "0".into(),
                "-i".into(),
                cluster.to_string(),
                "-t".into(),
                role.name().into(),
            ],
            Role::Sync => vec![
                "-c".into(),
                self.coord.clone(),
                "-p".into(),
                "0".into(),
                "-s".into(),
                cluster.to_string(),
                "-q".into(),
                self.config.period_ms.to_string(),
            ],
        };
        let mut common = self.common(&self.datastore(cluster, role));
        if extra.iter().any(|a| a == "--heartbeat-ms") {
            // The caller's interval instead of the system's.
            if let Some(i) = common.iter().position(|a| a == "--heartbeat-ms") {
                common.drain(i..i + 2);
            }
        }
        args.extend(common);
        if role == Role::Sync {
            args.extend(self.config.sync_args.iter().cloned());
        } else {
            args.extend(self.config.server_args.iter().cloned());
        }
        args.extend(extra.iter().cloned());
        args.extend(["--ready-file".into(), ready.display().to_string()]);
        let bin = if role == Role::Sync {
            "tsn_sync_service"
        } else {
            "tsn_server"
        };
        let p = Proc::spawn_in(prefix, bin, &args, &self.log(&name))?;
        self.nodes.insert((cluster, role), p);
        wait_file(&ready, Duration::from_secs(20))
            .with_context(|| format!("{name} did not start; see {}", self.log(&name).display()))?;
        Ok(())
    }

    /// Waits until the log of a node has a line containing `needle` (the node must log
    /// at a level that shows it; see `TSN_TEST_LOG`).
    pub fn wait_log(
        &self,
        cluster: u32,
        role: Role,
        needle: &str,
        timeout: Duration,
    ) -> Result<()> {
        eventually(
            &format!(
                "a line with {needle:?} in the log of {}",
                node_name(cluster, role)
            ),
            timeout,
            || Ok(self.read_log(cluster, role).contains(needle)),
        )
    }

    /// Process id of a running node.
    pub fn pid(&self, cluster: u32, role: Role) -> Option<u32> {
        self.nodes.get(&(cluster, role)).map(Proc::pid)
    }

    /// Process id of the coordinator.
    pub fn coordinator_pid(&self) -> Option<u32> {
        self.coordinator.as_ref().map(Proc::pid)
    }

    /// The address a node wrote to its ready file.
    pub fn addr(&self, cluster: u32, role: Role) -> Result<String> {
        let name = node_name(cluster, role);
        wait_file(
            &self.dir.path().join(format!("{name}.addr")),
            Duration::from_secs(1),
        )
    }

    /// SIGKILL one node.
    pub fn kill(&mut self, cluster: u32, role: Role) {
        if let Some(mut p) = self.nodes.remove(&(cluster, role)) {
            p.kill9();
        }
    }

    /// Loses a node's host: SIGKILL, and its datastore directory deleted (a disk that is
    /// gone). Start it again with `start_node`: it comes back empty.
    pub fn lose_host(&mut self, cluster: u32, role: Role) -> Result<()> {
        self.kill(cluster, role);
        let ds = self.datastore(cluster, role);
        if ds.exists() {
            std::fs::remove_dir_all(&ds).with_context(|| format!("deleting {}", ds.display()))?;
        }
        Ok(())
    }

    /// How many lines of a node's log contain `needle`.
    pub fn log_count(&self, cluster: u32, role: Role, needle: &str) -> usize {
        self.read_log(cluster, role).matches(needle).count()
    }

    /// SIGTERM one node and wait for it.
    pub fn stop(&mut self, cluster: u32, role: Role) -> bool {
        self.nodes
            .remove(&(cluster, role))
            .map(|mut p| p.stop())
            .unwrap_or(false)
    }

    /// The log of a node so far.
    pub fn read_log(&self, cluster: u32, role: Role) -> String {
        std::fs::read_to_string(self.log(&node_name(cluster, role))).unwrap_or_default()
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to a running node.
    pub fn signal(&self, cluster: u32, role: Role, signal: &str) -> Result<()> {
        let pid = self.pid(cluster, role).context("node not running")?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// The coordinator's tables, as `tsn_status` prints them.
    pub fn status(&self) -> Result<String> {
        let out = Command::new(bin("tsn_status"))
            .args([
                "-c",
                &self.coord,
                "--cert-dir",
                &self.certs().display().to_string(),
            ])
            .output()?;
        // Exit status 2: the tables were printed, and some cluster is not healthy.
        if !out.status.success() && out.status.code() != Some(2) {
            bail!(
                "tsn_status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every running node is alive in the tables and every cluster that has
    /// a running server has an active one.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let want_alive = self.nodes.len();
        let want_serving = {
            let mut clusters: Vec<u32> = self
                .nodes
                .keys()
                .filter(|(_, r)| *r != Role::Sync)
                .map(|(c, _)| *c)
                .collect();
            clusters.sort_unstable();
            clusters.dedup();
            clusters.len()
        };
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(s) = self.status() {
                let alive = s.lines().filter(|l| l.contains(" Active ")).count();
                let serving = s
                    .lines()
                    .filter(|l| l.contains(" Active ") && l.contains(" yes "))
                    .count();
                if alive >= want_alive && serving >= want_serving {
                    return Ok(());
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("system not ready within {timeout:?}; last status:\n{last}")
    }

    /// Which server of `cluster` is active now (the one [`System::serving`] names).
    pub fn active_server(&self, cluster: u32) -> Result<Role> {
        Ok(
            if self.serving(cluster)? == self.addr(cluster, Role::Primary)? {
                Role::Primary
            } else {
                Role::Secondary
            },
        )
    }

    /// The address the coordinator assigns to a cluster's clients right now.
    pub fn serving(&self, cluster: u32) -> Result<String> {
        let s = self.status()?;
        let mut section = "";
        for l in s.lines() {
            if l.ends_with(" table") {
                section = l;
                continue;
            }
            let cols: Vec<&str> = l.split_whitespace().collect();
            if section != "Synchronizer table"
                && cols.len() >= 4
                && cols[0] == cluster.to_string()
                && cols[3] == "yes"
            {
                return Ok(cols[1].to_string());
            }
        }
        bail!("cluster {cluster} has no serving server:\n{s}")
    }

    /// Starts a client for `user`.
    pub fn client(&self, user: u32) -> Result<Client> {
        Client::spawn(
            &self.coord,
            user,
            &self.certs(),
            &self.log(&format!("client-{user}")),
        )
    }

    /// Starts a client for `user` whose cert dir is `certs` (its own key directory too).
    pub fn client_with_certs(&self, user: u32, certs: &Path) -> Result<Client> {
        Client::spawn(
            &self.coord,
            user,
            certs,
            &self.log(&format!(
                "client-{user}-{}",
                certs.display().to_string().len()
            )),
        )
    }

    /// A directory holding only the cluster's CA certificate, as a client-only host has
    /// (so a client started with it creates keys of its own).
    pub fn client_cert_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.path().join(format!("client-host-{name}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(self.certs().join("ca.crt"), dir.join("ca.crt"))?;
        Ok(dir)
    }

    /// Reads a record file of a role directory.
    pub fn read(&self, cluster: u32, role: Role, rel: &str) -> String {
        std::fs::read_to_string(self.role_dir(cluster, role).join(rel)).unwrap_or_default()
    }

    /// Stops everything (SIGTERM, then SIGKILL).
    pub fn shutdown(&mut self) {
        for (_, mut p) in self.nodes.drain() {
            p.stop();
        }
        if let Some(mut p) = self.coordinator.take() {
            p.stop();
        }
        for m in &mut self.members {
            if let Some(mut p) = m.take() {
                p.stop();
            }
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.shutdown();
        if std::env::var_os("TSN_KEEP_RUN").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("run directory kept: {}", self.dir.path().display());
        }
    }
}

/// How a node's files in the run directory are named (`<name>.log`, `<name>.addr`).
fn node_name(cluster: u32, role: Role) -> String {
    format!("{}-{cluster}", role.name())
}

/// Waits for a ready file and returns its trimmed contents.
pub fn wait_file(path: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return Ok(s.trim().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not appear within {timeout:?}", path.display())
}

/// A `tsn_client` driven through pipes.
#[derive(Debug)]
pub struct Client {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far (with the `Cmd> ` prompts removed).
    pub seen: Vec<String>,
    /// The user.
    pub user: u32,
}

/// Removes the prompts that precede a line (the prompt has no newline of its own).
pub fn strip_prompts(mut line: &str) -> &str {
    while let Some(rest) = line.strip_prefix("Cmd> ") {
        line = rest;
    }
    line
}

impl Client {
    /// Starts `tsn_client -c coord -i user` with `certs` as its cert and key directory.
    pub fn spawn(coord: &str, user: u32, certs: &Path, log: &Path) -> Result<Client> {
        Client::spawn_in(&[], coord, user, certs, log)
    }

    /// Starts a client through `prefix` (see [`command`]).
    pub fn spawn_in(
        prefix: &[String],
        coord: &str,
        user: u32,
        certs: &Path,
        log: &Path,
    ) -> Result<Client> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut child = command(prefix, "tsn_client")
            .args([
                "-c",
                coord,
                "-p",
                "0",
                "-i",
                &user.to_string(),
                "--cert-dir",
                &certs.display().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(strip_prompts(&line).to_string()).is_err() {
                    break;
                }
            }
        });
        Ok(Client {
            proc: Proc {
                child,
                log: log.to_path_buf(),
            },
            stdin,
            lines: rx,
            seen: Vec::new(),
            user,
        })
    }

    /// Types a line.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the next line satisfying `pred`, returning it; lines before it are kept
    /// in `seen` too.
    pub fn expect_with(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return Ok(l);
                    }
                }
                Err(_) => bail!(
                    "client {}: no line {what:?} within {timeout:?}; output so far:\n{}\nstderr: {}",
                    self.user,
                    self.seen.join("\n"),
                    std::fs::read_to_string(&self.proc.log).unwrap_or_default()
                ),
            }
        }
    }

    /// Waits for a line equal to `line`.
    pub fn expect(&mut self, line: &str) -> Result<String> {
        self.expect_with(line, Duration::from_secs(10), |l| l == line)
    }

    /// Waits for a line containing `part`.
    pub fn expect_contains(&mut self, part: &str, timeout: Duration) -> Result<String> {
        self.expect_with(part, timeout, |l| l.contains(part))
    }

    /// Waits until a line ending with each of `endings` has been seen (in any order,
    /// lines seen earlier count too).
    pub fn expect_all(&mut self, endings: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Each line is matched once against what is still missing (thousands of lines
        // and endings stay cheap).
        let mut missing: Vec<&String> = endings
            .iter()
            .filter(|e| !self.seen.iter().any(|l| l.ends_with(e.as_str())))
            .collect();
        loop {
            if missing.is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    missing.retain(|e| !l.ends_with(e.as_str()));
                    self.seen.push(l);
                }
                Err(_) => bail!(
                    "client {}: missing {missing:?} after {timeout:?}; output so far:\n{}\nstderr: {}",
                    self.user,
                    self.seen.join("\n"),
                    std::fs::read_to_string(&self.proc.log).unwrap_or_default()
                ),
            }
        }
    }

    /// Sends a command and returns the next `n` non-empty lines of output.
    pub fn run(&mut self, cmd: &str, n: usize) -> Result<Vec<String>> {
        self.send(cmd)?;
        let mut out = Vec::new();
        while out.len() < n {
            out.push(self.expect_with("any line", Duration::from_secs(10), |l| !l.is_empty())?);
        }
        Ok(out)
    }

    /// Lines received so far that were not yet read, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l.clone());
            v.push(l);
        }
        v
    }

    /// Closes stdin and waits for the client to exit; returns its exit code.
    pub fn finish(mut self, timeout: Duration) -> Result<i32> {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.proc.child.try_wait()? {
                self.drain();
                return Ok(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("client {} did not exit within {timeout:?}", self.user)
    }

    /// The client's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// What the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// Posts in a timeline file (`post ...` or `deliver ...` lines) whose text is `text`.
pub fn count_text(file: &str, text: &str) -> usize {
    file.lines()
        .filter(|l| l.ends_with(&format!(" {text}")))
        .count()
}

/// Sends a signal (`STOP`, `CONT`, ...) to a process.
pub fn signal_pid(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// The libfaketime library, if installed (`.ci/run` installs it where it can).
pub fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A command prefix that runs a node with its wall clock `offset` off (e.g. "-5s"),
/// leaving its monotonic clock alone; `None` without libfaketime.
pub fn skewed_clock(offset: &str) -> Option<Vec<String>> {
    let lib = libfaketime()?;
    Some(vec![
        "env".into(),
        format!("LD_PRELOAD={}", lib.display()),
        format!("FAKETIME={offset}"),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
        "FAKETIME_NO_CACHE=1".into(),
    ])
}

/// Retries `f` until it returns `Ok(true)` or `timeout` passes.
pub fn eventually(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    while Instant::now() < deadline {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match last_err {
        Some(e) => Err(e.context(format!("{what}: not within {timeout:?}"))),
        None => bail!("{what}: not within {timeout:?}"),
    }
}

/// Runs LIST on `client` and returns (all users line, followers line).
pub fn list(client: &mut Client) -> Result<(String, String)> {
    let out = client.run("LIST", 3)?;
    if out[0] != "Command completed successfully" {
        bail!("LIST failed: {out:?}");
    }
    Ok((out[1].clone(), out[2].clone()))
}

/// Waits until `client`'s LIST shows exactly `users` as all users.
pub fn wait_users(client: &mut Client, users: &[u32]) -> Result<()> {
    let want = format!(
        "All users: {}",
        users.iter().map(|u| format!("{u}, ")).collect::<String>()
    );
    eventually("all users known", Duration::from_secs(30), || {
        Ok(list(client)?.0 == want)
    })
}

impl System {
    /// Starts every node again (after `shutdown` or kills), coordinator first, on the
    /// same coordinator port, and waits until the system is ready.
    pub fn start_all(&mut self) -> Result<()> {
        let port = self.coord_port();
        self.start_coordinator(Some(port))?;
        for c in 1..=self.config.clusters {
            for r in [Role::Primary, Role::Secondary, Role::Sync] {
                self.start_node(c, r)?;
            }
        }
        self.wait_ready(Duration::from_secs(30))
    }

    /// SIGKILLs every process.
    pub fn kill_all(&mut self) {
        for (_, mut p) in self.nodes.drain() {
            p.kill9();
        }
        self.kill_coordinator();
    }
}

/// One request and one reply on a fresh stream of `conn`, within 5 s.
pub async fn call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Req,
) -> Result<Rep> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        tsn_protocol::write_msg(&mut send, req).await?;
        send.finish()?;
        tsn_protocol::read_msg::<Rep, _>(&mut recv)
            .await?
            .ok_or_else(|| anyhow!("no reply"))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow!("no reply within 5 s"))?
}

/// Logs `conn` in as `user` with the user's key in `keys` (created there if missing, as
/// `tsn_client` does with its key directory): asks a challenge, signs it, logs in.
pub async fn login(conn: &quinn::Connection, user: u32, keys: &Path) -> Result<()> {
    use tsn_protocol::client::{ClientReply, ClientRequest};
    let key = tsn_nodes::client::identity::UserKey::load_or_create(keys, user)?;
    let ClientReply::Challenge(challenge) = call(conn, &ClientRequest::Challenge).await? else {
        bail!("no challenge")
    };
    let reply: ClientReply = call(
        conn,
        &ClientRequest::Login {
            user,
            proof: Some(key.prove(user, &challenge)),
        },
    )
    .await?;
    if reply != ClientReply::Ok {
        bail!("login of user {user} refused: {reply:?}");
    }
    Ok(())
}

/// Enters timeline mode.
pub fn enter_timeline(c: &mut Client) -> anyhow::Result<()> {
    assert_eq!(
        c.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    Ok(())
}

/// Endings of the lines `<author> (<time>) >> <text>` a follower expects, one per post.
pub fn shown(texts: &[String]) -> Vec<String> {
    texts.iter().map(|t| format!(") >> {t}")).collect()
}

/// Waits for every expected line, lets late duplicates arrive, and checks each line was
/// shown exactly once.
pub fn shown_once(c: &mut Client, endings: &[String], timeout: Duration) -> anyhow::Result<()> {
    c.expect_all(endings, timeout)?;
    std::thread::sleep(Duration::from_secs(1));
    c.drain();
    for e in endings {
        let n = c.seen.iter().filter(|l| l.ends_with(e.as_str())).count();
        assert_eq!(n, 1, "user {}: {e:?} shown {n} times", c.user);
    }
    Ok(())
}

/// Waits until the active server of `cluster` mirrors to a standby again (its log says so
/// more than `before` times).
pub fn wait_mirroring(
    sys: &System,
    cluster: u32,
    active: Role,
    before: usize,
) -> anyhow::Result<()> {
    eventually(
        "the active server mirrors to the returned standby",
        Duration::from_secs(30),
        || Ok(sys.log_count(cluster, active, "mirroring to the standby") > before),
    )
}

// Clients speaking the protocol directly (for load a `tsn_client` process cannot make).

impl System {
    /// A QUIC client endpoint on loopback that trusts this system's CA.
    pub fn endpoint(&self) -> quinn::Endpoint {
        let root = tsn_certs::TrustRoot::load(&self.certs()).expect("the system's CA");
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_secs(1)));
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address"))
            .expect("a client endpoint on loopback");
        ep.set_default_client_config(
            root.client_config(std::sync::Arc::new(t))
                .expect("a client config"),
        );
        ep
    }

    /// A connection to the server the coordinator assigns to `user`, logged in as `user`
    /// (its key in the certificate directory), within 5 s for each step.
    pub async fn connect(&self, ep: &quinn::Endpoint, user: u32) -> Result<quinn::Connection> {
        use tsn_protocol::coord::{CoordReply, CoordRequest};
        let dial = |addr: &str| -> Result<_> {
            let sock: std::net::SocketAddr = addr.parse()?;
            Ok(ep.connect(sock, tsn_certs::SERVER_NAME)?)
        };
        let timeout = Duration::from_secs(5);
        let coord = tokio::time::timeout(timeout, dial(&self.coord)?).await??;
        let reply = call(&coord, &CoordRequest::AssignClient { client: user }).await;
        coord.close(0u32.into(), b"");
        let CoordReply::Assigned { addr, .. } = reply? else {
            bail!("no server assigned to user {user}")
        };
        let conn = tokio::time::timeout(timeout, dial(&addr)?).await??;
        login(&conn, user, &self.certs()).await?;
        Ok(conn)
    }
}

// Restarts and the cost of history: shared by tests/tests/history.rs and tsn_bench's
// history section.

impl System {
    /// Restarts a node that was killed on the address it had, as the same command line
    /// run again on its host would: the flags of [`System::start_node_in`], with `-p` the
    /// port of its last ready file instead of 0. (A restart on a new port is another
    /// process to the coordinator, refused until the old one has missed its heartbeats,
    /// by which time the cluster has failed over.) Waits up to `timeout` for the new
    /// ready file.
    pub fn restart_node_in_place(
        &mut self,
        cluster: u32,
        role: Role,
        prefix: &[String],
        extra: &[String],
        timeout: Duration,
    ) -> Result<()> {
        let name = node_name(cluster, role);
        let ready = self.dir.path().join(format!("{name}.addr"));
        let port = self
            .addr(cluster, role)?
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .with_context(|| format!("no port in {}", ready.display()))?;
        self.kill(cluster, role);
        let _ = std::fs::remove_file(&ready);
        let (bin, id_flag, mut args) = match role {
            Role::Primary | Role::Secondary => (
                "tsn_server",
                "-i",
                vec!["-t".to_string(), role.name().to_string()],
            ),
            Role::Sync => (
                "tsn_sync_service",
                "-s",
                vec!["-q".to_string(), self.config.period_ms.to_string()],
            ),
        };
        args.extend([
            "-c".into(),
            self.coord.clone(),
            "-p".into(),
            port.to_string(),
            id_flag.into(),
            cluster.to_string(),
        ]);
        args.extend(self.common(&self.datastore(cluster, role)));
        if role != Role::Sync {
            args.extend(self.config.server_args.iter().cloned());
        }
        args.extend(extra.iter().cloned());
        args.extend(["--ready-file".into(), ready.display().to_string()]);
        let p = Proc::spawn_in(prefix, bin, &args, &self.log(&name))?;
        self.nodes.insert((cluster, role), p);
        wait_file(&ready, timeout)
            .with_context(|| format!("{name} did not start; see {}", self.log(&name).display()))?;
        Ok(())
    }

    /// The `/metrics` address a node logged last (it must run with `--metrics-addr` and
    /// log `tsn_nodes::metrics` at info), and how many such lines its log holds, so that
    /// a caller can wait for the line of a restarted process.
    pub fn metrics_addr(&self, cluster: u32, role: Role) -> (Option<String>, usize) {
        let log = self.read_log(cluster, role);
        let addrs: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("metrics listening"))
            .filter_map(|l| l.split("addr=").nth(1))
            .map(str::trim)
            .collect();
        (addrs.last().map(|a| a.to_string()), addrs.len())
    }
}

/// The status code of `GET path` on `addr` (a node's metrics listener), within 2 s.
pub fn http_status(addr: &str, path: &str) -> Result<u16> {
    use std::io::Read;
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: tsn\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line from {addr}{path}: {out:?}"))
}

/// A size field of `/proc/<pid>/status` in KiB: `VmRSS` (resident memory now), `VmHWM`
/// (its peak).
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// What a server keeps of its history on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalBytes {
    /// Every log segment (`journal*.data`, `received*.data`: the active segments and
    /// the sealed ones) plus `checkpoint.data`.
    pub total: u64,
    /// `checkpoint.data` alone (0 while there is none).
    pub checkpoint: u64,
}

/// The journal bytes of a server's role directory (see [`JournalBytes`]).
pub fn journal_bytes(role_dir: &Path) -> Result<JournalBytes> {
    let mut out = JournalBytes::default();
    for entry in
        std::fs::read_dir(role_dir).with_context(|| format!("listing {}", role_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let log = (name.starts_with("journal") || name.starts_with("received"))
            && name.ends_with(".data");
        let checkpoint = name == "checkpoint.data";
        if log || checkpoint {
            let len = entry.metadata()?.len();
            out.total += len;
            if checkpoint {
                out.checkpoint = len;
            }
        }
    }
    Ok(out)
}

/// Posts one post for each nonce of `nonces` as `user`, on a timeline stream of `conn`
/// (logged in as `user`), at most `window` of them unacknowledged at a time (the server
/// takes up to 256 per stream), as fast as the server acknowledges them; `acked` counts
/// the acknowledgements as they come. A session the server closes (it fell behind on the
/// entries it pushes down) is reopened and what was not acknowledged is sent again (a
/// post's id is stored once); a post refused for the user's rate is sent again. Gives up
/// at `deadline`.
pub async fn post_pipelined(
    conn: &quinn::Connection,
    user: u32,
    nonces: std::ops::Range<u64>,
    window: usize,
    acked: &std::sync::atomic::AtomicU64,
    deadline: Instant,
) -> Result<()> {
    use std::collections::VecDeque;
    use tsn_protocol::client::{
        ClientReply, ClientRequest, CommandError, TimelineDown, TimelineUp,
    };

    let first = nonces.start;
    let mut done = vec![false; (nonces.end - nonces.start) as usize];
    let mut todo: VecDeque<u64> = nonces.collect();
    let deadline = tokio::time::Instant::from_std(deadline);
    while !todo.is_empty() {
        let session = async {
            let (mut send, recv) = conn.open_bi().await?;
            tsn_protocol::write_msg(&mut send, &ClientRequest::Timeline { user, since: None })
                .await?;
            let mut recv = tsn_protocol::FrameReader::new(recv);
            match recv.next_msg::<ClientReply>().await? {
                Some(ClientReply::Ok) => {}
                other => bail!("timeline of user {user} refused: {other:?}"),
            }
            let mut in_flight = 0usize;
            loop {
                // Write what the window allows, then read one message.
                while in_flight < window {
                    let Some(nonce) = todo.pop_front() else { break };
                    let post = TimelineUp::Post {
                        nonce,
                        text: format!("history {nonce}"),
                    };
                    tsn_protocol::write_msg(&mut send, &post).await?;
                    in_flight += 1;
                }
                if in_flight == 0 {
                    let _ = send.finish();
                    return Ok(());
                }
                let slot = |n: u64| n.checked_sub(first).map(|i| i as usize);
                match recv.next_msg::<TimelineDown>().await? {
                    Some(TimelineDown::Ack { nonce }) => {
                        if let Some(d) = slot(nonce).and_then(|i| done.get_mut(i)) {
                            if !*d {
                                *d = true;
                                in_flight -= 1;
                                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                    Some(TimelineDown::Refused {
                        nonce,
                        reason: CommandError::RateLimited { .. },
                    }) => {
                        if slot(nonce).and_then(|i| done.get(i)).is_some() {
                            in_flight -= 1;
                            todo.push_back(nonce);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Some(TimelineDown::Refused { nonce, reason }) => {
                        bail!("post {nonce} of user {user} refused: {reason}")
                    }
                    Some(TimelineDown::NotActive) => bail!("the server is no longer active"),
                    // The session was closed: reopen it and resend what is not acknowledged.
                    Some(TimelineDown::Reopen) | None => return Ok(()),
                    Some(TimelineDown::Entry { .. } | TimelineDown::Position(_)) => {}
                }
            }
        };
        tokio::time::timeout_at(deadline, session)
            .await
            .map_err(|_| anyhow!("user {user}: posts not all acknowledged in time"))??;
        todo = done
            .iter()
            .enumerate()
            .filter(|(_, d)| !**d)
            .map(|(i, _)| first + i as u64)
            .collect();
    }
    Ok(())
}

/// User 3 (cluster 1) in timeline mode, followed by user 6 (cluster 1) and user 4
/// (cluster 2), both in timeline mode too: (author, near, far).
pub fn author_and_followers(sys: &System) -> Result<(Client, Client, Client)> {
    let mut author = sys.client(3)?;
    let mut near = sys.client(6)?;
    let mut far = sys.client(4)?;
    wait_users(&mut near, &[3, 4, 6])?;
    wait_users(&mut far, &[3, 4, 6])?;
    for c in [&mut near, &mut far] {
        assert_eq!(c.run("FOLLOW 3", 1)?, ["Command completed successfully"]);
        enter_timeline(c)?;
    }
    enter_timeline(&mut author)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((author, near, far))
}

/// Every journal segment in a server's role directory `dir`, oldest first: what of its
/// journal it still has.
pub fn journal_segments(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("journal.") && n.ends_with(".data"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap_or_default())
        .collect()
}

// Hostile hosts: failed writes, exhausted descriptors.

/// A one-cluster system with small checkpoints whose primary runs through `prefix` (see
/// [`command`]) with `extra` flags, and user 1 (the author returned, in timeline mode)
/// followed by user 2.
pub fn author_on_a_primary_run_with(
    prefix: &[String],
    extra: &[String],
) -> Result<(System, Client)> {
    let config = Config {
        clusters: 1,
        ..Config::default()
    }
    .small_checkpoints();
    let mut sys = System::coordinator_only(config)?;
    sys.start_node_in(1, Role::Primary, prefix, extra)?;
    sys.start_node(1, Role::Secondary)?;
    sys.start_node(1, Role::Sync)?;
    sys.wait_ready(Duration::from_secs(30))?;
    let mut author = sys.client(1)?;
    let mut follower = sys.client(2)?;
    wait_users(&mut follower, &[1, 2])?;
    let followed = follower.run("FOLLOW 1", 1)?;
    anyhow::ensure!(
        followed == ["Command completed successfully"],
        "{followed:?}"
    );
    anyhow::ensure!(follower.finish(Duration::from_secs(10))? == 0);
    eventually("1 knows its follower", Duration::from_secs(10), || {
        Ok(list(&mut author)?.1 == "Followers: 2, ")
    })?;
    enter_timeline(&mut author)?;
    Ok((sys, author))
}

/// A command prefix that runs a debug build with its failpoints in `dir` (see
/// `tsn_datastore::failpoint`): the failpoint `name` fails while `dir/name` exists.
pub fn with_failpoints(dir: &Path) -> Vec<String> {
    vec!["env".into(), format!("TSN_FAILPOINTS={}", dir.display())]
}

/// The numbers of the entries of `user`'s timeline file in a role directory, in file
/// order: `1..=n` exactly when none is missing and none is there twice.
pub fn timeline_numbers(sys: &System, cluster: u32, role: Role, user: u32) -> Vec<u64> {
    use tsn_datastore::RecordLine;
    let file = sys.read(
        cluster,
        role,
        &format!("local_clients/{user}/timeline.data"),
    );
    file.lines()
        .filter_map(|l| match tsn_datastore::Record::decode_line(l) {
            Ok(tsn_datastore::Record::Deliver { to, seq, .. }) if to == user => Some(seq),
            _ => None,
        })
        .collect()
}

/// Waits until user 2's timeline file in the primary of cluster 1 numbers `n` entries
/// `1..=n`, each once, in order.
pub fn wait_timeline_complete(sys: &System, n: u64, timeout: Duration) -> Result<()> {
    let want: Vec<u64> = (1..=n).collect();
    eventually(
        &format!("entries 1..={n} in user 2's timeline file, each once"),
        timeout,
        || Ok(timeline_numbers(sys, 1, Role::Primary, 2) == want),
    )
    .with_context(|| {
        format!(
            "numbers in the file: {:?}",
            timeline_numbers(sys, 1, Role::Primary, 2)
        )
    })
}

/// GET `path` from the HTTP endpoint at `addr` (`/metrics`, `/health`, `/ready`): the
/// status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: tsn\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Ok((code, body))
}

/// The flags of a `tsn_server` started by hand for `cluster` as `kind` (`primary` or
/// `secondary`) against `coord`, with its certificates in `cert_dir` and its own
/// datastore.
pub fn server_args(
    coord: &str,
    cluster: u32,
    kind: &str,
    cert_dir: &Path,
    datastore: &Path,
) -> Vec<String> {
    [
        "-c",
        coord,
        "-p",
        "0",
        "-i",
        &cluster.to_string(),
        "-t",
        kind,
        "--cert-dir",
        &cert_dir.display().to_string(),
        "--datastore",
        &datastore.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
