//! A cluster's server (`tsn_server`): primary or secondary.
//!
//! # Layout
//! - [`model`]: the in-memory state, rebuilt on start from the last [`checkpoint`] and
//!   the records of this server's own logs after it.
//! - [`store`]: the journal writer (group commit, views, hand-off to the mirror, the
//!   journal's feed).
//! - [`role`]: learns from the coordinator (through [`crate::link`]) whether this server
//!   is active, and who its peers are.
//! - [`mirror`]: the active server streams its changes to the standby; the standby
//!   applies them. Both sides first exchange what the other lacks.
//! - [`inbound`]: reads the sync service's journal as a feed into this server's own role
//!   directory, and pushes deliveries to open timelines.
//! - [`commands`]: one client command per stream.
//! - [`timeline`]: the long-lived timeline stream of a client session.
//! - [`options`]: the command line.
//! - `dispatch`: what each connection and stream is for (client commands, mirror,
//!   the journal's feed, an operator's request).
//! - `handover`: a planned stop of the active server hands the cluster over first.
//! - `readiness`: what `/ready` says.
//!
//! The server reads and writes only its own role directory; its sync service reads its
//! journal as a feed (a node stream opened with [`MirrorMsg::Subscribe`]).

pub mod admission;
pub mod commands;
mod dispatch;
mod handover;
pub mod inbound;
pub mod mirror;
pub mod model;
pub mod options;
mod readiness;
pub mod role;
pub mod store;
pub mod timeline;

use crate::Locked;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{mpsc, watch as tokio_watch};
use tsn_datastore::{Datastore, RoleDir, SegmentedLog};
use tsn_protocol::coord::NodeKind;
use tsn_protocol::{ClusterId, Post, UserId};

use crate::checkpoint;
use crate::feed::FeedSource;
use model::{Model, State};
pub use options::{AckMode, ServerOpts, ServerType};
pub use role::RoleState;

/// A live timeline session's inbox: entries with their numbers.
#[derive(Debug)]
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<(u64, Post)>,
}

/// Entries buffered for one timeline session; a session that falls this far behind is
/// closed (its client reconnects and gets the backlog again). Two of the sync service's
/// largest batches fit, all for one user: a burst is absorbed, a client that keeps
/// reading slower than its timeline grows is not.
pub const SESSION_QUEUE: usize = 2 * crate::feed::FeedConfig::DEFAULT.merged;

/// State shared by the server's tasks.
#[derive(Debug)]
pub struct Shared {
    /// This server's cluster.
    pub cluster: ClusterId,
    /// Primary or secondary.
    pub kind: NodeKind,
    /// This server's role directory.
    pub dir: RoleDir,
    /// The journal, as a feed for the sync service.
    pub journal_feed: FeedSource,
    /// What this server knows, in memory.
    pub state: State,
    /// Timestamps of new changes (advanced by every change stored or received).
    pub clock: crate::hlc::Hlc,
    /// The id of the sync-service journal whose numbers timeline positions use.
    pub sync_log: AtomicU64,
    /// Makes the coordinator link beat at once (a hand-over is on its way).
    pub beat_now: Arc<tokio::sync::Notify>,
    /// Told by the mirror once the standby has been told of a hand-over.
    pub handed_over: tokio::sync::Notify,
    /// What an operator sees.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Posts, follows and unfollows per user and second (`--user-rate`).
    pub user_rate: u32,
    limiter: governor::DefaultKeyedRateLimiter<UserId>,
    /// Active or standby, as last told by the coordinator.
    pub role: tokio_watch::Sender<RoleState>,
    /// When acknowledgements are sent.
    pub ack: AckMode,
    /// How much the logs grow between checkpoints (`--checkpoint-bytes`).
    pub checkpoint_bytes: u64,
    /// The logical length of `received.data` (for the checkpoint's trigger).
    pub received_len: AtomicU64,
    /// The `received.data` offset the last checkpoint covers.
    pub received_checkpointed: AtomicU64,
    /// Told by the received feed's writer when it has written `--checkpoint-bytes` since
    /// the last checkpoint.
    pub checkpoint_due: tokio::sync::Notify,
    /// Whether new posts wait for delivery to catch up (`--admit-lag-ms`).
    pub admission: admission::Admission,
    /// Whether the mirror stream with the other server is up (state exchanged).
    pub mirroring: tokio_watch::Sender<bool>,
    subs: Mutex<HashMap<UserId, Vec<Subscriber>>>,
    next_sub: AtomicU64,
}

