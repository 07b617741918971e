//! What timeline mode keeps about posts: those sent and not yet acknowledged
//! ([`Unacked`]), the ids already shown ([`RecentIds`]), and when unacknowledged posts
//! make the client ask whether its server moved ([`AckWatch`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use tsn_protocol::PostId;

/// Posts unacknowledged for this long, with no acknowledgement at all meanwhile, make the
/// client ask the coordinator whether its server has changed (an acknowledgement
/// normally takes well under a millisecond).
pub const ACK_SUSPECT: Duration = Duration::from_millis(300);
/// While the coordinator keeps naming the same server and acknowledgements stay away,
/// the client asks again after twice as long each time, up to this: a busy or starved
/// system is not made busier by every client asking ten times a second.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// When to ask the coordinator whether the server moved: once posts have waited
/// [`ACK_SUSPECT`] with no acknowledgement meanwhile, then after twice as long each time
/// the coordinator still names the same server, up to [`PROBE_BACKOFF_MAX`]; an
/// acknowledgement starts over.
#[derive(Debug)]
pub struct AckWatch {
    /// The last acknowledgement, or the last answer naming the same server.
    since: Instant,
    wait: Duration,
}

impl AckWatch {
    /// A watch that starts counting at `now`.
    pub fn new(now: Instant) -> Self {
        AckWatch {
            since: now,
            wait: ACK_SUSPECT,
        }
    }

    /// An acknowledgement came at `now`: start over.
    pub fn acked(&mut self, now: Instant) {
        self.since = now;
        self.wait = ACK_SUSPECT;
    }

    /// The coordinator still named the same server at `now`: wait twice as long.
    pub fn unchanged(&mut self, now: Instant) {
        self.since = now;
        self.wait = (self.wait * 2).min(PROBE_BACKOFF_MAX);
    }

    /// Whether to ask now, given when the oldest unacknowledged post was sent.
    pub fn due(&self, now: Instant, oldest_sent: Option<Instant>) -> bool {
        oldest_sent.is_some_and(|t| now - t > ACK_SUSPECT) && now - self.since > self.wait
    }
}

/// A post sent and not yet acknowledged.
#[derive(Debug)]
pub struct Pending {
    /// The nonce the client chose (the post's id with the user's).
    pub nonce: u64,
    /// The text.
    pub text: String,
    /// When it was (last) sent.
    pub sent: Instant,
}

/// Unacknowledged posts in the order they were typed, found by nonce in O(log n).
#[derive(Debug, Default)]
pub struct Unacked {
    by_seq: BTreeMap<u64, Pending>,
    seq_of: HashMap<u64, u64>,
    next_seq: u64,
}

impl Unacked {
    /// Keeps a post sent at `sent`, after those kept already.
    pub fn push(&mut self, nonce: u64, text: String, sent: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(nonce, seq);
        self.by_seq.insert(seq, Pending { nonce, text, sent });
    }

    /// Removes and returns the post with this nonce, if it is still unacknowledged.
    pub fn take(&mut self, nonce: u64) -> Option<Pending> {
        let seq = self.seq_of.remove(&nonce)?;
        self.by_seq.remove(&seq)
    }

    /// How many posts are unacknowledged.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Whether every post is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// When the oldest unacknowledged post was (last) sent.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.by_seq.values().next().map(|p| p.sent)
    }

    /// The posts, oldest first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.by_seq.values_mut()
    }
}

/// The last `cap` post ids shown or posted, to print each entry once.
#[derive(Debug)]
pub struct RecentIds {
    set: HashSet<PostId>,
    order: VecDeque<PostId>,
    cap: usize,
}

impl RecentIds {
    /// Remembers at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        RecentIds {
            set: HashSet::with_capacity(cap + 1),
            order: VecDeque::with_capacity(cap + 1),
            cap,
        }
    }

    /// Remembers `id`; false if it was already remembered.
    pub fn insert(&mut self, id: PostId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacked_posts_keep_their_order_and_are_found_by_nonce() {
        let now = Instant::now();
        let mut u = Unacked::default();
        for n in [30, 10, 20] {
            u.push(n, format!("p{n}"), now);
        }
        assert!(u.take(10).is_some());
        assert!(u.take(10).is_none(), "an ack counts once");
        assert!(u.take(99).is_none());
        let order: Vec<u64> = u.iter_mut().map(|p| p.nonce).collect();
        assert_eq!(order, [30, 20]);
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn the_coordinator_is_asked_less_often_while_it_names_the_same_server() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = AckWatch::new(t0);
        assert!(!w.due(ms(400), None), "nothing waits");
        assert!(!w.due(ms(200), Some(t0)), "not yet");
        assert!(w.due(ms(400), Some(t0)));
        w.unchanged(ms(400));
        assert!(!w.due(ms(800), Some(t0)));
        assert!(w.due(ms(1100), Some(t0)), "after 600 ms");
        for _ in 0..5 {
            w.unchanged(ms(1100));
        }
        assert!(!w.due(ms(2000), Some(t0)));
        assert!(w.due(ms(2200), Some(t0)), "never more than a second apart");
        w.acked(ms(2200));
        assert!(w.due(ms(2600), Some(t0)), "an acknowledgement starts over");
    }

    #[test]
    fn recent_ids_forget_the_oldest_beyond_their_bound() {
        let id = |nonce| PostId { author: 1, nonce };
        let mut r = RecentIds::new(2);
        assert!(r.insert(id(1)));
        assert!(!r.insert(id(1)));
        assert!(r.insert(id(2)));
        assert!(r.insert(id(3)));
        assert!(r.insert(id(1)), "the oldest was forgotten");
        assert!(!r.insert(id(3)));
        assert_eq!(r.set.len(), 2);
    }
}
