//! Options shared by every binary, and logging.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// `--cert-dir` of the nodes (servers, sync services, coordinators).
pub const CERT_DIR_NODE: &str = "Directory of the cluster CA: ca.pem (its certificate and key). \
If a node finds none there, it creates a new CA and says so with its fingerprint: every node of \
one system must share the same ca.pem (copy it to each host's --cert-dir). Nodes also write \
ca.crt there, the certificate alone, for clients";
/// `--cert-dir` of the client.
pub const CERT_DIR_CLIENT: &str = "Directory of the cluster CA's certificate: ca.crt (copy it \
from a node's --cert-dir) or ca.pem. The user's key is kept here too, unless --key-dir names \
another directory";
/// `--cert-dir` of the read-only tools.
pub const CERT_DIR_TOOL: &str = "Directory of the cluster CA's certificate: ca.crt (copy it \
from a node's --cert-dir) or ca.pem";
/// `--cert-dir` of `tsn_admin`.
pub const CERT_DIR_ADMIN: &str = "Directory of the cluster CA: ca.pem (its certificate and key, \
as the nodes have it; ca.crt is not enough): operator commands are signed with a certificate \
made from it";
/// `--heartbeat-ms` of servers and sync services.
pub const HEARTBEAT_NODE: &str = "Heartbeat interval in milliseconds until the coordinator \
answers; from then on the coordinator's --heartbeat-ms is used, whatever is given here";
/// `--heartbeat-ms` of the coordinator.
pub const HEARTBEAT_COORDINATOR: &str =
    "Heartbeat interval in milliseconds, for every node (nodes \
take the coordinator's value): a server or sync service that misses two beats is marked \
down, and an active server that does is failed over to its standby";

/// Options every TSN binary takes.
#[derive(Debug, Clone, Args)]
pub struct CommonOpts {
    /// Directory of the cluster CA (what each binary needs there: see its --help).
    #[arg(
        long,
        default_value = "./certs",
        value_name = "DIR",
        env = "TSN_CERT_DIR"
    )]
    pub cert_dir: PathBuf,

    /// Log filter when RUST_LOG is not set (e.g. info, debug, tsn_nodes=trace).
    #[arg(long, default_value = "info", value_name = "FILTER", env = "TSN_LOG")]
    pub log: String,

    /// Log lines as `text` (coloured only on a terminal) or `json` (one object a line).
    #[arg(long, value_enum, default_value = "text", env = "TSN_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

impl CommonOpts {
    /// Starts logging as these options say.
    pub fn init_tracing(&self) {
        init_tracing_as(&self.log, self.log_format);
    }
}

/// Options of the long-running node binaries (coordinator, server, sync service).
#[derive(Debug, Clone, Args)]
pub struct NodeOpts {
    /// Root of the datastore.
    #[arg(
        long,
        default_value = "./datastore",
        value_name = "DIR",
        env = "TSN_DATASTORE"
    )]
    pub datastore: PathBuf,

    /// Address to bind (the port comes from -p).
    #[arg(long, default_value = "0.0.0.0", value_name = "IP", env = "TSN_BIND")]
    pub bind: std::net::IpAddr,

    /// Heartbeat interval in milliseconds (each binary's --help says what it does there).
    #[arg(
        long,
        default_value_t = 10_000,
        value_name = "MS",
        env = "TSN_HEARTBEAT_MS"
    )]
    pub heartbeat_ms: u64,

    /// Once serving, write the bound address (`ip:port`) to this file (for scripts and
    /// tests that start nodes on port 0).
    #[arg(long, value_name = "FILE", env = "TSN_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Serve Prometheus metrics (/metrics), liveness (/health) and readiness (/ready)
    /// over HTTP on this address (port 0 picks a free one; the log says which).
    #[arg(long, value_name = "HOST:PORT", env = "TSN_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Threads running the node's network and storage work. 1 (the default) runs it all
    /// on one thread: no hand-offs between threads, the lowest latency, and plenty for
    /// one cluster (see BENCHMARKS.md); 0 means one per core.
    #[arg(long, default_value_t = 1, value_name = "N", env = "TSN_THREADS")]
    pub threads: usize,
}

/// The clock options of the nodes that timestamp changes or pass them on (servers and
/// sync services).
#[derive(Debug, Clone, Args)]
pub struct ClockOpts {
    /// The largest difference between this node's clock and the others' that is taken
    /// as right, in milliseconds. A timestamp more than this ahead of the node's clock
    /// does not advance its hybrid logical clock (the change is kept as it is), so a
    /// clock that was wrong leaves no trace on later timestamps; a server or sync service
    /// whose clock differs from the coordinator's by more than this logs it and is not
    /// ready (the coordinator's clock is the one they are measured against).
    #[arg(
        long,
        default_value_t = 500,
        value_name = "MS",
        env = "TSN_MAX_CLOCK_OFFSET_MS"
    )]
    pub max_clock_offset_ms: u64,
}

impl ClockOpts {
    /// `--max-clock-offset-ms`.
    pub fn max_clock_offset(&self) -> Duration {
        Duration::from_millis(self.max_clock_offset_ms)
    }
}

impl NodeOpts {
    /// Issues this node a leaf from the cluster CA and binds its endpoint on `--bind` and
    /// `port` (see [`crate::net::node_listener`]); with `web`, the endpoint also accepts
    /// browsers.
    pub fn listen(
        &self,
        common: &CommonOpts,
        port: u16,
        auth: tsn_certs::ClientAuth,
        web: Option<&tsn_certs::WebCerts>,
    ) -> anyhow::Result<crate::net::NodeListener> {
        crate::net::node_listener(common, self, port, auth, web)
    }

