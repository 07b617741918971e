//! The four TSN roles and the QUIC plumbing they share.
//!
//! # Layout
//! - [`common`]: options every binary takes (`--cert-dir`, logging, `--ready-file`), and
//!   tracing set-up.
//! - [`net`]: QUIC endpoints, dialling with timeouts, one-request-per-stream calls, the
//!   advertised-address rule, and the transport limits (with what they cost).
//! - [`coordinator`]: routing tables, heartbeats, failover epochs, client assignment.
//! - [`group_client`]: asking the coordinator group (any member; the next one when a
//!   member does not answer).
//! - [`hlc`]: the hybrid logical clock that timestamps changes, so that order does not
//!   depend on synchronised wall clocks.
//! - [`link`]: a node's link to the coordinator group (registration, heartbeats, and the
//!   watch stream that pushes every change of the routing tables), the same for servers
//!   and sync services.
//! - [`metrics`]: every metric, and the `/metrics`, `/health`, `/ready` listener.
//! - [`recovery`]: what the server and the sync service do alike at start.
//! - [`checkpoint`]: the state a server or sync service writes down so that start-up and
//!   readers need only the logs after it.
//! - [`feed`]: serving a log to a reader from its cursor, and following another node's
//!   log: how servers and sync services pass changes to each other.
//! - [`server`]: a cluster's primary or secondary: client commands, the timeline stream,
//!   the journal writer, mirroring to the standby, and the sync service's feed.
//! - [`sync`]: the follower synchroniser: reads its servers' journals and every cluster's
//!   outbox, and writes what its cluster's servers need into its own role directory.
//! - [`window`]: the last so many ids, to recognise a change stored before without
//!   keeping every id.
//! - [`client`]: the interactive command-line client.
//! - [`status`]: prints the coordinator's routing tables for people.
//! - [`admin`]: operator commands (resetting a user's key binding).
//!
//! Where does a post go after the client sends it? `client::timeline` sends it up the
//! timeline stream; `server::cmd` checks it and hands it to `server::store`, which
//! journals it (group commit), mirrors it through `server::mirror`, and acknowledges it;
//! the cluster's sync service reads the journal as a feed (`feed`) into its outbox
//! (`sync::state`); every cluster's sync service reads that outbox and writes the post
//! into the timelines of its local followers; each server reads its sync service's
//! journal as a feed (`server::inbound`) and pushes the post down its followers' open
//! timeline streams (`server::sessions`). ARCHITECTURE.md walks it file by file.

// No function over 100 lines of code (`too-many-lines-threshold` in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod admin;
pub mod checkpoint;
pub mod client;
pub mod common;
pub mod coordinator;
pub mod feed;
pub mod group_client;
pub mod hlc;
pub mod link;
pub mod metrics;
pub mod net;
pub mod recovery;
pub mod server;
pub mod status;
pub mod sync;
pub mod views;
pub mod window;

/// Group commit's bounded moment: a log flushed (fdatasync) less than this long ago is
/// flushed again only once this long has passed since, and everything written meanwhile
/// goes in that one flush; a log idle for longer is flushed at once. A busy process so
/// flushes each log at most 500 times a second, however small its batches, and an idle
/// one keeps its latency. Used by the sync service's two logs, and by the server's journal
/// flusher while an acknowledgement waits for its flush ([`FLUSH_BEHIND_PACE`] otherwise).
pub const FLUSH_PACE: std::time::Duration = std::time::Duration::from_millis(2);

/// The bounded moment of a flush that nobody waits for: a server's journal under
/// `--ack replicated`, once the standby has the changes (two copies, in two page caches;
/// the flush only narrows the window in which both machines would lose power at once). A
/// busy journal is then flushed at most 100 times a second; an idle one still at once.
pub const FLUSH_BEHIND_PACE: std::time::Duration = std::time::Duration::from_millis(10);

/// When a log was last flushed, for [`FLUSH_PACE`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FlushPace(Option<std::time::Instant>);

impl FlushPace {
    /// How long until the next flush may begin (zero when it may now).
    pub fn wait(&self) -> std::time::Duration {
        self.wait_for(FLUSH_PACE)
    }

    /// How long until `pace` has passed since the last flush began (zero when it has).
    pub fn wait_for(&self, pace: std::time::Duration) -> std::time::Duration {
        self.0.map_or(std::time::Duration::ZERO, |at| {
            pace.saturating_sub(at.elapsed())
        })
    }

    /// A flush begins now.
    pub fn begin(&mut self) {
        self.0 = Some(std::time::Instant::now());
    }
}

/// Taking a lock whose holder panicked: the data is used as it was left. Every lock in
/// TSN guards state that each step leaves whole (a panic is a bug reported by the
/// panic itself, and stopping every other task for it would lose what they hold).
pub trait Locked<T> {
    /// The guard, poisoned or not.
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> Locked<T> for std::sync::Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Microseconds since the Unix epoch, from the system clock.
pub fn now_us() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}
