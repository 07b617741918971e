//! What a node tells an operator: Prometheus metrics, liveness and readiness, served over
//! plain HTTP on `--metrics-addr` (`/metrics`, `/health`, `/ready`; see [`http`]).
//!
//! Every metric is declared here, once: its field, type, name, help and the roles that
//! have it, in one entry of [`Metrics`]; each is updated where the work happens. A role's
//! `/metrics` shows its own metrics only ([`Metrics::new`] registers those of its
//! [`Role`]). Names follow Prometheus conventions: a `tsn_` prefix, `_total` on
//! counters, base units (`_seconds`, `_bytes`).

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

/// Which role's metrics a [`Metrics`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A member of the coordinator group.
    Coordinator,
    /// A primary or secondary server.
    Server,
    /// A sync service.
    Sync,
}

/// Declares [`Metrics`]: each entry is a field, its type and first value, the name and
/// help it is registered under, and the roles that have it.
macro_rules! metrics {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $init:expr, $name:literal, $help:literal, [$($role:ident),+];
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
            /// The metrics of `role`, each at zero; not ready ("starting"). Fields of
            /// other roles' metrics exist but are not shown.
            pub fn new(role: Role) -> Arc<Metrics> {
                let mut registry = Registry::with_prefix("tsn");
                $(
                    let $field: $ty = $init;
                    if [$(Role::$role),+].contains(&role) {
                        registry.register($name, $help, $field.clone());
                    }
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
        "changes_acknowledged", "Changes acknowledged to clients, by kind", [Server];
    /// Time from a client's request reaching the server to its acknowledgement (50 us ..
    /// ~1.6 s).
    ack_latency: Histogram = Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
        "ack_latency_seconds", "Time from a request reaching the server to its acknowledgement", [Server];
    /// Bytes of the server's journal on disk.
    journal_bytes: Gauge = Gauge::default(),
        "journal_bytes", "Bytes of the journal's segments on disk", [Server];
    /// Time each checkpoint took (a server's; 1 ms .. ~33 s).
    checkpoint_seconds: Histogram = Histogram::new(exponential_buckets(1e-3, 2.0, 16)),
        "checkpoint_seconds", "Time each checkpoint took (sealing the logs, flushing the view files, writing the state)", [Server];
    /// Batches of changes sent to the standby and not yet acknowledged by it.
    mirror_lag: Gauge = Gauge::default(),
        "mirror_lag_batches", "Batches sent to the standby and not yet acknowledged", [Server];
    // Sync services.
    /// Bytes of this sync service's outbox that a cluster's sync service has not read yet.
    sync_backlog: Family<ClusterLabel, Gauge> = Family::default(),
        "sync_backlog_bytes", "Bytes of this sync service's outbox a cluster has not read yet", [Sync];
    // Servers: delivery to open timelines.
    /// Time from a post being stored to its reaching an open timeline on this server (100
    /// us .. ~3.3 s).
    delivery_latency: Histogram = Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
        "delivery_latency_seconds", "Time from a post being stored to its reaching an open timeline here", [Server];
    /// Age of this cluster's own posts when they last came back from its sync service
    /// (a server's; new posts wait while it is over `--admit-lag-ms`).
    delivery_lag: Gauge<f64, AtomicU64> = Gauge::default(),
        "delivery_lag_seconds", "Age of this cluster's own posts when they last came back from its sync service", [Server];
    /// Times a timeline session held new posts back for a moment because delivery was
    /// behind (`--admit-lag-ms`).
    admission_pauses: Counter = Counter::default(),
        "admission_pauses", "Times a timeline session held new posts back for a moment because delivery was behind", [Server];
    /// Open timeline streams.
    timeline_streams: Gauge = Gauge::default(),
        "timeline_streams", "Open timeline streams", [Server];
    // Connections: every role; heartbeats: servers and sync services.
    /// Open QUIC connections.
    connections: Gauge = Gauge::default(),
        "connections", "Open QUIC connections", [Coordinator, Server, Sync];
    /// Heartbeats that did not get an answer.
    heartbeats_missed: Counter = Counter::default(),
        "heartbeats_missed", "Heartbeats that got no answer", [Server, Sync];
    // Coordinators and servers: failover.
    /// Changes of the active server (the coordinator: every cluster's; a server: its own
    /// role's).
    failovers: Counter = Counter::default(),
        "failovers", "Changes of a cluster's active server", [Coordinator, Server];
    /// Failover epoch, by cluster.
    epoch: Family<ClusterLabel, Gauge> = Family::default(),
        "epoch", "Failover epoch, by cluster", [Coordinator, Server];
    /// 1 while this server is its cluster's active server.
    active: Gauge = Gauge::default(),
        "active", "1 while this server is its cluster's active server", [Server];
    // Coordinators: the group.
    /// The coordinator's Raft term.
    raft_term: Gauge = Gauge::default(),
        "raft_term", "The coordinator's Raft term", [Coordinator];
    /// 1 while this coordinator leads its group.
    raft_leader: Gauge = Gauge::default(),
        "raft_leader", "1 while this coordinator leads its group", [Coordinator];
    /// Index of the last entry the coordinator knows to be committed.
    raft_commit_index: Gauge = Gauge::default(),
        "raft_commit_index", "Index of the last Raft entry known committed", [Coordinator];
    /// Index of the last entry the coordinator applied.
    raft_applied_index: Gauge = Gauge::default(),
        "raft_applied_index", "Index of the last Raft entry applied", [Coordinator];
    /// Elections this coordinator started.
    raft_elections: Counter = Counter::default(),
        "raft_elections", "Elections this coordinator started", [Coordinator];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_shows_its_own_metrics() {
        let coordinator = Metrics::new(Role::Coordinator).render();
        let server = Metrics::new(Role::Server).render();
        let sync = Metrics::new(Role::Sync).render();
        for text in [&coordinator, &server, &sync] {
            assert!(text.contains("tsn_connections "), "{text}");
        }
        assert!(coordinator.contains("tsn_raft_term "), "{coordinator}");
        assert!(!coordinator.contains("tsn_ack_latency"), "{coordinator}");
        assert!(
            server.contains("tsn_ack_latency_seconds_count "),
            "{server}"
        );
        assert!(server.contains("tsn_heartbeats_missed_total "), "{server}");
        assert!(!server.contains("tsn_raft_term"), "{server}");
        assert!(!server.contains("tsn_sync_backlog"), "{server}");
        assert!(sync.contains("tsn_heartbeats_missed_total "), "{sync}");
        assert!(!sync.contains("tsn_journal_bytes"), "{sync}");
        assert!(!sync.contains("tsn_raft_term"), "{sync}");
    }
}
