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
    /// ENO in both SYNs: A's SYN option, then B's SYN-ACK option.
    Negotiated(Vec<u8>, Vec<u8>),
    PeerSentNone,
    NotCarried,
}

#[cfg(all(feature = "kernel", target_os = "linux"))]
mod imp {
    use std::os::fd::AsRawFd;
    use std::sync::OnceLock;

    use tcpcrypt_kernel::{Outcome, Sockets};

    use super::Recorded;

    static SOCKETS: OnceLock<Sockets> = OnceLock::new();

    /// The pinned per-socket map, when the kernel carriage is enabled on
    /// this machine (looked for again on each call until it is).
    fn sockets() -> Option<&'static Sockets> {
        if let Some(s) = SOCKETS.get() {
            return Some(s);
        }
        let opened = Sockets::open().ok()?;
        Some(SOCKETS.get_or_init(|| opened))
    }

    pub fn available() -> bool {
        sockets().is_some()
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
            Some(Outcome::Negotiated { syn, synack, .. }) => Recorded::Negotiated(syn, synack),
            Some(Outcome::PeerSentNone) => Recorded::PeerSentNone,
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
        "the kernel carriage is not enabled on this machine (tcpcrypt kernel enable)",
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
        Recorded::Negotiated(_, synack) => {
            hs.kernel_synack(&synack).map_err(crate::Error::from)?;
            Connected::Negotiated(Box::new(hs))
        }
        Recorded::PeerSentNone => Connected::PeerSentNone,
        Recorded::NotCarried if config.carriage == Carriage::Kernel => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's ENO program is not attached to this process's cgroup",
            ));
        }
        Recorded::NotCarried => Connected::NotCarried,
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
    if wants_kernel(config) {
        if imp::available() {
            let (global, teps) = ServerHandshake::kernel_template(&config.handshake);
            if let Err(e) = imp::listen(&socket, global, &teps) {
                tracing::debug!(error = %e, "the kernel carriage refused the template");
            }
        } else if config.carriage == Carriage::Kernel {
            return Err(unavailable());
        }
    }
    socket.listen(1024)
}

/// A's SYN option and the answer the kernel sent, for an accepted socket
/// whose SYNs carried ENO.
pub(crate) fn accepted(tcp: &TcpStream, config: &Config) -> Option<(Vec<u8>, Vec<u8>)> {
    if !wants_kernel(config) || !imp::available() {
        return None;
    }
    match imp::recorded(tcp) {
        Recorded::Negotiated(syn, synack) => Some((syn, synack)),
        _ => None,
    }
}
