//! `tcpcrypt proxy`: tcpcrypt in front of a plain backend (server mode), or
//! plain local clients out to tcpcrypt servers (client mode).
//!
//! In server mode the backend can learn each connection's session ID, to
//! bind its own authentication to it: in a PROXY protocol v2 header (with
//! the client's real address) or in an HTTP request header.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tcpcrypt_tokio::{Config, PlainSource, SessionId, TcpcryptListener, TcpcryptStream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::local_end::LocalEnd;
use crate::options::Negotiation;
use crate::report::Report;

/// Which side of the proxy speaks tcpcrypt.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accept tcpcrypt (and plain) clients; forward in plain TCP to --to.
    Server,
    /// Accept plain local clients; forward over tcpcrypt to --to.
    Client,
}

/// Arguments of `tcpcrypt proxy`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to accept connections, ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Where to forward them, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Server: tcpcrypt in front of a plain backend. Client: plain clients
    /// out to a tcpcrypt server.
    #[arg(long, value_enum)]
    mode: Mode,
    /// (server mode) Start each backend connection with a PROXY protocol
    /// v2 header: the client's address, and the session ID in a TLV of
    /// type 0xE0 (33 bytes) when the connection is encrypted.
    #[arg(long)]
    proxy_protocol: bool,
    /// (server mode) Set this HTTP request header to the session ID (66 hex
    /// digits) on every request of an encrypted connection, and remove it
    /// from every request a client sends.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "Tcpcrypt-Session-Id")]
    http_header: Option<String>,
    #[command(flatten)]
    negotiation: Negotiation,
    /// Print each connection's negotiation report as JSON on stderr.
    #[arg(long)]
    json: bool,
}

/// The PROXY protocol v2 signature (proxy-protocol.txt, section 2.2).
const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Our TLV type for the session ID: the first of the custom range
/// (PP2_TYPE_MIN_CUSTOM).
pub const PP2_TYPE_TCPCRYPT_SESSION_ID: u8 = 0xE0;

/// A PROXY protocol v2 header for a TCP connection from `source` to
/// `destination`, with the session ID as a TLV when there is one.
pub fn proxy_v2_header(
    source: SocketAddr,
    destination: SocketAddr,
    session_id: Option<&SessionId>,
) -> Vec<u8> {
    let mut addresses = Vec::with_capacity(36);
    let family = match (source.ip().to_canonical(), destination.ip().to_canonical()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            0x11 // TCP over IPv4
        }
        _ => {
            let v6 = |ip: std::net::IpAddr| match ip {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                std::net::IpAddr::V6(v6) => v6,
            };
            addresses.extend_from_slice(&v6(source.ip()).octets());
            addresses.extend_from_slice(&v6(destination.ip()).octets());
            0x21 // TCP over IPv6
        }
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    if let Some(id) = session_id {
        let id = id.as_bytes();
        addresses.push(PP2_TYPE_TCPCRYPT_SESSION_ID);
        addresses.extend_from_slice(&(id.len() as u16).to_be_bytes());
        addresses.extend_from_slice(id);
    }
    let mut header = Vec::with_capacity(16 + addresses.len());
    header.extend_from_slice(&PROXY_V2_SIGNATURE);
    header.push(0x21); // version 2, PROXY command
    header.push(family);
    header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

/// `tcpcrypt proxy`.
pub async fn proxy(args: Args) -> i32 {
    if args.mode == Mode::Client && (args.proxy_protocol || args.http_header.is_some()) {
        eprintln!("tcpcrypt: --proxy-protocol and --http-header belong to --mode server");
        return 2;
    }
    let config = args.negotiation.config();
    // Server mode answers ENO in the SYN-ACK where the kernel carriage is
    // enabled; client mode serves plain local clients.
    let bound = match args.mode {
        Mode::Server => tcpcrypt_tokio::bind_tcp(args.listen, &config).await,
        Mode::Client => TcpListener::bind(args.listen).await,
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcpcrypt: listening on {}: {e}", args.listen);
            return 1;
        }
    };
    let local = listener.local_addr().expect("bound");
    eprintln!(
        "tcpcrypt: proxy ({} mode) listening on {local}, forwarding to {}",
        match args.mode {
            Mode::Server => "server",
            Mode::Client => "client",
        },
        args.to
    );
    let args = Arc::new(args);
    match args.mode {
        Mode::Server => serve(listener, &config, args).await,
        Mode::Client => carry_all(listener, &config, args).await,
    }
}

/// Server mode: the library's listener runs the handshakes concurrently
/// (a slow client delays nobody), and each negotiated client is carried to
/// the backend in a task of its own.
async fn serve(listener: TcpListener, config: &Arc<Config>, args: Arc<Args>) -> i32 {
    let mut listener = match TcpcryptListener::from_listener(listener, config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcpcrypt: listening: {e}");
            return 1;
        }
    };
    loop {
        match listener.accept_attempt().await {
            Ok((_, Ok(client))) => {
                let args = args.clone();
                tokio::spawn(async move {
                    let peer = client.peer_addr();
                    if let Err(e) = serve_client(client, &args).await {
                        log_ended(&format!("{peer:?}"), &e);
                    }
                });
            }
            Ok((peer, Err(e))) => tracing::warn!(%peer, error = %e, "client turned away"),
            Err(e) => {
                eprintln!("tcpcrypt: accept: {e}");
                return 1;
            }
        }
    }
}

