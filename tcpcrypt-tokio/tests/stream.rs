//! `TcpcryptStream` over real sockets on loopback: crate to crate, hostile
//! relays, fallback against plain servers of every kind, plain clients,
//! the mandatory policy, half-close, concurrency, deadlines, resumption and
//! rekeying under traffic.

mod net;

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use net::*;
use tcpcrypt_tokio::proto::crypto;
use tcpcrypt_tokio::proto::hello::{HelloKind, marker};
use tcpcrypt_tokio::{
    AeadAlgorithm, Config, Connected, Error, FallbackReason, Policy, Role, TcpcryptAcceptor,
    TcpcryptConnector, TcpcryptListener, TcpcryptStream, Tep,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

#[tokio::test]
async fn crate_to_crate_every_tep_and_aead() {
    for backend in crypto::all_backends() {
        for tep in Tep::ALL {
            for aead in AeadAlgorithm::ALL {
                let cfg = config(|b| b.backend(backend).teps(vec![tep]).aeads(vec![aead]));
                let (addr, seen, _server) = tcpcrypt_echo(cfg.clone()).await;
                let s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
                let info = s.session().expect("encrypted").clone();
                assert_eq!((info.tep, info.aead, info.role), (tep, aead, Role::A));
                let data = pattern(300_000, 1);
                let got = timeout(LIMIT, echo_roundtrip(s, data.clone()))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(got, data);
                assert_eq!(*seen.lock().unwrap(), vec![true]);
            }
        }
    }
}

#[tokio::test]
async fn both_ends_see_the_same_session() {
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let client = tokio::spawn({
        let cfg = cfg.clone();
        async move { TcpcryptStream::connect(addr, &cfg).await.unwrap() }
    });
    let (server, peer) = listener.accept().await.unwrap();
    let client = client.await.unwrap();
    let (a, b) = (client.session().unwrap(), server.session().unwrap());
    assert_eq!(a.session_id, b.session_id);
    assert_eq!(format!("{}", a.session_id).len(), 66);
    assert_eq!(a.transcript, b.transcript);
    assert_eq!(a.self_name(), b.peer_name());
    assert_eq!((a.role, b.role), (Role::A, Role::B));
    assert_eq!(server.peer_addr(), Some(peer));
    assert_eq!(client.peer_addr(), Some(addr));
    assert!(client.fallback_reason().is_none());
}

#[tokio::test]
async fn resegmenting_relays_in_both_directions() {
    let cfg = default_config();
    let (server, _, _task) = tcpcrypt_echo(cfg.clone()).await;
    for (mode, len) in [
        (Relay::OneByte, 20_000),
        (Relay::RandomSplit(7), 2_000_000),
        (Relay::RandomSplit(99), 500_000),
        (Relay::Coalesce(200_000), 1_000_000),
    ] {
        let (addr, _) = relay(server, mode).await;
        let s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
        assert!(s.is_encrypted(), "{mode:?}");
        let data = pattern(len, len as u64);
        let got = timeout(LIMIT, echo_roundtrip(s, data.clone()))
            .await
            .unwrap()
            .unwrap();
        assert!(got == data, "{mode:?}: data differs");
    }
}

#[tokio::test]
async fn tampering_yields_errors_never_altered_data() {
    let cfg = default_config();
    let (server, _, _task) = tcpcrypt_echo(cfg.clone()).await;
    let data = pattern(200_000, 5);
    // Offsets past the handshake, in frames' headers, data and tags, both ways.
    for at in [150usize, 1_000, 40_000, 123_457] {
        for flip_client in [true, false] {
            let mode = if flip_client {
                Relay::FlipClientBit(at)
            } else {
                Relay::FlipServerBit(at)
            };
            let (addr, _) = relay(server, mode).await;
            let s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
            let (mut r, mut w) = s.into_split();
            let d = data.clone();
            let writer = tokio::spawn(async move {
                for c in d.chunks(8192) {
                    if w.write_all(c).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            });
            let mut got = Vec::new();
            let result = timeout(LIMIT, r.read_to_end(&mut got)).await.unwrap();
            let _ = writer.await;
            assert!(
                got.len() < data.len() && data.starts_with(&got),
                "{mode:?}: altered or complete data"
            );
            // The client sees the tampering itself, or the server's abort.
            let err = result.expect_err("tampering must be an error");
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::InvalidData | ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ),
                "{mode:?}: {err:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_bit_flip_reaching_the_reader_is_an_authentication_error() {
    let cfg = default_config();
    let (server, _, _task) = tcpcrypt_echo(cfg.clone()).await;
    // Flip in the server-to-client direction: the client reads the bad frame.
    let (addr, _) = relay(server, Relay::FlipServerBit(500)).await;
    let mut s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
    s.write_all(&pattern(5_000, 1)).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = vec![0u8; 10_000];
    let err = loop {
        match timeout(LIMIT, s.read(&mut buf)).await.unwrap() {
            Ok(0) => panic!("clean EOF after tampering"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(matches!(
        Error::from_io(&err),
        Some(Error::Protocol(
            tcpcrypt_tokio::proto::Error::AuthenticationFailed
        ))
    ));
    // The error sticks.
    assert!(s.read(&mut buf).await.is_err());
}

#[tokio::test]
async fn dropping_the_finp_frame_is_truncation_not_eof() {
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let (addr, _) = relay(listener.local_addr(), Relay::DropClientTail(20)).await;
    let client = tokio::spawn({
        let cfg = cfg.clone();
        async move {
            let mut s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
            s.write_all(b"everything but the end").await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The FINp frame is an empty frame of 20 bytes: the relay drops it.
            s.shutdown().await.unwrap();
            s
        }
    });
    let (mut server, _) = listener.accept().await.unwrap();
    let mut got = Vec::new();
    let err = timeout(LIMIT, server.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(got, b"everything but the end");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    assert!(matches!(
        Error::from_io(&err),
        Some(Error::Protocol(tcpcrypt_tokio::proto::Error::Truncated))
    ));
    drop(client.await.unwrap());
}

#[tokio::test]
async fn fallback_against_plain_servers_of_every_kind() {
    let cfg = config(|b| b.server_hello_timeout(Duration::from_millis(300)));
    for (kind, reason) in [
        (Plain::Echo, FallbackReason::ServerSentOtherBytes),
        (Plain::Banner, FallbackReason::ServerSentOtherBytes),
        (Plain::Silent, FallbackReason::ServerSilent),
        (Plain::Close, FallbackReason::ServerClosed),
        (Plain::Reset, FallbackReason::ServerClosed),
    ] {
        let (addr, count, _task) = plain_server(kind).await;
        let mut s = timeout(LIMIT, TcpcryptStream::connect(addr, &cfg))
            .await
            .unwrap()
            .unwrap();
        assert!(!s.is_encrypted());
        assert_eq!(s.fallback_reason(), Some(&reason), "{kind:?}");
        wait_for(&count, 2).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "{kind:?}: one probe, one plain connection"
        );
        match kind {
            Plain::Echo => {
                s.write_all(b"plain echo").await.unwrap();
                let mut buf = [0u8; 10];
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"plain echo");
            }
            Plain::Banner => {
                let mut buf = [0u8; 18];
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"220 plain banner\r\n");
            }
            _ => {}
        }
        // The verdict is remembered: the next connection goes plain at once.
        let s2 = timeout(LIMIT, TcpcryptStream::connect(addr, &cfg))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s2.fallback_reason(), Some(&FallbackReason::KnownLegacy));
        wait_for(&count, 3).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3, "{kind:?}: no second probe");
    }
}

/// Waits (bounded) until the server has counted `n` connections.
async fn wait_for(count: &std::sync::atomic::AtomicUsize, n: usize) {
    for _ in 0..200 {
        if count.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn fallback_against_python_http_server() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("tcpcrypt-http-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let body = pattern(50_000, 9);
    std::fs::write(dir.join("file.bin"), &body).unwrap();
    let mut child = tokio::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cfg = default_config();
    let mut s = TcpcryptStream::connect(&addr, &cfg).await.unwrap();
    assert_eq!(
        s.fallback_reason(),
        Some(&FallbackReason::ServerSentOtherBytes)
    );
    s.write_all(b"GET /file.bin HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(resp.starts_with(b"HTTP/1.0 200"));
    assert_eq!(&resp[split + 4..], &body[..]);
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn plain_clients_against_the_listener() {
    let cfg = config(|b| b.client_hello_wait(Duration::from_millis(200)));
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    // Client speaks first: every byte reaches the application.
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        buf
    });
    let (mut s, _) = listener.accept().await.unwrap();
    assert_eq!(s.fallback_reason(), Some(&FallbackReason::PlainClient));
    let mut req = [0u8; 18];
    s.read_exact(&mut req).await.unwrap();
    assert_eq!(&req, b"GET / HTTP/1.1\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    assert_eq!(&client.await.unwrap(), b"hello");
    // Server speaks first: a silent client gets the banner after the wait.
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).await.unwrap();
        c.write_all(b"QUIT\r\n").await.unwrap();
        buf
    });
    let (mut s, _) = listener.accept().await.unwrap();
    assert_eq!(s.fallback_reason(), Some(&FallbackReason::ClientSilent));
    s.write_all(b"220 hi").await.unwrap();
    let mut quit = [0u8; 6];
    s.read_exact(&mut quit).await.unwrap();
    assert_eq!(&client.await.unwrap(), b"220 hi");
    assert_eq!(&quit, b"QUIT\r\n");
}

#[tokio::test]
async fn server_speaks_first_with_a_tcpcrypt_client() {
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let client = tokio::spawn(async move {
        let mut s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
        let mut banner = [0u8; 9];
        s.read_exact(&mut banner).await.unwrap();
        (s.is_encrypted(), banner)
    });
    let (mut s, _) = listener.accept().await.unwrap();
    s.write_all(b"220 ready").await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(client.await.unwrap(), (true, *b"220 ready"));
}

#[tokio::test]
async fn mandatory_never_sends_application_bytes_in_the_clear() {
    // Against a plain server: an error, and only our hello on the wire.
    let (plain, _, _t) = plain_server(Plain::Echo).await;
    let (addr, rec) = relay(plain, Relay::Pass).await;
    let err = TcpcryptStream::connect(addr, &mandatory())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(matches!(
        Error::from_io(&err),
        Some(Error::EncryptionRequired(
            FallbackReason::ServerSentOtherBytes
        ))
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = rec.lock().unwrap().to_server.clone();
    assert!(
        sent.starts_with(&marker(HelloKind::Pipelined)),
        "only the hello and Init1 went out"
    );
    assert!(sent.len() < 200);
    // Against a tcpcrypt server: the secret never appears on the wire.
    let (server, _, _t2) = tcpcrypt_echo(mandatory()).await;
    let (addr, rec) = relay(server, Relay::Pass).await;
    let s = TcpcryptStream::connect(addr, &mandatory()).await.unwrap();
    let secret = b"the password is swordfish".repeat(40);
    let got = echo_roundtrip(s, secret.clone()).await.unwrap();
    assert_eq!(got, secret);
    let wires = {
        let r = rec.lock().unwrap();
        [r.to_server.clone(), r.to_client.clone()]
    };
    for wire in wires {
        assert!(
            !wire.windows(8).any(|w| w == b"swordfis"),
            "plaintext on the wire"
        );
    }
    // A mandatory server refuses plain clients: they get nothing.
    let mut listener = TcpcryptListener::bind(
        "127.0.0.1:0",
        &config(|b| {
            b.policy(Policy::Mandatory)
                .client_hello_wait(Duration::from_millis(100))
        }),
    )
    .await
    .unwrap();
    let addr = listener.local_addr();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let n = timeout(LIMIT, c.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "no stream delivered"
    );
}

#[tokio::test]
async fn half_close_both_ways() {
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let client = tokio::spawn(async move {
        let mut s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
        s.write_all(b"request").await.unwrap();
        s.shutdown().await.unwrap();
        // Reading still works after our FINp.
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.unwrap();
        reply
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut req = Vec::new();
    s.read_to_end(&mut req).await.unwrap();
    assert_eq!(req, b"request");
    // And writing still works after the peer's FINp.
    s.write_all(b"reply after your FIN").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(client.await.unwrap(), b"reply after your FIN");

    // The other way: the server closes its side first.
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let client = tokio::spawn(async move {
        let mut s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
        let mut greeting = Vec::new();
        s.read_to_end(&mut greeting).await.unwrap();
        s.write_all(b"late answer").await.unwrap();
        s.shutdown().await.unwrap();
        greeting
    });
    let (mut s, _) = listener.accept().await.unwrap();
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"late answer");
    assert_eq!(client.await.unwrap(), b"bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections() {
    // Every peer here speaks tcpcrypt, and a debug build doing a thousand
    // key exchanges at once on two cores (slower still with the pure-Rust
    // backend) can take seconds per handshake: the deadlines are made long
    // so that the test is about correctness under concurrency.
    let patient = Duration::from_secs(60);
    let cfg = config(|b| b.server_hello_timeout(patient).handshake_timeout(patient));
    let server_cfg = config(|b| b.client_hello_wait(patient).handshake_timeout(patient));
    let (addr, seen, _task) = tcpcrypt_echo(server_cfg).await;
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let s = TcpcryptStream::connect(addr, &cfg).await?;
            let data = pattern(2_000 + (i as usize % 7) * 1000, i);
            let got = echo_roundtrip(s, data.clone()).await?;
            Ok::<bool, std::io::Error>(got == data)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if timeout(LIMIT * 3, t).await.unwrap().unwrap().unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000);
    assert_eq!(seen.lock().unwrap().iter().filter(|e| **e).count(), 1000);
}

#[tokio::test]
async fn slowloris_is_dropped_and_others_are_served() {
    let cfg = config(|b| b.handshake_timeout(Duration::from_millis(1500)));
    let (addr, _, _task) = tcpcrypt_echo(cfg.clone()).await;
    let slow = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // One marker byte every 400 ms: never a whole hello in time.
        for b in marker(HelloKind::A) {
            if c.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let mut buf = [0u8; 16];
        timeout(LIMIT, c.read(&mut buf)).await.unwrap()
    });
    // Meanwhile a normal client is served at once.
    let s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
    assert!(s.is_encrypted());
    assert_eq!(
        echo_roundtrip(s, b"not delayed".to_vec()).await.unwrap(),
        b"not delayed"
    );
    // The slow one was cut off: EOF or reset, never an answer.
    match slow.await.unwrap() {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("slowloris got {n} bytes"),
    }
}

/// Clients that never finish their hello, as many as the listener has
/// handshake slots: a newcomer still gets an encrypted connection, the
/// oldest of them giving up its slot once it has had it for a second,
/// long before the handshake timeout (before: the newcomer's hello waited
/// unanswered, and it fell back to plain TCP).
#[tokio::test]
async fn a_listener_full_of_slow_hellos_still_encrypts_a_newcomer() {
    let cfg = config(|b| b.max_pending_handshakes(4));
    let (addr, _, _task) = tcpcrypt_echo(cfg.clone()).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&marker(HelloKind::A)[..4]).await.unwrap();
        slow.push(c);
    }
    // Every slot is taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let s = timeout(LIMIT, TcpcryptStream::connect(addr, &cfg))
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.is_encrypted(),
        "after {:?}: {:?}",
        started.elapsed(),
        s.fallback_reason()
    );
    assert_eq!(
        echo_roundtrip(s, b"got in".to_vec()).await.unwrap(),
        b"got in"
    );
    // The oldest slow client lost its slot: its connection was closed.
    let mut buf = [0u8; 16];
    match timeout(LIMIT, slow[0].read(&mut buf)).await.unwrap() {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("a slow client got {n} bytes"),
    }
}

#[tokio::test]
async fn a_server_that_never_answers_after_its_hello_times_out() {
    // A tcpcrypt server that sends its hello and then stalls.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut hello = marker(HelloKind::B).to_vec();
        hello.extend_from_slice(&[0x45, 0x04, 0x01, 0x23]);
        s.write_all(&hello).await.unwrap();
        tokio::time::sleep(LIMIT).await;
    });
    let cfg = config(|b| b.handshake_timeout(Duration::from_millis(300)));
    let err = timeout(LIMIT, TcpcryptStream::connect(addr, &cfg))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut);
}

