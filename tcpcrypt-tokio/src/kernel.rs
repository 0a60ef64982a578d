//! The kernel carriage (feature `kernel`, Linux): sockets made here offer
//! ENO in the SYN, or answer it in the SYN-ACK, through the BPF program of
//! `tcpcrypt kernel enable`, and the negotiation it recorded decides how
//! the handshake starts. Without the program (not enabled, or not attached
//! to this process's cgroup) every socket behaves as before.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::proto::resumption::ResumeHalf;
use crate::proto::{ClientHandshake, OsRandom, ResumptionSecret, ServerHandshake};
use crate::{Carriage, Config, Policy};

/// What the kernel negotiated for a connected socket.
pub(crate) enum Connected {
    /// ENO in both SYNs: the handshake, fed B's option, continues in the
    /// stream with Init1.
    Negotiated(Box<ClientHandshake>),
    /// The SYN-ACK carried no ENO option.
    PeerSentNone,
    /// The kernel did not carry ENO for this socket.
    NotCarried,
}

/// What the BPF program recorded for a socket.
#[cfg_attr(
    not(all(feature = "kernel", target_os = "linux")),
    allow(dead_code, reason = "only the kernel build records negotiations")
)]
enum Recorded {
    /// ENO in both SYNs: A's SYN option, then B's SYN-ACK option; whether
    /// A's third segment carried ENO, and the listener's socket cookie
    /// (accepting side).
    Negotiated(Vec<u8>, Vec<u8>, bool, Option<u64>),
    /// No ENO in the SYN-ACK, or one that cannot enable it.
    PeerSentNone,
    /// Accepting side: A believes ENO is on and no answer of ours is
    /// known.
    Unanswered,
    /// The SYN went without ENO (no room, Fast Open).
    LeftOut(&'static str),
    NotCarried,
}

#[cfg(all(feature = "kernel", target_os = "linux"))]
mod imp {
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tcpcrypt_kernel::{Outcome, RESUME_NONCE, ResumeEntry, Resumptions, Sockets};

    use super::Recorded;
    use crate::proto::resumption::ResumeHalf;
    use crate::proto::{OsRandom, RandomSource};

    /// The resumption identifiers' map, once opened (dropped on a failure,
    /// to be opened again: a disable and an enable replace it).
    static RESUMPTIONS: Mutex<Option<Arc<Resumptions>>> = Mutex::new(None);

    fn resumptions() -> Option<Arc<Resumptions>> {
        let mut held = RESUMPTIONS.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            *held = Resumptions::open().ok().map(Arc::new);
        }
        held.clone()
    }

