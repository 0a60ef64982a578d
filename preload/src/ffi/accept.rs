//! `accept` on a listening socket the shim handles: the real connection
//! goes to the daemon, and the application gets instead its own end of a
//! fresh loopback connection to the daemon.

use super::*;
use crate::daemon::Link;
use crate::wire::Handover;

/// An accepted connection the shim cannot carry: under the mandatory
/// policy it is reset and the caller gets -1 (`accept4` then fails with
/// `ECONNABORTED`, as for a client that reset it); otherwise the
/// application gets it unencrypted.
pub(super) fn refuse_accepted_if_mandatory(c: OwnedFd, why: &str) -> c_int {
    if !crate::env::settings().mandatory() {
        crate::log::log!(Debug, "accepted connection left unencrypted: {why}");
        // Its queries (a loopback peer's) need not ask the daemon.
        if let Some(id) = socket_id(c.as_raw_fd()) {
            registry::mark_not_relayed(id);
        }
        return std::os::fd::IntoRawFd::into_raw_fd(c);
    }
    crate::log::log!(
        Warn,
        "accepted connection reset (the policy is mandatory): {why}"
    );
    reset(c);
    -1
}

/// How many descriptors an accepted connection takes with its hand-over:
/// its own, the link to the daemon, the application's socket, and the
/// pairing's listener and accepted end. Taken before the real `accept`
/// ([`reserve`]): a process short of descriptors gets `EMFILE` (or
/// `ENFILE`) with the connection still queued, as the kernel leaves it
/// when no descriptor is free, never a connection accepted and then lost
/// for want of one.
pub(super) const ACCEPT_HANDOVER_FDS: usize = 5;

/// The listening socket's buffer sizes (`SO_RCVBUF`, `SO_SNDBUF`) that
/// the application set, as settings for `fresh`, a new socket: an accepted
/// socket inherits them. A size the listener holds that differs from the
/// new socket's default was set; `setsockopt` doubles what it is given, so
/// the setting is half the size read back. (A size set to the default
/// itself is not told apart: the socket then keeps tuning its own, where
/// the kernel's would have kept the listener's fixed.)
fn set_buffer_sizes(listener: c_int, fresh: c_int) -> Vec<Setting> {
    [libc::SO_RCVBUF, libc::SO_SNDBUF]
        .into_iter()
        .filter_map(|name| {
            let set = sockopt_int(listener, libc::SOL_SOCKET, name)?;
            (sockopt_int(fresh, libc::SOL_SOCKET, name)? != set)
                .then(|| (libc::SOL_SOCKET, name, (set / 2).to_ne_bytes().to_vec()))
        })
        .collect()
}

/// `fd`, moved to the lowest free descriptor number if that is lower (its
/// own counted as free): the number the kernel's `accept` gives, once the
/// descriptors the hand-over used are closed. `cloexec`: the flag the
/// caller asked for.
pub(super) fn lowest_numbered(fd: OwnedFd, cloexec: bool) -> OwnedFd {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: plain system call on a descriptor owned here.
    let d = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, 0) };
    if d < 0 {
        return fd;
    }
    // SAFETY: `d` was just made and is owned by no one else.
    let d = unsafe { OwnedFd::from_raw_fd(d) };
    if d.as_raw_fd() < fd.as_raw_fd() {
        d
    } else {
        fd
    }
}

