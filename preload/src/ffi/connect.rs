//! `connect` on a socket the shim handles: the real connection first, on
//! a socket of the shim's own (its outcome is the application's, blocking
//! or not), then the hand-over to the daemon (`docs/SHIM.md`, "connect").

use super::*;
use crate::daemon::Link;
use crate::wire::{Handover, Pending, WireCarriage};

/// A connection the shim cannot carry: under the mandatory policy
/// `connect` fails with `EPERM`, as when a local firewall rule refuses it,
/// and nothing is sent; otherwise it goes ahead unencrypted (`None`).
pub(super) fn refuse_if_mandatory(why: &str) -> Option<c_int> {
    if !crate::env::settings().mandatory() {
        crate::log::log!(Debug, "connection left unencrypted: {why}");
        return None;
    }
    crate::log::log!(Warn, "connection refused (the policy is mandatory): {why}");
    set_errno(libc::EPERM);
    Some(-1)
}

/// How many descriptors a connect's hand-over takes beside the
/// application's socket and the pairing's listener: the real connection,
/// the link to the daemon and the pairing's accepted end (the daemon's
/// copy of the application's socket is made once the listener is closed).
/// Taken before anything is sent ([`reserve`]): `connect` itself needs no
/// descriptor, so a process short of them gets its connection as without
/// the shim (plain), never `EMFILE`.
const CONNECT_HANDOVER_FDS: usize = 3;

/// `connect` on a TCP socket the shim handles. `None`: not ours, call the
/// real `connect`.
pub(super) fn intercept_connect(fd: c_int, dest: SocketAddr) -> Option<c_int> {
    if let Some(entry) = registry::recorded(fd)
        && socket_id(fd) == Some(entry.id)
    {
        return Some(connect_again(fd, &entry));
    }
    let family = tcp_family(fd)?;
    let dest = canonical(dest);
    let settings = crate::env::settings();
    if settings.excluded(dest) || dest.ip().is_unspecified() || dest.port() == 0 {
        return None;
    }
    if peer_addr(fd).is_some() {
        return None; // connected already: the kernel answers EISCONN
    }
    // A socket the application bound itself keeps its own source address,
    // which the real socket cannot share.
    if local_addr(fd).is_some_and(|a| a.port() != 0) {
        return refuse_if_mandatory("the socket is bound to a port of its own");
    }
    // The daemon first (started if need be), and one that answers: without
    // one, nothing has been sent yet, and the connection can still go
    // plain (or be refused) cleanly. The link is made again after the real
    // handshake, which may take longer than the daemon waits for a request.
    if let Err(e) = crate::daemon::ready() {
        let refused = refuse_if_mandatory(&format!("no daemon: {e}"));
        // Left to the kernel: its queries (a loopback peer's) need not ask
        // the daemon.
        if let (None, Some(id)) = (refused, socket_id(fd)) {
            registry::mark_not_relayed(id);
        }
        return refused;
    }
    // TCP_FASTOPEN_CONNECT would defer the loopback handshake to the
    // application's first write, after the pairing: off on this socket
    // (the real connection is the shim's and has it off too).
    if sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT) == Some(1) {
        apply_option(
            fd,
            &(
                libc::IPPROTO_TCP,
                libc::TCP_FASTOPEN_CONNECT,
                0i32.to_ne_bytes().to_vec(),
            ),
        );
    }
    // Every descriptor the shim needs, before anything is sent: a
    // process short of descriptors (or memory) gets its connection as it
    // would without the shim, or under the mandatory policy not at all.
    let pairing = match pairing_for(fd, family) {
        Ok(p) => p,
        Err(e) => return refuse_if_mandatory(&format!("no loopback pairing: errno {e}")),
    };
    let mut spare = match reserve(CONNECT_HANDOVER_FDS) {
        Ok(r) => r,
        Err(e) => {
            return refuse_if_mandatory(&format!("no descriptors for the hand-over: errno {e}"));
        }
    };
    // For the real connection, and the link that asks the daemon for its
    // SYN's offer (the kernel carriage; closed before the next is taken).
    spare.free_one();
    spare.free_one();
    let options = changed_options(fd, family);
    let real = match start_real_connect(dest, &options) {
        Ok(t) => t,
        Err(e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
            return refuse_if_mandatory(&format!("no socket for the real connection: errno {e}"));
        }
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    };
    let started = std::time::Instant::now();
    let timeout = sockopt_timeval(fd, libc::SO_SNDTIMEO);
    let report = if is_nonblocking(fd) {
        libc::EINPROGRESS
    } else {
        // Not held across the wait, which may be long while other
        // threads need descriptors.
        spare.free_all();
        let waited = wait_writable(real.as_raw_fd(), timeout, timeout.is_some());
        match waited.and_then(|()| connect_outcome(&real)) {
            Ok(()) => 0,
            // Interrupted or timed out: as in the kernel, the connect goes
            // on and the application learns its outcome as a non-blocking
            // one.
            Err(e @ (libc::EINTR | libc::EINPROGRESS)) => e,
            Err(e) => {
                set_errno(e);
                return Some(-1);
            }
        }
    };
    // A connect to a listener of this very process is not held: the
    // negotiation needs the process to accept, which it may do only once
    // the connect is over (a blocking one, or a non-blocking one it waits
    // for in `poll`, as `create_connection` with a timeout does). Only
    // once the real handshake is done (over loopback, at once unless the
    // listener's queue is full): until then its outcome, an errno
    // included, is the daemon's to report, as for any held connect.
    let held = !(may_reach_own_listener(dest) && peer_addr(real.as_raw_fd()).is_some());
    spare.free_all();
    let id = match hand_over(fd, pairing, real, dest, options, held) {
        Ok(id) => id,
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    };
    if report != 0 {
        set_errno(report);
        return Some(-1);
    }
    if !held {
        return Some(0);
    }
    // A blocking connect returns once the connection can carry the
    // application's bytes: negotiated, or plain as the policy allows, or
    // failed with its errno.
    let left = timeout.map(|ms| {
        let spent = millis_since(started);
        ms.saturating_sub(spent).max(1)
    });
    Some(match wait_negotiated(fd, id, left) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    })
}

