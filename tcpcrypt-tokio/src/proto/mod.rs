//! The sans-IO protocol core: bytes in, bytes out, no sockets, no clock.

pub mod aead;
pub mod crypto;
pub mod error;
pub mod random;
pub mod tep;

pub use aead::AeadAlgorithm;
pub use error::Error;
pub use tep::Tep;
pub mod config;
pub mod eno;
pub mod frame;
pub mod handshake;
pub mod hello;
pub mod init;
pub mod negotiation;
pub mod resumption;
pub mod schedule;
pub mod session;

pub use config::{HandshakeConfig, ResumptionSettings};
pub use frame::{FrameOpener, FrameSealer, OpenedFrame};
pub use handshake::{
    ClientHandshake, ClientOutcome, LegacyEvidence, ServerHandshake, ServerOutcome,
};
pub use negotiation::DisableReason;
pub use random::{OsRandom, RandomSource};
pub use resumption::{ResumptionCache, ResumptionSecret};
pub use schedule::SessionId;
pub use session::{Role, Session, SessionInfo};