#[tokio::test]
async fn resumption_accepted_declined_and_replayed() {
    let server_cfg = default_config();
    let (addr, _, task) = tcpcrypt_echo(server_cfg.clone()).await;
    let (relay_addr, rec) = relay(addr, Relay::Pass).await;
    let client_cfg = default_config();
    let first = TcpcryptStream::connect(relay_addr, &client_cfg)
        .await
        .unwrap();
    assert!(!first.session().unwrap().resumed);
    let first_id = first.session_id().unwrap();
    echo_roundtrip(first, b"one".to_vec()).await.unwrap();
    assert!(client_cfg.client_cache().has_ticket(relay_addr));

    // Accepted: no Init messages, a session ID with the v bit.
    let start = rec.lock().unwrap().to_server.len();
    let second = TcpcryptStream::connect(relay_addr, &client_cfg)
        .await
        .unwrap();
    let info = second.session().unwrap().clone();
    assert!(info.resumed);
    assert_eq!(info.session_id.tep_byte(), 0x80 | Tep::EcdheCurve25519.id());
    assert_ne!(info.session_id, first_id);
    assert_eq!(
        echo_roundtrip(second, b"two".to_vec()).await.unwrap(),
        b"two"
    );
    let resumed_hello = rec.lock().unwrap().to_server[start..start + 8 + 21].to_vec();
    assert!(resumed_hello.starts_with(&marker(HelloKind::A)));

    // Replayed: the same resumption hello again finds nothing to resume.
    let mut replay = TcpStream::connect(addr).await.unwrap();
    replay.write_all(&resumed_hello).await.unwrap();
    let mut answer = vec![0u8; 8 + 4];
    replay.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer[..8], &marker(HelloKind::B));
    assert_eq!(
        &answer[8..],
        &[0x45, 0x04, 0x01, 0x23],
        "a fresh exchange, not a resumption"
    );

    // Declined: a restarted server has no cache; the client falls back to a
    // fresh exchange with it, transparently.
    task.abort();
    drop(task);
    let third_cfg = default_config();
    let (addr2, _, _t) = tcpcrypt_echo(third_cfg).await;
    let ticket_holder = default_config();
    let s = TcpcryptStream::connect(addr2, &ticket_holder)
        .await
        .unwrap();
    echo_roundtrip(s, b"x".to_vec()).await.unwrap();
    ticket_holder.resumption_cache().clear();
    let (addr3, _, _t3) = tcpcrypt_echo(default_config()).await;
    // Move the ticket to a server that never saw it: connect to addr3 with a
    // cache that holds a ticket for addr2 only, so exercise via a server
    // whose cache was flushed instead.
    let _ = addr3;
    let flushed_server = default_config();
    let (addr4, _, _t4) = tcpcrypt_echo(flushed_server.clone()).await;
    let c = default_config();
    let s = TcpcryptStream::connect(addr4, &c).await.unwrap();
    echo_roundtrip(s, b"y".to_vec()).await.unwrap();
    flushed_server.resumption_cache().clear();
    let s = TcpcryptStream::connect(addr4, &c).await.unwrap();
    let info = s.session().unwrap().clone();
    assert!(!info.resumed, "declined: fresh exchange");
    assert_eq!(
        echo_roundtrip(s, b"fresh".to_vec()).await.unwrap(),
        b"fresh"
    );
}