    /// Lets the program answer A's half `peer` for `listener` with this
    /// side's half `own` until `ttl` from now.
    pub fn remember(listener: u64, peer: &ResumeHalf, tep: u8, own: &ResumeHalf, ttl: Duration) {
        let Some(map) = resumptions() else { return };
        let mut nonce = [0u8; RESUME_NONCE];
        if OsRandom.fill(&mut nonce).is_err() {
            return;
        }
        let entry = ResumeEntry {
            peer_half: *peer,
            listener,
            tep,
            own_half: *own,
            nonce,
            ttl,
        };
        if let Err(e) = map.insert(&entry) {
            tracing::debug!(error = %e, "the kernel carriage refused a resumption identifier");
            *RESUMPTIONS.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// The program stops answering to A's half `peer`.
    pub fn forget(peer: &ResumeHalf) {
        if let Some(map) = RESUMPTIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            map.remove(peer);
        }
    }

    /// What was last found at the pin, and when.
    enum Found {
        /// The map, its pin last found to be the same then.
        Map(Arc<Sockets>, Instant),
        /// No pin: the kernel carriage is not enabled (why, in words).
        Nothing(String, Instant),
    }

    static SOCKETS: Mutex<Option<Found>> = Mutex::new(None);

    /// How often the pin is looked at again, present or missing: a `stat`
    /// per connection was a tenth of the cost of a connection to a legacy
    /// server. An enable is noticed within it by `Carriage::Auto`; until
    /// then this process neither offers nor answers ENO there, so its
    /// listeners (no answer template) and its connections stay in band,
    /// consistently. `Carriage::Kernel` looks again at once.
    const RECHECK: Duration = Duration::from_secs(1);

    /// The pinned per-socket map, taken once per connection.
    pub struct Kernel(Arc<Sockets>);

    /// The map, when the kernel carriage is enabled on this machine, opened
    /// again when it was replaced (a disable and an enable: noticed within
    /// `RECHECK`); why not otherwise (not enabled, or no permission).
    /// `needed`: the caller requires the carriage (`Carriage::Kernel`), and
    /// a pin found missing is looked for again at once (an enable made a
    /// moment ago, by this process perhaps, counts).
    pub fn open(needed: bool) -> Result<Kernel, String> {
        let mut held = SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(Found::Map(s, checked)) => {
                if checked.elapsed() < RECHECK {
                    return Ok(Kernel(s.clone()));
                }
                if s.is_current() {
                    *checked = Instant::now();
                    return Ok(Kernel(s.clone()));
                }
            }
            Some(Found::Nothing(why, checked)) if !needed && checked.elapsed() < RECHECK => {
                return Err(why.clone());
            }
            _ => {}
        }
        *held = None;
        match Sockets::open() {
            Ok(opened) => {
                let opened = Arc::new(opened);
                *held = Some(Found::Map(opened.clone(), Instant::now()));
                Ok(Kernel(opened))
            }
            Err(e) => {
                let why = e.to_string();
                if matches!(
                    e,
                    tcpcrypt_kernel::Error::NotEnabled | tcpcrypt_kernel::Error::NoBpfFs
                ) {
                    *held = Some(Found::Nothing(why.clone(), Instant::now()));
                }
                Err(why)
            }
        }
    }

    impl Kernel {
        pub fn offer(&self, socket: &impl AsRawFd, option: &[u8]) -> Result<(), String> {
            self.0.offer(socket, option).map_err(|e| e.to_string())
        }

        pub fn listen(
            &self,
            socket: BorrowedFd<'_>,
            global: u8,
            teps: &[u8],
        ) -> Result<(), String> {
            self.0
                .listen(&socket, global, teps)
                .map_err(|e| e.to_string())
        }

        /// Whether a listening socket's template is in the program's
        /// table: `false` only when the table is full.
        pub fn has_room_for(&self, listener: &impl AsRawFd) -> bool {
            self.0.listening(listener) != tcpcrypt_kernel::Listening::TableFull
        }

        pub fn recorded(&self, socket: &impl AsRawFd) -> Recorded {
            match self.0.outcome(socket) {
                Outcome::Negotiated {
                    syn,
                    synack,
                    ack_had_eno,
                    listener,
                } => Recorded::Negotiated(syn, synack, ack_had_eno, listener),
                Outcome::PeerSentNone | Outcome::Rejected => Recorded::PeerSentNone,
                Outcome::Unanswered => Recorded::Unanswered,
                Outcome::NoSpace => Recorded::LeftOut("the SYN had no room for the ENO option"),
                Outcome::FastOpen => Recorded::LeftOut("the SYN carried data (Fast Open)"),
                _ => Recorded::NotCarried,
            }
        }
    }
}

/// No kernel carriage in this build (feature `kernel` off, or not Linux).
#[cfg(not(all(feature = "kernel", target_os = "linux")))]
mod imp {
    use std::os::fd::{AsRawFd, BorrowedFd};

    use super::Recorded;

    /// Never made: there is no map to open.
    pub enum Kernel {}

    pub fn open(_: bool) -> Result<Kernel, String> {
        Err("this build has no kernel carriage (feature `kernel`, Linux)".into())
    }

    impl Kernel {
        pub fn offer(&self, _: &impl AsRawFd, _: &[u8]) -> Result<(), String> {
            match *self {}
        }

        pub fn listen(&self, _: BorrowedFd<'_>, _: u8, _: &[u8]) -> Result<(), String> {
            match *self {}
        }

        pub fn has_room_for(&self, _: &impl AsRawFd) -> bool {
            match *self {}
        }

        pub fn recorded(&self, _: &impl AsRawFd) -> Recorded {
            match *self {}
        }
    }

