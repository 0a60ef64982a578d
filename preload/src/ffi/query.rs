//! What the application can ask about a relayed socket: its real
//! addresses, the session (the `tcpcrypt.h` options), a connect error.

use super::*;

/// Answers `getpeername`/`getsockname` for a relayed socket with the real
/// connection's address (`pick` chooses which); `None` for any other
/// socket. Only relayed sockets pay for the family lookup.
pub(super) unsafe fn relayed_name(
    fd: c_int,
    pick: fn(&Entry) -> SocketAddr,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Option<c_int> {
    if BYPASS.with(|b| b.get()) {
        return None;
    }
    let entry = lookup(fd)?;
    let family = tcp_family(fd)?;
    unsafe { write_addr(pick(&entry), family, addr, len) };
    Some(0)
}

/// Whether a relayed socket's real connection is not (or never was) up.
pub(super) fn not_connected(fd: c_int) -> bool {
    lookup(fd).is_some_and(|e| {
        matches!(
            registry::state_of(&e),
            SessionState::Connecting
                | SessionState::ConnectFailed(_)
                | SessionState::ConnectFailedReported
        )
    })
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
pub(super) fn option_value(fd: c_int, name: c_int) -> Result<Vec<u8>, c_int> {
    let entry = lookup(fd).ok_or(libc::EINVAL)?;
    let info = match registry::state_of(&entry) {
        SessionState::Encrypted(info) => info,
        SessionState::Negotiating | SessionState::Connecting => return Err(libc::ENOTCONN),
        _ => return Err(libc::EINVAL),
    };
    let int = |v: i32| v.to_ne_bytes().to_vec();
    Ok(match name {
        opt::SESSID => info.session_id.as_bytes().to_vec(),
        opt::NEGTEP => int(i32::from(info.tep_byte)),
        opt::ROLE => int(i32::from(info.role.as_u8())),
        opt::SELF_NAME => info.self_name(),
        opt::PEER_NAME => info.peer_name(),
        opt::TRANSCRIPT => info.transcript.clone(),
        opt::PEER_GOPT => int(i32::from(info.peer_global)),
        opt::CRYPT_CONF => int(i32::from(info.aead.id())),
        _ => return Err(libc::ENOPROTOOPT),
    })
}

/// Copies option `name` of `fd` into `out` (room for `room` bytes) and
/// returns its length, or -1 with errno set (EINVAL also when it does not
/// fit).
pub(super) unsafe fn copy_option(fd: c_int, name: c_int, out: *mut u8, room: usize) -> c_int {
    match catch_unwind(|| option_value(fd, name)) {
        Ok(Ok(v)) if !out.is_null() && room >= v.len() => {
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

/// The real errno of a failed non-blocking connect, once, as `SO_ERROR`
/// reports it (the kernel's own error, a reset from the relay, is cleared).
pub(super) fn take_connect_error(fd: c_int) -> Option<c_int> {
    let entry = lookup(fd)?;
    let SessionState::ConnectFailed(e) = registry::state_of(&entry) else {
        return None;
    };
    registry::set_state(&entry.state, SessionState::ConnectFailedReported);
    let mut kernel: c_int = 0;
    let mut l = size_of::<c_int>() as socklen_t;
    unsafe {
        (real().getsockopt)(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut kernel as *mut c_int as *mut c_void,
            &mut l,
        )
    };
    Some(e)
}