impl Shared {
    /// Counts one post, follow or unfollow of `user` against its rate limit.
    pub fn limit(&self, user: UserId) -> Result<(), tsn_protocol::client::CommandError> {
        self.limiter.check_key(&user).map_err(|_| {
            tracing::debug!(user, "over the per-user rate limit");
            tsn_protocol::client::CommandError::RateLimited {
                per_second: self.user_rate,
            }
        })
    }

    /// Everything this cluster's servers stored that this server still has: the last
    /// checkpoint's users, follow edges and keys, then the journal segments kept (what
    /// the mirror exchange sends the other server, and what the view files of this
    /// server's own changes are rebuilt from).
    pub fn own_records(&self) -> anyhow::Result<Vec<tsn_datastore::Record>> {
        let mut records = checkpoint::load(&self.dir)?
            .map(|cp| cp.state.own)
            .unwrap_or_default();
        let segments = self.journal_feed.segments();
        records.extend(SegmentedLog::read_from(&segments, segments.start())?);
        Ok(records)
    }

    /// Current role.
    pub fn role(&self) -> RoleState {
        self.role.borrow().clone()
    }

    /// Registers a timeline session of `user`.
    pub fn subscribe(&self, user: UserId) -> (u64, mpsc::Receiver<(u64, Post)>) {
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.metrics.timeline_streams.inc();
        self.subs
            .locked()
            .entry(user)
            .or_default()
            .push(Subscriber { id, tx });
        (id, rx)
    }

    /// Removes a timeline session.
    pub fn unsubscribe(&self, user: UserId, id: u64) {
        self.metrics.timeline_streams.dec();
        let mut subs = self.subs.locked();
        if let Some(v) = subs.get_mut(&user) {
            v.retain(|s| s.id != id);
            if v.is_empty() {
                subs.remove(&user);
            }
        }
    }

    /// Number of open timeline sessions.
    pub fn sessions(&self) -> usize {
        self.subs.locked().values().map(Vec::len).sum()
    }

    /// Closes every timeline session (each client reopens from its last position).
    pub fn close_sessions(&self) {
        self.subs.locked().clear();
    }

    /// Pushes new timeline entries to the open sessions of their users.
    pub fn publish(&self, entries: Vec<model::TimelineEntry>) {
        if entries.is_empty() {
            return;
        }
        let now = crate::now_us();
        if let Some(lag) = self
            .admission
            .observe(entries.iter().map(|(to, _, p)| (*to, p)), now)
        {
            self.metrics.delivery_lag.set(lag.as_secs_f64());
        }
        let mut subs = self.subs.locked();
        for (user, seq, post) in entries {
            if let Some(v) = subs.get_mut(&user) {
                let age = now.saturating_sub(post.ts_us).max(0) as f64 / 1e6;
                self.metrics.delivery_latency.observe(age);
                v.retain(|s| match s.tx.try_send((seq, post.clone())) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(
                            user,
                            "timeline session fell behind: its client reopens it from where it was"
                        );
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
            }
        }
    }
}

#[cfg(test)]
impl Shared {
    /// A standby primary of cluster 1 whose datastore is under `root`.
    pub fn for_test(root: &std::path::Path, ack: AckMode) -> Shared {
        let ds = Datastore::new(root);
        let dir = ds.role(1, NodeKind::Primary);
        dir.create().expect("role directory");
        Shared {
            cluster: 1,
            kind: NodeKind::Primary,
            journal_feed: FeedSource::new(tsn_datastore::Segments::single(dir.journal()), 1, 0).1,
            dir,
            state: State::default(),
            clock: crate::hlc::Hlc::new(std::time::Duration::from_millis(500)),
            sync_log: AtomicU64::new(0),
            beat_now: Arc::new(tokio::sync::Notify::new()),
            handed_over: tokio::sync::Notify::new(),
            metrics: crate::metrics::Metrics::new(),
            user_rate: 1000,
            limiter: limiter(1000),
            role: tokio_watch::channel(RoleState::default()).0,
            ack,
            checkpoint_bytes: u64::MAX,
            received_len: AtomicU64::new(0),
            received_checkpointed: AtomicU64::new(0),
            checkpoint_due: tokio::sync::Notify::new(),
            admission: admission::Admission::new(std::time::Duration::ZERO),
            mirroring: tokio_watch::channel(false).0,
            subs: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(0),
        }
    }
}

/// A per-user limiter of `per_second` a second, with bursts of as many.
fn limiter(per_second: u32) -> governor::DefaultKeyedRateLimiter<UserId> {
    let n = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_second(n))
}

