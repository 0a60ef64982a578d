//! A client connector for hyper (feature `hyper`): a
//! `tower::Service<Uri>` that connects with [`TcpcryptStream::connect`]
//! (policy, fallback and resumption as configured), for
//! `hyper_util::client::legacy::Client` and anything else that takes a
//! hyper-util connector.
//!
//! Every response carries the connection's [`SessionAddr`] in its
//! extensions, so a caller can tie a response to the session it came over;
//! responses on a reused connection carry the same session.
//!
//! The `Client` needs hyper-util's features `client-legacy`, `tokio` and
//! at least one protocol (`http1`, `http2`): without a protocol its
//! `Client` does not exist.
//!
//! ```no_run
//! use std::sync::Arc;
//! use http_body_util::Empty;
//! use hyper::body::Bytes;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tcpcrypt_tokio::{Config, SessionAddr, TcpcryptHttpConnector};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let connector = TcpcryptHttpConnector::new(Arc::new(Config::default()));
//! let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
//! let response = client.get("http://127.0.0.1:8080/".parse()?).await?;
//! match response.extensions().get::<SessionAddr>().and_then(|a| a.session_id()) {
//!     Some(id) => println!("{} over tcpcrypt, session {id}", response.status()),
//!     None => println!("{} in plain TCP", response.status()),
//! }
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{Config, SessionAddr, TcpcryptStream};

/// Connects HTTP clients over tcpcrypt. Cloning is cheap (the
/// configuration, and with it the client's verdict and resumption cache,
/// is shared).
#[derive(Clone, Debug)]
pub struct TcpcryptHttpConnector {
    config: Arc<Config>,
}

impl TcpcryptHttpConnector {
    /// A connector with this configuration.
    pub fn new(config: Arc<Config>) -> Self {
        TcpcryptHttpConnector { config }
    }
}

impl tower_service::Service<Uri> for TcpcryptHttpConnector {
    type Response = HttpStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<HttpStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let (host, port) = destination(&uri)?;
            let stream = TcpcryptStream::connect((host.as_str(), port), &config).await?;
            Ok(HttpStream {
                inner: TokioIo::new(stream),
            })
        })
    }
}

/// The host and port a URI names; the port defaults by scheme (a TLS
/// connector may run over this one, so `https` is 443).
fn destination(uri: &Uri) -> io::Result<(String, u16)> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    // An IPv6 literal keeps its brackets in a URI, not in an address.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), _) => port,
        (None, Some("https")) => 443,
        (None, Some("http") | None) => 80,
        (None, Some(other)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no default port for scheme {other:?} in {uri}"),
            ));
        }
    };
    Ok((host.to_owned(), port))
}

/// A connection made by [`TcpcryptHttpConnector`]: hyper's I/O traits over
/// a [`TcpcryptStream`], reporting the session to the client.
#[derive(Debug)]
pub struct HttpStream {
    inner: TokioIo<TcpcryptStream<TcpStream>>,
}

impl HttpStream {
    /// The stream: its session, session ID and fallback reason.
    pub fn get_ref(&self) -> &TcpcryptStream<TcpStream> {
        self.inner.inner()
    }

    /// The stream, taken out of the wrapper.
    pub fn into_inner(self) -> TcpcryptStream<TcpStream> {
        self.inner.into_inner()
    }
}

impl Connection for HttpStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        match SessionAddr::of(self.get_ref()) {
            Some(addr) => connected.extra(addr),
            None => connected,
        }
    }
}

impl hyper::rt::Read for HttpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for HttpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::destination;

    #[test]
    fn destination_defaults_the_port_by_scheme_and_unwraps_ipv6() {
        let d = |s: &str| destination(&s.parse().unwrap());
        assert_eq!(
            d("http://example.net/").unwrap(),
            ("example.net".into(), 80)
        );
        assert_eq!(
            d("https://example.net/").unwrap(),
            ("example.net".into(), 443)
        );
        assert_eq!(d("http://[::1]:8080/x").unwrap(), ("::1".into(), 8080));
        assert_eq!(d("example.net:7").unwrap(), ("example.net".into(), 7));
        assert!(d("ftp://example.net/").is_err());
        assert!(d("/only/a/path").is_err());
    }
}
