//! A map bounded in size and age, for the caches a peer can fill (the
//! accepting side's resumption secrets here, the connecting side's memory
//! of destinations in `tcpcrypt-tokio`): at most `capacity` entries, the
//! oldest going first, and none older than the caller says, every
//! operation O(1) amortized. Caches like these sit under a lock every
//! handshake takes, so none of their operations may scan them.
//!
//! Insertion order is kept beside the entries: an entry removed or
//! inserted again leaves its old place behind (its number no longer
//! matches), skipped when it reaches the front, and the order is compacted
//! once it holds twice as many places as there are entries. The map reads
//! no clock: each insertion gives its time, no earlier than the last one's.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Entries of type `V` under keys `K`, each with the time `T` it was
/// inserted at.
///
/// ```
/// use tcpcrypt_proto::bounded::BoundedMap;
///
/// let mut map = BoundedMap::new();
/// let mut gone = Vec::new();
/// // Times are the caller's: here, seconds. Two entries at most, none
/// // older than 60 s.
/// for (key, at) in [("a", 0), ("b", 10), ("c", 20)] {
///     map.insert(key, (), at, 2, |t| 20 - t > 60, |k| gone.push(k));
/// }
/// assert_eq!(gone, ["a"]);
/// map.insert("d", (), 75, 2, |t| 75 - t > 60, |k| gone.push(k));
/// assert_eq!(gone, ["a", "b"]);
/// ```
#[derive(Debug)]
pub struct BoundedMap<K, V, T> {
    /// Value, time of insertion, and the number of its place in `order`.
    entries: HashMap<K, (V, T, u64)>,
    order: VecDeque<(K, u64)>,
    next: u64,
}

impl<K, V, T> Default for BoundedMap<K, V, T> {
    fn default() -> Self {
        BoundedMap {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }
}

impl<K: Hash + Eq + Copy, V, T: Copy> BoundedMap<K, V, T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry under `key`, with its time of insertion.
    pub fn get(&self, key: &K) -> Option<(&V, T)> {
        self.entries.get(key).map(|(v, at, _)| (v, *at))
    }

    /// Whether there is an entry under `key`.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes and returns the entry under `key`, with its time.
    pub fn remove(&mut self, key: &K) -> Option<(V, T)> {
        let (v, at, _) = self.entries.remove(key)?;
        self.compact();
        Some((v, at))
    }

    /// Inserts (or replaces) the entry under `key`, dated `at`, after
    /// removing the entries `expired` says are too old (insertion order is
    /// age order: they are in front), then the oldest while more than
    /// `capacity` (at least 1) are left. Each key removed is passed to
    /// `removed`.
    pub fn insert(
        &mut self,
        key: K,
        value: V,
        at: T,
        capacity: usize,
        expired: impl Fn(T) -> bool,
        mut removed: impl FnMut(K),
    ) {
        while let Some(old) = self.pop_oldest(&expired) {
            removed(old);
        }
        let n = self.next;
        self.next += 1;
        self.entries.insert(key, (value, at, n));
        self.order.push_back((key, n));
        while self.entries.len() > capacity.max(1) {
            match self.pop_oldest(|_| true) {
                Some(old) => removed(old),
                None => break,
            }
        }
        self.compact();
    }

    /// Removes every entry, returning their keys.
    pub fn clear(&mut self) -> Vec<K> {
        self.order.clear();
        self.entries.drain().map(|(k, _)| k).collect()
    }

    fn is_live(&self, (key, n): &(K, u64)) -> bool {
        self.entries.get(key).is_some_and(|e| e.2 == *n)
    }

    /// Removes the oldest entry if `take` says so of its time; stale places
    /// on the way go.
    fn pop_oldest(&mut self, take: impl Fn(T) -> bool) -> Option<K> {
        while let Some(front) = self.order.front().copied() {
            if !self.is_live(&front) {
                self.order.pop_front();
                continue;
            }
            if !take(self.entries[&front.0].1) {
                return None;
            }
            self.order.pop_front();
            self.entries.remove(&front.0);
            return Some(front.0);
        }
        None
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.entries.len() + 16 {
            let order = std::mem::take(&mut self.order);
            self.order = order.into_iter().filter(|p| self.is_live(p)).collect();
        }
    }

    /// Places kept in the insertion order, stale ones included: at most
    /// twice the number of entries, and 16 more.
    pub fn places(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_and_renewals_without_end_keep_the_order_bounded() {
        let mut map = BoundedMap::new();
        let never = |_: u32| false;
        for k in 0..64u32 {
            map.insert(k, (), k, 64, never, drop);
        }
        for k in 64..20_000u32 {
            map.remove(&(k - 64));
            map.insert(k, (), k, 64, never, drop);
            // Renewed: a new place, the old one stale.
            map.insert(k, (), k, 64, never, drop);
        }
        assert_eq!(map.len(), 64);
        assert!(map.places() <= 2 * 64 + 16);
    }

    #[test]
    fn the_oldest_goes_first_the_too_old_go_and_each_removal_is_told() {
        let mut map = BoundedMap::new();
        let mut gone = Vec::new();
        for k in 1..=3u32 {
            map.insert(k, (), k, 3, |_| false, |k| gone.push(k));
        }
        // 1 renewed: 2 is now the oldest.
        map.insert(1, (), 4, 3, |_| false, |k| gone.push(k));
        map.insert(5, (), 5, 3, |_| false, |k| gone.push(k));
        assert_eq!(gone, [2]);
        // Everything dated before 5 has expired.
        map.insert(6, (), 6, 3, |at| at < 5, |k| gone.push(k));
        assert_eq!(gone, [2, 3, 1]);
        assert!(map.contains_key(&5) && map.contains_key(&6));
        assert_eq!(map.get(&6).map(|(_, at)| at), Some(6));
        let mut left = map.clear();
        left.sort();
        assert_eq!(left, [5, 6]);
        assert!(map.is_empty());
    }
}
