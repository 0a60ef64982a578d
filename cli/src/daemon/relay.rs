//! Relaying one connection: the real socket as a `TcpcryptStream` (or
//! plain, after a fallback) on one side, the daemon's end of the loopback
//! connection to the application's socket on the other.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tcpcrypt_tokio::{
    Config, PlainSource, SynOffer, TcpcryptAcceptor, TcpcryptConnector, TcpcryptStream,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::conns::Conn;
use crate::local_end::LocalEnd;
use crate::sockopt;
use crate::wire::{ConnState, Pending};

/// Send buffer of the daemon's end of the loopback connection (the kernel
/// doubles it), above the default autotuning limit of 4 MiB: a deep queue
/// towards the application lets the relay hand over more per wakeup.
const APP_SEND_BUFFER: usize = 4 << 20;

/// How long the daemon waits for a client's first bytes before it
/// negotiates a resumed connection, so that they leave with the hello as
/// 0-RTT data: long enough for a program that writes its request as soon
/// as `connect` returns, short enough not to matter to one that waits for
/// the server to speak first.
const EARLY_WAIT: Duration = Duration::from_millis(2);

/// Most of a client's first bytes taken for 0-RTT data (the core sends
/// what fits in its early limit, and the rest right after the handshake).
const EARLY_READ: usize = 16 * 1024;

/// How long a pending connect may take before the daemon gives up on it
/// (the kernel's own SYN retries end sooner, after about 130 s).
const CONNECT_LIMIT: Duration = Duration::from_secs(180);

/// Arms or disarms a reset on close. Armed while the daemon relays, so
/// that a daemon that dies resets both connections (their ends see an
/// error, never a clean end of a truncated stream); disarmed before an
/// orderly close.
fn reset_on_close(s: &TcpStream, on: bool) {
    let _ = socket2::SockRef::from(s).set_linger(on.then_some(Duration::ZERO));
}

/// Prepares the daemon's end of the loopback connection.
pub fn app_end(fd: OwnedFd) -> io::Result<TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    let s = TcpStream::from_std(s)?;
    let _ = socket2::SockRef::from(&s).set_send_buffer_size(APP_SEND_BUFFER);
    prepare(&s);
    Ok(s)
}

