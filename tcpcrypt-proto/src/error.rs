//! Errors of the protocol core.
//!
//! Every failure is a typed value; nothing in the core panics on peer input.
//! Errors that arise after encryption is enabled are aborts (RFC 8548 3.3):
//! the caller must reset the connection and report the error, which is always
//! distinct from a clean end of stream.
//!
//! [`Error::class`] says whose fault an error is, as rustls splits its
//! errors: the peer misbehaved, the peer is incompatible, the caller misused
//! the API, the configuration is unusable, or the environment failed. Only
//! the first two come from the peer and abort the connection.

use thiserror::Error;

/// A protocol error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// An ENO option that cannot be delimited (wrong kind or length byte).
    #[error("malformed ENO option: {0}")]
    MalformedOption(&'static str),
    /// The in-band hello marker started correctly but then deviated after
    /// the point where a plain peer could have produced it.
    #[error("malformed in-band hello")]
    MalformedHello,
    /// An Init1 or Init2 message with the wrong magic number.
    #[error("bad magic number in {0}")]
    BadMagic(&'static str),
    /// An Init message whose `message_len` is shorter than its fields or larger
    /// than the bound this implementation accepts.
    #[error("bad message_len {len} in {msg}")]
    BadMessageLength {
        /// Which message.
        msg: &'static str,
        /// The length it announced.
        len: u32,
    },
    /// Init1 with `nciphers = 0`.
    #[error("Init1 offers no AEAD algorithm")]
    NoCiphers,
    /// Host B found no acceptable AEAD in Init1.
    #[error("no acceptable AEAD algorithm in Init1")]
    NoAcceptableAead,
    /// Init2 chose an AEAD that host A did not offer (RFC 8548 3.3).
    #[error("Init2 chose AEAD 0x{0:04x}, which was not offered")]
    CipherNotOffered(u16),
    /// The peer's public key failed validation, or key agreement produced the
    /// all-zero shared secret (RFC 8548 5).
    #[error("invalid peer public key")]
    BadPublicKey,
    /// A frame failed authentication (RFC 8548 3.6).
    #[error("frame authentication failed")]
    AuthenticationFailed,
    /// A frame whose `clen` is too small to hold the flags and the tag, or
    /// too small for the urgent field its flags announce.
    #[error("frame length {0} is too short")]
    FrameTooShort(u16),
    /// Bytes arrived after the peer's FINp frame.
    #[error("data after the FINp frame")]
    DataAfterFin,
    /// The stream ended without an authenticated FINp frame (RFC 8548 3.7).
    #[error("connection truncated: TCP FIN without a FINp frame")]
    Truncated,
    /// A client's hello arrived after the accepting side had taken the
    /// client for plain (it stayed silent past the wait): the connection
    /// is aborted, the marker never delivered as data.
    #[error("a tcpcrypt hello arrived after the connection went plain")]
    LateHello,
    /// The stream ended in the middle of the handshake.
    #[error("connection closed during the handshake")]
    HandshakeEof,
    /// An attempt to seal more application data than one frame can carry.
    #[error("frame payload of {0} bytes exceeds the maximum")]
    FrameTooLarge(usize),
    /// An attempt to send after FINp was sent.
    #[error("the sending side is already closed")]
    SendAfterFin,
    /// A second empty rekey while the previous one is unanswered
    /// (RFC 8548 3.8).
    #[error("a rekey is already outstanding")]
    RekeyOutstanding,
    /// The operating system's random number generator failed.
    #[error("random number generator failure")]
    Randomness,
    /// A caller used the state machine out of order.
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// The configuration cannot be used (for example no TEP or no AEAD).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The kernel carriage answered a resumption in the SYN-ACK whose
    /// secret this side no longer holds (evicted, or taken by another
    /// connection in between): the connection must be aborted, and the
    /// peer connects again with a fresh exchange.
    #[error("the kernel answered a resumption whose secret is gone")]
    ResumptionForgotten,
    /// 0-RTT data that breaks its rules (docs/PROTOCOL.md 7.1): more than
    /// [`EARLY_DATA_LIMIT`](crate::frame::EARLY_DATA_LIMIT) bytes before the
    /// end-of-early-data mark, a rekey or FINp among the early frames.
    #[error("0-RTT data: {0}")]
    EarlyData(&'static str),
}

/// Whose fault an [`Error`](enum@Error) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The peer sent something the protocol forbids: a malformed or
    /// tampered message, a truncated stream. The connection must be
    /// aborted.
    PeerMisbehaved,
    /// The peer speaks the protocol but shares no usable algorithm with us.
    /// The connection must be aborted.
    PeerIncompatible,
    /// The caller used the API wrongly (sending after FINp, a second
    /// rekey, an oversized frame, a call out of order). The connection is
    /// unharmed.
    LocalMisuse,
    /// The configuration cannot be used.
    Configuration,
    /// The operating system failed us (no randomness).
    Environment,
}

impl Error {
    /// Whose fault this error is.
    ///
    /// ```
    /// use tcpcrypt_proto::{Error, ErrorClass};
    /// assert_eq!(Error::AuthenticationFailed.class(), ErrorClass::PeerMisbehaved);
    /// assert_eq!(Error::SendAfterFin.class(), ErrorClass::LocalMisuse);
    /// assert!(Error::Truncated.is_peer_fault());
    /// ```
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::MalformedOption(_)
            | Error::MalformedHello
            | Error::BadMagic(_)
            | Error::BadMessageLength { .. }
            | Error::NoCiphers
            | Error::CipherNotOffered(_)
            | Error::BadPublicKey
            | Error::AuthenticationFailed
            | Error::FrameTooShort(_)
            | Error::DataAfterFin
            | Error::Truncated
            | Error::LateHello
            | Error::HandshakeEof
            | Error::EarlyData(_) => ErrorClass::PeerMisbehaved,
            Error::ResumptionForgotten => ErrorClass::Environment,
            Error::NoAcceptableAead => ErrorClass::PeerIncompatible,
            Error::FrameTooLarge(_)
            | Error::SendAfterFin
            | Error::RekeyOutstanding
            | Error::InvalidState(_) => ErrorClass::LocalMisuse,
            Error::InvalidConfig(_) => ErrorClass::Configuration,
            Error::Randomness => ErrorClass::Environment,
        }
    }

    /// Whether the peer caused this error: the connection must then be
    /// aborted (RFC 8548 3.3).
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::PeerMisbehaved | ErrorClass::PeerIncompatible
        )
    }
}