#[tokio::test]
async fn resumption_off_and_no_cache() {
    let server_cfg = config(|b| b.resumption(false));
    let (addr, _, _t) = tcpcrypt_echo(server_cfg).await;
    let c = default_config();
    for _ in 0..2 {
        let s = TcpcryptStream::connect(addr, &c).await.unwrap();
        assert!(!s.session().unwrap().resumed);
        echo_roundtrip(s, b"z".to_vec()).await.unwrap();
    }
    let (addr, _, _t) = tcpcrypt_echo(default_config()).await;
    let c = config(|b| b.cache_sessions(false));
    let s = TcpcryptStream::connect(addr, &c).await.unwrap();
    echo_roundtrip(s, b"z".to_vec()).await.unwrap();
    assert!(!c.client_cache().has_ticket(addr));
}

#[tokio::test]
async fn rekey_under_traffic() {
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let data = pattern(3_000_000, 3);
    let expect = data.clone();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            // Answer on the same (unsplit) stream, and rekey ourselves too.
            if got.len() % 7 == 0 {
                let _ = s.rekey();
            }
            s.write_all(&buf[..n.min(100)]).await.unwrap();
        }
        s.shutdown().await.unwrap();
        (got, s.generations().unwrap())
    });
    let mut s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
    let mut rekeys = 0;
    for chunk in data.chunks(50_000) {
        if s.rekey().is_ok() {
            rekeys += 1;
        }
        s.write_all(chunk).await.unwrap();
        s.flush().await.unwrap();
        let mut echo = vec![0u8; 100];
        let _ = timeout(Duration::from_millis(20), s.read(&mut echo)).await;
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let (got, (server_local, server_peer)) = server.await.unwrap();
    assert!(got == expect, "data intact across rekeys");
    assert!(rekeys >= 10, "{rekeys} rekeys");
    let (local, _) = s.generations().unwrap();
    assert_eq!(
        server_peer, local,
        "server followed every client generation"
    );
    assert!(server_local >= local, "the server answered each rekey");
}

