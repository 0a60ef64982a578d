//! Errors of the protocol core.
//!
//! Every failure is a typed value; nothing in the core panics on peer input.
//! Errors that arise after encryption is enabled are aborts (RFC 8548 3.3):
//! the caller must reset the connection and report the error, which is always
//! distinct from a clean end of stream.

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
}
