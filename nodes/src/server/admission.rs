//! Admission tied to delivery lag: when the cluster's own posts take longer than a limit
//! to come back from its sync service (the first hop of every delivery), timeline
//! sessions stop reading new posts for a moment, and again, until posts come back in
//! time. Under overload
//! the wait then falls on acknowledgements (the client's posts queue in its stream, and
//! nothing is lost), not on deliveries of posts already acknowledged.
//!
//! Every post comes back: it is an entry of its author's own timeline, numbered by the
//! sync service. Delivery is behind when posts are out (stored, not yet back) and the
//! newest post back was stamped longer ago than the limit: that is how late posts come
//! back now. Once nothing is out, nothing is behind; and a feed that is down or stalled
//! (no post back for a second) holds nothing: posts are then taken as usual, stored, and
//! delivered once the sync service is back.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tsn_protocol::{Post, UserId};

/// A post back longer ago than this (µs) means the feed is down or stalled.
const FRESH_US: i64 = 1_000_000;

/// The log says that delivery is behind at most this often (µs).
const LOG_EVERY_US: i64 = 10_000_000;

/// How long a session waits before looking again while delivery is behind.
pub const PAUSE: Duration = Duration::from_millis(5);

/// How late this cluster's own posts come back, and whether new posts should wait.
#[derive(Debug)]
pub struct Admission {
    /// Over this, posts wait (µs; 0: never).
    limit_us: i64,
    /// The newest stamp of an own post stored (µs since the Unix epoch).
    stored_us: AtomicI64,
    /// The newest stamp of an own post back from the sync service.
    back_us: AtomicI64,
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
            stored_us: AtomicI64::new(0),
            back_us: AtomicI64::new(0),
            seen_us: AtomicI64::new(0),
            over: AtomicBool::new(false),
            logged_us: AtomicI64::new(i64::MIN),
        }
    }

    /// An own post stamped `ts_us` is on its way to being stored.
    pub fn stored(&self, ts_us: i64) {
        self.stored_us.fetch_max(ts_us, Ordering::Relaxed);
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
        self.back_us.fetch_max(newest, Ordering::Relaxed);
        self.seen_us.store(now_us, Ordering::Relaxed);
        Some(Duration::from_micros(
            now_us.saturating_sub(newest).max(0).unsigned_abs(),
        ))
    }

    /// Whether new posts should wait at `now_us`: posts are out, the newest back came
    /// back within the last second, and it was stamped more than the limit ago.
    pub fn behind(&self, now_us: i64) -> bool {
        if self.limit_us == 0 {
            return false;
        }
        let back = self.back_us.load(Ordering::Relaxed);
        let behind = self.stored_us.load(Ordering::Relaxed) > back
            && now_us.saturating_sub(self.seen_us.load(Ordering::Relaxed)) < FRESH_US
            && now_us.saturating_sub(back) > self.limit_us;
        if self.over.swap(behind, Ordering::Relaxed) != behind {
            let lag_ms = now_us.saturating_sub(back) / 1000;
            // Under sustained overload this flips many times a second: the log says so
            // at most every ten seconds.
            let quiet =
                now_us.saturating_sub(self.logged_us.load(Ordering::Relaxed)) > LOG_EVERY_US;
            if behind && quiet {
                self.logged_us.store(now_us, Ordering::Relaxed);
                tracing::info!(
                    lag_ms,
                    limit_ms = self.limit_us / 1000,
                    "delivery is behind: new posts wait until the cluster's own posts come back from the sync service within the limit"
                );
            } else if !behind {
                tracing::debug!(lag_ms, "delivery caught up: posts are taken again");
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
    fn only_entries_of_the_authors_own_timeline_are_measured() {
        let a = Admission::new(Duration::from_millis(200));
        let now = 10_000 * MS;
        a.stored(now - 500 * MS);
        // A post of user 2 shown to user 1 is not an own post coming back.
        assert_eq!(a.observe([(1, &post(2, now - 500 * MS))], now), None);
        assert!(!a.behind(now));
        assert_eq!(
            a.observe([(3, &post(2, 0)), (1, &post(1, now - 150 * MS))], now),
            Some(Duration::from_millis(150))
        );
    }

    #[test]
    fn behind_while_posts_are_out_and_come_back_late() {
        let a = Admission::new(Duration::from_millis(200));
        let now = 10_000 * MS;
        a.stored(now - 300 * MS);
        a.stored(now - 10 * MS);
        // The older post came back 300 ms after it was stamped; the newer is still out.
        a.observe([(1, &post(1, now - 300 * MS))], now);
        assert!(a.behind(now));
        // Back within the limit.
        a.stored(now);
        a.observe([(1, &post(1, now - 10 * MS))], now + MS);
        assert!(!a.behind(now + MS));
        // Nothing out: nothing is behind, however old the last post back.
        a.observe([(1, &post(1, now))], now + 900 * MS);
        assert!(!a.behind(now + 900 * MS));
    }

    #[test]
    fn a_stalled_feed_holds_nothing() {
        let a = Admission::new(Duration::from_millis(200));
        let now = 10_000 * MS;
        a.stored(now);
        a.observe([(1, &post(1, now - 300 * MS))], now);
        assert!(a.behind(now + 999 * MS));
        // No post back for a second: the feed is down or stalled, posts are taken.
        assert!(!a.behind(now + 1_000 * MS));
    }

    #[test]
    fn a_zero_limit_never_holds_posts() {
        let a = Admission::new(Duration::ZERO);
        a.stored(60_000 * MS);
        a.observe([(1, &post(1, 0))], 60_000 * MS);
        assert!(!a.behind(60_000 * MS));
    }
}