#[tokio::test]
async fn connector_and_acceptor_over_any_transport() {
    let cfg = Arc::new(Config::default());
    let (a, b) = tokio::io::duplex(4096);
    let acceptor = TcpcryptAcceptor::new(cfg.clone());
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.shutdown().await.unwrap();
        s.session_id().unwrap()
    });
    let Connected::Stream(mut s) = TcpcryptConnector::new(cfg.clone())
        .connect(a)
        .await
        .unwrap()
    else {
        panic!("not a stream");
    };
    s.write_all(b"ping").await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ping");
    assert_eq!(s.session_id().unwrap(), server.await.unwrap());
    // Over a transport to a legacy peer, the connector says to reconnect.
    let (a, mut b) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let _ = b.read(&mut buf).await;
        let _ = b.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    match TcpcryptConnector::new(cfg).connect(a).await.unwrap() {
        Connected::Reconnect(r) => assert_eq!(r, FallbackReason::ServerSentOtherBytes),
        Connected::Stream(_) => panic!("legacy peer gave a stream"),
    }
}

#[tokio::test]
async fn policy_off_sends_nothing_extra() {
    let (addr, _, _t) = plain_server(Plain::Echo).await;
    let (relay_addr, rec) = relay(addr, Relay::Pass).await;
    let mut s = TcpcryptStream::connect(relay_addr, &config(|b| b.policy(Policy::Off)))
        .await
        .unwrap();
    assert_eq!(s.fallback_reason(), Some(&FallbackReason::PolicyOff));
    s.write_all(b"raw").await.unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(rec.lock().unwrap().to_server, b"raw");
}

