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
//!
//! The server reads and writes only its own role directory; its sync service reads its
//! journal as a feed (a node stream opened with [`MirrorMsg::Subscribe`]).

pub mod admission;
pub mod commands;
pub mod inbound;
pub mod mirror;
pub mod model;
pub mod role;
pub mod store;
pub mod timeline;

use crate::Locked;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::sync::{mpsc, watch as tokio_watch};
use tsn_datastore::{Datastore, RoleDir, SegmentedLog};
use tsn_protocol::coord::NodeKind;
use tsn_protocol::{ClusterId, Post, UserId};

use crate::checkpoint;
use crate::common::{CommonOpts, NodeOpts};
use crate::feed::FeedSource;
use model::{Model, State};
pub use role::RoleState;
use tsn_protocol::mirror::MirrorMsg;
use tsn_protocol::sync::{FeedLog, SyncReply};

/// `-t`: which server of the pair this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerType {
    /// The primary (also `master`).
    #[value(alias = "master")]
    Primary,
    /// The secondary (also `slave`).
    #[value(alias = "slave")]
    Secondary,
}

/// `--ack`: when a client's change is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    /// Once the change is written to the journals of both servers (two hosts' page
    /// caches): it survives kill -9 of any process and the loss of either host. Each
    /// server flushes (fdatasync) right behind, off the acknowledgement's path. With no
    /// standby, once it is flushed here.
    Replicated,
    /// Once the change is flushed (fdatasync) on both servers: it also survives both
    /// hosts losing power at once. Slower: a flush is on every acknowledgement's path.
    Durable,
}

