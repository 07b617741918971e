//! The follower synchroniser (`tsn_sync_service`), one per cluster.
//!
//! # Layout
//! - [`sender`]: every `-q` ms, reads what this cluster's servers journaled since the
//!   last acknowledged cursor and ships it to each cluster's sync service.
//! - [`inbox`]: applies what arrives (from peers, and from this cluster itself) to this
//!   sync service's role directory, which the servers watch.
//!
//! The sync service never talks to a server: servers see its work only through the
//! datastore files. It learns its peers from the coordinator on every heartbeat.

pub mod inbox;
pub mod sender;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use tsn_datastore::{Cursors, Datastore, RoleDir};
use tsn_protocol::coord::{CoordReply, CoordRequest, Heartbeat, NodeKind};
use tsn_protocol::sync::{SyncReply, SyncRequest};
use tsn_protocol::{ClusterId, MAX_BATCH_CHANGES};

use crate::common::{CommonOpts, NodeOpts};
use inbox::Inbox;

/// `tsn_sync_service`: moves follows, users and posts between users and clusters.
#[derive(Debug, Parser)]
#[command(name = "tsn_sync_service", version, about, long_about = None)]
pub struct SyncOpts {
    /// Coordinator address, <coordIP>:<coordPort>.
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_host_port)]
    pub coordinator: String,

    /// Cluster id this sync service serves (1..=clusters).
    #[arg(short = 's', long = "cluster", value_parser = clap::value_parser!(u32).range(1..))]
    pub cluster: u32,

    /// UDP port to listen on for other sync services (0 picks a free one).
    #[arg(short = 'p', long = "port")]
    pub port: u16,

    /// Sync period in milliseconds: how often local changes are collected and shipped.
    #[arg(short = 'q', long = "period", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub period_ms: u64,

    /// Address other sync services should dial (host:port); default as for tsn_server.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// Live sync services by cluster, as last heard from the coordinator.
pub type Peers = watch::Receiver<HashMap<ClusterId, String>>;

/// State shared by the sync service's tasks.
#[derive(Debug)]
pub struct SyncShared {
    /// This cluster.
    pub cluster: ClusterId,
    /// This sync service's role directory.
    pub dir: RoleDir,
    /// The writer of `dir`.
    pub inbox: Arc<Mutex<Inbox>>,
    /// Send cursors, persisted in `dir/cursors.data`.
    pub cursors: Mutex<Cursors>,
    /// Peers by cluster.
    pub peers: Peers,
    /// The QUIC endpoint (listens for peers, dials peers and the coordinator).
    pub endpoint: quinn::Endpoint,
}

/// Runs the sync service until Ctrl-C / SIGTERM.
pub async fn run(opts: SyncOpts) -> anyhow::Result<()> {
    let ds = Datastore::new(&opts.node.datastore);
    let dir = ds.role(opts.cluster, NodeKind::Sync);
    dir.create()
        .with_context(|| format!("creating {}", dir.path().display()))?;
    let sources = [
        (
            "primary".to_string(),
            ds.role(opts.cluster, NodeKind::Primary),
        ),
        (
            "secondary".to_string(),
            ds.role(opts.cluster, NodeKind::Secondary),
        ),
    ];
    let cursors = Cursors::load(&dir.cursors())
        .with_context(|| format!("loading {}", dir.cursors().display()))?;

    let (endpoint, local) = crate::net::node_listener(
        &opts.common,
        &opts.node,
        opts.port,
        tsn_certs::ClientAuth::Required,
    )?;
    let hb = opts.node.heartbeat();
    let advertise =
        crate::net::advertise_addr(opts.advertise.as_deref(), local, &opts.coordinator).await?;

    // The number of clusters comes from the coordinator; wait for the first answer.
    let (peers_tx, peers_rx) = watch::channel(HashMap::new());
    let clusters = first_contact(
        &endpoint,
        &opts.coordinator,
        opts.cluster,
        &advertise,
        hb,
        &peers_tx,
    )
    .await;
    let inbox = Inbox::open(
        dir.clone(),
        [sources[0].1.clone(), sources[1].1.clone()],
        opts.cluster,
        clusters,
    )
    .with_context(|| format!("loading {}", dir.path().display()))?;
    let shared = Arc::new(SyncShared {
        cluster: opts.cluster,
        dir: dir.clone(),
        inbox: Arc::new(Mutex::new(inbox)),
        cursors: Mutex::new(cursors),
        peers: peers_rx,
        endpoint: endpoint.clone(),
    });

    tokio::spawn(heartbeats(
        endpoint.clone(),
        opts.coordinator.clone(),
        opts.cluster,
        advertise.clone(),
        hb,
        peers_tx,
    ));
    let accept = {
        let shared = shared.clone();
        tokio::spawn(crate::net::accept_loop(endpoint.clone(), move |conn| {
            serve_peer(conn, shared.clone())
        }))
    };
    let period = Duration::from_millis(opts.period_ms);
    let mut senders = Vec::new();
    for dest in 1..=clusters {
        senders.push(tokio::spawn(sender::run(
            shared.clone(),
            dest,
            clusters,
            sources.clone(),
            period,
        )));
    }
    tracing::info!(%local, %advertise, cluster = opts.cluster, clusters, period_ms = opts.period_ms, "sync service running");
    opts.node.announce(local)?;

    crate::common::shutdown_signal().await;
    tracing::info!("shutting down");
    for s in &senders {
        s.abort();
    }
    accept.abort();
    endpoint.close(0u32.into(), b"sync service shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let inbox = shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
    inbox
        .close_cleanly(&dir)
        .context("writing clean-shutdown marker")?;
    Ok(())
}

/// Beats until the coordinator answers, and returns the number of clusters.
async fn first_contact(
    endpoint: &quinn::Endpoint,
    coordinator: &str,
    cluster: ClusterId,
    advertise: &str,
    hb: Duration,
    peers: &watch::Sender<HashMap<ClusterId, String>>,
) -> u32 {
    let mut logged = false;
    loop {
        match beat(endpoint, None, coordinator, cluster, advertise).await {
            Ok((_, clusters, map)) => {
                peers.send_replace(map);
                return clusters;
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(%coordinator, "waiting for the coordinator: {e:#}");
                    logged = true;
                }
                tokio::time::sleep(hb.min(Duration::from_secs(1))).await;
            }
        }
    }
}

