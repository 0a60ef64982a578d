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

/// Asserts that `err` is the accepting side's read error for a hello that
/// came after its wait.
fn assert_late_hello(err: &std::io::Error) {
    assert!(
        matches!(
            Error::from_io(err),
            Some(Error::Protocol(tcpcrypt_tokio::proto::Error::LateHello))
        ),
        "{err:?}"
    );
}

/// Asserts that the connecting side receives the late marker, then a reset.
async fn assert_late_marker_then_reset(tcp: &mut TcpStream) {
    let mut answer = [0u8; 8];
    timeout(LIMIT, tcp.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer, b"\xE5ENO\x01L\r\n");
    let end = read_until_closed(tcp).await;
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
}

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

/// A listener that takes a client for plain after 100 ms of silence (or,
/// as here on loopback, the path's retransmission timeout and a round
/// trip if longer: about 200 ms), and its application: reads to the end, and returns what it got.
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
    assert_late_hello(&err);
    // The client learns of it by the late marker (the server had sent
    // nothing), then a reset: never by a plain answer.
    assert_late_marker_then_reset(&mut tcp).await;
}

#[tokio::test]
async fn split_halves_answer_a_late_hello_as_the_whole_stream_does() {
    let cfg = config(|b| b.client_hello_wait(Duration::from_millis(100)));
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let app = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let mut got = Vec::new();
        let read = timeout(LIMIT, r.read_to_end(&mut got)).await.unwrap();
        // The connection is given up: the write half cannot send after it.
        let write = w.write_all(b"too late").await;
        (read, write)
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    tcp.write_all(&first_flight()).await.unwrap();
    let (read, write) = timeout(LIMIT, app).await.unwrap().unwrap();
    assert_late_hello(&read.unwrap_err());
    assert_eq!(write.unwrap_err().kind(), ErrorKind::ConnectionAborted);
    assert_late_marker_then_reset(&mut tcp).await;
}