    pub fn remember(
        _: u64,
        _: &crate::proto::resumption::ResumeHalf,
        _: u8,
        _: &crate::proto::resumption::ResumeHalf,
        _: std::time::Duration,
    ) {
    }

    pub fn forget(_: &crate::proto::resumption::ResumeHalf) {}
}

fn wants_kernel(config: &Config) -> bool {
    config.carriage != Carriage::InBand && config.policy != Policy::Off
}

fn unavailable(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("kernel carriage unavailable: {why}"),
    )
}

/// The kernel carriage's map, where `config` may use it: `None` where it
/// may not or is not enabled, an error where `Carriage::Kernel` needs it.
fn open_for(config: &Config) -> io::Result<Option<imp::Kernel>> {
    if !wants_kernel(config) {
        return Ok(None);
    }
    match imp::open(config.carriage == Carriage::Kernel) {
        Ok(k) => Ok(Some(k)),
        Err(why) if config.carriage == Carriage::Kernel => Err(unavailable(why)),
        Err(_) => Ok(None),
    }
}

/// Writes the SYN-form ENO option `config` offers into `socket`'s record,
/// before its `connect`, through a map at hand: the handshake whose option
/// the SYN will carry (if the program is attached to the socket's cgroup:
/// [`connected`] tells); `None` when the map refused it.
fn offer_with(
    kernel: &imp::Kernel,
    socket: &impl AsRawFd,
    config: &Config,
    ticket: Option<ResumptionSecret>,
) -> io::Result<Option<ClientHandshake>> {
    let hs = ClientHandshake::kernel(config.handshake.clone(), ticket, Box::new(OsRandom))
        .map_err(crate::Error::from)?;
    match kernel.offer(socket, hs.syn_option()) {
        Ok(()) => Ok(Some(hs)),
        Err(e) if config.carriage == Carriage::Kernel => Err(io::Error::other(e)),
        Err(e) => {
            tracing::debug!(error = %e, "the kernel carriage refused the offer");
            Ok(None)
        }
    }
}

/// What the kernel negotiated for a connected socket whose SYN offered ENO
/// (made by [`offer_with`]); `None` when the kernel carried nothing for it (no
/// offer, or the program is not attached to its cgroup) and the in-band
/// path decides.
pub(crate) fn connected(tcp: &TcpStream, config: &Config) -> io::Result<Option<Connected>> {
    match open_for(config)? {
        Some(kernel) => connected_with(&kernel, tcp, config, &mut None),
        None => Ok(None),
    }
}

/// [`connected`] through a map at hand; `offered` is the handshake whose
/// option the SYN carried, when known (made again otherwise: a fresh
/// offer is the same bytes), and is left in place unless the kernel
/// negotiated.
fn connected_with(
    kernel: &imp::Kernel,
    tcp: &TcpStream,
    config: &Config,
    offered: &mut Option<ClientHandshake>,
) -> io::Result<Option<Connected>> {
    Ok(Some(match kernel.recorded(tcp) {
        Recorded::Negotiated(syn, synack, _, _) => {
            let mut hs = match offered.take() {
                Some(hs) => hs,
                None => ClientHandshake::kernel(config.handshake.clone(), None, Box::new(OsRandom))
                    .map_err(crate::Error::from)?,
            };
            // The offer was made for another configuration: its transcript
            // is not this one's.
            if hs.syn_option() != syn.as_slice() {
                return Err(io::Error::other(
                    "the socket's SYN offered ENO for another configuration",
                ));
            }
            hs.kernel_synack(&synack).map_err(crate::Error::from)?;
            Connected::Negotiated(Box::new(hs))
        }
        Recorded::PeerSentNone => Connected::PeerSentNone,
        Recorded::LeftOut(why) if config.carriage == Carriage::Kernel => {
            return Err(io::Error::other(format!("kernel carriage: {why}")));
        }
        Recorded::NotCarried if config.carriage == Carriage::Kernel => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's ENO program is not attached to this socket's cgroup",
            ));
        }
        Recorded::LeftOut(_) | Recorded::NotCarried | Recorded::Unanswered => return Ok(None),
    }))
}

