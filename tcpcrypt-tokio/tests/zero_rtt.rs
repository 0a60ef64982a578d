//! 0-RTT data over real sockets (docs/PROTOCOL.md 7.1): the first bytes of
//! a resumed connection reach the server's application with the hello, a
//! recorded connection replayed to the server delivers nothing, and every
//! other outcome (a server that refuses 0-RTT, one that forgot the secret,
//! one that stopped speaking tcpcrypt) still delivers the bytes exactly
//! once.

mod net;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use net::*;
use tcpcrypt_tokio::proto::hello::{HelloKind, marker};
use tcpcrypt_tokio::{Config, Error, FallbackReason, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// What the server's application saw of each connection: whether its
/// first bytes came as 0-RTT data, and the request line.
type Seen = Arc<Mutex<Vec<(bool, String)>>>;

/// A tcpcrypt server that reads one request line per connection and
/// answers `OK <line>`.
async fn line_server(cfg: Arc<Config>) -> (SocketAddr, Seen, JoinHandle<()>) {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let zero_rtt = s.session().is_some_and(|i| i.zero_rtt);
                let mut s = BufReader::new(s);
                let mut line = String::new();
                if s.read_line(&mut line).await.is_ok() && line.ends_with('\n') {
                    seen.lock().unwrap().push((zero_rtt, line.clone()));
                    let _ = s.write_all(format!("OK {line}").as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    (addr, seen, task)
}

async fn request(addr: SocketAddr, cfg: &Arc<Config>, line: &str) -> (TcpcryptStream, String) {
    let (s, reply) = request_bytes(addr, cfg, line.as_bytes()).await;
    (s, String::from_utf8(reply).unwrap())
}

#[tokio::test]
async fn resumed_connections_carry_their_first_bytes_with_the_hello() {
    let server_cfg = default_config();
    let (addr, seen, _task) = line_server(server_cfg).await;
    let (relay_addr, rec) = relay(addr, Relay::Pass).await;
    let cfg = default_config();
    // The first contact has nothing to resume: the request follows the
    // handshake.
    let (s, reply) = request(relay_addr, &cfg, "GET /1\n").await;
    assert_eq!(reply, "OK GET /1\n");
    assert!(!s.session().unwrap().zero_rtt);
    for i in 2..5 {
        let start = rec.lock().unwrap().to_server.len();
        let line = format!("GET /{i}\n");
        let (s, reply) = request(relay_addr, &cfg, &line).await;
        assert_eq!(reply, format!("OK {line}"));
        let info = s.session().unwrap();
        assert!(info.resumed && info.zero_rtt, "connection {i}");
        // (The recording may hold the end of the previous connection
        // first.)
        let sent = rec.lock().unwrap().to_server[start..].to_vec();
        assert!(sent.windows(8).any(|w| w == marker(HelloKind::Early)));
        assert!(
            !sent.windows(line.len()).any(|w| w == line.as_bytes()),
            "never in the clear"
        );
    }
    let seen = seen.lock().unwrap().clone();
    let zero_rtt: Vec<bool> = seen.iter().map(|(z, _)| *z).collect();
    assert_eq!(zero_rtt, [false, true, true, true]);
}

#[tokio::test]
async fn a_replayed_0rtt_connection_delivers_nothing() {
    let (addr, seen, _task) = line_server(default_config()).await;
    let (relay_addr, rec) = relay(addr, Relay::Pass).await;
    let cfg = default_config();
    request(relay_addr, &cfg, "warm up\n").await;
    let start = rec.lock().unwrap().to_server.len();
    let (s, _) = request(relay_addr, &cfg, "transfer 100 to mallory\n").await;
    assert!(s.session().unwrap().zero_rtt);
    drop(s);
    let recorded = rec.lock().unwrap().to_server[start..].to_vec();

    // The attacker plays the recorded client bytes to the server again, in
    // one piece and as they were segmented: the server never resumes.
    for _ in 0..2 {
        let mut replay = TcpStream::connect(addr).await.unwrap();
        replay.write_all(&recorded).await.unwrap();
        let _ = replay.shutdown().await;
        // At most the server's hello for a fresh exchange, then a reset
        // when the frames after the mark turn out to be no Init1.
        let answer = timeout(LIMIT, read_until_closed(&mut replay))
            .await
            .unwrap()
            .unwrap_or_default();
        assert!(!answer.windows(2).any(|w| w == b"OK"), "{answer:?}");
    }
    let lines: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(
        lines,
        ["warm up\n", "transfer 100 to mallory\n"],
        "delivered once"
    );
}

#[tokio::test]
async fn refused_or_forgotten_0rtt_still_delivers_exactly_once() {
    // A server that refuses 0-RTT data.
    let refusing = config(|b| b.early_data(false));
    let (addr, seen, _t) = line_server(refusing).await;
    let cfg = default_config();
    request(addr, &cfg, "one\n").await;
    let (s, reply) = request(addr, &cfg, "two\n").await;
    assert_eq!(reply, "OK two\n");
    assert!(!s.session().unwrap().zero_rtt && !s.session().unwrap().resumed);

    // A server that forgot the secret (restarted, cache flushed).
    let server_cfg = default_config();
    let (addr2, seen2, _t2) = line_server(server_cfg.clone()).await;
    request(addr2, &cfg, "three\n").await;
    server_cfg.resumption_cache().clear();
    let (s, reply) = request(addr2, &cfg, "four\n").await;
    assert_eq!(reply, "OK four\n");
    assert!(!s.session().unwrap().zero_rtt);

    // A client that sends no 0-RTT data.
    let off = config(|b| b.early_data(false));
    request(addr2, &off, "five\n").await;
    let (s, reply) = request(addr2, &off, "six\n").await;
    assert_eq!(reply, "OK six\n");
    assert!(s.session().unwrap().resumed && !s.session().unwrap().zero_rtt);

    let lines =
        |s: &Seen| -> Vec<String> { s.lock().unwrap().iter().map(|(_, l)| l.clone()).collect() };
    assert_eq!(lines(&seen), ["one\n", "two\n"]);
    assert_eq!(lines(&seen2), ["three\n", "four\n", "five\n", "six\n"]);
}

#[tokio::test]
async fn a_server_that_stopped_speaking_tcpcrypt_gets_the_bytes_once() {
    let server_cfg = default_config();
    let (addr, _, task) = line_server(server_cfg).await;
    let cfg = default_config();
    request(addr, &cfg, "hello\n").await;
    assert!(cfg.client_cache().has_ticket(addr));
    task.abort();
    let _ = task.await;
    // A plain server on the same port now: it answers a line it cannot
    // parse with an error, and a request with `OK`.
    let plain = TcpListener::bind(addr).await.unwrap();
    let lines: Seen = Arc::default();
    let lines2 = lines.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = plain.accept().await {
            let lines = lines2.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut line = Vec::new();
                let _ = s.read_until(b'\n', &mut line).await;
                let text = String::from_utf8_lossy(&line).into_owned();
                let answer = if text.starts_with("GET") {
                    format!("OK {text}")
                } else {
                    "ERR\n".to_string()
                };
                lines.lock().unwrap().push((false, text));
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    // The request went as 0-RTT data with the hello: the server answered
    // with other bytes, so it is not sent again on a new connection (a
    // tcpcrypt server may have taken it: never twice). The caller is told.
    let err = TcpcryptStream::connect_with_data(addr, &cfg, b"GET /plain\n")
        .await
        .unwrap_err();
    assert!(
        matches!(
            Error::from_io(&err),
            Some(Error::EarlyDataUnconfirmed(
                FallbackReason::ServerSentOtherBytes
            ))
        ),
        "{err}"
    );
    // One answer of other bytes from a destination seen encrypted is no
    // verdict (it may be a tcpcrypt server's banner after a late hello,
    // or forged): the next connection says its hello again, twice (once
    // more after other bytes), and only then goes plain, remembered.
    let (s, reply) = request(addr, &cfg, "GET /plain\n").await;
    assert_eq!(reply, "OK GET /plain\n");
    assert!(!s.is_encrypted());
    assert!(cfg.client_cache().is_legacy(addr));
    let got: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(
        got.iter().filter(|l| l.as_str() == "GET /plain\n").count(),
        1,
        "{got:?}"
    );
    assert_eq!(
        got.len(),
        4,
        "the 0-RTT hello, two more hellos, then the request: {got:?}"
    );
}

#[tokio::test]
async fn a_0rtt_client_that_only_reads_sends_nothing_after_its_first_flight() {
    // A server that reads the early request, answers and closes at once
    // must receive nothing afterwards: a byte arriving after its close makes
    // its kernel reset the connection, and a reset can destroy the answer
    // before the client reads it. So the end-of-early-data mark waits for
    // the client's next frame.
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let server = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 4];
                if s.read_exact(&mut req).await.is_ok() {
                    let _ = s.write_all(b"pong").await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    let (addr, rec) = relay(server, Relay::Pass).await;
    let client = default_config();
    let (s, reply) = request_bytes(addr, &client, b"ping").await;
    assert_eq!(reply, b"pong");
    drop(s);
    let start = rec.lock().unwrap().to_server.len();
    let (s, reply) = request_bytes(addr, &client, b"ping").await;
    assert_eq!(reply, b"pong");
    assert!(s.session().unwrap().zero_rtt);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let sent = rec.lock().unwrap().to_server[start..].to_vec();
    // The 'E' hello (marker and option) and one early frame, nothing more.
    assert!(sent.starts_with(&marker(HelloKind::Early)));
    let hello = 8 + sent[9] as usize;
    assert_eq!(sent.len(), hello + 20 + 4, "{sent:?}");
    drop(s);
}

async fn request_bytes(
    addr: SocketAddr,
    cfg: &Arc<Config>,
    data: &[u8],
) -> (TcpcryptStream, Vec<u8>) {
    let mut s = timeout(LIMIT, TcpcryptStream::connect_with_data(addr, cfg, data))
        .await
        .unwrap()
        .unwrap();
    let mut reply = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    (s, reply)
}

/// What a relay does to the `nth` connection (from 1); the others pass.
#[derive(Clone, Copy)]
enum Spoil {
    /// Resets the client's connection 100 ms after the server's first
    /// bytes, without passing them on.
    ResetAfterAnswer,
    /// Flips a bit of the server's identifier half in its hello.
    FlipServerHalf,
    /// Holds the server's bytes back for 1 s.
    SlowAnswer,
}

async fn spoiling_relay(target: SocketAddr, nth: usize, spoil: Spoil) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut count = 0;
        while let Ok((client, _)) = listener.accept().await {
            count += 1;
            let server = TcpStream::connect(target).await.unwrap();
            let spoiled = count == nth;
            client.set_nodelay(true).unwrap();
            if spoiled && matches!(spoil, Spoil::ResetAfterAnswer) {
                // Closing the client's side resets it.
                client.set_zero_linger().unwrap();
            }
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 65536];
                let mut first = true;
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if spoiled && first {
                        match spoil {
                            Spoil::ResetAfterAnswer => {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                up.abort();
                                return;
                            }
                            // marker(8), 0x45, len, global, TEP byte: the
                            // half starts at byte 12.
                            Spoil::FlipServerHalf => buf[14] ^= 0x01,
                            Spoil::SlowAnswer => {
                                tokio::time::sleep(std::time::Duration::from_secs(1)).await
                            }
                        }
                    }
                    first = false;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
                let _ = up.await;
            });
        }
    });
    addr
}

