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

fn lock() -> std::sync::MutexGuard<'static, HashMap<i32, Entry>> {
    table().lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn insert(fd: i32, entry: Entry) {
    lock().insert(fd, entry);
}

pub(crate) fn get(fd: i32) -> Option<Entry> {
    lock().get(&fd).cloned()
}

/// Forgets a closed descriptor, and stops a connect still under way on it.
pub(crate) fn remove(fd: i32) {
    let entry = lock().remove(&fd);
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