/// A TSN server: serves one cluster's clients (login, FOLLOW, UNFOLLOW, LIST, TIMELINE) as
/// its primary or secondary, mirroring every change to the other server.
#[derive(Debug, Parser)]
#[command(name = "tsn_server", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_NODE)))]
#[command(mut_arg("heartbeat_ms", |a| a.help(crate::common::HEARTBEAT_NODE)))]
pub struct ServerOpts {
    /// Coordinator address, <coordIP>:<coordPort>; for a coordinator group, every
    /// member's, comma-separated (any member answers; one that does not is skipped).
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_coordinators, value_name = "HOST:PORT[,...]", env = "TSN_COORDINATOR")]
    pub coordinator: crate::common::Coordinators,

    /// UDP port to listen on (0 picks a free one; see --ready-file).
    #[arg(short = 'p', long = "port", env = "TSN_PORT")]
    pub port: u16,

    /// Cluster id (1..=clusters).
    #[arg(short = 'i', long = "id", value_parser = clap::value_parser!(u32).range(1..), env = "TSN_CLUSTER")]
    pub cluster: u32,

    /// primary or secondary (master and slave are accepted too).
    #[arg(short = 't', long = "type", value_enum, env = "TSN_TYPE")]
    pub server_type: ServerType,

    /// Address other processes should dial to reach this server (host:port). Default:
    /// the bind address if specific, else the local address that routes to the
    /// coordinator, with the bound port.
    #[arg(long, value_name = "HOST:PORT", env = "TSN_ADVERTISE")]
    pub advertise: Option<String>,

    /// When a post or command is acknowledged: `replicated` (written on both servers,
    /// flushed right after) or `durable` (flushed on both servers first).
    #[arg(long, value_enum, default_value = "replicated", env = "TSN_ACK")]
    pub ack: AckMode,

    /// Most posts, follows and unfollows one user may make a second (a burst of as many
    /// is allowed); more are refused, and nothing of them is stored.
    #[arg(long, default_value_t = 20_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), env = "TSN_USER_RATE")]
    pub user_rate: u32,

    /// Take a checkpoint each time the journal and `received.data` together grew by this
    /// many bytes (and by at least the size of the last checkpoint): start-up then
    /// replays at most about this much, and older journal segments are deleted once the
    /// sync service has read them.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..), env = "TSN_CHECKPOINT_BYTES")]
    pub checkpoint_bytes: u64,

    /// Admission under overload: while the oldest of this server's posts not yet back
    /// from its sync service (every post comes back into its author's timeline) was
    /// stamped more than this many milliseconds ago, new posts wait (their
    /// acknowledgements come later) so that posts already acknowledged are still
    /// delivered within the sync period. 0: never wait; keep it above -q when the sync
    /// services run with --delivery period.
    #[arg(
        long,
        default_value_t = 200,
        value_name = "MS",
        env = "TSN_ADMIT_LAG_MS"
    )]
    pub admit_lag_ms: u64,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub clock: crate::common::ClockOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}

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
pub const SESSION_QUEUE: usize = 2 * crate::feed::MERGED_CHANGES;

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
    crate::link::start(
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
    tasks.spawn(readiness(
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
            move |conn| serve_connection(conn, shared.clone(), store.clone()),
        ))
    };
    tracing::info!(%local, %advertise, cluster = opts.cluster, kind = kind.as_str(), ack = ?opts.ack, "server listening");
    opts.node.announce(local)?;

    shutdown.await;
    tracing::info!("shutting down");
    if shared.role().active {
        hand_over(&shared, &endpoint, &opts.coordinator).await;
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

/// An operator's request (the peer holds a node certificate).
async fn admin(
    shared: &Shared,
    store: &store::Store,
    req: tsn_protocol::mirror::AdminRequest,
) -> tsn_protocol::mirror::AdminReply {
    use tsn_protocol::mirror::{AdminReply, AdminRequest};
    match req {
        AdminRequest::ResetKey { user } => {
            if let Err(e) = commands::check_user(shared, user) {
                return AdminReply::Refused(format!("user {user} cannot be served here: {e}"));
            }
            if !shared.state.is_local(user) {
                return AdminReply::Refused(format!("user {user} has never logged in"));
            }
            let generation = shared.state.key_of(user).map_or(0, |b| b.0) + 1;
            let change = tsn_protocol::Change::Key {
                user,
                generation,
                ts_us: shared.clock.now(),
                key: Vec::new(),
            };
            match store.write(vec![change], true).await {
                Ok(()) => {
                    tracing::info!(
                        user,
                        generation,
                        "an operator reset the user's key: the next login binds anew"
                    );
                    AdminReply::Done
                }
                Err(e) => AdminReply::Refused(format!("not stored: {e}")),
            }
        }
    }
}

/// Keeps `/ready` true exactly while this server is registered, knows its role, has read
/// its sync service's journal to the end since it learned where that is (or found it
/// down), when the coordinator names a live peer server, mirrors with it, and its clock
/// is within `max_clock_offset` of the coordinator's.
async fn readiness(
    shared: Arc<Shared>,
    mut members: tokio_watch::Receiver<crate::link::Membership>,
    mut settled: tokio_watch::Receiver<bool>,
    max_clock_offset: std::time::Duration,
) {
    let mut role = shared.role.subscribe();
    let mut mirroring = shared.mirroring.subscribe();
    loop {
        let (registered, clock_off) = {
            let m = members.borrow_and_update();
            (m.beat.is_some(), m.clock_off(max_clock_offset))
        };
        let caught_up = *settled.borrow_and_update();
        let peer = role.borrow_and_update().peer.clone();
        let mirrored = *mirroring.borrow_and_update();
        let why = match (registered, caught_up) {
            (false, _) => Some("not registered with the coordinator yet".to_string()),
            (true, false) => Some("catching up from the sync service".to_string()),
            (true, true) => match peer {
                Some(p) if !mirrored => Some(format!("setting up mirroring with {p}")),
                _ => clock_off,
            },
        };
        if why.is_none() && shared.metrics.not_ready().is_some() {
            tracing::info!(active = shared.role().active, "ready");
        }
        shared.metrics.set_ready(why);
        tokio::select! {
            r = members.changed() => if r.is_err() { return },
            r = settled.changed() => if r.is_err() { return },
            r = role.changed() => if r.is_err() { return },
            r = mirroring.changed() => if r.is_err() { return },
        }
    }
}

/// A planned stop of the active server: the coordinator makes the standby active now,
/// this server becomes the standby (its timeline clients are told to ask the coordinator
/// again), and the mirror tells the standby, which asks the coordinator at once. So a
/// planned restart costs no failover timeout.
async fn hand_over(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    coordinator: &crate::common::Coordinators,
) {
    use tsn_protocol::coord::{CoordReply, CoordRequest};
    let asked = async {
        let group = crate::group_client::GroupClient::new(coordinator.clone());
        let req = CoordRequest::HandOver {
            cluster: shared.cluster,
            kind: shared.kind,
        };
        anyhow::Ok(group.call(endpoint, &req).await?.1)
    };
    match asked.await {
        Ok(CoordReply::HandedOver { epoch, to }) => {
            tracing::info!(epoch, standby = %to, "handed the cluster over to the standby");
            shared.role.send_modify(|r| {
                r.active = false;
                r.epoch = epoch;
                r.peer = Some(to);
            });
            let told = shared.handed_over.notified();
            if tokio::time::timeout(std::time::Duration::from_secs(1), told)
                .await
                .is_err()
            {
                tracing::info!(
                    "the standby was not told directly: it learns at its next heartbeat"
                );
            }
        }
        Ok(CoordReply::Failed(e)) => {
            tracing::info!("no hand-over before stopping: {e}");
        }
        Ok(other) => tracing::warn!("unexpected hand-over reply: {other:?}"),
        Err(e) if crate::net::part_of_a_stop(&e) => {
            tracing::info!("no hand-over before stopping: the coordinator is stopping too ({e:#})")
        }
        Err(e) => tracing::warn!("could not ask the coordinator for a hand-over: {e:#}"),
    }
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

/// Client connections (no certificate) speak the client protocol; node connections
/// (certificate from the CA) mirror or read the journal's feed.
async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>, store: store::Store) {
    let is_node = tsn_certs::peer_is_node(&conn);
    let user: commands::Conn = Arc::default();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let shared = shared.clone();
        let store = store.clone();
        let user = user.clone();
        tokio::spawn(async move {
            if is_node {
                serve_node_stream(shared, store, send, recv).await;
            } else {
                commands::serve_stream(shared, store, user, send, recv).await;
            }
        });
    }
}