/// A request whose connection fails after its 0-RTT data left: an error
/// naming the uncertainty, and the server's application got it at most
/// once.
async fn unconfirmed_once(cfg: Arc<Config>, spoil: Spoil) {
    let (addr, seen, _task) = line_server(default_config()).await;
    let relay_addr = spoiling_relay(addr, 2, spoil).await;
    request(relay_addr, &cfg, "warm up\n").await;
    let result = timeout(
        LIMIT,
        TcpcryptStream::connect_with_data(relay_addr, &cfg, b"transfer 100 to mallory\n"),
    )
    .await
    .unwrap();
    let err = result.expect_err("the request's fate is unknown");
    assert!(
        matches!(Error::from_io(&err), Some(Error::EarlyDataUnconfirmed(_))),
        "{err}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    let copies = seen
        .iter()
        .filter(|(_, l)| l == "transfer 100 to mallory\n")
        .count();
    assert!(copies <= 1, "delivered {copies} times: {seen:?}");
}

#[tokio::test]
async fn a_reset_after_0rtt_data_left_is_an_error_and_nothing_is_sent_twice() {
    unconfirmed_once(default_config(), Spoil::ResetAfterAnswer).await;
    unconfirmed_once(mandatory(), Spoil::ResetAfterAnswer).await;
}

#[tokio::test]
async fn a_tampered_answer_after_0rtt_data_left_never_sends_it_again_in_plain() {
    unconfirmed_once(default_config(), Spoil::FlipServerHalf).await;
}

#[tokio::test]
async fn a_slow_answer_after_0rtt_data_left_is_an_error_and_nothing_is_sent_twice() {
    // A destination seen encrypted, under the mandatory policy, is waited
    // for the whole handshake (docs/PROTOCOL.md, "A silent server"): here
    // shorter than the answer's delay (1 s).
    let cfg = config(|b| {
        b.policy(tcpcrypt_tokio::Policy::Mandatory)
            .server_hello_timeout(std::time::Duration::from_millis(200))
            .handshake_timeout(std::time::Duration::from_millis(600))
    });
    unconfirmed_once(cfg, Spoil::SlowAnswer).await;
}
