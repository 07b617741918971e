//! The receiving side: applies changes from any cluster (this one included) to this
//! sync service's role directory, idempotently.
//!
//! - a user -> `global_clients.data` (every user system-wide, for LIST);
//! - a follow of one of this cluster's users -> that user's `followers.data`;
//! - a post -> the `timeline.data` of each of this cluster's users who followed its
//!   author when it was posted (the follow's timestamp is not later than the post's and
//!   no later unfollow came before the post). Older posts are not back-filled.
//!
//! Who follows whom in this cluster is read from this cluster's server journals (both
//! servers', since either may have accepted a write).

use std::collections::{HashMap, HashSet};

use tsn_datastore::{AppendLog, DatastoreError, Record, RoleDir, Tail};
use tsn_protocol::types::{cluster_of, follow_supersedes};
use tsn_protocol::{Change, ClusterId, PostId, UserId};

use crate::views::{Side, Views};

type Edge = (i64, bool);

/// This cluster's follow relations, as its servers journaled them.
#[derive(Debug)]
struct FollowIndex {
    tails: Vec<Tail>,
    /// followee -> follower -> edge.
    by_followee: HashMap<UserId, HashMap<UserId, Edge>>,
}

impl FollowIndex {
    fn refresh(&mut self) -> Result<(), DatastoreError> {
        for tail in &mut self.tails {
            loop {
                let records = tail.read_new(4096)?;
                if records.is_empty() {
                    break;
                }
                for r in records {
                    if let Record::Change(Change::Follow {
                        follower,
                        followee,
                        ts_us,
                        active,
                    }) = r
                    {
                        let m = self.by_followee.entry(followee).or_default();
                        if follow_supersedes(m.get(&follower).copied(), ts_us, active) {
                            m.insert(follower, (ts_us, active));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn followers_at(&self, author: UserId, ts_us: i64) -> Vec<UserId> {
        self.by_followee
            .get(&author)
            .map(|m| {
                m.iter()
                    .filter(|(f, (ts, active))| *active && *ts <= ts_us && **f != author)
                    .map(|(f, _)| *f)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The sync service's writer.
#[derive(Debug)]
pub struct Inbox {
    cluster: ClusterId,
    clusters: u32,
    journal: AppendLog,
    views: Views,
    users: HashSet<UserId>,
    followers: HashMap<(UserId, UserId), Edge>,
    delivered: HashSet<(UserId, PostId)>,
    index: FollowIndex,
}

impl Inbox {
    /// Opens the sync role directory `dir`, rebuilding state from its journal, and the
    /// follow index from the cluster's server directories.
    pub fn open(
        dir: RoleDir,
        servers: [RoleDir; 2],
        cluster: ClusterId,
        clusters: u32,
    ) -> Result<Inbox, DatastoreError> {
        dir.create()?;
        let (journal, records) = AppendLog::open(&dir.journal())?;
        let clean = dir.clean_marker().exists();
        if clean {
            std::fs::remove_file(dir.clean_marker()).map_err(|source| DatastoreError::Io {
                path: dir.clean_marker(),
                source,
            })?;
        } else if !records.is_empty() {
            match crate::views::rebuild(&dir, Side::Sync, &records) {
                Ok(n) => tracing::info!(files = n, "previous exit was not clean: rebuilt view files from the journal"),
                Err(e) => tracing::error!("previous exit was not clean and rebuilding the view files failed; continuing from the journal: {e}"),
            }
        }
        let mut inbox = Inbox {
            cluster,
            clusters,
            journal,
            views: Views::new(dir, Side::Sync),
            users: HashSet::new(),
            followers: HashMap::new(),
            delivered: HashSet::new(),
            index: FollowIndex {
                tails: servers.iter().map(|d| Tail::new(d.journal(), 0)).collect(),
                by_followee: HashMap::new(),
            },
        };
        for r in &records {
            inbox.remember(r);
        }
        inbox.index.refresh()?;
        Ok(inbox)
    }

    /// Writes the clean-shutdown marker (the views are complete).
    pub fn close_cleanly(&self, dir: &RoleDir) -> Result<(), DatastoreError> {
        tsn_datastore::write_atomic(&dir.clean_marker(), b"", tsn_datastore::Durability::Sync)
    }

    fn remember(&mut self, r: &Record) -> bool {
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
            Record::Change(Change::Post(_)) => false,
            Record::Deliver { to, post } => self.delivered.insert((*to, post.id)),
        }
    }

    /// Applies a batch and makes it durable. Returns how many records were new.
    pub fn apply(&mut self, changes: &[Change]) -> Result<usize, DatastoreError> {
        if changes.iter().any(|c| matches!(c, Change::Post(_))) {
            self.index.refresh()?;
        }
        let mut fresh = Vec::new();
        for c in changes {
            match c {
                Change::User { .. } => {
                    let r = Record::Change(c.clone());
                    if self.remember(&r) {
                        fresh.push(r);
                    }
                }
                Change::Follow { followee, .. } => {
                    if cluster_of(*followee, self.clusters) != self.cluster {
                        continue;
                    }
                    let r = Record::Change(c.clone());
                    if self.remember(&r) {
                        fresh.push(r);
                    }
                }
                Change::Post(p) => {
                    for to in self.index.followers_at(p.id.author, p.ts_us) {
                        let r = Record::Deliver {
                            to,
                            post: p.clone(),
                        };
                        if self.remember(&r) {
                            fresh.push(r);
                        }
                    }
                }
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        self.journal.append(&fresh)?;
        self.journal.sync()?;
        if let Err(e) = self.views.append(&fresh) {
            tracing::warn!("view file append failed (rebuilt from the journal at next start): {e}");
        }
        Ok(fresh.len())
    }
}