/// Whether a connection to `dest` may reach a listener this process still
/// holds: one on the same port, bound to `dest`'s address, or to a
/// wildcard one when `dest` is an address of this host.
fn may_reach_own_listener(dest: SocketAddr) -> bool {
    let mut local = None;
    registry::own_listeners_on(dest.port())
        .into_iter()
        .any(|(id, listener)| {
            let reaches = listener.ip() == dest.ip()
                || (listener.ip().is_unspecified()
                    && *local.get_or_insert_with(|| is_local_address(dest)));
            reaches && descriptors_of(id) > 0
        })
}

/// Whether `dest` is an address of this host (in the process's network
/// namespace): the kernel routes to it locally, from itself. (A bind
/// would not tell: `ip_nonlocal_bind` lets a socket bind to any address.)
fn is_local_address(dest: SocketAddr) -> bool {
    if dest.ip().is_loopback() {
        return true;
    }
    let family = if dest.is_ipv4() { AF_INET } else { AF_INET6 };
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        // Cannot tell: taken as remote, so that the connect is held, as
        // any other.
        return false;
    }
    // SAFETY: `fd` was just made and is owned by no one else.
    let probe = unsafe { OwnedFd::from_raw_fd(fd) };
    // A datagram socket's connect only looks the route up: nothing is
    // sent. Its scope id kept, for a link-local address.
    let (st, l) = encode_addr(dest, family);
    // SAFETY: `st` holds `l` bytes of address.
    let r = unsafe {
        (real().connect)(
            probe.as_raw_fd(),
            &st as *const sockaddr_storage as *const sockaddr,
            l,
        )
    };
    r == 0 && local_addr(probe.as_raw_fd()).is_some_and(|a| canonical(a).ip() == dest.ip())
}

