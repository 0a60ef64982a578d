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
    legacy: HashMap<SocketAddr, Instant>,
    encrypted: HashMap<SocketAddr, Instant>,
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

    /// Whether `addr` was found legacy within the verdict TTL.
    pub fn is_legacy(&self, addr: SocketAddr) -> bool {
        self.lock()
            .legacy
            .get(&addr)
            .is_some_and(|t| t.elapsed() <= self.verdict_ttl)
    }

    /// Whether `addr` negotiated tcpcrypt before.
    pub fn was_encrypted(&self, addr: SocketAddr) -> bool {
        self.lock().encrypted.contains_key(&addr)
    }

    pub(crate) fn mark_legacy(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        bound(&mut inner.legacy, self.capacity, self.verdict_ttl, |t| *t);
        inner.legacy.insert(addr, Instant::now());
    }

    pub(crate) fn mark_encrypted(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        inner.legacy.remove(&addr);
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
        inner.tickets.remove(&addr);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        *inner = Inner::default();
    }
}
