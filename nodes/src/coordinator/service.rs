//! The coordinator's QUIC service.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use tsn_protocol::coord::{CoordError, CoordReply, CoordRequest};

use super::tables::{Event, Tables};
use crate::common::{CommonOpts, NodeOpts};

/// The TSN coordinator: keeps every cluster's routing table from its nodes' heartbeats,
/// assigns clients to clusters, and fails a cluster over when its active server stops
/// beating.
#[derive(Debug, Parser)]
#[command(name = "tsn_coordinator", version, long_about = None)]
pub struct CoordinatorOpts {
    /// UDP port to listen on (0 picks a free one; see --ready-file).
    #[arg(short = 'p', long = "port", env = "TSN_PORT")]
    pub port: u16,

    /// Clear the datastore (every cluster's files) before starting.
    #[arg(short = 'c', long = "clear")]
    pub clear: bool,

    /// Number of clusters; client N is served by cluster (N % clusters) + 1.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000), env = "TSN_CLUSTERS")]
    pub clusters: u32,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// The coordinator's state: its tables, and what it tells an operator.
#[derive(Debug)]
struct Coord {
    tables: Mutex<Tables>,
    metrics: Arc<crate::metrics::Metrics>,
}

type Shared = Arc<Coord>;

impl Coord {
    fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, Tables>> {
        self.tables.lock()
    }

    /// Logs what changed, and counts it.
    fn record(&self, events: Vec<Event>) {
        for e in &events {
            if let Event::Failover { cluster, epoch, .. } | Event::HandOver { cluster, epoch, .. } =
                e
            {
                self.metrics.failovers.inc();
                self.metrics
                    .epoch
                    .get_or_create(&crate::metrics::ClusterLabel { cluster: *cluster })
                    .set(*epoch as i64);
            }
        }
        log_events(events);
    }
}

fn log_events(events: Vec<Event>) {
    for e in events {
        match e {
            Event::Registered {
                cluster,
                kind,
                addr,
            } => {
                tracing::info!(cluster, kind = kind.as_str(), %addr, "registered")
            }
            Event::HandOver {
                cluster,
                from,
                to,
                epoch,
            } => tracing::info!(
                cluster,
                from = from.as_str(),
                to = to.as_str(),
                epoch,
                "planned hand-over: the {} stops, the {} is active",
                from.as_str(),
                to.as_str()
            ),
            Event::Failover {
                cluster,
                active: Some(kind),
                epoch,
                reason,
            } => tracing::info!(
                cluster,
                active = kind.as_str(),
                epoch,
                %reason,
                "active server is now the {}",
                kind.as_str()
            ),
            Event::Failover {
                cluster,
                active: None,
                epoch,
                reason,
            } => tracing::error!(cluster, epoch, %reason, "no live server in cluster"),
        }
    }
}

fn log_stall(gap: std::time::Duration) {
    tracing::warn!(
        stalled_ms = gap.as_millis() as u64,
        "the coordinator itself did not run for a while: every node gets that time back before it can be failed over"
    );
}

/// Runs the coordinator until Ctrl-C / SIGTERM.
pub async fn run(opts: CoordinatorOpts) -> anyhow::Result<()> {
    if opts.clear {
        let ds = tsn_datastore::Datastore::new(&opts.node.datastore);
        ds.clear()
            .with_context(|| format!("clearing datastore {}", opts.node.datastore.display()))?;
        tracing::info!(path = %opts.node.datastore.display(), "datastore cleared");
    }
    let crate::net::NodeListener {
        endpoint, local, ..
    } = crate::net::node_listener(
        &opts.common,
        &opts.node,
        opts.port,
        tsn_certs::ClientAuth::Optional,
    )?;
    let hb = opts.node.heartbeat();
    tracing::info!(%local, clusters = opts.clusters, heartbeat_ms = opts.node.heartbeat_ms, "coordinator listening");
    opts.node.announce(local)?;

    let metrics = crate::metrics::Metrics::new();
    opts.node.serve_metrics(&metrics).await?;
    metrics.set_ready(None);
    let tables: Shared = Arc::new(Coord {
        tables: Mutex::new(Tables::new(opts.clusters, hb)),
        metrics: metrics.clone(),
    });
    let ticker = {
        let tables = tables.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(hb / 2);
            loop {
                tick.tick().await;
                let mut events = Vec::new();
                let mut stalled = None;
                if let Ok(mut t) = tables.lock() {
                    let now = Instant::now();
                    stalled = t.catch_up(now);
                    t.refresh_all(now, &mut events);
                }
                if let Some(gap) = stalled {
                    log_stall(gap);
                }
                tables.record(events);
            }
        })
    };
    let accept = {
        let tables = tables.clone();
        tokio::spawn(crate::net::accept_loop(
            endpoint.clone(),
            metrics.connections.clone(),
            move |conn| serve_connection(conn, tables.clone()),
        ))
    };
    crate::common::shutdown_signal().await;
    tracing::info!("shutting down");
    endpoint.close(0u32.into(), b"coordinator shutting down");
    ticker.abort();
    accept.abort();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

async fn serve_connection(conn: quinn::Connection, tables: Shared) {
    let is_node = tsn_certs::peer_is_node(&conn);
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let tables = tables.clone();
        tokio::spawn(async move {
            let req = match tsn_protocol::read_msg::<CoordRequest, _>(&mut recv).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("bad request: {e}");
                    let _ = send.reset(1u32.into());
                    return;
                }
            };
            let reply = answer(&tables, req, is_node);
            if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

fn answer(tables: &Shared, req: CoordRequest, is_node: bool) -> CoordReply {
    let now = Instant::now();
    let mut events = Vec::new();
    let Ok(mut t) = tables.lock() else {
        return CoordReply::Failed(CoordError::NoLiveServer { cluster: 0 });
    };
    if let Some(gap) = t.catch_up(now) {
        log_stall(gap);
    }
    let reply = match req {
        CoordRequest::Heartbeat(hb) if is_node => match t.beat(&hb, now, &mut events) {
            Ok(r) => CoordReply::Beat(r),
            Err(e @ CoordError::RoleTaken { .. }) => {
                tracing::error!(
                    cluster = hb.cluster,
                    kind = hb.kind.as_str(),
                    from = %hb.addr,
                    "refused a second process for a live role: {e}"
                );
                CoordReply::Failed(e)
            }
            Err(e) => CoordReply::Failed(e),
        },
        CoordRequest::HandOver { cluster, kind } if is_node => {
            match t.hand_over(cluster, kind, now, &mut events) {
                Ok((epoch, to)) => CoordReply::HandedOver { epoch, to },
                Err(e) => CoordReply::Failed(e),
            }
        }
        CoordRequest::SyncPeers if is_node => CoordReply::SyncPeers {
            clusters: t.clusters(),
            peers: t.sync_peers(now),
        },
        CoordRequest::Heartbeat(_) | CoordRequest::SyncPeers | CoordRequest::HandOver { .. } => {
            CoordReply::Failed(CoordError::NotANode)
        }
        CoordRequest::AssignClient { client } => match t.assign(client, now, &mut events) {
            Ok((cluster, addr)) => CoordReply::Assigned { cluster, addr },
            Err(e) => CoordReply::Failed(e),
        },
        CoordRequest::Status => CoordReply::Status(t.status(now)),
    };
    drop(t);
    tables.record(events);
    reply
}