#[tokio::test]
async fn a_late_hello_after_the_server_spoke_is_only_reset() {
    // A server that speaks first (a banner) has been read by the client as
    // a plain server's: a marker after its bytes would be data to it.
    let cfg = config(|b| b.client_hello_wait(Duration::from_millis(100)));
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let app = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 banner\r\n").await.unwrap();
        let mut got = Vec::new();
        timeout(LIMIT, s.read_to_end(&mut got)).await.unwrap()
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut banner = [0u8; 12];
    timeout(LIMIT, tcp.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    tcp.write_all(&first_flight()).await.unwrap();
    let err = timeout(LIMIT, app).await.unwrap().unwrap().unwrap_err();
    assert_late_hello(&err);
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

/// A relay to `target` that resets its `nth` connection (counting from 1)
/// once the client has sent something, as one forged RST would, and
/// passes every other connection on.
async fn resetting_relay(target: std::net::SocketAddr, nth: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 1..=16 {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if i == nth {
                    let mut buf = [0u8; 64];
                    let _ = timeout(LIMIT, client.read(&mut buf)).await;
                    let _ = client.set_zero_linger();
                    return;
                }
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = timeout(
                    LIMIT,
                    tokio::io::copy_bidirectional(&mut client, &mut server),
                )
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn one_reset_does_not_downgrade_a_destination_seen_encrypted() {
    let (server, _, _task) = tcpcrypt_echo(default_config()).await;
    let relay = resetting_relay(server, 2).await;
    let cfg = config(|b| b.resumption(false));
    let first = tcpcrypt_tokio::TcpcryptStream::connect(relay, &cfg)
        .await
        .unwrap();
    assert!(first.is_encrypted());
    // The second connection is reset before the server's hello: the hello
    // is tried again, and the connection is encrypted.
    let second = tcpcrypt_tokio::TcpcryptStream::connect(relay, &cfg)
        .await
        .unwrap();
    assert!(second.is_encrypted(), "{:?}", second.fallback_reason());
    assert!(!cfg.client_cache().is_legacy(relay));
}

#[tokio::test]
async fn weak_evidence_is_remembered_briefly_and_conclusive_evidence_fully() {
    let cfg = config(|b| b.legacy_verdict_ttl(Duration::from_secs(4)));
    // A server that closes at once: weak evidence.
    let (closing, _, _a) = plain_server(Plain::Close).await;
    // A server that answers with other bytes: conclusive.
    let (banner, _, _b) = plain_server(Plain::Banner).await;
    for addr in [closing, banner] {
        let s = tcpcrypt_tokio::TcpcryptStream::connect(addr, &cfg)
            .await
            .unwrap();
        assert!(!s.is_encrypted());
        assert!(cfg.client_cache().is_legacy(addr));
        assert!(
            s.handshake_duration() > Duration::ZERO,
            "what finding it plain took"
        );
    }
    // A verdict remembered skips the negotiation: nothing to measure.
    let known = tcpcrypt_tokio::TcpcryptStream::connect(banner, &cfg)
        .await
        .unwrap();
    assert_eq!(known.fallback_reason(), Some(&FallbackReason::KnownLegacy));
    assert_eq!(known.handshake_duration(), Duration::ZERO);
    // A silent server: the wait for its hello, every bit of it.
    let (silent, _, _c) = plain_server(Plain::Silent).await;
    let wait = Duration::from_millis(300);
    let patient = config(|b| b.server_hello_timeout(wait));
    let s = tcpcrypt_tokio::TcpcryptStream::connect(silent, &patient)
        .await
        .unwrap();
    assert_eq!(s.fallback_reason(), Some(&FallbackReason::ServerSilent));
    assert!(
        s.handshake_duration() >= wait,
        "{:?}",
        s.handshake_duration()
    );
    // A twentieth of the TTL (200 ms) later, only the conclusive verdict
    // holds.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!cfg.client_cache().is_legacy(closing));
    assert!(cfg.client_cache().is_legacy(banner));
}

/// A server whose application counts what each client sent and answers
/// with the count.
async fn counting_server() -> std::net::SocketAddr {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &default_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if timeout(LIMIT, s.read_to_end(&mut got))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    let _ = s.write_all(got.len().to_string().as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_altered_hello_never_ends_in_success_with_data_lost() {
    let server = counting_server().await;
    let data = pattern(20_000, 3);
    // Short deadlines keep the alterations that stall a handshake quick.
    let cfg = config(|b| {
        b.server_hello_timeout(Duration::from_millis(500))
            .handshake_timeout(Duration::from_secs(1))
    });
    // Every byte of the client's hello (marker and option), altered in
    // turn by a middlebox.
    for at in 0..first_flight().len().min(16) {
        let (relay_addr, _) = relay(server, Relay::FlipClientBit(at)).await;
        let outcome = async {
            let mut s = tcpcrypt_tokio::TcpcryptStream::connect(relay_addr, &cfg).await?;
            s.write_all(&data).await?;
            s.shutdown().await?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        // Success means every byte arrived; an error is an honest outcome.
        if let Ok(answer) = timeout(LIMIT, outcome).await.expect("bounded") {
            assert_eq!(answer, b"20000", "byte {at} altered");
        }
    }
}

/// A relay to `target` that holds the client's first bytes of the
/// connections numbered in `late` (counting from 1) for `delay`, as a path
/// that lost the hello's segment twice would; it passes every other byte
/// at once. Returns its address and how many connections it has seen.
async fn late_hello_relay(
    target: std::net::SocketAddr,
    late: impl IntoIterator<Item = usize>,
    delay: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let late: Vec<usize> = late.into_iter().collect();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let i = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let late = late.contains(&i);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                if late {
                    let mut first = vec![0u8; 64 * 1024];
                    let Ok(Ok(n)) = timeout(LIMIT, client.read(&mut first)).await else {
                        return;
                    };
                    tokio::time::sleep(delay).await;
                    if server.write_all(&first[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = timeout(
                    LIMIT,
                    tokio::io::copy_bidirectional(&mut client, &mut server),
                )
                .await;
            });
        }
    });
    (addr, seen)
}

/// A listener that takes a client for plain after 100 ms of silence and
/// echoes what each connection sends; returns how each accepted
/// connection ended: `Ok(encrypted)`, or the error.
async fn impatient_echo() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::io::Result<bool>>,
) {
    let cfg = config(|b| b.client_hello_wait(Duration::from_millis(100)));
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let encrypted = s.is_encrypted();
                let mut buf = vec![0u8; 4096];
                let ended = async {
                    loop {
                        let n = s.read(&mut buf).await?;
                        if n == 0 {
                            s.shutdown().await?;
                            return Ok(encrypted);
                        }
                        s.write_all(&buf[..n]).await?;
                    }
                };
                let _ = tx.send(
                    timeout(LIMIT, ended)
                        .await
                        .unwrap_or_else(|e| Err(e.into())),
                );
            });
        }
    });
    (addr, rx)
}

