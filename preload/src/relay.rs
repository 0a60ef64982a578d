//! The relay: a tokio runtime inside the process that holds the real
//! connections and copies bytes between them and the application's
//! loopback sockets. Safe code only; the hooks in `ffi` call into it.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tcpcrypt_tokio::{
    Config, Connected, PlainSource, Policy, TcpcryptAcceptor, TcpcryptConnector, TcpcryptStream,
    VectoredBufRead,
};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::env;
use crate::options::{self, SharedMirror};
use crate::registry::{self, SessionState};
use crate::status;

/// What the relay does with the loopback connection that arrives from a
/// given application socket.
pub(crate) enum Job {
    /// The application connected to `dest`; `tcp` is the real connection.
    Outbound {
        tcp: std::net::TcpStream,
        dest: SocketAddr,
    },
    /// The application accepted `peer`; `tcp` is the real connection.
    Inbound {
        tcp: std::net::TcpStream,
        peer: SocketAddr,
    },
    /// A non-blocking connect: the real connection is still being made.
    Connecting(PendingConnect),
}

/// A non-blocking connect handed to the relay (see
/// `ffi::connect_in_background`).
pub(crate) struct PendingConnect {
    /// The real socket, connecting.
    pub real: std::net::TcpStream,
    pub dest: SocketAddr,
    /// How many filler bytes the application's socket sent first.
    pub filler: tokio::sync::oneshot::Receiver<usize>,
    /// The application's socket, to make it writable again.
    pub app_socket: std::os::fd::OwnedFd,
    /// The application's own `TCP_NOTSENT_LOWAT`, to put back.
    pub app_lowat: libc::c_int,
    /// Signalled when the application closes its socket.
    pub cancel: Arc<tokio::sync::Notify>,
}

/// Send buffer of the relay's end of the loopback connection (the kernel
/// doubles it), above the kernel's default autotuning limit of 4 MiB.
const APP_SEND_BUFFER: usize = 4 << 20;

/// What the hooks and the relay share about one connection.
#[derive(Clone)]
pub(crate) struct Shared {
    /// The application's socket's identity in the registry.
    pub id: u64,
    /// The negotiation's outcome, for the hooks' session queries.
    pub state: Arc<Mutex<SessionState>>,
    /// The application's socket options for the real connection.
    pub mirror: SharedMirror,
}

type Pending = Arc<Mutex<HashMap<SocketAddr, (Job, Shared)>>>;

/// The per-process relay.
pub(crate) struct Relay {
    /// Kept, never read: its threads run the relay.
    _runtime: Runtime,
    pid: u32,
    listen: SocketAddr,
    pending: Pending,
}

impl Relay {
    fn start() -> io::Result<Relay> {
        env::init_logging();
        for rule in &env::settings().rejected {
            tracing::warn!(setting = rule, "a setting that does not parse");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tcpcrypt-relay")
            .on_thread_start(crate::ffi::bypass_hooks_on_this_thread)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
        let listen = listener.local_addr()?;
        let pending: Pending = Arc::default();
        let settings = env::settings();
        let client = Arc::new(settings.config().map_err(io::Error::other)?);
        let server = Arc::new(settings.config().map_err(io::Error::other)?);
        rt.spawn(accept_loop(listener, pending.clone(), client, server));
        Ok(Relay {
            _runtime: rt,
            pid: std::process::id(),
            listen,
            pending,
        })
    }

    /// The loopback address application sockets connect to.
    pub(crate) fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Announces the loopback connection that will arrive from `app_end`.
    pub(crate) fn expect(&self, app_end: SocketAddr, job: Job, shared: Shared) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(app_end, (job, shared));
    }

    /// Forgets an announcement that will not be used.
    pub(crate) fn cancel(&self, app_end: SocketAddr) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&app_end);
    }
}

/// The relay of the process that made it.
static CURRENT: Mutex<Option<&'static Relay>> = Mutex::new(None);

