//! The raw socket calls the daemon makes on descriptors it was handed:
//! applying an application's option to the real socket, giving the
//! application's socket its `TCP_NOTSENT_LOWAT` back (neither has a safe
//! wrapper that takes an arbitrary `(level, name, value)`), and counting
//! the bytes a socket has queued, to read without taking its pending
//! error, or to send, and telling whether it may still send them.

use std::os::fd::{AsRawFd, RawFd};

use crate::wire::Setting;

/// Applies an application's socket option to a real socket. An option the
/// real socket refuses (an IPv6 option on an IPv4 socket) is left alone:
/// the application's own call succeeded, on its socket.
pub fn apply(fd: RawFd, (level, name, value): &Setting) {
    // SAFETY: `value` is a live buffer of `value.len()` bytes; the kernel
    // only reads it, and a descriptor that is not a socket is an error.
    unsafe {
        libc::setsockopt(
            fd,
            *level,
            *name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        );
    }
}

/// Sets `TCP_NOTSENT_LOWAT` on the application's socket (0: the default).
pub fn set_notsent_lowat(socket: &impl AsRawFd, bytes: i32) {
    apply(
        socket.as_raw_fd(),
        &(
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            bytes.to_ne_bytes().to_vec(),
        ),
    );
}

/// How many bytes wait to be read on a socket (`FIONREAD`), without
/// reading them or taking the socket's pending error (as `SO_ERROR` or a
/// peek that finds nothing would).
pub fn queued_bytes(socket: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one `c_int` through the pointer, which
    // points to `n`, alive for the call; a descriptor that is not a
    // socket is an error.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// How many bytes a socket holds that it has not sent yet
/// (`SIOCOUTQNSD`): neither in flight nor acknowledged.
pub fn unsent_bytes(socket: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one `c_int` through the pointer, which
    // points to `n`, alive for the call; a descriptor that is not a
    // socket is an error.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCOUTQNSD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// What `TCP_INFO` says of a TCP socket: whether it may still send what
/// it holds (established, or closing with data still allowed out; not
/// reset nor closed), and its smoothed round-trip time.
pub fn sending_state(socket: &impl AsRawFd) -> (bool, std::time::Duration) {
    // SAFETY: `tcp_info` is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` has room for `len` bytes, which is all the kernel
    // writes; a descriptor that is not a TCP socket is an error.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // ESTABLISHED, FIN_WAIT1, CLOSE_WAIT, LAST_ACK and CLOSING
    // (`include/net/tcp_states.h`).
    let sending = r == 0 && matches!(info.tcpi_state, 1 | 4 | 8 | 9 | 11);
    (
        sending,
        std::time::Duration::from_micros(info.tcpi_rtt.into()),
    )
}