/// The tcpcrypt error of a connection to `addr` that must fail.
async fn connect_error(
    addr: std::net::SocketAddr,
    cfg: &std::sync::Arc<tcpcrypt_tokio::Config>,
    data: &[u8],
) -> Error {
    let err = timeout(
        LIMIT,
        tcpcrypt_tokio::TcpcryptStream::connect_with_data(addr, cfg, data),
    )
    .await
    .unwrap()
    .unwrap_err();
    let inner = err.into_inner().expect("a tcpcrypt error");
    *inner.downcast::<Error>().expect("a tcpcrypt error")
}

#[tokio::test]
async fn a_client_whose_hello_came_late_sends_a_new_one() {
    let (server, mut ended) = impatient_echo().await;
    let (relay_addr, seen) = late_hello_relay(server, 1..=1, Duration::from_millis(400)).await;
    // A fresh destination: a reset alone would be weak evidence, enough
    // to fall back. The late marker says the server speaks tcpcrypt.
    let cfg = default_config();
    let s = timeout(
        LIMIT,
        tcpcrypt_tokio::TcpcryptStream::connect(relay_addr, &cfg),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(s.is_encrypted(), "{:?}", s.fallback_reason());
    let data = pattern(10_000, 7);
    assert_eq!(echo_roundtrip(s, data.clone()).await.unwrap(), data);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The server's application saw the late connection fail, never data.
    let first = ended.recv().await.unwrap().unwrap_err();
    assert_late_hello(&first);
    assert!(
        ended.recv().await.unwrap().unwrap(),
        "the second is encrypted"
    );
    assert!(!cfg.client_cache().is_legacy(relay_addr));
}

#[tokio::test]
async fn hellos_that_keep_coming_late_end_like_weak_evidence() {
    let (server, _ended) = impatient_echo().await;
    // Every connection's hello comes late: two new hellos, then the
    // marker counts as weak evidence (a plain connection, never a
    // conclusive verdict), or an error under the mandatory policy.
    let (relay, seen) = late_hello_relay(server, 1..=3, Duration::from_millis(400)).await;
    let cfg = default_config();
    let s = timeout(LIMIT, tcpcrypt_tokio::TcpcryptStream::connect(relay, &cfg))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.fallback_reason(), Some(&FallbackReason::HelloLate));
    // Three hellos, then the plain connection (which the relay may not
    // have accepted yet).
    for _ in 0..100 {
        if seen.load(std::sync::atomic::Ordering::SeqCst) == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(!FallbackReason::HelloLate.is_conclusive());

    let (relay, _) = late_hello_relay(server, 1..=3, Duration::from_millis(400)).await;
    let err = connect_error(relay, &mandatory(), b"").await;
    assert!(
        matches!(err, Error::EncryptionRequired(FallbackReason::HelloLate)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_late_marker_never_sends_0rtt_data_again() {
    let (server, mut ended) = impatient_echo().await;
    // The first connection leaves a resumption secret; the second's hello,
    // carrying its request as 0-RTT data, comes late.
    let (relay, _) = late_hello_relay(server, 2..=2, Duration::from_millis(400)).await;
    let cfg = default_config();
    let s = timeout(LIMIT, tcpcrypt_tokio::TcpcryptStream::connect(relay, &cfg))
        .await
        .unwrap()
        .unwrap();
    assert!(s.is_encrypted());
    assert_eq!(echo_roundtrip(s, b"one".to_vec()).await.unwrap(), b"one");
    assert!(ended.recv().await.unwrap().unwrap());
    // The marker is not authenticated: the request may have been
    // delivered for all the client can prove, so it is not sent again.
    let err = connect_error(relay, &cfg, b"pay 100\n").await;
    assert!(
        matches!(err, Error::EarlyDataUnconfirmed(FallbackReason::HelloLate)),
        "{err:?}"
    );
    // And the server's application got none of it.
    let late = ended.recv().await.unwrap().unwrap_err();
    assert_late_hello(&late);
}

/// A tcpcrypt server that speaks first (a banner) and whose client's hello
/// came after its wait sends the banner in plain: to the client, the same
/// bytes a legacy server sends. From a destination that negotiated
/// tcpcrypt before, that is no verdict: the hello is tried again on a new
/// connection, which is encrypted, and nothing is remembered as legacy.
#[tokio::test]
async fn a_banner_after_a_late_hello_is_no_verdict_on_a_server_seen_encrypted() {
    let cfg = config(|b| b.client_hello_wait(Duration::from_millis(100)));
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let server = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 banner\r\n").await;
                let mut rest = Vec::new();
                let _ = timeout(LIMIT, s.read_to_end(&mut rest)).await;
            });
        }
    });
    // The second connection's hello comes late, and the fourth's.
    let (relay, seen) = late_hello_relay(server, [2, 4], Duration::from_millis(400)).await;
    let client = default_config();
    for n in 1..=2 {
        let mut s = timeout(
            LIMIT,
            tcpcrypt_tokio::TcpcryptStream::connect(relay, &client),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            s.is_encrypted(),
            "connection {n}: {:?}",
            s.fallback_reason()
        );
        if n == 2 {
            // The late hello's wait counts in the negotiation's time.
            assert!(s.handshake_duration() >= Duration::from_millis(400));
        }
        let mut banner = [0u8; 12];
        timeout(LIMIT, s.read_exact(&mut banner))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&banner, b"220 banner\r\n");
        s.shutdown().await.unwrap();
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(!client.client_cache().is_legacy(relay));
    // With 0-RTT data in the late hello: an error (the data may have been
    // delivered, so it is not sent again), and still no verdict.
    let err = connect_error(relay, &client, b"request\n").await;
    assert!(
        matches!(
            err,
            Error::EarlyDataUnconfirmed(FallbackReason::ServerSentOtherBytes)
        ),
        "{err:?}"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(!client.client_cache().is_legacy(relay));
}