/// Milliseconds since `t`, as `poll` takes them.
fn millis_since(t: std::time::Instant) -> c_int {
    t.elapsed().as_millis().min(c_int::MAX as u128) as c_int
}

/// How long a blocking connect waits for the daemon to settle a
/// connection without a timeout of its own: beyond the daemon's own limits
/// (the handshake's deadline), a daemon that took the connection and
/// stopped answering.
const SETTLE_LIMIT_MS: c_int = 180_000;

/// Waits in the calling thread for the daemon to settle the connection
/// `id` handed over from the blocking socket `fd`: `Ok` once it can carry
/// the application's bytes, or the errno of its failure; `EINPROGRESS` or
/// `EINTR` as [`wait_writable`] ends early (the connect then goes on as a
/// non-blocking one).
fn wait_negotiated(fd: c_int, id: u64, timeout_ms: Option<c_int>) -> Result<(), c_int> {
    let limit = timeout_ms.unwrap_or(SETTLE_LIMIT_MS);
    let started = std::time::Instant::now();
    loop {
        let spent = millis_since(started);
        if spent >= limit {
            if timeout_ms.is_some() {
                return Err(libc::EINPROGRESS);
            }
            crate::log::log!(Warn, "the daemon did not settle a connection: reset");
            let _ = crate::daemon::query(&Request::Abandon { id });
            return Err(libc::ETIMEDOUT);
        }
        match wait_writable(fd, Some(limit - spent), timeout_ms.is_some()) {
            Ok(()) => {}
            // The limit reached: the loop's head says what that means.
            Err(libc::EINPROGRESS) => continue,
            Err(e) => return Err(e),
        }
        // Another thread may have closed the number and reused it.
        if socket_id(fd) != Some(id) {
            return Err(libc::EBADF);
        }
        match settled_by_socket(fd) {
            Some(Outcome::Connected) => {
                registry::update(fd, |en| en.pending = false);
                return Ok(());
            }
            // Woken, but neither writable nor failed any more: wait again.
            Some(Outcome::Connecting) => continue,
            Some(Outcome::Failed(_)) | None => {
                let entry = registry::recorded(fd).unwrap_or_else(|| Entry::new(id, true));
                match pending_outcome(fd, &entry) {
                    Outcome::Connected => return Ok(()),
                    Outcome::Failed(e) => return Err(e),
                    // Failed, but the daemon cannot tell how: a reset.
                    Outcome::Connecting => return Err(libc::ECONNRESET),
                }
            }
        }
    }
}

