//! A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014; the scheme
//! CockroachDB orders its transactions by), in microseconds since the Unix epoch.
//!
//! Every timestamp a server gives a change (a follow, an unfollow, a post) comes from
//! [`Hlc::now`]: the wall clock, unless the clock has already seen a later timestamp, in
//! which case one microsecond after it. Every change a server stores or receives (its own
//! journal at start, mirrored changes, the sync service's feed) advances the clock with
//! [`Hlc::observe`]. So a change made after another was seen always has a later
//! timestamp, whatever the wall clocks say: an UNFOLLOW through a server whose clock is
//! behind still supersedes the FOLLOW it undoes, and a post made after a follow arrived is
//! delivered to that follower.
//!
//! A timestamp more than the clock's maximum offset (`--max-clock-offset-ms`) ahead of
//! the wall clock does not advance the clock: it comes from a clock that is wrong, and
//! following it would drag every later timestamp ahead of it, on every server that sees
//! it, for as long as the clock was wrong (Spanner and CockroachDB bound their clocks the
//! same way). The change that carries it is kept as it is; only the clock ignores it.
//! What the clock then no longer gives, the order of changes to one follow relation, is
//! kept per relation: a follow or unfollow is stamped after that relation's last change
//! (see `server::commands`). So once a wrong clock is corrected, new timestamps are the
//! wall clock's again.
//!
//! Two changes that never saw each other (the two sides of a partition) are still
//! ordered by their wall clocks.

use std::sync::atomic::{AtomicI64, Ordering};

/// How often, at most, the log says that timestamps too far ahead were ignored.
const IGNORED_LOG_EVERY_US: i64 = 10_000_000;

/// A hybrid logical clock.
#[derive(Debug)]
pub struct Hlc {
    last: AtomicI64,
    /// How far ahead of the wall clock an observed timestamp may be and still advance
    /// the clock, in microseconds.
    max_offset_us: i64,
    /// Timestamps ignored since the log last said so, and when it did (wall clock, µs).
    ignored: AtomicI64,
    logged_at: AtomicI64,
}

impl Hlc {
    /// A clock that follows observed timestamps up to `max_offset` ahead of the wall clock.
    pub fn new(max_offset: std::time::Duration) -> Hlc {
        Hlc {
            last: AtomicI64::new(0),
            max_offset_us: i64::try_from(max_offset.as_micros()).unwrap_or(i64::MAX),
            ignored: AtomicI64::new(0),
            logged_at: AtomicI64::new(i64::MIN),
        }
    }

    /// A timestamp later than every one returned or observed before.
    pub fn now(&self) -> i64 {
        self.now_with(crate::now_us())
    }

    /// [`Hlc::now`] with the wall clock reading `wall`.
    fn now_with(&self, wall: i64) -> i64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Takes note of a timestamp seen in a change, unless it is more than the maximum
    /// offset ahead of the wall clock.
    pub fn observe(&self, ts_us: i64) {
        let wall = crate::now_us();
        if self.observe_with(ts_us, wall) {
            return;
        }
        let ignored = self.ignored.fetch_add(1, Ordering::Relaxed) + 1;
        let logged = self.logged_at.load(Ordering::Relaxed);
        if wall.saturating_sub(logged) >= IGNORED_LOG_EVERY_US
            && self
                .logged_at
                .compare_exchange(logged, wall, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.ignored.fetch_sub(ignored, Ordering::Relaxed);
            tracing::warn!(
                ignored,
                ahead_ms = ts_us.saturating_sub(wall) / 1000,
                max_clock_offset_ms = self.max_offset_us / 1000,
                "timestamps too far ahead of this node's clock did not advance it (the changes are kept): a node's clock is wrong"
            );
        }
    }

    /// [`Hlc::observe`] with the wall clock reading `wall`; returns whether `ts_us` was
    /// near enough to be taken.
    fn observe_with(&self, ts_us: i64, wall: i64) -> bool {
        if ts_us.saturating_sub(wall) > self.max_offset_us {
            return false;
        }
        self.last.fetch_max(ts_us, Ordering::Relaxed);
        true
    }

    /// Observes the timestamp a change carries, if any.
    pub fn observe_change(&self, change: &tsn_protocol::Change) {
        match change {
            tsn_protocol::Change::User { .. } => {}
            tsn_protocol::Change::Follow { ts_us, .. } => self.observe(*ts_us),
            tsn_protocol::Change::Post(p) => self.observe(p.ts_us),
            tsn_protocol::Change::Key { ts_us, .. } => self.observe(*ts_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back_and_passes_what_it_has_seen() {
        let c = Hlc::new(std::time::Duration::from_millis(10));
        assert_eq!(c.now_with(100), 100);
        assert_eq!(c.now_with(50), 101, "a wall clock that went back");
        assert!(c.observe_with(5_000, 200));
        assert_eq!(c.now_with(200), 5_001, "after a later timestamp was seen");
        assert_eq!(
            c.now_with(9_000),
            9_000,
            "the wall clock again once it is ahead"
        );
        assert!(c.observe_with(10, 9_000));
        assert_eq!(c.now_with(9_000), 9_001);
    }

    #[test]
    fn a_timestamp_beyond_the_maximum_offset_does_not_drag_it() {
        let c = Hlc::new(std::time::Duration::from_millis(500));
        let wall = 1_000_000_000;
        assert!(c.observe_with(wall + 500_000, wall), "at the limit");
        assert_eq!(c.now_with(wall), wall + 500_001);
        let day = 86_400_000_000;
        assert!(!c.observe_with(wall + day, wall), "a day ahead");
        assert_eq!(c.now_with(wall + 600_000), wall + 600_000);
    }

    #[test]
    fn observe_takes_the_present() {
        let c = Hlc::new(std::time::Duration::from_millis(500));
        let now = crate::now_us();
        c.observe(now);
        c.observe(now + 86_400_000_000);
        let next = c.now();
        assert!(next > now && next < now + 60_000_000, "{next} vs {now}");
    }
}
