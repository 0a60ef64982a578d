//! Ephemeral key pairs made ahead of time, so that a handshake computes
//! only its key agreement while the peer waits.
//!
//! The pool is a bounded store and nothing more: the core takes from it
//! when it needs a key pair (and generates one itself when the pool has
//! none for that TEP), and whoever owns the pool refills it off the
//! critical path (`tcpcrypt-tokio` does so on a background thread). Each
//! pair leaves the pool exactly once, is used for one handshake, and is
//! zeroized when dropped; none is ever written anywhere. With no pool the
//! core stays deterministic given its random source; a pool is one more
//! input.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::crypto::CryptoBackend;
use super::error::Error;
use super::random::RandomSource;
use super::tep::{EphemeralKey, Tep};

/// Most key pairs kept per TEP.
pub const MAX_POOLED_PER_TEP: usize = 64;

struct Slot {
    tep: Tep,
    keys: VecDeque<EphemeralKey>,
    /// A handshake asked for this TEP since the last refill or clear: only
    /// TEPs in use are refilled.
    wanted: bool,
}

/// A bounded pool of ephemeral key pairs, by TEP.
///
/// ```
/// use tcpcrypt_proto::{KeyPairPool, OsRandom, Tep};
/// use tcpcrypt_proto::crypto::default_backend;
///
/// let pool = KeyPairPool::new(default_backend(), 4);
/// assert!(pool.take(Tep::EcdheCurve25519).is_none()); // empty: the caller generates
/// pool.refill(&mut OsRandom).unwrap(); // off the critical path
/// let key = pool.take(Tep::EcdheCurve25519).expect("made ahead");
/// assert_eq!(key.tep(), Tep::EcdheCurve25519);
/// assert_eq!(pool.len(Tep::EcdheCurve25519), 3);
/// ```
pub struct KeyPairPool {
    backend: &'static dyn CryptoBackend,
    per_tep: usize,
    slots: Mutex<Vec<Slot>>,
    on_take: Option<Box<dyn Fn() + Send + Sync>>,
    /// The process that made the pairs: a child forked from it has copies
    /// of them, which must not serve a second handshake.
    owner: u32,
    takes: AtomicU64,
}

impl fmt::Debug for KeyPairPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPairPool")
            .field("backend", &self.backend.name())
            .field("per_tep", &self.per_tep)
            .finish_non_exhaustive()
    }
}

impl KeyPairPool {
    /// An empty pool holding up to `per_tep` pairs (at most
    /// [`MAX_POOLED_PER_TEP`]) of each TEP, made with `backend`: a pair is
    /// only used with the backend that made it.
    pub fn new(backend: &'static dyn CryptoBackend, per_tep: usize) -> Self {
        KeyPairPool {
            backend,
            per_tep: per_tep.min(MAX_POOLED_PER_TEP),
            slots: Mutex::new(Vec::new()),
            on_take: None,
            owner: std::process::id(),
            takes: AtomicU64::new(0),
        }
    }

    /// Calls `notify` after a [`take`](Self::take) that left half the
    /// pool's size or less for that TEP (or found none): the owner's cue
    /// to refill. Refilling in batches keeps the wake-ups of whoever
    /// refills off most handshakes.
    pub fn with_notify(mut self, notify: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_take = Some(Box::new(notify));
        self
    }

    /// The backend the pool's pairs are made with.
    pub fn backend(&self) -> &'static dyn CryptoBackend {
        self.backend
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // A panic elsewhere while holding the lock leaves a consistent
        // queue behind: keep using it.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a pair for `tep`, if one is ready, and marks `tep` as wanted.
    /// In a process forked from the one that made the pool, never: its
    /// pairs are copies of the parent's.
    pub fn take(&self, tep: Tep) -> Option<EphemeralKey> {
        if std::process::id() != self.owner {
            return None;
        }
        self.takes.fetch_add(1, Ordering::Relaxed);
        let (key, left) = {
            let mut slots = self.slots();
            match slots.iter_mut().find(|s| s.tep == tep) {
                Some(slot) => {
                    slot.wanted = true;
                    (slot.keys.pop_front(), slot.keys.len())
                }
                None => {
                    slots.push(Slot {
                        tep,
                        keys: VecDeque::new(),
                        wanted: true,
                    });
                    (None, 0)
                }
            }
        };
        if key.is_none() || left <= self.per_tep / 2 {
            if let Some(notify) = &self.on_take {
                notify();
            }
        }
        key
    }

    /// How many times a handshake asked the pool for a pair: the owner
    /// tells an idle pool from a busy one by it.
    pub fn takes(&self) -> u64 {
        self.takes.load(Ordering::Relaxed)
    }

