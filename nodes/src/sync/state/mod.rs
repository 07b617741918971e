//! The sync service's state and the one writer of its role directory.
//!
//! Two logs, each served as a feed:
//! - `outbox.data`: this cluster's changes (users, follows, posts), merged from both
//!   servers' journal feeds, each change once. Every cluster's sync service (this one
//!   included, in this process: [`crate::feed::follow_local`]) reads it, and gets what it needs: users and posts everywhere, a follow in
//!   the followee's cluster.
//! - `journal.data`: what this sync service gives its cluster's servers, from every
//!   cluster's outbox: users system-wide (`global_clients.data`), follows of this
//!   cluster's users (`followers.data`), and each post delivered to the timeline of every
//!   local user who followed its author when it was posted, and of its author
//!   (`timeline.data`). Older posts are not back-filled. Deliveries to each user are
//!   numbered 1, 2, 3, ...: a client resumes its timeline from such a number, the same on
//!   both servers of the cluster.
//!
//! Each batch is appended to its log at once; a log is committed (flushed with
//! fdatasync, then served) right away when its last flush is older than
//! [`crate::FLUSH_PACE`], and otherwise by the committer once that moment has passed, so
//! a busy sync service flushes each log at most 500 times a second, and an idle one at
//! every batch. A feed's cursor is saved only after a commit of what was read before it,
//! so a crash re-reads a batch and never skips one; a record read twice is recognised
//! and written once: by the last [`ID_WINDOW`] post ids and deliveries in memory, and,
//! for an older one, by the user's timeline file on disk, which is appended to only
//! after the journal holds the delivery durably.
//!
//! Both logs are segmented. Each time they have grown by `--checkpoint-bytes`, a
//! checkpoint ([`crate::checkpoint`]) records the state (users, follow edges, the number
//! of each user's last delivery); segments before it are deleted once every reader has
//! read them (the outbox's: every cluster's sync service; the journal's: both servers).
//! A reader behind the oldest segment kept gets a state transfer: the checkpointed
//! state and, from the timeline files, the posts (the outbox: this cluster's users' own
//! posts; the journal: every delivery).
//!
//! # Layout
//! - here: [`SyncState`], what the logs hold in memory, and the rules: what goes to which
//!   cluster, what is new, who gets a post and with what number.
//! - [`seen`]: the one look-up of the disk the rules make (is an old post already in a
//!   timeline?), behind a trait.
//! - `logs`: the two served logs, and what a reader behind their oldest segment gets.
//! - `open`: the start, from the last checkpoint and the logs after it.
//! - `checkpoints`: when a checkpoint is due, taking it, and deleting what it covers.

mod checkpoints;
mod logs;
mod open;
pub mod seen;

pub use checkpoints::UNREAD_WARN_INTERVALS;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tsn_datastore::{Cursors, DatastoreError, Record, RoleDir};
use tsn_protocol::sync::Cursor;
use tsn_protocol::types::{apply_follow, cluster_of};
use tsn_protocol::{Change, ClusterId, PostId, UserId};

use crate::feed::FeedSource;
use crate::views::Views;
use crate::window::Window;
use logs::ServedLog;
use seen::Seen;

/// How many post ids (of the outbox) and deliveries (of the journal) are remembered to
/// recognise one read again: a re-read batch, or the same post from both servers'
/// journals, comes within far fewer.
pub const ID_WINDOW: usize = 65_536;

/// Latest state of one follow relation: (timestamp, following?).
type Edge = (i64, bool);

/// The cursor key of a server's journal feed.
pub fn server_key(kind: tsn_protocol::coord::NodeKind) -> String {
    format!("from-{}", kind.as_str())
}

/// The cursor key of a cluster's outbox feed.
pub fn outbox_key(cluster: ClusterId) -> String {
    format!("from-cluster-{cluster}")
}

