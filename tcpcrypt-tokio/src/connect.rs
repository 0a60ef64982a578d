//! The connecting side: `TcpcryptStream::connect` (with transparent
//! fallback by reconnecting) and `TcpcryptConnector` over any transport.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs, lookup_host};

use crate::error::{Error, FallbackReason};
use crate::first_write;
use crate::kernel;
use crate::negotiate::{self, ClientEnd, ClientStart};
use crate::path::PathProbe;
use crate::proto::ClientHandshake;
use crate::stream::{AbortFn, TcpcryptStream, abort_tcp};
use crate::{Config, Policy};

/// Runs the connecting side's handshake over a transport the caller owns.
/// No reconnect is possible there, so a spoiled connection is reported as
/// [`Connected::Reconnect`].
///
/// ```no_run
/// use std::sync::Arc;
/// use tcpcrypt_tokio::{Config, Connected, TcpcryptConnector};
///
/// # async fn run() -> std::io::Result<()> {
/// let connector = TcpcryptConnector::new(Arc::new(Config::default()));
/// let tcp = tokio::net::TcpStream::connect("127.0.0.1:8080").await?;
/// match connector.connect(tcp).await? {
///     Connected::Stream(stream) => println!("encrypted: {}", stream.is_encrypted()),
///     Connected::Reconnect(reason) => println!("connect again in plain TCP: {reason}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TcpcryptConnector {
    config: Arc<Config>,
}

/// The outcome of [`TcpcryptConnector::connect`].
#[derive(Debug)]
pub enum Connected<IO> {
    /// A usable stream: encrypted, or plain on this same transport (the
    /// policy allowed it and the peer declined in band).
    Stream(TcpcryptStream<IO>),
    /// The server does not speak tcpcrypt, or ENO had to be disabled after
    /// its answer: this transport is spoiled (the server has read our hello
    /// as data, or may be encrypting). Connect again without tcpcrypt;
    /// except after [`FallbackReason::HelloLate`]: the server speaks
    /// tcpcrypt and our hello came late, so connect again with a new one.
    Reconnect(FallbackReason),
}

/// How many times a hello is sent again on a new connection after the
/// server said it came late (docs/PROTOCOL.md 3.4): each such hello was
/// lost twice in a row, so a third in a row means a path that loses most
/// of what it carries, or a forged answer.
const LATE_HELLO_RETRIES: u32 = 2;

impl TcpcryptConnector {
    /// A connector with this configuration.
    pub fn new(config: Arc<Config>) -> Self {
        TcpcryptConnector { config }
    }

