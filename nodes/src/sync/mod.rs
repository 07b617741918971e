//! The follower synchroniser (`tsn_sync_service`), one per cluster.
//!
//! # Layout
//! - [`options`]: the command line.
//! - [`state`]: its state and the one writer of its role directory: the outbox (this
//!   cluster's changes) and the journal (what it gives this cluster's servers).
//! - `follow`: the feeds it reads (its servers' journals, every cluster's outbox).
//! - `serve`: the feeds it serves (its outbox, its journal).
//! - `readiness`: what `/ready` says.
//!
//! Everything it learns comes over QUIC, as feeds read from cursors it persists
//! ([`crate::feed`]): each of its cluster's servers' journals (both, so that what either
//! side of a split brain accepted is passed on; merged into the outbox, each change once),
//! and every cluster's outbox (its own included), from which it writes the journal. It
//! serves its outbox to every sync service and its journal to its cluster's servers.
//! It learns where its peers are from the coordinator, through [`crate::link`].
//!
//! A sync service whose disk is lost comes back empty and rebuilds: its cursors are gone,
//! so it reads its servers' journals and every outbox from the start, and its new logs
//! get new ids, so its readers read them from the start too. Duplicates are recognised.

mod follow;
pub mod options;
mod readiness;
mod serve;
pub mod state;

pub use options::{Delivery, SyncOpts};

use crate::Locked;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tsn_datastore::Datastore;
use tsn_protocol::coord::NodeKind;

use self::state::SyncState;
use crate::link::{self, LinkConfig, Membership};
use crate::net::NodeListener;

/// The state, shared by the feeds (blocking work runs with the lock held, off the
/// runtime).
type Core = Arc<Mutex<SyncState>>;

/// Binds the sync service's endpoint on `--bind` and `-p`, with a leaf of the cluster CA
/// in `--cert-dir`; only nodes may connect.
pub fn bind(opts: &SyncOpts) -> anyhow::Result<NodeListener> {
    opts.node.listen(
        &opts.common,
        opts.port,
        tsn_certs::ClientAuth::Required,
        None,
    )
}

/// Runs the sync service on `listener` (see [`bind`]) until `shutdown` resolves (the
/// binary passes Ctrl-C / SIGTERM), then returns once its tasks are joined.
pub async fn run(
    opts: SyncOpts,
    listener: NodeListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let dir = Datastore::new(&opts.node.datastore).role(opts.cluster, NodeKind::Sync);
    dir.create()
        .with_context(|| format!("creating {}", dir.path().display()))?;
    let (endpoint, local) = (listener.endpoint.clone(), listener.local);
    let advertise =
        crate::net::advertise_addr(opts.advertise.as_deref(), local, opts.coordinator.first())
            .await?;
    let metrics = crate::metrics::Metrics::new(crate::metrics::Role::Sync);
    let mut tasks = JoinSet::new();
    opts.node.serve_metrics(&metrics, &mut tasks).await?;
    let (members_tx, mut members) = watch::channel(Membership::default());
    let coord_link = link::start(
        LinkConfig {
            coordinator: opts.coordinator.clone(),
            cluster: opts.cluster,
            kind: NodeKind::Sync,
            advertise: advertise.clone(),
            interval: opts.node.heartbeat(),
            max_clock_offset: opts.clock.max_clock_offset(),
            web: None,
        },
        opts.node.bind,
        listener.client_config,
        members_tx,
        Arc::new(tokio::sync::Notify::new()),
        metrics.heartbeats_missed.clone(),
    )?;
    let clusters = clusters(&opts, &mut members).await?;
    let (cluster, checkpoint_bytes) = (opts.cluster, opts.checkpoint_bytes);
    let max_clock_offset = opts.clock.max_clock_offset();
    let state_dir = dir.clone();
    let core = tokio::task::spawn_blocking(move || {
        SyncState::open(
            state_dir,
            cluster,
            clusters,
            checkpoint_bytes,
            max_clock_offset,
        )
    })
    .await
    .context("loading panicked")?
    .with_context(|| format!("loading {}", dir.path().display()))?;
    let core: Core = Arc::new(Mutex::new(core));

    let commits = Arc::new(tokio::sync::Notify::new());
    tasks.spawn(follow::committer(core.clone(), commits.clone()));
    let sink = follow::Sink {
        core: core.clone(),
        commits,
    };
    let pace = (opts.delivery == Delivery::Period).then(|| Duration::from_millis(opts.period_ms));
    let own = follow::OwnOutbox {
        cluster,
        clusters,
        pace,
        backlog: metrics
            .sync_backlog
            .get_or_create(&crate::metrics::ClusterLabel { cluster })
            .clone(),
    };
    let feeds = follow_feeds(&sink, &endpoint, &members, own, &mut tasks);
    tasks.spawn(readiness::readiness(
        metrics.clone(),
        members.clone(),
        feeds,
        opts.clock.max_clock_offset(),
    ));
    let peers = serve::Peers {
        core: core.clone(),
        cluster,
        clusters,
        pace,
        metrics: metrics.clone(),
    };
    tasks.spawn(crate::net::accept_loop(
        endpoint.clone(),
        metrics.connections.clone(),
        move |conn| peers.clone().serve_connection(conn),
    ));
    tracing::info!(%local, %advertise, cluster, clusters, period_ms = opts.period_ms, delivery = ?opts.delivery, "sync service running");
    opts.node.announce(local)?;

    shutdown.await;
    tracing::info!("shutting down");
    // Closed first: readers of its feeds see the connection closed by a node that
    // stops, not a feed that ended.
    endpoint.close(0u32.into(), b"sync service shutting down");
    tasks.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    // Every writer of the core has stopped with the tasks: the views are complete.
    core.locked()
        .close_cleanly()
        .context("writing clean-shutdown marker")?;
    coord_link.stop().await;
    Ok(())
}

