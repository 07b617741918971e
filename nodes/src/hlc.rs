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
//! What remains when a wall clock is far off: a clock far *ahead* drags the timestamps of
//! every server that sees its changes ahead with it (posts then show a time in the
//! future, by as much); order and delivery stay right. Two changes that never saw each
//! other (the two sides of a partition) are still ordered by their wall clocks.

use std::sync::atomic::{AtomicI64, Ordering};

/// A hybrid logical clock.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicI64,
}

impl Hlc {
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

    /// Takes note of a timestamp seen in a change.
    pub fn observe(&self, ts_us: i64) {
        self.last.fetch_max(ts_us, Ordering::Relaxed);
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
        let c = Hlc::default();
        assert_eq!(c.now_with(100), 100);
        assert_eq!(c.now_with(50), 101, "a wall clock that went back");
        c.observe(5_000);
        assert_eq!(c.now_with(200), 5_001, "after a later timestamp was seen");
        assert_eq!(
            c.now_with(9_000),
            9_000,
            "the wall clock again once it is ahead"
        );
        c.observe(10);
        assert_eq!(c.now_with(9_000), 9_001);
    }
}
