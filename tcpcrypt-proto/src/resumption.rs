//! Session resumption (RFC 8548 3.5): what is cached, identifier halves,
//! and the server's single-use cache.
//!
//! A secret is used at most once: the client removes its entry when it
//! offers it, the server when it looks it up, and both derive `ss[i+1]`
//! for the next time. Secrets live only in memory and are zeroized on
//! drop.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::aead::AeadAlgorithm;
use super::bounded::BoundedMap;
use super::crypto::CryptoBackend;
use super::schedule::{RESUME_HALF_LEN, SessionSecret};
use super::session::Role;
use super::tep::Tep;

/// Half of a resumption identifier.
pub type ResumeHalf = [u8; RESUME_HALF_LEN];

/// A cached session secret `ss[i]` and what is needed to resume with it.
/// The AEAD is the original session's: a resumed connection has no Init
/// messages to negotiate another one.
#[derive(Clone)]
pub struct ResumptionSecret {
    /// The TEP of the original session.
    pub tep: Tep,
    /// The AEAD of the original session.
    pub aead: AeadAlgorithm,
    /// This host's role in the original session: fixes its key direction
    /// and which identifier half it sends.
    pub original_role: Role,
    /// `i`.
    pub index: u64,
    /// `ss[i]`.
    pub secret: SessionSecret,
}

impl fmt::Debug for ResumptionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumptionSecret")
            .field("tep", &self.tep)
            .field("aead", &self.aead)
            .field("original_role", &self.original_role)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl ResumptionSecret {
    /// The half this host sends: the first if it was A, the second if B.
    pub fn own_half(&self, backend: &dyn CryptoBackend) -> ResumeHalf {
        self.half(backend, self.original_role)
    }

    /// The half the peer sends.
    pub fn peer_half(&self, backend: &dyn CryptoBackend) -> ResumeHalf {
        self.half(backend, self.original_role.peer())
    }

    fn half(&self, backend: &dyn CryptoBackend, role: Role) -> ResumeHalf {
        let id = self.secret.resume_id(backend);
        let range = match role {
            Role::A => 0..RESUME_HALF_LEN,
            Role::B => RESUME_HALF_LEN..2 * RESUME_HALF_LEN,
        };
        id[range].try_into().expect("9 bytes")
    }
}

/// `sn[i] = nonce_a | nonce_b`, where `nonce_a` is the nonce of the host
/// that was A in the original session, whatever the roles are now
/// (RFC 8548 3.5).
pub fn session_nonce(own_original_role: Role, own: &[u8], peer: &[u8]) -> Vec<u8> {
    match own_original_role {
        Role::A => [own, peer].concat(),
        Role::B => [peer, own].concat(),
    }
}

/// A source of the current time for cache expiry, injected so that the
/// core reads no clock itself: any monotonic time since a fixed origin.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The accepting side's cache, keyed by the identifier half a peer sends.
/// Bounded: the oldest entry goes first when full. With a clock, entries
/// also expire.
pub struct ResumptionCache {
    capacity: usize,
    expiry: Option<(Duration, Clock)>,
    inner: Mutex<CacheInner>,
    removal: std::sync::OnceLock<RemovalHook>,
}

/// Told of each identifier half whose secret leaves the cache (taken,
/// evicted, expired or flushed), so that a copy of it kept elsewhere (the
/// kernel carriage's map of identifiers it may answer in a SYN-ACK) leaves
/// with it. Called without the cache's lock held.
pub type RemovalHook = Arc<dyn Fn(&ResumeHalf) + Send + Sync>;

/// The secrets under the halves their peers will send, each with its time
/// of insertion.
type CacheInner = BoundedMap<ResumeHalf, ResumptionSecret, Duration>;

impl fmt::Debug for ResumptionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumptionCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl ResumptionCache {
    /// A cache holding at most `capacity` secrets.
    pub fn new(capacity: usize) -> Self {
        ResumptionCache {
            capacity,
            expiry: None,
            inner: Mutex::new(CacheInner::default()),
            removal: std::sync::OnceLock::new(),
        }
    }