/// Connects to `addr` offering ENO in the SYN when the kernel carriage
/// may be used; `None` when it may not (the caller connects as before).
/// One look at the map's pin, one handshake, for the whole connection.
pub(crate) async fn connect(
    addr: SocketAddr,
    config: &Config,
) -> io::Result<Option<(TcpStream, Connected)>> {
    let Some(kernel) = open_for(config)? else {
        return Ok(None);
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A resumption ticket for this destination goes in the SYN (RFC 8548
    // 3.5 as written), when it fits.
    let ticket = match config.policy {
        Policy::Off => None,
        _ => config.client_cache.take_ticket(addr),
    };
    let Some(hs) = offer_with(&kernel, &socket, config, ticket)? else {
        return Ok(None);
    };
    let tcp = socket.connect(addr).await?;
    let connected = settle(&kernel, &tcp, config, hs, addr)?;
    Ok(Some((tcp, connected.unwrap_or(Connected::NotCarried))))
}

/// [`connected_with`] for the handshake `hs` whose option the SYN to
/// `peer` carried. A SYN that carried no ENO after all (the program is not
/// attached to this cgroup, no room, Fast Open) used no ticket: it goes
/// back to the cache, to be offered again.
fn settle(
    kernel: &imp::Kernel,
    tcp: &TcpStream,
    config: &Config,
    hs: ClientHandshake,
    peer: SocketAddr,
) -> io::Result<Option<Connected>> {
    let mut offered = Some(hs);
    let connected = connected_with(kernel, tcp, config, &mut offered)?;
    if let Some(ticket) = offered.and_then(ClientHandshake::into_unsent_resumption) {
        config.client_cache.store_ticket(peer, ticket);
    }
    Ok(connected)
}

/// Writes the answer template of `config` into a bound listening
/// socket's record, before its `listen`: `Ok(true)` when the kernel will
/// answer ENO in its SYN-ACKs (if the program is attached to its cgroup).
pub(crate) fn answer(socket: BorrowedFd<'_>, config: &Config) -> io::Result<bool> {
    // The kernel answers with a fixed template: a listener that requires
    // the peer's application-aware bit decides in band instead.
    if !wants_kernel(config) || config.handshake.require_application_aware {
        return Ok(false);
    }
    match imp::open(config.carriage == Carriage::Kernel) {
        Ok(kernel) => {
            let (global, teps) = ServerHandshake::kernel_template(&config.handshake);
            match kernel.listen(socket, global, &teps) {
                Ok(()) => Ok(true),
                Err(e) if config.carriage == Carriage::Kernel => Err(io::Error::other(e)),
                Err(e) => {
                    tracing::debug!(error = %e, "the kernel carriage refused the template");
                    Ok(false)
                }
            }
        }
        Err(why) if config.carriage == Carriage::Kernel => Err(unavailable(why)),
        Err(_) => Ok(false),
    }
}

/// A listener on `addr` that answers ENO in the SYN-ACK when the kernel
/// carriage may be used; a plain one otherwise.
pub(crate) fn listen(addr: SocketAddr, config: &Config) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let answering = answer(socket.as_fd(), config)?;
    let listener = socket.listen(1024)?;
    // The program's table of listeners is shared by the whole machine: a
    // full one leaves this listener's SYN-ACKs without ENO.
    if answering
        && let Ok(kernel) = imp::open(false)
        && !kernel.has_room_for(&listener)
    {
        const FULL: &str = "the kernel carriage's table of listeners is full: \
            this listener's SYN-ACKs carry no ENO";
        if config.carriage == Carriage::Kernel {
            return Err(unavailable(FULL.into()));
        }
        tracing::warn!(%addr, "{FULL}; clients negotiate in band");
    }
    Ok(listener)
}

/// What the kernel did for an accepted socket.
pub(crate) enum Accepted {
    /// ENO in both SYNs and in A's third segment: A's SYN option, the
    /// answer the kernel sent, and the listener's socket cookie.
    Negotiated(Vec<u8>, Vec<u8>, Option<u64>),
    /// A believes ENO is on but this side cannot go on with it (the answer
    /// was lost, or this configuration does not negotiate): the
    /// connection must be reset, never taken for plain.
    Unusable(&'static str),
    /// The in-band path decides.
    InBand,
    /// Both SYNs carried ENO and A's first ACK did not: ENO is disabled
    /// here (RFC 8547 4.6) and the in-band path decides. A that disabled
    /// it itself sends a hello or plain data; A whose option a middlebox
    /// stripped believes ENO is on and sends Init1, which is never data.
    AckWithoutEno,
}

/// Whatever the configuration says: the listener may have answered ENO
/// (a listener bound for another configuration).
pub(crate) fn accepted(tcp: &TcpStream, config: &Config) -> Accepted {
    let Ok(kernel) = imp::open(false) else {
        return Accepted::InBand;
    };
    match kernel.recorded(tcp) {
        Recorded::Negotiated(..) if !wants_kernel(config) => {
            Accepted::Unusable("the kernel negotiated ENO for a listener whose policy is off")
        }
        // RFC 8547 4.6: A's first ACK without ENO disables it.
        Recorded::Negotiated(syn, synack, true, listener) => {
            Accepted::Negotiated(syn, synack, listener)
        }
        Recorded::Negotiated(_, _, false, _) => Accepted::AckWithoutEno,
        Recorded::Unanswered => {
            Accepted::Unusable("the client negotiated ENO in its SYN and our answer is lost")
        }
        _ => Accepted::InBand,
    }
}

/// Prepares a socket that its owner will `connect` itself (a relay that
/// receives the sockets of other programs, a runtime of its own): where
/// the kernel carriage may be used, its SYN offers ENO as `config` would.
/// [`TcpcryptConnector::connect_tcp`](crate::TcpcryptConnector::connect_tcp)
/// on the connected socket then goes on as the kernel negotiated.
///
/// `Ok(false)`: the socket offers nothing (the carriage is
/// [`Carriage::InBand`], the policy is off, or `tcpcrypt kernel enable`
/// has not run); the in-band hello is used as before. Under
/// [`Carriage::Kernel`] that is an error instead.
///
/// ```no_run
/// use std::sync::Arc;
/// use tcpcrypt_tokio::{Config, TcpcryptConnector, offer_in_syn};
///
/// # async fn run() -> std::io::Result<()> {
/// let config = Arc::new(Config::default());
/// let socket = tokio::net::TcpSocket::new_v4()?;
/// offer_in_syn(&socket, &config)?;
/// let tcp = socket.connect("127.0.0.1:8080".parse().unwrap()).await?;
/// let stream = TcpcryptConnector::new(config).connect_tcp(tcp).await?;
/// println!("carried by {:?}", stream.carriage());
/// # Ok(()) }
/// ```
pub fn offer_in_syn(socket: &impl AsFd, config: &Config) -> io::Result<bool> {
    // The handshake is made again from the configuration when the socket
    // is connected: only a fresh offer is the same bytes again, so no
    // ticket goes in this SYN.
    match open_for(config)? {
        Some(kernel) => Ok(offer_with(&kernel, &socket.as_fd(), config, None)?.is_some()),
        None => Ok(false),
    }
}

/// ENO offered in a socket's SYN by [`offer_in_syn_to`], resumption ticket
/// included: the handshake it started, for
/// [`TcpcryptConnector::connect_offered`](crate::TcpcryptConnector::connect_offered)
/// once the socket is connected (only this handshake can go on from a SYN
/// that named a ticket: its nonce was random).
#[derive(Debug)]
pub struct SynOffer {
    pub(crate) hs: Box<ClientHandshake>,
    pub(crate) peer: SocketAddr,
}

/// [`offer_in_syn`] for a socket its owner will connect to `peer`: the
/// SYN names the resumption ticket held for `peer` too (RFC 8548 3.5), and
/// the connected socket goes to
/// [`TcpcryptConnector::connect_offered`](crate::TcpcryptConnector::connect_offered)
/// with the returned offer. `Ok(None)`: nothing offered (as for
/// [`offer_in_syn`]). An offer that is never used spends its ticket: the
/// next connection makes a fresh exchange.
///
/// ```no_run
/// use std::sync::Arc;
/// use tcpcrypt_tokio::{Config, TcpcryptConnector, offer_in_syn_to};
///
/// # async fn run() -> std::io::Result<()> {
/// let config = Arc::new(Config::default());
/// let peer = "127.0.0.1:8080".parse().unwrap();
/// let socket = tokio::net::TcpSocket::new_v4()?;
/// let offer = offer_in_syn_to(&socket, &config, peer)?;
/// let tcp = socket.connect(peer).await?;
/// let connector = TcpcryptConnector::new(config);
/// let stream = match offer {
///     Some(offer) => connector.connect_offered(tcp, offer).await?,
///     None => connector.connect_tcp(tcp).await?,
/// };
/// println!("resumed: {:?}", stream.session().map(|s| s.resumed));
/// # Ok(()) }
/// ```
pub fn offer_in_syn_to(
    socket: &impl AsFd,
    config: &Config,
    peer: SocketAddr,
) -> io::Result<Option<SynOffer>> {
    let Some(kernel) = open_for(config)? else {
        return Ok(None);
    };
    let ticket = config.client_cache.take_ticket(peer);
    Ok(
        offer_with(&kernel, &socket.as_fd(), config, ticket)?.map(|hs| SynOffer {
            hs: Box::new(hs),
            peer,
        }),
    )
}

/// What the kernel negotiated for a socket connected after
/// [`offer_in_syn_to`]; `None` when it carried nothing (the ticket then
/// goes back to the cache: it was never offered).
pub(crate) fn connected_offered(
    tcp: &TcpStream,
    config: &Config,
    offer: SynOffer,
) -> io::Result<Option<Connected>> {
    let Some(kernel) = open_for(config)? else {
        return Ok(None);
    };
    settle(&kernel, tcp, config, *offer.hs, offer.peer)
}

/// Prepares a bound socket that its owner will `listen` on itself: where
/// the kernel carriage may be used, its SYN-ACKs answer ENO as `config`
/// would, and
/// [`TcpcryptAcceptor::accept_tcp`](crate::TcpcryptAcceptor::accept_tcp)
/// on each accepted socket goes on as the kernel negotiated.
/// [`bind_tcp`](crate::bind_tcp) does this for a socket it makes.
///
/// `Ok(false)`: nothing is answered in the SYN-ACK (as for
/// [`offer_in_syn`]); a listener that requires the application-aware bit
/// always decides in band.
///
/// ```no_run
/// use tcpcrypt_tokio::{Config, answer_in_synack};
///
/// # fn run() -> std::io::Result<()> {
/// let socket = tokio::net::TcpSocket::new_v4()?;
/// socket.bind("127.0.0.1:7777".parse().unwrap())?;
/// answer_in_synack(&socket, &Config::default())?;
/// let listener = socket.listen(1024)?;
/// # Ok(()) }
/// ```
pub fn answer_in_synack(socket: &impl AsFd, config: &Config) -> io::Result<bool> {
    answer(socket.as_fd(), config)
}

/// After a session accepted over the kernel carriage: the secret the
/// server cache now holds under `peer` (A's half of the next identifier)
/// may be answered by the kernel in the SYN-ACK of A's next connection to
/// `listener`. Its entry leaves the kernel's map when the secret leaves the
/// cache (the cache's removal hook, set here once), and a little before
/// the cache's own expiry.
pub(crate) fn remember_resumption(config: &Config, listener: u64, peer: &ResumeHalf) {
    // A listener that ignores resumption requests (`resumption(false)`)
    // must not have the kernel answer one for it.
    if !config.handshake.resumption.resume {
        return;
    }
    let cache = &config.server_cache;
    let Some((tep, own)) = cache.answer_for(config.handshake.backend, peer) else {
        return;
    };
    cache.on_removal(std::sync::Arc::new(|half: &ResumeHalf| imp::forget(half)));
    let ttl = config
        .resumption_ttl
        .saturating_sub(std::time::Duration::from_secs(1));
    imp::remember(listener, peer, tep.id(), &own, ttl);
}