/// The relay of this process. After `fork` the child gets its own: the
/// parent's runtime threads do not exist there.
pub(crate) fn get() -> io::Result<&'static Relay> {
    crate::ffi::install_fork_handlers();
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    match *current {
        Some(r) if r.pid == std::process::id() => Ok(r),
        _ => {
            // The parent's relay (if any) is left alone: its threads are
            // gone in this process and dropping it could block.
            let relay: &'static Relay = Box::leak(Box::new(Relay::start()?));
            *current = Some(relay);
            Ok(relay)
        }
    }
}

/// Holds the relay's lock across a `fork` (`crate::fork`).
pub(crate) fn hold_for_fork() -> std::sync::MutexGuard<'static, Option<&'static Relay>> {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    pending: Pending,
    client: Arc<Config>,
    server: Arc<Config>,
) {
    loop {
        let (app, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::debug!(error = %e, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // A deep send queue towards the application lets the relay hand
        // over more per wakeup; its memory is only used while the
        // application is behind.
        let _ = socket2::SockRef::from(&app).set_send_buffer_size(APP_SEND_BUFFER);
        no_delay(&app);
        let job = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&from);
        let Some((job, shared)) = job else {
            // Not one of ours: nobody else knows this port.
            continue;
        };
        let (client, server) = (client.clone(), server.clone());
        tokio::spawn(async move {
            let result = match job {
                Job::Outbound { tcp, dest } => match TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        no_delay(&tcp);
                        outbound(app, tcp, dest, &client, &shared).await
                    }
                    Err(e) => Err(e),
                },
                Job::Inbound { tcp, peer } => inbound(app, tcp, peer, &server, &shared).await,
                Job::Connecting(pending) => connecting(app, pending, &client, &shared).await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "relay ended with an error");
            }
            registry::relay_ended(shared.id, &shared.state);
        });
    }
}

/// Records the outcome of the negotiation: for the hooks (session ID
/// queries) and in the status directory, until the connection ends.
fn note(
    state: &Arc<Mutex<SessionState>>,
    new: SessionState,
    local: SocketAddr,
    peer: SocketAddr,
) -> status::Record {
    let record = status::Record::write(local, peer, &new);
    registry::set_state(state, new);
    record
}

fn outcome(s: &TcpcryptStream<TcpStream>) -> SessionState {
    match s.session() {
        Some(info) => SessionState::Encrypted(Box::new(info.clone())),
        None => SessionState::Plain,
    }
}

/// Resets a connection: the other end sees an error, never a clean end,
/// and nothing more is sent.
fn abort(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// The real connection under a relayed stream, encrypted or plain.
trait RealSocket: VectoredBufRead + AsyncWrite {
    fn tcp(&self) -> &TcpStream;
}

impl RealSocket for PlainSource<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl RealSocket for TcpcryptStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

/// Turns Nagle's algorithm off on a relay socket. The relay forwards what
/// the application wrote as soon as it has it; Nagle on the relay's own
/// sockets would only add a delayed-ACK wait (40 ms) to exchanges of small
/// writes. The application's own socket keeps whatever setting it chose.
fn no_delay(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}

/// Carries both directions between the application and the real
/// connection until both have ended. An error on either side resets both:
/// a plain peer must not take a truncated stream for a complete one.
///
/// Meanwhile the application's socket options reach the real socket
/// (`options`); the attachment ends before the socket closes, so that a
/// descriptor number reused afterwards is never touched.
async fn splice<S: RealSocket>(app: TcpStream, mut real: S, shared: &Shared) -> io::Result<()> {
    let mut app = PlainSource::new(app);
    let result = {
        let _attached = options::attach(&shared.mirror, real.tcp());
        tcpcrypt_tokio::copy_bidirectional(&mut app, &mut real).await
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = real.tcp().set_zero_linger();
            drop(real);
            abort(app.into_inner());
            Err(e)
        }
    }
}