    /// A cache whose entries expire `max_age` after insertion, as told by
    /// `clock`.
    pub fn with_expiry(capacity: usize, max_age: Duration, clock: Clock) -> Self {
        ResumptionCache {
            expiry: Some((max_age, clock)),
            ..ResumptionCache::new(capacity)
        }
    }

    /// Sets the [`RemovalHook`] (once; a second call is ignored).
    pub fn on_removal(&self, hook: RemovalHook) {
        let _ = self.removal.set(hook);
    }

    fn removed(&self, halves: &[ResumeHalf]) {
        if let Some(hook) = self.removal.get() {
            halves.iter().for_each(|h| hook(h));
        }
    }

    /// The TEP and this side's identifier half of the secret stored under
    /// `half` (the peer's), without taking it: what this side answers
    /// when the peer names it.
    pub fn answer_for(
        &self,
        backend: &dyn CryptoBackend,
        half: &ResumeHalf,
    ) -> Option<(Tep, ResumeHalf)> {
        let inner = self.lock();
        let (secret, _) = inner.get(half)?;
        Some((secret.tep, secret.own_half(backend)))
    }

    fn now(&self) -> Duration {
        self.expiry
            .as_ref()
            .map_or(Duration::ZERO, |(_, clock)| clock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every mutation is a single call), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a secret under the half its peer will send, and returns that
    /// half (the key to [`remove`](Self::remove) it), or `None` if the cache
    /// holds nothing (capacity 0).
    pub fn insert(
        &self,
        backend: &dyn CryptoBackend,
        secret: ResumptionSecret,
    ) -> Option<ResumeHalf> {
        let key = secret.peer_half(backend);
        if self.capacity == 0 {
            return None;
        }
        let now = self.now();
        let expired = |at: Duration| {
            self.expiry
                .as_ref()
                .is_some_and(|(max_age, _)| now.saturating_sub(at) > *max_age)
        };
        let mut gone = Vec::new();
        self.lock()
            .insert(key, secret, now, self.capacity, expired, |k| gone.push(k));
        self.removed(&gone);
        Some(key)
    }

    /// Removes and returns the secret a peer named for `tep`. A request
    /// naming a cached secret under another TEP leaves it in place, so that
    /// a forged request cannot destroy it.
    pub fn take_for(&self, half: &ResumeHalf, tep: Tep) -> Option<ResumptionSecret> {
        {
            let inner = self.lock();
            if inner.get(half).is_none_or(|(s, _)| s.tep != tep) {
                return None;
            }
        }
        self.take(half)
    }

    /// Removes and returns the secret a peer named, if any: single use.
    pub fn take(&self, half: &ResumeHalf) -> Option<ResumptionSecret> {
        let now = self.now();
        let (found, inserted) = self.lock().remove(half)?;
        self.removed(std::slice::from_ref(half));
        match &self.expiry {
            Some((max_age, _)) if now.saturating_sub(inserted) > *max_age => None,
            _ => Some(found),
        }
    }

    /// Flushes the entry stored under `half` (RFC 8548 3.5's per-connection
    /// flush). Returns whether there was one.
    pub fn remove(&self, half: &ResumeHalf) -> bool {
        self.take(half).is_some()
    }

    /// Flushes everything.
    pub fn clear(&self) {
        let gone = self.lock().clear();
        self.removed(&gone);
    }

    /// Number of cached secrets.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::crypto;

    fn secret(byte: u8) -> ResumptionSecret {
        ResumptionSecret {
            tep: Tep::EcdheCurve25519,
            aead: AeadAlgorithm::Aes128Gcm,
            original_role: Role::B,
            index: 1,
            secret: SessionSecret::dangerous_from_bytes([byte; 32]),
        }
    }

    #[test]
    fn bounded_single_use_and_expiring() {
        let backend = crypto::default_backend();
        let cache = ResumptionCache::new(2);
        let k1 = cache.insert(backend, secret(1)).unwrap();
        let k2 = cache.insert(backend, secret(2)).unwrap();
        let k3 = cache.insert(backend, secret(3)).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.take(&k1).is_none(), "oldest evicted");
        assert!(cache.take(&k2).is_some());
        assert!(cache.take(&k2).is_none(), "single use");
        assert!(cache.remove(&k3));
        assert!(cache.is_empty());

        let now = Arc::new(AtomicU64::new(0));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || Duration::from_secs(clock_now.load(Ordering::Relaxed)));
        let cache = ResumptionCache::with_expiry(4, Duration::from_secs(60), clock);
        let fresh = cache.insert(backend, secret(4)).unwrap();
        let stale = cache.insert(backend, secret(5)).unwrap();
        now.store(30, Ordering::Relaxed);
        assert!(cache.take(&fresh).is_some());
        now.store(61, Ordering::Relaxed);
        assert!(cache.take(&stale).is_none(), "expired");