#[tokio::test]
async fn downgrade_is_reported_and_can_be_refused() {
    // A destination that spoke tcpcrypt, then (same address) a plain server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = config(|b| b.refuse_downgrade(true));
    let mut tl = TcpcryptListener::from_listener(listener, &default_config()).unwrap();
    let c = tokio::spawn({
        let cfg = cfg.clone();
        async move { TcpcryptStream::connect(addr, &cfg).await.unwrap() }
    });
    let (_server_side, _) = tl.accept().await.unwrap();
    assert!(c.await.unwrap().is_encrypted());
    drop(tl);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let plain = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            let _ = s.write_all(b"HTTP/1.0 400 no\r\n\r\n").await;
        }
    });
    let err = TcpcryptStream::connect(addr, &cfg).await.unwrap_err();
    assert!(
        matches!(Error::from_io(&err), Some(Error::Downgrade { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn ipv6_loopback() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        // No IPv6 on this host: nothing to test.
        return;
    };
    let cfg = default_config();
    let mut l = TcpcryptListener::from_listener(listener, &cfg).unwrap();
    let addr = l.local_addr();
    let c = tokio::spawn(async move { TcpcryptStream::connect(addr, &cfg).await.unwrap() });
    let (s, peer) = l.accept().await.unwrap();
    assert!(peer.is_ipv6());
    let c = c.await.unwrap();
    assert!(c.is_encrypted());
    assert_eq!(c.session_id(), s.session_id());
}

#[tokio::test]
async fn forgetting_a_session_flushes_both_caches() {
    let server_cfg = default_config();
    let mut l = TcpcryptListener::bind("127.0.0.1:0", &server_cfg)
        .await
        .unwrap();
    let addr = l.local_addr();
    let client_cfg = default_config();
    let c = tokio::spawn({
        let cfg = client_cfg.clone();
        async move { TcpcryptStream::connect(addr, &cfg).await.unwrap() }
    });
    let (s, _) = l.accept().await.unwrap();
    let c = c.await.unwrap();
    assert!(client_cfg.client_cache().has_ticket(addr));
    assert_eq!(server_cfg.resumption_cache().len(), 1);
    c.forget_session();
    s.forget_session();
    assert!(!client_cfg.client_cache().has_ticket(addr));
    assert!(server_cfg.resumption_cache().is_empty());
}

#[tokio::test]
async fn bytes_after_the_finp_frame_are_an_error() {
    let (mut raw, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TcpcryptAcceptor::new(default_config());
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept(server_io).await.unwrap();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got).await;
        (got, r)
    });
    // A hand-driven client that sends a frame after its FINp frame.
    let (mut session, _) = raw_client(&mut raw).await;
    let mut wire = Vec::new();
    session.sealer.seal(b"last words", true, &mut wire).unwrap();
    wire.extend_from_slice(&[0u8; 20]);
    raw.write_all(&wire).await.unwrap();
    raw.shutdown().await.unwrap();
    let (got, result) = timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(got, b"last words");
    let err = result.unwrap_err();
    assert!(
        matches!(
            Error::from_io(&err),
            Some(Error::Protocol(tcpcrypt_tokio::proto::Error::DataAfterFin))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn decrypted_frames_are_lent_in_place_across_a_peer_rekey() {
    use std::io::IoSlice;
    use tcpcrypt_tokio::VectoredBufRead;
    use tcpcrypt_tokio::proto::frame::MAX_DATA;
    use tokio::io::AsyncBufRead;

    let cfg = Arc::new(Config::default());
    // Room for everything: the server finishes before the client reads, so
    // frames pile up as they do for a relay that falls behind.
    let (a, b) = tokio::io::duplex(8 << 20);
    let data = pattern(20 * MAX_DATA, 5);
    let sent = data.clone();
    let server = tokio::spawn(async move {
        let mut s = TcpcryptAcceptor::new(cfg).accept(b).await.unwrap();
        let (first, rest) = sent.split_at(10 * MAX_DATA);
        s.write_all(first).await.unwrap();
        s.rekey().unwrap();
        s.write_all(rest).await.unwrap();
        s.shutdown().await.unwrap();
        s
    });
    let Connected::Stream(mut s) = TcpcryptConnector::new(default_config())
        .connect(a)
        .await
        .unwrap()
    else {
        panic!("not a stream");
    };
    let mut server = server.await.unwrap();
    let (mut received, mut most) = (Vec::new(), 0);
    for round in 0.. {
        let (lent, sizes) = std::future::poll_fn(|cx| {
            let mut bufs = [IoSlice::new(&[]); 64];
            let n = std::task::ready!(s.poll_fill_bufs(cx, &mut bufs))?;
            let lent: Vec<u8> = bufs[..n].iter().flat_map(|b| b.iter().copied()).collect();
            let sizes: Vec<usize> = bufs[..n].iter().map(|b| b.len()).collect();
            std::task::Poll::Ready(Ok::<_, std::io::Error>((lent, sizes)))
        })
        .await
        .unwrap();
        if lent.is_empty() {
            break;
        }
        most = most.max(sizes.len());
        // One slice per frame; the first is the rest of a frame when the
        // previous consume ended inside it.
        let whole_from = round % 2;
        assert!(
            sizes[whole_from.min(sizes.len())..]
                .iter()
                .all(|&n| n == MAX_DATA),
            "round {round}: {sizes:?}"
        );
        // Alternately a part ending inside a frame and all of it.
        let take = if round % 2 == 0 {
            lent.len().saturating_sub(1000).max(1)
        } else {
            lent.len()
        };
        received.extend_from_slice(&lent[..take]);
        std::pin::Pin::new(&mut s).consume(take);
    }
    assert!(received == data, "the data, in order");
    assert!(most > 1, "several frames lent by one call ({most})");
    // The client answered the rekey it read through the lending path.
    assert_eq!(s.generations(), Some((1, 1)));
    drop(s);
    let mut answer = Vec::new();
    timeout(LIMIT, server.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap_err(); // the client never sent its FINp: truncation
    assert_eq!(server.generations(), Some((1, 1)));
}

#[tokio::test]
async fn buffered_reading_of_a_split_half_and_of_a_plain_stream() {
    use tokio::io::AsyncBufReadExt;

    let lines: Vec<String> = (0..5000).map(|i| format!("line {i}")).collect();
    let text = lines.join("\n") + "\n";
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    let sent = text.clone();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(sent.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
    assert!(s.is_encrypted());
    let (read, _write) = s.into_split();
    let mut got = Vec::new();
    let mut reader = read.lines();
    while let Some(line) = timeout(LIMIT, reader.next_line()).await.unwrap().unwrap() {
        got.push(line);
    }
    assert_eq!(got, lines);
    server.await.unwrap();

    // A plain stream (the server echoes): what the handshake read first,
    // then the socket.
    let (addr, _, _t) = plain_server(Plain::Echo).await;
    let mut s = TcpcryptStream::connect(addr, &cfg).await.unwrap();
    assert!(!s.is_encrypted());
    s.write_all(text.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    let mut reader = s.lines();
    while let Some(line) = timeout(LIMIT, reader.next_line()).await.unwrap().unwrap() {
        got.push(line);
    }
    assert_eq!(got, lines);
}

/// A client connection to `addr` that delays its acknowledgements, as a
/// peer with nothing to send does: TCP_QUICKACK off (Linux then waits at
/// least 40 ms before a pure acknowledgement).
async fn delaying_acks(addr: std::net::SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    socket2::SockRef::from(&tcp)
        .set_tcp_quickack(false)
        .unwrap();
    tcp
}

/// Nagle's algorithm holds a small segment while an earlier small one is
/// unacknowledged. The accepting side's handshake ends with a message of
/// its own, which a client with nothing to send acknowledges late: its
/// first application bytes (the answer to a 0-RTT request, a greeting
/// after a full handshake) must not wait for that acknowledgement, a round
/// trip that plain TCP never pays. The control shows that the client does
/// delay its acknowledgements: a plain server's second small write waits
/// for one.
#[tokio::test]
async fn the_accepting_sides_first_bytes_do_not_wait_for_its_handshake_to_be_acknowledged() {
    // Control: a plain server's two small writes, 10 ms apart.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            tokio::spawn(async move {
                s.write_all(b"a").await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                s.write_all(b"b").await.unwrap();
                let _ = s.read(&mut [0u8; 1]).await;
            });
        }
    });
    // The longest of up to three: a test that reads the first byte late
    // starts its clock late.
    let mut held = Duration::ZERO;
    for _ in 0..3 {
        let mut c = delaying_acks(plain_addr).await;
        c.read_exact(&mut [0u8; 1]).await.unwrap();
        let t = std::time::Instant::now();
        c.read_exact(&mut [0u8; 1]).await.unwrap();
        held = held.max(t.elapsed());
        if held >= Duration::from_millis(25) {
            break;
        }
    }
    assert!(
        held >= Duration::from_millis(25),
        "the client acknowledged at once ({held:?}): the test shows nothing"
    );

    // A server that greets each client on accept, and answers its request
    // line; through the stream's own write half for every other
    // connection.
    let cfg = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((s, _)) = listener.accept().await {
            n += 1;
            let greet = !s.session().is_some_and(|i| i.zero_rtt);
            let halves = n % 2 == 0;
            tokio::spawn(async move {
                let mut req = [0u8; 5];
                if halves {
                    let (mut r, mut w) = s.into_split();
                    if greet {
                        w.write_all(b"hi!\n\n").await.unwrap();
                    }
                    r.read_exact(&mut req).await.unwrap();
                    w.write_all(&req).await.unwrap();
                    let _ = r.read(&mut req).await;
                } else {
                    let mut s = s;
                    if greet {
                        s.write_all(b"hi!\n\n").await.unwrap();
                    }
                    s.read_exact(&mut req).await.unwrap();
                    s.write_all(&req).await.unwrap();
                    let _ = s.read(&mut req).await;
                }
            });
        }
    });
    let full = config(|b| b.resumption(false));
    let resuming = default_config();
    // The first connection leaves the ticket the 0-RTT ones resume with.
    let mut warm = TcpcryptStream::connect(addr, &resuming).await.unwrap();
    warm.read_exact(&mut [0u8; 5]).await.unwrap();
    // The waits of each kind of connection, judged by their lower median:
    // a stall is on every connection of a kind (40 ms or more), a busy
    // machine delays only some.
    let (mut greetings, mut answers) = (Vec::new(), Vec::new());
    for i in 0..4 {
        // A full handshake, then the greeting.
        let tcp = delaying_acks(addr).await;
        let mut s = TcpcryptConnector::new(full.clone())
            .connect_tcp(tcp)
            .await
            .unwrap();
        let t = std::time::Instant::now();
        let mut greeting = [0u8; 5];
        s.read_exact(&mut greeting).await.unwrap();
        greetings.push(t.elapsed());
        assert_eq!(&greeting, b"hi!\n\n");
        // A 0-RTT request, then its answer.
        let tcp = delaying_acks(addr).await;
        let t = std::time::Instant::now();
        let mut s = TcpcryptConnector::new(resuming.clone())
            .connect_tcp_with_data(tcp, b"ping\n")
            .await
            .unwrap();
        assert!(s.session().unwrap().zero_rtt, "connection {i}: 0-RTT");
        let mut answer = [0u8; 5];
        s.read_exact(&mut answer).await.unwrap();
        answers.push(t.elapsed());
        assert_eq!(&answer, b"ping\n");
    }
    greetings.sort();
    answers.sort();
    assert!(
        greetings[1] < Duration::from_millis(30),
        "greetings came {greetings:?} after their handshakes"
    );
    assert!(
        answers[1] < Duration::from_millis(30),
        "answers came {answers:?} after their 0-RTT requests"
    );
}

