//! What the shim knows about the application's sockets it relays: the real
//! addresses (for `getpeername`/`getsockname`) and the session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tcpcrypt_tokio::SessionInfo;

/// The state of a relayed connection's negotiation.
#[derive(Debug, Clone)]
pub enum SessionState {
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

pub(crate) fn remove(fd: i32) {
    lock().remove(&fd);
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