/// Pairs the application's socket with the daemon and hands the real
/// connection over, its connect under way or done; returns the socket's
/// identity. `held`: the application's socket polls not writable until
/// the daemon has seen the connection through to the point where it can
/// carry the application's bytes (the TCP handshake, and the negotiation
/// unless the first bytes may go as 0-RTT data); otherwise (a blocking
/// connect, done) it is writable at once.
fn hand_over(
    fd: c_int,
    pairing: Pairing,
    real: std::net::TcpStream,
    dest: SocketAddr,
    settings: Vec<Setting>,
    held: bool,
) -> Result<u64, c_int> {
    // A daemon that let a question go unanswered meanwhile (the offer for
    // the SYN) would leave this one unanswered too: nothing of the
    // application's socket has been touched yet.
    if crate::daemon::is_unanswered() {
        return Err(libc::ECONNABORTED);
    }
    let local = local_addr(real.as_raw_fd()).ok_or(libc::EADDRNOTAVAIL)?;
    let id = socket_id(fd).ok_or(libc::EBADF)?;
    // Before the application's socket is touched: a daemon gone meanwhile
    // leaves it as it was.
    let link = Link::open().map_err(|_| libc::ECONNABORTED)?;
    let end = pair(fd, pairing)?;
    let mut app_copy = None;
    let mut pending = None;
    if held {
        let lowat = sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT).unwrap_or(0);
        if !set_notsent_lowat(fd, 1) {
            reset(end);
            return Err(libc::EIO);
        }
        let filler = match fill_until_held(fd) {
            Ok(n) => n,
            Err(e) => {
                set_notsent_lowat(fd, lowat);
                reset(end);
                return Err(e);
            }
        };
        // The daemon's own reference to the application's socket, for
        // putting the option back: the application may close its
        // descriptor and reuse the number meanwhile.
        // SAFETY: plain system call; the result is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            reset(end);
            return Err(errno());
        }
        // SAFETY: `dup` was just made and is owned by no one else.
        app_copy = Some(unsafe { OwnedFd::from_raw_fd(dup) });
        pending = Some(Pending { filler, lowat });
    }
    let req = Request::Connect(Handover {
        id,
        local,
        peer: dest,
        profile: crate::env::settings().wire(),
        pending,
        settings,
    });
    let mut fds = vec![end.as_raw_fd(), real.as_raw_fd()];
    fds.extend(app_copy.as_ref().map(|f| f.as_raw_fd()));
    // The shim's copies close after the daemon has its own.
    match link.ask(&req, &fds) {
        Ok(Reply::Ok) => {}
        other => {
            let why = match other {
                Ok(reply) => format!("{reply:?}"),
                Err(e) => e.to_string(),
            };
            crate::log::log!(Warn, "the daemon did not take a connection: {why}");
            // The application's socket sees a reset, never a clean end;
            // and so does the server, now, although a hand-over left in
            // the daemon's queue still holds the real socket.
            reset(end);
            reset(OwnedFd::from(real));
            return Err(libc::ECONNABORTED);
        }
    }
    crate::log::log!(Debug, "connection to {dest} handed to the daemon");
    registry::insert(
        fd,
        Entry {
            lowat: pending.map(|p| p.lowat),
            ..Entry::new(id, held)
        },
    );
    Ok(id)
}

/// `sendto`/`sendmsg` with `MSG_FASTOPEN` on a socket not yet connected:
/// the shim's own connect, after which the caller sends the data without
/// the flag. Blocking sockets carry it whole; a non-blocking one gets
/// `EINPROGRESS` with nothing sent, as from the kernel when it could not
/// put the data in the SYN. `None`: not ours.
pub(super) fn intercept_fastopen(fd: c_int, dest: SocketAddr) -> Option<c_int> {
    if tcp_family(fd).is_none() || peer_addr(fd).is_some() {
        return None;
    }
    // `None` from here too means not handled: under the mandatory policy
    // `intercept_connect` has refused already (`EPERM`) where it must.
    intercept_connect(fd, dest)
}

/// Starts the real connection to `dest` on a socket of the shim's own,
/// non-blocking: the socket with its handshake under way, or the errno the
/// kernel reported at once.
fn start_real_connect(
    dest: SocketAddr,
    settings: &[Setting],
) -> Result<std::net::TcpStream, c_int> {
    let family = if dest.is_ipv4() { AF_INET } else { AF_INET6 };
    // SAFETY: plain system call; the result is checked.
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
    offer_in_syn(&sock, dest)?;
    let (st, l) = encode_addr(dest, family);
    // SAFETY: `st` holds `l` bytes of address.
    let r = unsafe { (real().connect)(fd, &st as *const sockaddr_storage as *const sockaddr, l) };
    if r != 0 && errno() != libc::EINPROGRESS {
        return Err(errno());
    }
    Ok(sock)
}

/// The kernel carriage: the daemon writes the ENO option the SYN offers
/// into the real socket's record (`docs/SHIM.md`, "The kernel carriage").
/// Under `TCPCRYPT_CARRIAGE=kernel` a socket that cannot offer it is not
/// connected (`EPERM`, as the library's `Carriage::Kernel` refuses);
/// otherwise the in-band hello decides as before.
fn offer_in_syn(sock: &std::net::TcpStream, peer: SocketAddr) -> Result<(), c_int> {
    let settings = crate::env::settings();
    let profile = settings.wire();
    let strict = profile.carriage == WireCarriage::Kernel;
    let why = if !settings.kernel_carriage() {
        "the kernel carriage is not enabled (tcpcrypt kernel enable)".to_string()
    } else {
        let offer = Request::Offer { profile, peer };
        match Link::open().and_then(|l| l.ask(&offer, &[sock.as_raw_fd()])) {
            Ok(Reply::Ok) => return Ok(()),
            Ok(other) => format!("the daemon did not offer ENO in the SYN: {other:?}"),
            Err(e) => format!("no daemon: {e}"),
        }
    };
    if strict {
        crate::log::log!(Warn, "connection refused (TCPCRYPT_CARRIAGE=kernel): {why}");
        return Err(libc::EPERM);
    }
    crate::log::log!(Debug, "no ENO in the SYN: {why}");
    Ok(())
}

