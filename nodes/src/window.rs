//! Remembering the last so many ids, instead of every id ever seen.
//!
//! Servers and sync services recognise a change they already stored by its id. Keeping
//! every id would make memory grow with every post; a [`Window`] keeps the last ones, and
//! says which older ids it may have forgotten: those with a timestamp at or before its
//! [`floor`](Window::floor) (the newest timestamp it let go of, or the clock of the
//! checkpoint it started from). Such an id must be checked elsewhere (the files on disk)
//! before it is taken as new.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// The last `cap` ids inserted, with their timestamps.
#[derive(Debug)]
pub struct Window<K> {
    ids: HashSet<K>,
    order: VecDeque<(K, i64)>,
    cap: usize,
    floor: i64,
}

impl<K: Hash + Eq + Clone> Window<K> {
    /// A window of `cap` ids that may have forgotten ids timestamped up to `floor`.
    pub fn new(cap: usize, floor: i64) -> Window<K> {
        Window {
            ids: HashSet::new(),
            order: VecDeque::new(),
            cap,
            floor,
        }
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &K) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id` (timestamped `ts_us`), forgetting the oldest past the cap; returns
    /// whether it was new to the window.
    pub fn insert(&mut self, id: K, ts_us: i64) -> bool {
        if !self.ids.insert(id.clone()) {
            return false;
        }
        self.order.push_back((id, ts_us));
        while self.order.len() > self.cap {
            if let Some((old, ts)) = self.order.pop_front() {
                self.ids.remove(&old);
                self.floor = self.floor.max(ts);
            }
        }
        true
    }

    /// Whether an id timestamped `ts_us` that is not remembered may have been seen
    /// before all the same.
    pub fn may_have_forgotten(&self, ts_us: i64) -> bool {
        ts_us <= self.floor
    }

    /// The newest timestamp of an id that may have been forgotten.
    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_ids_and_knows_what_it_may_have_forgotten() {
        let mut w = Window::new(3, 0);
        for (id, ts) in [(1, 10), (2, 20), (3, 30)] {
            assert!(w.insert(id, ts));
        }
        assert!(!w.insert(2, 20), "seen");
        assert!(!w.may_have_forgotten(5) || w.floor() == 0);
        assert!(w.insert(4, 40));
        assert!(!w.contains(&1));
        assert!(w.contains(&4));
        assert_eq!(w.floor(), 10);
        assert!(w.may_have_forgotten(10));
        assert!(!w.may_have_forgotten(11));
        assert_eq!(w.len(), 3);
        let restarted: Window<u32> = Window::new(3, 99);
        assert!(restarted.may_have_forgotten(99) && !restarted.may_have_forgotten(100));
    }
}