/// The number of clusters, once the coordinator has said it.
async fn clusters(
    opts: &SyncOpts,
    members: &mut watch::Receiver<Membership>,
) -> anyhow::Result<u32> {
    let mut logged = false;
    loop {
        let n = members.borrow_and_update().clusters();
        if n > 0 {
            return Ok(n);
        }
        if !logged {
            tracing::info!(coordinator = %opts.coordinator, "waiting for the coordinator");
            logged = true;
        }
        members
            .changed()
            .await
            .context("coordinator link stopped")?;
    }
}

/// Starts following the feeds this sync service reads; returns whether each has been
/// read to its end. Outboxes are read only once this cluster's servers have been read
/// to their end (or found down): a post is delivered to the local users who follow its
/// author, so the follows must be known first (this matters when the sync service
/// rebuilds from empty). This cluster's own outbox is read in this process.
fn follow_feeds(
    sink: &follow::Sink,
    endpoint: &quinn::Endpoint,
    members: &watch::Receiver<Membership>,
    own: follow::OwnOutbox,
    tasks: &mut JoinSet<()>,
) -> Vec<watch::Receiver<bool>> {
    let (cluster, clusters) = (own.cluster, own.clusters);
    let mut settled = Vec::new();
    for kind in [NodeKind::Primary, NodeKind::Secondary] {
        let (tx, rx) = watch::channel(false);
        settled.push(rx);
        let source = follow::Source {
            sink: sink.clone(),
            endpoint: endpoint.clone(),
            addr: link::PeerAddr::new(members, move |m| m.addr_of(cluster, kind)),
            settled: tx,
        };
        tasks.spawn(follow::follow_server(source, cluster, kind));
    }
    let mut feeds = settled.clone();
    let (tx, rx) = watch::channel(false);
    feeds.push(rx);
    tasks.spawn(follow::follow_own_outbox(
        sink.clone(),
        tx,
        own,
        settled.clone(),
    ));
    for from in (1..=clusters).filter(|c| *c != cluster) {
        let addr = link::PeerAddr::new(members, move |m| m.addr_of(from, NodeKind::Sync));
        let (tx, rx) = watch::channel(false);
        feeds.push(rx);
        let source = follow::Source {
            sink: sink.clone(),
            endpoint: endpoint.clone(),
            addr,
            settled: tx,
        };
        tasks.spawn(follow::follow_outbox(
            source,
            cluster,
            from,
            settled.clone(),
        ));
    }
    feeds
}
