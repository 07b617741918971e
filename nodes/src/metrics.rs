//! What a node tells an operator: Prometheus metrics, liveness and readiness, served over
//! plain HTTP on `--metrics-addr` (`/metrics`, `/health`, `/ready`).
//!
//! Every metric is defined here, once, and updated where the work happens. Names follow
//! Prometheus conventions: a `tsn_` prefix, `_total` on counters, base units (`_seconds`,
//! `_bytes`). A metric that a role does not have stays at zero there.

use crate::Locked;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Label: what kind of change.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `post`, `follow`, `unfollow` or `user`.
    pub kind: &'static str,
}

/// Label: a cluster.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    /// The cluster id.
    pub cluster: u32,
}

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Changes acknowledged to clients, by kind.
    pub acknowledged: Family<KindLabel, Counter>,
    /// Time from a client's request reaching the server to its acknowledgement.
    pub ack_latency: Histogram,
    /// Bytes in the journal (a server's; a sync service's outbox and journal together).
    pub journal_bytes: Gauge,
    /// Time each checkpoint took (a server's).
    pub checkpoint_seconds: Histogram,
    /// Batches of changes sent to the standby and not yet acknowledged by it.
    pub mirror_lag: Gauge,
    /// Bytes of this sync service's outbox that a cluster's sync service has not read yet.
    pub sync_backlog: Family<ClusterLabel, Gauge>,
    /// Time from a post being stored to its reaching an open timeline on this server.
    pub delivery_latency: Histogram,
    /// Age of this cluster's own posts when they last came back from its sync service
    /// (a server's; new posts wait while it is over `--admit-lag-ms`).
    pub delivery_lag: Gauge<f64, AtomicU64>,
    /// Times a timeline session held new posts back for a moment because delivery was
    /// behind (`--admit-lag-ms`).
    pub admission_pauses: Counter,
    /// Open timeline streams.
    pub timeline_streams: Gauge,
    /// Open QUIC connections.
    pub connections: Gauge,
    /// Heartbeats that did not get an answer.
    pub heartbeats_missed: Counter,
    /// Changes of the active server (the coordinator: every cluster's; a server: its own
    /// role's).
    pub failovers: Counter,
    /// Failover epoch, by cluster.
    pub epoch: Family<ClusterLabel, Gauge>,
    /// 1 while this server is its cluster's active server.
    pub active: Gauge,
    /// The coordinator's Raft term.
    pub raft_term: Gauge,
    /// 1 while this coordinator leads its group.
    pub raft_leader: Gauge,
    /// Index of the last entry the coordinator knows to be committed.
    pub raft_commit_index: Gauge,
    /// Index of the last entry the coordinator applied.
    pub raft_applied_index: Gauge,
    /// Elections this coordinator started.
    pub raft_elections: Counter,
    /// Why the node is not ready yet (`None`: ready).
    not_ready: Mutex<Option<String>>,
    /// Scrapes served, for the log's first-scrape line.
    scrapes: AtomicU64,
}