    /// Negotiates on `io`. `peer` names the destination for the resumption
    /// and verdict caches (`None`: no caching).
    pub async fn connect_with_peer<IO>(
        &self,
        io: IO,
        peer: Option<SocketAddr>,
    ) -> io::Result<Connected<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let connected = self.connect_with(io, peer, None, None, None, &[]).await?;
        if let Connected::Reconnect(reason) = &connected {
            if *reason != FallbackReason::HelloLate {
                self.conclude_fallback(peer, reason)?;
            }
        }
        Ok(connected)
    }

    /// Negotiates on a connected TCP socket, as
    /// [`TcpcryptStream::connect`] does: a destination known not to speak
    /// tcpcrypt gets the socket in plain at once; one found not to speak it
    /// now is connected again in plain TCP (under
    /// [`Policy::Opportunistic`]); a protocol error, in the handshake or
    /// later, resets the connection; the stream knows its peer's address.
    /// A socket whose SYN offered ENO ([`offer_in_syn`](crate::offer_in_syn)
    /// before its `connect`) goes on as the kernel negotiated it.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tcpcrypt_tokio::{Config, TcpcryptConnector};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let connector = TcpcryptConnector::new(Arc::new(Config::default()));
    /// let tcp = tokio::net::TcpStream::connect("127.0.0.1:8080").await?;
    /// let stream = connector.connect_tcp(tcp).await?;
    /// println!("encrypted: {}", stream.is_encrypted());
    /// # Ok(()) }
    /// ```
    pub async fn connect_tcp(&self, tcp: TcpStream) -> io::Result<TcpcryptStream<TcpStream>> {
        self.connect_tcp_with_data(tcp, &[]).await
    }

    /// [`connect_tcp`](Self::connect_tcp), then `data` sent as the
    /// application's first bytes: as 0-RTT data with the hello when a
    /// resumption is offered in band (`docs/PROTOCOL.md` 7.1), otherwise
    /// right after the handshake. Whatever the negotiation's outcome (a
    /// fresh exchange, plain TCP on this or a new connection), the peer's
    /// application receives `data` exactly once, or this is an error; when
    /// the connection fails after 0-RTT data left and before the server
    /// said whether it took it, the error is
    /// [`Error::EarlyDataUnconfirmed`](crate::Error::EarlyDataUnconfirmed)
    /// and `data` is not sent again.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tcpcrypt_tokio::{Config, TcpcryptConnector};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let connector = TcpcryptConnector::new(Arc::new(Config::default()));
    /// let tcp = tokio::net::TcpStream::connect("127.0.0.1:8080").await?;
    /// let stream = connector.connect_tcp_with_data(tcp, b"GET / HTTP/1.0\r\n\r\n").await?;
    /// println!("0-RTT: {}", stream.session().is_some_and(|s| s.zero_rtt));
    /// # Ok(()) }
    /// ```
    pub async fn connect_tcp_with_data(
        &self,
        tcp: TcpStream,
        data: &[u8],
    ) -> io::Result<TcpcryptStream<TcpStream>> {
        let mut stream = match kernel::connected(&tcp, &self.config)? {
            Some(connected) => {
                let peer = tcp.peer_addr()?;
                self.connect_kernel(tcp, peer, connected, data).await?
            }
            None => self.connect_in_band(tcp, data).await?,
        };
        send_rest(&mut stream, data).await?;
        Ok(stream)
    }

    /// [`connect_tcp`](Self::connect_tcp) on a socket whose SYN carried
    /// `offer` ([`offer_in_syn_to`](crate::offer_in_syn_to) before its
    /// `connect`): the handshake goes on from that offer, a resumption in
    /// the SYN included.
    pub async fn connect_offered(
        &self,
        tcp: TcpStream,
        offer: kernel::SynOffer,
    ) -> io::Result<TcpcryptStream<TcpStream>> {
        match kernel::connected_offered(&tcp, &self.config, offer)? {
            Some(connected) => {
                let peer = tcp.peer_addr()?;
                self.connect_kernel(tcp, peer, connected, &[]).await
            }
            None => self.connect_in_band(tcp, &[]).await,
        }
    }

    /// [`connect_tcp`](Self::connect_tcp) on a socket the kernel carried
    /// nothing for: the in-band hello, with `early` as 0-RTT data when a
    /// resumption is offered (the stream says how much was delivered).
    async fn connect_in_band(
        &self,
        tcp: TcpStream,
        early: &[u8],
    ) -> io::Result<TcpcryptStream<TcpStream>> {
        let peer = match tcp.peer_addr() {
            Ok(peer) => peer,
            // Ended before anything was said (a server that sent and
            // reset at once): nothing to negotiate. Its bytes, then its
            // reset, are the application's, as on a plain connection, if
            // the policy allows one.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                let reason = FallbackReason::ServerClosed;
                self.check_fallback(None, &reason)?;
                return Ok(TcpcryptStream::plain(tcp, reason, Vec::new()));
            }
            Err(e) => return Err(e),
        };
        let config = &self.config;
        let plain = |tcp: TcpStream, reason| {
            let mut s = TcpcryptStream::plain(tcp, reason, Vec::new());
            s.peer = Some(peer);
            s
        };
        if config.policy == Policy::Opportunistic && config.client_cache.is_legacy(peer) {
            return Ok(plain(tcp, FallbackReason::KnownLegacy));
        }
        let started = std::time::Instant::now();
        let mut tcp = tcp;
        let mut retried = false;
        // This connection's own hello went unanswered before.
        let mut was_silent = false;
        let mut late = 0;
        loop {
            let probe = PathProbe::to(&tcp, peer);
            match self
                .connect_with(tcp, Some(peer), Some(abort_tcp), None, probe, early)
                .await?
            {
                Connected::Stream(mut s) => {
                    s.peer = Some(peer);
                    s.hold = Some(first_write::hold_tcp);
                    if retried || late > 0 {
                        // Every try counts, as for a fallback.
                        s.handshake = started.elapsed();
                    }
                    return Ok(s);
                }
                Connected::Reconnect(FallbackReason::HelloLate) if late < LATE_HELLO_RETRIES => {
                    // The server speaks tcpcrypt; our hello was lost on
                    // the way and came after its wait.
                    tracing::debug!(%peer, "the hello came late; sending a new one");
                    late += 1;
                    tcp = TcpStream::connect(peer).await?;
                    continue;
                }
                Connected::Reconnect(reason) => {
                    // Two hellos of this connection in a row unanswered
                    // (the first through the long wait): the destination
                    // stopped speaking tcpcrypt, or a path eats its
                    // answers. Not another connection's silence: those
                    // that waited out one busy spell together would each
                    // take it for a second.
                    let silent = reason == FallbackReason::ServerSilent;
                    let silent_again = silent && was_silent;
                    was_silent |= silent;
                    if silent {
                        // The try again, and the next connections for a
                        // while, wait only the server hello timeout.
                        config.client_cache.mark_silent(peer);
                    }
                    // A reset, a close or silence from a destination that
                    // negotiated tcpcrypt before is weak evidence (one
                    // forged packet makes it), and so are other bytes: a
                    // tcpcrypt server that speaks first sends its greeting
                    // in plain when our hello came after its wait. The
                    // hello is tried again, once, on a new connection.
                    let ambiguous =
                        !reason.is_conclusive() || reason == FallbackReason::ServerSentOtherBytes;
                    if !retried
                        && ambiguous
                        && config.client_cache.was_encrypted(peer)
                        && !config.client_cache.stopped_speaking(peer)
                    {
                        tracing::debug!(%peer, %reason, "trying the hello again");
                        retried = true;
                        tcp = TcpStream::connect(peer).await?;
                        continue;
                    }
                    self.conclude_fallback(Some(peer), &reason)?;
                    if silent_again {
                        // Reported above as a possible downgrade, as its
                        // next fallbacks are; from now on each costs what
                        // any silent server's costs.
                        config.client_cache.mark_stopped_speaking(peer);
                    }
                    tracing::debug!(%peer, %reason, "falling back to plain TCP");
                    let tcp = TcpStream::connect(peer).await?;
                    // Not after the server's own end: a server that ends
                    // every connection at once ends this one too, and the
                    // application learns it as without us.
                    if reason.is_legacy_evidence() && reason != FallbackReason::ServerClosed {
                        negotiate::still_up(&tcp).await?;
                    }
                    let mut s = plain(tcp, reason);
                    // What it took to find the server plain, every try.
                    s.handshake = started.elapsed();
                    return Ok(s);
                }
            }
        }
    }

    /// A connection whose SYNs the kernel carried ENO in (or offered it
    /// in): the handshake goes on from Init1, or the connection is plain
    /// at once (`Carriage::Kernel` and a SYN-ACK without ENO), or the
    /// in-band hello is tried on it (`Carriage::Auto`: the server may be an
    /// in-band-only host, or the program is not attached to this socket's
    /// cgroup), with `early` as 0-RTT data when it resumes.
    async fn connect_kernel(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        connected: kernel::Connected,
        early: &[u8],
    ) -> io::Result<TcpcryptStream<TcpStream>> {
        let started = std::time::Instant::now();
        match connected {
            kernel::Connected::Negotiated(hs) => {
                match self
                    .connect_with(tcp, Some(peer), Some(abort_tcp), Some(hs), None, &[])
                    .await?
                {
                    Connected::Stream(mut s) => {
                        s.peer = Some(peer);
                        s.hold = Some(first_write::hold_tcp);
                        s.kernel_carried = s.is_encrypted();
                        Ok(s)
                    }
                    Connected::Reconnect(FallbackReason::Disabled(
                        crate::proto::DisableReason::ResumptionMismatch,
                    )) => {
                        // B answered our resumption with another half: a
                        // stale or forged entry in its kernel's map. Never
                        // plain for that: a fresh exchange on a new
                        // connection (the ticket is spent).
                        tracing::warn!(%peer, "resumption in the SYN answered with another identifier; connecting again without it");
                        let tcp = TcpStream::connect(peer).await?;
                        self.connect_in_band(tcp, &[]).await
                    }
                    Connected::Reconnect(FallbackReason::ServerClosed)
                        if self.config.carriage == crate::Carriage::Auto =>
                    {
                        // The server ended the connection before answering
                        // Init1: a path that strips ENO after the SYNs
                        // makes it disable ENO and reset. The in-band hello
                        // gets past such a path.
                        tracing::warn!(%peer, "the server reset a connection negotiated in the SYNs (a path stripping ENO from later segments?); connecting again in band");
                        let tcp = TcpStream::connect(peer).await?;
                        self.connect_in_band(tcp, early).await
                    }
                    Connected::Reconnect(reason) => {
                        // ENO disabled by a rule the server cannot know:
                        // the server may be waiting for Init1, so this
                        // connection is spoiled; a plain socket offers
                        // nothing in its SYN. The server answered ENO: no
                        // legacy verdict is remembered.
                        self.check_fallback(Some(peer), &reason)?;
                        let mut s = TcpcryptStream::plain(
                            TcpStream::connect(peer).await?,
                            reason,
                            Vec::new(),
                        );
                        s.peer = Some(peer);
                        s.hold = Some(first_write::hold_tcp);
                        s.handshake = started.elapsed();
                        Ok(s)
                    }
                }
            }
            kernel::Connected::PeerSentNone if self.config.carriage == crate::Carriage::Kernel => {
                let reason = FallbackReason::NoEnoInSynAck;
                self.check_fallback(Some(peer), &reason)?;
                let mut s = TcpcryptStream::plain(tcp, reason, Vec::new());
                s.peer = Some(peer);
                s.hold = Some(first_write::hold_tcp);
                Ok(s)
            }
            kernel::Connected::PeerSentNone | kernel::Connected::NotCarried => {
                self.connect_in_band(tcp, early).await
            }
        }
    }

    /// [`connect_with_peer`](Self::connect_with_peer), answering a protocol
    /// error with `abort` (RFC 8548 3.3), during the handshake as
    /// afterwards; `kernel` is a handshake the kernel carriage started;
    /// `early`, the application's first bytes for 0-RTT data.
    async fn connect_with<IO>(
        &self,
        mut io: IO,
        peer: Option<SocketAddr>,
        abort: Option<AbortFn<IO>>,
        kernel: Option<Box<ClientHandshake>>,
        probe: Option<PathProbe>,
        early: &[u8],
    ) -> io::Result<Connected<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = &self.config;
        if config.policy == Policy::Off {
            return Ok(Connected::Stream(TcpcryptStream::plain(
                io,
                FallbackReason::PolicyOff,
                Vec::new(),
            )));
        }
        let start = match kernel {
            Some(hs) => ClientStart::Kernel(hs),
            None => ClientStart::InBand(peer.and_then(|p| config.client_cache.take_ticket(p))),
        };
        let started = std::time::Instant::now();
        let end =
            match negotiate::client(&mut io, config, start, probe, early, self.hello_wait(peer))
                .await
            {
                Ok(end) => end,
                Err(e) => {
                    if let Some(abort) = abort.filter(|_| Error::aborts(&e)) {
                        abort(&io);
                    }
                    // A server that answered with other bytes is legacy all the
                    // same: later connections go plain at once. Unless it was
                    // seen encrypted: a tcpcrypt server that speaks first sends
                    // its banner in plain when the hello came after its wait.
                    if let (Some(Error::EarlyDataUnconfirmed(reason)), Some(p)) =
                        (Error::from_io(&e), peer)
                    {
                        if *reason == FallbackReason::ServerSentOtherBytes
                            && config.policy == Policy::Opportunistic
                            && !config.client_cache.was_encrypted(p)
                        {
                            config.client_cache.mark_legacy(p, true);
                        }
                    }
                    return Err(e);
                }
            };
        match end {
            ClientEnd::Encrypted(mut session, leftover, early_delivered) => {
                if let Some(p) = peer {
                    config.client_cache.mark_encrypted(p);
                    if let Some(ticket) = session.resumption.take() {
                        config.client_cache.store_ticket(p, ticket);
                    }
                }
                tracing::debug!(peer = ?peer, session_id = %session.info.session_id, resumed = session.info.resumed, "tcpcrypt session established");
                let mut stream = TcpcryptStream::encrypted(io, *session, leftover);
                stream.abort = abort;
                stream.config = Some(self.config.clone());
                stream.handshake = started.elapsed();
                stream.early_delivered = early_delivered;
                Ok(Connected::Stream(stream))
            }
            ClientEnd::PlainHere(reason, leftover) => {
                self.check_fallback(peer, &reason)?;
                let mut stream = TcpcryptStream::plain(io, reason, leftover);
                stream.handshake = started.elapsed();
                Ok(Connected::Stream(stream))
            }
            ClientEnd::Reconnect(reason) => {
                if reason.is_legacy_evidence() {
                    negotiate::let_go_of_legacy(&mut io).await;
                }
                Ok(Connected::Reconnect(reason))
            }
        }
    }

    /// Negotiates on `io` without caching.
    pub async fn connect<IO>(&self, io: IO) -> io::Result<Connected<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connect_with_peer(io, None).await
    }

    /// Settles a fallback that needs a new connection: the policy's
    /// verdict, then the legacy verdict remembered for `peer` (for its
    /// full lifetime only on conclusive evidence).
    fn conclude_fallback(
        &self,
        peer: Option<SocketAddr>,
        reason: &FallbackReason,
    ) -> io::Result<()> {
        self.check_fallback(peer, reason)?;
        if let Some(p) = peer {
            self.config
                .client_cache
                .mark_legacy(p, reason.is_conclusive());
        }
        Ok(())
    }

    /// How long a silent server may take to answer the hello. A server
    /// that answers only once its program accepts is silent while the
    /// program is busy, as a legacy server is: a destination that
    /// negotiated tcpcrypt before, or one the policy could not take plain
    /// anyway, gets the handshake's whole time, so that a busy server is
    /// neither downgraded nor refused; unless it stayed silent through
    /// that lately (`docs/PROTOCOL.md`, "A silent server").
    fn hello_wait(&self, peer: Option<SocketAddr>) -> std::time::Duration {
        let config = &self.config;
        let cache = &config.client_cache;
        let patient = (config.policy == Policy::Mandatory
            || peer.is_some_and(|p| cache.was_encrypted(p)))
            && !peer.is_some_and(|p| cache.silent_lately(p) || cache.stopped_speaking(p));
        if patient {
            config.handshake_timeout
        } else {
            config.server_hello_timeout
        }
    }

    /// Applies the policy to a fallback: refuses it under `Mandatory`,
    /// reports (and optionally refuses) a possible downgrade.
    fn check_fallback(&self, peer: Option<SocketAddr>, reason: &FallbackReason) -> io::Result<()> {
        let config = &self.config;
        if config.policy == Policy::Mandatory {
            return Err(Error::EncryptionRequired(reason.clone()).into());
        }
        if let Some(p) = peer.filter(|p| config.client_cache.was_encrypted(*p)) {
            tracing::warn!(peer = %p, %reason, "destination negotiated tcpcrypt before and now falls back to plain TCP: possible downgrade attack");
            if config.refuse_downgrade {
                return Err(Error::Downgrade {
                    peer: p,
                    reason: reason.clone(),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Sends what 0-RTT data did not deliver of the application's first
/// bytes.
async fn send_rest(stream: &mut TcpcryptStream<TcpStream>, data: &[u8]) -> io::Result<()> {
    let rest = &data[stream.early_delivered.min(data.len())..];
    if !rest.is_empty() {
        stream.write_all(rest).await?;
    }
    Ok(())
}

async fn tcp_connect(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "no addresses to connect to")
    }))
}

impl TcpcryptStream<TcpStream> {
    /// Resolves `addr`, connects (IPv4 or IPv6), and negotiates tcpcrypt.
    ///
    /// Under [`Policy::Opportunistic`], a server that does not speak
    /// tcpcrypt costs one extra connection the first time: the stream is
    /// connected again in plain TCP, transparently, and the verdict is
    /// remembered so that later connections go plain at once. Under
    /// [`Policy::Mandatory`] that is an error instead, and no application
    /// byte has been sent.
    pub async fn connect(addr: impl ToSocketAddrs, config: &Arc<Config>) -> io::Result<Self> {
        Self::connect_with_data(addr, config, &[]).await
    }

    /// [`connect`](Self::connect), then `data` sent as the application's
    /// first bytes: as 0-RTT data with the hello when a resumption secret
    /// for the destination is at hand (the server may answer before the
    /// handshake's round trip is over), otherwise right after the
    /// handshake. Whatever the outcome, the server's application receives
    /// `data` exactly once, or this is an error (`docs/PROTOCOL.md` 7.1):
    /// [`Error::EarlyDataUnconfirmed`](crate::Error::EarlyDataUnconfirmed)
    /// when the connection failed after 0-RTT data left and before the
    /// server said whether it took it (it may have: `data` is not sent
    /// again).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tcpcrypt_tokio::{Config, TcpcryptStream};
    /// use tokio::io::AsyncReadExt;
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let config = Arc::new(Config::default());
    /// let mut s = TcpcryptStream::connect_with_data("127.0.0.1:8080", &config, b"PING\r\n").await?;
    /// let mut reply = [0u8; 6];
    /// s.read_exact(&mut reply).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_data(
        addr: impl ToSocketAddrs,
        config: &Arc<Config>,
        data: &[u8],
    ) -> io::Result<Self> {
        let addrs: Vec<SocketAddr> = lookup_host(addr).await?.collect();
        let connector = TcpcryptConnector::new(config.clone());
        // The kernel carriage first, where it may be used: ENO in the SYN.
        let mut last = None;
        for &addr in &addrs {
            if config.policy == Policy::Opportunistic && config.client_cache.is_legacy(addr) {
                break;
            }
            match kernel::connect(addr, config).await {
                Ok(Some((tcp, connected))) => {
                    let mut stream = connector.connect_kernel(tcp, addr, connected, data).await?;
                    send_rest(&mut stream, data).await?;
                    return Ok(stream);
                }
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        // Every address refused the kernel path's connect: connecting
        // again in band would only meet the same refusals.
        if let Some(e) = last {
            return Err(e);
        }
        let tcp = tcp_connect(&addrs).await?;
        connector.connect_tcp_with_data(tcp, data).await
    }
}
