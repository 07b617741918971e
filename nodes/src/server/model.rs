//! A server's in-memory view of its cluster, rebuilt on start from its own journal and
//! what it received from the sync service. Pure data: no I/O, no clock.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use tsn_datastore::Record;
use tsn_protocol::types::{follow_supersedes, key_supersedes, KeyBinding};
use tsn_protocol::{Change, Post, PostId, UserId, TIMELINE_BACKLOG};

/// Latest state of one follow relation: (timestamp, following?).
type Edge = (i64, bool);

/// What the server knows.
#[derive(Debug, Default)]
pub struct Model {
    /// Users created by logging in to this cluster.
    local_users: BTreeSet<UserId>,
    /// Users known system-wide, as written by the sync service.
    global_users: BTreeSet<UserId>,
    /// follower -> followee -> edge, for this cluster's users (from the server journal).
    following: HashMap<UserId, HashMap<UserId, Edge>>,
    /// followee -> follower -> edge, for this cluster's users (from the sync journal).
    followers: HashMap<UserId, HashMap<UserId, Edge>>,
    /// Ids of posts stored by this cluster's servers (resends are recognised by these).
    own_posts: HashSet<PostId>,
    /// (recipient, post) pairs delivered by the sync service.
    delivered: HashSet<(UserId, PostId)>,
    /// The last [`TIMELINE_BACKLOG`] entries of each user's timeline with their numbers
    /// (see [`tsn_protocol::client::TimelinePos`]), oldest first.
    recent: HashMap<UserId, VecDeque<(u64, Post)>>,
    /// The number of the last entry of each user's timeline.
    last_seq: HashMap<UserId, u64>,
    /// The key each of this cluster's users is bound to.
    keys: HashMap<UserId, KeyBinding>,
}

/// A new entry of a user's timeline: (user, its number, the post).
pub type TimelineEntry = (UserId, u64, Post);

