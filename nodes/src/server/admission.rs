//! Admission tied to delivery lag: when the cluster's own posts take longer than a limit
//! to come back from its sync service (the first hop of every delivery), a timeline
//! session holds the post it has just read, and reads no more, until they come back in
//! time. Under overload the wait then falls on acknowledgements (the client's posts
//! queue in its stream, and nothing is lost), not on deliveries of posts already
//! acknowledged.
//!
//! Every post comes back: it is an entry of its author's own timeline, numbered by the
//! sync service. Delivery is behind when the oldest post out (stored, not yet back) was
//! stamped longer ago than the limit: that is how late the next post to come back will
//! be, known while it is still on its way (waiting for it to come back late would let a
//! whole limit's worth of posts more into the pipe). A feed that is down or stalled (no
//! post back for a second) holds nothing: posts are then taken as usual, stored, and
//! delivered once the sync service is back.

use crate::Locked;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tsn_protocol::{Post, UserId};

/// A post back longer ago than this (µs) means the feed is down or stalled.
const FRESH_US: i64 = 1_000_000;

/// The log says that delivery is behind at most this often (µs).
const LOG_EVERY_US: i64 = 10_000_000;

/// Stamps of posts out, at most: past this (a feed down for long), the oldest are
/// forgotten.
const MAX_OUT: usize = 1 << 16;

/// How long a session waits before looking again while delivery is behind.
pub const PAUSE: Duration = Duration::from_millis(5);

/// The own posts out, and whether new posts should wait.
#[derive(Debug)]
pub struct Admission {
    /// Over this, posts wait (µs; 0: never).
    limit_us: i64,
    /// Stamps of own posts stored and not yet back, oldest first (µs since the Unix
    /// epoch). Stamps are taken in order; two sessions may push theirs out of order,
    /// which only delays popping the later one until a post after it comes back.
    out: Mutex<VecDeque<i64>>,
    /// When an own post last came back.
    seen_us: AtomicI64,
    /// Whether delivery was behind when last asked (for the log).
    over: AtomicBool,
    /// When the log last said that delivery is behind.
    logged_us: AtomicI64,
}

impl Admission {
    /// Posts wait while delivery is more than `limit` behind (zero: never).
    pub fn new(limit: Duration) -> Admission {
        Admission {
            limit_us: i64::try_from(limit.as_micros()).unwrap_or(i64::MAX),
            out: Mutex::new(VecDeque::new()),
            seen_us: AtomicI64::new(0),
            over: AtomicBool::new(false),
            logged_us: AtomicI64::new(i64::MIN),
        }
    }

    fn out(&self) -> std::sync::MutexGuard<'_, VecDeque<i64>> {
        self.out.locked()
    }

    /// An own post stamped `ts_us` is on its way to being stored.
    pub fn stored(&self, ts_us: i64) {
        if self.limit_us == 0 {
            return;
        }
        let mut out = self.out();
        if out.len() == MAX_OUT {
            out.pop_front();
        }
        out.push_back(ts_us);
    }

    /// Timeline entries `(to, post)` just came back from the sync service at `now_us`.
    /// Returns how late the newest own post among them came back, if any was there.
    pub fn observe<'a>(
        &self,
        entries: impl IntoIterator<Item = (UserId, &'a Post)>,
        now_us: i64,
    ) -> Option<Duration> {
        let newest = entries
            .into_iter()
            .filter(|(to, p)| *to == p.id.author)
            .map(|(_, p)| p.ts_us)
            .max()?;
        {
            // Everything stamped up to the newest back is back (or never will be: a
            // refused post, a resend of a stored one).
            let mut out = self.out();
            while out.front().is_some_and(|ts| *ts <= newest) {
                out.pop_front();
            }
        }
        self.seen_us.store(now_us, Ordering::Relaxed);
        Some(Duration::from_micros(
            now_us.saturating_sub(newest).max(0).unsigned_abs(),
        ))
    }

    /// Whether new posts should wait at `now_us`: the oldest post out was stamped more
    /// than the limit ago, and a post came back within the last second.
    pub fn behind(&self, now_us: i64) -> bool {
        if self.limit_us == 0 {
            return false;
        }
        let oldest = self.out().front().copied();
        let lag = oldest.map_or(0, |ts| now_us.saturating_sub(ts));
        let behind = lag > self.limit_us
            && now_us.saturating_sub(self.seen_us.load(Ordering::Relaxed)) < FRESH_US;
        if self.over.swap(behind, Ordering::Relaxed) != behind {
            // Under sustained overload this flips many times a second: the log says so
            // at most every ten seconds.
            let quiet =
                now_us.saturating_sub(self.logged_us.load(Ordering::Relaxed)) > LOG_EVERY_US;
            if behind && quiet {
                self.logged_us.store(now_us, Ordering::Relaxed);
                tracing::info!(
                    lag_ms = lag / 1000,
                    limit_ms = self.limit_us / 1000,
                    "delivery is behind: new posts wait until the cluster's own posts come back from the sync service within the limit"
                );
            } else if !behind {
                tracing::debug!(
                    lag_ms = lag / 1000,
                    "delivery caught up: posts are taken again"
                );
            }
        }
        behind
    }
}

