//! `connect`, `listen`, `check`, `proxy` and `bench` run as a user would,
//! against real processes and servers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tcpcrypt_tokio::{Config, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{BIN, build_shim, next_json};

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tcpcrypt ARGS` with piped standard streams.
fn start(args: &[&str]) -> Running {
    Running(
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Starts `tcpcrypt listen --json ARGS 127.0.0.1:0`: the process, its
/// stderr lines, and the address it listens on.
fn listen(args: &[&str]) -> (Running, BufReader<std::process::ChildStderr>, SocketAddr) {
    let mut all = vec!["listen", "--json"];
    all.extend_from_slice(args);
    all.push("127.0.0.1:0");
    let mut child = start(&all);
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    let addr = next_json(&mut err)["listening"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (child, err, addr)
}

/// Everything a child's pipe gives until it closes.
fn read_all(mut pipe: impl Read) -> String {
    let mut text = String::new();
    pipe.read_to_string(&mut text).unwrap();
    text
}

/// Waits up to 20 s for the process to exit; its status code.
fn wait(child: &mut Running) -> Option<i32> {
    for _ in 0..2000 {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the process did not exit");
}

/// A plain server thread that answers `reply` as soon as a client sends
/// anything, as a web server does to a request it cannot parse.
fn answering_server(reply: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 1024];
            if s.read(&mut buf).unwrap_or(0) > 0 {
                let _ = s.write_all(reply);
            }
        }
    });
    addr
}

/// A plain server thread: answers each connection with `reply` once the
/// client has half-closed, and hands back what each client sent.
fn plain_server(reply: &'static [u8]) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = s.write_all(reply);
            let _ = tx.send(got);
        }
    });
    (addr, rx)
}

#[test]
fn connect_and_listen_carry_both_directions_encrypted() {
    let (mut server, mut server_err, addr) = listen(&[]);
    let mut client = start(&["connect", "--json", &addr.to_string()]);
    let mut client_err = BufReader::new(client.0.stderr.take().unwrap());
    // A megabyte each way, then the end of input: a half-close each way.
    let up: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let mut client_in = client.0.stdin.take().unwrap();
    let mut server_in = server.0.stdin.take().unwrap();
    let writers = [
        std::thread::spawn(move || client_in.write_all(&up2).unwrap()),
        std::thread::spawn(move || server_in.write_all(&down2).unwrap()),
    ];
    let mut client_out = client.0.stdout.take().unwrap();
    let mut server_out = server.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        server_out.read_to_end(&mut got).unwrap();
        got
    });
    let mut got_down = Vec::new();
    client_out.read_to_end(&mut got_down).unwrap();
    let got_up = reader.join().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(wait(&mut client), Some(0));
    assert_eq!(wait(&mut server), Some(0));
    assert!(got_up == up, "server received the client's input intact");
    assert!(
        got_down == down,
        "client received the server's input intact"
    );
    let (c, s) = (next_json(&mut client_err), next_json(&mut server_err));
    assert_eq!(c["encrypted"], true);
    assert_eq!(s["encrypted"], true);
    assert_eq!(
        (c["role"].as_str(), s["role"].as_str()),
        (Some("A"), Some("B"))
    );
    let id = c["session_id"].as_str().unwrap();
    assert_eq!(id.len(), 66);
    assert_eq!(c["session_id"], s["session_id"]);
    assert!(c["reason"].is_null());
}

#[test]
fn connect_falls_back_to_a_plain_server_and_mandatory_refuses_it() {
    let (addr, received) = plain_server(b"plain reply");
    let mut client = start(&["connect", &addr.to_string()]);
    client
        .0
        .stdin
        .take()
        .unwrap()
        .write_all(b"plain hello")
        .unwrap();
    let out = read_all(client.0.stdout.take().unwrap());
    let err = read_all(client.0.stderr.take().unwrap());
    assert_eq!(wait(&mut client), Some(0));
    assert_eq!(out, "plain reply");
    assert!(err.contains("plain TCP"), "{err}");
    // The first connection carried the hello, the second the data.
    let first = received.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.starts_with(b"\xE5ENO\x01"));
    assert_eq!(
        received.recv_timeout(Duration::from_secs(20)).unwrap(),
        b"plain hello"
    );

    let mut client = start(&["connect", "--mandatory", &addr.to_string()]);
    client.0.stdin.take().unwrap().write_all(b"secret").unwrap();
    assert_eq!(wait(&mut client), Some(1));
    let err = read_all(client.0.stderr.take().unwrap());
    assert!(err.contains("mandatory"), "{err}");
    let sent = received.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        !sent.windows(6).any(|w| w == b"secret"),
        "no application byte in the clear"
    );
}

#[test]
fn listen_serves_plain_clients_and_keep_open_serves_one_after_another() {
    let (mut server, mut err, addr) = listen(&["--keep-open"]);
    drop(server.0.stdin.take()); // nothing to send: half-close at once
    let mut out = BufReader::new(server.0.stdout.take().unwrap());
    for text in [&b"first\n"[..], b"second\n"] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(text).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let report = next_json(&mut err);
        assert_eq!(report["encrypted"], false);
        assert_eq!(report["reason"], "the client does not speak tcpcrypt");
        let mut line = Vec::new();
        out.read_until(b'\n', &mut line).unwrap();
        assert_eq!(line, text);
    }
    assert!(server.0.try_wait().unwrap().is_none(), "still listening");
}

#[test]
fn listen_keep_open_negotiates_with_waiting_clients_while_one_is_served() {
    let (mut server, mut err, addr) = listen(&["--keep-open"]);
    drop(server.0.stdin.take()); // nothing to send: half-close at once
    // A plain client that the listener serves and that never leaves.
    let mut holder = TcpStream::connect(addr).unwrap();
    holder.write_all(b"hold\n").unwrap();
    assert_eq!(next_json(&mut err)["encrypted"], false);
    // A tcpcrypt client meanwhile: its handshake is not held up behind the
    // connection being served (it used to wait in the backlog until its
    // hello timed out, then go plain).
    let mut client = start(&["connect", "--json", &addr.to_string()]);
    let mut client_err = BufReader::new(client.0.stderr.take().unwrap());
    let report = next_json(&mut client_err);
    assert_eq!(report["encrypted"], true, "{report}");
    // Once the first client leaves, the second is served.
    drop(holder);
    client.0.stdin.take().unwrap().write_all(b"hi").unwrap();
    assert_eq!(wait(&mut client), Some(0));
    assert_eq!(next_json(&mut err)["encrypted"], true);
}

#[test]
fn listen_mandatory_turns_plain_clients_away_and_serves_the_next_tcpcrypt_one() {
    let (mut server, mut err, addr) = listen(&["--mandatory"]);
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no byte for a plain client");
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("mandatory"), "{line}");
    assert!(server.0.try_wait().unwrap().is_none(), "still waiting");
    drop(server.0.stdin.take());
    let mut client = start(&["connect", &addr.to_string()]);
    client.0.stdin.take().unwrap().write_all(b"hi").unwrap();
    assert_eq!(wait(&mut client), Some(0));
    assert_eq!(next_json(&mut err)["encrypted"], true);
    assert_eq!(wait(&mut server), Some(0));
    let out = read_all(server.0.stdout.take().unwrap());
    assert_eq!(out, "hi");
}

fn check(target: &str) -> (Option<i32>, Value) {
    let out = Command::new(BIN)
        .args(["check", "--json", target])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), v)
}

/// Its clients speak tcpcrypt or speak first: a long wait for the hello
/// keeps a loaded machine from mistaking a slow client for a plain one.
fn patient() -> Arc<Config> {
    Arc::new(
        Config::builder()
            .client_hello_wait(Duration::from_secs(10))
            .build()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_tcpcrypt_plain_and_unreachable_destinations() {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &patient())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let id = s.session_id().map(|i| i.to_string());
        // The probe closes cleanly: a FINp, not a truncation.
        let mut rest = Vec::new();
        let clean = s.read_to_end(&mut rest).await.is_ok();
        (id, clean)
    });
    let target = addr.to_string();
    let (code, v) = tokio::task::spawn_blocking(move || check(&target))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let (id, clean) = server.await.unwrap();
    assert_eq!(v["encrypted"], true);
    assert_eq!(v["session_id"].as_str(), id.as_deref());
    assert_eq!(v["tep"], "TCPCRYPT_ECDHE_Curve25519");
    assert_eq!(v["aead"], "AEAD_AES_128_GCM");
    assert!(v["handshake_ms"].as_f64().unwrap() > 0.0);
    assert!(v["reason"].is_null());
    assert!(clean, "the probe ended with a FINp");

    let plain = answering_server(b"HTTP/1.0 400 Bad Request\r\n\r\n");
    let (code, v) = tokio::task::spawn_blocking(move || check(&plain.to_string()))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "the probe ran");
    assert_eq!(v["encrypted"], false);
    assert!(v["session_id"].is_null());
    assert_eq!(v["reason"], "the server does not speak tcpcrypt");

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, v) = tokio::task::spawn_blocking(move || check(&closed.to_string()))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "nothing to probe");
    assert_eq!(v["reachable"], false);
    assert_eq!(v["encrypted"], false);
    assert!(v["reason"].as_str().unwrap().contains("refused"), "{v}");
}

/// Reads a PROXY protocol v2 header: source address and the session ID TLV.
fn read_proxy_v2(s: &mut TcpStream) -> (SocketAddr, Option<Vec<u8>>) {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).unwrap();
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(fixed[12], 0x21, "version 2, PROXY");
    assert_eq!(fixed[13], 0x11, "TCP over IPv4");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    let ip = std::net::Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
    let port = u16::from_be_bytes([rest[8], rest[9]]);
    let mut tlvs = &rest[12..];
    let mut id = None;
    while tlvs.len() >= 3 {
        let (t, l) = (tlvs[0], u16::from_be_bytes([tlvs[1], tlvs[2]]) as usize);
        if t == 0xE0 {
            id = Some(tlvs[3..3 + l].to_vec());
        }
        tlvs = &tlvs[3 + l..];
    }
    (SocketAddr::from((ip, port)), id)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts a proxy and waits until it accepts connections.
fn proxy(args: &[&str], listen: SocketAddr) -> Running {
    let mut all = vec!["proxy", "--listen"];
    let listen_text = listen.to_string();
    all.push(&listen_text);
    all.extend_from_slice(args);
    let mut child = start(&all);
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");
    // Keep draining stderr so the proxy never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_server_mode_hands_the_session_id_to_the_backend_in_proxy_v2() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let seen = std::thread::spawn(move || {
        let mut out = Vec::new();
        for s in backend.incoming().take(2) {
            let mut s = s.unwrap();
            let (source, id) = read_proxy_v2(&mut s);
            let mut line = [0u8; 5];
            s.read_exact(&mut line).unwrap();
            s.write_all(b"pong!").unwrap();
            out.push((source, id, line));
        }
        out
    });
    let listen = free_port();
    let _proxy = proxy(
        &[
            "--mode",
            "server",
            "--to",
            &backend_addr.to_string(),
            "--proxy-protocol",
            "--client-hello-wait",
            "10s",
        ],
        listen,
    );
    // A tcpcrypt client.
    let mut client = TcpcryptStream::connect(listen, &patient()).await.unwrap();
    let client_local = client.get_ref().local_addr().unwrap();
    client.write_all(b"ping!").await.unwrap();
    let mut pong = [0u8; 5];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong!");
    let client_id = client.session_id().expect("encrypted");
    drop(client);
    // A plain client, speaking first.
    let plain_local = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.write_all(b"plain").unwrap();
        let mut pong = [0u8; 5];
        s.read_exact(&mut pong).unwrap();
        s.local_addr().unwrap()
    })
    .await
    .unwrap();
    let seen = seen.join().unwrap();
    assert_eq!(seen[0].0, client_local, "the client's real address");
    assert_eq!(seen[0].1.as_deref(), Some(&client_id.as_bytes()[..]));
    assert_eq!(&seen[0].2, b"ping!");
    assert_eq!(seen[1].0, plain_local);
    assert_eq!(seen[1].1, None, "no session ID for a plain client");
    assert_eq!(&seen[1].2, b"plain");
}

/// A Python HTTP/1.1 backend that answers every request with the values it
/// received for the header, and the size of the body.
const ECHO_HEADER_BACKEND: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        text = "%s|%d\n" % (",".join(self.headers.get_all("Tcpcrypt-Session-Id") or []), len(body))
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = answer
    do_POST = answer
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_server_mode_sets_the_http_header_on_every_request_and_strips_forgeries() {
    let mut backend = Running(
        Command::new("python3")
            .args(["-c", ECHO_HEADER_BACKEND])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut port = String::new();
    BufReader::new(backend.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let backend_addr = format!("127.0.0.1:{}", port.trim());
    let listen = free_port();
    let _proxy = proxy(
        &[
            "--mode",
            "server",
            "--to",
            &backend_addr,
            "--http-header",
            "--client-hello-wait",
            "10s",
        ],
        listen,
    );
    // Three requests on one encrypted connection, each with a forged
    // header, one with a body.
    let mut client = TcpcryptStream::connect(listen, &patient()).await.unwrap();
    let id = client.session_id().expect("encrypted").to_string();
    let requests = "GET /a HTTP/1.1\r\nHost: x\r\nTcpcrypt-Session-Id: forged\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: x\r\ntcpcrypt-session-id: forged\r\nContent-Length: 5\r\n\r\nhello\
        GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    client.write_all(requests.as_bytes()).await.unwrap();
    let mut answers = String::new();
    client.read_to_string(&mut answers).await.unwrap();
    let bodies: Vec<&str> = answers
        .split("\r\n\r\n")
        .skip(1)
        .map(|b| b.split('\n').next().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [format!("{id}|0"), format!("{id}|5"), format!("{id}|0")],
        "{answers}"
    );
    // A plain client's forgery is removed and nothing is added.
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nTcpcrypt-Session-Id: forged\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer.ends_with("\r\n\r\n|0\n"), "{answer}");
    // Ambiguous framing is refused rather than passed on.
    let mut client = TcpcryptStream::connect(listen, &patient()).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

/// A proxy in client mode to `to`, refusing plain TCP: where it listens.
fn mandatory_client_proxy(to: SocketAddr) -> (SocketAddr, Running) {
    let listen = free_port();
    let to = to.to_string();
    let args = ["--mode", "client", "--to", &to, "--mandatory"];
    (listen, proxy(&args, listen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_client_mode_carries_plain_clients_to_a_tcpcrypt_server() {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &patient())
        .await
        .unwrap();
    let server_addr = listener.local_addr();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
        (s.session_id(), got)
    });
    let (listen, _proxy) = mandatory_client_proxy(server_addr);
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.write_all(b"through the proxy").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut echoed = Vec::new();
        s.read_to_end(&mut echoed).unwrap();
        echoed
    })
    .await
    .unwrap();
    let (id, got) = server.await.unwrap();
    assert!(id.is_some(), "the server saw an encrypted connection");
    assert_eq!(got, b"through the proxy");
    assert_eq!(echoed, b"through the proxy");

    // Under --mandatory, a plain destination is refused with a reset.
    let (plain, received) = plain_server(b"plain");
    let (listen, _proxy) = mandatory_client_proxy(plain);
    let result = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        let _ = s.write_all(b"secret");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
    })
    .await
    .unwrap();
    assert!(result.is_err(), "reset, not an empty answer: {result:?}");
    let sent = received.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(!sent.windows(6).any(|w| w == b"secret"));
}

/// Sockets a process holds.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// A local client that writes and closes, while the tcpcrypt server reads
/// to the end and then keeps its side open without a word: the client's
/// closed socket is the kernel's to end, and so is the proxy's relay,
/// which used to hold both connections for as long as the proxy ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_lets_go_of_a_connection_its_local_client_closed() {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &patient())
        .await
        .unwrap();
    let server_addr = listener.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let clean = s.read_to_end(&mut got).await.is_ok();
        let _ = tx.send((clean, got));
        // Silent and open, for longer than the test.
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(s);
    });
    let (listen, proxy) = mandatory_client_proxy(server_addr);
    let pid = proxy.0.id();
    let idle = sockets_of(pid);
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.write_all(b"last words").unwrap();
    })
    .await
    .unwrap();
    let (clean, got) = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .unwrap()
        .unwrap();
    assert!(clean && got == b"last words");
    assert_eq!(sockets_of(pid), idle + 2, "relaying");
    // The proxy looks every 5 s.
    let start = std::time::Instant::now();
    while sockets_of(pid) > idle {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the proxy still holds the connection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stream cut on its tcpcrypt side (TCP's FIN without FINp: what a
/// killed peer leaves) reaches the proxy's plain side as a reset, never as
/// a clean end: a plain peer has no FINp to tell a complete stream from a
/// cut one. In client mode (the server cuts) and in server mode, with and
/// without `--http-header` (the client cuts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_reaches_the_proxys_plain_side_as_a_reset() {
    /// FIN without FINp after `n` bytes, the socket kept open.
    async fn cut(mut s: TcpcryptStream, n: usize) {
        s.write_all(&vec![7u8; n]).await.unwrap();
        s.flush().await.unwrap();
        s.get_mut().shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // Client mode.
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &patient())
        .await
        .unwrap();
    let server_addr = listener.local_addr();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        cut(s, 100_000).await;
    });
    let (listen, _proxy) = mandatory_client_proxy(server_addr);
    let read = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen)?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got.len())
    })
    .await
    .unwrap();
    assert!(
        read.is_err(),
        "the client saw a clean end after {read:?} bytes"
    );

    // Server mode: a plain backend that reads to the end.
    for header in [None, Some("X-Tcpcrypt-Session")] {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_addr = backend.local_addr().unwrap();
        let read = std::thread::spawn(move || {
            let (mut s, _) = backend.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).map(|_| got.len())
        });
        let listen = free_port();
        let to = backend_addr.to_string();
        let mut args = vec!["--mode", "server", "--to", &to];
        if let Some(name) = header {
            args.extend(["--http-header", name]);
        }
        let _proxy = proxy(&args, listen);
        let request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
        let mut s = TcpcryptStream::connect(listen, &patient()).await.unwrap();
        assert!(s.is_encrypted());
        s.write_all(request).await.unwrap();
        tokio::spawn(cut(s, 50_000));
        let read = tokio::task::spawn_blocking(move || read.join().unwrap())
            .await
            .unwrap();
        assert!(
            read.is_err(),
            "{header:?}: the backend saw a clean end after {read:?} bytes"
        );
    }
}

#[test]
fn bench_measures_tcpcrypt_against_plain_tcp_in_one_run() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--bytes",
            "4M",
            "--connections",
            "20",
            "--rounds",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["results"].as_array().unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(
        tests,
        [
            "download",
            "upload",
            "connections (full handshake)",
            "connections (resumed)"
        ]
    );
    for r in rows {
        let (plain, tcpcrypt, ratio) = (
            r["plain"].as_f64().unwrap(),
            r["tcpcrypt"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
        );
        assert!(plain > 0.0 && tcpcrypt > 0.0, "{r}");
        assert!((ratio - tcpcrypt / plain).abs() < 0.02, "{r}");
    }
    // Progress is drawn on a terminal only, never into a pipe.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table form, and the chart.
    let svg = std::env::temp_dir().join(format!("tcpcrypt-bench-{}.svg", std::process::id()));
    let out = Command::new(BIN)
        .args([
            "bench",
            "--bytes",
            "1M",
            "--connections",
            "5",
            "--rounds",
            "1",
            "--plot",
        ])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("plain TCP") && table.contains("ratio"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 6, "{table}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    assert!(chart.starts_with("<svg"), "{chart}");
    // One bar per row of the table, labelled with its test and its ratio.
    for line in table.lines().skip(2) {
        let ratio = line.rsplit(' ').next().unwrap();
        let test = line[..30].trim();
        assert!(chart.contains(test), "{test} missing from the chart");
        assert!(chart.contains(ratio), "{ratio} missing from the chart");
    }

    // Against a server that does not speak tcpcrypt: an error, not a
    // measurement of plain TCP.
    let (plain, _) = plain_server(b"");
    let out = Command::new(BIN)
        .args([
            "bench",
            "--to",
            &plain.to_string(),
            "--bytes",
            "1M",
            "--rounds",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// A middlebox that passes connections whose first bytes look like an
/// HTTP request and resets every other one, as some filters do.
fn http_only_box(target: SocketAddr) -> SocketAddr {
    counting_http_only_box(target).0
}

#[test]
fn check_path_finds_a_clean_path_clean_and_names_what_a_filter_breaks() {
    let (_responder, _stderr, addr) = listen(&["--check-responder"]);
    let run = |target: &str| {
        let out = Command::new(BIN)
            .args(["check", "--path", "--json", target])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), v)
    };
    let (code, clean) = run(&addr.to_string());
    assert_eq!(code, Some(0), "{clean}");
    for probe in ["http", "binary", "tcpcrypt"] {
        assert_eq!(clean[probe]["result"], "intact", "{clean}");
    }
    let filtered = http_only_box(addr);
    let (code, found) = run(&filtered.to_string());
    assert_eq!(code, Some(1), "{found}");
    assert_eq!(found["http"]["result"], "intact", "{found}");
    assert_eq!(found["binary"]["result"], "blocked", "{found}");
    assert_ne!(found["tcpcrypt"]["result"], "intact", "{found}");
}

/// The HTTP-only box, reporting the first bytes of every connection it
/// sees.
fn counting_http_only_box(target: SocketAddr) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for client in l.incoming().take(32) {
            let Ok(mut client) = client else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut first = [0u8; 4];
                let got = client.read_exact(&mut first).is_ok();
                let _ = tx.send(first.to_vec());
                if !got || &first != b"GET " {
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                    return;
                }
                let Ok(mut server) = TcpStream::connect(target) else {
                    return;
                };
                let _ = server.write_all(&first);
                let mut back = server.try_clone().unwrap();
                let mut to_client = client.try_clone().unwrap();
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut back, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut client, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    (addr, rx)
}

#[test]
fn check_path_remember_makes_the_daemon_skip_the_hello_on_a_broken_path() {
    build_shim();
    let (_responder, _stderr, responder) = listen(&["--check-responder"]);
    // A shimmed curl through a box that resets every connection not
    // starting with "GET ", with a daemon of its own started beforehand
    // (no verdicts yet); returns the first bytes of each connection the
    // box saw.
    let through_box = |remember: bool| {
        let (filtered, seen) = counting_http_only_box(responder);
        let dir = std::env::temp_dir().join(format!(
            "tcpcrypt-cli-remember-{}-{remember}",
            std::process::id()
        ));
        let env = [
            ("TCPCRYPT_RUNTIME_DIR", dir.as_os_str()),
            ("TCPCRYPT_DAEMON_IDLE_EXIT", std::ffi::OsStr::new("5s")),
        ];
        let started = Command::new(BIN).arg("daemon").envs(env).status().unwrap();
        assert!(started.success());
        if remember {
            let out = Command::new(BIN)
                .args(["check", "--path", "--remember", "--json"])
                .arg(filtered.to_string())
                .envs(env)
                .output()
                .unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["binary"]["result"], "blocked", "{v}");
            assert_eq!(v["http"]["result"], "intact", "{v}");
            assert_eq!(v["remembered"]["Ok"], true, "{v}");
            // The check's own three probes.
            for _ in 0..3 {
                seen.recv_timeout(Duration::from_secs(20)).unwrap();
            }
        }
        let _ = Command::new(BIN)
            .args([
                "run",
                "--",
                "curl",
                "-sS",
                "--max-time",
                "2",
                "-o",
                "/dev/null",
            ])
            .arg(format!("http://{filtered}/"))
            .envs(env)
            .output()
            .unwrap();
        let _ = Command::new(BIN)
            .args(["daemon", "--stop"])
            .envs(env)
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        let mut firsts = Vec::new();
        while let Ok(first) = seen.recv_timeout(Duration::from_millis(500)) {
            firsts.push(first);
        }
        firsts
    };
    // Not remembered: the hello is sent, reset by the box, and the client
    // connects again in plain.
    let firsts = through_box(false);
    assert_eq!(firsts.len(), 2, "{firsts:?}");
    assert_eq!(firsts[0][0], 0xE5, "a hello first: {firsts:?}");
    assert_eq!(firsts[1], b"GET ");
    // Remembered: one connection, no hello.
    let firsts = through_box(true);
    assert_eq!(firsts, [b"GET ".to_vec()]);
    // Without a daemon there is nothing to tell, and the check says so.
    let out = Command::new(BIN)
        .args(["check", "--path", "--remember", "--json"])
        .arg(http_only_box(responder).to_string())
        .env(
            "TCPCRYPT_RUNTIME_DIR",
            std::env::temp_dir().join("tcpcrypt-cli-no-daemon-here"),
        )
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["remembered"]["Ok"], false, "{v}");
}