/// Prepares a real socket handed over by the shim. Its reset on close is
/// armed only once it carries the application's bytes (`splice`): a legacy
/// server whose connection the negotiation leaves for a plain one sees it
/// closed, not reset (a reset can make such a server fail, and refuse the
/// reconnect).
pub fn real(fd: OwnedFd) -> io::Result<TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    let s = TcpStream::from_std(s)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Nagle off (the relay forwards what it has at once; Nagle here would
/// only add delayed-ACK waits to small exchanges), reset on close armed.
fn prepare(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    reset_on_close(s, true);
}

/// Resets a connection: the other end sees an error, never a clean end.
fn abort(s: TcpStream) {
    reset_on_close(&s, true);
    drop(s);
}

/// Carries both directions until both have ended. Reading the
/// application's socket to its end is what delivers the bytes a program
/// wrote just before it exited. An error on either side resets both: a
/// peer must not take a truncated stream for a complete one.
async fn splice(
    app: TcpStream,
    mut real: TcpcryptStream<TcpStream>,
    conn: &Conn,
) -> io::Result<()> {
    let program = LocalEnd::of(&app, real.get_ref());
    let mut app = PlainSource::new(app);
    reset_on_close(real.get_ref(), true);
    conn.attach(real.get_ref().as_raw_fd());
    let result = program
        .relay(tcpcrypt_tokio::copy_bidirectional(&mut app, &mut real))
        .await;
    conn.detach();
    match result {
        Ok(_) => {
            reset_on_close(real.get_ref(), false);
            reset_on_close(app.get_ref(), false);
            Ok(())
        }
        Err(e) => {
            // A reset of one end reaches the other after the bytes that
            // came before it, as without the relay: what each socket still
            // holds unsent leaves before its reset discards it.
            let app = app.into_inner();
            tokio::join!(sent_or_given_up(real.get_ref()), sent_or_given_up(&app));
            drop(real);
            abort(app);
            Err(e)
        }
    }
}

/// How long a connection being reset may take to send what it holds: the
/// bytes before an abortive close are sent as the kernel sends them, but a
/// peer that does not read cannot hold the connection: at most
/// [`RESET_SEND_LIMIT`], and no longer once [`RESET_SEND_STALL`] (or two
/// round trips, on a longer path) has passed without the peer taking any.
const RESET_SEND_LIMIT: Duration = Duration::from_secs(1);
const RESET_SEND_STALL: Duration = Duration::from_millis(100);

/// Waits until `s` has sent everything it holds, within the limits above;
/// a socket reset already (its count of unsent bytes stays) or closed is
/// not waited for. Polled (no event says "all sent"), at most a few dozen
/// times: only a connection being reset waits here.
async fn sent_or_given_up(s: &TcpStream) {
    let start = tokio::time::Instant::now();
    let mut progress = (sockopt::unsent_bytes(s.as_raw_fd()), start);
    let mut pause = Duration::from_millis(1);
    while progress.0 > 0 && start.elapsed() < RESET_SEND_LIMIT {
        let (sending, rtt) = sockopt::sending_state(s);
        if !sending {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
        let unsent = sockopt::unsent_bytes(s.as_raw_fd());
        if unsent < progress.0 {
            progress = (unsent, tokio::time::Instant::now());
        } else if progress.1.elapsed() >= RESET_SEND_STALL.max(2 * rtt) {
            return;
        }
    }
}

/// How a client connection starts its negotiation.
pub struct ClientStart {
    /// The ENO offer its SYN carried (the kernel carriage), if any.
    pub offer: Option<SynOffer>,
    /// Whether the program's first bytes may go as 0-RTT data
    /// (`tcpcrypt daemon --zero-rtt`).
    pub zero_rtt: bool,
}

/// The client side: negotiates on the real connection with the library's
/// connect path (a destination known to be legacy goes plain at once, one
/// found not to speak tcpcrypt gets a new plain connection when the policy
/// allows, a protocol error resets), then relays.
pub async fn outbound(
    app: TcpStream,
    tcp: TcpStream,
    start: ClientStart,
    config: &Arc<Config>,
    conn: &Conn,
) -> io::Result<()> {
    let early = match start.offer {
        Some(_) => Vec::new(),
        None => match first_bytes(start.zero_rtt, &app, &tcp, config).await {
            Ok(early) => early,
            Err(e) => {
                // The application reset its connection: so does the relay.
                reset_on_close(&tcp, true);
                abort(app);
                return Err(e);
            }
        },
    };
    match negotiate(tcp, start.offer, &early, config, conn).await {
        Ok(real) => splice(app, real, conn).await,
        Err(e) => {
            abort(app);
            Err(e)
        }
    }
}

/// Negotiates on the real connection with the library's connect path
/// and records the outcome.
async fn negotiate(
    tcp: TcpStream,
    offer: Option<SynOffer>,
    early: &[u8],
    config: &Arc<Config>,
    conn: &Conn,
) -> io::Result<TcpcryptStream<TcpStream>> {
    let connector = TcpcryptConnector::new(config.clone());
    let real = match offer {
        Some(offer) => connector.connect_offered(tcp, offer).await,
        None => connector.connect_tcp_with_data(tcp, early).await,
    }?;
    let _ = real.get_ref().set_nodelay(true);
    conn.negotiated(
        real.session(),
        real.carriage(),
        // None when the server already reset it (it sent and reset).
        real.get_ref().local_addr().unwrap_or(conn.local()),
    );
    Ok(real)
}

/// The errno a program's `connect` reports for a connection whose
/// negotiation failed: the system's own (a plain reconnect refused), or
/// what the failure amounts to; `EPERM` when the policy refuses a plain
/// connection, as when the shim refuses one without a daemon.
fn failure_errno(e: &io::Error) -> i32 {
    if let Some(errno) = e.raw_os_error() {
        // Only what `connect` itself reports; anything else (the server
        // reset the connection at once: ENOTCONN, EPIPE) is a reset.
        return match errno {
            libc::ECONNREFUSED
            | libc::ETIMEDOUT
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::EADDRNOTAVAIL
            | libc::EACCES
            | libc::EPERM
            | libc::ECONNRESET => errno,
            _ => libc::ECONNRESET,
        };
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => libc::EPERM,
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::ConnectionAborted => libc::ECONNABORTED,
        _ => libc::ECONNRESET,
    }
}

/// The client's first bytes, when 0-RTT is on (`--zero-rtt`), a resumption
/// secret for its destination is at hand and they come within
/// [`EARLY_WAIT`]: the library sends them
/// as 0-RTT data with the hello, or after the handshake, never twice
/// (`docs/PROTOCOL.md` 7.1: a connection that fails before the server's
/// answer is an error, and the relay resets the program's connection).
/// An error of the program's socket is returned: the kernel reports it
/// once only. Over the kernel carriage the
/// resumption needs no round trip of its own, so nothing is waited for.
async fn first_bytes(
    zero_rtt: bool,
    app: &TcpStream,
    tcp: &TcpStream,
    config: &Config,
) -> io::Result<Vec<u8>> {
    if !wants_first_bytes(zero_rtt, tcp, config) {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; EARLY_READ];
    let read = tokio::time::timeout(EARLY_WAIT, async {
        loop {
            app.readable().await?;
            match app.try_read(&mut buf) {
                Ok(n) => return Ok(n),
                // Not ready after all: readiness left over from an
                // earlier read (the filler of a non-blocking connect was
                // just drained from this socket). Wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // Reported once only (a reset, say): the relay must not
                // take the next read's clean end for the application's.
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match read {
        Ok(Ok(n)) => buf.truncate(n),
        Ok(Err(e)) => return Err(e),
        Err(_) => buf.clear(),
    }
    Ok(buf)
}

/// Whether the program's first bytes may go as 0-RTT data: 0-RTT is on,
/// the carriage is in band, and a resumption secret for the destination
/// is at hand.
fn wants_first_bytes(zero_rtt: bool, tcp: &TcpStream, config: &Config) -> bool {
    zero_rtt
        && config.handshake_config().early_data
        && config.carriage() != tcpcrypt_tokio::Carriage::Kernel
        && tcp
            .peer_addr()
            .is_ok_and(|p| config.client_cache().has_ticket(p))
}

/// Finishes a connect the shim handed over (blocking or not): waits for
/// the real TCP handshake (or the application giving up), then for the
/// negotiation, while the application's socket polls not writable; then
/// either reports the failure, by resetting the application's socket and
/// recording the errno for `SO_ERROR` (and a blocking `connect`), or makes
/// the socket writable (its own `TCP_NOTSENT_LOWAT` back, the filler
/// discarded) and relays. When the first bytes may go as 0-RTT data, the
/// socket turns writable before the negotiation, so that they can.
pub async fn connecting(
    mut app: TcpStream,
    real: TcpStream,
    pending: Pending,
    app_socket: OwnedFd,
    start: ClientStart,
    config: &Arc<Config>,
    conn: &Conn,
) -> io::Result<()> {
    let connected = tokio::select! {
        r = tokio::time::timeout(CONNECT_LIMIT, established(&real)) => {
            r.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        }
        _ = conn.cancel.notified() => {
            abort(app);
            return Ok(());
        }
    };
    if let Err(e) = connected {
        fail(
            app,
            app_socket,
            &pending,
            conn,
            e.raw_os_error().unwrap_or(libc::ETIMEDOUT),
        );
        return Err(e);
    }
    if sent_then_reset(&real) {
        return deliver_then_reset(app, real, pending, app_socket, config, conn).await;
    }
    if start.offer.is_none() && wants_first_bytes(start.zero_rtt, &real, config) {
        // The first bytes may go as 0-RTT data with the hello: the
        // application writes them now.
        conn.set_state(ConnState::Negotiating);
        if let Err(e) = release(&mut app, app_socket, &pending, conn).await {
            // The application reset its socket (it may as soon as its
            // connect returns): so does the relay, or the server would
            // take the closed connection for a plain client's clean end.
            abort(real);
            return Err(e);
        }
        return outbound(app, real, start, config, conn).await;
    }
    // Otherwise the socket turns writable only once the connection can
    // carry the application's bytes, as a kernel socket does once
    // connected: encrypted, or plain as the policy allows. A connection
    // that cannot be made fails the connect with an errno (a one-shot
    // server that took the hello refuses the plain reconnect; the policy
    // refuses a plain server), where a program that wrote and closed at
    // once would otherwise have exited content, its bytes lost.
    let negotiated = tokio::select! {
        r = negotiate(real, start.offer, &[], config, conn) => r,
        _ = conn.cancel.notified() => {
            abort(app);
            return Ok(());
        }
    };
    match negotiated {
        Ok(real) => {
            if let Err(e) = release(&mut app, app_socket, &pending, conn).await {
                // As above: the server must see a reset, not a clean end.
                reset_on_close(real.get_ref(), true);
                return Err(e);
            }
            splice(app, real, conn).await
        }
        Err(e) => {
            fail(app, app_socket, &pending, conn, failure_errno(&e));
            Err(e)
        }
    }
}

/// Whether the server sent and then reset the connection before anything
/// was negotiated (an HTTP server that answers 503 and aborts): bytes
/// wait, and the socket has no peer any more.
fn sent_then_reset(real: &TcpStream) -> bool {
    sockopt::queued_bytes(real) > 0
        && real
            .peer_addr()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// A connection the server sent on and reset at once: nothing to
/// negotiate, and under the opportunistic policy a plain connection, as
/// the kernel's was: the application's connect succeeds, it reads the
/// server's bytes, then the reset. The mandatory policy refuses a plain
/// server, as always.
async fn deliver_then_reset(
    mut app: TcpStream,
    mut real: TcpStream,
    pending: Pending,
    app_socket: OwnedFd,
    config: &Config,
    conn: &Conn,
) -> io::Result<()> {
    if config.policy() == tcpcrypt_tokio::Policy::Mandatory {
        fail(app, app_socket, &pending, conn, libc::EPERM);
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let mut bytes = Vec::new();
    // Its bytes, then its reset (or whatever ended it): the error itself
    // is passed on as the application's reset below.
    let _ = real.read_to_end(&mut bytes).await;
    config.client_cache().mark_sent_and_reset(conn.peer);
    conn.negotiated(None, None, real.local_addr().unwrap_or(conn.local()));
    release(&mut app, app_socket, &pending, conn).await?;
    tokio::io::AsyncWriteExt::write_all(&mut app, &bytes).await?;
    // The bytes before the reset, as from the server.
    sent_or_given_up(&app).await;
    abort(app);
    Ok(())
}

/// A held connect failed with `errno`: the application's socket is reset,
/// then the errno recorded, so that a shim that learns the errno finds
/// the kernel's own error on its socket already, and clears it. The
/// application's own option goes back in between (before the reset, it
/// could poll writable for a moment).
fn fail(app: TcpStream, app_socket: OwnedFd, pending: &Pending, conn: &Conn, errno: i32) {
    abort(app);
    release_lowat(&app_socket, pending, conn);
    drop(app_socket);
    conn.set_state(ConnState::Failed(errno));
}

/// Puts the application's own `TCP_NOTSENT_LOWAT` back on its socket (as
/// it was at connect, or as it set it since), whatever the outcome.
fn release_lowat(app_socket: &OwnedFd, pending: &Pending, conn: &Conn) {
    conn.release_lowat(pending.lowat, |lowat| {
        sockopt::set_notsent_lowat(app_socket, lowat)
    });
}

/// Makes the application's socket writable: its own `TCP_NOTSENT_LOWAT`
/// back (as it was at connect, or as it set it since), then the filler
/// read and discarded.
async fn release(
    app: &mut TcpStream,
    app_socket: OwnedFd,
    pending: &Pending,
    conn: &Conn,
) -> io::Result<()> {
    // Its own value first, so that the application never sees the option
    // changed once the socket is writable; what it writes from then on
    // follows the filler (an abortive close waits for it to leave: the
    // shim's `close`).
    release_lowat(&app_socket, pending, conn);
    drop(app_socket);
    let discarded = tokio::io::copy(&mut app.take(pending.filler), &mut tokio::io::sink()).await?;
    if discarded != pending.filler {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Waits for a connecting socket's TCP handshake: its error, if any. A
/// server that sent and then reset at once connected, as the kernel told a
/// program that asked in time: its bytes are read, then the reset, which
/// `SO_ERROR` would have taken (the kernel reports it once) and left the
/// bytes behind a clean end.
async fn established(s: &TcpStream) -> io::Result<()> {
    s.writable().await?;
    if sockopt::queued_bytes(s) > 0 {
        return Ok(());
    }
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.peer_addr().map(drop)
}

/// The server side: negotiates on the accepted connection.
pub async fn inbound(
    app: TcpStream,
    tcp: TcpStream,
    config: &Arc<Config>,
    conn: &Conn,
) -> io::Result<()> {
    let local = tcp.local_addr()?;
    match TcpcryptAcceptor::new(config.clone()).accept_tcp(tcp).await {
        Ok(real) => {
            conn.negotiated(real.session(), real.carriage(), local);
            splice(app, real, conn).await
        }
        Err(e) => {
            tracing::debug!(peer = %conn.peer, error = %e, "inbound handshake failed");
            abort(app);
            Err(e)
        }
    }
}