impl Model {
    /// Whether applying `change` (made by this cluster's servers) would change anything.
    pub fn is_new(&self, change: &Change) -> bool {
        match change {
            Change::User { user } => !self.local_users.contains(user),
            Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            } => follow_supersedes(
                self.following
                    .get(follower)
                    .and_then(|m| m.get(followee))
                    .copied(),
                *ts_us,
                *active,
            ),
            Change::Post(p) => !self.own_posts.contains(&p.id),
            Change::Key {
                user,
                generation,
                ts_us,
                key,
            } => key_supersedes(self.keys.get(user), &(*generation, *ts_us, key.clone())),
        }
    }

    /// Applies a change made by this cluster's servers; returns whether it was new. (A
    /// post reaches timelines, its author's included, through the sync service.)
    pub fn apply_own(&mut self, change: &Change) -> bool {
        if !self.is_new(change) {
            return false;
        }
        match change {
            Change::User { user } => {
                self.local_users.insert(*user);
            }
            Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            } => {
                self.following
                    .entry(*follower)
                    .or_default()
                    .insert(*followee, (*ts_us, *active));
            }
            Change::Post(p) => {
                self.own_posts.insert(p.id);
            }
            Change::Key {
                user,
                generation,
                ts_us,
                key,
            } => {
                self.keys.insert(*user, (*generation, *ts_us, key.clone()));
            }
        }
        true
    }

    /// The key binding of `user`, if any.
    pub fn key_of(&self, user: UserId) -> Option<&KeyBinding> {
        self.keys.get(&user)
    }

    /// Applies a record of the sync service's journal. Returns whether it was new, and
    /// the timeline entry it delivers, if any.
    pub fn apply_sync(&mut self, record: &Record) -> (bool, Option<TimelineEntry>) {
        match record {
            Record::Change(Change::User { user }) => {
                let new = !self.is_known(*user);
                self.global_users.insert(*user);
                (new, None)
            }
            Record::Change(Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            }) => {
                let edges = self.followers.entry(*followee).or_default();
                let new = follow_supersedes(edges.get(follower).copied(), *ts_us, *active);
                if new {
                    edges.insert(*follower, (*ts_us, *active));
                }
                (new, None)
            }
            Record::Change(Change::Post(_) | Change::Key { .. }) => (false, None),
            Record::Deliver { to, seq, post } => {
                if !self.delivered.insert((*to, post.id)) {
                    return (false, None);
                }
                let last = self.last_seq.entry(*to).or_default();
                *last = (*last).max(*seq);
                let q = self.recent.entry(*to).or_default();
                // Numbers arrive in order; keep the queue sorted all the same.
                let at = q.iter().rposition(|(s, _)| s <= seq).map_or(0, |i| i + 1);
                q.insert(at, (*seq, post.clone()));
                while q.len() > TIMELINE_BACKLOG {
                    q.pop_front();
                }
                (true, Some((*to, *seq, post.clone())))
            }
        }
    }

    /// Forgets everything received from the sync service (its journal was begun anew,
    /// and will be read again from its start, numbering deliveries afresh); returns what
    /// had been delivered.
    pub fn reset_received(&mut self) -> HashSet<(UserId, PostId)> {
        self.global_users.clear();
        self.followers.clear();
        self.recent.clear();
        self.last_seq.clear();
        std::mem::take(&mut self.delivered)
    }

    /// The number of the last entry of `user`'s timeline (0: none).
    pub fn last_seq(&self, user: UserId) -> u64 {
        self.last_seq.get(&user).copied().unwrap_or(0)
    }

    /// Every entry of `user`'s timeline after number `after`, if they are all still in
    /// memory.
    pub fn entries_after(&self, user: UserId, after: u64) -> Option<Vec<(u64, Post)>> {
        if self.last_seq(user) <= after {
            return Some(Vec::new());
        }
        let q = self.recent.get(&user)?;
        if q.front().is_none_or(|(s, _)| *s > after + 1) {
            return None;
        }
        Some(q.iter().filter(|(s, _)| *s > after).cloned().collect())
    }

    /// Whether `user` logged in to this cluster.
    pub fn is_local(&self, user: UserId) -> bool {
        self.local_users.contains(&user)
    }

    /// Whether `user` exists anywhere, as far as this server knows.
    pub fn is_known(&self, user: UserId) -> bool {
        self.local_users.contains(&user) || self.global_users.contains(&user)
    }

    /// Whether `user` currently follows `target`.
    pub fn follows(&self, user: UserId, target: UserId) -> bool {
        self.following
            .get(&user)
            .and_then(|m| m.get(&target))
            .is_some_and(|e| e.1)
    }

    /// Whether the post is stored here already.
    pub fn has_post(&self, id: &PostId) -> bool {
        self.own_posts.contains(id)
    }

    /// Every known user, ascending.
    pub fn all_users(&self) -> Vec<UserId> {
        self.local_users
            .union(&self.global_users)
            .copied()
            .collect()
    }

    /// The current followers of `user`, ascending.
    pub fn followers_of(&self, user: UserId) -> Vec<UserId> {
        let mut v: Vec<UserId> = self
            .followers
            .get(&user)
            .map(|m| m.iter().filter(|(_, e)| e.1).map(|(f, _)| *f).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The last entries of `user`'s timeline with their numbers, oldest first.
    pub fn backlog(&self, user: UserId) -> Vec<(u64, Post)> {
        self.recent
            .get(&user)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(author: u32, nonce: u64, ts_us: i64) -> Post {
        Post {
            id: PostId { author, nonce },
            ts_us,
            text: format!("p{nonce}"),
        }
    }

    fn deliver(to: u32, seq: u64, p: Post) -> Record {
        Record::Deliver { to, seq, post: p }
    }

    #[test]
    fn resent_post_is_stored_once() {
        let mut m = Model::default();
        let c = Change::Post(post(1, 7, 10));
        assert!(m.apply_own(&c));
        assert!(!m.is_new(&c));
        assert!(!m.apply_own(&c));
        assert!(m.has_post(&PostId {
            author: 1,
            nonce: 7
        }));
    }

    #[test]
    fn latest_follow_timestamp_wins_in_any_order() {
        let f = |ts, active| Change::Follow {
            follower: 1,
            followee: 2,
            ts_us: ts,
            active,
        };
        let mut a = Model::default();
        a.apply_own(&f(1, true));
        a.apply_own(&f(2, false));
        let mut b = Model::default();
        b.apply_own(&f(2, false));
        b.apply_own(&f(1, true));
        assert!(!a.follows(1, 2));
        assert!(!b.follows(1, 2));
    }

    #[test]
    fn backlog_keeps_the_last_twenty_by_number_whatever_their_times() {
        let mut m = Model::default();
        for i in 1..=30u64 {
            // Times out of order: a late post from a partition, say.
            let ts = if i == 25 { 1 } else { i as i64 * 10 };
            m.apply_sync(&deliver(1, i, post(2, i, ts)));
        }
        let b = m.backlog(1);
        assert_eq!(b.len(), TIMELINE_BACKLOG);
        assert_eq!(b.first().map(|e| e.0), Some(11));
        assert_eq!(b.last().map(|e| e.0), Some(30));
        assert_eq!(m.last_seq(1), 30);
        assert_eq!(m.entries_after(1, 30), Some(vec![]));
        let after = m.entries_after(1, 24).unwrap();
        assert_eq!(
            after.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![25, 26, 27, 28, 29, 30]
        );
        assert_eq!(m.entries_after(1, 10).map(|v| v.len()), Some(20));
        assert_eq!(
            m.entries_after(1, 9),
            None,
            "entry 10 is no longer in memory"
        );
    }

    #[test]
    fn deliveries_are_deduplicated_and_followers_listed() {
        let mut m = Model::default();
        let d = deliver(3, 1, post(5, 1, 1));
        assert!(m.apply_sync(&d).1.is_some());
        assert_eq!(m.apply_sync(&d), (false, None));
        m.apply_sync(&Record::Change(Change::Follow {
            follower: 9,
            followee: 3,
            ts_us: 1,
            active: true,
        }));
        m.apply_sync(&Record::Change(Change::Follow {
            follower: 4,
            followee: 3,
            ts_us: 1,
            active: true,
        }));
        assert_eq!(m.followers_of(3), vec![4, 9]);
        let before = m.reset_received();
        assert!(before.contains(&(
            3,
            PostId {
                author: 5,
                nonce: 1
            }
        )));
        assert_eq!(m.last_seq(3), 0);
        assert!(m.apply_sync(&d).1.is_some(), "numbered afresh");
    }
}