async fn outbound(
    app: TcpStream,
    tcp: TcpStream,
    dest: SocketAddr,
    config: &Arc<Config>,
    shared: &Shared,
) -> io::Result<()> {
    let state = &shared.state;
    let local = tcp.local_addr()?;
    if config.policy() == Policy::Opportunistic && config.client_cache().is_legacy(dest) {
        let _record = note(state, SessionState::Plain, local, dest);
        return splice(app, PlainSource::new(tcp), shared).await;
    }
    match TcpcryptConnector::new(config.clone())
        .connect_with_peer(tcp, Some(dest))
        .await
    {
        Ok(Connected::Stream(s)) => {
            let _record = note(state, outcome(&s), local, dest);
            splice(app, s, shared).await
        }
        Ok(Connected::Reconnect(reason)) => {
            tracing::debug!(%dest, %reason, "falling back to plain TCP");
            match TcpStream::connect(dest).await {
                Ok(plain) => {
                    no_delay(&plain);
                    let _record = note(state, SessionState::Plain, plain.local_addr()?, dest);
                    splice(app, PlainSource::new(plain), shared).await
                }
                Err(e) => {
                    abort(app);
                    Err(e)
                }
            }
        }
        Err(e) => {
            abort(app);
            Err(e)
        }
    }
}

/// Finishes a non-blocking connect: waits for the real TCP handshake (or
/// the application giving up), then either reports its error or discards
/// the filler, which makes the application's socket writable, and goes on
/// as any outbound connection.
async fn connecting(
    mut app: TcpStream,
    pending: PendingConnect,
    config: &Arc<Config>,
    shared: &Shared,
) -> io::Result<()> {
    let state = &shared.state;
    let PendingConnect {
        real,
        dest,
        filler,
        app_socket,
        app_lowat,
        cancel,
    } = pending;
    let real = TcpStream::from_std(real)?;
    no_delay(&real);
    let connected = tokio::select! {
        r = established(&real) => r,
        _ = cancel.notified() => return Ok(()), // the application closed it
    };
    if let Err(e) = connected {
        let errno = e.raw_os_error().unwrap_or(libc::ECONNREFUSED);
        registry::set_state(state, SessionState::ConnectFailed(errno));
        // The hook may still be filling the socket: reset it only after,
        // so that `connect` itself returns EINPROGRESS.
        let _ = filler.await;
        abort(app);
        return Err(e);
    }
    registry::set_state(state, SessionState::Negotiating);
    let filler = filler
        .await
        .map_err(|_| io::Error::other("the connect hook did not finish"))?;
    // The hook is done with the socket. Its own option value comes back
    // first, so that the application never sees it changed once the
    // socket is writable; what it writes from then on follows the filler.
    crate::ffi::restore_notsent_lowat(&app_socket, app_lowat);
    drop(app_socket);
    let discarded =
        tokio::io::copy(&mut (&mut app).take(filler as u64), &mut tokio::io::sink()).await?;
    if discarded != filler as u64 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    outbound(app, real, dest, config, shared).await
}

/// Waits for a connecting socket's TCP handshake: its error, if any.
async fn established(s: &TcpStream) -> io::Result<()> {
    s.writable().await?;
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.peer_addr().map(drop)
}

async fn inbound(
    app: TcpStream,
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    config: &Arc<Config>,
    shared: &Shared,
) -> io::Result<()> {
    let state = &shared.state;
    tcp.set_nonblocking(true)?;
    let local = tcp.local_addr()?;
    let tcp = TcpStream::from_std(tcp)?;
    no_delay(&tcp);
    match TcpcryptAcceptor::new(config.clone()).accept(tcp).await {
        Ok(s) => {
            let _record = note(state, outcome(&s), local, peer);
            splice(app, s, shared).await
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "inbound handshake failed");
            abort(app);
            Err(e)
        }
    }
}
