//! The accepting side: `TcpcryptAcceptor` over any transport, and
//! `TcpcryptListener`, which runs handshakes concurrently so that a slow
//! client never holds up the others.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, FallbackReason};
use crate::first_write::{self, FirstWrite, Transport};
use crate::kernel;
use crate::negotiate::{self, ServerEnd, ServerStart};
use crate::path::PathProbe;
use crate::proto::init::INIT1_MAGIC;
use crate::stream::{AbortFn, Mode, TcpcryptStream, abort_tcp};
use crate::{Config, Policy};

/// Runs the accepting side's handshake over a transport the caller owns.
///
/// ```no_run
/// use std::sync::Arc;
/// use tcpcrypt_tokio::{Config, TcpcryptAcceptor};
///
/// # async fn run(tcp: tokio::net::TcpStream) -> std::io::Result<()> {
/// let acceptor = TcpcryptAcceptor::new(Arc::new(Config::default()));
/// let stream = acceptor.accept(tcp).await?;
/// println!("encrypted: {}", stream.is_encrypted());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TcpcryptAcceptor {
    config: Arc<Config>,
}

impl TcpcryptAcceptor {
    /// An acceptor with this configuration.
    pub fn new(config: Arc<Config>) -> Self {
        TcpcryptAcceptor { config }
    }

    /// Negotiates on `io`. A plain client gets a plain stream (unless the
    /// policy is mandatory) that delivers every byte it sent.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TcpcryptStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_with(io, None, ServerStart::InBand, None, None)
            .await
    }

    /// [`accept`](Self::accept), answering a protocol error with `abort`
    /// (RFC 8548 3.3), during the handshake as afterwards; `probe` reads
    /// the path's figures of a TCP connection; `first` holds the
    /// handshake's last message for the application's first bytes.
    async fn accept_with<IO>(
        &self,
        mut io: IO,
        abort: Option<AbortFn<IO>>,
        start: ServerStart,
        probe: Option<PathProbe>,
        first: Option<Transport<IO>>,
    ) -> io::Result<TcpcryptStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = &self.config;
        if config.policy == Policy::Off {
            return Ok(TcpcryptStream::plain(
                io,
                FallbackReason::PolicyOff,
                Vec::new(),
            ));
        }
        let started = std::time::Instant::now();
        let end =
            match negotiate::server(&mut io, config, start, probe, first.map(|t| t.hold)).await {
                Ok(end) => end,
                Err(e) => {
                    if let Some(abort) = abort.filter(|_| Error::aborts(&e)) {
                        abort(&io);
                    }
                    return Err(e);
                }
            };
        let mut stream = match end {
            ServerEnd::Encrypted(session, leftover, held) => {
                let mut s = TcpcryptStream::encrypted(io, *session, leftover);
                s.config = Some(self.config.clone());
                s.first_write = first.map(|t| FirstWrite::new(held, t));
                s
            }
            ServerEnd::Plain(reason, _) if config.policy == Policy::Mandatory => {
                return Err(Error::EncryptionRequired(reason).into());
            }
            ServerEnd::Plain(reason, bytes) => TcpcryptStream::plain(io, reason, bytes),
        };
        stream.abort = abort;
        stream.handshake = started.elapsed();
        Ok(stream)
    }

    /// Negotiates on an accepted TCP connection. Unlike [`accept`](Self::accept)
    /// over a generic transport, the stream knows its peer's address and
    /// answers tampering with a TCP reset.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tcpcrypt_tokio::{Config, TcpcryptAcceptor};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let acceptor = TcpcryptAcceptor::new(Arc::new(Config::default()));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:7777").await?;
    /// let (tcp, _) = listener.accept().await?;
    /// let stream = acceptor.accept_tcp(tcp).await?;
    /// println!("{:?} encrypted: {}", stream.peer_addr(), stream.is_encrypted());
    /// # Ok(()) }
    /// ```
    pub async fn accept_tcp(&self, tcp: TcpStream) -> io::Result<TcpcryptStream<TcpStream>> {
        let peer = tcp.peer_addr().ok();
        // ENO in the SYNs (the kernel carriage), or the in-band hello.
        let mut ack_without_eno = false;
        let (start, kernel_carried, listener) = match kernel::accepted(&tcp, &self.config) {
            kernel::Accepted::Negotiated(syn, synack, listener) => {
                (ServerStart::Kernel { syn, synack }, true, listener)
            }
            kernel::Accepted::AckWithoutEno => {
                ack_without_eno = true;
                (ServerStart::InBand, false, None)
            }
            kernel::Accepted::Unusable(why) => {
                abort_tcp(&tcp);
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, why));
            }
            kernel::Accepted::InBand => (ServerStart::InBand, false, None),
        };
        let probe = peer.and_then(|peer| PathProbe::to(&tcp, peer));
        let mut stream = self
            .accept_with(tcp, Some(abort_tcp), start, probe, Some(first_write::TCP))
            .await?;
        if ack_without_eno && sent_init1(&stream) {
            // A believes ENO is on: a path stripped its acknowledgement's
            // option. Its Init1 is never handed over as data; the reset
            // tells A to connect again (in band).
            abort_tcp(&stream.io);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client's acknowledgement lost its ENO option on the path and it sent Init1: reset",
            ));
        }
        stream.peer = peer;
        stream.hold = Some(first_write::hold_tcp);
        // A late marker, if this stream sends one (a client taken for
        // plain because it was silent), waits for its acknowledgement on
        // this connection before the reset.
        if let Mode::Plain {
            ack,
            reason: FallbackReason::ClientSilent,
            ..
        } = &mut stream.mode
        {
            ack.arm(probe);
        }
        stream.kernel_carried = kernel_carried && stream.is_encrypted();
        // A's next connection may resume in its SYN: the kernel learns the
        // identifier it may answer to.
        if let (true, Some(listener), Some(info)) =
            (stream.kernel_carried, listener, stream.session())
        {
            if let Some(half) = info.cached_resumption {
                kernel::remember_resumption(&self.config, listener, &half);
            }
        }
        Ok(stream)
    }
}