/// Logs a connection that ended with an error: a warning (shown by
/// default) when the proxy could not do its work (the other side
/// unreachable, the policy refusing a fallback, a protocol error), for
/// information only when one side just went away mid-stream, as clients
/// do.
fn log_ended(peer: &str, e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | UnexpectedEof | ConnectionAborted
    ) {
        tracing::info!(peer, error = %e, "connection ended with an error");
    } else {
        tracing::warn!(peer, error = %e, "connection ended with an error");
    }
}

/// Client mode: plain local clients, each carried to the tcpcrypt server
/// in a task of its own.
async fn carry_all(listener: TcpListener, config: &Arc<Config>, args: Arc<Args>) -> i32 {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let args = args.clone();
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = carry_out(tcp, &config, &args).await {
                log_ended(&peer.to_string(), &e);
            }
        });
    }
}

/// Server mode: negotiate with the client, then carry its bytes to the
/// backend in plain TCP.
async fn serve_client(mut client: TcpcryptStream<TcpStream>, args: &Args) -> io::Result<()> {
    let local = client.get_ref().local_addr()?;
    let peer = client.get_ref().peer_addr()?;
    let report = Report::of(&client, peer, client.handshake_duration());
    log(&report, args.json);
    let mut backend = TcpStream::connect(&args.to).await?;
    backend.set_nodelay(true)?;
    let session_id = client.session_id();
    if args.proxy_protocol {
        backend
            .write_all(&proxy_v2_header(peer, local, session_id.as_ref()))
            .await?;
    }
    match &args.http_header {
        None => carry(backend, &mut client).await,
        Some(name) => {
            let value = session_id.map(|id| id.to_string());
            let (mut backend_r, mut backend_w) = backend.into_split();
            let result = crate::http_header::carry(
                client.into_split(),
                (&mut backend_r, &mut backend_w),
                name,
                value.as_deref(),
            )
            .await;
            if result.is_err() {
                reset(backend_r.as_ref());
                // A write half that is dropped sends a FIN first.
                backend_w.forget();
            }
            result
        }
    }
}

/// Carries both directions between a plain connection and a tcpcrypt
/// one; an error on either side resets both. A plain side on this machine
/// (a local backend or client) that closes its socket ends the relay as
/// the kernel would end its socket (`LocalEnd`).
async fn carry(plain: TcpStream, tcpcrypt: &mut TcpcryptStream<TcpStream>) -> io::Result<()> {
    let local = LocalEnd::of(&plain, tcpcrypt.get_ref());
    let mut plain = PlainSource::new(plain);
    let result = local
        .relay(tcpcrypt_tokio::copy_bidirectional(&mut plain, tcpcrypt))
        .await;
    if result.is_err() {
        reset(plain.get_ref());
        reset(tcpcrypt.get_ref());
    }
    result.map(drop)
}

/// Makes closing `s` send a reset: after a failure on either side, the
/// peer of a plain connection, which has no FINp to tell a complete stream
/// from a cut one, must not see a clean end (as in the relay daemon), and
/// the tcpcrypt peer learns at once.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// Client mode: connect to the tcpcrypt server for a plain local client.
async fn carry_out(local: TcpStream, config: &Arc<Config>, args: &Args) -> io::Result<()> {
    let (mut remote, report) = match crate::netcat::connect_reported(&args.to, config).await {
        Ok(c) => c,
        Err(e) => {
            // A reset tells the local client that this did not work, rather
            // than an empty answer.
            reset(&local);
            return Err(e);
        }
    };
    log(&report, args.json);
    carry(local, &mut remote).await
}

fn log(report: &Report, json: bool) {
    if json {
        report.print_stderr(true);
    } else {
        tracing::info!("{}", report.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_headers_follow_the_specification() {
        // IPv4, no TLV: signature, 0x21, 0x11, length 12, addresses, ports.
        let h = proxy_v2_header(
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            None,
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        expected.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x0f, 0xa0, 0, 80]);
        assert_eq!(h, expected);
        // A v4-mapped client on a dual-stack listener is reported as IPv4.
        let h = proxy_v2_header(
            "[::ffff:10.0.0.1]:4000".parse().unwrap(),
            "[::ffff:10.0.0.2]:80".parse().unwrap(),
            None,
        );
        assert_eq!(h, expected);
        // IPv6 with the session ID TLV: 36 + 3 + 33 bytes.
        let id = tcpcrypt_tokio::SessionId::from_bytes([7u8; 33]);
        let h = proxy_v2_header(
            "[2001:db8::1]:4000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            Some(&id),
        );
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 72]);
        assert_eq!(
            &h[16..32],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(
            &h[32..48],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&h[48..52], &[0x0f, 0xa0, 0, 80]);
        assert_eq!(&h[52..55], &[0xE0, 0, 33]);
        assert_eq!(&h[55..], &[7u8; 33]);
    }
}
