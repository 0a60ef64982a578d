//! Socket options that the application sets on its socket and that matter
//! on the real connection: keepalive and its timers, the user timeout, the
//! TOS or traffic class, the priority and the congestion control. The
//! application's socket only reaches the relay over loopback, so these are
//! copied to the real socket when it is made, and again whenever the
//! application changes one later (the `setsockopt` hook).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use libc::c_int;
use tokio::net::TcpStream;

/// The options copied, as (level, name), in the order they are applied:
/// the priority last, because setting the TOS resets it.
pub(crate) const MIRRORED: [(c_int, c_int); 9] = [
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
];

/// The most bytes of an option value kept: an `int`, or a congestion
/// control name (`TCP_CA_NAME_MAX`).
pub(crate) fn value_len(level: c_int, name: c_int) -> usize {
    if (level, name) == (libc::IPPROTO_TCP, libc::TCP_CONGESTION) {
        16
    } else {
        std::mem::size_of::<c_int>()
    }
}

/// One option's value, as the application passed it.
pub(crate) type Setting = (c_int, c_int, Vec<u8>);

/// The options of one relayed connection, and the real socket they go to
/// while the relay carries bytes on it.
#[derive(Default, Debug)]
pub(crate) struct Mirror {
    /// The real socket's descriptor, only while the relay holds it open.
    real: Option<RawFd>,
    /// The real socket's local address (it changes after a fallback).
    local: Option<SocketAddr>,
    settings: Vec<Setting>,
}

/// A mirror shared by the hooks and the relay.
pub(crate) type SharedMirror = Arc<Mutex<Mirror>>;

fn lock(m: &SharedMirror) -> std::sync::MutexGuard<'_, Mirror> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A mirror starting with `settings` (read from the application's socket
/// when it connects).
pub(crate) fn new(settings: Vec<Setting>) -> SharedMirror {
    Arc::new(Mutex::new(Mirror {
        real: None,
        local: None,
        settings,
    }))
}

/// Records an option the application set, and applies it to the real
/// socket if the relay holds one.
pub(crate) fn set(m: &SharedMirror, setting: Setting) {
    let mut m = lock(m);
    if let Some(fd) = m.real {
        // `real` is cleared, under this lock, before the relay closes the
        // socket: the number cannot name another one here.
        crate::ffi::apply_option(fd, &setting);
    }
    m.settings
        .retain(|(level, name, _)| (*level, *name) != (setting.0, setting.1));
    m.settings.push(setting);
}

/// The real connection's local address, once the relay carries bytes.
pub(crate) fn local(m: &SharedMirror) -> Option<SocketAddr> {
    lock(m).local
}

/// Applies every recorded option to the real socket the relay is about to
/// carry bytes on, and keeps it for later ones until the guard drops.
pub(crate) fn attach<'a>(m: &'a SharedMirror, real: &TcpStream) -> Attached<'a> {
    let mut guard = lock(m);
    let fd = real.as_raw_fd();
    for s in &guard.settings {
        crate::ffi::apply_option(fd, s);
    }
    guard.real = Some(fd);
    guard.local = real.local_addr().ok();
    Attached(m)
}

/// While alive, options the application sets reach the real socket.
pub(crate) struct Attached<'a>(&'a SharedMirror);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        lock(self.0).real = None;
    }
}
