//! The sans-IO protocol core of tcpcrypt (RFC 8548) negotiated by TCP-ENO
//! (RFC 8547): bytes in, bytes out, no sockets, no clock. It owns every
//! protocol rule: the ENO option and its negotiation, the in-band hello,
//! Init1/Init2, key agreement, the key schedule, encryption frames with
//! rekeying and FINp, and resumption. It takes its randomness from the
//! caller ([`RandomSource`]; [`OsRandom`] in production), so that it is
//! deterministic given its inputs.
//!
//! Most users want `tcpcrypt-tokio`, which drives this core over sockets.
//! Using the core directly:
//!
//! ```
//! use std::sync::Arc;
//! use tcpcrypt_proto::{ClientHandshake, ClientOutcome, HandshakeConfig, OsRandom};
//!
//! # fn main() -> Result<(), tcpcrypt_proto::Error> {
//! let config = Arc::new(HandshakeConfig::default());
//! let mut hs = ClientHandshake::new(config, None, Box::new(OsRandom))?;
//! let mut out = Vec::new();
//! hs.write_to(&mut out); // the hello and a pipelined Init1: send them
//! assert!(!out.is_empty());
//! // ... then feed what the server sends with `hs.read(&bytes)?`, write
//! // what `write_to` gives, until `hs.outcome()` is `Some`:
//! assert!(hs.outcome().is_none());
//! # Ok(()) }
//! ```
//!
//! APIs that can break security when misused (sealing a frame at an
//! offset the caller chooses, raw secret bytes, the key schedule and the
//! negotiation internals as modules) exist only with the `dangerous`
//! feature, for known-answer tests, conformance and fuzzing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
pub mod crypto;
pub mod error;
pub mod random;
pub mod tep;

pub use aead::AeadAlgorithm;
pub use error::{Error, ErrorClass};
pub use tep::Tep;
pub mod bounded;
pub mod config;
pub mod eno;
pub mod frame;
pub mod handshake;
pub mod hello;
pub mod init;
pub mod key_pairs;
#[cfg(feature = "dangerous")]
pub mod negotiation;
#[cfg(not(feature = "dangerous"))]
mod negotiation;
pub mod resumption;
#[cfg(feature = "dangerous")]
pub mod schedule;
#[cfg(not(feature = "dangerous"))]
mod schedule;
pub mod session;

pub use config::{HandshakeConfig, ResumptionSettings};
pub use frame::{FrameOpener, FrameSealer, OpenedFrame};
pub use handshake::{
    ClientHandshake, ClientOutcome, LegacyEvidence, ServerHandshake, ServerOutcome,
};
pub use key_pairs::KeyPairPool;
pub use negotiation::DisableReason;
pub use random::{OsRandom, RandomSource};
pub use resumption::{ResumptionCache, ResumptionSecret};
pub use schedule::SessionId;
pub use session::{Role, Session, SessionInfo};
