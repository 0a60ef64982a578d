//! The fallback rules (docs/PROTOCOL.md, "Fallback"): a fallback never
//! loses a byte, never hands a hello to an application as data, and never
//! downgrades on weak evidence.

mod net;

use std::io::ErrorKind;
use std::time::Duration;

use net::*;
use tcpcrypt_tokio::proto::{ClientHandshake, HandshakeConfig, OsRandom};
use tcpcrypt_tokio::{Error, FallbackReason, TcpcryptListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A connecting side's first flight: its hello and pipelined Init1.
fn first_flight() -> Vec<u8> {
    let mut hs = ClientHandshake::new(
        std::sync::Arc::new(HandshakeConfig::default()),
        None,
        Box::new(OsRandom),
    )
    .unwrap();
    let mut out = Vec::new();
    hs.write_to(&mut out);
    out
}

/// A listener that takes a client for plain after 100 ms of silence, and
/// its application: reads to the end, and returns what it got.
async fn impatient_server() -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<(Option<FallbackReason>, std::io::Result<Vec<u8>>)>,
) {
    let cfg = config(|b| b.client_hello_wait(Duration::from_millis(100)));
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let app = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let reason = s.fallback_reason().cloned();
        let mut got = Vec::new();
        let result = timeout(LIMIT, s.read_to_end(&mut got)).await.unwrap();
        (reason, result.map(|_| got))
    });
    (addr, app)
}

#[tokio::test]
async fn a_hello_that_comes_after_the_wait_is_never_data() {
    let (addr, app) = impatient_server().await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The hello arrives late, as after a lost segment on a slow path.
    tokio::time::sleep(Duration::from_millis(400)).await;
    tcp.write_all(&first_flight()).await.unwrap();
    let (reason, got) = timeout(LIMIT, app).await.unwrap().unwrap();
    assert_eq!(reason, Some(FallbackReason::ClientSilent));
    let err = got.expect_err("the application never reads the hello");
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(
        matches!(
            Error::from_io(&err),
            Some(Error::Protocol(tcpcrypt_tokio::proto::Error::LateHello))
        ),
        "{err:?}"
    );
    // The client learns of it by a reset, not by a plain answer.
    let end = read_until_closed(&mut tcp).await;
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn a_silent_plain_client_that_speaks_later_is_served_in_full() {
    let (addr, app) = impatient_server().await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Its first bytes begin like a marker, then depart from it.
    tcp.write_all(b"\xE5EN").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(b"X and the rest").await.unwrap();
    tcp.shutdown().await.unwrap();
    let (reason, got) = timeout(LIMIT, app).await.unwrap().unwrap();
    assert_eq!(reason, Some(FallbackReason::ClientSilent));
    assert_eq!(got.unwrap(), b"\xE5ENX and the rest");
}
