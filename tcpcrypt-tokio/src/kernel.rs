//! The kernel carriage (feature `kernel`, Linux): sockets made here offer
//! ENO in the SYN, or answer it in the SYN-ACK, through the BPF program of
//! `tcpcrypt kernel enable`, and the negotiation it recorded decides how
//! the handshake starts. Without the program (not enabled, or not attached
//! to this process's cgroup) every socket behaves as before.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::proto::{ClientHandshake, OsRandom, ServerHandshake};
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
    /// A's third segment carried ENO (accepting side).
    Negotiated(Vec<u8>, Vec<u8>, bool),
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
    use std::os::fd::AsRawFd;
    use std::sync::{Arc, Mutex};

    use tcpcrypt_kernel::{Outcome, Sockets};

    use super::Recorded;

    static SOCKETS: Mutex<Option<Arc<Sockets>>> = Mutex::new(None);

    /// The pinned per-socket map, when the kernel carriage is enabled on
    /// this machine, opened again when it was replaced (a disable and an
    /// enable); why not otherwise (not enabled, or no permission).
    fn open() -> Result<Arc<Sockets>, String> {
        let mut held = SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = held.as_ref().filter(|s| s.is_current()) {
            return Ok(s.clone());
        }
        *held = None;
        let opened = Arc::new(Sockets::open().map_err(|e| e.to_string())?);
        *held = Some(opened.clone());
        Ok(opened)
    }

    fn sockets() -> Option<Arc<Sockets>> {
        open().ok()
    }

    pub fn available() -> bool {
        sockets().is_some()
    }

    pub fn unavailable_because() -> String {
        open().err().unwrap_or_default()
    }

    pub fn offer(socket: &impl AsRawFd, option: &[u8]) -> Result<(), String> {
        let s = sockets().ok_or("the kernel carriage is not enabled")?;
        s.offer(socket, option).map_err(|e| e.to_string())
    }

    pub fn listen(socket: &impl AsRawFd, global: u8, teps: &[u8]) -> Result<(), String> {
        let s = sockets().ok_or("the kernel carriage is not enabled")?;
        s.listen(socket, global, teps).map_err(|e| e.to_string())
    }

    pub fn recorded(socket: &impl AsRawFd) -> Recorded {
        match sockets().map(|s| s.outcome(socket)) {
            Some(Outcome::Negotiated {
                syn,
                synack,
                ack_had_eno,
            }) => Recorded::Negotiated(syn, synack, ack_had_eno),
            Some(Outcome::PeerSentNone | Outcome::Rejected) => Recorded::PeerSentNone,
            Some(Outcome::Unanswered) => Recorded::Unanswered,
            Some(Outcome::NoSpace) => Recorded::LeftOut("the SYN had no room for the ENO option"),
            Some(Outcome::FastOpen) => Recorded::LeftOut("the SYN carried data (Fast Open)"),
            _ => Recorded::NotCarried,
        }
    }
}

/// No kernel carriage in this build (feature `kernel` off, or not Linux).
#[cfg(not(all(feature = "kernel", target_os = "linux")))]
mod imp {
    use std::os::fd::AsRawFd;

    use super::Recorded;

    pub fn available() -> bool {
        false
    }

    pub fn unavailable_because() -> String {
        "this build has no kernel carriage (feature `kernel`, Linux)".into()
    }

    pub fn offer(_: &impl AsRawFd, _: &[u8]) -> Result<(), String> {
        Err("built without the kernel carriage".into())
    }

    pub fn listen(_: &impl AsRawFd, _: u8, _: &[u8]) -> Result<(), String> {
        Err("built without the kernel carriage".into())
    }

    pub fn recorded(_: &impl AsRawFd) -> Recorded {
        Recorded::NotCarried
    }
}

fn wants_kernel(config: &Config) -> bool {
    config.carriage != Carriage::InBand && config.policy != Policy::Off
}

fn unavailable() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "kernel carriage unavailable: {}",
            imp::unavailable_because()
        ),
    )
}

/// Connects to `addr` offering ENO in the SYN when the kernel carriage
/// may be used; `None` when it may not (the caller connects as before).
pub(crate) async fn connect(
    addr: SocketAddr,
    config: &Config,
) -> io::Result<Option<(TcpStream, Connected)>> {
    if !wants_kernel(config) {
        return Ok(None);
    }
    if !imp::available() {
        return match config.carriage {
            Carriage::Kernel => Err(unavailable()),
            _ => Ok(None),
        };
    }
    let mut hs = ClientHandshake::kernel(config.handshake.clone(), Box::new(OsRandom))
        .map_err(crate::Error::from)?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Err(e) = imp::offer(&socket, hs.syn_option()) {
        tracing::debug!(error = %e, "the kernel carriage refused the offer");
        return match config.carriage {
            Carriage::Kernel => Err(io::Error::other(e)),
            _ => Ok(None),
        };
    }
    let tcp = socket.connect(addr).await?;
    let connected = match imp::recorded(&tcp) {
        Recorded::Negotiated(_, synack, _) => {
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
                "the kernel's ENO program is not attached to this process's cgroup",
            ));
        }
        Recorded::LeftOut(_) | Recorded::NotCarried | Recorded::Unanswered => Connected::NotCarried,
    };
    Ok(Some((tcp, connected)))
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
    // The kernel answers with a fixed template: a listener that requires
    // the peer's application-aware bit decides in band instead.
    if wants_kernel(config) && !config.handshake.require_application_aware {
        if imp::available() {
            let (global, teps) = ServerHandshake::kernel_template(&config.handshake);
            if let Err(e) = imp::listen(&socket, global, &teps) {
                if config.carriage == Carriage::Kernel {
                    return Err(io::Error::other(e));
                }
                tracing::debug!(error = %e, "the kernel carriage refused the template");
            }
        } else if config.carriage == Carriage::Kernel {
            return Err(unavailable());
        }
    }
    socket.listen(1024)
}

/// What the kernel did for an accepted socket.
pub(crate) enum Accepted {
    /// ENO in both SYNs and in A's third segment: A's SYN option and the
    /// answer the kernel sent.
    Negotiated(Vec<u8>, Vec<u8>),
    /// A believes ENO is on but this side cannot go on with it (the answer
    /// was lost, or this configuration does not negotiate): the
    /// connection must be reset, never taken for plain.
    Unusable(&'static str),
    /// The in-band path decides.
    InBand,
}

/// Whatever the configuration says: the listener may have answered ENO
/// (a listener bound for another configuration).
pub(crate) fn accepted(tcp: &TcpStream, config: &Config) -> Accepted {
    if !imp::available() {
        return Accepted::InBand;
    }
    match imp::recorded(tcp) {
        Recorded::Negotiated(..) if !wants_kernel(config) => {
            Accepted::Unusable("the kernel negotiated ENO for a listener whose policy is off")
        }
        // RFC 8547 4.6: A's first ACK without ENO disables it.
        Recorded::Negotiated(syn, synack, true) => Accepted::Negotiated(syn, synack),
        Recorded::Unanswered => {
            Accepted::Unusable("the client negotiated ENO in its SYN and our answer is lost")
        }
        _ => Accepted::InBand,
    }
}
