//! Errors of the tokio layer, carried inside `std::io::Error` so that the
//! stream fits `AsyncRead`/`AsyncWrite`. Recover the details with
//! [`Error::from_io`].
//!
//! A clean end of stream is `Ok(0)` from a read. Everything else is an
//! error: truncation (a TCP FIN without a FINp frame) has kind
//! `UnexpectedEof`, tampering and other faults of the peer `InvalidData`,
//! the caller's own misuse `InvalidInput` (see
//! [`proto::ErrorClass`](crate::proto::ErrorClass)).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::proto::{self, DisableReason, ErrorClass};

/// Why a connection is plain.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The policy is [`Policy::Off`](crate::Policy::Off).
    PolicyOff,
    /// The destination was found legacy recently; no hello was sent.
    KnownLegacy,
    /// The server answered with something that is not a tcpcrypt hello.
    ServerSentOtherBytes,
    /// The server closed or reset the connection instead of answering.
    ServerClosed,
    /// The server said nothing before the deadline.
    ServerSilent,
    /// The server speaks tcpcrypt, but our hello reached it only after it
    /// had taken us for a plain client (the hello was lost in transit
    /// and sent again), and it said so. Not a verdict on the server: the
    /// hello is tried again on a new connection, and only when it comes
    /// late every time does the connection go plain, as on weak evidence.
    HelloLate,
    /// The peer speaks tcpcrypt and negotiation failed in band.
    Declined(DisableReason),
    /// The client found that ENO must be disabled after the server's hello
    /// (the connection was replaced by a plain one).
    Disabled(DisableReason),
    /// The client sent no hello: a plain client.
    PlainClient,
    /// The client sent nothing before the wait ended.
    ClientSilent,
    /// Kernel carriage: the server's SYN-ACK carried no ENO option (RFC
    /// 8547: the peer does not speak ENO, or not for this service).
    NoEnoInSynAck,
    /// The server's TCP never acknowledged the hello before the
    /// handshake's deadline, while the connection was up: the path drops
    /// it (a middlebox that eats what it does not know). The same path
    /// would drop it again: the verdict is kept, as a conclusive one.
    HelloDropped,
}

impl FallbackReason {
    /// Whether this is positive evidence that the peer does not speak
    /// tcpcrypt (it answered with other bytes, or refused in band), as
    /// opposed to weak evidence that one forged packet can produce (a
    /// reset, a close, silence).
    pub fn is_conclusive(&self) -> bool {
        !matches!(
            self,
            FallbackReason::ServerClosed
                | FallbackReason::ServerSilent
                | FallbackReason::ClientSilent
                | FallbackReason::HelloLate
        )
    }

    /// Whether the server answered the in-band hello as a legacy server
    /// does (silence, other bytes, its end) on a connection that the
    /// fallback replaces with a new one.
    pub(crate) fn is_legacy_evidence(&self) -> bool {
        matches!(
            self,
            FallbackReason::ServerSilent
                | FallbackReason::ServerSentOtherBytes
                | FallbackReason::ServerClosed
        )
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackReason::PolicyOff => f.write_str("encryption is off by policy"),
            FallbackReason::KnownLegacy => f.write_str("the server is known not to speak tcpcrypt"),
            FallbackReason::ServerSentOtherBytes => {
                f.write_str("the server does not speak tcpcrypt")
            }
            FallbackReason::ServerClosed => {
                f.write_str("the server closed the connection instead of answering")
            }
            FallbackReason::ServerSilent => {
                f.write_str("the server did not answer the tcpcrypt hello")
            }
            FallbackReason::HelloLate => f.write_str(
                "the tcpcrypt hello kept reaching the server too late (lost in transit)",
            ),
            FallbackReason::Declined(r) => write!(f, "negotiation declined: {r}"),
            FallbackReason::Disabled(r) => write!(f, "negotiation disabled: {r}"),
            FallbackReason::PlainClient => f.write_str("the client does not speak tcpcrypt"),
            FallbackReason::ClientSilent => f.write_str("the client sent nothing"),
            FallbackReason::NoEnoInSynAck => {
                f.write_str("the server's SYN-ACK carried no ENO option")
            }
            FallbackReason::HelloDropped => {
                f.write_str("the path dropped the tcpcrypt hello (never acknowledged)")
            }
        }
    }
}

