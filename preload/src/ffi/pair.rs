//! The loopback connection between the application's socket and the
//! daemon. The hook makes it itself, on a listening socket of its own
//! that lives for the length of the call: it connects the application's
//! socket to it and accepts the other end, which it hands to the daemon.
//! Only the accepted connection whose peer is the application's socket is
//! taken, so another local user who connects to that short-lived port gets
//! nothing: the pairing needs no shared listener and nothing to guess. The
//! socket is bound early (a process out of descriptors fails before its
//! connection starts) but listens only for the pairing itself, so that no
//! one can fill its queue while the real connection's handshake runs.

use super::*;

/// How long the loopback handshake may take (it is one round trip in the
/// kernel; the bound only matters on a machine out of memory).
const PAIR_DEADLINE_MS: c_int = 2000;

/// At most this many strangers are turned away before giving up, and the
/// listen backlog: another local user can delay a pairing by connecting to
/// its port, but must fill this many places to make it fail.
const STRANGERS: usize = 128;

/// Closes a descriptor this module made.
fn owned(fd: c_int) -> OwnedFd {
    // SAFETY: `fd` is a descriptor just made by this module and owned by
    // no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A socket bound to a loopback address of `family` (for an IPv6
/// application socket: `::1`, else v4-mapped `127.0.0.1` if the socket
/// accepts IPv4), not listening yet.
fn listener(family: c_int, v6only: bool) -> Result<(OwnedFd, SocketAddr), c_int> {
    // SAFETY: plain system call.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    let l = owned(fd);
    let mut candidates = vec![if family == AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    }];
    if family == AF_INET6 && !v6only {
        candidates.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    }
    let mut last = libc::EADDRNOTAVAIL;
    for a in candidates {
        let (st, n) = encode_addr(a, family);
        // SAFETY: `st` holds `n` bytes of address.
        if unsafe { libc::bind(fd, &st as *const sockaddr_storage as *const sockaddr, n) } == 0 {
            let at = local_addr(fd).ok_or(libc::EADDRNOTAVAIL)?;
            return Ok((l, at));
        }
        last = errno();
    }
    Err(last)
}

fn poll_one(fd: c_int, events: libc::c_short, ms: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 || errno() != libc::EINTR {
            return r == 1 && p.revents & events != 0;
        }
    }
}

/// A socket made for pairing one application socket.
pub(super) struct Pairing {
    listener: OwnedFd,
    at: SocketAddr,
    family: c_int,
}

/// Makes the socket for pairing the application's socket `app`
/// (a TCP socket of `family`). Made before anything else happens to the
/// connection, so that a process out of descriptors fails here, where the
/// connection can still go another way.
pub(super) fn pairing_for(app: c_int, family: c_int) -> Result<Pairing, c_int> {
    let v6only =
        family == AF_INET6 && sockopt_int(app, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1);
    let (listener, at) = listener(family, v6only)?;
    Ok(Pairing {
        listener,
        at,
        family,
    })
}

/// Connects the application's socket `app` (blocking or not) over loopback
/// to the pairing's listener and returns the other end, for the daemon.
pub(super) fn pair(app: c_int, pairing: Pairing) -> Result<OwnedFd, c_int> {
    let Pairing {
        listener: l,
        at,
        family,
    } = pairing;
    // SAFETY: plain system call.
    if unsafe { libc::listen(l.as_raw_fd(), STRANGERS as c_int) } != 0 {
        return Err(errno());
    }
    let (st, n) = encode_addr(at, family);
    // SAFETY: `st` holds `n` bytes of address.
    let r = unsafe { (real().connect)(app, &st as *const sockaddr_storage as *const sockaddr, n) };
    // Interrupted by a signal, the connect goes on in the kernel, as when
    // in progress: the listener's accept below waits for it.
    if r != 0 && !matches!(errno(), libc::EINPROGRESS | libc::EINTR) {
        return Err(errno());
    }
    let me = local_addr(app).map(canonical).ok_or(libc::EADDRNOTAVAIL)?;
    for _ in 0..STRANGERS {
        if !poll_one(l.as_raw_fd(), libc::POLLIN, PAIR_DEADLINE_MS) {
            return Err(libc::ETIMEDOUT);
        }
        // SAFETY: no address wanted.
        let c = unsafe {
            (real().accept4)(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 && errno() == libc::EINTR {
            continue;
        }
        if c < 0 {
            return Err(errno());
        }
        let end = owned(c);
        if peer_addr(c).map(canonical) == Some(me) {
            // A non-blocking application socket is established once its
            // peer has been accepted: the handshake is over.
            return Ok(end);
        }
        crate::log::log!(Warn, "a stranger connected to a pairing port; turned away");
    }
    Err(libc::ECONNABORTED)
}

/// Sets `TCP_NOTSENT_LOWAT` (0: the system default), through the real
/// call: the `setsockopt` hook is for the application's own options.
pub(super) fn set_notsent_lowat(fd: c_int, bytes: c_int) -> bool {
    apply_option(
        fd,
        &(
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            bytes.to_ne_bytes().to_vec(),
        ),
    );
    sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT) == Some(bytes)
}

/// How long an abortive close of a relayed socket waits for the daemon to
/// take what the socket has not sent: at most [`ABORT_SEND_LIMIT`], and
/// no longer once [`ABORT_SEND_STALL`] has passed without the daemon
/// taking any (it does not read while the peer does not).
const ABORT_SEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
const ABORT_SEND_STALL: std::time::Duration = std::time::Duration::from_millis(50);

/// Before an abortive close (`SO_LINGER` 0) of a relayed socket: lets the
/// daemon take the bytes the socket has not sent, which the reset would
/// discard. Over a kernel connection they would have left as written (the
/// peer's window permitting); here they may wait behind the connect's
/// filler or the daemon's next read. A socket already reset (its count of
/// unsent bytes stays) or closed is not waited for. Polled,
/// at most a few dozen times: only such a close with bytes left waits.
/// `held`: whether the socket's connect is still held (nothing of the
/// program's is queued behind its filler yet, which leaves only once the
/// connect is over), asked last, as the dearest.
pub(super) fn send_before_abortive_close(fd: c_int, held: impl FnOnce() -> bool) {
    if unsent_bytes(fd) == 0 || !closes_abortively(fd) || held() {
        return;
    }
    let start = std::time::Instant::now();
    let mut progress = (unsent_bytes(fd), start);
    let mut pause = std::time::Duration::from_millis(1);
    while may_still_send(fd) && start.elapsed() < ABORT_SEND_LIMIT {
        let unsent = unsent_bytes(fd);
        if unsent == 0 {
            return;
        }
        if unsent < progress.0 {
            progress = (unsent, std::time::Instant::now());
        } else if progress.1.elapsed() >= ABORT_SEND_STALL {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(10));
    }
}

/// Bytes written to a socket and not sent yet.
fn unsent_bytes(fd: c_int) -> c_int {
    let mut n: c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one int.
    if unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD, &mut n) } != 0 {
        return 0;
    }
    n
}

