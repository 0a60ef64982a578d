//! `tcpcrypt demo`: the project's main job, end to end, on this machine.
//!
//! 1. A tcpcrypt HTTP server (the library), a relay in front of it that
//!    records every byte on the wire, and the system's curl run through the
//!    shim against the relay. Shows the response, the session ID each side
//!    holds (the client's is asked of the relay daemon, a private one
//!    started by the shim for the demo, while curl is connected), and a hex dump of the wire: hellos, then
//!    ciphertext, no plaintext.
//! 2. The same curl against a plain HTTP server: the shim falls back and
//!    the page arrives unchanged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpcrypt_tokio::{Config, TcpcryptListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::daemon;
use crate::wire::{self, Request};

const PAGE: &str = "hello from a tcpcrypt server";

/// The session IDs the server saw: its own, and the client's from the
/// relay daemon.
type Seen = (Option<String>, Option<String>);

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("tcpcrypt demo: FAILED: {msg}");
    1
}

pub fn demo() -> i32 {
    let lib = match crate::shim::find() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcpcrypt demo: {e}");
            return 2;
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(lib))
}

/// Reads the request head; returns false if the client went away.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// The client's session ID, as the relay daemon reports curl's connection
/// (waits up to 5 s for the negotiation to finish).
async fn client_session_id(daemon_dir: &Path, peer: SocketAddr) -> Option<String> {
    for _ in 0..500 {
        if let Ok(records) = crate::status::records_in(daemon_dir) {
            for record in records {
                if record["peer"] == peer.to_string().as_str() && record["encrypted"] == true {
                    return record["session_id"].as_str().map(str::to_string);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn hexdump(label: &str, bytes: &[u8], max: usize) {
    println!(
        "  {label} ({} bytes on the wire), first {}:",
        bytes.len(),
        max.min(bytes.len())
    );
    for (i, chunk) in bytes[..max.min(bytes.len())].chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        println!("    {:04x}  {:<48} {}", i * 16, hex.join(" "), ascii);
    }
}

/// A relay that records both directions.
async fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<Mutex<(Vec<u8>, Vec<u8>)>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let rec: Arc<Mutex<(Vec<u8>, Vec<u8>)>> = Arc::default();
    let rec2 = rec.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let Ok(s) = TcpStream::connect(target).await else {
                return;
            };
            let (mut cr, mut cw) = c.into_split();
            let (mut sr, mut sw) = s.into_split();
            let r1 = rec2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 16384];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r1.lock().unwrap().0.extend_from_slice(&buf[..n]);
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            });
            let r2 = rec2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 16384];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r2.lock().unwrap().1.extend_from_slice(&buf[..n]);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    (addr, rec)
}

async fn curl(lib: &Path, status_dir: &Path, url: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", url])
        .env("LD_PRELOAD", lib)
        .env("TCPCRYPT_RUNTIME_DIR", status_dir)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn run(lib: PathBuf) -> i32 {
    // A daemon of the demo's own, in a private directory, stopped at the
    // end: the user's own daemon (if any) is left alone.
    let daemon_dir = std::env::temp_dir().join(format!("tcpcrypt-demo-{}", std::process::id()));
    if let Err(e) = wire::private_dir(&daemon_dir) {
        return fail(format!("{}: {e}", daemon_dir.display()));
    }
    let code = steps(&lib, &daemon_dir).await;
    let _ = daemon::ask(&daemon_dir, &Request::Shutdown);
    let _ = std::fs::remove_dir_all(&daemon_dir);
    code
}

async fn steps(lib: &Path, status_dir: &Path) -> i32 {
    println!(
        "tcpcrypt demo: curl, unmodified, through libtcpcrypt.so ({})",
        lib.display()
    );

    // 1. A tcpcrypt server.
    // The demo's only client is curl through the shim, which sends its hello
    // at once: a long wait costs nothing and survives a loaded machine.
    let config = Config::builder()
        .client_hello_wait(Duration::from_secs(5))
        .build()
        .expect("valid configuration");
    let Ok(mut listener) = TcpcryptListener::bind("127.0.0.1:0", &Arc::new(config)).await else {
        return fail("cannot bind a loopback port");
    };
    let server_addr = listener.local_addr();
    let (relay, wire) = recording_relay(server_addr).await;
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let dir = status_dir.to_path_buf();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            if !read_head(&mut s).await {
                continue;
            }
            let server_id = s.session_id().map(|i| i.to_string());
            // The relay connected to us; curl's shim connected to the relay.
            let client_id = match s.session() {
                Some(_) => client_session_id(&dir, relay).await,
                None => None,
            };
            let _ = peer;
            *seen2.lock().unwrap() = Some((server_id.clone(), client_id));
            let body = format!(
                "{PAGE}\nserver session ID: {}\n",
                server_id.unwrap_or_else(|| "none".into())
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });

    println!("\n1. curl -> recording relay {relay} -> tcpcrypt server {server_addr}");
    let response = match curl(lib, status_dir, &format!("http://{relay}/")).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    println!("  response:");
    for line in response.lines() {
        println!("    {line}");
    }
    let Some((Some(server_id), client_id)) = seen.lock().unwrap().clone() else {
        return fail("the server did not see an encrypted connection");
    };
    let Some(client_id) = client_id else {
        return fail("the relay daemon did not report the client's session ID");
    };
    println!("  server session ID: {server_id}");
    println!("  client session ID: {client_id}");
    if server_id != client_id {
        return fail("the two ends hold different session IDs");
    }
    println!("  the same on both ends: applications can bind authentication to it");
    let (to_server, to_client) = wire.lock().unwrap().clone();
    hexdump("client -> server", &to_server, 96);
    hexdump("server -> client", &to_client, 96);
    let plaintext = |w: &[u8], s: &[u8]| w.windows(s.len()).any(|x| x == s);
    if !to_server.starts_with(b"\xE5ENO\x01") || !to_client.starts_with(b"\xE5ENO\x01B") {
        return fail("the wire does not start with the tcpcrypt hellos");
    }
    if plaintext(&to_server, b"GET /")
        || plaintext(&to_client, PAGE.as_bytes())
        || plaintext(&to_client, b"HTTP/1.1")
    {
        return fail("plaintext on the wire");
    }
    println!(
        "  the wire holds the in-band ENO hellos (E5 'ENO' 01 ...), then only ciphertext: no request, no page in the clear"
    );

    // 2. A plain server.
    let Ok(plain) = TcpListener::bind("127.0.0.1:0").await else {
        return fail("cannot bind a loopback port");
    };
    let plain_addr = plain.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    let body = "hello from a plain server\n";
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            });
        }
    });
    println!("\n2. curl -> plain HTTP server {plain_addr} (does not speak tcpcrypt)");
    match curl(lib, status_dir, &format!("http://{plain_addr}/")).await {
        Ok(r) if r == "hello from a plain server\n" => {
            println!("  response: {}", r.trim());
            println!(
                "  the shim saw a legacy server and fell back to plain TCP: the connection works as before"
            );
        }
        Ok(r) => return fail(format!("unexpected response from the plain server: {r:?}")),
        Err(e) => return fail(e),
    }
    println!("\ndemo: OK");
    0
}