impl Metrics {
    /// A registry with every metric at zero; not ready ("starting").
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tsn");
        let acknowledged = Family::<KindLabel, Counter>::default();
        registry.register(
            "changes_acknowledged",
            "Changes acknowledged to clients, by kind",
            acknowledged.clone(),
        );
        // 50 us .. ~1.6 s.
        let ack_latency = Histogram::new(exponential_buckets(50e-6, 2.0, 16));
        registry.register(
            "ack_latency_seconds",
            "Time from a request reaching the server to its acknowledgement",
            ack_latency.clone(),
        );
        let journal_bytes = Gauge::default();
        registry.register(
            "journal_bytes",
            "Bytes of the journal's segments on disk",
            journal_bytes.clone(),
        );
        // 1 ms .. ~33 s.
        let checkpoint_seconds = Histogram::new(exponential_buckets(1e-3, 2.0, 16));
        registry.register(
            "checkpoint_seconds",
            "Time each checkpoint took (sealing the logs, flushing the view files, writing the state)",
            checkpoint_seconds.clone(),
        );
        let mirror_lag = Gauge::default();
        registry.register(
            "mirror_lag_batches",
            "Batches sent to the standby and not yet acknowledged",
            mirror_lag.clone(),
        );
        let sync_backlog = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "sync_backlog_bytes",
            "Bytes of this sync service's outbox a cluster has not read yet",
            sync_backlog.clone(),
        );
        // 100 us .. ~3.3 s.
        let delivery_latency = Histogram::new(exponential_buckets(100e-6, 2.0, 16));
        registry.register(
            "delivery_latency_seconds",
            "Time from a post being stored to its reaching an open timeline here",
            delivery_latency.clone(),
        );
        let delivery_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "delivery_lag_seconds",
            "Age of this cluster's own posts when they last came back from its sync service",
            delivery_lag.clone(),
        );
        let admission_pauses = Counter::default();
        registry.register(
            "admission_pauses",
            "Times a timeline session held new posts back for a moment because delivery was behind",
            admission_pauses.clone(),
        );
        let timeline_streams = Gauge::default();
        registry.register(
            "timeline_streams",
            "Open timeline streams",
            timeline_streams.clone(),
        );
        let connections = Gauge::default();
        registry.register("connections", "Open QUIC connections", connections.clone());
        let heartbeats_missed = Counter::default();
        registry.register(
            "heartbeats_missed",
            "Heartbeats that got no answer",
            heartbeats_missed.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Changes of a cluster's active server",
            failovers.clone(),
        );
        let epoch = Family::<ClusterLabel, Gauge>::default();
        registry.register("epoch", "Failover epoch, by cluster", epoch.clone());
        let active = Gauge::default();
        registry.register(
            "active",
            "1 while this server is its cluster's active server",
            active.clone(),
        );
        let raft_term = Gauge::default();
        registry.register(
            "raft_term",
            "The coordinator's Raft term",
            raft_term.clone(),
        );
        let raft_leader = Gauge::default();
        registry.register(
            "raft_leader",
            "1 while this coordinator leads its group",
            raft_leader.clone(),
        );
        let raft_commit_index = Gauge::default();
        registry.register(
            "raft_commit_index",
            "Index of the last Raft entry known committed",
            raft_commit_index.clone(),
        );
        let raft_applied_index = Gauge::default();
        registry.register(
            "raft_applied_index",
            "Index of the last Raft entry applied",
            raft_applied_index.clone(),
        );
        let raft_elections = Counter::default();
        registry.register(
            "raft_elections",
            "Elections this coordinator started",
            raft_elections.clone(),
        );
        Arc::new(Metrics {
            registry,
            acknowledged,
            ack_latency,
            journal_bytes,
            checkpoint_seconds,
            mirror_lag,
            sync_backlog,
            delivery_latency,
            delivery_lag,
            admission_pauses,
            timeline_streams,
            connections,
            heartbeats_missed,
            failovers,
            epoch,
            active,
            raft_term,
            raft_leader,
            raft_commit_index,
            raft_applied_index,
            raft_elections,
            not_ready: Mutex::new(Some("starting".into())),
            scrapes: AtomicU64::new(0),
        })
    }

    /// Counts an acknowledged change of `kind`, `started` being when its request came in.
    pub fn acked(&self, kind: &'static str, started: std::time::Instant) {
        self.acknowledged.get_or_create(&KindLabel { kind }).inc();
        self.ack_latency.observe(started.elapsed().as_secs_f64());
    }

    /// The node is ready (`None`), or not, and why.
    pub fn set_ready(&self, why_not: Option<String>) {
        *self.not_ready.locked() = why_not;
    }

    /// Why the node is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready.locked().clone()
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }
}

/// Largest HTTP request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// HTTP connections served at once, at most. More wait in the kernel's accept queue,
/// holding no descriptor of this process: strangers on `--metrics-addr` (no login is
/// needed) can never take the descriptors the journal, view files and feeds need. Each
/// costs one descriptor and a few KiB of buffers; a scraper and a few probes use a
/// handful.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long a connection may take to send its request and read the answer: a slow or
/// idle one is closed after this, freeing its place for the next.
pub const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// After a failed accept (out of descriptors), the pause before the next: the error
/// repeats until a descriptor is free, and must not spin a core meanwhile.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `/metrics`, `/health` and `/ready` on `addr` (`--metrics-addr`) for ever,
/// [`MAX_HTTP_CONNECTIONS`] at a time, each for at most [`HTTP_TIMEOUT`]. Returns the
/// bound address once listening.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics listening (/metrics, /health, /ready)");
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            // A place first, then the connection: what waits stays in the kernel's queue.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("accepting a metrics connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(HTTP_TIMEOUT, answer(stream, &metrics)).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}

/// One request per connection: reads the head, answers, closes.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => {
            if metrics.scrapes.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!("first metrics scrape");
            }
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        }
        ("GET", "/health") => ("200 OK", "text/plain", "alive\n".to_string()),
        ("GET", "/ready") => match metrics.not_ready() {
            None => ("200 OK", "text/plain", "ready\n".to_string()),
            Some(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