async fn beat(
    endpoint: &quinn::Endpoint,
    conn: Option<&quinn::Connection>,
    coordinator: &str,
    cluster: ClusterId,
    advertise: &str,
) -> anyhow::Result<(quinn::Connection, u32, HashMap<ClusterId, String>)> {
    let conn = match conn {
        Some(c) if c.close_reason().is_none() => c.clone(),
        _ => crate::net::connect(endpoint, coordinator).await?,
    };
    let hb = CoordRequest::Heartbeat(Heartbeat {
        cluster,
        kind: NodeKind::Sync,
        addr: advertise.to_string(),
        active: false,
        epoch: 0,
    });
    match crate::net::call::<_, CoordReply>(&conn, &hb).await? {
        CoordReply::Beat(_) => {}
        CoordReply::Failed(e) => anyhow::bail!("coordinator refused the heartbeat: {e}"),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
    match crate::net::call::<_, CoordReply>(&conn, &CoordRequest::SyncPeers).await? {
        CoordReply::SyncPeers { clusters, peers } => {
            let map = peers.into_iter().map(|p| (p.cluster, p.addr)).collect();
            Ok((conn, clusters, map))
        }
        CoordReply::Failed(e) => anyhow::bail!("coordinator refused the peer lookup: {e}"),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

async fn heartbeats(
    endpoint: quinn::Endpoint,
    coordinator: String,
    cluster: ClusterId,
    advertise: String,
    interval: Duration,
    peers: watch::Sender<HashMap<ClusterId, String>>,
) {
    let mut conn: Option<quinn::Connection> = None;
    let mut logged = false;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match beat(&endpoint, conn.as_ref(), &coordinator, cluster, &advertise).await {
            Ok((c, _, map)) => {
                if logged {
                    tracing::info!(%coordinator, "coordinator reachable again");
                    logged = false;
                }
                conn = Some(c);
                peers.send_if_modified(|m| {
                    let changed = *m != map;
                    *m = map;
                    changed
                });
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(%coordinator, "heartbeat failed, keeping the last known peers: {e:#}");
                    logged = true;
                }
                conn = None;
            }
        }
    }
}

async fn serve_peer(conn: quinn::Connection, shared: Arc<SyncShared>) {
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let reply = match tsn_protocol::read_msg::<SyncRequest, _>(&mut recv).await {
                Ok(Some(req)) => handle(&shared, req).await,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("bad sync request: {e}");
                    let _ = send.reset(1u32.into());
                    return;
                }
            };
            if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

async fn handle(shared: &SyncShared, req: SyncRequest) -> SyncReply {
    let SyncRequest::Batch {
        from,
        to,
        seq,
        changes,
    } = req;
    if to != shared.cluster {
        return SyncReply::Refused(format!(
            "this sync service serves cluster {}, not {to}",
            shared.cluster
        ));
    }
    if changes.len() > MAX_BATCH_CHANGES {
        return SyncReply::Refused(format!(
            "batch of {} changes exceeds {MAX_BATCH_CHANGES}",
            changes.len()
        ));
    }
    let inbox = shared.inbox.clone();
    match tokio::task::spawn_blocking(move || {
        inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&changes)
    })
    .await
    {
        Ok(Ok(n)) => {
            tracing::debug!(from, seq, new = n, "batch applied");
            SyncReply::Applied { seq }
        }
        Ok(Err(e)) => {
            tracing::error!(from, "could not apply a batch: {e}");
            SyncReply::Refused(format!("storage error: {e}"))
        }
        Err(_) => SyncReply::Refused("internal error".into()),
    }
}
