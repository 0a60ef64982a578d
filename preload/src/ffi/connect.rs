//! `connect` on a socket the shim handles: the real connection first, its
//! outcome reported as the kernel would, blocking or not
//! (`docs/SHIM.md`, "connect").

use super::*;

/// Binds `fd` to an ephemeral loopback port and connects it to the relay,
/// waiting (at most 5 s) if the socket is non-blocking. Returns the
/// loopback address the relay will see.
pub(super) fn attach_to_relay(
    fd: c_int,
    family: c_int,
    relay: &relay::Relay,
    job: Job,
    shared: Shared,
) -> Result<(), c_int> {
    let bind_to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let (st, l) = encode_addr(bind_to, family);
    if unsafe { libc::bind(fd, &st as *const sockaddr_storage as *const sockaddr, l) } != 0 {
        return Err(errno());
    }
    let app_end = canonical(local_addr(fd).ok_or(libc::EADDRNOTAVAIL)?);
    relay.expect(app_end, job, shared);
    let (st, l) = encode_addr(relay.listen_addr(), family);
    let r = unsafe { (real().connect)(fd, &st as *const sockaddr_storage as *const sockaddr, l) };
    if r != 0 {
        let e = errno();
        if e != libc::EINPROGRESS {
            relay.cancel(app_end);
            return Err(e);
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ready = loop {
            let r = unsafe { libc::poll(&mut p, 1, 5000) };
            if r >= 0 || errno() != libc::EINTR {
                break r;
            }
        };
        let so_error = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(libc::EIO);
        if ready != 1 || so_error != 0 {
            relay.cancel(app_end);
            return Err(if so_error != 0 {
                so_error
            } else {
                libc::ETIMEDOUT
            });
        }
    }
    Ok(())
}

/// `connect` on a TCP socket the shim handles: the real connection first
/// (its error is the application's), then the application's socket joins
/// the relay. `None`: not ours, call the real `connect`.
/// Connects the application's socket `fd` to the relay, which will carry
/// `job`, and records it for the other hooks.
pub(super) fn join_relay(
    fd: c_int,
    family: c_int,
    relay: &relay::Relay,
    job: Job,
    entry: Entry,
) -> Result<(), c_int> {
    let shared = Shared {
        id: entry.id,
        state: entry.state.clone(),
        mirror: entry.mirror.clone(),
    };
    registry::insert(fd, entry);
    attach_to_relay(fd, family, relay, job, shared).inspect_err(|_| registry::discard(fd))
}

pub(super) fn intercept_connect(fd: c_int, dest: SocketAddr) -> Option<c_int> {
    if let Some(entry) = lookup(fd) {
        return Some(connect_again(&entry));
    }
    let family = tcp_family(fd)?;
    let dest = canonical(dest);
    if crate::env::settings().excluded(dest) || dest.ip().is_unspecified() || dest.port() == 0 {
        return None;
    }
    // A socket the application bound itself keeps its own source address,
    // which the relay's real socket cannot share.
    if local_addr(fd).is_some_and(|a| a.port() != 0) {
        return refuse_if_mandatory("the socket is bound to a port of its own");
    }
    let relay = match relay::get() {
        Ok(relay) => relay,
        Err(e) => return refuse_if_mandatory(&format!("the relay cannot start: {e}")),
    };
    if dest == relay.listen_addr() {
        return None;
    }
    let settings = changed_options(fd, family);
    let tcp = match start_real_connect(dest, &settings) {
        Ok(t) => t,
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    };
    let mirror = options::new(settings);
    if is_nonblocking(fd) {
        return Some(connect_in_background(
            fd,
            family,
            tcp,
            dest,
            relay,
            mirror,
            libc::EINPROGRESS,
        ));
    }
    match wait_connected(&tcp, sockopt_timeval(fd, libc::SO_SNDTIMEO)) {
        Ok(()) => {}
        // Interrupted or timed out: as in the kernel, the connect goes on
        // and the application learns its outcome as a non-blocking one.
        Err(e @ (libc::EINTR | libc::EINPROGRESS)) => {
            return Some(connect_in_background(
                fd, family, tcp, dest, relay, mirror, e,
            ));
        }
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    }
    let local = tcp.local_addr().ok()?;
    let entry = Entry {
        id: socket_id(fd).unwrap_or(0),
        local,
        peer: dest,
        state: Arc::new(Mutex::new(SessionState::Negotiating)),
        cancel: None,
        mirror,
    };
    match join_relay(fd, family, relay, Job::Outbound { tcp, dest }, entry) {
        Ok(()) => Some(0),
        Err(e) => {
            set_errno(e);
            Some(-1)
        }
    }
}

/// A connection the shim cannot carry: under the mandatory policy `connect`
/// fails with `EPERM`, as when a local firewall rule refuses it, and
/// nothing is sent; otherwise it goes ahead unencrypted (`None`).
pub(super) fn refuse_if_mandatory(why: &str) -> Option<c_int> {
    if !crate::env::settings().mandatory() {
        tracing::debug!(why, "connection left unencrypted");
        return None;
    }
    tracing::warn!(why, "connection refused: the policy is mandatory");
    set_errno(libc::EPERM);
    Some(-1)
}

/// Starts the real connection to `dest` on a socket of the shim's own,
/// non-blocking: the socket with its handshake under way, or the errno the
/// kernel reported at once.
pub(super) fn start_real_connect(
    dest: SocketAddr,
    settings: &[Setting],
) -> Result<std::net::TcpStream, c_int> {
    let family = if dest.is_ipv4() { AF_INET } else { AF_INET6 };
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` is a socket this function just made and owns.
    let sock = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    // Before the SYN: its TOS, keepalive from the start.
    for s in settings {
        apply_option(sock.as_raw_fd(), s);
    }
    let (st, l) = encode_addr(dest, family);
    let r = unsafe { (real().connect)(fd, &st as *const sockaddr_storage as *const sockaddr, l) };
    if r != 0 && errno() != libc::EINPROGRESS {
        return Err(errno());
    }
    Ok(sock)
}

/// Waits in the calling thread, as a blocking `connect` does, for the
/// real handshake: `Ok` once connected, or its errno. `timeout_ms` is the
/// application socket's `SO_SNDTIMEO`, which bounds a blocking connect
/// (`EINPROGRESS` then, as from the kernel). A signal ends the wait with
/// `EINTR` unless the kernel would have restarted the connect.
pub(super) fn wait_connected(
    sock: &std::net::TcpStream,
    timeout_ms: Option<c_int>,
) -> Result<(), c_int> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms.unwrap_or(-1)) };
        match r {
            1 => break,
            0 => return Err(libc::EINPROGRESS),
            _ if errno() == libc::EINTR => {
                // signal(7): connect is restarted after a handler with
                // SA_RESTART, unless the socket has a send timeout.
                if timeout_ms.is_some() || !handlers_restart() {
                    return Err(libc::EINTR);
                }
            }
            _ => return Err(errno()),
        }
    }
    match sockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR) {
        Some(0) => Ok(()),
        Some(e) => Err(e),
        None => Err(errno()),
    }
}

/// Whether every signal handler the process installed has `SA_RESTART`:
/// which signal interrupted the wait is unknown, so any handler without it
/// could have been the one.
pub(super) fn handlers_restart() -> bool {
    (1..=libc::SIGRTMAX()).all(|sig| {
        let mut old: libc::sigaction = unsafe { zeroed() };
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return true;
        }
        old.sa_sigaction == libc::SIG_DFL
            || old.sa_sigaction == libc::SIG_IGN
            || old.sa_flags & libc::SA_RESTART != 0
    })
}

/// `connect` again on a socket the shim already connected (or is
/// connecting): what the kernel would answer.
pub(super) fn connect_again(entry: &Entry) -> c_int {
    let e = match registry::state_of(entry) {
        SessionState::Connecting => libc::EALREADY,
        SessionState::ConnectFailed(e) => {
            registry::set_state(&entry.state, SessionState::ConnectFailedReported);
            e
        }
        SessionState::ConnectFailedReported => libc::ECONNABORTED,
        _ => libc::EISCONN,
    };
    set_errno(e);
    -1
}

/// Zero bytes to fill a send queue with.
pub(super) static FILLER: [u8; 64 * 1024] = [0; 64 * 1024];

/// Sets `TCP_NOTSENT_LOWAT` (0: the system default). Through the real
/// call: the `setsockopt` hook is for the application's own options.
pub(super) fn set_notsent_lowat(fd: c_int, bytes: c_int) -> bool {
    let r = unsafe {
        (real().setsockopt)(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &bytes as *const c_int as *const c_void,
            size_of::<c_int>() as socklen_t,
        )
    };
    r == 0
}

/// Makes the application's socket writable again once the relay has
/// discarded the filler (see `connect_in_background`): the application's
/// own value comes back.
pub(crate) fn restore_notsent_lowat(socket: &OwnedFd, value: c_int) {
    set_notsent_lowat(socket.as_raw_fd(), value);
}

/// Bytes written to a socket and not sent yet.
pub(super) fn unsent_bytes(fd: c_int) -> c_int {
    let mut n: c_int = 0;
    if unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD, &mut n) } != 0 {
        return 0;
    }
    n
}

/// Writes filler to the application's socket until some of it stays
/// unsent (the relay's window is closed); returns how many bytes went in.
/// A full send buffer alone is not enough: with a small `SO_SNDBUF` the
/// buffer drains as ACKs come, and the socket would turn writable.
pub(super) fn fill_until_held(fd: c_int) -> Result<usize, c_int> {
    let mut total = 0;
    // Bounded: a loopback connection's queues hold a few MiB at most.
    for _ in 0..4096 {
        let n = unsafe {
            libc::send(
                fd,
                FILLER.as_ptr() as *const c_void,
                FILLER.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            total += n as usize;
            continue;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN if unsent_bytes(fd) > 0 => return Ok(total),
            libc::EAGAIN => {
                // Wait for ACKs to make room, then write more.
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                unsafe { libc::poll(&mut p, 1, 20) };
            }
            e => return Err(e),
        }
    }
    Err(libc::ENOBUFS)
}

/// A non-blocking `connect`: answers `EINPROGRESS` at once, as the kernel
/// does, while the real TCP handshake goes on in the relay.
///
/// Until the real connection is up, the application's socket must poll
/// neither writable nor failed. So it is connected to the relay, which does
/// not read it yet, and filled with filler bytes until its send queue
/// blocks, with `TCP_NOTSENT_LOWAT` at one byte: a socket with unsent bytes
/// then polls not writable. When the real handshake succeeds, the relay
/// discards exactly the filler and restores the option; the socket turns
/// writable at that moment and `SO_ERROR` is 0. When it fails, the relay
/// resets the loopback connection and `SO_ERROR` (answered here) is the
/// real errno.
pub(super) fn connect_in_background(
    fd: c_int,
    family: c_int,
    sock: std::net::TcpStream,
    dest: SocketAddr,
    relay: &relay::Relay,
    mirror: options::SharedMirror,
    report: c_int,
) -> c_int {
    let fail = |e: c_int| {
        set_errno(e);
        -1
    };
    let Some(local) = local_addr(sock.as_raw_fd()) else {
        return fail(libc::EADDRNOTAVAIL);
    };
    // The relay's own reference to the application's socket, for
    // restoring the option: the application may close its descriptor and
    // reuse the number meanwhile.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return -1;
    }
    // SAFETY: `dup` is a descriptor this function just made and owns.
    let app_socket = unsafe { OwnedFd::from_raw_fd(dup) };
    let (filled, filler) = tokio::sync::oneshot::channel();
    let cancel = Arc::new(tokio::sync::Notify::new());
    let state = Arc::new(Mutex::new(SessionState::Connecting));
    let lowat = sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT).unwrap_or(0);
    let job = Job::Connecting(PendingConnect {
        real: sock,
        dest,
        filler,
        app_socket,
        app_lowat: lowat,
        cancel: cancel.clone(),
    });
    let entry = Entry {
        id: socket_id(fd).unwrap_or(0),
        local,
        peer: dest,
        state,
        cancel: Some(cancel),
        mirror,
    };
    if let Err(e) = join_relay(fd, family, relay, job, entry) {
        return fail(e);
    }
    if !set_notsent_lowat(fd, 1) {
        registry::abandon(fd);
        return fail(errno());
    }
    match fill_until_held(fd) {
        Ok(n) => {
            let _ = filled.send(n);
            fail(report)
        }
        Err(e) => {
            registry::abandon(fd);
            fail(e)
        }
    }
}
