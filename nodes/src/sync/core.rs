//! The sync service's state and the one writer of its role directory.
//!
//! Two logs, each served as a feed:
//! - `outbox.data`: this cluster's changes (users, follows, posts), merged from both
//!   servers' journal feeds, each change once. Every cluster's sync service (this one
//!   included) reads it, and gets what it needs: users and posts everywhere, a follow in
//!   the followee's cluster.
//! - `journal.data`: what this sync service gives its cluster's servers, from every
//!   cluster's outbox: users system-wide (`global_clients.data`), follows of this
//!   cluster's users (`followers.data`), and each post delivered to the timeline of every
//!   local user who followed its author when it was posted, and of its author
//!   (`timeline.data`). Older posts are not back-filled. Deliveries to each user are
//!   numbered 1, 2, 3, ...: a client resumes its timeline from such a number, the same on
//!   both servers of the cluster.
//!
//! Each batch is appended and flushed (fdatasync) before the cursor of the feed it came
//! from is saved, so a crash re-reads a batch and never skips one; a record read twice
//! is recognised and written once.

use std::collections::{HashMap, HashSet};

use tsn_datastore::{AppendLog, Cursors, DatastoreError, Record, RoleDir};
use tsn_protocol::sync::{Cursor, Entry};
use tsn_protocol::types::{cluster_of, follow_supersedes};
use tsn_protocol::{Change, ClusterId, PostId, UserId};

use crate::feed::{FeedLen, FeedSource};
use crate::views::{Side, Views};

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

/// A log this process writes and serves.
#[derive(Debug)]
struct ServedLog {
    log: AppendLog,
    len: FeedLen,
    source: FeedSource,
}

impl ServedLog {
    fn open(path: &std::path::Path) -> Result<(ServedLog, Vec<Record>), DatastoreError> {
        let (log, records) = AppendLog::open(path)?;
        let id = tsn_datastore::log_id(path)?;
        let segments = tsn_datastore::Segments::single(path);
        let (len, source) = FeedSource::new(segments, id, log.len());
        Ok((ServedLog { log, len, source }, records))
    }

    fn append_durably(&mut self, records: &[Record]) -> Result<(), DatastoreError> {
        self.log.append(records)?;
        self.log.sync()?;
        self.len.set(self.log.len());
        Ok(())
    }
}

/// The sync service's state.
#[derive(Debug)]
pub struct SyncCore {
    cluster: ClusterId,
    clusters: u32,
    dir: RoleDir,
    outbox: ServedLog,
    journal: ServedLog,
    views: Views,
    cursors: Cursors,
    // What the outbox holds.
    out_users: HashSet<UserId>,
    out_posts: HashSet<PostId>,
    /// This cluster's follow relations: followee -> follower -> edge.
    following: HashMap<UserId, HashMap<UserId, Edge>>,
    // What the journal holds.
    users: HashSet<UserId>,
    followers: HashMap<(UserId, UserId), Edge>,
    delivered: HashSet<(UserId, PostId)>,
    /// The number of the last post delivered to each user.
    last_seq: HashMap<UserId, u64>,
}