/// Waits in the calling thread, as a blocking `connect` does, for `fd` to
/// poll writable (or failed), at most `limit_ms` (`EINPROGRESS` then, as
/// from the kernel). `own_timeout`: the limit is the application socket's
/// `SO_SNDTIMEO`, not the shim's own. A signal ends the wait with `EINTR`
/// unless the kernel would have restarted the connect.
fn wait_writable(fd: c_int, limit_ms: Option<c_int>, own_timeout: bool) -> Result<(), c_int> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let started = std::time::Instant::now();
    loop {
        let left = match limit_ms {
            None => -1,
            Some(ms) => {
                let spent = millis_since(started);
                if spent >= ms {
                    return Err(libc::EINPROGRESS);
                }
                ms - spent
            }
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left) };
        match r {
            1 => return Ok(()),
            0 => return Err(libc::EINPROGRESS),
            _ if errno() == libc::EINTR => {
                // signal(7): connect is restarted after a handler with
                // SA_RESTART, unless the socket has a send timeout.
                if own_timeout || !handlers_restart() {
                    return Err(libc::EINTR);
                }
            }
            _ => return Err(errno()),
        }
    }
}

/// How the real connect of `sock`, which polled writable, went: `Ok`, or
/// its errno. Bytes waiting mean it connected, even if the server reset it
/// since (an HTTP server that answers 503 and aborts): the kernel told a
/// program that asked in time that its connect succeeded, and it then
/// reads the bytes, then the reset; `SO_ERROR` would take the reset
/// (reported once) and leave the bytes behind a clean end.
fn connect_outcome(sock: &std::net::TcpStream) -> Result<(), c_int> {
    if super::pair::unread_bytes(sock.as_raw_fd()) > 0 {
        return Ok(());
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
fn handlers_restart() -> bool {
    (1..=libc::SIGRTMAX()).all(|sig| {
        // SAFETY: plain data; all zeroes is a valid value.
        let mut old: libc::sigaction = unsafe { zeroed() };
        // SAFETY: reads the current action only.
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
fn connect_again(fd: c_int, entry: &Entry) -> c_int {
    let e = if entry.reported {
        // The kernel would try again; the socket is bound to loopback by
        // now (docs/SHIM.md).
        libc::ECONNABORTED
    } else if !entry.pending {
        libc::EISCONN
    } else if !is_nonblocking(fd) {
        // A blocking connect made again after it was interrupted waits
        // for the outcome, as the kernel's does.
        let timeout = sockopt_timeval(fd, libc::SO_SNDTIMEO);
        match wait_negotiated(fd, entry.id, timeout) {
            Ok(()) => return 0,
            Err(e) => e,
        }
    } else {
        match pending_outcome(fd, entry) {
            Outcome::Connecting => libc::EALREADY,
            Outcome::Failed(e) => e,
            Outcome::Connected => libc::EISCONN,
        }
    };
    set_errno(e);
    -1
}

/// What became of a connect of this process that the daemon settles.
pub(super) enum Outcome {
    Connecting,
    Failed(c_int),
    Connected,
}

/// Asks the daemon how the pending connect of `fd` went. A failure is
/// reported once: the kernel's own error on the application's socket (the
/// reset that woke it) is cleared with it, so that a later `SO_ERROR` is
/// 0, as after any reported failure.
pub(super) fn pending_outcome(fd: c_int, entry: &Entry) -> Outcome {
    // The daemon resets the socket before it records the errno: a socket
    // already woken by that reset waits (a few ms at most) for the record.
    let mut state = ConnState::Connecting;
    for _ in 0..200 {
        state = match crate::daemon::query(&Request::Query { id: entry.id }) {
            Ok(Reply::Known { state, .. }) => state,
            // No daemon knows it (the daemon died, which reset the socket).
            Ok(Reply::Unknown) => ConnState::Failed(libc::ECONNRESET),
            _ => return Outcome::Connecting,
        };
        if state != ConnState::Connecting || !has_error(fd) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    match state {
        ConnState::Connecting => Outcome::Connecting,
        ConnState::Failed(e) => {
            let _ = crate::daemon::query(&Request::TakeError { id: entry.id });
            let _ = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR);
            registry::update(fd, |en| en.reported = true);
            Outcome::Failed(e)
        }
        _ => {
            registry::update(fd, |en| en.pending = false);
            Outcome::Connected
        }
    }
}

/// How a pending connect of `fd` stands by the application's socket
/// alone, without asking the daemon: `Some(Connected)` once it turned
/// writable with no error (the daemon makes it writable only when the
/// real connection is up), `Some(Connecting)` while neither writable nor
/// failed, `None` when it has an error or a hang-up (a failure, whose
/// errno only the daemon knows, or a connection that ended since).
pub(super) fn settled_by_socket(fd: c_int) -> Option<Outcome> {
    let revents = poll_now(fd, libc::POLLOUT)?;
    if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        return None;
    }
    Some(if revents & libc::POLLOUT != 0 {
        Outcome::Connected
    } else {
        Outcome::Connecting
    })
}

/// Whether the kernel has an error or a hang-up pending on `fd`.
fn has_error(fd: c_int) -> bool {
    poll_now(fd, 0).is_some_and(|r| r & (libc::POLLERR | libc::POLLHUP) != 0)
}

/// The events of `fd` now (`events` and those always reported), without
/// waiting; `None` when `poll` fails.
fn poll_now(fd: c_int, events: libc::c_short) -> Option<libc::c_short> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd; no wait.
    let ready = unsafe { libc::poll(&mut p, 1, 0) };
    (ready >= 0).then_some(p.revents)
}

/// The application closed a socket whose connect is under way: unless
/// another descriptor of this process still names it (a copy the hooks
/// have not seen), or one of a descendant's (a child made by `fork`,
/// `vfork` or `posix_spawn`, which run no fork handlers, inherited it),
/// the daemon abandons the connect.
pub(super) fn abandon_if_last(id: u64) {
    if descriptors_of(id) == 0 && !held_by_descendants(id) {
        let _ = crate::daemon::query(&Request::Abandon { id });
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn only_an_address_of_this_host_is_local() {
        let local = |a: &str| is_local_address(a.parse().unwrap());
        assert!(local("127.0.0.1:80"));
        assert!(local("[::1]:80"));
        // TEST-NET-1 (RFC 5737): never an address of a host.
        assert!(!local("192.0.2.1:80"));
        // A link-local peer, its scope the loopback interface's.
        assert!(!local("[fe80::1%1]:80"));
    }

    /// A blocking connect is not held only when it may reach a listener
    /// this process still has: a wildcard listener does not make a
    /// connection to another host on its port one of them (a relay on
    /// `*:25` connecting to a remote mail server), nor does a closed one.
    #[test]
    fn a_connect_may_reach_only_a_listener_this_process_still_has() {
        let wildcard = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = wildcard.local_addr().unwrap().port();
        note_listening(wildcard.as_raw_fd());
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        let remote = SocketAddr::from(([192, 0, 2, 1], port));
        assert!(may_reach_own_listener(local));
        assert!(!may_reach_own_listener(remote));
        assert!(!may_reach_own_listener(SocketAddr::from((
            [127, 0, 0, 1],
            port ^ 1
        ))));
        drop(wildcard);
        assert!(!may_reach_own_listener(local), "closed since");
    }
}
