//! Refills a [`KeyPairPool`] on a background thread, so that handshakes
//! take key pairs made ahead of time (`Config::key_pair_pool`).
//!
//! The thread starts at the pool's first use, refills when a take leaves
//! the pool half empty (takes in a burst coalesce into one refill), empties
//! the pool when no handshake has taken from it for [`IDLE`] (an idle
//! process holds no key material), and ends when the pool is dropped.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::proto::crypto::CryptoBackend;
use crate::proto::{KeyPairPool, OsRandom};

/// How long a pool nobody takes from keeps its pairs.
pub(crate) const IDLE: Duration = Duration::from_secs(30);

/// A pool of up to `per_tep` pairs per TEP, refilled in the background.
pub(crate) fn pool(backend: &'static dyn CryptoBackend, per_tep: usize) -> Arc<KeyPairPool> {
    Arc::new_cyclic(|weak: &Weak<KeyPairPool>| {
        let weak = weak.clone();
        let refiller: OnceLock<SyncSender<()>> = OnceLock::new();
        KeyPairPool::new(backend, per_tep).with_notify(move || {
            let tx = refiller.get_or_init(|| spawn(weak.clone()));
            // Full: a refill is already due.
            let _ = tx.try_send(());
        })
    })
}

fn spawn(pool: Weak<KeyPairPool>) -> SyncSender<()> {
    let (tx, rx) = mpsc::sync_channel(1);
    let started = std::thread::Builder::new()
        .name("tcpcrypt-keys".into())
        .spawn(move || {
            let refill = || match pool.upgrade() {
                Some(p) => {
                    if let Err(e) = p.refill(&mut OsRandom) {
                        tracing::warn!(error = %e, "making key pairs ahead of time failed");
                    }
                    true
                }
                None => false,
            };
            let mut takes = 0;
            loop {
                match rx.recv_timeout(IDLE) {
                    Ok(()) => {
                        if !refill() {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        match pool.upgrade() {
                            // Taken from since the last look (takes that
                            // leave it more than half full ask for no
                            // refill): in use, kept.
                            Some(p) if p.takes() != takes => {
                                takes = p.takes();
                                continue;
                            }
                            Some(p) => p.clear(),
                            None => return,
                        }
                        // Asleep until the next handshake.
                        if rx.recv().is_err() || !refill() {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    if let Err(e) = started {
        // Handshakes make their own pairs, as without a pool.
        tracing::warn!(error = %e, "no thread to make key pairs ahead of time");
    }
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Tep;
    use crate::proto::crypto::default_backend;
    use std::time::Instant;

    #[test]
    fn a_take_is_followed_by_a_refill_and_the_thread_ends_with_the_pool() {
        let pool = pool(default_backend(), 4);
        assert!(pool.take(Tep::EcdheCurve25519).is_none());
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.len(Tep::EcdheCurve25519) < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            pool.len(Tep::EcdheCurve25519),
            4,
            "refilled in the background"
        );
        assert!(pool.take(Tep::EcdheCurve25519).is_some());
        let weak = Arc::downgrade(&pool);
        drop(pool);
        // The thread holds the pool only while refilling.
        let deadline = Instant::now() + Duration::from_secs(10);
        while weak.upgrade().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(weak.upgrade().is_none());
    }
}