    /// Pairs ready for `tep`.
    pub fn len(&self, tep: Tep) -> usize {
        self.slots()
            .iter()
            .find(|s| s.tep == tep)
            .map_or(0, |s| s.keys.len())
    }

    /// Whether no pair is ready for any TEP.
    pub fn is_empty(&self) -> bool {
        self.slots().iter().all(|s| s.keys.is_empty())
    }

    /// Tops up every wanted TEP (and, the first time, X25519, the TEP every
    /// peer has) to the pool's size. The pairs are made without holding
    /// the lock, so handshakes take from the pool meanwhile. Returns how
    /// many pairs were made.
    pub fn refill(&self, rng: &mut dyn RandomSource) -> Result<usize, Error> {
        let mut made = 0;
        loop {
            let next = {
                let mut slots = self.slots();
                if slots.is_empty() {
                    slots.push(Slot {
                        tep: Tep::EcdheCurve25519,
                        keys: VecDeque::new(),
                        wanted: true,
                    });
                }
                slots
                    .iter()
                    .find(|s| s.wanted && s.keys.len() < self.per_tep)
                    .map(|s| s.tep)
            };
            let Some(tep) = next else {
                return Ok(made);
            };
            let key = EphemeralKey::generate(tep, self.backend, rng)?;
            made += 1;
            let mut slots = self.slots();
            if let Some(slot) = slots.iter_mut().find(|s| s.tep == tep) {
                if slot.keys.len() < self.per_tep {
                    slot.keys.push_back(key);
                } else {
                    // Filled meanwhile: this one is dropped (zeroized).
                    continue;
                }
            }
        }
    }

    /// Drops every pair (each zeroized) and forgets which TEPs were wanted:
    /// an idle pool holds no key material.
    pub fn clear(&self) {
        self.slots().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::default_backend;
    use crate::random::OsRandom;

    #[test]
    fn each_pair_leaves_once_and_only_wanted_teps_are_refilled() {
        let pool = KeyPairPool::new(default_backend(), 3);
        assert_eq!(pool.refill(&mut OsRandom).unwrap(), 3, "X25519 first");
        assert!(pool.take(Tep::EcdheP256).is_none());
        assert_eq!(pool.refill(&mut OsRandom).unwrap(), 3, "P-256 now wanted");
        let mut publics = Vec::new();
        while let Some(k) = pool.take(Tep::EcdheP256) {
            assert_eq!(k.tep(), Tep::EcdheP256);
            publics.push(k.pub_field().to_vec());
        }
        publics.sort();
        publics.dedup();
        assert_eq!(publics.len(), 3, "three distinct pairs, each taken once");
        assert_eq!(pool.len(Tep::EcdheCurve25519), 3);
        assert_eq!(pool.len(Tep::EcdheP521), 0, "never asked for");
        pool.clear();
        assert!(pool.is_empty());
    }

    #[test]
    fn a_forked_child_never_takes_its_parents_pairs() {
        let mut pool = KeyPairPool::new(default_backend(), 2);
        pool.refill(&mut OsRandom).unwrap();
        assert_eq!(pool.len(Tep::EcdheCurve25519), 2);
        // As seen from another process: the pairs are copies.
        pool.owner = std::process::id().wrapping_add(1);
        assert!(pool.take(Tep::EcdheCurve25519).is_none());
        assert_eq!(pool.takes(), 0);
    }

    #[test]
    fn the_pool_is_bounded_and_asks_for_a_refill_at_half() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let takes = Arc::new(AtomicUsize::new(0));
        let t = takes.clone();
        let pool = KeyPairPool::new(default_backend(), 1000).with_notify(move || {
            t.fetch_add(1, Ordering::Relaxed);
        });
        pool.refill(&mut OsRandom).unwrap();
        assert_eq!(pool.len(Tep::EcdheCurve25519), MAX_POOLED_PER_TEP);
        assert_eq!(pool.refill(&mut OsRandom).unwrap(), 0, "full");
        for _ in 0..MAX_POOLED_PER_TEP / 2 - 1 {
            pool.take(Tep::EcdheCurve25519).unwrap();
        }
        assert_eq!(takes.load(Ordering::Relaxed), 0, "more than half left");
        pool.take(Tep::EcdheCurve25519).unwrap();
        assert_eq!(takes.load(Ordering::Relaxed), 1, "half left");
        assert!(pool.take(Tep::EcdheCurve448).is_none());
        assert_eq!(takes.load(Ordering::Relaxed), 2, "none for X448");
    }
}
