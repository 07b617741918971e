//! A server's in-memory view of its cluster, rebuilt on start from its last checkpoint
//! and the records of its own journal and of what it received from the sync service
//! after it. Pure data: no I/O, no clock.
//!
//! Its size grows with users, follow edges and open timelines, not with posts: of posts
//! it keeps the ids of the last [`POST_WINDOW`] stored here (to recognise a resend) and
//! the last [`TIMELINE_BACKLOG`] entries of each timeline that was written or read since
//! the server started; older entries are in each user's `timeline.data`.

use crate::Locked;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tsn_datastore::Record as DsRecord;

use tsn_protocol::types::{apply_follow, follow_supersedes, key_supersedes, KeyBinding};
use tsn_protocol::{Change, Post, PostId, UserId, TIMELINE_BACKLOG};
use DsRecord as Record;

use crate::window::Window;

/// Latest state of one follow relation: (timestamp, following?).
type Edge = (i64, bool);

/// How many ids of the posts stored here are remembered, to recognise a client's resend
/// (it comes within seconds; at 20,000 posts a second this is three seconds of posts). A
/// resend older than this is stored again and recognised by the sync service, which
/// passes each post on once.
pub const POST_WINDOW: usize = 65_536;

/// What the server knows.
#[derive(Debug)]
pub struct Model {
    /// Users created by logging in to this cluster.
    local_users: BTreeSet<UserId>,
    /// Users known system-wide, as written by the sync service.
    global_users: BTreeSet<UserId>,
    /// follower -> followee -> edge, for this cluster's users (from the server journal).
    following: HashMap<UserId, HashMap<UserId, Edge>>,
    /// followee -> follower -> edge, for this cluster's users (from the sync journal).
    followers: HashMap<UserId, HashMap<UserId, Edge>>,
    /// Ids of the last posts stored by this cluster's servers (resends are recognised by
    /// these).
    own_posts: Window<PostId>,
    /// The last [`TIMELINE_BACKLOG`] entries of each user's timeline with their numbers
    /// (see [`tsn_protocol::client::TimelinePos`]), oldest first, for the timelines
    /// written or read since the server started.
    recent: HashMap<UserId, VecDeque<(u64, Post)>>,
    /// The number of the last entry of each user's timeline.
    last_seq: HashMap<UserId, u64>,
    /// The key each of this cluster's users is bound to.
    keys: HashMap<UserId, KeyBinding>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            local_users: BTreeSet::new(),
            global_users: BTreeSet::new(),
            following: HashMap::new(),
            followers: HashMap::new(),
            own_posts: Window::new(POST_WINDOW, 0),
            recent: HashMap::new(),
            last_seq: HashMap::new(),
            keys: HashMap::new(),
        }
    }
}

/// The server's state, owned here: every task asks through these methods, each of which
/// holds the lock for one step only.
#[derive(Debug, Default)]
pub struct State(Mutex<Model>);

impl State {
    /// The state `model` holds (loaded at start-up).
    pub fn new(model: Model) -> State {
        State(Mutex::new(model))
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        self.0.locked()
    }

    /// Whether `user` logged in to this cluster.
    pub fn is_local(&self, user: UserId) -> bool {
        self.lock().is_local(user)
    }

    /// Whether `user` exists anywhere, as far as this server knows.
    pub fn is_known(&self, user: UserId) -> bool {
        self.lock().is_known(user)
    }

    /// Whether `user` currently follows `target`.
    pub fn follows(&self, user: UserId, target: UserId) -> bool {
        self.lock().follows(user, target)
    }

    /// The key binding of `user`, if any.
    pub fn key_of(&self, user: UserId) -> Option<KeyBinding> {
        self.lock().key_of(user).cloned()
    }

    /// The timestamp a new change of `follower` -> `followee` gets: `now`, or one
    /// microsecond after the relation's last known change if that is later. The clock
    /// ignores timestamps from a clock far ahead (see [`crate::hlc`]); this keeps the
    /// order that matters to a relation (an unfollow supersedes the follow it undoes)
    /// whatever clock stamped its last change.
    pub fn follow_ts(&self, follower: UserId, followee: UserId, now: i64) -> i64 {
        let m = self.lock();
        let own = m.following.get(&follower).and_then(|e| e.get(&followee));
        let received = m.followers.get(&followee).and_then(|e| e.get(&follower));
        own.into_iter()
            .chain(received)
            .map(|(ts, _)| ts.saturating_add(1))
            .fold(now, i64::max)
    }

    /// What LIST answers: every known user, and `user`'s current followers, ascending.
    pub fn list(&self, user: UserId) -> (Vec<UserId>, Vec<UserId>) {
        let m = self.lock();
        (m.all_users(), m.followers_of(user))
    }