/// A tcpcrypt server answers the hello only once its application accepts
/// the connection (the relay daemon negotiates from the program's
/// `accept`): a busy one is silent meanwhile, as a legacy server is. A
/// destination seen encrypted before, or any under the mandatory policy,
/// gets the handshake's whole time to answer: it is neither downgraded
/// nor refused after the server hello timeout, where plain TCP would have
/// waited in the backlog (docs/PROTOCOL.md, "A silent server").
#[tokio::test]
async fn a_tcpcrypt_server_busy_past_the_hello_wait_is_neither_downgraded_nor_refused() {
    let busy = Duration::from_millis(1200);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tcpcrypt_tokio::TcpcryptAcceptor::new(default_config());
    tokio::spawn(async move {
        // One connection at a time; every one but the first waits `busy`
        // for the application.
        for n in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            if n > 0 {
                tokio::time::sleep(busy).await;
            }
            if let Ok(Ok(mut s)) = timeout(LIMIT, acceptor.accept_tcp(tcp)).await {
                let verdict: &[u8] = if s.session().is_some() {
                    b"encrypted"
                } else {
                    b"plain"
                };
                let _ = s.write_all(verdict).await;
                let _ = s.shutdown().await;
            }
        }
    });
    let wait = Duration::from_millis(300);
    let exchange = |cfg: std::sync::Arc<tcpcrypt_tokio::Config>| async move {
        let mut s = timeout(LIMIT, tcpcrypt_tokio::TcpcryptStream::connect(addr, &cfg))
            .await
            .expect("bounded")
            .expect("connected");
        let mut verdict = Vec::new();
        timeout(LIMIT, s.read_to_end(&mut verdict))
            .await
            .expect("bounded")
            .unwrap();
        (s.session().is_some(), verdict, s.handshake_duration())
    };
    let opportunistic = config(|b| b.server_hello_timeout(wait));
    // First contact, the server idle: encrypted, and remembered so.
    let (encrypted, verdict, _) = exchange(opportunistic.clone()).await;
    assert!(encrypted && verdict == b"encrypted");
    // The server busy past the wait: waited for.
    let (encrypted, verdict, took) = exchange(opportunistic).await;
    assert!(encrypted && verdict == b"encrypted", "{verdict:?}");
    assert!(took >= busy - Duration::from_millis(100), "{took:?}");
    // Under the mandatory policy, even at first contact.
    let mandatory = config(|b| {
        b.server_hello_timeout(wait)
            .policy(tcpcrypt_tokio::Policy::Mandatory)
    });
    let (encrypted, verdict, _) = exchange(mandatory).await;
    assert!(encrypted && verdict == b"encrypted", "{verdict:?}");
}