/// Whether a plain stream's first bytes (as far as they go) are Init1's
/// magic number: a client that believes ENO was negotiated in the SYNs.
fn sent_init1(stream: &TcpcryptStream<TcpStream>) -> bool {
    let Mode::Plain { recv, .. } = &stream.mode else {
        return false;
    };
    let first = recv.pending();
    let n = first.len().min(INIT1_MAGIC.len());
    n > 0 && first[..n] == INIT1_MAGIC[..n]
}

/// A TCP listener whose accepted streams are encrypted when the client
/// speaks tcpcrypt and plain otherwise (unless the policy is mandatory).
///
/// Handshakes run in their own tasks, at most
/// [`max_pending_handshakes`](crate::ConfigBuilder::max_pending_handshakes)
/// at once, each bounded by the handshake timeout: a client that never
/// finishes its hello is dropped without delaying anyone. When every slot
/// is taken, the oldest handshake that has had its slot for a second is
/// ended, its connection closed, and the newcomer takes its slot.
///
/// ```no_run
/// use std::sync::Arc;
/// use tokio::io::AsyncWriteExt;
/// use tcpcrypt_tokio::{Config, TcpcryptListener};
///
/// # async fn run() -> std::io::Result<()> {
/// let mut listener = TcpcryptListener::bind("127.0.0.1:8080", &Arc::new(Config::default())).await?;
/// loop {
///     let (mut stream, peer) = listener.accept().await?;
///     tokio::spawn(async move {
///         let _ = stream.write_all(b"hello\n").await;
///         let _ = stream.shutdown().await;
///     });
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct TcpcryptListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<io::Result<Attempt>>,
    task: JoinHandle<()>,
}

impl Drop for TcpcryptListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpcryptListener {
    /// Binds to `addr` and starts accepting.
    ///
    /// Like [`TcpcryptStream::connect`](crate::TcpcryptStream::connect), it
    /// borrows the configuration (and keeps a reference-counted copy).
    pub async fn bind(addr: impl ToSocketAddrs, config: &Arc<Config>) -> io::Result<Self> {
        Self::from_listener(bind_tcp(addr, config).await?, config)
    }

    /// Serves an existing listener.
    pub fn from_listener(listener: TcpListener, config: &Arc<Config>) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, config.clone(), tx));
        Ok(TcpcryptListener {
            local_addr,
            ready,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next negotiated connection. Connections whose handshake failed
    /// are dropped and logged, not returned; an error here is an error of
    /// the listening socket.
    pub async fn accept(&mut self) -> io::Result<(TcpcryptStream<TcpStream>, SocketAddr)> {
        loop {
            match self.accept_attempt().await? {
                (peer, Ok(stream)) => return Ok((stream, peer)),
                (peer, Err(e)) => {
                    tracing::debug!(%peer, error = %e, "handshake failed; connection dropped")
                }
            }
        }
    }

    /// The next incoming connection whose handshake has ended, with its
    /// peer and the outcome: for a server that reports the clients it
    /// turned away (a plain client under the mandatory policy, a failed
    /// handshake). An error of the listening socket is the outer error.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tcpcrypt_tokio::{Config, TcpcryptListener};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let mut listener = TcpcryptListener::bind("127.0.0.1:8080", &Arc::new(Config::default())).await?;
    /// loop {
    ///     match listener.accept_attempt().await? {
    ///         (peer, Ok(stream)) => println!("{peer}: encrypted {}", stream.is_encrypted()),
    ///         (peer, Err(e)) => eprintln!("{peer}: turned away: {e}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn accept_attempt(&mut self) -> io::Result<Attempt> {
        match self.ready.recv().await {
            Some(r) => r,
            None => Err(io::Error::other("the listener stopped")),
        }
    }
}

