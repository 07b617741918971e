//! The open timeline sessions of this server's users: new entries are pushed to them as
//! they are received, numbered by the sync-service journal they came from.

use crate::Locked;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tsn_protocol::{Post, UserId};

use super::admission::Admission;
use super::model::TimelineEntry;
use crate::metrics::Metrics;

/// Entries buffered for one timeline session; a session that falls this far behind is
/// closed (its client reconnects and gets the backlog again). Two of the sync service's
/// largest batches fit, all for one user: a burst is absorbed, a client that keeps
/// reading slower than its timeline grows is not.
pub const SESSION_QUEUE: usize = 2 * crate::feed::FeedConfig::DEFAULT.merged;

/// A live timeline session's inbox: entries with their numbers.
pub type Inbox = mpsc::Receiver<(u64, Post)>;

#[derive(Debug)]
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<(u64, Post)>,
}

/// The open timeline sessions, by user.
#[derive(Debug)]
pub struct Sessions {
    subs: Mutex<HashMap<UserId, Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// The id of the sync-service journal whose numbers timeline positions use.
    log_id: AtomicU64,
    /// Whether new posts wait for delivery to catch up (`--admit-lag-ms`).
    admission: Admission,
    metrics: Arc<Metrics>,
}

impl Sessions {
    /// No session yet; positions are numbered by the sync-service journal `log_id` (0:
    /// none read yet).
    pub fn new(log_id: u64, admission: Admission, metrics: Arc<Metrics>) -> Sessions {
        Sessions {
            subs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            log_id: AtomicU64::new(log_id),
            admission,
            metrics,
        }
    }

    /// The id of the sync-service journal whose numbers positions use.
    pub fn log_id(&self) -> u64 {
        self.log_id.load(Ordering::Relaxed)
    }

    /// Entries are numbered by the sync-service journal `log_id` from now on.
    pub fn set_log_id(&self, log_id: u64) {
        self.log_id.store(log_id, Ordering::Relaxed);
    }

    /// Whether new posts wait for delivery to catch up.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Registers a timeline session of `user`.
    pub fn subscribe(&self, user: UserId) -> (u64, Inbox) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
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

    /// Closes every timeline session (each client reopens from its last position).
    pub fn close_all(&self) {
        self.subs.locked().clear();
    }

    /// Pushes new timeline entries to the open sessions of their users.
    pub fn publish(&self, entries: Vec<TimelineEntry>) {
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
