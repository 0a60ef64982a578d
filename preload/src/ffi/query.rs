//! What the application can ask about a relayed socket: its real
//! addresses, the session (the `tcpcrypt.h` options), a connect error;
//! and the options it sets after connecting, which the daemon applies.

use super::*;

/// What the daemon knows of `fd`, if the daemon relays it. The answer is
/// cached once final. A socket this process has not recorded is asked
/// about only when it is a TCP socket connected to a loopback address (an
/// application socket the daemon relays always is): other sockets cost
/// one system call here, and none when this process has relayed nothing
/// and the socket is not on loopback.
pub(super) fn relayed(fd: c_int) -> Option<Known> {
    let recorded = registry::recorded(fd);
    let id = match &recorded {
        Some(e) => {
            let id = socket_id(fd)?;
            if id != e.id {
                // The number now names another socket.
                registry::remove(fd);
                return relayed_unrecorded(fd, id);
            }
            if let Some(k) = &e.known {
                return Some(k.clone());
            }
            id
        }
        None => {
            if !peer_addr(fd).is_some_and(is_loopback) || tcp_family(fd).is_none() {
                return None;
            }
            let id = socket_id(fd)?;
            return relayed_unrecorded(fd, id);
        }
    };
    let k = ask(id).ok().flatten()?;
    if k.is_final() {
        registry::update(fd, |e| e.known = Some(k.clone()));
    } else if k.has_final_names() {
        registry::update(fd, |e| e.names = Some(k.clone()));
    }
    Some(k)
}

/// [`relayed`] for the socket's addresses only. They are final once the
/// real connection is up, so the daemon is asked for them once: an HTTP
/// client asks for both right after connecting, while its request, sooner
/// written, could still go as 0-RTT data with the hello.
pub(super) fn relayed_names(fd: c_int) -> Option<Known> {
    if let Some(e) = registry::recorded(fd)
        && let Some(k) = e.known.or(e.names)
        && socket_id(fd) == Some(e.id)
    {
        return Some(k);
    }
    relayed(fd)
}

/// A connected loopback socket this process has no record of: a copy, an
/// inherited descriptor, or not relayed at all (remembered).
fn relayed_unrecorded(fd: c_int, id: u64) -> Option<Known> {
    if registry::is_not_relayed(id) {
        return None;
    }
    match ask(id) {
        Ok(Some(k)) => {
            let mut entry = Entry::new(id, false);
            entry.known = k.is_final().then(|| k.clone());
            registry::insert(fd, entry);
            Some(k)
        }
        Ok(None) => {
            registry::mark_not_relayed(id);
            None
        }
        // No answer (the daemon is stopped): taken for not relayed this
        // time, asked again next time.
        Err(_) => None,
    }
}

/// What the daemon knows of socket `id`: `Ok(None)` when it relays no
/// such socket.
fn ask(id: u64) -> std::io::Result<Option<Known>> {
    match crate::daemon::query(&Request::Query { id })? {
        Reply::Known { local, peer, state } => Ok(Some(Known { local, peer, state })),
        _ => Ok(None),
    }
}

/// The real errno of a failed non-blocking connect, once, as `SO_ERROR`
/// reports it; `None` to let the kernel answer (0 once connected, and
/// after the failure was reported).
pub(super) fn connect_error(fd: c_int) -> Option<c_int> {
    let entry = registry::recorded(fd)?;
    if !entry.pending || entry.reported || socket_id(fd) != Some(entry.id) {
        return None;
    }
    // Success needs no question to the daemon: an HTTP client asks right
    // after its socket turns writable, and its request, sooner written,
    // can go as 0-RTT data with the hello.
    let outcome = match settled_by_socket(fd) {
        Some(Outcome::Connected) => {
            registry::update(fd, |en| en.pending = false);
            Outcome::Connected
        }
        Some(Outcome::Connecting) => Outcome::Connecting,
        _ => pending_outcome(fd, &entry),
    };
    match outcome {
        Outcome::Failed(e) => Some(e),
        // Still under way: 0, as the kernel says of a socket connecting.
        Outcome::Connecting => Some(0),
        Outcome::Connected => None,
    }
}

/// The entry of `fd` while its connect holds it (`TCP_NOTSENT_LOWAT` at 1,
/// neither writable nor failed).
fn held(fd: c_int) -> Option<Entry> {
    let entry = registry::recorded(fd)?;
    (entry.lowat.is_some()
        && entry.pending
        && !entry.reported
        && socket_id(fd) == Some(entry.id)
        && matches!(settled_by_socket(fd), Some(Outcome::Connecting)))
    .then_some(entry)
}