    /// Of the changes of a batch, those new to this server, each once.
    pub fn fresh<'a>(&self, changes: impl IntoIterator<Item = &'a Change>) -> Vec<Change> {
        let m = self.lock();
        let mut posts: HashSet<PostId> = HashSet::new();
        let mut users: HashSet<UserId> = HashSet::new();
        changes
            .into_iter()
            .filter(|c| m.is_new(c))
            .filter(|c| match c {
                Change::Post(p) => posts.insert(p.id),
                Change::User { user } => users.insert(*user),
                Change::Follow { .. } | Change::Key { .. } => true,
            })
            .cloned()
            .collect()
    }

    /// Applies changes this cluster's servers stored.
    pub fn apply_own(&self, changes: &[Change]) {
        let mut m = self.lock();
        for c in changes {
            m.apply_own(c);
        }
    }

    /// Applies records of the sync service's journal; returns the new ones, and the
    /// timeline entries they make. `each` sees every record first.
    pub fn apply_received(
        &self,
        records: Vec<Record>,
        each: impl Fn(&Record),
    ) -> (Vec<Record>, Vec<TimelineEntry>) {
        let mut m = self.lock();
        let mut fresh = Vec::new();
        let mut entries = Vec::new();
        for r in records {
            each(&r);
            let (new, entry) = m.apply_sync(&r);
            if new {
                fresh.push(r);
            }
            entries.extend(entry);
        }
        (fresh, entries)
    }

    /// See [`Model::reset_received`].
    pub fn reset_received(&self) {
        self.lock().reset_received();
    }

    /// See [`Model::checkpoint`].
    pub fn checkpoint(&self) -> Checkpointed {
        self.lock().checkpoint()
    }

    /// What a timeline session opening after number `after` (none: on entry) starts with,
    /// if memory holds it: the entries, and the number they follow.
    pub fn opening(&self, user: UserId, after: Option<u64>) -> Option<(Vec<(u64, Post)>, u64)> {
        let m = self.lock();
        match after {
            None if m.has_backlog(user) => {
                let entries = m.backlog(user);
                let seq = entries
                    .first()
                    .map_or(m.last_seq(user), |(s, _)| s.saturating_sub(1));
                Some((entries, seq))
            }
            None => None,
            Some(after) => m.entries_after(user, after).map(|e| (e, after)),
        }
    }

    /// See [`Model::fill_backlog`].
    pub fn fill_backlog(&self, user: UserId, entries: Vec<(u64, Post)>) {
        self.lock().fill_backlog(user, entries);
    }
}

/// A new entry of a user's timeline: (user, its number, the post).
pub type TimelineEntry = (UserId, u64, Post);

