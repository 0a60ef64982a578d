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
    /// The relay ended before the negotiation did.
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

/// The relayed sockets, by descriptor and by identity.
#[derive(Default)]
struct Table {
    /// Each descriptor known to name a relayed socket.
    by_fd: HashMap<i32, Entry>,
    /// The sockets whose relay runs, and how many of their descriptors
    /// `by_fd` holds: a descriptor the hooks have not seen (made by `dup`
    /// or `fcntl`) is found here by the socket's identity.
    live: HashMap<u64, (Entry, usize)>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(Table::default()))
}

/// Holds the table's lock across a `fork` (`crate::fork`).
pub(crate) fn hold_for_fork() -> std::sync::MutexGuard<'static, impl Sized> {
    table().lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a hook waits for the table. The holder may be a thread the
/// scheduler has set aside on a busy machine, which can take milliseconds.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(200);

/// The table, if it can be had without blocking for long. A hook can run
/// in a signal handler that interrupted the lock's holder: it then goes
/// without the table (after `LOCK_PATIENCE`) rather than wait forever.
/// (`fork` is handled by `crate::fork`.)
fn lock() -> Option<std::sync::MutexGuard<'static, Table>> {
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

impl Table {
    fn add_fd(&mut self, fd: i32, entry: Entry) {
        if let Some((_, fds)) = self.live.get_mut(&entry.id) {
            *fds += 1;
        }
        if let Some(old) = self.by_fd.insert(fd, entry) {
            self.drop_fd(&old);
        }
    }

    /// Accounts for a descriptor of `entry` gone; returns whether it was
    /// the last known one of a socket whose relay runs.
    fn drop_fd(&mut self, entry: &Entry) -> bool {
        match self.live.get_mut(&entry.id) {
            Some((_, fds)) => {
                *fds = fds.saturating_sub(1);
                *fds == 0
            }
            None => false,
        }
    }
}

/// Records a relayed socket, before its relay starts (so that the relay's
/// end, however soon, finds it).
pub(crate) fn insert(fd: i32, entry: Entry) {
    if let Some(mut table) = lock() {
        table.live.insert(entry.id, (entry.clone(), 0));
        table.add_fd(fd, entry);
    }
}

/// Forgets a socket whose relay never started.
pub(crate) fn discard(fd: i32) {
    if let Some(mut table) = lock() {
        if let Some(entry) = table.by_fd.remove(&fd) {
            table.live.remove(&entry.id);
        }
    }
}

/// The entry of descriptor `fd`: the one recorded for it if it still names
/// the socket with identity `id` (a stale one is dropped), or else that of
/// a relayed socket `fd` duplicates.
pub(crate) fn get(fd: i32, id: impl FnOnce() -> Option<u64>) -> Option<Entry> {
    let (known, any_live) = {
        let table = lock()?;
        (table.by_fd.get(&fd).cloned(), !table.live.is_empty())
    };
    if known.is_none() && !any_live {
        // Not relayed: the common case costs no system call.
        return None;
    }
    let id = id()?;
    if let Some(entry) = known {
        if entry.id == id {
            return Some(entry);
        }
        remove(fd);
    }
    let mut table = lock()?;
    let entry = table.live.get(&id)?.0.clone();
    table.add_fd(fd, entry.clone());
    Some(entry)
}

/// Forgets a closed descriptor. When it was the last one of its socket
/// the hooks know of and the socket's connect is still under way, returns
/// the socket's identity and the connect's cancel: the caller abandons the
/// connect unless another descriptor (a copy the hooks have not seen)
/// still names the socket.
pub(crate) fn remove(fd: i32) -> Option<(u64, Arc<tokio::sync::Notify>)> {
    let (entry, last) = {
        let mut table = lock()?;
        let entry = table.by_fd.remove(&fd)?;
        let last = table.drop_fd(&entry);
        (entry, last)
    };
    let connecting = matches!(state_of(&entry), SessionState::Connecting);
    let cancel = entry.cancel.filter(|_| last && connecting)?;
    Some((entry.id, cancel))
}

/// Forgets a descriptor whose connect the hooks give up on, and stops the
/// relay's part of it.
pub(crate) fn abandon(fd: i32) {
    let entry = lock().and_then(|mut table| {
        let entry = table.by_fd.remove(&fd)?;
        table.drop_fd(&entry);
        Some(entry)
    });
    if let Some(cancel) = entry.and_then(|e| e.cancel) {
        cancel.notify_one();
    }
}

/// Forgets the relays of the parent process, in a child after `fork`:
/// they are not the child's. Its inherited descriptors keep their entries.
pub(crate) fn forget_relays() {
    if let Some(mut table) = lock() {
        table.live.clear();
    }
}

/// Records that the relay of socket `id` has ended: its descriptors keep
/// their entries (and the session stays queryable) until they close.
pub(crate) fn relay_ended(id: u64, state: &Arc<Mutex<SessionState>>) {
    mark_closed(state);
    // The relay's thread runs no signal handler: it can wait for the lock.
    let mut table = table().lock().unwrap_or_else(|p| p.into_inner());
    table.live.remove(&id);
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

/// Marks the relay of a connection ended. The outcome of a negotiation
/// that finished stays (the session ID belongs to the socket, not to the
/// relay), and so does a connect failure `SO_ERROR` has yet to report.
fn mark_closed(state: &Arc<Mutex<SessionState>>) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(*s, SessionState::Connecting | SessionState::Negotiating) {
        *s = SessionState::Closed;
    }
}
