//! A server's in-memory view of its cluster, rebuilt on start from its own journal and
//! what it received from the sync service. Pure data: no I/O, no clock.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use tsn_datastore::Record;
use tsn_protocol::types::follow_supersedes;
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
    /// The last [`TIMELINE_BACKLOG`] entries of each user's timeline, oldest first.
    recent: HashMap<UserId, VecDeque<Post>>,
}

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
        }
    }

    /// Applies a change made by this cluster's servers. Returns the timeline entry it
    /// creates (a new post, for its author's timeline), if any.
    pub fn apply_own(&mut self, change: &Change) -> Option<(UserId, Post)> {
        if !self.is_new(change) {
            return None;
        }
        match change {
            Change::User { user } => {
                self.local_users.insert(*user);
                None
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
                None
            }
            Change::Post(p) => {
                self.own_posts.insert(p.id);
                self.push_recent(p.id.author, p.clone());
                Some((p.id.author, p.clone()))
            }
        }
    }

    /// Applies a record of the sync service's journal. Returns whether it was new, and
    /// the timeline entry it delivers, if any.
    pub fn apply_sync(&mut self, record: &Record) -> (bool, Option<(UserId, Post)>) {
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
            Record::Change(Change::Post(_)) => (false, None),
            Record::Deliver { to, post } => {
                if !self.delivered.insert((*to, post.id)) {
                    return (false, None);
                }
                self.push_recent(*to, post.clone());
                (true, Some((*to, post.clone())))
            }
        }
    }

    fn push_recent(&mut self, user: UserId, post: Post) {
        let q = self.recent.entry(user).or_default();
        // Entries mostly arrive in time order; keep the queue sorted by (time, id).
        let key = (post.ts_us, post.id);
        let at = q
            .iter()
            .rposition(|p| (p.ts_us, p.id) <= key)
            .map_or(0, |i| i + 1);
        q.insert(at, post);
        while q.len() > TIMELINE_BACKLOG {
            q.pop_front();
        }
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

    /// The last entries of `user`'s timeline, oldest first.
    pub fn backlog(&self, user: UserId) -> Vec<Post> {
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

    #[test]
    fn resent_post_is_stored_once() {
        let mut m = Model::default();
        let c = Change::Post(post(1, 7, 10));
        assert!(m.apply_own(&c).is_some());
        assert!(!m.is_new(&c));
        assert!(m.apply_own(&c).is_none());
        assert_eq!(m.backlog(1).len(), 1);
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
    fn backlog_keeps_the_last_twenty_in_time_order() {
        let mut m = Model::default();
        for i in (0..30).rev() {
            m.apply_own(&Change::Post(post(1, i, i as i64)));
        }
        let b = m.backlog(1);
        assert_eq!(b.len(), TIMELINE_BACKLOG);
        assert_eq!(b.first().map(|p| p.ts_us), Some(10));
        assert_eq!(b.last().map(|p| p.ts_us), Some(29));
    }

    #[test]
    fn deliveries_are_deduplicated_and_followers_listed() {
        let mut m = Model::default();
        let d = Record::Deliver {
            to: 3,
            post: post(5, 1, 1),
        };
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
    }
}