/// A stream from another node: a mirror stream from the active server, or the sync
/// service reading the journal.
async fn serve_node_stream(
    shared: Arc<Shared>,
    store: store::Store,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let first = match tsn_protocol::read_msg::<MirrorMsg, _>(&mut recv).await {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("bad node stream: {e}");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    match first {
        MirrorMsg::Hello {
            cluster,
            epoch,
            journal,
            have,
        } => {
            let hello = mirror::Hello {
                cluster,
                epoch,
                journal,
                have,
            };
            mirror::serve_standby(shared, store, hello, send, recv).await
        }
        MirrorMsg::Subscribe(sub) => {
            let refusal = if sub.cluster != shared.cluster || sub.reader != shared.cluster {
                Some(format!(
                    "this server's journal is for cluster {}'s sync service",
                    shared.cluster
                ))
            } else if sub.log != FeedLog::ServerJournal {
                Some(format!("a server serves its journal, not {:?}", sub.log))
            } else {
                None
            };
            let result = match refusal {
                Some(why) => Err(why),
                None => crate::feed::serve(
                    shared.journal_feed.clone(),
                    &sub,
                    |_| true,
                    None,
                    |_| {},
                    &mut send,
                    recv,
                )
                .await
                .map_err(|e| format!("{e:#}")),
            };
            if let Err(why) = result {
                tracing::debug!("journal feed ended: {why}");
                let _ = tsn_protocol::write_msg(&mut send, &SyncReply::Refused(why)).await;
                let _ = send.finish();
            }
        }
        MirrorMsg::Admin(req) => {
            let reply = admin(&shared, &store, req).await;
            if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
        }
        MirrorMsg::Changes { .. } | MirrorMsg::HandOver { .. } => {
            let _ = send.reset(1u32.into());
            tracing::debug!("node stream began with something else than a hello");
        }
    }
}
