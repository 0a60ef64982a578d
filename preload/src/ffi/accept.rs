//! `accept` on a listening socket the shim handles: the application gets
//! the end of a loopback connection to the relay instead of the real one.

use super::*;

/// An accepted connection the shim cannot carry: under the mandatory
/// policy it is reset and the caller gets -1 (`accept4` then fails with
/// `ECONNABORTED`, as for a client that reset it); otherwise the
/// application gets it unencrypted.
pub(super) fn refuse_accepted_if_mandatory(c: c_int, why: &str) -> c_int {
    if !crate::env::settings().mandatory() {
        tracing::debug!(why, "accepted connection left unencrypted");
        return c;
    }
    tracing::warn!(why, "accepted connection reset: the policy is mandatory");
    // SAFETY: `c` is a connected socket the caller hands over.
    let tcp = unsafe { std::net::TcpStream::from_raw_fd(c) };
    // Closed with a zero linger time: a reset.
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
    drop(tcp);
    -1
}

/// `accept4` on a listening TCP socket the shim handles: the real
/// connection goes to the relay and the application gets the other end of
/// a fresh loopback connection instead. `Err(c)`: not ours, hand `c` out.
pub(super) fn intercept_accept(
    listener: c_int,
    c: c_int,
    peer: SocketAddr,
    flags: c_int,
) -> Result<c_int, c_int> {
    let Some(family) = tcp_family(c) else {
        return Err(c);
    };
    let Some(local) = local_addr(c) else {
        return Err(c);
    };
    if crate::env::settings().excluded(canonical(local)) {
        return Err(c);
    }
    let relay = match relay::get() {
        Ok(relay) => relay,
        Err(e) => {
            let why = format!("the relay cannot start: {e}");
            return Err(refuse_accepted_if_mandatory(c, &why));
        }
    };
    let app = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if app < 0 {
        return Err(refuse_accepted_if_mandatory(
            c,
            "no descriptor for the application",
        ));
    }
    // An accepted socket inherits the listening socket's options; the
    // one the application gets instead does too.
    for setting in changed_options(listener, family)
        .into_iter()
        .chain(read_option(listener, libc::IPPROTO_TCP, libc::TCP_NODELAY))
    {
        apply_option(app, &setting);
    }
    // SAFETY: `c` is a connected socket we own from here on.
    let tcp = unsafe { std::net::TcpStream::from_raw_fd(c) };
    let job = Job::Inbound {
        tcp,
        peer: canonical(peer),
    };
    let entry = Entry {
        id: socket_id(app).unwrap_or(0),
        local: canonical(local),
        peer: canonical(peer),
        state: Arc::new(Mutex::new(SessionState::Negotiating)),
        cancel: None,
        // The accepted real socket has the listener's options already;
        // the mirror carries those the application sets later.
        mirror: options::new(Vec::new()),
    };
    if join_relay(app, family, relay, job, entry).is_err() {
        unsafe { (real().close)(app) };
        // The real connection went with the job; the caller sees an
        // aborted connection, as if the client had reset it.
        return Ok(-1);
    }
    if flags & libc::SOCK_NONBLOCK != 0 {
        unsafe {
            let fl = libc::fcntl(app, libc::F_GETFL);
            libc::fcntl(app, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    if flags & libc::SOCK_CLOEXEC == 0 {
        unsafe { libc::fcntl(app, libc::F_SETFD, 0) };
    }
    Ok(app)
}