/// Runs a server until `shutdown` resolves (the binary passes Ctrl-C / SIGTERM), then
/// stops as on SIGTERM: a hand-over if it is active, its tasks joined, the clean marker.
pub async fn run(
    opts: ServerOpts,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let kind = match opts.server_type {
        ServerType::Primary => NodeKind::Primary,
        ServerType::Secondary => NodeKind::Secondary,
    };
    let ds = Datastore::new(&opts.node.datastore);
    let dir = ds.role(opts.cluster, kind);
    dir.create()
        .with_context(|| format!("creating {}", dir.path().display()))?;

    // Recover: the last checkpoint, then the logs after it; the view files are completed
    // from those records unless the last exit was clean.
    let started = std::time::Instant::now();
    let cp = checkpoint::load(&dir)?.unwrap_or_default();
    let (journal, records) = SegmentedLog::open(&dir.journal(), cp.journal)
        .with_context(|| format!("loading journal {}", dir.journal().display()))?;
    let journal_id = tsn_datastore::log_id(&dir.journal())
        .with_context(|| format!("reading the id of {}", dir.journal().display()))?;
    let (inbound, received) = inbound::Inbound::open(&dir, cp.other)
        .with_context(|| format!("loading {}", dir.received().display()))?;
    let clean = dir.clean_marker().exists();
    if clean {
        std::fs::remove_file(dir.clean_marker()).context("removing clean-shutdown marker")?;
    } else if !records.is_empty() || !received.is_empty() {
        // Views are derived from the logs: failing to complete them (a full disk, say)
        // is worth an error in the log, not a refusal to serve.
        let logs = [
            (crate::views::Side::Server, records.as_slice()),
            (crate::views::Side::Received, received.as_slice()),
        ];
        match crate::views::reconcile(&dir, &logs) {
            Ok(n) => tracing::info!(files = n, "previous exit was not clean: completed the view files from the records after the last checkpoint"),
            Err(e) => tracing::error!("previous exit was not clean and completing the view files failed; serving from memory: {e}"),
        }
    }
    let mut model = Model::default();
    let clock = crate::hlc::Hlc::new(opts.clock.max_clock_offset());
    model.restore(&cp.state);
    clock.observe(cp.clock);
    for r in &records {
        if let tsn_datastore::Record::Change(c) = r {
            clock.observe_change(c);
            model.apply_own(c);
        }
    }
    for r in &received {
        observe_record(&clock, r);
        model.apply_sync(r);
    }
    tracing::info!(
        checkpoint_journal = cp.journal,
        checkpoint_received = cp.other,
        journal = records.len(),
        received = received.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "state loaded: the last checkpoint and the records after it"
    );
    drop(records);
    drop(received);

    let crate::net::NodeListener {
        endpoint,
        local,
        client_config,
    } = crate::net::node_listener(
        &opts.common,
        &opts.node,
        opts.port,
        tsn_certs::ClientAuth::Optional,
    )?;
    let advertise =
        crate::net::advertise_addr(opts.advertise.as_deref(), local, opts.coordinator.first())
            .await?;

    let (journal_len, journal_feed) =
        FeedSource::new(journal.segments(), journal_id, journal.len());
    let journal_feed = {
        let dir = dir.clone();
        journal_feed.with_transfer(Arc::new(move || journal_transfer(&dir)))
    };
    let received_len = inbound.len();
    let metrics = crate::metrics::Metrics::new();
    metrics.journal_bytes.set(journal.len() as i64);
    opts.node.serve_metrics(&metrics).await?;
    let (role_tx, _) = tokio_watch::channel(RoleState::default());
    let shared = Arc::new(Shared {
        cluster: opts.cluster,
        kind,
        dir: dir.clone(),
        journal_feed,
        state: State::new(model),
        clock,
        sync_log: AtomicU64::new(inbound.log_id()),
        beat_now: Arc::new(tokio::sync::Notify::new()),
        handed_over: tokio::sync::Notify::new(),
        metrics: metrics.clone(),
        user_rate: opts.user_rate,
        limiter: limiter(opts.user_rate),
        role: role_tx,
        ack: opts.ack,
        checkpoint_bytes: opts.checkpoint_bytes,
        received_len: AtomicU64::new(received_len),
        received_checkpointed: AtomicU64::new(cp.other),
        checkpoint_due: tokio::sync::Notify::new(),
        admission: admission::Admission::new(std::time::Duration::from_millis(opts.admit_lag_ms)),
        mirroring: tokio_watch::channel(false).0,
        subs: Mutex::new(HashMap::new()),
        next_sub: AtomicU64::new(0),
    });

    let mut tasks = tokio::task::JoinSet::new();
    let (members_tx, members) = tokio_watch::channel(crate::link::Membership::default());
    let link = crate::link::start(
        crate::link::LinkConfig {
            coordinator: opts.coordinator.clone(),
            cluster: opts.cluster,
            kind,
            advertise: advertise.clone(),
            interval: opts.node.heartbeat(),
            max_clock_offset: opts.clock.max_clock_offset(),
        },
        opts.node.bind,
        client_config.clone(),
        members_tx,
        shared.beat_now.clone(),
        metrics.heartbeats_missed.clone(),
    )?;
    tasks.spawn(role::run(shared.clone(), members.clone()));
    // The sync service's feed and the mirror to the standby are dialled from a socket of
    // their own: on the listening one their datagrams would share a receive buffer with
    // every client's, and when a busy server's buffer overflows the kernel drops what
    // comes next, so that QUIC slows the feed and the mirror as if the network were
    // congested (the sync service's feed then ran at half the rate it is written).
    let peers = crate::net::dialling_endpoint(opts.node.bind, client_config)?;
    let inbound = Arc::new(Mutex::new(inbound));
    let cluster = opts.cluster;
    let (settled_tx, settled) = tokio_watch::channel(false);
    tasks.spawn(inbound::run(
        shared.clone(),
        inbound.clone(),
        peers.clone(),
        crate::link::peer_addr(&members, move |m| m.addr_of(cluster, NodeKind::Sync)),
        settled_tx,
    ));
    tasks.spawn(readiness::readiness(
        shared.clone(),
        members.clone(),
        settled,
        opts.clock.max_clock_offset(),
    ));

    let (mirror_tx, mirror_rx) = mpsc::channel(store::WRITE_QUEUE);
    let store = store::spawn(
        shared.clone(),
        journal,
        Some(inbound.clone()),
        mirror_tx,
        journal_len,
        cp,
    )
    .context("starting the journal writer")?;
    tasks.spawn(mirror::run_active(
        shared.clone(),
        peers.clone(),
        store.clone(),
        mirror_rx,
    ));
    let accept = {
        let shared = shared.clone();
        let store = store.clone();
        let connections = metrics.connections.clone();
        tokio::spawn(crate::net::accept_loop(
            endpoint.clone(),
            connections,
            move |conn| dispatch::serve_connection(conn, shared.clone(), store.clone()),
        ))
    };
    tracing::info!(%local, %advertise, cluster = opts.cluster, kind = kind.as_str(), ack = ?opts.ack, "server listening");
    opts.node.announce(local)?;

    shutdown.await;
    tracing::info!("shutting down");
    if shared.role().active {
        handover::hand_over(&shared, &endpoint, &opts.coordinator).await;
    }
    accept.abort();
    endpoint.close(0u32.into(), b"server shutting down");
    peers.close(0u32.into(), b"server shutting down");
    tasks.shutdown().await;
    // Everything queued reaches the journal and the view files before "clean" is said.
    let views_complete = store.stop().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        endpoint.wait_idle().await;
        peers.wait_idle().await;
    })
    .await;
    link.stop().await;
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
    drop(inbound);
    Ok(())
}

