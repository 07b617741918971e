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
//! is recognised and written once: by the last [`ID_WINDOW`] post ids and deliveries in
//! memory, and, for an older one, by the user's timeline file on disk.
//!
//! Both logs are segmented. Each time they have grown by `--checkpoint-bytes`, a
//! checkpoint ([`crate::checkpoint`]) records the state (users, follow edges, the number
//! of each user's last delivery); segments before it are deleted once every reader has
//! read them (the outbox's: every cluster's sync service; the journal's: both servers).
//! A reader behind the oldest segment kept gets a state transfer: the checkpointed
//! state and, from the timeline files, the posts (the outbox: this cluster's users' own
//! posts; the journal: every delivery).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tsn_datastore::{Cursors, DatastoreError, Record, RoleDir, SegmentedLog};
use tsn_protocol::coord::NodeKind;
use tsn_protocol::sync::Cursor;
use tsn_protocol::types::{apply_follow, cluster_of};
use tsn_protocol::{Change, ClusterId, PostId, UserId};

use crate::checkpoint::{self, Checkpoint, Checkpointed};
use crate::feed::{FeedLen, FeedSource, Reader, Transfer};
use crate::views::{Side, Views};
use crate::window::Window;

/// How many post ids (of the outbox) and deliveries (of the journal) are remembered to
/// recognise one read again: a re-read batch, or the same post from both servers'
/// journals, comes within far fewer.
pub const ID_WINDOW: usize = 65_536;

/// Timeline files whose post ids are held at once for the check of old ids.
const ON_DISK_USERS: usize = 256;

/// Post ids of timeline files held at once for the check of old ids.
const ON_DISK_IDS: usize = 1 << 20;

/// A log that holds this many checkpoint intervals some reader has not read is reported
/// at each checkpoint.
pub const UNREAD_WARN_INTERVALS: u64 = 16;

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
    log: SegmentedLog,
    len: FeedLen,
    source: FeedSource,
    /// Who reads it: what they have read may be deleted.
    readers: Vec<Reader>,
}

impl ServedLog {
    /// Opens the log at `path`, returning its records from `from` on.
    fn open(
        path: &std::path::Path,
        from: u64,
        readers: Vec<Reader>,
        transfer: Transfer,
    ) -> Result<(ServedLog, Vec<Record>), DatastoreError> {
        let (log, records) = SegmentedLog::open(path, from)?;
        let id = tsn_datastore::log_id(path)?;
        let (len, source) = FeedSource::new(log.segments(), id, log.len());
        let source = source.with_transfer(transfer);
        Ok((
            ServedLog {
                log,
                len,
                source,
                readers,
            },
            records,
        ))
    }

