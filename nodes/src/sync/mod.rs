//! The follower synchroniser (`tsn_sync_service`), one per cluster.
//!
//! # Layout
//! - [`core`]: its state and the one writer of its role directory: the outbox (this
//!   cluster's changes) and the journal (what it gives this cluster's servers).
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

pub mod state;

use crate::Locked;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tsn_datastore::Datastore;
use tsn_datastore::DatastoreError;
use tsn_protocol::coord::NodeKind;
use tsn_protocol::mirror::MirrorMsg;
use tsn_protocol::sync::{Cursor, FeedLog, SyncReply, SyncRequest};
use tsn_protocol::{ClusterId, Record};

use self::state::SyncState;
use crate::common::{CommonOpts, NodeOpts};
use crate::feed::{self, Batch, FeedConfig};
use crate::link::{self, LinkConfig, Membership};

/// The TSN sync service of one cluster: passes users, follows and posts between this
/// cluster's servers and every cluster's sync service, as soon as they are written.
#[derive(Debug, Parser)]
#[command(name = "tsn_sync_service", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_NODE)))]
#[command(mut_arg("heartbeat_ms", |a| a.help(crate::common::HEARTBEAT_NODE)))]
pub struct SyncOpts {
    /// Coordinator address, <coordIP>:<coordPort>; for a coordinator group, every
    /// member's, comma-separated (any member answers; one that does not is skipped).
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_coordinators, value_name = "HOST:PORT[,...]", env = "TSN_COORDINATOR")]
    pub coordinator: crate::common::Coordinators,

    /// Cluster id this sync service serves (1..=clusters).
    #[arg(short = 's', long = "cluster", value_parser = clap::value_parser!(u32).range(1..), env = "TSN_CLUSTER")]
    pub cluster: u32,

    /// UDP port to listen on for servers and other sync services (0 picks a free one).
    #[arg(short = 'p', long = "port", env = "TSN_PORT")]
    pub port: u16,

    /// Longest a change may wait before it is passed on, in milliseconds. With the default
    /// `--delivery event`, changes travel as soon as they are written (batched while a
    /// batch is in flight), well within this; with `--delivery period`, they wait for
    /// the next tick of this period at each hop, as in the original system.
    #[arg(short = 'q', long = "period", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..), env = "TSN_PERIOD_MS")]
    pub period_ms: u64,

    /// `event`: pass each change on as soon as it is written; `period`: pass changes on
    /// every -q milliseconds (the original's behaviour, for comparison).
    #[arg(long, value_enum, default_value = "event", env = "TSN_DELIVERY")]
    pub delivery: Delivery,

    /// Address servers and other sync services should dial (host:port); default as for
    /// tsn_server.
    #[arg(long, value_name = "HOST:PORT", env = "TSN_ADVERTISE")]
    pub advertise: Option<String>,

    /// Take a checkpoint each time the outbox and the journal together grew by this many
    /// bytes (and by at least the size of the last checkpoint): start-up then replays at
    /// most about this much, and older segments are deleted once every reader has read
    /// them.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..), env = "TSN_CHECKPOINT_BYTES")]
    pub checkpoint_bytes: u64,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub clock: crate::common::ClockOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// When the sync service passes changes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    /// As soon as they are written.
    Event,
    /// Every `-q` milliseconds.
    Period,
}

/// The state, shared by the feeds (blocking work runs with the lock held, off the
/// runtime).
type Core = Arc<Mutex<SyncState>>;