/// The sync service's state.
#[derive(Debug)]
pub struct SyncState {
    cluster: ClusterId,
    clusters: u32,
    dir: RoleDir,
    outbox: ServedLog,
    journal: ServedLog,
    views: Views,
    cursors: Cursors,
    /// `--checkpoint-bytes`.
    checkpoint_bytes: u64,
    /// `--max-clock-offset-ms`, in microseconds.
    max_clock_offset_us: i64,
    /// The last checkpoint: journal offset, outbox offset, size in bytes.
    last: (u64, u64, u64),
    /// The newest timestamp seen (a checkpoint's clock).
    max_ts: i64,
    // What the outbox holds.
    out_users: HashSet<UserId>,
    out_posts: Window<PostId>,
    /// This cluster's follow relations: followee -> follower -> edge.
    following: HashMap<UserId, HashMap<UserId, Edge>>,
    // What the journal holds.
    users: HashSet<UserId>,
    followers: HashMap<(UserId, UserId), Edge>,
    delivered: Window<(UserId, PostId)>,
    /// The number of the last post delivered to each user.
    last_seq: HashMap<UserId, u64>,
    /// What the timelines hold beyond the ids kept in memory.
    seen: Box<dyn Seen>,
    /// Journal records appended but not committed: they go to the view files once the
    /// journal holds them durably.
    uncommitted: Vec<Record>,
}

impl SyncState {
    /// The outbox, for other sync services.
    pub fn outbox_source(&self) -> FeedSource {
        self.outbox.source.clone()
    }

    /// The journal, for this cluster's servers.
    pub fn journal_source(&self) -> FeedSource {
        self.journal.source.clone()
    }

    /// The saved cursor of a feed.
    pub fn cursor(&self, key: &str) -> Cursor {
        self.cursors.feed(key)
    }

    /// Whether `change` goes to cluster `dest`: users and posts everywhere, a follow to
    /// the followee's cluster.
    pub fn wanted(change: &Change, dest: ClusterId, clusters: u32) -> bool {
        match change {
            Change::User { .. } | Change::Post(_) => true,
            Change::Follow { followee, .. } => cluster_of(*followee, clusters) == dest,
            // A user's key matters only to its home cluster's servers.
            Change::Key { .. } => false,
        }
    }