        // Capacity 0 stores nothing and says so.
        assert!(ResumptionCache::new(0).insert(backend, secret(6)).is_none());
        // The right half under the wrong TEP leaves the secret in place.
        let cache = ResumptionCache::new(2);
        let k = cache.insert(backend, secret(7)).unwrap();
        assert!(cache.take_for(&k, Tep::EcdheP256).is_none());
        assert!(cache.take_for(&k, Tep::EcdheCurve25519).is_some());
    }

    #[test]
    fn takes_and_inserts_without_end_keep_the_order_bounded_and_evict_oldest_first() {
        let backend = crypto::default_backend();
        let cache = ResumptionCache::new(64);
        let secret_n = |n: u32| {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            ResumptionSecret {
                secret: SessionSecret::dangerous_from_bytes(bytes),
                ..secret(9)
            }
        };
        // Every handshake takes one secret and inserts the next: the
        // places taken ones leave behind must not pile up.
        let mut keys: std::collections::VecDeque<ResumeHalf> = (0..64)
            .map(|n| cache.insert(backend, secret_n(n)).unwrap())
            .collect();
        for n in 64..20_000 {
            assert!(cache.take(&keys.pop_front().unwrap()).is_some());
            keys.push_back(cache.insert(backend, secret_n(n)).unwrap());
        }
        assert_eq!(cache.len(), 64);
        // Full: a newcomer evicts the oldest still there.
        let newest = cache.insert(backend, secret_n(20_000)).unwrap();
        assert!(cache.take(&keys[0]).is_none(), "oldest evicted");
        assert!(cache.take(&keys[1]).is_some());
        assert!(cache.take(&newest).is_some());
        // A key inserted again is as new as its last insertion.
        // (keys[i] is the key of secret_n(20_000 - 64 + i).)
        let again = cache.insert(backend, secret_n(20_000 - 64 + 2)).unwrap();
        assert_eq!(again, keys[2], "the same secret, the same key");
        for n in 0..62 {
            cache.insert(backend, secret_n(30_000 + n)).unwrap();
        }
        assert!(cache.take(&keys[3]).is_none(), "evicted before");
        assert!(cache.take(&again).is_some(), "kept: inserted again later");
    }

    #[test]
    fn an_insert_expires_what_is_too_old_even_when_not_full() {
        let backend = crypto::default_backend();
        let now = Arc::new(AtomicU64::new(0));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || Duration::from_secs(clock_now.load(Ordering::Relaxed)));
        let cache = ResumptionCache::with_expiry(100, Duration::from_secs(60), clock);
        let removed = Arc::new(Mutex::new(Vec::new()));
        let seen = removed.clone();
        cache.on_removal(Arc::new(move |h| seen.lock().unwrap().push(*h)));
        let old = cache.insert(backend, secret(1)).unwrap();
        now.store(50, Ordering::Relaxed);
        let young = cache.insert(backend, secret(2)).unwrap();
        now.store(100, Ordering::Relaxed);
        cache.insert(backend, secret(3)).unwrap();
        assert_eq!(cache.len(), 2, "the first one expired");
        assert_eq!(*removed.lock().unwrap(), vec![old], "and its removal told");
        assert!(cache.take(&young).is_some());
    }
}
