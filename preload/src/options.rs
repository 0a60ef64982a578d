//! Socket options that the application sets on its socket and that matter
//! on the real connection: keepalive and its timers, the user timeout, the
//! TOS or traffic class, the priority and the congestion control. The
//! application's socket only reaches the relay over loopback, so these are
//! copied to the real socket when it is made, and again whenever the
//! application changes one later (the `setsockopt` hook).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use libc::c_int;

/// The options copied, as (level, name).
pub(crate) const MIRRORED: [(c_int, c_int); 9] = [
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
];

/// One option's value, as the application passed it.
pub(crate) type Setting = (c_int, c_int, Vec<u8>);

/// The options of one relayed connection, and the real socket they go to
/// while the relay holds it.
#[derive(Default, Debug)]
pub(crate) struct Mirror {
    /// The relay's duplicate of the real socket: a descriptor of its own,
    /// so that a number reused elsewhere is never touched.
    real: Option<OwnedFd>,
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
        settings,
    }))
}

/// Records an option the application set, and applies it to the real
/// socket if there is one.
pub(crate) fn set(m: &SharedMirror, setting: Setting) {
    let mut m = lock(m);
    if let Some(fd) = &m.real {
        crate::ffi::apply_option(fd.as_fd(), &setting);
    }
    m.settings
        .retain(|(level, name, _)| (*level, *name) != (setting.0, setting.1));
    m.settings.push(setting);
}

/// The relay's real socket for this connection (a new one after a
/// fallback): every recorded option is applied to it.
pub(crate) fn attach(m: &SharedMirror, real: &impl AsFd) {
    let mut m = lock(m);
    for s in &m.settings {
        crate::ffi::apply_option(real.as_fd(), s);
    }
    m.real = real.as_fd().try_clone_to_owned().ok();
}

/// The relay is done with the real socket.
pub(crate) fn detach(m: &SharedMirror) {
    lock(m).real = None;
}
