//! Session resumption (RFC 8548 3.5): what is cached, identifier halves,
//! and the server's single-use cache.
//!
//! A secret is used at most once: the client removes its entry when it
//! offers it, the server when it looks it up, and both derive `ss[i+1]`
//! for the next time. Secrets live only in memory and are zeroized on
//! drop.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use super::aead::AeadAlgorithm;
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

/// The accepting side's cache, keyed by the identifier half a peer sends.
/// Bounded: the oldest entry goes first when full.
pub struct ResumptionCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<ResumeHalf, ResumptionSecret>,
    order: VecDeque<ResumeHalf>,
}

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
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every mutation is a single call), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a secret under the half its peer will send, and returns that
    /// half (the key to [`remove`](Self::remove) it).
    pub fn insert(&self, backend: &dyn CryptoBackend, secret: ResumptionSecret) -> ResumeHalf {
        let key = secret.peer_half(backend);
        if self.capacity == 0 {
            return key;
        }
        let mut inner = self.lock();
        if inner.entries.insert(key, secret).is_none() {
            inner.order.push_back(key);
        }
        while inner.entries.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.entries.remove(&old);
                }
                None => break,
            }
        }
        key
    }

    /// Removes and returns the secret a peer named, if any: single use.
    pub fn take(&self, half: &ResumeHalf) -> Option<ResumptionSecret> {
        let mut inner = self.lock();
        let found = inner.entries.remove(half)?;
        inner.order.retain(|k| k != half);
        Some(found)
    }

    /// Flushes the entry stored under `half` (RFC 8548 3.5's per-connection
    /// flush). Returns whether there was one.
    pub fn remove(&self, half: &ResumeHalf) -> bool {
        self.take(half).is_some()
    }

    /// Flushes everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
    }

    /// Number of cached secrets.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