/// Binds a TCP listener for tcpcrypt: like `tokio::net::TcpListener::bind`,
/// and where the kernel carriage may be used (`Carriage::Auto` or
/// `Kernel`, and `tcpcrypt kernel enable`), it answers ENO in its SYN-ACKs
/// as `config` would. For servers that hand the listener to
/// [`TcpcryptListener::from_listener`] or accept with a
/// [`TcpcryptAcceptor`] themselves.
///
/// ```no_run
/// use std::sync::Arc;
/// use tcpcrypt_tokio::{Config, TcpcryptAcceptor, bind_tcp};
///
/// # async fn run() -> std::io::Result<()> {
/// let config = Arc::new(Config::default());
/// let listener = bind_tcp("0.0.0.0:7777", &config).await?;
/// let (tcp, _) = listener.accept().await?;
/// let stream = TcpcryptAcceptor::new(config).accept_tcp(tcp).await?;
/// println!("carried by {:?}", stream.carriage());
/// # Ok(()) }
/// ```
pub async fn bind_tcp(addr: impl ToSocketAddrs, config: &Config) -> io::Result<TcpListener> {
    // Each address in turn, as tokio's bind does.
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match kernel::listen(addr, config) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind to")))
}

/// An incoming connection's peer and how its handshake ended.
pub type Attempt = (SocketAddr, io::Result<TcpcryptStream<TcpStream>>);

type Ready = mpsc::Sender<io::Result<Attempt>>;

/// When every handshake slot is taken, a handshake that has had its slot
/// this long gives it up to a newcomer, oldest first: clients that never
/// finish their hello (slowloris) cannot keep the others waiting, and
/// fall back to plain TCP, for longer than this.
const SLOT_HELD_AT_LEAST: Duration = Duration::from_secs(1);

/// A handshake under way, as the accept loop sees it.
struct Handshaking {
    started: Instant,
    /// Ends the handshake (its connection is closed and its slot freed)
    /// while it is still under way; closed once it has ended.
    cancel: oneshot::Sender<()>,
}

/// A handshake slot: a free one, or, when all are taken, the slot of the
/// oldest handshake still under way once it has had it for
/// [`SLOT_HELD_AT_LEAST`]. `None` when the slots are closed.
async fn take_slot(
    slots: &Arc<Semaphore>,
    handshaking: &mut VecDeque<Handshaking>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        match slots.clone().try_acquire_owned() {
            Ok(permit) => return Some(permit),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        while handshaking.front().is_some_and(|h| h.cancel.is_closed()) {
            handshaking.pop_front();
        }
        let Some(oldest) = handshaking.front() else {
            // Every slot holds a connection the application has not taken
            // yet: it sets the pace.
            return slots.clone().acquire_owned().await.ok();
        };
        let due = oldest.started + SLOT_HELD_AT_LEAST;
        if Instant::now() < due {
            tokio::select! {
                permit = slots.clone().acquire_owned() => return permit.ok(),
                _ = tokio::time::sleep_until(due) => continue,
            }
        }
        let oldest = handshaking.pop_front().expect("looked at above");
        if oldest.cancel.send(()).is_ok() {
            tracing::debug!("every handshake slot is taken: the oldest handshake is ended");
        }
        // Its slot comes back as its task ends (or, if it had just
        // finished, when the application takes its connection).
        return slots.clone().acquire_owned().await.ok();
    }
}

async fn accept_loop(listener: TcpListener, config: Arc<Config>, tx: Ready) {
    let acceptor = TcpcryptAcceptor::new(config.clone());
    let slots = Arc::new(Semaphore::new(config.max_pending_handshakes));
    let mut handshaking = VecDeque::new();
    loop {
        let Some(permit) = take_slot(&slots, &mut handshaking).await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
            Err(e) if is_resource_shortage(&e) => {
                // Out of descriptors or memory for a moment: wait for some
                // to be released rather than spin.
                tracing::warn!(error = %e, "accept failed; retrying shortly");
                drop(permit);
                tokio::time::sleep(RESOURCE_RETRY).await;
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let (cancel, mut cancelled) = oneshot::channel();
        tokio::spawn(async move {
            let result = tokio::select! {
                result = acceptor.accept_tcp(tcp) => result,
                // Its slot went to a newcomer (see `take_slot`).
                _ = &mut cancelled => return,
            };
            drop(cancelled);
            // The slot is held until the application takes the connection:
            // an application that stops accepting stops the handshakes.
            let _ = tx.send(Ok((peer, result))).await;
            drop(permit);
        });
        handshaking.push_back(Handshaking {
            started: Instant::now(),
            cancel,
        });
        // Ended handshakes leave from the front; a long one there keeps
        // those behind it: they go when the queue has grown.
        if handshaking.len() > 2 * config.max_pending_handshakes {
            handshaking.retain(|h| !h.cancel.is_closed());
        }
    }
}

/// How long the accept loop waits after running out of descriptors or
/// memory.
const RESOURCE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Errors of one incoming connection (it vanished before `accept`) that
/// must not stop the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// The process or the system is out of descriptors, buffers or memory for
/// a moment: the listener waits and goes on.
fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values of a resource shortage (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}