#[cfg(test)]
mod tests {
    use tsn_protocol::PostId;

    use super::*;

    fn post(author: u32, ts_us: i64) -> Post {
        Post {
            id: PostId { author, nonce: 1 },
            ts_us,
            text: String::new(),
        }
    }

    const MS: i64 = 1000;

    #[test]
    fn only_entries_of_the_authors_own_timeline_count() {
        let a = Admission::new(Duration::from_millis(200));
        let now = 10_000 * MS;
        a.stored(now - 500 * MS);
        // A post of user 2 shown to user 1 is not an own post coming back.
        assert_eq!(a.observe([(1, &post(2, now - 500 * MS))], now), None);
        assert!(!a.behind(now), "no post back yet: nothing to go by");
        assert_eq!(
            a.observe([(3, &post(2, 0)), (1, &post(1, now - 600 * MS))], now),
            Some(Duration::from_millis(600))
        );
        assert!(a.behind(now), "the post stamped 500 ms ago is still out");
        a.observe([(1, &post(1, now - 500 * MS))], now);
        assert!(!a.behind(now), "back: nothing out");
    }

    #[test]
    fn behind_while_the_oldest_post_out_is_older_than_the_limit() {
        let a = Admission::new(Duration::from_millis(200));
        let now = 10_000 * MS;
        for ts in [now - 300 * MS, now - 250 * MS, now - 10 * MS] {
            a.stored(ts);
        }
        // The first came back; the one stamped 250 ms ago is still out.
        a.observe([(1, &post(1, now - 300 * MS))], now);
        assert!(a.behind(now));
        // It came back: the oldest out is 10 ms old.
        a.observe([(1, &post(1, now - 250 * MS))], now + MS);
        assert!(!a.behind(now + MS));
        // Not back 200 ms later: behind again, before it comes back.
        assert!(a.behind(now + 191 * MS));
    }

    #[test]
    fn a_post_that_never_comes_back_is_passed_by_later_ones() {
        let a = Admission::new(Duration::from_millis(200));
        let now = 10_000 * MS;
        a.stored(now - 900 * MS); // refused by the store, say
        a.stored(now - 5 * MS);
        a.observe([(1, &post(1, now - 5 * MS))], now);
        assert!(!a.behind(now));
    }

    #[test]
    fn a_stalled_feed_holds_nothing() {
        let a = Admission::new(Duration::from_millis(200));
        let now = 10_000 * MS;
        a.stored(now - 400 * MS);
        a.stored(now - 300 * MS);
        a.observe([(1, &post(1, now - 400 * MS))], now);
        assert!(a.behind(now + 999 * MS));
        // No post back for a second: the feed is down or stalled, posts are taken.
        assert!(!a.behind(now + 1_000 * MS));
    }

    #[test]
    fn a_zero_limit_never_holds_posts() {
        let a = Admission::new(Duration::ZERO);
        a.stored(0);
        a.stored(1);
        a.observe([(1, &post(1, 0))], 60_000 * MS);
        assert!(!a.behind(60_000 * MS));
    }
}