pub use crate::checkpoint::Checkpointed;

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
                self.own_posts.insert(p.id, p.ts_us);
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
                (apply_follow(edges, *follower, *ts_us, *active), None)
            }
            Record::Change(Change::Post(_) | Change::Key { .. }) => (false, None),
            Record::Deliver { to, seq, post } => {
                // The sync service numbers each user's deliveries 1, 2, 3, ... in its
                // journal's order: a number already reached is a record read again.
                let last = self.last_seq.entry(*to).or_default();
                if *seq <= *last {
                    return (false, None);
                }
                *last = *seq;
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
    /// and will be read again from its start, numbering deliveries afresh).
    pub fn reset_received(&mut self) {
        self.global_users.clear();
        self.followers.clear();
        self.recent.clear();
        self.last_seq.clear();
    }

    /// The state a checkpoint keeps, as records: what this cluster's servers stored (users
    /// created here, follow edges, keys), what the sync service gave (users system-wide,
    /// followers), and the number of each user's last timeline entry.
    pub fn checkpoint(&self) -> Checkpointed {
        let mut own = Vec::new();
        own.extend(
            self.local_users
                .iter()
                .map(|u| Record::Change(Change::User { user: *u })),
        );
        let edges = |m: &HashMap<UserId, HashMap<UserId, Edge>>, by_follower: bool| {
            let mut v: Vec<Record> = m
                .iter()
                .flat_map(|(a, es)| {
                    es.iter().map(move |(b, (ts, active))| {
                        let (follower, followee) = if by_follower { (*a, *b) } else { (*b, *a) };
                        Record::Change(Change::Follow {
                            follower,
                            followee,
                            ts_us: *ts,
                            active: *active,
                        })
                    })
                })
                .collect();
            v.sort_by_key(|r| match r {
                Record::Change(Change::Follow {
                    follower, followee, ..
                }) => (*follower, *followee),
                _ => (0, 0),
            });
            v
        };
        own.extend(edges(&self.following, true));
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_by_key(|(u, _)| **u);
        own.extend(keys.into_iter().map(|(user, (generation, ts_us, key))| {
            Record::Change(Change::Key {
                user: *user,
                generation: *generation,
                ts_us: *ts_us,
                key: key.clone(),
            })
        }));
        let mut received: Vec<Record> = self
            .global_users
            .iter()
            .map(|u| Record::Change(Change::User { user: *u }))
            .collect();
        received.extend(edges(&self.followers, false));
        Checkpointed::new(own, received, &self.last_seq)
    }

    /// Loads a checkpoint (into an empty model).
    pub fn restore(&mut self, cp: &Checkpointed) {
        for r in &cp.own {
            if let Record::Change(c) = r {
                self.apply_own(c);
            }
        }
        for r in &cp.received {
            self.apply_sync(r);
        }
        for (user, seq) in &cp.seqs {
            let last = self.last_seq.entry(*user).or_default();
            *last = (*last).max(*seq);
        }
    }

    /// Whether memory holds the last entries of `user`'s timeline (as many as it has, up
    /// to [`TIMELINE_BACKLOG`]).
    pub fn has_backlog(&self, user: UserId) -> bool {
        let last = self.last_seq(user);
        let held = self.recent.get(&user).map_or(0, VecDeque::len) as u64;
        held >= last.min(TIMELINE_BACKLOG as u64)
    }

    /// Puts the last entries of `user`'s timeline, read from its file, into memory (when
    /// nothing newer arrived meanwhile).
    pub fn fill_backlog(&mut self, user: UserId, mut entries: Vec<(u64, Post)>) {
        if entries.last().map(|e| e.0) != Some(self.last_seq(user)) {
            return;
        }
        let skip = entries.len().saturating_sub(TIMELINE_BACKLOG);
        entries.drain(..skip);
        self.recent.insert(user, entries.into_iter().collect());
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

    /// Whether the post is stored here already (the tests' view of `own_posts`).
    #[cfg(test)]
    fn has_post(&self, id: &PostId) -> bool {
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
    fn a_change_of_a_follow_is_stamped_after_the_last_one_of_that_relation() {
        let day = 86_400_000_000;
        let state = State::default();
        assert_eq!(state.follow_ts(1, 2, 100), 100, "a new relation: the clock");
        state.apply_own(&[Change::Follow {
            follower: 1,
            followee: 2,
            ts_us: day,
            active: true,
        }]);
        let ts = state.follow_ts(1, 2, 100);
        assert_eq!(ts, day + 1, "after a follow stamped by a clock a day ahead");
        let unfollow = Change::Follow {
            follower: 1,
            followee: 2,
            ts_us: ts,
            active: false,
        };
        assert_eq!(
            state.fresh([&unfollow]).len(),
            1,
            "it supersedes the follow"
        );
        state.apply_own(&[unfollow]);
        assert!(!state.follows(1, 2));
        assert_eq!(
            state.follow_ts(3, 2, 100),
            100,
            "other relations keep the clock"
        );
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
    fn a_restored_checkpoint_serves_as_the_model_it_was_taken_from() {
        let mut m = Model::default();
        m.apply_own(&Change::User { user: 1 });
        m.apply_own(&Change::Follow {
            follower: 1,
            followee: 2,
            ts_us: 5,
            active: true,
        });
        m.apply_own(&Change::Key {
            user: 1,
            generation: 0,
            ts_us: 6,
            key: vec![7; 32],
        });
        m.apply_sync(&Record::Change(Change::User { user: 2 }));
        m.apply_sync(&Record::Change(Change::Follow {
            follower: 3,
            followee: 1,
            ts_us: 4,
            active: true,
        }));
        for seq in 1..=25 {
            m.apply_sync(&deliver(1, seq, post(2, seq, seq as i64)));
        }
        let mut r = Model::default();
        r.restore(&m.checkpoint());
        assert_eq!(r.all_users(), vec![1, 2]);
        assert!(r.follows(1, 2));
        assert_eq!(r.followers_of(1), vec![3]);
        assert_eq!(r.key_of(1), m.key_of(1));
        assert_eq!(r.last_seq(1), 25);
        assert!(!r.has_backlog(1), "the entries themselves are in the file");
        assert_eq!(
            r.apply_sync(&deliver(1, 25, post(2, 25, 25))),
            (false, None),
            "a delivery read again after the restart is recognised by its number"
        );
        assert!(r.apply_sync(&deliver(1, 26, post(2, 26, 26))).1.is_some());
        assert_eq!(r.checkpoint().own, m.checkpoint().own);
    }

    #[test]
    fn only_the_last_window_of_post_ids_is_kept() {
        let mut m = Model::default();
        for n in 0..(POST_WINDOW as u64 + 10) {
            m.apply_own(&Change::Post(post(1, n, 1)));
        }
        assert!(!m.has_post(&PostId {
            author: 1,
            nonce: 5
        }));
        assert!(m.has_post(&PostId {
            author: 1,
            nonce: 10
        }));
        assert_eq!(m.own_posts.len(), POST_WINDOW);
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
        m.reset_received();
        assert_eq!(m.last_seq(3), 0);
        assert!(m.apply_sync(&d).1.is_some(), "numbered afresh");
    }
}
