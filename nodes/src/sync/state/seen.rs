//! Whether a user's timeline already holds a post older than the ids kept in memory:
//! the one question the sync service's state asks of the disk, behind [`Seen`].

use std::collections::{HashMap, HashSet};

use tsn_datastore::{Record, RoleDir};
use tsn_protocol::{PostId, UserId};

/// Timeline files whose post ids are held at once for the check of old ids.
const ON_DISK_USERS: usize = 256;

/// Post ids of timeline files held at once for the check of old ids.
const ON_DISK_IDS: usize = 1 << 20;

/// What the timelines hold, beyond the ids the state keeps in memory.
pub trait Seen: std::fmt::Debug + Send {
    /// Whether `user`'s timeline holds post `id`.
    fn holds(&mut self, user: UserId, id: &PostId) -> bool;

    /// `id` was just delivered to `user`'s timeline.
    fn delivered(&mut self, user: UserId, id: PostId);
}

/// The timeline files of a role directory: a user's file is read once, then its ids are
/// kept and added to as deliveries are appended (old ids come in bursts: after a long
/// partition, when an outbox is read again, or when one server's journal feed lags the
/// other's). At most [`ON_DISK_USERS`] files and [`ON_DISK_IDS`] ids are held.
#[derive(Debug)]
pub struct TimelineFiles {
    dir: RoleDir,
    ids: HashMap<UserId, HashSet<PostId>>,
    held: usize,
}

impl TimelineFiles {
    /// The timeline files of `dir`, none read yet.
    pub fn new(dir: RoleDir) -> TimelineFiles {
        TimelineFiles {
            dir,
            ids: HashMap::new(),
            held: 0,
        }
    }
}

impl Seen for TimelineFiles {
    fn holds(&mut self, user: UserId, id: &PostId) -> bool {
        if !self.ids.contains_key(&user) {
            if self.ids.len() >= ON_DISK_USERS || self.held >= ON_DISK_IDS {
                self.ids.clear();
                self.held = 0;
            }
            let ids: HashSet<PostId> = match tsn_datastore::read_records(&self.dir.timeline(user)) {
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
            self.held += ids.len();
            self.ids.insert(user, ids);
        }
        self.ids.get(&user).is_some_and(|ids| ids.contains(id))
    }

    fn delivered(&mut self, user: UserId, id: PostId) {
        if let Some(ids) = self.ids.get_mut(&user) {
            if ids.insert(id) {
                self.held += 1;
            }
        }
    }
}

/// Timelines held in memory (for tests of the state).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct InMemory(pub HashSet<(UserId, PostId)>);

#[cfg(test)]
impl Seen for InMemory {
    fn holds(&mut self, user: UserId, id: &PostId) -> bool {
        self.0.contains(&(user, *id))
    }

    fn delivered(&mut self, user: UserId, id: PostId) {
        self.0.insert((user, id));
    }
}
