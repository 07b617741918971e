//! Mirroring between the two servers of a cluster.
//!
//! The active server dials the standby the coordinator names and opens one stream. Both
//! first send what their journal holds after the other's cursor (kept in
//! `mirror.cursor`: how far this server has the other's journal), so that each gets what
//! it lacks: this is how a returning server catches up before it can serve again, and how
//! the two sides of a split brain merge (every change is idempotent: users only grow,
//! posts are keyed by id, a follow and an unfollow resolve by timestamp). A cursor for
//! another journal (a host that lost its disk), or before the oldest segment kept, gets
//! the checkpointed state and the segments kept instead: a state transfer. Then the
//! active server streams each committed batch; clients are acknowledged when the standby
//! has stored it.
//! A standby that does not acknowledge within [`ACK_TIMEOUT`] is dropped and the active
//! server serves alone (and says so) until the standby is back and caught up.
//!
//! # Layout
//! - [`Mirror`] (here): what both sides use, and how far this server has the other's
//!   journal.
//! - `outgoing`: what this server's journal holds after the other's cursor, read a
//!   chunk at a time.
//! - `active`: the active side (dial, exchange, stream each batch, hand over).
//! - `standby`: the standby side (exchange, group-commit what arrives, acknowledge).

mod active;
mod outgoing;
mod standby;

pub use active::run_active;
pub use standby::{serve_standby, Hello};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};
use tsn_protocol::sync::Cursor;

use super::options::AckMode;
use super::role::{Node, Role};
use super::store::{MirrorJob, Store};
use crate::feed::FeedSource;
use crate::metrics::Metrics;

/// How long the standby may take to acknowledge a batch before it is dropped.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Changes in one batch of the catch-up exchange (at most
/// [`tsn_protocol::MAX_BATCH_CHANGES`]).
const EXCHANGE_CHUNK: usize = 1024;
/// How long one step of the catch-up exchange may take.
const EXCHANGE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the cursor into the other server's journal is saved while mirroring (and
/// when mirroring stops): a cursor saved late only makes the next exchange send more.
const CURSOR_SAVE: Duration = Duration::from_secs(1);
/// Mirroring that lasted this long was a success: the next failure starts the backoff
/// again from its shortest pause.
const HEALTHY: Duration = Duration::from_secs(10);

/// What both sides of the mirror use.
#[derive(Debug, Clone)]
pub struct Mirror {
    node: Node,
    role: Role,
    journal: FeedSource,
    store: Store,
    /// Whether the mirror stream with the other server is up (state exchanged).
    up: Arc<watch::Sender<bool>>,
    /// Makes the coordinator link beat at once (the active server handed over).
    beat_now: Arc<Notify>,
    /// Told once the standby has been told of a hand-over.
    standby_told: Arc<Notify>,
    metrics: Arc<Metrics>,
    ack: AckMode,
}

/// The parts of a [`Mirror`].
#[derive(Debug)]
pub struct Parts {
    /// This server.
    pub node: Node,
    /// Active or standby.
    pub role: Role,
    /// This server's journal, as a feed.
    pub journal: FeedSource,
    /// The journal writer.
    pub store: Store,
    /// Makes the coordinator link beat at once.
    pub beat_now: Arc<Notify>,
    /// What an operator sees.
    pub metrics: Arc<Metrics>,
    /// When acknowledgements are sent.
    pub ack: AckMode,
}

impl Mirror {
    /// A mirror, not up.
    pub fn new(parts: Parts) -> Mirror {
        let Parts {
            node,
            role,
            journal,
            store,
            beat_now,
            metrics,
            ack,
        } = parts;
        Mirror {
            node,
            role,
            journal,
            store,
            up: Arc::new(watch::channel(false).0),
            beat_now,
            standby_told: Arc::new(Notify::new()),
            metrics,
            ack,
        }
    }

    /// Tells whether the mirror stream with the other server is up.
    pub fn up(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Completes once the standby has been told of a hand-over.
    pub async fn standby_told(&self) {
        self.standby_told.notified().await;
    }

    /// How far this server has the other server's journal (`mirror.cursor`; none yet:
    /// log 0).
    fn peer_cursor(&self) -> Cursor {
        let text = std::fs::read_to_string(self.node.dir.mirror_cursor()).unwrap_or_default();
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(log_id)), Some(Ok(offset))) => Cursor { log_id, offset },
            _ => Cursor::default(),
        }
    }

    fn save_peer_cursor(&self, at: Cursor) {
        let path = self.node.dir.mirror_cursor();
        let text = format!("{} {}\n", at.log_id, at.offset);
        if let Err(e) =
            tsn_datastore::write_atomic(&path, text.as_bytes(), tsn_datastore::Durability::NoSync)
        {
            tracing::warn!("saving {}: {e}", path.display());
        }
    }
}

/// Runs `fut` while completing every job that arrives on the local flush alone, as when
/// no standby is alive. `None` when the jobs end (the server stops).
async fn alone_while<T>(
    jobs: &mut mpsc::Receiver<MirrorJob>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return Some(r),
            job = jobs.recv() => match job {
                Some(j) => j.finish().await,
                None => return None,
            },
        }
    }
}

async fn step<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(EXCHANGE_STEP_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what} timed out"))
}