/// Runs the sync service until `shutdown` resolves (the binary passes Ctrl-C / SIGTERM).
pub async fn run(
    opts: SyncOpts,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ds = Datastore::new(&opts.node.datastore);
    let dir = ds.role(opts.cluster, NodeKind::Sync);
    dir.create()
        .with_context(|| format!("creating {}", dir.path().display()))?;

    let crate::net::NodeListener {
        endpoint,
        local,
        client_config,
    } = crate::net::node_listener(
        &opts.common,
        &opts.node,
        opts.port,
        tsn_certs::ClientAuth::Required,
    )?;
    let advertise =
        crate::net::advertise_addr(opts.advertise.as_deref(), local, opts.coordinator.first())
            .await?;
    let metrics = crate::metrics::Metrics::new();
    opts.node.serve_metrics(&metrics).await?;

    let mut tasks = JoinSet::new();
    let (members_tx, mut members) = watch::channel(Membership::default());
    let coord_link = link::start(
        LinkConfig {
            coordinator: opts.coordinator.clone(),
            cluster: opts.cluster,
            kind: NodeKind::Sync,
            advertise: advertise.clone(),
            interval: opts.node.heartbeat(),
            max_clock_offset: opts.clock.max_clock_offset(),
        },
        opts.node.bind,
        client_config,
        members_tx,
        Arc::new(tokio::sync::Notify::new()),
        metrics.heartbeats_missed.clone(),
    )?;
    // The number of clusters comes from the coordinator.
    let clusters = {
        let mut logged = false;
        loop {
            let n = members.borrow_and_update().clusters();
            if n > 0 {
                break n;
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
    };

    let dir2 = dir.clone();
    let cluster = opts.cluster;
    let checkpoint_bytes = opts.checkpoint_bytes;
    let max_clock_offset = opts.clock.max_clock_offset();
    let core = tokio::task::spawn_blocking(move || {
        SyncState::open(dir2, cluster, clusters, checkpoint_bytes, max_clock_offset)
    })
    .await
    .context("loading panicked")?
    .with_context(|| format!("loading {}", dir.path().display()))?;
    let core: Core = Arc::new(Mutex::new(core));

    // Feeds this sync service reads. Outboxes are read only once this cluster's servers
    // have been read to their end (or found down): a post is delivered to the local
    // users who follow its author, so the follows must be known first (this matters
    // when the sync service rebuilds from empty).
    let mut settled = Vec::new();
    let mut outboxes_settled = Vec::new();
    for kind in [NodeKind::Primary, NodeKind::Secondary] {
        let (tx, rx) = watch::channel(false);
        settled.push(rx);
        tasks.spawn(follow_server(
            core.clone(),
            endpoint.clone(),
            link::peer_addr(&members, move |m| m.addr_of(cluster, kind)),
            cluster,
            kind,
            tx,
        ));
    }
    for from in 1..=clusters {
        let own = advertise.clone();
        let addr = link::peer_addr(&members, move |m| {
            if from == cluster {
                Some(own.clone())
            } else {
                m.addr_of(from, NodeKind::Sync)
            }
        });
        let (tx, rx) = watch::channel(false);
        outboxes_settled.push(rx);
        tasks.spawn(follow_outbox(
            core.clone(),
            endpoint.clone(),
            addr,
            cluster,
            from,
            settled.clone(),
            tx,
        ));
    }
    let mut feeds = settled.clone();
    feeds.extend(outboxes_settled);
    tasks.spawn(readiness(
        metrics.clone(),
        members.clone(),
        feeds,
        opts.clock.max_clock_offset(),
    ));
    let pace = (opts.delivery == Delivery::Period).then(|| Duration::from_millis(opts.period_ms));
    let accept = {
        let core = core.clone();
        let metrics = metrics.clone();
        tokio::spawn(crate::net::accept_loop(
            endpoint.clone(),
            metrics.connections.clone(),
            move |conn| serve_peer(conn, core.clone(), cluster, clusters, pace, metrics.clone()),
        ))
    };
    tracing::info!(%local, %advertise, cluster, clusters, period_ms = opts.period_ms, delivery = ?opts.delivery, "sync service running");
    opts.node.announce(local)?;

    shutdown.await;
    tracing::info!("shutting down");
    accept.abort();
    tasks.shutdown().await;
    endpoint.close(0u32.into(), b"sync service shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    // Every writer of the core has stopped with the tasks: the views are complete.
    core.locked()
        .close_cleanly()
        .context("writing clean-shutdown marker")?;
    coord_link.stop().await;
    Ok(())
}

/// Keeps `/ready` true exactly while this sync service is registered, has read each of
/// its feeds (its servers' journals, every cluster's outbox) to the end since it learned
/// where that feed's writer is, or found it down, and its clock is within
/// `max_clock_offset` of the coordinator's.
async fn readiness(
    metrics: Arc<crate::metrics::Metrics>,
    mut members: watch::Receiver<Membership>,
    mut feeds: Vec<watch::Receiver<bool>>,
    max_clock_offset: std::time::Duration,
) {
    metrics.set_ready(Some("not registered with the coordinator yet".into()));
    if members.wait_for(|m| m.beat.is_some()).await.is_err() {
        return;
    }
    let mut was_ready = false;
    loop {
        let behind = feeds
            .iter_mut()
            .map(|f| *f.borrow_and_update())
            .filter(|done| !done)
            .count();
        let why = match members.borrow_and_update().clock_off(max_clock_offset) {
            Some(off) => Some(off),
            None => (behind > 0).then(|| format!("{behind} of its feeds not read to the end yet")),
        };
        let ready = why.is_none();
        metrics.set_ready(why);
        if ready && !was_ready {
            tracing::info!("ready");
        }
        was_ready = ready;
        let changes = feeds.iter_mut().map(|f| Box::pin(f.changed()));
        tokio::select! {
            r = futures_select_all(changes) => if r.is_err() { return },
            r = members.changed() => if r.is_err() { return },
        }
    }
}

/// Waits for the first of `futs` to finish.
async fn futures_select_all<F>(futs: impl Iterator<Item = F>) -> Result<(), watch::error::RecvError>
where
    F: std::future::Future<Output = Result<(), watch::error::RecvError>> + Unpin,
{
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(r) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(r);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Runs `f` on the core off the runtime.
async fn with_core<T: Send + 'static>(
    core: &Core,
    f: impl FnOnce(&mut SyncState) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let core = core.clone();
    tokio::task::spawn_blocking(move || f(&mut core.locked()))
        .await
        .context("sync state task panicked")
}

/// Follows one server's journal into the outbox.
async fn follow_server(
    core: Core,
    endpoint: quinn::Endpoint,
    addr: watch::Receiver<Option<String>>,
    cluster: ClusterId,
    kind: NodeKind,
    settled: feed::Settled,
) {
    let key = state::server_key(kind);
    let open = feed::opener(
        cluster,
        (cluster, NodeKind::Sync),
        FeedLog::ServerJournal,
        MirrorMsg::Subscribe,
    );
    let what = format!("{} journal", kind.as_str());
    follow_into(
        core,
        endpoint,
        addr,
        what,
        key,
        settled,
        open,
        SyncState::absorb,
    )
    .await;
}

/// Follows one cluster's outbox into the journal.
async fn follow_outbox(
    core: Core,
    endpoint: quinn::Endpoint,
    addr: watch::Receiver<Option<String>>,
    cluster: ClusterId,
    from_cluster: ClusterId,
    servers_settled: Vec<watch::Receiver<bool>>,
    settled: feed::Settled,
) {
    for mut s in servers_settled {
        if s.wait_for(|v| *v).await.is_err() {
            return;
        }
    }
    let key = state::outbox_key(from_cluster);
    let open = feed::opener(
        from_cluster,
        (cluster, NodeKind::Sync),
        FeedLog::SyncOutbox,
        SyncRequest::Subscribe,
    );
    let what = format!("cluster {from_cluster} outbox");
    follow_into(
        core,
        endpoint,
        addr,
        what,
        key,
        settled,
        open,
        SyncState::deliver,
    )
    .await;
}

/// Batches of at most this many records may be taken, their flush included, on the
/// runtime's thread (see [`follow_into`]); at low load a batch holds a change or two.
const FLUSH_INLINE_RECORDS: usize = 4;

/// What a sync service does with a batch of one of the feeds it reads.
type Step = fn(&mut SyncState, Vec<Record>) -> Result<usize, DatastoreError>;

/// Follows one feed for ever, handing each batch to `step` on the core, then saving the
/// feed's cursor (`key`).
#[allow(clippy::too_many_arguments)]
async fn follow_into(
    core: Core,
    endpoint: quinn::Endpoint,
    addr: watch::Receiver<Option<String>>,
    what: String,
    key: String,
    settled: feed::Settled,
    open: impl Fn(Cursor) -> Vec<u8>,
    step: Step,
) {
    let from = core.locked().cursor(&key);
    let apply = |batch: Batch| {
        let core = core.clone();
        let key = key.clone();
        let what = what.clone();
        async move {
            // A small batch, with the core free, is taken on this thread, its flush
            // included: at low load a hand-off to a blocking thread and the wake back
            // cost about as much as the flush, and nothing else is waiting. The cursor
            // and any checkpoint follow on a blocking thread, once the feeds of what was
            // just published have had their turn. Larger batches (a busy cluster, a
            // reader catching up) go to a blocking thread whole, so that the feeds keep
            // being read meanwhile.
            let (entries, next, inline) = (batch.records, batch.next, batch.inline);
            let mut waiting = Some(entries);
            let mut n = 0;
            if inline {
                if let Ok(mut c) = core.try_lock() {
                    let entries = waiting.take().expect("checked above");
                    n = step(&mut c, entries)?;
                }
                tokio::task::yield_now().await;
            }
            n += with_core(&core, move |c| {
                let mut n = 0;
                if let Some(entries) = waiting {
                    n = step(c, entries)?;
                }
                c.save_cursor(&key, next)?;
                c.maybe_checkpoint();
                Ok::<_, DatastoreError>(n)
            })
            .await??;
            if n > 0 {
                tracing::debug!(feed = %what, new = n, "records taken");
            }
            Ok(())
        }
    };
    let config = FeedConfig {
        inline: FLUSH_INLINE_RECORDS,
        ..FeedConfig::default()
    };
    feed::follow(config, &what, endpoint, addr, from, settled, open, apply).await;
}

/// Serves feeds to a peer: its outbox to sync services, its journal to its servers.
async fn serve_peer(
    conn: quinn::Connection,
    core: Core,
    cluster: ClusterId,
    clusters: u32,
    pace: Option<Duration>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let core = core.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let Some(SyncRequest::Subscribe(sub)) =
                crate::net::first_msg::<SyncRequest>(&mut send, &mut recv, "feed request").await
            else {
                return;
            };
            let (outbox, journal) = {
                let c = core.locked();
                (c.outbox_source(), c.journal_source())
            };
            let cfg = FeedConfig::default();
            let result = match sub.log {
                _ if sub.cluster != cluster => Err(format!(
                    "this sync service serves cluster {cluster}, not {}",
                    sub.cluster
                )),
                FeedLog::SyncOutbox => {
                    let dest = sub.reader;
                    let backlog = metrics
                        .sync_backlog
                        .get_or_create(&crate::metrics::ClusterLabel { cluster: dest })
                        .clone();
                    feed::serve(
                        &cfg,
                        outbox,
                        &sub,
                        move |r| {
                            r.change()
                                .is_some_and(|c| SyncState::wanted(c, dest, clusters))
                        },
                        pace,
                        |left| {
                            backlog.set(left as i64);
                        },
                        &mut send,
                        recv,
                    )
                    .await
                    .map_err(|e| format!("{e:#}"))
                }
                FeedLog::SyncJournal if sub.reader == cluster => {
                    feed::serve(&cfg, journal, &sub, |_| true, pace, |_| {}, &mut send, recv)
                        .await
                        .map_err(|e| format!("{e:#}"))
                }
                FeedLog::SyncJournal => Err(format!(
                    "the journal of cluster {cluster} is for its own servers, not cluster {}",
                    sub.reader
                )),
                FeedLog::ServerJournal => Err("a sync service has no server journal".into()),
            };
            if let Err(why) = result {
                tracing::debug!(reader = sub.reader, log = ?sub.log, "feed ended: {why}");
                let _ = tsn_protocol::write_msg(&mut send, &SyncReply::Refused(why)).await;
                let _ = send.finish();
            }
        });
    }
}