    /// The async runtime the node runs on (see `--threads`), once the process's
    /// open-file limit is raised ([`raise_fd_limit`]): every node starts that way.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        raise_fd_limit();
        let mut builder = match self.threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                if n > 1 {
                    b.worker_threads(n);
                }
                b
            }
        };
        builder.enable_all().build()
    }

    /// Starts the metrics listener if `--metrics-addr` asks for one.
    /// The listener is a task of `tasks`: it stops with the role.
    pub async fn serve_metrics(
        &self,
        metrics: &std::sync::Arc<crate::metrics::Metrics>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_addr {
            let (_, serving) = crate::metrics::serve(addr, metrics.clone()).await?;
            tasks.spawn(serving);
        }
        Ok(())
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(1))
    }

    /// Writes the ready file, if one was asked for (atomically, so a reader never sees
    /// half an address).
    pub fn announce(&self, addr: SocketAddr) -> anyhow::Result<()> {
        if let Some(path) = &self.ready_file {
            write_ready_file(path, addr)?;
        }
        Ok(())
    }
}

fn write_ready_file(path: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    tsn_datastore::write_atomic(
        path,
        format!("{addr}\n").as_bytes(),
        tsn_datastore::Durability::NoSync,
    )
    .with_context(|| format!("writing ready file {}", path.display()))
}

/// Starts tracing to stderr as text, in colour only when stderr is a terminal (log files
/// stay greppable). RUST_LOG wins over `--log`.
pub fn init_tracing(default_filter: &str) {
    init_tracing_as(default_filter, LogFormat::Text);
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, and logs what
/// the process got. A node holds a descriptor for each peer connection, journal segment,
/// open view file ([`crate::views`] keeps up to 1,024) and HTTP connection
/// ([`crate::metrics::MAX_HTTP_CONNECTIONS`]); the usual soft limit of 1,024 is too few
/// for that under load, and running out makes appends and checkpoints fail. Costs
/// nothing until the descriptors are used (the kernel allocates them on demand).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("reading the open-file limit failed: {e}");
            return;
        }
    };
    if soft >= hard {
        tracing::info!(limit = soft, "open-file limit already at the hard limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::info!(
            from = soft,
            to = hard,
            "open-file limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(soft, hard, "raising the open-file limit failed: {e}"),
    }
}

/// [`init_tracing`] in the given format.
pub fn init_tracing_as(default_filter: &str, format: LogFormat) {
    use std::io::IsTerminal;
    // openraft's own lines (every vote request that does not get through while a group
    // forms, say) are for debugging it: the coordinator logs what the group decides and
    // who leads. `--log info,openraft=info` shows them. quinn warns when a peer presents
    // an address-validation token older than its log remembers: the peer's doing, which
    // quinn refuses and answers with a fresh handshake; not this node's to warn about.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let mut f = default_filter.to_string();
        if !f.contains("openraft") {
            f.push_str(",openraft=off");
        }
        if !f.contains("bloom_token_log") {
            f.push_str(",quinn_proto::bloom_token_log=error");
        }
        tracing_subscriber::EnvFilter::new(f)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process has been asked to stop (its [`shutdown_signal`] resolved).
pub fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The `main` of a node binary: parses `O`, starts logging as `parts` (its common and
/// node options) say, binds the role's endpoint with `bind` on the runtime they ask for,
/// and runs `run` on it until the process is asked to stop ([`shutdown_signal`]) and
/// the role has stopped.
pub fn node_main<O, Fut>(
    parts: impl Fn(&O) -> (&CommonOpts, &NodeOpts),
    bind: impl FnOnce(&O) -> anyhow::Result<crate::net::NodeListener>,
    run: impl FnOnce(O, crate::net::NodeListener, Signal) -> Fut,
) -> anyhow::Result<()>
where
    O: clap::Parser,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let opts = O::parse();
    let (common, node) = parts(&opts);
    common.init_tracing();
    let runtime = node.runtime()?;
    let listener = {
        let _runtime = runtime.enter();
        bind(&opts)?
    };
    runtime.block_on(run(opts, listener, Box::pin(shutdown_signal())))
}

/// What a node binary passes its role as the shutdown future.
pub type Signal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM); from then on
/// [`stopping`] says so.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The coordinator group, as `-c` names it: one `host:port`, or every member's,
/// comma-separated. A one-address list is today's single coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinators(Vec<String>);

impl Coordinators {
    /// The members' addresses, in the order given.
    pub fn addrs(&self) -> &[String] {
        &self.0
    }

    /// The first address (to learn which local address reaches the group).
    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// How long to wait for one member before trying the next: short when there is a
    /// next one.
    pub fn member_timeout(&self) -> Duration {
        if self.0.len() > 1 {
            Duration::from_secs(1)
        } else {
            crate::net::CONNECT_TIMEOUT
        }
    }
}

impl std::fmt::Display for Coordinators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Parses `-c`: `host:port[,host:port...]`.
pub fn parse_coordinators(s: &str) -> Result<Coordinators, String> {
    let addrs = s
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(parse_host_port)
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err("expected <host>:<port>[,<host>:<port>...]".into());
    }
    Ok(Coordinators(addrs))
}

/// Parses `host:port` as the original's `-c <coordIP>:<coordPort>`.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected <host>:<port>, got {s:?}"))?;
    if host.is_empty() {
        return Err(format!("missing host in {s:?}"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
    Ok(s.to_string())
}
