//! The library against an independent second implementation of the
//! in-band wire (`interop/peer/tcpcrypt_peer.py`, Python, written from the
//! RFCs and docs/PROTOCOL.md only): both roles, every TEP and AEAD, with
//! rekeying in both directions, and the same session ID on both ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tcpcrypt_tokio::{AeadAlgorithm, Config, TcpcryptListener, TcpcryptStream, Tep};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peer/tcpcrypt_peer.py");
const LIMIT: Duration = Duration::from_secs(60);

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the Python server on a free port with `args`; returns it, its
/// stderr (JSON lines) and its port.
fn python_server(args: &[&str]) -> (Running, BufReader<ChildStderr>, u16) {
    let mut server = Running(
        Command::new("python3")
            .args([PEER, "server", "--port", "0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(server.0.stderr.take().unwrap());
    let port = line_with(&mut err, "listening")["listening"]
        .as_u64()
        .unwrap();
    (server, err, port as u16)
}

/// One TEP and one AEAD; as a server's, a long wait for the hello, so that
/// a loaded machine's slow Python client is not taken for a plain one.
fn config(tep: Tep, aead: AeadAlgorithm) -> Arc<Config> {
    Arc::new(
        Config::builder()
            .teps([tep])
            .aeads([aead])
            .client_hello_wait(HELLO_WAIT)
            .build()
            .unwrap(),
    )
}

const HELLO_WAIT: Duration = Duration::from_secs(10);

/// Data with a recognisable pattern.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The JSON lines a peer printed on stderr, until one has `key`.
fn line_with(lines: &mut impl BufRead, key: &str) -> serde_json::Value {
    for _ in 0..20 {
        let mut line = String::new();
        if lines.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v.get(key).is_some() {
                return v;
            }
        }
    }
    panic!("the peer printed no line with {key}");
}

#[tokio::test]
async fn the_library_connects_to_the_python_server_with_every_tep_and_aead() {
    for tep in Tep::ALL {
        for aead in AeadAlgorithm::ALL {
            let (tep_id, aead_id) = (format!("{:#04x}", tep.id()), aead.id().to_string());
            let (mut server, mut err, port) = python_server(&[
                "--once",
                "--rekey-after",
                "3",
                "--tep",
                &tep_id,
                "--aead",
                &aead_id,
            ]);
            let mut s = TcpcryptStream::connect(("127.0.0.1", port), &config(tep, aead))
                .await
                .unwrap();
            assert!(s.is_encrypted(), "{tep} {aead:?}");
            let sent = data(200_000, tep.id());
            let exchange = async {
                // Rekeys of ours between writes; the server rekeys every
                // third frame of its own.
                for chunk in sent.chunks(50_000) {
                    s.write_all(chunk).await?;
                    s.flush().await?;
                    let _ = s.rekey();
                }
                s.shutdown().await?;
                let mut echo = Vec::new();
                s.read_to_end(&mut echo).await?;
                Ok::<_, std::io::Error>(echo)
            };
            let echo = tokio::time::timeout(LIMIT, exchange)
                .await
                .unwrap()
                .unwrap();
            assert!(echo == sent, "the echo, intact ({tep} {aead:?})");
            let keyed = line_with(&mut err, "session_id");
            assert_eq!(
                keyed["session_id"].as_str().unwrap(),
                s.session_id().unwrap().to_string(),
                "{tep} {aead:?}"
            );
            let (ours, theirs) = s.generations().unwrap();
            assert!(
                ours >= 1 && theirs >= 1,
                "rekeys both ways: {ours}, {theirs}"
            );
            assert!(server.0.wait().unwrap().success(), "{tep} {aead:?}");
        }
    }
}

#[tokio::test]
async fn the_python_client_connects_to_the_library_with_every_tep_and_aead() {
    for tep in Tep::ALL {
        for aead in AeadAlgorithm::ALL {
            for pipeline in [true, false] {
                let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config(tep, aead))
                    .await
                    .unwrap();
                let port = listener.local_addr().port();
                let server = tokio::spawn(async move {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    s.write_all(&got).await.unwrap();
                    s.shutdown().await.unwrap();
                    (
                        s.session_id().unwrap().to_string(),
                        s.generations().unwrap(),
                    )
                });
                let sent = data(150_000, aead.id() as u8);
                let mut client = tokio::process::Command::new("python3");
                client
                    .args([
                        PEER,
                        "client",
                        "127.0.0.1",
                        &port.to_string(),
                        "--rekey-after",
                        "2",
                    ])
                    .args(["--tep", &format!("{:#04x}", tep.id())])
                    .args(["--aead", &aead.id().to_string()])
                    .kill_on_drop(true)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                if !pipeline {
                    client.arg("--no-pipeline");
                }
                let mut client = client.spawn().unwrap();
                let mut stdin = client.stdin.take().unwrap();
                let input = sent.clone();
                let writer = tokio::spawn(async move { stdin.write_all(&input).await });
                let out = tokio::time::timeout(LIMIT, client.wait_with_output())
                    .await
                    .unwrap()
                    .unwrap();
                writer.await.unwrap().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success(),
                    "{tep} {aead:?} pipeline {pipeline}: {stderr}"
                );
                assert!(out.stdout == sent, "the echo, intact ({tep} {aead:?})");
                let (id, (ours, theirs)) =
                    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
                assert!(stderr.contains(&id), "the same session ID: {stderr} / {id}");
                assert!(
                    ours >= 1 && theirs >= 1,
                    "rekeys both ways: {ours}, {theirs}"
                );
            }
        }
    }
}

