//! How the server's parts are put together at start, and taken apart at the end.

use crate::Locked;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tsn_datastore::{Datastore, RoleDir};
use tsn_protocol::coord::NodeKind;

use super::auth::RateLimit;
use super::cmd::Service;
use super::dispatch::Dispatch;
use super::inbound::{self, InboundHandle};
use super::mirror::{self, Mirror};
use super::model::State;
use super::options::{ServerOpts, ServerType};
use super::recovery::{self, Recovered};
use super::role::{self, Node, Role};
use super::sessions::Sessions;
use super::store::{self, CheckpointTrigger, Store};
use super::{admission, handover, readiness};
use crate::feed::FeedSource;
use crate::hlc::Hlc;
use crate::metrics::Metrics;

/// A server that serves, until [`Running::stop`].
#[derive(Debug)]
pub(super) struct Running {
    node: Node,
    role: Role,
    mirror: Mirror,
    store: Store,
    /// The store's writer task, joined once the store has stopped.
    writer: tokio::task::JoinHandle<()>,
    inbound: InboundHandle,
    endpoint: quinn::Endpoint,
    /// Dials the sync service and the standby (see [`start`]).
    peers: quinn::Endpoint,
    coordinator: crate::common::Coordinators,
    /// The coordinator link, stopped last.
    link: crate::link::Link,
    tasks: JoinSet<()>,
}

/// The handles the parts are given, each only those it needs.
struct Handles {
    node: Node,
    state: Arc<State>,
    clock: Arc<Hlc>,
    role: Role,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    journal_feed: FeedSource,
}