    /// Number of clusters.
    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// Records a change of this cluster in memory; returns whether it is new.
    fn note_local(&mut self, c: &Change) -> bool {
        match c {
            Change::Key { .. } => false,
            Change::User { user } => self.out_users.insert(*user),
            Change::Post(p) => {
                self.max_ts = self.max_ts.max(p.ts_us);
                if self.out_posts.contains(&p.id) {
                    return false;
                }
                // An id older than the window's memory: this cluster's posts reach their
                // authors' own timelines, so the author's file says whether it was seen.
                if self.out_posts.may_have_forgotten(p.ts_us) && self.seen.holds(p.id.author, &p.id)
                {
                    return false;
                }
                self.out_posts.insert(p.id, p.ts_us)
            }
            Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            } => {
                self.max_ts = self.max_ts.max(*ts_us);
                let m = self.following.entry(*followee).or_default();
                apply_follow(m, *follower, *ts_us, *active)
            }
        }
    }

    /// Records a journal record in memory; returns whether it is new.
    fn note_delivered(&mut self, r: &Record) -> bool {
        match r {
            Record::Change(Change::User { user }) => self.users.insert(*user),
            Record::Change(Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            }) => apply_follow(&mut self.followers, (*followee, *follower), *ts_us, *active),
            Record::Change(Change::Post(_) | Change::Key { .. }) => false,
            Record::Deliver { to, seq, post } => {
                let last = self.last_seq.entry(*to).or_default();
                *last = (*last).max(*seq);
                self.delivered.insert((*to, post.id), post.ts_us)
            }
        }
    }

    /// Local users who followed `author` at `ts_us` (and have not unfollowed since), when
    /// this node's wall clock reads `now`. A follow stamped more than the maximum clock
    /// offset ahead of `now` was stamped by a clock that was wrong: it counts as made
    /// already, so that its follower gets the posts made after it (which the clocks of
    /// their authors stamp earlier), and also those that were still on their way.
    fn followers_at(&self, author: UserId, ts_us: i64, now: i64) -> Vec<UserId> {
        let made = |ts: i64| ts <= ts_us || ts.saturating_sub(now) > self.max_clock_offset_us;
        self.following
            .get(&author)
            .map(|m| {
                m.iter()
                    .filter(|(f, (ts, active))| *active && made(*ts) && **f != author)
                    .map(|(f, _)| *f)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves the cursor `key` of a feed once what it read before `at` is taken.
    pub fn save_cursor(&mut self, key: &str, at: Cursor) -> Result<(), DatastoreError> {
        self.commit()?;
        self.cursors.set_feed(key, at);
        // Not flushed: after a power loss a feed is read again from an older position, and
        // what was taken already is recognised (ids, numbers, timeline files).
        self.cursors
            .save_with(&self.dir.cursors(), tsn_datastore::Durability::NoSync)
    }

    /// Takes a batch of a server's journal feed into the outbox. Returns how many
    /// changes were new.
    pub fn absorb(&mut self, entries: Vec<Record>) -> Result<usize, DatastoreError> {
        let mut fresh = Vec::new();
        for c in entries.into_iter().filter_map(Record::into_change) {
            if self.note_local(&c) {
                fresh.push(Record::Change(c));
            }
        }
        if !fresh.is_empty() {
            self.outbox.append(&fresh)?;
        }
        Ok(fresh.len())
    }

    /// Takes a batch of a cluster's outbox feed into the journal and the view files.
    /// Returns how many records were new.
    pub fn deliver(&mut self, entries: Vec<Record>) -> Result<usize, DatastoreError> {
        let mut fresh = Vec::new();
        for c in entries.into_iter().filter_map(Record::into_change) {
            match c {
                Change::User { .. } => {
                    let r = Record::Change(c);
                    if self.note_delivered(&r) {
                        fresh.push(r);
                    }
                }
                Change::Follow { followee, .. } => {
                    if cluster_of(followee, self.clusters) != self.cluster {
                        continue;
                    }
                    let r = Record::Change(c);
                    if self.note_delivered(&r) {
                        fresh.push(r);
                    }
                }
                Change::Key { .. } => {}
                Change::Post(p) => {
                    let mut to_all = self.followers_at(p.id.author, p.ts_us, crate::now_us());
                    if cluster_of(p.id.author, self.clusters) == self.cluster {
                        to_all.push(p.id.author);
                    }
                    for to in to_all {
                        if self.delivered.contains(&(to, p.id)) {
                            continue;
                        }
                        if self.delivered.may_have_forgotten(p.ts_us) && self.seen.holds(to, &p.id)
                        {
                            continue;
                        }
                        let seq = self.last_seq.get(&to).copied().unwrap_or(0) + 1;
                        let r = Record::Deliver {
                            to,
                            seq,
                            post: p.clone(),
                        };
                        self.note_delivered(&r);
                        fresh.push(r);
                    }
                }
            }
        }
        if !fresh.is_empty() {
            self.journal.append(&fresh)?;
        }
        let n = fresh.len();
        self.uncommitted.extend(fresh);
        Ok(n)
    }

    /// Commits each log whose last flush is at least [`crate::FLUSH_PACE`] old; returns
    /// how long until what is left is due (`None`: nothing is left; the committer is told
    /// otherwise).
    pub fn commit_due(&mut self) -> Result<Option<Duration>, DatastoreError> {
        if self.outbox.due_in() == Some(Duration::ZERO) {
            self.outbox.commit()?;
        }
        if self.journal.due_in() == Some(Duration::ZERO) && self.journal.commit()? {
            self.journal_committed();
        }
        Ok(self
            .outbox
            .due_in()
            .into_iter()
            .chain(self.journal.due_in())
            .min())
    }

    /// Makes what both logs were given durable and serves it.
    pub fn commit(&mut self) -> Result<(), DatastoreError> {
        self.outbox.commit()?;
        if self.journal.commit()? {
            self.journal_committed();
        }
        Ok(())
    }

    /// The journal holds its new deliveries durably: they go to the view files.
    fn journal_committed(&mut self) {
        let fresh = std::mem::take(&mut self.uncommitted);
        if fresh.is_empty() {
            return;
        }
        if let Err(e) = self.views.append(&fresh) {
            tracing::warn!(
                "view file append failed (completed once writes work again; no checkpoint until then): {e}"
            );
        }
        // The timeline files' ids held for the check of old ids stay current (what the
        // journal holds counts as seen even if a view append failed).
        for r in &fresh {
            if let Record::Deliver { to, post, .. } = r {
                self.seen.delivered(*to, post.id);
            }
        }
    }

    /// Writes the clean-shutdown marker, unless a view file is still owed records (the
    /// next start then completes it from the journal).
    pub fn close_cleanly(&mut self) -> Result<(), DatastoreError> {
        self.commit()?;
        if !self.views.complete_for_shutdown() {
            tracing::warn!("no clean-shutdown marker: the next start completes the view files from the journal");
            return Ok(());
        }
        tsn_datastore::write_atomic(
            &self.dir.clean_marker(),
            b"",
            tsn_datastore::Durability::Sync,
        )
    }
}