/// An error of the tokio layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A protocol error (bad input from the peer, tampering, truncation).
    #[error("tcpcrypt: {0}")]
    Protocol(#[from] proto::Error),
    /// Encryption is mandatory and the peer cannot do it.
    #[error("tcpcrypt is mandatory and {0}")]
    EncryptionRequired(FallbackReason),
    /// A destination that negotiated tcpcrypt before fell back to plain TCP
    /// and the configuration refuses that.
    #[error("{peer} spoke tcpcrypt before and now {reason}: refusing a possible downgrade")]
    Downgrade {
        /// The destination.
        peer: SocketAddr,
        /// What happened this time.
        reason: FallbackReason,
    },
    /// The handshake did not finish in time.
    #[error("tcpcrypt handshake timed out")]
    HandshakeTimeout,
    /// The first bytes went as 0-RTT data, and the connection failed before
    /// the server confirmed or refused them (it reset, closed, stayed
    /// silent, or answered with something else): the server may have
    /// received them. They are not sent again on another connection, so
    /// that they are never delivered twice; the caller decides whether
    /// repeating them is safe (`docs/PROTOCOL.md` 7.1).
    #[error(
        "the first bytes went as 0-RTT data and the connection failed before the server confirmed them ({0}): they may have been delivered and were not sent again"
    )]
    EarlyDataUnconfirmed(FallbackReason),
    /// An earlier protocol error aborted the connection (it was reset):
    /// what a write, `flush` or `shutdown` returns after it, on the stream
    /// or either half.
    #[error("tcpcrypt: the connection was aborted after a protocol error")]
    Aborted,
}

impl Error {
    /// The tcpcrypt error inside an I/O error, if there is one.
    pub fn from_io(e: &io::Error) -> Option<&Error> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
    }

    /// Whether `e` means the peer broke the protocol (or stalled the
    /// handshake): the connection is then aborted with a reset, never
    /// closed gracefully (RFC 8548 3.3).
    pub(crate) fn aborts(e: &io::Error) -> bool {
        match Error::from_io(e) {
            Some(Error::Protocol(p)) => {
                p.is_peer_fault() || matches!(p, proto::Error::ResumptionForgotten)
            }
            Some(Error::HandshakeTimeout) => true,
            _ => false,
        }
    }

    /// The `io::ErrorKind` a caller expects: a truncated stream is an
    /// unexpected end, a peer's fault invalid data, the caller's own misuse
    /// or configuration invalid input.
    fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Protocol(proto::Error::Truncated | proto::Error::HandshakeEof) => {
                io::ErrorKind::UnexpectedEof
            }
            Error::Protocol(p) => match p.class() {
                ErrorClass::PeerMisbehaved | ErrorClass::PeerIncompatible => {
                    io::ErrorKind::InvalidData
                }
                ErrorClass::LocalMisuse | ErrorClass::Configuration => io::ErrorKind::InvalidInput,
                _ => io::ErrorKind::Other,
            },
            Error::EncryptionRequired(_) | Error::Downgrade { .. } => {
                io::ErrorKind::ConnectionRefused
            }
            Error::HandshakeTimeout => io::ErrorKind::TimedOut,
            Error::EarlyDataUnconfirmed(_) | Error::Aborted => io::ErrorKind::ConnectionAborted,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// A protocol error as the I/O error a stream returns.
pub(crate) fn protocol_error(e: proto::Error) -> io::Error {
    Error::Protocol(e).into()
}
