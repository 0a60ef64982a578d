//! The connecting side's memory of destinations: which ones are legacy
//! (so only the first contact pays for the fallback), which ones spoke
//! tcpcrypt (so a later fallback is reported as a possible downgrade), and
//! resumption secrets (RFC 8548 3.5), each single use.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::ResumptionSecret;
use crate::proto::bounded::BoundedMap;

/// Per-destination client state, bounded in size and age.
#[derive(Debug)]
pub struct ClientCache {
    capacity: usize,
    verdict_ttl: Duration,
    ticket_ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Legacy verdicts, with how long each holds.
    legacy: Bounded<Duration>,
    encrypted: Bounded<()>,
    /// Destinations that lately stayed silent through a long wait for
    /// their answer (`silent_lately`).
    silent: Bounded<()>,
    /// Destinations seen encrypted that later stayed silent to two hellos
    /// in a row (`mark_stopped_speaking`), until encrypted again.
    stopped: Bounded<()>,
    tickets: Bounded<ResumptionSecret>,
}

/// Destinations and what is remembered of each, with when it was: at most
/// `capacity` (the oldest goes first), and none older than a given age,
/// in O(1) amortized per operation (the core's `BoundedMap`). A client
/// that meets thousands of destinations (a crawler, the daemon serving a
/// browser) pays no scan of the map per connection under the cache's lock.
#[derive(Debug)]
struct Bounded<V>(BoundedMap<SocketAddr, V, Instant>);

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Bounded(BoundedMap::default())
    }
}

impl<V> Bounded<V> {
    fn get(&self, addr: &SocketAddr) -> Option<(&V, Instant)> {
        self.0.get(addr)
    }

    fn contains_key(&self, addr: &SocketAddr) -> bool {
        self.0.contains_key(addr)
    }

    fn remove(&mut self, addr: &SocketAddr) -> Option<(V, Instant)> {
        self.0.remove(addr)
    }

    /// Inserts (or replaces) `addr`'s entry, dated now, after dropping
    /// the entries older than `max_age`, then the oldest while more than
    /// `capacity` are left.
    fn insert(&mut self, addr: SocketAddr, value: V, capacity: usize, max_age: Duration) {
        let now = Instant::now();
        let expired = |at: Instant| now.saturating_duration_since(at) > max_age;
        self.0.insert(addr, value, now, capacity, expired, drop);
    }
}

