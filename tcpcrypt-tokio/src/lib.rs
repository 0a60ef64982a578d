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
//!   plain TCP, [`TcpcryptListener`], [`TcpcryptConnector`] /
//!   [`TcpcryptAcceptor`] for transports the caller owns, and
//!   [`copy_bidirectional`] for proxies, which forwards decrypted frames
//!   without copying them.
//!
//! ```
//! use std::sync::Arc;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tcpcrypt_tokio::{Config, TcpcryptListener, TcpcryptStream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let config = Arc::new(Config::default());
//! let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config).await?;
//! let addr = listener.local_addr();
//! let server = tokio::spawn(async move {
//!     let (mut stream, _peer) = listener.accept().await?;
//!     let mut request = Vec::new();
//!     stream.read_to_end(&mut request).await?; // ends at the client's FINp
//!     stream.write_all(&request).await?;
//!     stream.shutdown().await?;
//!     Ok::<_, std::io::Error>(stream.session_id())
//! });
//!
//! let mut client = TcpcryptStream::connect(addr, &config).await?;
//! client.write_all(b"hello").await?;
//! client.shutdown().await?; // half-close: FINp frame, then TCP FIN
//! let mut echo = Vec::new();
//! client.read_to_end(&mut echo).await?;
//! assert_eq!(echo, b"hello");
//! // Both ends hold the same session ID: bind authentication to it.
//! assert_eq!(client.session_id(), server.await.unwrap()?);
//! println!("session ID {}", client.session_id().unwrap());
//! # Ok(()) }
//! ```
//!
//! The normative description of the wire format, and every decision taken
//! where the RFCs are silent, is `docs/PROTOCOL.md` in the repository.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use tcpcrypt_proto as proto;

mod accept;
mod cache;
mod config;
mod connect;
mod copy;
mod error;
mod first_write;
mod kernel;
mod key_refill;
mod late_ack;
mod negotiate;
mod path;
mod record;
mod session_addr;
mod split;
mod stream;

#[cfg(feature = "axum")]
mod axum_listener;
#[cfg(feature = "hyper")]
mod http_connector;

pub use accept::{Attempt, TcpcryptAcceptor, TcpcryptListener, bind_tcp};
pub use cache::ClientCache;
pub use config::{Carriage, Config, ConfigBuilder, Policy};
pub use connect::{Connected, TcpcryptConnector};
pub use copy::{PlainSource, VectoredBufRead, copy, copy_bidirectional};
pub use error::{Error, FallbackReason};
#[cfg(feature = "hyper")]
pub use http_connector::{HttpStream, TcpcryptHttpConnector};
pub use kernel::{SynOffer, answer_in_synack, offer_in_syn, offer_in_syn_to};
pub use proto::{AeadAlgorithm, Role, SessionId, SessionInfo, Tep};
pub use session_addr::SessionAddr;
pub use split::{ReadHalf, WriteHalf};
pub use stream::TcpcryptStream;
