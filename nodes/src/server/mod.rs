//! A cluster's server (`tsn_server`): primary or secondary.
//!
//! # Layout
//! - [`model`]: the in-memory state, rebuilt from the journals on start.
//! - [`store`]: the journal writer (group commit, views, hand-off to the mirror).
//! - [`role`]: heartbeats; learns from the coordinator whether this server is active.
//! - [`mirror`]: the active server streams its changes to the standby; the standby
//!   applies them. Both sides first exchange what the other lacks.
//! - [`commands`]: one client command per stream.
//! - [`timeline`]: the long-lived timeline stream of a client session.
//! - [`watch`]: follows the sync service's journal (file-system notifications) and
//!   pushes deliveries to open timelines.

pub mod commands;
pub mod mirror;
pub mod model;
pub mod role;
pub mod store;
pub mod timeline;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::sync::{mpsc, watch as tokio_watch};
use tsn_datastore::{AppendLog, Datastore, RoleDir};
use tsn_protocol::coord::NodeKind;
use tsn_protocol::{ClusterId, Post, UserId};

use crate::common::{CommonOpts, NodeOpts};
use model::Model;
pub use role::RoleState;

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

/// `tsn_server`: serves one cluster's clients, as its primary or secondary.
#[derive(Debug, Parser)]
#[command(name = "tsn_server", version, about, long_about = None)]
pub struct ServerOpts {
    /// Coordinator address, <coordIP>:<coordPort>.
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_host_port)]
    pub coordinator: String,

    /// UDP port to listen on (0 picks a free one; see --ready-file).
    #[arg(short = 'p', long = "port")]
    pub port: u16,

    /// Cluster id (1..=clusters).
    #[arg(short = 'i', long = "id", value_parser = clap::value_parser!(u32).range(1..))]
    pub cluster: u32,

    /// primary or secondary (master and slave are accepted too).
    #[arg(short = 't', long = "type", value_enum)]
    pub server_type: ServerType,

    /// Address other processes should dial to reach this server (host:port). Default:
    /// the bind address if specific, else the local address that routes to the
    /// coordinator, with the bound port.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// When a post or command is acknowledged: `replicated` (written on both servers,
    /// flushed right after) or `durable` (flushed on both servers first).
    #[arg(long, value_enum, default_value = "replicated")]
    pub ack: AckMode,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// A live timeline session's inbox.
#[derive(Debug)]
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Post>,
}

/// Entries buffered for one timeline session; a session that falls this far behind is
/// closed (its client reconnects and gets the backlog again).
pub const SESSION_QUEUE: usize = 1024;

/// State shared by the server's tasks.
#[derive(Debug)]
pub struct Shared {
    /// This server's cluster.
    pub cluster: ClusterId,
    /// Primary or secondary.
    pub kind: NodeKind,
    /// This server's role directory (written only by the store task).
    pub dir: RoleDir,
    /// The sync service's role directory (read only).
    pub sync_dir: RoleDir,
    /// The in-memory model.
    pub model: Mutex<Model>,
    /// Active or standby, as last told by the coordinator.
    pub role: tokio_watch::Sender<RoleState>,
    /// When acknowledgements are sent.
    pub ack: AckMode,
    subs: Mutex<HashMap<UserId, Vec<Subscriber>>>,
    next_sub: AtomicU64,
}

impl Shared {
    /// Current role.
    pub fn role(&self) -> RoleState {
        self.role.borrow().clone()
    }