impl ClientCache {
    pub(crate) fn new(capacity: usize, verdict_ttl: Duration, ticket_ttl: Duration) -> Self {
        ClientCache {
            capacity,
            verdict_ttl,
            ticket_ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No mutation panics half done: a poisoned lock holds consistent
        // maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `addr` was found legacy, and the verdict still holds.
    pub fn is_legacy(&self, addr: SocketAddr) -> bool {
        self.lock()
            .legacy
            .get(&addr)
            .is_some_and(|(ttl, at)| at.elapsed() <= *ttl)
    }

    /// Whether `addr` negotiated tcpcrypt before.
    pub fn was_encrypted(&self, addr: SocketAddr) -> bool {
        self.lock().encrypted.contains_key(&addr)
    }

    /// Records that `addr` did not speak tcpcrypt. A `conclusive` verdict
    /// (the server answered with bytes that are not a hello, or refused
    /// the negotiation in band) holds for the whole verdict TTL. Weak
    /// evidence (a reset, a close, silence: a single forged packet can
    /// produce any of them) holds for a twentieth of it, and for a
    /// destination that negotiated tcpcrypt before, not at all, unless it
    /// stopped speaking tcpcrypt since (`mark_stopped_speaking`).
    pub(crate) fn mark_legacy(&self, addr: SocketAddr, conclusive: bool) {
        let mut inner = self.lock();
        let weak_counts = !inner.encrypted.contains_key(&addr) || inner.stopped.contains_key(&addr);
        if !conclusive && !weak_counts {
            return;
        }
        self.insert_legacy(&mut inner, addr, conclusive);
    }

    fn insert_legacy(&self, inner: &mut Inner, addr: SocketAddr, conclusive: bool) {
        let ttl = if conclusive {
            self.verdict_ttl
        } else {
            self.verdict_ttl / 20
        };
        inner
            .legacy
            .insert(addr, ttl, self.capacity, self.verdict_ttl);
    }

    /// Records that `addr` sent bytes and reset the connection before any
    /// hello was sent (an HTTP server that answers 503 and aborts), for a
    /// relay that took the connection plain at once: weak evidence, as a
    /// close is (a twentieth of the verdict TTL, and nothing for a
    /// destination that negotiated tcpcrypt before), so that the next
    /// connections go plain at once for a while instead of racing the
    /// server's reset with a hello.
    pub fn mark_sent_and_reset(&self, addr: SocketAddr) {
        self.mark_legacy(addr, false);
    }

    /// Records that the path to `addr` breaks tcpcrypt connections (a
    /// middlebox resets, drops or alters them) while plain TCP gets
    /// through, as a path self-test (`tcpcrypt check --path`) found: the
    /// next connections skip the hello, as for a conclusive legacy verdict,
    /// for the whole verdict TTL. A local decision, never remote evidence.
    pub fn mark_path_broken(&self, addr: SocketAddr) {
        let (capacity, ttl) = (self.capacity, self.verdict_ttl);
        self.lock().legacy.insert(addr, ttl, capacity, ttl);
    }

    /// Records that `addr` stayed silent through a long wait for its
    /// answer (a destination seen encrypted, or any under the mandatory
    /// policy, is waited for the whole handshake: a busy server is silent
    /// until its application accepts).
    pub(crate) fn mark_silent(&self, addr: SocketAddr) {
        let (capacity, ttl) = (self.capacity, self.verdict_ttl / 20);
        self.lock().silent.insert(addr, (), capacity, ttl);
    }

    /// Whether `addr` stayed silent through a long wait lately (a
    /// twentieth of the verdict TTL, as for weak evidence): its next
    /// connections wait only the server hello timeout, so that a server
    /// that stopped speaking tcpcrypt without a word costs the long wait
    /// once, not on every connection.
    pub(crate) fn silent_lately(&self, addr: SocketAddr) -> bool {
        self.lock()
            .silent
            .get(&addr)
            .is_some_and(|(_, t)| t.elapsed() <= self.verdict_ttl / 20)
    }

    /// Records that `addr`, which negotiated tcpcrypt before, stayed
    /// silent to two hellos of one connection in a row (one through the
    /// long wait): it is taken for a server that stopped speaking
    /// tcpcrypt. It is still remembered as encrypted (its fallbacks are
    /// reported as possible downgrades, and refused with
    /// `refuse_downgrade`), but its connections no longer wait long nor
    /// try again, and weak evidence counts for it as for any destination,
    /// from this silence on: its next connections do not each pay the
    /// long wait and the try again.
    pub(crate) fn mark_stopped_speaking(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        inner.stopped.insert(addr, (), self.capacity, Duration::MAX);
        self.insert_legacy(&mut inner, addr, false);
    }

    /// Whether `addr` stopped speaking tcpcrypt (`mark_stopped_speaking`)
    /// and has not been encrypted since.
    pub(crate) fn stopped_speaking(&self, addr: SocketAddr) -> bool {
        self.lock().stopped.contains_key(&addr)
    }

    pub(crate) fn mark_encrypted(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        inner.legacy.remove(&addr);
        inner.silent.remove(&addr);
        inner.stopped.remove(&addr);
        inner
            .encrypted
            .insert(addr, (), self.capacity, Duration::MAX);
    }

    /// Takes the resumption secret for `addr`: offered once, whatever the
    /// outcome (RFC 8548 3.5's "lowest i not already used").
    pub(crate) fn take_ticket(&self, addr: SocketAddr) -> Option<ResumptionSecret> {
        let (ticket, at) = self.lock().tickets.remove(&addr)?;
        (at.elapsed() <= self.ticket_ttl).then_some(ticket)
    }

    pub(crate) fn store_ticket(&self, addr: SocketAddr, ticket: ResumptionSecret) {
        let (capacity, ttl) = (self.capacity, self.ticket_ttl);
        self.lock().tickets.insert(addr, ticket, capacity, ttl);
    }

    /// Drops the resumption secret cached for `addr`.
    pub fn forget_ticket(&self, addr: SocketAddr) {
        self.lock().tickets.remove(&addr);
    }

    /// Whether a resumption secret is cached for `addr`.
    pub fn has_ticket(&self, addr: SocketAddr) -> bool {
        self.lock().tickets.contains_key(&addr)
    }

    /// Forgets everything about `addr`, including its resumption secret
    /// (RFC 8548 3.5's flush).
    pub fn flush(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        inner.legacy.remove(&addr);
        inner.encrypted.remove(&addr);
        inner.silent.remove(&addr);
        inner.stopped.remove(&addr);
        inner.tickets.remove(&addr);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        *inner = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn the_oldest_goes_first_and_a_destination_seen_again_evicts_nothing() {
        let cache = ClientCache::new(3, Duration::from_secs(600), Duration::from_secs(600));
        for port in 1..=3 {
            cache.mark_encrypted(addr(port));
        }
        // Seen again, at capacity: nothing else is forgotten for it.
        cache.mark_encrypted(addr(2));
        assert!((1..=3).all(|p| cache.was_encrypted(addr(p))));
        // A newcomer takes the place of the one seen longest ago.
        cache.mark_encrypted(addr(4));
        assert!(!cache.was_encrypted(addr(1)));
        cache.mark_encrypted(addr(5));
        assert!(!cache.was_encrypted(addr(3)), "2 was seen again since");
        assert!([2, 4, 5].iter().all(|&p| cache.was_encrypted(addr(p))));
    }

    #[test]
    fn thousands_of_destinations_keep_the_maps_bounded() {
        let cache = ClientCache::new(64, Duration::from_secs(600), Duration::from_secs(600));
        for port in 0..20_000u16 {
            cache.mark_encrypted(addr(port));
            cache.mark_legacy(addr(port.wrapping_add(30_000)), true);
            // Encrypted again: its legacy verdict goes, leaving its place.
            cache.mark_encrypted(addr(port.wrapping_add(30_000)));
        }
        let inner = cache.lock();
        assert_eq!(inner.encrypted.0.len(), 64);
        assert!(inner.encrypted.0.places() <= 2 * 64 + 16);
        assert!(inner.legacy.0.is_empty());
        assert!(
            inner.legacy.0.places() <= 16,
            "places of removed entries go"
        );
    }

    #[test]
    fn entries_older_than_their_age_go_as_newer_ones_come() {
        let mut map = Bounded::<()>::default();
        map.insert(addr(1), (), 100, Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(80));
        map.insert(addr(2), (), 100, Duration::from_millis(50));
        assert!(!map.contains_key(&addr(1)), "too old");
        assert!(map.contains_key(&addr(2)));
        assert!(map.remove(&addr(2)).is_some());
        assert!(map.get(&addr(2)).is_none());
    }
}