/// Bytes received on a socket and not read yet (`FIONREAD`), without
/// taking its pending error.
pub(super) fn unread_bytes(fd: c_int) -> c_int {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n
}

/// Zero bytes to fill a send queue with.
static FILLER: [u8; 64 * 1024] = [0; 64 * 1024];

/// Writes filler to the application's socket until some of it stays
/// unsent (its peer, not read yet, has closed its window); returns how
/// many bytes went in. A full send buffer alone is not enough: with a
/// small `SO_SNDBUF` the buffer drains as ACKs come, and the socket would
/// turn writable.
pub(super) fn fill_until_held(fd: c_int) -> Result<u64, c_int> {
    let mut total = 0u64;
    // Bounded: a loopback connection's queues hold a few MiB at most.
    for _ in 0..4096 {
        // SAFETY: FILLER is a live buffer of its length.
        let n = unsafe {
            libc::send(
                fd,
                FILLER.as_ptr() as *const c_void,
                FILLER.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            total += n as u64;
            continue;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN if unsent_bytes(fd) > 0 => return Ok(total),
            libc::EAGAIN => {
                poll_one(fd, libc::POLLOUT, 20);
            }
            e => return Err(e),
        }
    }
    Err(libc::ENOBUFS)
}

/// Closes a socket with a reset: its peer sees an error, never a clean end.
pub(super) fn reset(fd: OwnedFd) {
    // Now, even while another reference keeps the socket open (a hand-over
    // still queued for a daemon that does not answer): a connect to
    // AF_UNSPEC disconnects a TCP socket, with a reset when it was up.
    // SAFETY: `sockaddr` is plain data; all zeroes is AF_UNSPEC, and the
    // length given is its size.
    let unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor owned here, `unspec` a valid
    // address of the length given; the result is not needed.
    unsafe {
        (real().connect)(
            fd.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
    drop(fd);
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};

    use super::*;

    /// Another local user who finds a pairing port while a program's
    /// socket is being paired (here: connected before the program's own
    /// socket, the worst case) is turned away: the shim keeps the
    /// connection whose peer is the program's socket, and the stranger
    /// gets no byte of it.
    #[test]
    fn another_user_cannot_take_over_a_pairing() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test switches users: run it as root (CI does)"
        );
        let app = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let pairing = pairing_for(app.as_raw_fd(), AF_INET).unwrap();
        let port = pairing.at.port();
        // Listening already, as during `pair` (which listens again: the
        // same backlog).
        // SAFETY: plain system call on the pairing's own socket.
        assert_eq!(unsafe { libc::listen(pairing.listener.as_raw_fd(), 1) }, 0);
        // `nobody` connects, says so, and reports what it then receives.
        let stranger = format!(
            "import os,socket\nos.setgid(65534)\nos.setuid(65534)\ns=socket.create_connection(('127.0.0.1',{port}))\nprint('connected',flush=True)\ns.settimeout(10)\ntry:\n    d=s.recv(100)\n    print('received',len(d),flush=True)\nexcept Exception as e:\n    print('error',type(e).__name__,flush=True)"
        );
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", &stranger])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "connected");
        let end = pair(app.as_raw_fd(), pairing).expect("paired despite the stranger");
        // The pair carries the program's bytes, both ways.
        let mut end = std::net::TcpStream::from(end);
        let mut app = std::net::TcpStream::from(app);
        app.write_all(b"to the daemon").unwrap();
        let mut got = [0u8; 13];
        end.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to the daemon");
        end.write_all(b"back").unwrap();
        let mut back = [0u8; 4];
        app.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"back");
        // The stranger's connection ended without a byte.
        let said = lines.next().unwrap().unwrap();
        assert!(
            said == "received 0" || said == "error ConnectionResetError",
            "{said}"
        );
        child.wait().unwrap();
    }

    /// Until the pairing itself, its socket does not listen: another local
    /// user who finds its port (in /proc/net/tcp) while the real
    /// connection's handshake runs cannot connect to it, let alone fill
    /// its queue and hold the program's own connect to it.
    #[test]
    fn a_pairing_port_takes_no_connection_before_the_pairing() {
        let app = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let pairing = pairing_for(app.as_raw_fd(), AF_INET).unwrap();
        let stranger = std::net::TcpStream::connect(pairing.at);
        assert_eq!(
            stranger.map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        let end = pair(app.as_raw_fd(), pairing).expect("paired");
        let mut app = std::net::TcpStream::from(app);
        app.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        std::net::TcpStream::from(end).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }
}
