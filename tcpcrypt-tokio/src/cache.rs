//! The connecting side's memory of destinations: which ones are legacy
//! (so only the first contact pays for the fallback), which ones spoke
//! tcpcrypt (so a later fallback is reported as a possible downgrade), and
//! resumption secrets (RFC 8548 3.5), each single use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::ResumptionSecret;

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
    /// When each legacy verdict was reached, and how long it holds.
    legacy: HashMap<SocketAddr, (Instant, Duration)>,
    encrypted: HashMap<SocketAddr, Instant>,
    /// When each destination last stayed silent through a long wait for
    /// its answer (`silent_lately`).
    silent: HashMap<SocketAddr, Instant>,
    /// Destinations seen encrypted that later stayed silent to two hellos
    /// in a row (`mark_stopped_speaking`), until encrypted again.
    stopped: HashMap<SocketAddr, Instant>,
    tickets: HashMap<SocketAddr, (ResumptionSecret, Instant)>,
}

/// Drops expired entries, then the oldest while over capacity.
fn bound<V>(
    map: &mut HashMap<SocketAddr, V>,
    capacity: usize,
    ttl: Duration,
    at: impl Fn(&V) -> Instant,
) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, v| at(v).elapsed() <= ttl);
    while map.len() >= capacity.max(1) {
        let Some(oldest) = map.iter().min_by_key(|(_, v)| at(v)).map(|(k, _)| *k) else {
            break;
        };
        map.remove(&oldest);
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
        // Every mutation is a single map call: a poisoned lock holds
        // consistent maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `addr` was found legacy, and the verdict still holds.
    pub fn is_legacy(&self, addr: SocketAddr) -> bool {
        self.lock()
            .legacy
            .get(&addr)
            .is_some_and(|(at, ttl)| at.elapsed() <= *ttl)
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
        bound(
            &mut inner.legacy,
            self.capacity,
            self.verdict_ttl,
            |(t, _)| *t,
        );
        inner.legacy.insert(addr, (Instant::now(), ttl));
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
        let mut inner = self.lock();
        bound(
            &mut inner.legacy,
            self.capacity,
            self.verdict_ttl,
            |(t, _)| *t,
        );
        inner
            .legacy
            .insert(addr, (Instant::now(), self.verdict_ttl));
    }

    /// Records that `addr` stayed silent through a long wait for its
    /// answer (a destination seen encrypted, or any under the mandatory
    /// policy, is waited for the whole handshake: a busy server is silent
    /// until its application accepts).
    pub(crate) fn mark_silent(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        bound(
            &mut inner.silent,
            self.capacity,
            self.verdict_ttl / 20,
            |t| *t,
        );
        inner.silent.insert(addr, Instant::now());
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
            .is_some_and(|t| t.elapsed() <= self.verdict_ttl / 20)
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
        bound(&mut inner.stopped, self.capacity, Duration::MAX, |t| *t);
        inner.stopped.insert(addr, Instant::now());
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
        bound(&mut inner.encrypted, self.capacity, Duration::MAX, |t| *t);
        inner.encrypted.insert(addr, Instant::now());
    }

    /// Takes the resumption secret for `addr`: offered once, whatever the
    /// outcome (RFC 8548 3.5's "lowest i not already used").
    pub(crate) fn take_ticket(&self, addr: SocketAddr) -> Option<ResumptionSecret> {
        let (ticket, at) = self.lock().tickets.remove(&addr)?;
        (at.elapsed() <= self.ticket_ttl).then_some(ticket)
    }

    pub(crate) fn store_ticket(&self, addr: SocketAddr, ticket: ResumptionSecret) {
        let mut inner = self.lock();
        bound(
            &mut inner.tickets,
            self.capacity,
            self.ticket_ttl,
            |(_, t)| *t,
        );
        inner.tickets.insert(addr, (ticket, Instant::now()));
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