/// Each half of a split stream tells what the whole stream told: the
/// session and its ID, or why it is plain, and the peer.
#[tokio::test]
async fn split_halves_tell_the_session_the_fallback_and_the_peer() {
    let (server, _, _task) = tcpcrypt_echo(default_config()).await;
    let s = TcpcryptStream::connect(server, &default_config())
        .await
        .unwrap();
    let id = s.session_id().expect("encrypted");
    let (r, w) = s.into_split();
    assert_eq!((r.session_id(), w.session_id()), (Some(id), Some(id)));
    assert_eq!((r.fallback_reason(), w.fallback_reason()), (None, None));
    assert_eq!((r.peer_addr(), w.peer_addr()), (Some(server), Some(server)));

    let (plain, _, _task) = plain_server(Plain::Banner).await;
    let s = TcpcryptStream::connect(plain, &default_config())
        .await
        .unwrap();
    let why = s.fallback_reason().cloned().expect("plain");
    let (r, w) = s.into_split();
    assert_eq!((r.session_id(), w.session_id()), (None, None));
    assert_eq!(r.fallback_reason(), Some(&why));
    assert_eq!(w.fallback_reason(), Some(&why));
    assert_eq!((r.peer_addr(), w.peer_addr()), (Some(plain), Some(plain)));
}