/// A destination seen encrypted that stops answering altogether (its
/// tcpcrypt removed, a path that eats the answers) costs the long wait
/// once: its next connections for a while wait only the server hello
/// timeout, before and after the one try again.
#[tokio::test]
async fn a_server_silent_through_the_long_wait_costs_it_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let speaks = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let acceptor = tcpcrypt_tokio::TcpcryptAcceptor::new(default_config());
    let speaking = speaks.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            if speaking.load(std::sync::atomic::Ordering::Relaxed) {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(mut s)) = timeout(LIMIT, acceptor.accept_tcp(tcp)).await {
                        let _ = s.shutdown().await;
                    }
                });
            } else {
                // Silent: reads whatever comes, says nothing.
                tokio::spawn(async move {
                    let _ = timeout(LIMIT, tcp.read_to_end(&mut Vec::new())).await;
                });
            }
        }
    });
    let long = Duration::from_millis(1500);
    // Weak verdicts, and the memory of silence, last half a second.
    let weak = Duration::from_millis(500);
    let cfg = config(|b| {
        b.server_hello_timeout(Duration::from_millis(200))
            .handshake_timeout(long)
            .legacy_verdict_ttl(weak * 20)
    });
    let connect = || async {
        timeout(LIMIT, tcpcrypt_tokio::TcpcryptStream::connect(addr, &cfg))
            .await
            .expect("bounded")
            .expect("connected")
    };
    assert!(connect().await.session().is_some(), "seen encrypted");
    speaks.store(false, std::sync::atomic::Ordering::Relaxed);
    let first = connect().await;
    assert_eq!(first.fallback_reason(), Some(&FallbackReason::ServerSilent));
    assert!(
        first.handshake_duration() >= long,
        "{:?}",
        first.handshake_duration()
    );
    // Two hellos unanswered, one through the long wait: taken for a
    // server that stopped speaking tcpcrypt (reported as a possible
    // downgrade, as every later fallback is): its next connections go
    // plain at once while the weak verdict holds, as after any silent
    // server, and none waits long or tries again, even once the memory
    // of its silence is gone.
    let next = connect().await;
    assert!(
        matches!(
            next.fallback_reason(),
            Some(FallbackReason::KnownLegacy | FallbackReason::ServerSilent)
        ) && next.handshake_duration() < long,
        "{:?} {:?}",
        next.fallback_reason(),
        next.handshake_duration()
    );
    tokio::time::sleep(weak + Duration::from_millis(100)).await;
    let later = connect().await;
    assert_eq!(later.fallback_reason(), Some(&FallbackReason::ServerSilent));
    assert!(
        later.handshake_duration() < long,
        "the long wait again: {:?}",
        later.handshake_duration()
    );
    // Once the server speaks tcpcrypt again, and the weak verdict is
    // gone, it is encrypted again.
    speaks.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(weak + Duration::from_millis(100)).await;
    let again = connect().await;
    assert!(
        again.session().is_some(),
        "encrypted again: {:?} {:?}",
        again.fallback_reason(),
        again.handshake_duration()
    );
}

/// A one-shot server that stays silent (`nc -l`): its only connection
/// takes the hello. The connecting side ends that connection before the
/// plain reconnect, so that the server finishes and stops listening: the
/// reconnect is refused and the application learns that its bytes cannot
/// go, where a reconnect made at once would land in the listener's queue,
/// never accepted, the bytes written to it lost.
#[tokio::test]
async fn a_silent_one_shot_server_refuses_the_reconnect_instead_of_queueing_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut only, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut only, &mut got);
        // Its connection ended, it ends: no more listening.
        drop(listener);
        got
    });
    let cfg = config(|b| b.server_hello_timeout(Duration::from_millis(300)));
    refused_after_the_hello_alone(addr, &cfg, server).await;
}

/// The connect to a one-shot server fails, and the server got the hello
/// alone: refused; or reset, when the server took longer than the wait
/// for its end to stop listening (the reconnect queued, then reset).
async fn refused_after_the_hello_alone(
    addr: std::net::SocketAddr,
    cfg: &std::sync::Arc<tcpcrypt_tokio::Config>,
    server: std::thread::JoinHandle<Vec<u8>>,
) {
    let outcome = timeout(LIMIT, tcpcrypt_tokio::TcpcryptStream::connect(addr, cfg))
        .await
        .expect("bounded");
    let outcome = outcome.map(|_| ()).map_err(|e| e.kind());
    assert!(
        matches!(
            outcome,
            Err(ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset)
        ),
        "{outcome:?}"
    );
    let got = server.join().unwrap();
    assert!(
        got.starts_with(b"\xE5ENO"),
        "the hello, and only that: {got:?}"
    );
}

/// The echo server of Python's documentation serves one connection: it
/// echoes the hello, which tells the connecting side it is legacy, and
/// ends once that connection has (here a while after, listener and all).
/// The plain reconnect must wait for that end and be refused, not land in
/// the listener's queue, never accepted, with the application's bytes.
#[tokio::test]
async fn a_one_shot_echo_server_refuses_the_reconnect_instead_of_queueing_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut only, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = only.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            if only.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(700));
        drop(listener);
        got
    });
    refused_after_the_hello_alone(addr, &config(|b| b), server).await;
}
