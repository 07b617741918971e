//! What the sync service gives this server: its cluster's sync-service journal, read as
//! a feed from a cursor this server persists, and kept in this server's own role
//! directory (`received.data`, and the view files: `global_clients.data`,
//! `followers.data`, deliveries in `timeline.data`). So the server serves LIST and
//! timelines from its own disk while the sync service is down, and after a restart; a
//! server whose disk was lost reads the feed from the start.
//!
//! Each batch is applied to the model and pushed to open timelines as soon as it is
//! written here, then flushed before its cursor is saved: a crash re-reads, never skips.
//! `received.data` is a segmented log: the journal writer seals it at each checkpoint
//! and deletes what the checkpoint covers.

use crate::Locked;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tsn_datastore::{Cursors, DatastoreError, Record, RoleDir, SegmentedLog};
use tsn_protocol::sync::{Cursor, FeedLog, SyncRequest};
use tsn_protocol::UserId;

use super::sessions::Sessions;
use super::store::Data;
use crate::feed::{self, Batch, FeedConfig};
use crate::views::{Side, Views};

/// Batches of at most this many records are written (not flushed) and pushed to open
/// timelines on the runtime's thread (see [`run`]).
const WRITE_INLINE_RECORDS: usize = 64;

/// A large batch (a post to thousands of followers of this cluster) is written and pushed
/// this many records at a time: the first followers' timelines are sent their entry while
/// the view files of the others are still being appended to, off the runtime's thread.
const PUBLISH_SHARE: usize = 256;

/// What the received feed's writer works with besides its files.
#[derive(Debug, Clone)]
pub struct Env {
    /// What it shares with the journal writer.
    pub data: Data,
    /// Open timelines: what is received is pushed to them.
    pub sessions: Arc<Sessions>,
}

/// The cursor key of the sync service's journal feed.
const KEY: &str = "from-sync";

/// The writer of `received.data` and its views.
#[derive(Debug)]
pub struct Inbound {
    log: SegmentedLog,
    views: Views,
    cursors: Cursors,
    dir: RoleDir,
    /// Deliveries shown before the sync service's journal was begun anew: not pushed to
    /// open timelines again when the new journal delivers them again.
    shown_before: std::collections::HashSet<(UserId, tsn_protocol::PostId)>,
}

impl Inbound {
    /// Opens `received.data` of `dir`; returns its records from logical offset `from`
    /// (what the last checkpoint does not cover) for the model.
    pub fn open(dir: &RoleDir, from: u64) -> Result<(Inbound, Vec<Record>), DatastoreError> {
        let (log, records) = SegmentedLog::open(&dir.received(), from)?;
        let cursors = Cursors::load(&dir.cursors())?;
        Ok((
            Inbound {
                log,
                views: Views::new(dir.clone(), Side::Received),
                cursors,
                dir: dir.clone(),
                shown_before: std::collections::HashSet::new(),
            },
            records,
        ))
    }

    /// The logical length of `received.data`.
    pub fn len(&self) -> u64 {
        self.log.len()
    }

    /// Whether nothing was ever received.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// Completes the view files a failed append left owed records (see
    /// [`Views::repair`]).
    pub fn repair_views(&mut self) -> Result<(), DatastoreError> {
        self.views.repair()
    }

    /// See [`Views::complete_for_shutdown`].
    pub fn views_complete(&mut self) -> bool {
        self.views.complete_for_shutdown()
    }

    /// Seals `received.data` for a checkpoint; returns the offset it covers.
    pub fn seal(&mut self) -> Result<u64, DatastoreError> {
        self.log.rotate()
    }

    /// Deletes the segments of `received.data` before `offset` (a checkpoint covers them).
    pub fn delete_through(&mut self, offset: u64) -> Result<u64, DatastoreError> {
        self.log.delete_through(offset)
    }

    /// The saved cursor.
    pub fn cursor(&self) -> Cursor {
        self.cursors.feed(KEY)
    }

    /// The id of the sync-service journal this server's timelines are numbered by (0:
    /// none yet).
    pub fn log_id(&self) -> u64 {
        self.cursor().log_id
    }

    /// The sync service's journal was begun anew (its host lost its disk): what was
    /// received from the old one is dropped, and the new one, read from its start,
    /// delivers everything again with its own numbers. The view files are rewritten from
    /// this server's journal; open timelines are closed (their clients reopen them).
    fn start_over(&mut self, env: &Env) -> anyhow::Result<()> {
        tracing::warn!(
            "the sync service's journal was begun anew (its host lost its disk?): re-reading it from the start"
        );
        let gone = self.log.rotate()?;
        self.log.delete_through(gone)?;
        self.views = Views::new(self.dir.clone(), Side::Received);
        self.shown_before.extend(shown(&self.dir)?);
        env.data.state.reset_received();
        // A checkpoint of what was received from the old journal no longer holds.
        if let Some(mut cp) = crate::checkpoint::load(&self.dir)? {
            cp.other = gone;
            cp.state.received.clear();
            cp.state.seqs.clear();
            crate::checkpoint::save(&self.dir, &cp)?;
        }
        let own = super::recovery::own_records(&self.dir, &env.data.journal_feed)?;
        crate::views::rebuild_clean(&self.dir, &[(Side::Server, own.as_slice())])?;
        env.sessions.close_all();
        Ok(())
    }
}