    /// Registers a timeline session of `user`.
    pub fn subscribe(&self, user: UserId) -> (u64, mpsc::Receiver<Post>) {
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user)
            .or_default()
            .push(Subscriber { id, tx });
        (id, rx)
    }

    /// Removes a timeline session.
    pub fn unsubscribe(&self, user: UserId, id: u64) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = subs.get_mut(&user) {
            v.retain(|s| s.id != id);
            if v.is_empty() {
                subs.remove(&user);
            }
        }
    }

    /// Number of open timeline sessions.
    pub fn sessions(&self) -> usize {
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Pushes new timeline entries to the open sessions of their users.
    pub fn publish(&self, entries: Vec<(UserId, Post)>) {
        if entries.is_empty() {
            return;
        }
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        for (user, post) in entries {
            if let Some(v) = subs.get_mut(&user) {
                v.retain(|s| match s.tx.try_send(post.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(user, "timeline session fell behind; closing it");
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
            dir,
            sync_dir: ds.role(1, NodeKind::Sync),
            model: Mutex::new(Model::default()),
            role: tokio_watch::channel(RoleState::default()).0,
            ack,
            subs: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(0),
        }
    }
}

/// Runs a server until Ctrl-C / SIGTERM.
pub async fn run(opts: ServerOpts) -> anyhow::Result<()> {
    let kind = match opts.server_type {
        ServerType::Primary => NodeKind::Primary,
        ServerType::Secondary => NodeKind::Secondary,
    };
    let ds = Datastore::new(&opts.node.datastore);
    let dir = ds.role(opts.cluster, kind);
    let sync_dir = ds.role(opts.cluster, NodeKind::Sync);
    dir.create()
        .with_context(|| format!("creating {}", dir.path().display()))?;
    sync_dir
        .create()
        .with_context(|| format!("creating {}", sync_dir.path().display()))?;

    // Recover: the journal is the truth; views are rebuilt unless the last exit was clean.
    let (journal, records) = AppendLog::open(&dir.journal())
        .with_context(|| format!("loading journal {}", dir.journal().display()))?;
    let clean = dir.clean_marker().exists();
    if clean {
        std::fs::remove_file(dir.clean_marker()).context("removing clean-shutdown marker")?;
    } else if !records.is_empty() {
        // Views are derived from the journal: failing to rebuild them (a full disk, say)
        // is worth an error in the log, not a refusal to serve.
        match crate::views::rebuild(&dir, crate::views::Side::Server, &records) {
            Ok(n) => tracing::info!(files = n, "previous exit was not clean: rebuilt view files from the journal"),
            Err(e) => tracing::error!("previous exit was not clean and rebuilding the view files failed; serving from the journal: {e}"),
        }
    }
    let mut model = Model::default();
    for r in &records {
        if let tsn_datastore::Record::Change(c) = r {
            model.apply_own(c);
        }
    }
    tracing::info!(records = records.len(), "journal loaded");
    drop(records);

    let (endpoint, local) = crate::net::node_listener(
        &opts.common,
        &opts.node,
        opts.port,
        tsn_certs::ClientAuth::Optional,
    )?;
    let hb = opts.node.heartbeat();
    let advertise =
        crate::net::advertise_addr(opts.advertise.as_deref(), local, &opts.coordinator).await?;

    let (role_tx, _) = tokio_watch::channel(RoleState::default());
    let shared = Arc::new(Shared {
        cluster: opts.cluster,
        kind,
        dir: dir.clone(),
        sync_dir,
        model: Mutex::new(model),
        role: role_tx,
        ack: opts.ack,
        subs: Mutex::new(HashMap::new()),
        next_sub: AtomicU64::new(0),
    });
    watch::load_and_follow(shared.clone()).context("following the sync service's journal")?;

    let (mirror_tx, mirror_rx) = mpsc::channel(store::WRITE_QUEUE);
    let store =
        store::spawn(shared.clone(), journal, mirror_tx).context("starting the journal writer")?;
    tokio::spawn(mirror::run_active(
        shared.clone(),
        endpoint.clone(),
        store.clone(),
        mirror_rx,
    ));
    tokio::spawn(role::run(
        shared.clone(),
        endpoint.clone(),
        opts.coordinator.clone(),
        advertise.clone(),
        hb,
    ));
    let accept = {
        let shared = shared.clone();
        let store = store.clone();
        tokio::spawn(crate::net::accept_loop(endpoint.clone(), move |conn| {
            serve_connection(conn, shared.clone(), store.clone())
        }))
    };
    tracing::info!(%local, %advertise, cluster = opts.cluster, kind = kind.as_str(), ack = ?opts.ack, "server listening");
    opts.node.announce(local)?;

    crate::common::shutdown_signal().await;
    tracing::info!("shutting down");
    accept.abort();
    endpoint.close(0u32.into(), b"server shutting down");
    // Let queued writes finish: the writer stops once every Store handle is gone.
    drop(store);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    // The flusher may not have flushed the last writes yet: flush before saying "clean".
    std::fs::File::open(dir.journal())
        .and_then(|f| f.sync_data())
        .with_context(|| format!("flushing {}", dir.journal().display()))?;
    tsn_datastore::write_atomic(&dir.clean_marker(), b"", tsn_datastore::Durability::Sync)
        .context("writing clean-shutdown marker")?;
    Ok(())
}

/// Client connections (no certificate) speak the client protocol; node connections
/// (certificate from the CA) speak the mirror protocol.
async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>, store: store::Store) {
    let is_node = tsn_certs::peer_is_node(&conn);
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let shared = shared.clone();
        let store = store.clone();
        tokio::spawn(async move {
            if is_node {
                mirror::serve_standby(shared, store, send, recv).await;
            } else {
                commands::serve_stream(shared, store, send, recv).await;
            }
        });
    }
}