/// Runs the Python client against the library on `port` with `args`,
/// `input` on its standard input; returns its output once it exits.
async fn python_client(port: u16, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut client = tokio::process::Command::new("python3")
        .args([PEER, "client", "127.0.0.1", &port.to_string()])
        .args(args)
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        stdin.write_all(&input).await?;
        stdin.shutdown().await
    });
    let out = tokio::time::timeout(LIMIT, client.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap().unwrap();
    out
}

/// The JSON lines of a peer's stderr that describe a keyed session.
fn keyed_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["encrypted"] == true)
        .collect()
}

#[tokio::test]
async fn the_library_resumes_with_0rtt_data_against_the_python_server() {
    let (_server, mut err, port) = python_server(&[]);
    let cfg = Arc::new(Config::default());
    // Below and above the early limit: the rest follows the handshake.
    for (i, len) in [1000, 1000, 1000, 40_000].into_iter().enumerate() {
        let sent = data(len, i as u8);
        let exchange = async {
            let mut s = TcpcryptStream::connect_with_data(("127.0.0.1", port), &cfg, &sent).await?;
            s.shutdown().await?;
            let mut echo = Vec::new();
            s.read_to_end(&mut echo).await?;
            Ok::<_, std::io::Error>((s.session().unwrap().clone(), echo))
        };
        let (info, echo) = tokio::time::timeout(LIMIT, exchange)
            .await
            .unwrap()
            .unwrap();
        assert!(echo == sent, "connection {i}: the echo, intact");
        assert_eq!(
            (info.resumed, info.zero_rtt),
            (i > 0, i > 0),
            "connection {i}"
        );
        let theirs = line_with(&mut err, "encrypted");
        assert_eq!(theirs["session_id"], info.session_id.to_string());
        assert_eq!(theirs["resumed"], i > 0, "{theirs}");
        assert_eq!(theirs["zero_rtt"], i > 0, "{theirs}");
    }
}