/// Every (user, post) in this server's timeline files.
fn shown(
    dir: &RoleDir,
) -> anyhow::Result<std::collections::HashSet<(UserId, tsn_protocol::PostId)>> {
    let mut shown = std::collections::HashSet::new();
    for user in dir.users() {
        for r in tsn_datastore::read_records(&dir.timeline(user))? {
            if let Record::Deliver { to, post, .. } = r {
                shown.insert((to, post.id));
            }
        }
    }
    Ok(shown)
}

/// Shared between the feed task, the journal writer (which seals `received.data` at each
/// checkpoint) and shutdown (which waits for a write in progress).
pub type InboundHandle = Arc<Mutex<Inbound>>;

/// Follows the sync service of this cluster for ever.
pub async fn run(
    env: Env,
    inbound: InboundHandle,
    endpoint: quinn::Endpoint,
    addr: crate::link::PeerAddr,
    settled: feed::Settled,
) {
    let cluster = env.data.node.cluster;
    let from = inbound.locked().cursor();
    let open = feed::opener(
        cluster,
        (cluster, env.data.node.kind),
        FeedLog::SyncJournal,
        SyncRequest::Subscribe,
    );
    let apply = |batch: Batch| {
        let env = env.clone();
        let inbound = inbound.clone();
        async move {
            // A small batch is written and pushed to open timelines on this thread:
            // appends to files in the page cache take microseconds, less than a hand-off
            // to a blocking thread and back before the post is shown. The flush and the
            // cursor, off it. Large batches (this server catching up, a busy cluster)
            // are written off the runtime whole, so that open timelines drain meanwhile;
            // so is a batch from a journal begun anew, or one that finds the checkpoint
            // sealing `received.data`.
            let (next, small, settle) = (batch.next, batch.inline, batch.settle);
            let mut waiting = Some(batch);
            if let Some(Ok(mut inb)) = small.then(|| inbound.try_lock()) {
                if !inb.begun_anew(next) {
                    let batch = waiting.take().expect("set above");
                    inb.write(&env, batch)?;
                }
            }
            if waiting.is_none() && !settle {
                return Ok(());
            }
            tokio::task::spawn_blocking(move || {
                let mut inb = inbound.locked();
                if let Some(batch) = waiting {
                    if inb.begun_anew(next) {
                        inb.start_over(&env)?;
                    }
                    inb.write(&env, batch)?;
                }
                if settle {
                    inb.settle(&env, next)?;
                }
                Ok(())
            })
            .await
            .context("received-feed writer panicked")?
        }
    };
    feed::follow(
        FeedConfig {
            inline: WRITE_INLINE_RECORDS,
            ..FeedConfig::default()
        },
        "sync journal",
        endpoint,
        addr,
        from,
        settled,
        open,
        apply,
    )
    .await;
}

impl Inbound {
    /// Whether a batch at `next` comes from a sync-service journal other than the one
    /// read so far (begun anew: [`Inbound::start_over`] first).
    fn begun_anew(&self, next: Cursor) -> bool {
        let current = self.log_id();
        current != 0 && next.log_id != current
    }

    /// Appends what is new in `batch` to `received.data` and the view files, applies it
    /// to the model and pushes it to open timelines, [`PUBLISH_SHARE`] records at a time.
    /// Not flushed: [`Inbound::settle`].
    fn write(&mut self, env: &Env, batch: Batch) -> anyhow::Result<()> {
        let mut records = batch.records.into_iter().peekable();
        while records.peek().is_some() {
            let share: Vec<Record> = records.by_ref().take(PUBLISH_SHARE).collect();
            self.write_share(env, share)?;
        }
        Ok(())
    }

    fn write_share(&mut self, env: &Env, records: Vec<Record>) -> anyhow::Result<()> {
        let (fresh, mut entries) = env.data.state.apply_received(records, |r| {
            super::recovery::observe_record(&env.data.clock, r)
        });
        if fresh.is_empty() {
            return Ok(());
        }
        self.log
            .append(&fresh)
            .with_context(|| format!("writing {}", self.log.path().display()))?;
        // Views before open timelines: a session that opens after this reads the views.
        if let Err(e) = self.views.append(&fresh) {
            tracing::warn!("view file append failed (completed once writes work again; no checkpoint until then): {e}");
        }
        if !self.shown_before.is_empty() {
            entries.retain(|(to, _, p)| !self.shown_before.contains(&(*to, p.id)));
        }
        env.sessions.publish(entries);
        Ok(())
    }

    /// Flushes `received.data`, then saves the cursor `next`: a crash re-reads, never
    /// skips.
    fn settle(&mut self, env: &Env, next: Cursor) -> anyhow::Result<()> {
        let len = self.log.len();
        if len != env.data.trigger.received_len() {
            self.log.sync()?;
            env.data.trigger.received_grew(len);
        }
        let path = self.dir.cursors();
        self.cursors.set_feed(KEY, next);
        // Not flushed: after a power loss the feed is read again from an older position,
        // and what was received already is recognised by its numbers.
        self.cursors
            .save_with(&path, tsn_datastore::Durability::NoSync)?;
        env.sessions.set_log_id(next.log_id);
        Ok(())
    }

    /// Flushes `received.data` (at shutdown: a batch written but not yet settled).
    pub fn flush(&mut self) -> Result<(), DatastoreError> {
        self.log.sync()
    }
}
