//! What the shim knows about the application's sockets it relays: the real
//! addresses (for `getpeername`/`getsockname`) and the session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tcpcrypt_tokio::SessionInfo;

/// The state of a relayed connection's negotiation.
#[derive(Debug, Clone)]
pub enum SessionState {
    /// A non-blocking `connect`: the real TCP handshake is under way.
    Connecting,
    /// A non-blocking `connect` failed with this errno, which `SO_ERROR`
    /// (or another `connect`) reports once.
    ConnectFailed(i32),
    /// The failure of a non-blocking `connect` has been reported.
    ConnectFailedReported,
    /// The handshake is running.
    Negotiating,
    /// Encrypted with this session.
    Encrypted(Box<SessionInfo>),
    /// Plain TCP (the peer does not speak tcpcrypt).
    Plain,
    /// The relay ended.
    Closed,
}

/// One relayed socket.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The socket's identity (its inode): a descriptor number closed
    /// behind the hooks' back (`fclose`, `dup2` over it, `close_range`)
    /// and reused for another socket does not match.
    pub id: u64,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub state: Arc<Mutex<SessionState>>,
    /// Wakes the relay of a connect still under way when the application
    /// closes its socket.
    pub cancel: Option<Arc<tokio::sync::Notify>>,
    /// Socket options to copy to the real connection.
    pub mirror: crate::options::SharedMirror,
}

fn table() -> &'static Mutex<HashMap<i32, Entry>> {
    static TABLE: OnceLock<Mutex<HashMap<i32, Entry>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Holds the table's lock across a `fork` (`crate::fork`).
pub(crate) fn hold_for_fork() -> std::sync::MutexGuard<'static, impl Sized> {
    table().lock().unwrap_or_else(|p| p.into_inner())
}

/// The table, if it can be had without blocking for long. A hook can run
/// in a signal handler that interrupted the lock's holder: it then goes
/// without the table rather than wait forever. (`fork` is handled by
/// `crate::fork`.)
fn lock() -> Option<std::sync::MutexGuard<'static, HashMap<i32, Entry>>> {
    for _ in 0..1000 {
        match table().try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
        }
    }
    None
}

pub(crate) fn insert(fd: i32, entry: Entry) {
    if let Some(mut table) = lock() {
        table.insert(fd, entry);
    }
}

/// The entry of descriptor `fd` if it still names the socket with
/// identity `id`; a stale entry is dropped.
pub(crate) fn get(fd: i32, id: impl FnOnce() -> Option<u64>) -> Option<Entry> {
    let entry = lock()?.get(&fd).cloned()?;
    if id() == Some(entry.id) {
        Some(entry)
    } else {
        remove(fd);
        None
    }
}

/// Forgets a closed descriptor, and stops a connect still under way on it.
pub(crate) fn remove(fd: i32) {
    let entry = lock().and_then(|mut t| t.remove(&fd));
    if let Some(cancel) = entry.and_then(|e| e.cancel) {
        cancel.notify_one();
    }
}

pub(crate) fn set_state(state: &Arc<Mutex<SessionState>>, s: SessionState) {
    *state.lock().unwrap_or_else(|p| p.into_inner()) = s;
}

pub(crate) fn state_of(entry: &Entry) -> SessionState {
    entry
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Marks the relay of a connection ended, keeping a connect failure that
/// `SO_ERROR` has yet to report.
pub(crate) fn mark_closed(state: &Arc<Mutex<SessionState>>) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if !matches!(
        *s,
        SessionState::ConnectFailed(_) | SessionState::ConnectFailedReported
    ) {
        *s = SessionState::Closed;
    }
}
