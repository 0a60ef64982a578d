//! [`SessionAddr`]: a peer address together with what was negotiated with
//! it, the value web frameworks hand to request handlers (axum's
//! `ConnectInfo`, a hyper client's response extensions) so that an
//! application can bind its own authentication to the session ID.

use std::fmt;
use std::net::SocketAddr;

use crate::{FallbackReason, SessionId, SessionInfo, TcpcryptStream};

/// A peer's address and the connection's tcpcrypt session, or why the
/// connection is plain.
///
/// ```
/// use std::sync::Arc;
/// use tcpcrypt_tokio::{Config, SessionAddr, TcpcryptListener, TcpcryptStream};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let config = Arc::new(Config::default());
/// let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config).await?;
/// let client = TcpcryptStream::connect(listener.local_addr(), &config).await?;
/// let (server, _) = listener.accept().await?;
/// let seen_by_server = SessionAddr::of(&server).unwrap();
/// assert_eq!(seen_by_server.session_id(), client.session_id());
/// assert!(seen_by_server.fallback_reason().is_none());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionAddr {
    addr: SocketAddr,
    session: Option<SessionInfo>,
    fallback: Option<FallbackReason>,
}

impl SessionAddr {
    /// The peer of a stream that came from a TCP socket, with its session
    /// or its fallback reason. `None` when the stream's transport has no
    /// peer address.
    pub fn of<IO>(stream: &TcpcryptStream<IO>) -> Option<Self> {
        Some(SessionAddr {
            addr: stream.peer_addr()?,
            session: stream.session().cloned(),
            fallback: stream.fallback_reason().cloned(),
        })
    }

    /// An address with no connection behind it (a listener's own address).
    pub fn unconnected(addr: SocketAddr) -> Self {
        SessionAddr {
            addr,
            session: None,
            fallback: None,
        }
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The session, when the connection is encrypted.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// The session ID, when the connection is encrypted: the value to bind
    /// a login, a cookie or a signature to.
    pub fn session_id(&self) -> Option<SessionId> {
        self.session.as_ref().map(|s| s.session_id)
    }

    /// Why the connection is plain, when it is.
    pub fn fallback_reason(&self) -> Option<&FallbackReason> {
        self.fallback.as_ref()
    }

    /// Whether the connection is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.session.is_some()
    }
}

impl fmt::Display for SessionAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.session, &self.fallback) {
            (Some(s), _) => write!(f, "{} (tcpcrypt, session {})", self.addr, s.session_id),
            (None, Some(reason)) => write!(f, "{} (plain: {reason})", self.addr),
            (None, None) => write!(f, "{}", self.addr),
        }
    }
}