#[tokio::test]
async fn the_python_client_resumes_with_0rtt_data_against_the_library() {
    for early in [true, false] {
        let cfg = Arc::new(
            Config::builder()
                .early_data(early)
                .client_hello_wait(HELLO_WAIT)
                .build()
                .unwrap(),
        );
        let mut listener = TcpcryptListener::bind("127.0.0.1:0", &cfg).await.unwrap();
        let port = listener.local_addr().port();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                let info = s.session().unwrap().clone();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(&got).await.unwrap();
                s.shutdown().await.unwrap();
                seen.push((
                    info.session_id.to_string(),
                    info.resumed,
                    info.zero_rtt,
                    got.len(),
                ));
            }
            seen
        });
        let sent = data(5000, 7);
        let out = python_client(port, &["--connections", "3"], &sent).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(out.stdout == sent.repeat(3), "three echoes, intact");
        let seen = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
        let lines = keyed_lines(&stderr);
        assert_eq!(lines.len(), 3, "{stderr}");
        for (i, ((id, resumed, zero_rtt, got), line)) in seen.iter().zip(&lines).enumerate() {
            assert_eq!(*got, sent.len(), "connection {i}: delivered once");
            assert_eq!(line["session_id"], id.as_str());
            // A library server with 0-RTT off answers a fresh exchange.
            assert_eq!(*resumed, i > 0 && early, "connection {i}");
            assert_eq!(*zero_rtt, i > 0 && early, "connection {i}");
            assert_eq!(line["resumed"], *resumed);
            assert_eq!(line["zero_rtt"], *zero_rtt);
        }
    }
}

#[tokio::test]
async fn the_python_client_sends_a_new_hello_when_the_library_says_it_came_late() {
    // The library's server waits 300 ms for a hello on this fast path;
    // the Python client stays silent for 600 ms, as after a hello lost
    // twice (docs/PROTOCOL.md 3.4 rule 1).
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &Arc::new(Config::default()))
        .await
        .unwrap();
    let port = listener.local_addr().port();
    let server = tokio::spawn(async move {
        let mut ended = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let read = s.read_to_end(&mut got).await;
            if read.is_ok() {
                s.write_all(&got).await.unwrap();
                s.shutdown().await.unwrap();
            }
            ended.push(read.map(|_| s.session_id().map(|id| id.to_string())));
        }
        ended
    });
    let sent = data(50_000, 9);
    let out = python_client(port, &["--hello-delay", "0.6"], &sent).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout == sent, "the echo, intact");
    let ended = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    // The late connection failed on the server, never as data; the new
    // hello negotiated.
    let late = ended[0].as_ref().unwrap_err();
    assert!(
        matches!(
            tcpcrypt_tokio::Error::from_io(late),
            Some(tcpcrypt_tokio::Error::Protocol(
                tcpcrypt_tokio::proto::Error::LateHello
            ))
        ),
        "{late:?}"
    );
    let id = ended[1].as_ref().unwrap().clone().expect("encrypted");
    let lines = keyed_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["session_id"], id.as_str());
    assert_eq!(lines[0]["late_retries"], 1, "{stderr}");
}

/// A relay on loopback to `target` that holds the client's first bytes of
/// its first connection for `delay` (a hello lost twice on the way), and
/// passes everything else at once.
async fn late_first_hello(target: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 0..8 {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                if i == 0 {
                    let mut first = vec![0u8; 64 * 1024];
                    let Ok(n) = client.read(&mut first).await else {
                        return;
                    };
                    tokio::time::sleep(delay).await;
                    if server.write_all(&first[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = tokio::time::timeout(
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
async fn the_library_sends_a_new_hello_when_the_python_server_says_it_came_late() {
    let (_server, mut err, port) = python_server(&["--hello-wait", "0.1"]);
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let relay = late_first_hello(target, Duration::from_millis(400)).await;
    let mut s = tokio::time::timeout(
        LIMIT,
        TcpcryptStream::connect(relay, &Arc::new(Config::default())),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(s.is_encrypted(), "{:?}", s.fallback_reason());
    let sent = data(50_000, 11);
    s.write_all(&sent).await.unwrap();
    s.shutdown().await.unwrap();
    let mut echo = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert!(echo == sent, "the echo, intact");
    let late = line_with(&mut err, "error");
    assert_eq!(late["error"], "LateHello", "{late}");
    assert_eq!(late["late_marker"], true, "{late}");
    let keyed = line_with(&mut err, "session_id");
    assert_eq!(
        keyed["session_id"].as_str().unwrap(),
        s.session_id().unwrap().to_string()
    );
}
