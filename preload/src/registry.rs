//! What this process remembers of the sockets it handed to the daemon:
//! a cache in front of the daemon's answers. The daemon knows every
//! relayed socket by its identity (its inode), so a descriptor this
//! process has not seen (a copy made by `dup`, one inherited across
//! `exec`) is found by asking it; this table only saves the round trip.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::wire::ConnState;

/// What the daemon said of a relayed socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub state: ConnState,
}

impl Known {
    /// Whether the answer can no longer change (until the socket closes).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            ConnState::Encrypted(_) | ConnState::Plain | ConnState::Closed
        )
    }

    /// Whether its addresses are final: the real connection is up (they
    /// do not change while it negotiates).
    pub fn has_final_names(&self) -> bool {
        !matches!(self.state, ConnState::Connecting | ConnState::Failed(_))
    }
}

/// One relayed socket, by descriptor.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The socket's identity: a descriptor number closed behind the
    /// hooks' back and reused for another socket does not match.
    pub id: u64,
    /// A connect of this process the daemon settles (its TCP handshake and
    /// negotiation), still under way as far as it knows.
    pub pending: bool,
    /// The failure of that connect has been reported to the application.
    pub reported: bool,
    /// The daemon's answer, once final.
    pub known: Option<Known>,
    /// Its latest answer whose addresses are final, for `getpeername`
    /// and `getsockname` while the connection still negotiates.
    pub names: Option<Known>,
    /// The process that recorded it: a forked child's close of an
    /// inherited copy must not abandon its parent's connect.
    pub owner: u32,
    /// While the connect holds the socket (its `TCP_NOTSENT_LOWAT` at 1):
    /// the application's own value, which the daemon puts back.
    pub lowat: Option<i32>,
}

impl Entry {
    pub fn new(id: u64, pending: bool) -> Entry {
        Entry {
            id,
            pending,
            reported: false,
            known: None,
            names: None,
            owner: std::process::id(),
            lowat: None,
        }
    }
}

/// At most this many identities of sockets known not to be relayed.
const NOT_RELAYED_KEPT: usize = 4096;

/// At most this many listeners of this process remembered.
const OWN_LISTENERS_KEPT: usize = 1024;

/// At most this many listeners remembered as answering in the SYN-ACK.
const KERNEL_LISTENERS_KEPT: usize = 4096;

#[derive(Default)]
struct Table {
    by_fd: HashMap<i32, Entry>,
    /// Connected loopback sockets the daemon does not relay.
    not_relayed: HashSet<u64>,
    /// Listening sockets whose SYN-ACKs answer ENO (the kernel carriage):
    /// a connection they accept may expect Init1 and must never reach the
    /// application as plain TCP.
    kernel_listeners: HashSet<u64>,
    /// Listening sockets of this process (by identity) and their
    /// addresses: a connect to one of them must not wait for its
    /// negotiation, which needs this process to accept first.
    own_listeners: HashMap<u64, std::net::SocketAddr>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// Holds the table's lock across a `fork` (`crate::fork`), so that the
/// child's copy is consistent.
pub(crate) fn hold_for_fork() -> MutexGuard<'static, impl Sized> {
    table().lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a hook waits for the table: a hook can run in a signal
/// handler that interrupted the lock's holder, and then goes without the
/// table rather than wait forever.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(200);

fn lock() -> Option<MutexGuard<'static, Table>> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match table().try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

pub(crate) fn insert(fd: i32, entry: Entry) {
    if let Some(mut t) = lock() {
        t.not_relayed.remove(&entry.id);
        t.by_fd.insert(fd, entry);
    }
}

/// The entry of `fd` if one is recorded (its identity unchecked).
pub(crate) fn recorded(fd: i32) -> Option<Entry> {
    lock()?.by_fd.get(&fd).cloned()
}

/// Whether this process has recorded any relayed socket: when not, and
/// nothing suggests a relayed socket, the hooks make no system call.
pub(crate) fn is_empty() -> bool {
    lock().is_none_or(|t| t.by_fd.is_empty())
}

pub(crate) fn update(fd: i32, f: impl FnOnce(&mut Entry)) {
    if let Some(mut t) = lock()
        && let Some(e) = t.by_fd.get_mut(&fd)
    {
        f(e);
    }
}

pub(crate) fn remove(fd: i32) -> Option<Entry> {
    lock()?.by_fd.remove(&fd)
}

pub(crate) fn is_not_relayed(id: u64) -> bool {
    lock().is_some_and(|t| t.not_relayed.contains(&id))
}

pub(crate) fn mark_not_relayed(id: u64) {
    if let Some(mut t) = lock() {
        if t.not_relayed.len() >= NOT_RELAYED_KEPT {
            t.not_relayed.clear();
        }
        t.not_relayed.insert(id);
    }
}

/// `id` listens with the kernel carriage. Past the bound the oldest
/// identities are kept; an identity reused by a later socket errs on the
/// safe side (its connections are reset, not handed out plain, when no
/// daemon takes them).
pub(crate) fn mark_kernel_listener(id: u64) {
    if let Some(mut t) = lock()
        && t.kernel_listeners.len() < KERNEL_LISTENERS_KEPT
    {
        t.kernel_listeners.insert(id);
    }
}

pub(crate) fn is_kernel_listener(id: u64) -> bool {
    lock().is_some_and(|t| t.kernel_listeners.contains(&id))
}

/// This process listens on `addr` with the socket `id` (past the bound,
/// the set starts again).
pub(crate) fn note_own_listener(id: u64, addr: std::net::SocketAddr) {
    if let Some(mut t) = lock() {
        if t.own_listeners.len() >= OWN_LISTENERS_KEPT {
            t.own_listeners.clear();
        }
        t.own_listeners.insert(id, addr);
    }
}

/// The listening sockets this process noted on `port`: identities and
/// addresses (some may be closed since).
pub(crate) fn own_listeners_on(port: u16) -> Vec<(u64, std::net::SocketAddr)> {
    lock()
        .map(|t| {
            t.own_listeners
                .iter()
                .filter(|(_, a)| a.port() == port)
                .map(|(id, a)| (*id, *a))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_kept_updated_and_forgotten() {
        insert(100_001, Entry::new(5, true));
        update(100_001, |e| e.reported = true);
        let e = recorded(100_001).unwrap();
        assert!(e.pending && e.reported && e.id == 5);
        assert!(remove(100_001).is_some());
        assert!(recorded(100_001).is_none());
    }

    #[test]
    fn the_negative_cache_is_bounded_and_yields_to_a_new_entry() {
        for id in 0..(NOT_RELAYED_KEPT as u64 + 5) {
            mark_not_relayed(1_000_000 + id);
        }
        assert!(lock().unwrap().not_relayed.len() <= NOT_RELAYED_KEPT);
        mark_not_relayed(42);
        insert(100_002, Entry::new(42, false));
        assert!(!is_not_relayed(42));
        remove(100_002);
    }
}