/// Recovers the server's state and starts its tasks on `listener`.
pub(super) async fn start(
    opts: ServerOpts,
    listener: crate::net::NodeListener,
) -> anyhow::Result<Running> {
    let kind = match opts.server_type {
        ServerType::Primary => NodeKind::Primary,
        ServerType::Secondary => NodeKind::Secondary,
    };
    let dir = Datastore::new(&opts.node.datastore).role(opts.cluster, kind);
    dir.create()
        .with_context(|| format!("creating {}", dir.path().display()))?;
    let recovered = recovery::recover(&dir, Hlc::new(opts.clock.max_clock_offset()))?;
    let web = listener
        .web
        .clone()
        .context("the server's endpoint takes browsers: bind it with server::bind")?;
    let local = listener.local;
    let advertise =
        crate::net::advertise_addr(opts.advertise.as_deref(), local, opts.coordinator.first())
            .await?;
    let node = Node {
        cluster: opts.cluster,
        kind,
        dir,
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(super::web::rotate(web.clone()));
    let beat_now = Arc::new(tokio::sync::Notify::new());
    let metrics = Metrics::new(crate::metrics::Role::Server);
    let link = crate::link::LinkConfig {
        coordinator: opts.coordinator.clone(),
        cluster: opts.cluster,
        kind,
        advertise: advertise.clone(),
        interval: opts.node.heartbeat(),
        max_clock_offset: opts.clock.max_clock_offset(),
        web: Some(web.clone()),
    };
    let (members_tx, members) = watch::channel(crate::link::Membership::default());
    let link = crate::link::start(
        link,
        opts.node.bind,
        listener.client_config.clone(),
        members_tx,
        beat_now.clone(),
        metrics.heartbeats_missed.clone(),
    )?;
    // The sync service's feed and the mirror to the standby are dialled from a socket of
    // their own: on the listening one their datagrams would share a receive buffer with
    // every client's, and when a busy server's buffer overflows the kernel drops what
    // comes next, so that QUIC slows the feed and the mirror as if the network were
    // congested (the sync service's feed then ran at half the rate it is written).
    let peers = crate::net::dialling_endpoint(opts.node.bind, listener.client_config)?;
    let net = Net {
        link,
        endpoint: listener.endpoint,
        peers,
        members,
        beat_now,
    };
    let running = serve(&opts, node, recovered, metrics, net, tasks).await?;
    tracing::info!(%local, %advertise, cluster = opts.cluster, kind = kind.as_str(), ack = ?opts.ack, "server listening");
    opts.node.announce(local)?;
    Ok(running)
}

/// The certificate shown to browsers: the operator's, or one of the server's own for
/// its addresses.
pub(super) fn web_certs(opts: &ServerOpts) -> anyhow::Result<tsn_certs::WebCerts> {
    Ok(match (&opts.web_cert, &opts.web_key) {
        (Some(cert), Some(key)) => tsn_certs::WebCerts::from_pem_files(cert, key)
            .context("loading --web-cert and --web-key")?,
        _ => {
            let mut names = vec!["localhost".to_string(), opts.node.bind.to_string()];
            if let Some(a) = &opts.advertise {
                names.push(crate::server::web::host_name(a));
            }
            tsn_certs::WebCerts::self_signed(&names).context("making the web certificate")?
        }
    })
}

/// What the server talks through.
struct Net {
    link: crate::link::Link,
    endpoint: quinn::Endpoint,
    peers: quinn::Endpoint,
    members: watch::Receiver<crate::link::Membership>,
    beat_now: Arc<tokio::sync::Notify>,
}

/// Starts the server's tasks over its recovered state.
async fn serve(
    opts: &ServerOpts,
    node: Node,
    recovered: Recovered,
    metrics: Arc<Metrics>,
    net: Net,
    mut tasks: JoinSet<()>,
) -> anyhow::Result<Running> {
    let journal = &recovered.journal;
    let (journal_len, journal_feed) =
        FeedSource::new(journal.segments(), recovered.journal_id, journal.len());
    let journal_feed = with_transfer(journal_feed, &node.dir);
    metrics.journal_bytes.set(journal.len() as i64);
    opts.node.serve_metrics(&metrics, &mut tasks).await?;
    let admission = admission::Admission::new(std::time::Duration::from_millis(opts.admit_lag_ms));
    let h = Handles {
        node,
        state: Arc::new(State::new(recovered.model)),
        clock: Arc::new(recovered.clock),
        role: Role::default(),
        sessions: Arc::new(Sessions::new(
            recovered.inbound.log_id(),
            admission,
            metrics.clone(),
        )),
        metrics,
        journal_feed,
    };
    let trigger = Arc::new(CheckpointTrigger::new(
        opts.checkpoint_bytes,
        recovered.inbound.len(),
        recovered.checkpoint.other,
    ));
    let inbound = Arc::new(Mutex::new(recovered.inbound));
    tasks.spawn(role::follow(
        h.role.clone(),
        h.node.cluster,
        h.metrics.clone(),
        net.members.clone(),
    ));
    let data = store::Data {
        node: h.node.clone(),
        state: h.state.clone(),
        clock: h.clock.clone(),
        journal_feed: h.journal_feed.clone(),
        trigger,
    };
    let settled = spawn_inbound(&h, &data, &inbound, &net, &mut tasks);
    let store_env = store::Env {
        data,
        metrics: h.metrics.clone(),
        ack: opts.ack,
    };
    let (mirror_tx, mirror_rx) = mpsc::channel(store::WRITE_QUEUE);
    let (store, writer) = store::spawn(store::Parts {
        env: store_env,
        journal: recovered.journal,
        inbound: Some(inbound.clone()),
        mirror_tx,
        len: journal_len,
        last: recovered.checkpoint,
    })
    .context("starting the journal writer")?;
    let mirror = mirror_of(&h, opts, &store, &net);
    tasks.spawn(readiness::readiness(
        readiness::Inputs {
            role: h.role.clone(),
            mirroring: mirror.up(),
            members: net.members.clone(),
            settled,
            max_clock_offset: opts.clock.max_clock_offset(),
        },
        h.metrics.clone(),
    ));
    tasks.spawn(mirror::run_active(
        mirror.clone(),
        net.peers.clone(),
        mirror_rx,
    ));
    spawn_accept(&h, opts, &store, &mirror, &net.endpoint, &mut tasks);
    Ok(Running {
        node: h.node,
        role: h.role,
        mirror,
        store,
        writer,
        inbound,
        endpoint: net.endpoint,
        peers: net.peers,
        link: net.link,
        coordinator: opts.coordinator.clone(),
        tasks,
    })
}

/// The mirror between this server and the other of its cluster.
fn mirror_of(h: &Handles, opts: &ServerOpts, store: &Store, net: &Net) -> Mirror {
    Mirror::new(mirror::Parts {
        node: h.node.clone(),
        role: h.role.clone(),
        journal: h.journal_feed.clone(),
        store: store.clone(),
        beat_now: net.beat_now.clone(),
        metrics: h.metrics.clone(),
        ack: opts.ack,
    })
}

/// The journal's feed, which gives a reader that lost its disk a state transfer.
fn with_transfer(feed: FeedSource, dir: &RoleDir) -> FeedSource {
    let dir = dir.clone();
    feed.with_transfer(Arc::new(move || recovery::journal_transfer(&dir)))
}

/// Starts reading the sync service's journal; the receiver tells once it was read to
/// its end.
fn spawn_inbound(
    h: &Handles,
    data: &store::Data,
    inbound: &InboundHandle,
    net: &Net,
    tasks: &mut JoinSet<()>,
) -> watch::Receiver<bool> {
    let (settled_tx, settled) = watch::channel(false);
    let cluster = h.node.cluster;
    let env = inbound::Env {
        data: data.clone(),
        sessions: h.sessions.clone(),
    };
    tasks.spawn(inbound::run(
        env,
        inbound.clone(),
        net.peers.clone(),
        crate::link::PeerAddr::new(&net.members, move |m| m.addr_of(cluster, NodeKind::Sync)),
        settled_tx,
    ));
    settled
}

/// Starts accepting connections: clients' and other nodes'.
fn spawn_accept(
    h: &Handles,
    opts: &ServerOpts,
    store: &Store,
    mirror: &Mirror,
    endpoint: &quinn::Endpoint,
    tasks: &mut JoinSet<()>,
) {
    let service = Arc::new(Service {
        node: h.node.clone(),
        state: h.state.clone(),
        clock: h.clock.clone(),
        store: store.clone(),
        role: h.role.clone(),
        sessions: h.sessions.clone(),
        limit: RateLimit::new(opts.user_rate),
        metrics: h.metrics.clone(),
    });
    let dispatch = Dispatch {
        service,
        mirror: mirror.clone(),
        journal_feed: h.journal_feed.clone(),
        origins: super::web::Origins::new(&opts.web_origin, &opts.coordinator),
    };
    tasks.spawn(crate::net::accept_loop(
        endpoint.clone(),
        h.metrics.connections.clone(),
        move |conn| dispatch.clone().serve_connection(conn),
    ));
}

impl Running {
    /// Stops as on SIGTERM: a hand-over if this server is active, every task joined,
    /// everything queued written, and the clean marker once the view files are complete.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        if self.role.is_active() {
            handover::hand_over(
                &self.node,
                &self.role,
                &self.mirror,
                &self.endpoint,
                &self.coordinator,
            )
            .await;
        }
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.peers.close(0u32.into(), b"server shutting down");
        self.tasks.shutdown().await;
        // Everything queued reaches the journal and the view files before "clean" is said.
        let views_complete = self.store.stop().await;
        if let Err(e) = self.writer.await {
            tracing::error!("the journal writer failed: {e}");
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            self.endpoint.wait_idle().await;
            self.peers.wait_idle().await;
        })
        .await;
        self.link.stop().await;
        mark_clean(&self.node.dir, &self.inbound, views_complete)
    }
}

/// Flushes what was written but not yet flushed, and writes the clean-shutdown marker if
/// every view file is complete.
fn mark_clean(dir: &RoleDir, inbound: &InboundHandle, views_complete: bool) -> anyhow::Result<()> {
    // A write of the received feed may still be running on a blocking thread: wait for
    // it, and flush what was written but not yet flushed.
    let mut inbound = inbound.locked();
    inbound
        .flush()
        .with_context(|| format!("flushing {}", dir.received().display()))?;
    // The flusher may not have flushed the last writes yet: flush before saying "clean".
    std::fs::File::open(dir.journal())
        .and_then(|f| f.sync_data())
        .with_context(|| format!("flushing {}", dir.journal().display()))?;
    if views_complete && inbound.views_complete() {
        tsn_datastore::write_atomic(&dir.clean_marker(), b"", tsn_datastore::Durability::Sync)
            .context("writing clean-shutdown marker")?;
    } else {
        tracing::warn!(
            "no clean-shutdown marker: the next start completes the view files from the logs"
        );
    }
    Ok(())
}
