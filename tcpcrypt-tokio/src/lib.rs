//! tcpcrypt (RFC 8548) negotiated by TCP-ENO (RFC 8547), carried in-band.
//!
//! The crate has two layers:
//!
//! * [`proto`]: the sans-IO protocol core. Every protocol rule lives there: the
//!   ENO option codec and negotiation, the in-band hello, Init1/Init2, key
//!   agreement, the key schedule, encryption frames with rekeying and FINp, and
//!   resumption. It performs no I/O, reads no clock and takes its randomness
//!   from the caller.
//! * A thin tokio layer over the core: [`TcpcryptStream`] (`AsyncRead +
//!   AsyncWrite`), [`TcpcryptStream::connect`] with transparent fallback to
//!   plain TCP, [`TcpcryptListener`], and [`TcpcryptConnector`] /
//!   [`TcpcryptAcceptor`] for transports the caller owns.
//!
//! The normative description of the wire format, and every decision taken
//! where the RFCs are silent, is `docs/PROTOCOL.md` in the repository.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod proto;

mod accept;
mod cache;
mod config;
mod connect;
mod error;
mod negotiate;
mod record;
mod split;
mod stream;

pub use accept::{TcpcryptAcceptor, TcpcryptListener};
pub use cache::ClientCache;
pub use config::{Config, ConfigBuilder, Policy};
pub use connect::{Connected, TcpcryptConnector};
pub use error::{Error, FallbackReason};
pub use proto::{AeadAlgorithm, Role, SessionId, SessionInfo, Tep};
pub use split::{ReadHalf, WriteHalf};
pub use stream::TcpcryptStream;
