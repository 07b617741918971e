//! What a node tells an operator: Prometheus metrics, liveness and readiness, served over
//! plain HTTP on `--metrics-addr` (`/metrics`, `/health`, `/ready`; see [`http`]).
//!
//! Every metric is declared here, once (its field, type, name and help in one entry of
//! [`Metrics`]), grouped by the role that updates it, and updated where the work
//! happens. Names follow Prometheus conventions: a `tsn_` prefix, `_total` on counters,
//! base units (`_seconds`, `_bytes`). A metric that a role does not have stays at zero
//! there.

pub mod http;

pub use http::{bind_router, serve, HTTP_TIMEOUT, MAX_HTTP_CONNECTIONS};

use crate::Locked;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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

/// Declares [`Metrics`]: each entry is a field, its type and first value, and the name
/// and help it is registered under.
macro_rules! metrics {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $init:expr, $name:literal, $help:literal;
    )*) => {
        /// Every metric of a node.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
            /// Why the node is not ready yet (`None`: ready).
            not_ready: Mutex<Option<String>>,
            /// Scrapes served, for the log's first-scrape line.
            scrapes: AtomicU64,
        }

        impl Metrics {
            /// A registry with every metric at zero; not ready ("starting").
            pub fn new() -> Arc<Metrics> {
                let mut registry = Registry::with_prefix("tsn");
                $(
                    let $field: $ty = $init;
                    registry.register($name, $help, $field.clone());
                )*
                Arc::new(Metrics {
                    registry,
                    $($field,)*
                    not_ready: Mutex::new(Some("starting".into())),
                    scrapes: AtomicU64::new(0),
                })
            }
        }
    };
}

metrics! {
    // Servers: what clients were told, and how fast.
    /// Changes acknowledged to clients, by kind.
    acknowledged: Family<KindLabel, Counter> = Family::default(),
        "changes_acknowledged", "Changes acknowledged to clients, by kind";
    /// Time from a client's request reaching the server to its acknowledgement (50 us ..
    /// ~1.6 s).
    ack_latency: Histogram = Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
        "ack_latency_seconds", "Time from a request reaching the server to its acknowledgement";
    /// Bytes in the journal (a server's; a sync service's outbox and journal together).
    journal_bytes: Gauge = Gauge::default(),
        "journal_bytes", "Bytes of the journal's segments on disk";
    /// Time each checkpoint took (a server's; 1 ms .. ~33 s).
    checkpoint_seconds: Histogram = Histogram::new(exponential_buckets(1e-3, 2.0, 16)),
        "checkpoint_seconds", "Time each checkpoint took (sealing the logs, flushing the view files, writing the state)";
    /// Batches of changes sent to the standby and not yet acknowledged by it.
    mirror_lag: Gauge = Gauge::default(),
        "mirror_lag_batches", "Batches sent to the standby and not yet acknowledged";
    // Sync services.
    /// Bytes of this sync service's outbox that a cluster's sync service has not read yet.
    sync_backlog: Family<ClusterLabel, Gauge> = Family::default(),
        "sync_backlog_bytes", "Bytes of this sync service's outbox a cluster has not read yet";
    // Servers: delivery to open timelines.
    /// Time from a post being stored to its reaching an open timeline on this server (100
    /// us .. ~3.3 s).
    delivery_latency: Histogram = Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
        "delivery_latency_seconds", "Time from a post being stored to its reaching an open timeline here";
    /// Age of this cluster's own posts when they last came back from its sync service
    /// (a server's; new posts wait while it is over `--admit-lag-ms`).
    delivery_lag: Gauge<f64, AtomicU64> = Gauge::default(),
        "delivery_lag_seconds", "Age of this cluster's own posts when they last came back from its sync service";
    /// Times a timeline session held new posts back for a moment because delivery was
    /// behind (`--admit-lag-ms`).
    admission_pauses: Counter = Counter::default(),
        "admission_pauses", "Times a timeline session held new posts back for a moment because delivery was behind";
    /// Open timeline streams.
    timeline_streams: Gauge = Gauge::default(),
        "timeline_streams", "Open timeline streams";
    // Every role.
    /// Open QUIC connections.
    connections: Gauge = Gauge::default(),
        "connections", "Open QUIC connections";
    /// Heartbeats that did not get an answer.
    heartbeats_missed: Counter = Counter::default(),
        "heartbeats_missed", "Heartbeats that got no answer";
    // Coordinators and servers: failover.
    /// Changes of the active server (the coordinator: every cluster's; a server: its own
    /// role's).
    failovers: Counter = Counter::default(),
        "failovers", "Changes of a cluster's active server";
    /// Failover epoch, by cluster.
    epoch: Family<ClusterLabel, Gauge> = Family::default(),
        "epoch", "Failover epoch, by cluster";
    /// 1 while this server is its cluster's active server.
    active: Gauge = Gauge::default(),
        "active", "1 while this server is its cluster's active server";
    // Coordinators: the group.
    /// The coordinator's Raft term.
    raft_term: Gauge = Gauge::default(),
        "raft_term", "The coordinator's Raft term";
    /// 1 while this coordinator leads its group.
    raft_leader: Gauge = Gauge::default(),
        "raft_leader", "1 while this coordinator leads its group";
    /// Index of the last entry the coordinator knows to be committed.
    raft_commit_index: Gauge = Gauge::default(),
        "raft_commit_index", "Index of the last Raft entry known committed";
    /// Index of the last entry the coordinator applied.
    raft_applied_index: Gauge = Gauge::default(),
        "raft_applied_index", "Index of the last Raft entry applied";
    /// Elections this coordinator started.
    raft_elections: Counter = Counter::default(),
        "raft_elections", "Elections this coordinator started";
}

impl Metrics {
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

    /// Counts a scrape; true for the first.
    fn first_scrape(&self) -> bool {
        self.scrapes.fetch_add(1, Ordering::Relaxed) == 0
    }
}
