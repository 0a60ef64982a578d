//! The library against an independent second implementation of the
//! in-band wire (`interop/peer/tcpcrypt_peer.py`, Python, written from the
//! RFCs and docs/PROTOCOL.md only): both roles, every TEP and AEAD, with
//! rekeying in both directions, and the same session ID on both ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
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

fn config(tep: Tep, aead: AeadAlgorithm) -> Arc<Config> {
    Arc::new(Config::builder().teps([tep]).aeads([aead]).build().unwrap())
}

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
            let mut server = Running(
                Command::new("python3")
                    .args([
                        PEER,
                        "server",
                        "--port",
                        "0",
                        "--once",
                        "--rekey-after",
                        "3",
                    ])
                    .args(["--tep", &format!("{:#04x}", tep.id())])
                    .args(["--aead", &aead.id().to_string()])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let mut err = BufReader::new(server.0.stderr.take().unwrap());
            let port = line_with(&mut err, "listening")["listening"]
                .as_u64()
                .unwrap();
            let mut s = TcpcryptStream::connect(("127.0.0.1", port as u16), &config(tep, aead))
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
