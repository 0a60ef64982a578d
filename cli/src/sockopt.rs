//! The raw socket calls of the relays (the daemon, on descriptors it was
//! handed, and `tcpcrypt proxy`): applying an application's option to the
//! real socket, giving the application's socket its `TCP_NOTSENT_LOWAT`
//! back (neither has a safe wrapper that takes an arbitrary `(level, name,
//! value)`), counting the bytes a socket has queued, to read without
//! taking its pending error, or to send, reading its TCP state, and
//! telling whether a program still holds a local socket.

use std::net::{IpAddr, SocketAddr};
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
pub fn unsent_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one `c_int` through the pointer, which
    // points to `n`, alive for the call; a descriptor that is not a
    // socket is an error.
    let r = unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// `TCP_INFO` of a TCP socket; `None` for a descriptor that is not one.
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: `tcp_info` is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` has room for `len` bytes, which is all the kernel
    // writes; a descriptor that is not a TCP socket is an error.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info)
}

/// The TCP state of a socket (`include/net/tcp_states.h`).
pub fn tcp_state(fd: RawFd) -> Option<u8> {
    tcp_info(fd).map(|i| i.tcpi_state)
}

/// The state of a connected socket that neither end has ended its half of.
pub const ESTABLISHED: u8 = 1;

/// Whether a socket has ended its half (sent its FIN: FIN_WAIT1,
/// FIN_WAIT2, TIME_WAIT, LAST_ACK, CLOSING) or is closed.
pub fn has_sent_fin(fd: RawFd) -> bool {
    tcp_state(fd).is_none_or(|s| matches!(s, 4 | 5 | 6 | 7 | 9 | 11))
}

/// How many bytes the peer of a socket has acknowledged, in all.
pub fn bytes_acked(fd: RawFd) -> u64 {
    tcp_info(fd).map_or(0, |i| i.tcpi_bytes_acked)
}

/// What `TCP_INFO` says of a TCP socket: whether it may still send what
/// it holds (established, or closing with data still allowed out; not
/// reset nor closed), and its smoothed round-trip time.
pub fn sending_state(socket: &impl AsRawFd) -> (bool, std::time::Duration) {
    match tcp_info(socket.as_raw_fd()) {
        // ESTABLISHED, FIN_WAIT1, CLOSE_WAIT, LAST_ACK and CLOSING.
        Some(info) => (
            matches!(info.tcpi_state, 1 | 4 | 8 | 9 | 11),
            std::time::Duration::from_micros(info.tcpi_rtt.into()),
        ),
        None => (false, std::time::Duration::ZERO),
    }
}

/// Whether some process still holds the TCP socket bound to `local` and
/// connected to `remote`, the other end of a loopback connection whose
/// end `remote` to `local` is ours: the kernel's tables of this network
/// namespace (`/proc/net/tcp` and `tcp6`, read both, since the two ends of
/// a loopback connection may be of either family) list a socket no
/// descriptor refers to any more (closed, left to the kernel to finish)
/// with inode 0, and forget it once finished. Held:
///
/// * unless a read lists our own end too (a connection made in another
///   network namespace is in none of these tables);
/// * when its state is one a closed socket never has (`ESTABLISHED`,
///   `CLOSE_WAIT`): a connection not yet accepted from its listener's
///   queue has no descriptor either;
/// * whenever the tables cannot be read.
///
/// A read of a table that changes under it can skip a line: callers ask
/// twice before they act. Costs a read of both tables, as long as the
/// machine's count of sockets: a blocking call.
pub fn socket_held(local: SocketAddr, remote: SocketAddr) -> bool {
    let (local, remote) = (canonical(local), canonical(remote));
    let (mut theirs, mut ours, mut read) = (None, false, false);
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read = true;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() <= 9 {
                continue;
            }
            let (Some(l), Some(r)) = (proc_addr(f[1]), proc_addr(f[2])) else {
                continue;
            };
            if (l, r) == (local, remote) {
                let unclosed_state = matches!(f[3], "01" | "08");
                theirs = Some(f[9] != "0" || unclosed_state);
            } else if (l, r) == (remote, local) {
                ours = true;
            }
        }
    }
    !read || !ours || theirs.unwrap_or(false)
}

/// An address with an IPv4-mapped IPv6 address as the IPv4 one.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An address as `/proc/net/tcp` or `tcp6` writes it (the address's bytes
/// in 32-bit words, each printed as the machine reads it, then the port, in
/// hex), canonical.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        u32::from_str_radix(ip.get(8 * i..8 * i + 8)?, 16)
            .ok()
            .map(u32::to_ne_bytes)
    };
    let ip = match ip.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::from(octets)
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_socket_is_held_until_its_last_descriptor_is_closed() {
        for ip in ["127.0.0.1", "::1"] {
            let Ok(listener) = TcpListener::bind((ip, 0)) else {
                continue; // no IPv6 here
            };
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
            assert!(socket_held(local, remote), "{ip}: open");
            assert!(socket_held(remote, local), "{ip}: the other end, open");
            let copy = client.try_clone().unwrap();
            drop(client);
            assert!(socket_held(local, remote), "{ip}: a copy still holds it");
            drop(copy);
            assert!(
                !socket_held(local, remote),
                "{ip}: closed, left to the kernel"
            );
            assert_eq!(tcp_state(server.as_raw_fd()), Some(8), "CLOSE_WAIT");
            assert!(!has_sent_fin(server.as_raw_fd()));
            server.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(has_sent_fin(server.as_raw_fd()));
            // Neither end in this table (another network namespace's):
            // held, for all we know.
            let (a, b) = (
                SocketAddr::new(local.ip(), 1),
                SocketAddr::new(local.ip(), 2),
            );
            assert!(socket_held(a, b));
        }
    }

    #[test]
    fn the_two_ends_may_be_of_either_family() {
        // A dual-stack listener: its accepted socket is IPv6 (mapped), the
        // client's IPv4; each is in its own table.
        let Ok(listener) = TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert!(server.peer_addr().unwrap().is_ipv6(), "mapped");
        assert!(socket_held(local, remote));
        drop(client);
        assert!(!socket_held(local, remote), "closed, left to the kernel");
        drop(server);
    }

    #[test]
    fn a_connection_waiting_to_be_accepted_is_held() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Its other end has no descriptor yet (inode 0), and is not closed.
        assert!(socket_held(
            client.peer_addr().unwrap(),
            client.local_addr().unwrap()
        ));
        drop(listener);
    }
}
