//! `TcpcryptListener` as an [`axum::serve::Listener`] (feature `axum`), so
//! that `axum::serve` runs over tcpcrypt and every handler can extract the
//! connection's session with `ConnectInfo<SessionAddr>`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, extract::ConnectInfo, routing::get};
//! use tcpcrypt_tokio::{Config, SessionAddr, TcpcryptListener};
//!
//! async fn whoami(ConnectInfo(peer): ConnectInfo<SessionAddr>) -> String {
//!     match peer.session_id() {
//!         Some(id) => format!("{} over tcpcrypt, session {id}\n", peer.addr()),
//!         None => format!("{} in plain TCP\n", peer.addr()),
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = TcpcryptListener::bind("0.0.0.0:8080", &Arc::new(Config::default())).await?;
//! let app = Router::new().route("/", get(whoami));
//! axum::serve(listener, app.into_make_service_with_connect_info::<SessionAddr>()).await
//! # }
//! ```

use std::io;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::TcpStream;

use crate::{SessionAddr, TcpcryptListener, TcpcryptStream};

/// How long `accept` waits after an error of the listening socket before
/// it tries again (axum's `Listener::accept` cannot fail).
const LISTENER_ERROR_RETRY: Duration = Duration::from_secs(1);

impl Listener for TcpcryptListener {
    type Io = TcpcryptStream<TcpStream>;
    type Addr = SessionAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match TcpcryptListener::accept(self).await {
                Ok((stream, peer)) => {
                    let addr =
                        SessionAddr::of(&stream).unwrap_or_else(|| SessionAddr::unconnected(peer));
                    return (stream, addr);
                }
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(LISTENER_ERROR_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(SessionAddr::unconnected(TcpcryptListener::local_addr(self)))
    }
}

impl Connected<IncomingStream<'_, TcpcryptListener>> for SessionAddr {
    fn connect_info(stream: IncomingStream<'_, TcpcryptListener>) -> Self {
        stream.remote_addr().clone()
    }
}