/// `accept4` on a listening TCP socket the shim handles. `Err(c)`: not
/// ours (or not carried), hand `c` out as it is. The hook owns `c` from the
/// start, so that it is closed, never leaked nor closed twice, whatever
/// happens here (a panic included).
pub(super) fn intercept_accept(
    listener: c_int,
    c: c_int,
    peer: SocketAddr,
    flags: c_int,
) -> Result<c_int, c_int> {
    // SAFETY: `c` is the connected socket just accepted, owned from here on.
    let c = unsafe { OwnedFd::from_raw_fd(c) };
    let raw = c.as_raw_fd();
    let (Some(family), Some(local)) = (tcp_family(raw), local_addr(raw)) else {
        return Err(std::os::fd::IntoRawFd::into_raw_fd(c));
    };
    if crate::env::settings().excluded(canonical(local)) {
        return Err(std::os::fd::IntoRawFd::into_raw_fd(c));
    }
    // A listener answering in the SYN-ACK may have negotiated ENO with
    // this client, which then sends Init1: never the application's data.
    let kernel = socket_id(listener).is_some_and(registry::is_kernel_listener);
    let not_carried = |c: OwnedFd, why: &str| {
        if kernel {
            crate::log::log!(Warn, "accepted connection reset: {why}");
            reset(c);
            Ok(-1)
        } else {
            Err(refuse_accepted_if_mandatory(c, why))
        }
    };
    // A daemon that does not answer (stopped, hung) is as good as none:
    // asked before the connection is handed over, which cannot be undone.
    let link = match crate::daemon::ready() {
        Ok(l) => l,
        Err(e) => return not_carried(c, &format!("no daemon: {e}")),
    };
    // SAFETY: plain system call; the result is checked.
    let app = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if app < 0 {
        return not_carried(c, "no descriptor for the application");
    }
    // SAFETY: `app` was just made and is owned by no one else.
    let app = unsafe { OwnedFd::from_raw_fd(app) };
    // An accepted socket inherits the listening socket's options; the one
    // the application gets instead does too.
    for setting in changed_options(listener, family)
        .into_iter()
        .chain(read_option(listener, libc::IPPROTO_TCP, libc::TCP_NODELAY))
        .chain(set_buffer_sizes(listener, app.as_raw_fd()))
    {
        apply_option(app.as_raw_fd(), &setting);
    }
    let real = c;
    let end = match pairing_for(app.as_raw_fd(), family).and_then(|p| pair(app.as_raw_fd(), p)) {
        Ok(end) => end,
        Err(e) => {
            crate::log::log!(Warn, "accepted connection reset: no pairing (errno {e})");
            reset(real);
            return Ok(-1);
        }
    };
    let Some(id) = socket_id(app.as_raw_fd()) else {
        reset(real);
        return Ok(-1);
    };
    let req = Request::Accept(Handover {
        id,
        local: canonical(local),
        peer: canonical(peer),
        profile: crate::env::settings().wire(),
        pending: None,
        // The real socket has the listener's options already; the daemon
        // gets those the application sets later.
        settings: Vec::new(),
    });
    match link.ask(&req, &[end.as_raw_fd(), real.as_raw_fd()]) {
        Ok(Reply::Ok) => {}
        other => {
            let why = match other {
                Ok(reply) => format!("{reply:?}"),
                Err(e) => e.to_string(),
            };
            crate::log::log!(Warn, "the daemon did not take a connection: {why}");
            // The client sees an aborted connection, never a clean end.
            reset(real);
            return Ok(-1);
        }
    }
    // The daemon has its own reference to the real socket; the shim's
    // descriptors for the hand-over go (the link went with its request).
    drop((end, real));
    // The application's socket takes the number the kernel would have
    // given the connection without the shim: the lowest free one.
    let app = lowest_numbered(app, flags & libc::SOCK_CLOEXEC != 0);
    crate::log::log!(Debug, "connection from {peer} handed to the daemon");
    if flags & libc::SOCK_NONBLOCK != 0 {
        // SAFETY: plain system calls on a descriptor this function owns.
        unsafe {
            let fl = libc::fcntl(app.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(app.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    if flags & libc::SOCK_CLOEXEC == 0 {
        // SAFETY: plain system call on a descriptor this function owns.
        unsafe { libc::fcntl(app.as_raw_fd(), libc::F_SETFD, 0) };
    }
    let app = std::os::fd::IntoRawFd::into_raw_fd(app);
    registry::insert(app, Entry::new(id, false));
    Ok(app)
}

/// `listen` on a bound TCP socket the shim handles, before the real one:
/// with the kernel carriage, the daemon writes the listener's answer
/// template into its record, so that its SYN-ACKs answer ENO
/// (`docs/SHIM.md`, "The kernel carriage"). Nothing changes otherwise;
/// the real `listen` follows whatever happens here.
pub(super) fn prepare_listen(fd: c_int) {
    let settings = crate::env::settings();
    if tcp_family(fd).is_none() || !settings.kernel_carriage() {
        return;
    }
    // An unbound socket gets its port from `listen` itself: answered in
    // band, as the address is unknown here.
    let Some(local) = local_addr(fd).filter(|a| a.port() != 0) else {
        return;
    };
    // A wildcard listener's connections arrive on addresses the rules may
    // leave alone: those would be handed out plain while the kernel
    // answered ENO for them.
    if settings.excluded(canonical(local))
        || (local.ip().is_unspecified() && settings.has_address_rules())
    {
        return;
    }
    let Some(id) = socket_id(fd) else {
        return;
    };
    match Link::open().and_then(|l| l.ask(&Request::Listen(settings.wire()), &[fd])) {
        Ok(Reply::Ok) => registry::mark_kernel_listener(id),
        other => crate::log::log!(Debug, "no ENO in the SYN-ACKs of {local}: {other:?}"),
    }
}

/// Remembers where a TCP socket of this process now listens (its port is
/// known once `listen` has run).
pub(super) fn note_listening(fd: c_int) {
    if tcp_family(fd).is_some()
        && let (Some(local), Some(id)) = (local_addr(fd), socket_id(fd))
    {
        registry::note_own_listener(id, canonical(local));
    }
}