/// What the sync service gets instead of this server's journal when its cursor lies
/// before the oldest segment kept (its disk was lost): the last checkpoint's users,
/// follow edges and keys, and every post of this cluster's users that reached their own
/// timeline files; the posts after those are in the segments kept, which follow.
fn journal_transfer(dir: &RoleDir) -> anyhow::Result<Vec<tsn_datastore::Record>> {
    use tsn_datastore::Record;
    let own = checkpoint::load(dir)?
        .map(|cp| cp.state.own)
        .unwrap_or_default();
    let mut records = Vec::with_capacity(own.len());
    for r in own {
        if let Record::Change(tsn_protocol::Change::User { user }) = &r {
            for d in tsn_datastore::read_records(&dir.timeline(*user))? {
                if let Record::Deliver { to, post, .. } = d {
                    if post.id.author == to {
                        records.push(Record::Change(tsn_protocol::Change::Post(post)));
                    }
                }
            }
        }
        records.push(r);
    }
    Ok(records)
}

/// Advances `clock` past the timestamp a record carries.
pub fn observe_record(clock: &crate::hlc::Hlc, r: &tsn_datastore::Record) {
    match r {
        tsn_datastore::Record::Change(c) => clock.observe_change(c),
        tsn_datastore::Record::Deliver { post, .. } => clock.observe(post.ts_us),
    }
}