/// The application sets `TCP_NOTSENT_LOWAT` on a socket its connect still
/// holds: the daemon keeps the value for the release (`true`), as setting
/// it now would make the socket writable before the connection can carry
/// a byte. `false`: not held (any more); the kernel takes it.
pub(super) fn set_held_lowat(fd: c_int, lowat: i32) -> bool {
    let Some(entry) = held(fd) else {
        // The kernel's value from now on, not one kept for a release.
        registry::update(fd, |en| en.lowat = None);
        return false;
    };
    let setting = (
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        lowat.to_ne_bytes().to_vec(),
    );
    let kept = matches!(
        crate::daemon::query(&Request::SetOption {
            id: entry.id,
            setting
        }),
        Ok(Reply::Ok)
    );
    registry::update(fd, |en| en.lowat = kept.then_some(lowat));
    kept
}

/// The application's own `TCP_NOTSENT_LOWAT` of a socket its connect
/// still holds (the socket's is 1 until the release), or has just ended:
/// a failed connect's socket is reset before the daemon puts the value
/// back (so that it never polls writable in between), and until then
/// still has the connect's 1.
pub(super) fn held_lowat(fd: c_int) -> Option<i32> {
    if let Some(entry) = held(fd) {
        return entry.lowat;
    }
    let entry = registry::recorded(fd)?;
    let kept = entry.lowat?;
    (entry.pending
        && socket_id(fd) == Some(entry.id)
        && sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT) == Some(1))
    .then_some(kept)
}

/// Sends an option the application set on a relayed socket to the daemon,
/// for the real connection.
pub(super) fn mirror_option(fd: c_int, setting: Setting) {
    if registry::is_empty() && !peer_addr(fd).is_some_and(is_loopback) {
        return;
    }
    if relayed(fd).is_some()
        && let Some(id) = socket_id(fd)
    {
        let _ = crate::daemon::query(&Request::SetOption { id, setting });
    }
}

/// The read-only options of `tcpcrypt.h` (values of this library's own).
pub(super) mod opt {
    pub(crate) const SESSID: i32 = 0x5443_0001;
    pub(crate) const NEGTEP: i32 = 0x5443_0002;
    pub(crate) const ROLE: i32 = 0x5443_0003;
    pub(crate) const SELF_NAME: i32 = 0x5443_0004;
    pub(crate) const PEER_NAME: i32 = 0x5443_0005;
    pub(crate) const TRANSCRIPT: i32 = 0x5443_0006;
    pub(crate) const PEER_GOPT: i32 = 0x5443_0007;
    pub(crate) const CRYPT_CONF: i32 = 0x5443_0008;
    pub(crate) const ALL: [i32; 8] = [
        SESSID, NEGTEP, ROLE, SELF_NAME, PEER_NAME, TRANSCRIPT, PEER_GOPT, CRYPT_CONF,
    ];
}

/// The value of a `tcpcrypt.h` option for `fd`, or the errno to report.
fn option_value(fd: c_int, name: c_int) -> Result<Vec<u8>, c_int> {
    let known = relayed(fd).ok_or(libc::EINVAL)?;
    let facts = match known.state {
        ConnState::Encrypted(f) => f,
        ConnState::Negotiating | ConnState::Connecting => return Err(libc::ENOTCONN),
        _ => return Err(libc::EINVAL),
    };
    let int = |v: i32| v.to_ne_bytes().to_vec();
    Ok(match name {
        opt::SESSID => facts.session_id,
        opt::NEGTEP => int(i32::from(facts.tep)),
        opt::ROLE => int(i32::from(facts.role)),
        opt::SELF_NAME => facts.self_name,
        opt::PEER_NAME => facts.peer_name,
        opt::TRANSCRIPT => facts.transcript,
        opt::PEER_GOPT => int(i32::from(facts.peer_global)),
        opt::CRYPT_CONF => int(i32::from(facts.aead)),
        _ => return Err(libc::ENOPROTOOPT),
    })
}

/// Copies option `name` of `fd` into `out` (room for `room` bytes) and
/// returns its length, or -1 with errno set (EINVAL also when it does not
/// fit).
///
/// # Safety
/// `out` must have room for `room` bytes.
pub(super) unsafe fn copy_option(fd: c_int, name: c_int, out: *mut u8, room: usize) -> c_int {
    match catch_unwind(|| option_value(fd, name)) {
        Ok(Ok(v)) if !out.is_null() && room >= v.len() => {
            // SAFETY: `room` bytes at `out`, checked above.
            unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len()) };
            v.len() as c_int
        }
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
        _ => {
            set_errno(libc::EINVAL);
            -1
        }
    }
}