impl SyncCore {
    /// Opens the role directory `dir`, loading both logs (and rebuilding the view files
    /// when the last exit was not clean).
    pub fn open(
        dir: RoleDir,
        cluster: ClusterId,
        clusters: u32,
    ) -> Result<SyncCore, DatastoreError> {
        dir.create()?;
        let (outbox, out_records) = ServedLog::open(&dir.outbox())?;
        let (journal, records) = ServedLog::open(&dir.journal())?;
        let cursors = Cursors::load(&dir.cursors())?;
        let clean = dir.clean_marker().exists();
        if clean {
            std::fs::remove_file(dir.clean_marker()).map_err(|source| DatastoreError::Io {
                path: dir.clean_marker(),
                source,
            })?;
        } else if !records.is_empty() {
            match crate::views::rebuild(&dir, &[(Side::Sync, &records)]) {
                Ok(n) => tracing::info!(files = n, "previous exit was not clean: rebuilt view files from the journal"),
                Err(e) => tracing::error!("previous exit was not clean and rebuilding the view files failed; continuing from the journal: {e}"),
            }
        }
        let mut core = SyncCore {
            cluster,
            clusters,
            views: Views::new(dir.clone(), Side::Sync),
            dir,
            outbox,
            journal,
            cursors,
            out_users: HashSet::new(),
            out_posts: HashSet::new(),
            following: HashMap::new(),
            users: HashSet::new(),
            followers: HashMap::new(),
            delivered: HashSet::new(),
            last_seq: HashMap::new(),
        };
        for r in &out_records {
            if let Record::Change(c) = r {
                core.note_local(c);
            }
        }
        for r in &records {
            core.note_delivered(r);
        }
        tracing::info!(
            outbox = out_records.len(),
            journal = records.len(),
            "sync service state loaded"
        );
        Ok(core)
    }

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
            Change::Post(p) => self.out_posts.insert(p.id),
            Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            } => {
                let m = self.following.entry(*followee).or_default();
                if follow_supersedes(m.get(follower).copied(), *ts_us, *active) {
                    m.insert(*follower, (*ts_us, *active));
                    true
                } else {
                    false
                }
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
            }) => {
                let key = (*followee, *follower);
                if follow_supersedes(self.followers.get(&key).copied(), *ts_us, *active) {
                    self.followers.insert(key, (*ts_us, *active));
                    true
                } else {
                    false
                }
            }
            Record::Change(Change::Post(_) | Change::Key { .. }) => false,
            Record::Deliver { to, seq, post } => {
                let last = self.last_seq.entry(*to).or_default();
                *last = (*last).max(*seq);
                self.delivered.insert((*to, post.id))
            }
        }
    }

    /// Local users who followed `author` at `ts_us` (and have not unfollowed since).
    fn followers_at(&self, author: UserId, ts_us: i64) -> Vec<UserId> {
        self.following
            .get(&author)
            .map(|m| {
                m.iter()
                    .filter(|(f, (ts, active))| *active && *ts <= ts_us && **f != author)
                    .map(|(f, _)| *f)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn save_cursor(&mut self, key: &str, at: Cursor) -> Result<(), DatastoreError> {
        self.cursors.set_feed(key, at);
        self.cursors.save(&self.dir.cursors())
    }

    /// Takes a batch of a server's journal feed into the outbox. Returns how many
    /// changes were new.
    pub fn absorb(
        &mut self,
        key: &str,
        entries: Vec<Entry>,
        next: Cursor,
    ) -> Result<usize, DatastoreError> {
        let mut fresh = Vec::new();
        for e in entries {
            if let Entry::Change(c) = e {
                if self.note_local(&c) {
                    fresh.push(Record::Change(c));
                }
            }
        }
        if !fresh.is_empty() {
            self.outbox.append_durably(&fresh)?;
        }
        self.save_cursor(key, next)?;
        Ok(fresh.len())
    }

    /// Takes a batch of a cluster's outbox feed into the journal and the view files.
    /// Returns how many records were new.
    pub fn deliver(
        &mut self,
        key: &str,
        entries: Vec<Entry>,
        next: Cursor,
    ) -> Result<usize, DatastoreError> {
        let mut fresh = Vec::new();
        for e in entries {
            let Entry::Change(c) = e else { continue };
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
                    let mut to_all = self.followers_at(p.id.author, p.ts_us);
                    if cluster_of(p.id.author, self.clusters) == self.cluster {
                        to_all.push(p.id.author);
                    }
                    for to in to_all {
                        if self.delivered.contains(&(to, p.id)) {
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
            self.journal.append_durably(&fresh)?;
            if let Err(e) = self.views.append(&fresh) {
                tracing::warn!(
                    "view file append failed (rebuilt from the journal at next start): {e}"
                );
            }
        }
        self.save_cursor(key, next)?;
        Ok(fresh.len())
    }

    /// Writes the clean-shutdown marker (the views are complete).
    pub fn close_cleanly(&self) -> Result<(), DatastoreError> {
        tsn_datastore::write_atomic(
            &self.dir.clean_marker(),
            b"",
            tsn_datastore::Durability::Sync,
        )
    }
}