    /// Deletes the segments before `covered` that every reader has read; warns when what
    /// some reader has not read piles up.
    fn delete_read(&mut self, covered: u64, warn_over: u64) -> Result<(), DatastoreError> {
        let read = self.source.consumed_by(&self.readers);
        self.log.delete_through(read.unwrap_or(0).min(covered))?;
        let kept = self.log.len() - self.log.start();
        if kept > warn_over {
            tracing::warn!(
                log = %self.log.path().display(),
                kept_bytes = kept,
                read_by_all = ?read,
                "log segments pile up: a reader has not read them (it is down or far behind); they are kept until it has"
            );
        }
        Ok(())
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
    /// The post ids of users' timeline files, read for the check of old ids and kept up
    /// to date as deliveries are appended.
    on_disk: HashMap<UserId, HashSet<PostId>>,
    /// How many ids `on_disk` holds.
    on_disk_ids: usize,
}

/// Every delivery in the timeline files of `dir` (to the file's user), and with
/// `own_only`, only each user's own posts.
fn timeline_files(dir: &RoleDir, own_only: bool) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for user in dir.users() {
        for r in tsn_datastore::read_records(&dir.timeline(user))? {
            match r {
                Record::Deliver { to, post, .. } if own_only && post.id.author == to => {
                    out.push(Record::Change(Change::Post(post)));
                }
                Record::Deliver { .. } if !own_only => out.push(r),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// What a sync service behind the outbox's oldest segment gets: the checkpoint's users
/// and follow edges of this cluster, and this cluster's users' own posts.
fn outbox_transfer(dir: &RoleDir) -> anyhow::Result<Vec<Record>> {
    let mut records = checkpoint::load(dir)?
        .map(|cp| cp.state.received)
        .unwrap_or_default();
    records.extend(timeline_files(dir, true)?);
    Ok(records)
}

/// What a server behind the journal's oldest segment gets: the checkpoint's users and
/// followers, and every delivery, with its number.
fn journal_transfer(dir: &RoleDir) -> anyhow::Result<Vec<Record>> {
    let mut records = checkpoint::load(dir)?
        .map(|cp| cp.state.own)
        .unwrap_or_default();
    records.extend(timeline_files(dir, false)?);
    Ok(records)
}

impl SyncState {
    /// Opens the role directory `dir`: the last checkpoint and both logs after it
    /// (completing the view files when the last exit was not clean).
    pub fn open(
        dir: RoleDir,
        cluster: ClusterId,
        clusters: u32,
        checkpoint_bytes: u64,
        max_clock_offset: std::time::Duration,
    ) -> anyhow::Result<SyncState> {
        dir.create()?;
        let cp = checkpoint::load(&dir)?.unwrap_or_default();
        let last_size = std::fs::metadata(checkpoint::path(&dir)).map_or(0, |m| m.len());
        let syncs: Vec<Reader> = (1..=clusters).map(|c| (c, NodeKind::Sync)).collect();
        let servers = vec![(cluster, NodeKind::Primary), (cluster, NodeKind::Secondary)];
        let (outbox, out_records) = {
            let d = dir.clone();
            ServedLog::open(
                &dir.outbox(),
                cp.other,
                syncs,
                Arc::new(move || outbox_transfer(&d)),
            )?
        };
        let (journal, records) = {
            let d = dir.clone();
            ServedLog::open(
                &dir.journal(),
                cp.journal,
                servers,
                Arc::new(move || journal_transfer(&d)),
            )?
        };
        let cursors = Cursors::load(&dir.cursors())?;
        let clean = dir.clean_marker().exists();
        if clean {
            std::fs::remove_file(dir.clean_marker()).map_err(|source| DatastoreError::Io {
                path: dir.clean_marker(),
                source,
            })?;
        } else if !records.is_empty() {
            match crate::views::reconcile(&dir, &[(Side::Sync, &records)]) {
                Ok(n) => tracing::info!(files = n, "previous exit was not clean: completed the view files from the journal after the last checkpoint"),
                Err(e) => tracing::error!("previous exit was not clean and completing the view files failed; continuing from the journal: {e}"),
            }
        }
        let mut core = SyncState {
            cluster,
            clusters,
            views: Views::new(dir.clone(), Side::Sync),
            dir,
            outbox,
            journal,
            cursors,
            checkpoint_bytes,
            max_clock_offset_us: i64::try_from(max_clock_offset.as_micros()).unwrap_or(i64::MAX),
            last: (cp.journal, cp.other, last_size),
            max_ts: cp.clock,
            out_users: HashSet::new(),
            out_posts: Window::new(ID_WINDOW, cp.clock),
            following: HashMap::new(),
            users: HashSet::new(),
            followers: HashMap::new(),
            delivered: Window::new(ID_WINDOW, cp.clock),
            last_seq: HashMap::new(),
            on_disk: HashMap::new(),
            on_disk_ids: 0,
        };
        for r in &cp.state.received {
            if let Record::Change(c) = r {
                core.note_local(c);
            }
        }
        for r in &cp.state.own {
            core.note_delivered(r);
        }
        for (user, seq) in &cp.state.seqs {
            core.last_seq.insert(*user, *seq);
        }
        for r in &out_records {
            if let Record::Change(c) = r {
                core.note_local(c);
            }
        }
        for r in &records {
            core.note_delivered(r);
        }
        tracing::info!(
            checkpoint_journal = cp.journal,
            checkpoint_outbox = cp.other,
            outbox = out_records.len(),
            journal = records.len(),
            "sync service state loaded: the last checkpoint and the records after it"
        );
        Ok(core)
    }

    /// Whether `user`'s timeline file holds post `id` (read once, then kept and added to
    /// as deliveries are appended: old ids come in bursts, after a long partition, when
    /// an outbox is read again or when one server's journal feed lags the other's).
    fn on_disk(&mut self, user: UserId, id: &PostId) -> bool {
        if !self.on_disk.contains_key(&user) {
            if self.on_disk.len() >= ON_DISK_USERS || self.on_disk_ids >= ON_DISK_IDS {
                self.on_disk.clear();
                self.on_disk_ids = 0;
            }
            let ids = match tsn_datastore::read_records(&self.dir.timeline(user)) {
                Ok(records) => records
                    .into_iter()
                    .filter_map(|r| match r {
                        Record::Deliver { post, .. } => Some(post.id),
                        Record::Change(_) => None,
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(
                        user,
                        "reading a timeline file to recognise an old post: {e}"
                    );
                    HashSet::new()
                }
            };
            self.on_disk_ids += ids.len();
            self.on_disk.insert(user, ids);
        }
        self.on_disk.get(&user).is_some_and(|ids| ids.contains(id))
    }

    /// The state a checkpoint keeps.
    fn checkpointed(&self) -> Checkpointed {
        let user = |u: &UserId| Record::Change(Change::User { user: *u });
        let follow = |followee: UserId, follower: UserId, (ts_us, active): Edge| {
            Record::Change(Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            })
        };
        let mut own: Vec<Record> = self.users.iter().map(user).collect();
        own.extend(
            self.followers
                .iter()
                .map(|((followee, follower), e)| follow(*followee, *follower, *e)),
        );
        let mut received: Vec<Record> = self.out_users.iter().map(user).collect();
        received.extend(self.following.iter().flat_map(|(followee, m)| {
            m.iter()
                .map(move |(follower, e)| follow(*followee, *follower, *e))
        }));
        Checkpointed::new(own, received, &self.last_seq)
    }

    /// Whether both logs together have grown by `--checkpoint-bytes` (and by the last
    /// checkpoint's size) since the last checkpoint.
    fn checkpoint_due(&self) -> bool {
        let grown = self.journal.log.len().saturating_sub(self.last.0)
            + self.outbox.log.len().saturating_sub(self.last.1);
        grown >= self.checkpoint_bytes.max(self.last.2)
    }

    /// Takes a checkpoint if one is due ([`SyncState::checkpoint_due`]); otherwise deletes
    /// the segments the last one covers that slow readers have read since. Called after
    /// each batch taken.
    pub fn maybe_checkpoint(&mut self) {
        if !self.checkpoint_due() {
            // Segments the last checkpoint covers that a slow reader has read since.
            let warn_over = u64::MAX;
            let deleted = self
                .journal
                .delete_read(self.last.0, warn_over)
                .and_then(|()| self.outbox.delete_read(self.last.1, warn_over));
            if let Err(e) = deleted {
                tracing::warn!("deleting segments read since the checkpoint: {e}");
            }
            return;
        }
        let journal_len = self.journal.log.len();
        let outbox_len = self.outbox.log.len();
        if let Err(e) = self.checkpoint() {
            tracing::error!("checkpoint failed (the logs are kept; retrying later): {e:#}");
            self.last.0 = journal_len;
            self.last.1 = outbox_len;
        }
    }

    fn checkpoint(&mut self) -> anyhow::Result<()> {
        // The journal after the last checkpoint holds what a view file still lacks: none
        // is taken while a file is owed records.
        anyhow::Context::context(
            self.views.repair(),
            "completing a view file that a write failed",
        )?;
        let state = self.checkpointed();
        let journal = self.journal.log.rotate()?;
        let outbox = self.outbox.log.rotate()?;
        crate::views::make_durable(&self.dir)?;
        let cp = Checkpoint {
            journal,
            other_name: "outbox".into(),
            other: outbox,
            clock: self.max_ts,
            state,
        };
        let size = checkpoint::save(&self.dir, &cp)?;
        let warn_over = self.checkpoint_bytes.saturating_mul(UNREAD_WARN_INTERVALS);
        self.journal.delete_read(journal, warn_over)?;
        self.outbox.delete_read(outbox, warn_over)?;
        tracing::debug!(journal, outbox, bytes = size, "checkpoint written");
        self.last = (journal, outbox, size);
        Ok(())
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
            Change::Post(p) => {
                self.max_ts = self.max_ts.max(p.ts_us);
                if self.out_posts.contains(&p.id) {
                    return false;
                }
                // An id older than the window's memory: this cluster's posts reach their
                // authors' own timelines, so the author's file says whether it was seen.
                if self.out_posts.may_have_forgotten(p.ts_us) && self.on_disk(p.id.author, &p.id) {
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
            self.outbox.append_durably(&fresh)?;
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
                        if self.delivered.may_have_forgotten(p.ts_us) && self.on_disk(to, &p.id) {
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
                    "view file append failed (completed once writes work again; no checkpoint until then): {e}"
                );
            }
            // The timeline files' ids held for the check of old ids stay current (what
            // the journal holds counts as seen even if a view append failed).
            for r in &fresh {
                if let Record::Deliver { to, post, .. } = r {
                    if let Some(ids) = self.on_disk.get_mut(to) {
                        if ids.insert(post.id) {
                            self.on_disk_ids += 1;
                        }
                    }
                }
            }
        }
        Ok(fresh.len())
    }

    /// Writes the clean-shutdown marker, unless a view file is still owed records (the
    /// next start then completes it from the journal).
    pub fn close_cleanly(&mut self) -> Result<(), DatastoreError> {
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
