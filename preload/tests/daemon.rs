//! The relay daemon's promises, with real programs: bytes written before a
//! program ends are delivered, the program keeps exactly its own threads
//! and descriptors, forking servers close connections as without the shim,
//! state is shared between processes, the daemon's lifecycle, and its
//! socket is the user's alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tcpcrypt_tokio::{Config, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
#[path = "support/daemon_socket.rs"]
mod daemon_socket;
use common::*;
use daemon_socket::daemon_socket;

const MIB: usize = 1 << 20;

/// A Python expression for `body(n)`.
fn py_body(n: usize) -> String {
    format!("bytes((i * 31 % 251) for i in range({n}))")
}

/// A server that reads each connection to its end and sends what it got
/// (and, for tcpcrypt, whether it was encrypted) on the channel.
fn sink(encrypted: bool) -> (SocketAddr, std::sync::mpsc::Receiver<(bool, Vec<u8>)>) {
    let (tx, rx) = std::sync::mpsc::channel();
    if !encrypted {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut all = Vec::new();
                    let _ = c.read_to_end(&mut all);
                    let _ = tx.send((false, all));
                });
            }
        });
        return (addr, rx);
    }
    let addr = tcpcrypt_server("127.0.0.1:0", move |mut s| {
        let tx = tx.clone();
        async move {
            let mut all = Vec::new();
            // Ok only after the peer's FINp: a truncated stream would be
            // an error here.
            let r = s.read_to_end(&mut all).await;
            let _ = tx.send((s.session().is_some() && r.is_ok(), all));
        }
    });
    (addr, rx)
}

#[test]
fn bytes_written_before_the_program_ends_are_delivered() {
    let want = body(MIB);
    for encrypted in [true, false] {
        // `_exit`, `exit` (atexit handlers, buffers flushed), a crash
        // (SIGSEGV through ctypes, SIGABRT) and SIGKILL.
        for end in [
            "os._exit(0)",
            "sys.exit(0)",
            "ctypes.string_at(0)",
            "os.abort()",
            "os.kill(os.getpid(), signal.SIGKILL)",
        ] {
            let (addr, got) = sink(encrypted);
            let script = format!(
                r#"
import ctypes, os, signal, socket, sys
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall({data})
{end}
"#,
                port = addr.port(),
                data = py_body(MIB),
            );
            let _ = Command::new("python3")
                .args(["-c", &script])
                .envs(shim_env())
                .env(
                    "TCPCRYPT_SERVER_HELLO_TIMEOUT_MS",
                    if encrypted { "30000" } else { "300" },
                )
                .status()
                .unwrap();
            // A legacy server first gets the hello, on a connection of its
            // own that the client then leaves for a plain one.
            let (was_encrypted, bytes) = got
                .iter()
                .find(|(_, b)| !b.starts_with(b"\xE5ENO"))
                .unwrap();
            assert_eq!(was_encrypted, encrypted, "{end}");
            assert!(
                bytes == want,
                "{end}, encrypted {encrypted}: {} of {} bytes",
                bytes.len(),
                want.len()
            );
        }
    }
}

/// A program killed with bytes it never read: the kernel resets its peer
/// (RFC 793's abort). Under the shim the peer, here a tcpcrypt server,
/// sees the same: a reset, not a clean end nor a truncation.
#[test]
fn a_death_with_unread_bytes_resets_the_peer_as_without_the_shim() {
    // What the peer's read says after the program's five bytes.
    fn after_hello(first: std::io::Result<usize>, next: std::io::Result<usize>) -> String {
        match (first, next) {
            (Ok(5), Ok(0)) => "end".into(),
            (Ok(5), Ok(_)) => "more bytes".into(),
            (Ok(5), Err(e)) => format!("{:?}", e.kind()),
            (first, _) => format!("before the program's bytes: {first:?}"),
        }
    }
    let killed = |port: u16, shimmed: bool| {
        let script = format!(
            "import os,signal,socket\ns=socket.create_connection(('127.0.0.1',{port}))\ns.sendall(b'hello')\nimport select\nassert select.select([s],[],[],20)[0]\nos.kill(os.getpid(),signal.SIGKILL)"
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &script]);
        if shimmed {
            cmd.envs(shim_env());
        }
        let _ = cmd.status().unwrap();
    };
    // Without the shim: a plain server.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let plain = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.write_all(&[7u8; 4096]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 5];
        let first = c.read_exact(&mut buf).map(|()| 5);
        after_hello(first, c.read(&mut [0u8; 64]))
    });
    killed(port, false);
    let without = plain.join().unwrap();
    assert_eq!(without, "ConnectionReset", "the kernel's own behaviour");
    // With it: a tcpcrypt server, the same program shimmed.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = tcpcrypt_server("127.0.0.1:0", move |mut s| {
        let tx = tx.lock().unwrap().clone();
        async move {
            assert!(s.session().is_some(), "encrypted");
            s.write_all(&[7u8; 4096]).await.unwrap();
            s.flush().await.unwrap();
            let mut buf = [0u8; 5];
            let first = s.read_exact(&mut buf).await.map(|_| 5);
            let next = tokio::time::timeout(Duration::from_secs(20), s.read(&mut [0u8; 64]))
                .await
                .unwrap_or(Ok(999));
            let _ = tx.send(after_hello(first, next));
        }
    });
    killed(addr.port(), true);
    let with = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(with, without);
}

#[test]
fn bytes_a_server_writes_before_it_ends_are_delivered() {
    let want = body(MIB);
    for end in [
        "os._exit(0)",
        "sys.exit(0)",
        "ctypes.string_at(0)",
        "os.abort()",
        "os.kill(os.getpid(), signal.SIGKILL)",
    ] {
        for encrypted in [true, false] {
            let server = format!(
                r#"
import ctypes, os, signal, socket, sys
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
c.sendall({data})
{end}
"#,
                data = py_body(MIB)
            );
            let mut py = shimmed_python_server(&server);
            let port = py.1;
            let got = if encrypted {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let config = Arc::new(
                        Config::builder()
                            .server_hello_timeout(Duration::from_secs(30))
                            .build()
                            .unwrap(),
                    );
                    let mut s = TcpcryptStream::connect(("127.0.0.1", port), &config)
                        .await
                        .unwrap();
                    assert!(s.session().is_some(), "encrypted");
                    let mut all = Vec::new();
                    s.read_to_end(&mut all).await.unwrap();
                    all
                })
            } else {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).unwrap();
                all
            };
            let _ = py.0.wait();
            assert!(
                got == want,
                "{end}, encrypted {encrypted}: {} of {} bytes",
                got.len(),
                want.len()
            );
        }
    }
}

/// What a Python process holds while it has one connection open: its
/// threads and its descriptors (kinds, not numbers).
const HOLDINGS: &str = r#"
import os
def holdings():
    fds = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            t = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        fds.append(fd + ":" + t.split(":")[0].split("[")[0])
    return "threads=%d fds=%s" % (len(os.listdir("/proc/self/task")), ",".join(fds))
"#;

#[test]
fn a_shimmed_program_holds_exactly_what_it_would_without_the_shim() {
    let (server, _seen) = tcpcrypt_http(b"x".to_vec());
    let client = format!(
        r#"{HOLDINGS}
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(holdings())
"#,
        port = server.port()
    );
    let shimmed = python_shimmed(&client);
    let plain = Command::new("python3")
        .args(["-c", &client])
        .output()
        .unwrap();
    assert_eq!(
        shimmed.join("\n"),
        String::from_utf8_lossy(&plain.stdout).trim_end(),
        "client side"
    );
    let server_script = format!(
        r#"{HOLDINGS}
import socket
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
c.recv(10)
print(holdings(), flush=True)
"#
    );
    let mut outputs = Vec::new();
    for shimmed in [true, false] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &server_script]).stdout(Stdio::piped());
        if shimmed {
            cmd.envs(shim_env());
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port: u16 = lines.next().unwrap().unwrap().parse().unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"hi").unwrap();
        outputs.push(lines.next().unwrap().unwrap());
        let _ = child.wait();
    }
    assert_eq!(outputs[0], outputs[1], "server side");
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forking_server_closes_each_connection_as_without_the_shim() {
    which("socat").expect("socat is not installed (scripts/test installs it)");
    let port = free_port();
    let socat = Command::new("socat")
        .args([
            &format!("TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1"),
            "EXEC:cat",
        ])
        .envs(shim_env())
        .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "10000")
        .spawn()
        .unwrap();
    // Killed and reaped however the test ends.
    let socat = Py(socat, port);
    let socat_pid = socat.0.id();
    wait_until("socat listens", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // The probe connection above was a plain client: its child goes too.
    wait_until("the probe's child exits", Duration::from_secs(10), || {
        children(socat_pid).is_empty()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = Arc::new(Config::default());
        let mut clients = Vec::new();
        for name in [&b"one\n"[..], b"two\n"] {
            let mut c = TcpcryptStream::connect(("127.0.0.1", port), &config)
                .await
                .unwrap();
            assert!(c.session().is_some(), "encrypted");
            c.write_all(name).await.unwrap();
            c.flush().await.unwrap();
            let mut echo = vec![0u8; name.len()];
            c.read_exact(&mut echo).await.unwrap();
            assert_eq!(echo, name);
            clients.push(c);
        }
        assert_eq!(children(socat_pid).len(), 2);
        drop(clients.remove(0));
        wait_until(
            "the first client's child exits",
            Duration::from_secs(10),
            || children(socat_pid).len() == 1,
        );
        drop(clients);
        wait_until("the second child exits", Duration::from_secs(10), || {
            children(socat_pid).is_empty()
        });
    });
    drop(socat);
}

/// A server whose signals keep interrupting it (an interval timer, as a
/// forking server's SIGCHLD does): the shim's requests to the daemon,
/// made inside its `accept` and `connect`, go on after each interruption;
/// every connection is carried, none reset. (A socket timeout makes the
/// kernel interrupt such calls even under SA_RESTART.)
#[test]
fn signals_that_interrupt_the_program_do_not_lose_its_connections() {
    let port = free_port();
    let program = format!(
        "import signal,socket\nsignal.signal(signal.SIGALRM, lambda *a: None)\nsignal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\nl.bind(('127.0.0.1',{port}))\nl.listen(64)\nprint('ready',flush=True)\nwhile True:\n    c,_=l.accept()\n    d=c.recv(64)\n    c.sendall(d)\n    c.close()"
    );
    let mut server = Command::new("python3")
        .args(["-c", &program])
        .envs(shim_env())
        .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "10000")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(server.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let server = Py(server, port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = Arc::new(Config::default());
        for i in 0..40u32 {
            let mut c = TcpcryptStream::connect(("127.0.0.1", port), &config)
                .await
                .unwrap();
            assert!(c.session().is_some(), "connection {i} encrypted");
            let msg = format!("message {i}\n");
            c.write_all(msg.as_bytes()).await.unwrap();
            let mut echo = Vec::new();
            c.read_to_end(&mut echo)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(echo, msg.as_bytes(), "connection {i}");
        }
    });
    // A shimmed client interrupted as often: its connect's requests and
    // pairing go on too, and every exchange comes back whole.
    let client = format!(
        "import signal,socket\nsignal.signal(signal.SIGALRM, lambda *a: None)\nsignal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)\nfor i in range(40):\n    s=socket.create_connection(('127.0.0.1',{port}))\n    m=b'client %d' % i\n    s.sendall(m)\n    d=b''\n    while True:\n        b=s.recv(64)\n        if not b: break\n        d+=b\n    assert d==m, (i, d)\n    s.close()\nprint('all echoed')"
    );
    let out = Command::new("python3")
        .args(["-c", &client])
        .envs(shim_env())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "all echoed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}

#[test]
fn a_second_process_resumes_the_first_ones_session() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = tcpcrypt_server("127.0.0.1:0", move |mut s| {
        let _ = tx.lock().unwrap().send(s.session().map(|i| i.resumed));
        async move {
            let _ = s.write_all(b"hello").await;
            let _ = s.shutdown().await;
        }
    });
    let script = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
print(s.recv(5).decode())
"#,
        port = addr.port()
    );
    for _ in 0..2 {
        assert_eq!(python_shimmed(&script), ["hello"]);
    }
    let seen: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        seen,
        [Some(false), Some(true)],
        "the second process resumed"
    );
}

/// The environment of programs whose daemon sends 0-RTT data
/// (`TCPCRYPT_ZERO_RTT`): a runtime directory, so a daemon, of their own.
fn zero_rtt_daemon() -> [(&'static str, &'static str); 2] {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = daemon_dir().with_extension("zero-rtt");
        d.to_string_lossy().into_owned()
    });
    [
        ("TCPCRYPT_RUNTIME_DIR", dir.as_str()),
        ("TCPCRYPT_ZERO_RTT", "1"),
    ]
}

#[test]
fn a_resumed_process_sends_its_first_bytes_with_the_hello() {
    // (resumed, zero_rtt, request) for each connection the server saw.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = tcpcrypt_server("127.0.0.1:0", move |mut s| {
        let info = s.session().map(|i| (i.resumed, i.zero_rtt));
        let tx = tx.lock().unwrap().clone();
        async move {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).await.is_ok() && b[0] != b'\n' {
                line.push(b[0]);
            }
            let _ = tx.send((info, String::from_utf8_lossy(&line).into_owned()));
            let _ = s.write_all(&[b"OK ", &line[..]].concat()).await;
            let _ = s.shutdown().await;
        }
    });
    // The program writes its request as soon as `connect` returns, as
    // HTTP clients do: with a blocking connect (Python's), or a
    // non-blocking one as curl makes it (in progress, then writable, then
    // `SO_ERROR` and the addresses asked, then the request).
    let script = |n: usize| {
        let connect = if n < 4 {
            "s = socket.create_connection(('127.0.0.1', PORT))"
        } else {
            "s = socket.socket()
s.setblocking(False)
assert s.connect_ex(('127.0.0.1', PORT)) == errno.EINPROGRESS
select.select([], [s], [], 10)
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
s.getpeername(); s.getsockname()
s.setblocking(True)"
        };
        format!(
            "import errno, select, socket\n{}\ns.sendall(b'request {n}\\n')\nprint(s.recv(100).decode())\n",
            connect.replace("PORT", &addr.port().to_string())
        )
    };
    // A daemon of its own, started with 0-RTT on.
    let env = zero_rtt_daemon();
    for n in 0..8 {
        assert_eq!(
            python_shimmed_with(&script(n), &env),
            [format!("OK request {n}")]
        );
    }
    let seen: Vec<_> = rx.try_iter().collect();
    let requests: Vec<&str> = seen.iter().map(|(_, r)| r.as_str()).collect();
    let sent: Vec<String> = (0..8).map(|n| format!("request {n}")).collect();
    assert_eq!(requests, sent, "each request delivered once");
    assert_eq!(seen[0].0, Some((false, false)));
    assert!(
        seen[1..]
            .iter()
            .all(|(i, _)| i.is_some_and(|(resumed, _)| resumed))
    );
    // The daemon waits briefly for the first bytes; on a loaded machine a
    // program can miss that, so not every connection must carry them.
    for (kind, resumed) in [("blocking", &seen[1..4]), ("non-blocking", &seen[4..])] {
        assert!(
            resumed
                .iter()
                .any(|(i, _)| i.is_some_and(|(_, zero_rtt)| zero_rtt)),
            "no resumed connection ({kind} connect) carried its request as 0-RTT data: {seen:?}"
        );
    }
}

#[test]
fn a_program_that_resets_at_once_is_a_reset_to_the_server_too() {
    // The daemon looks for a resuming program's first bytes; a reset found
    // there is reported once by the kernel, and must reach the server as
    // an error, never as a clean and empty stream.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = tcpcrypt_server("127.0.0.1:0", move |mut s| {
        let tx = tx.lock().unwrap().clone();
        async move {
            let mut got = Vec::new();
            let clean = s.read_to_end(&mut got).await.is_ok();
            let _ = tx.send((clean, got.len()));
        }
    });
    let script = |reset: bool| {
        format!(
            r#"
import socket, struct
s = socket.create_connection(("127.0.0.1", {port}))
if {reset}:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
else:
    s.sendall(b"first")
s.close()
print("done")
"#,
            port = addr.port(),
            reset = if reset { "True" } else { "False" }
        )
    };
    let env = zero_rtt_daemon();
    assert_eq!(python_shimmed_with(&script(false), &env), ["done"]);
    // The reset may come while the daemon still drains the connect's
    // filler, or once it waits for the first bytes: a few tries meet both.
    const RESETS: usize = 4;
    for _ in 0..RESETS {
        assert_eq!(python_shimmed_with(&script(true), &env), ["done"]);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while seen.len() < 1 + RESETS && Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(v);
        }
    }
    // The reset connection reaches the server's application as an error,
    // or not at all (reset before its handshake ended).
    assert_eq!(seen[0], (true, 5));
    assert!(
        !seen[1..].iter().any(|(clean, _)| *clean),
        "a reset taken for a clean end: {seen:?}"
    );
}

/// Both ends shimmed, a program that writes and then closes abortively
/// (`SO_LINGER` 0): the server reads every byte, then the reset, as
/// without the shim; the relays must not carry the reset ahead of the
/// bytes, nor the close discard them while they wait behind the connect's
/// filler.
#[test]
fn bytes_written_before_an_abortive_close_reach_the_server_before_the_reset() {
    const SIZES: [usize; 10] = [
        1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 20_000, 100_000,
    ];
    let (server, mut lines) = shimmed_python_server_with(
        &format!(
            r#"
import socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(8)
print(l.getsockname()[1], flush=True)
for _ in range({count}):
    c, _ = l.accept()
    time.sleep(0.2)
    n, end = 0, "end"
    try:
        while True:
            b = c.recv(65536)
            if not b: break
            n += len(b)
    except OSError as e:
        end = e.__class__.__name__
    print(n, end, len(c.getsockopt(socket.IPPROTO_TCP, 0x54430001, 33)), flush=True)
    c.close()
"#,
            count = SIZES.len()
        ),
        &[],
    );
    let script = format!(
        r#"
import socket, struct
for n in {SIZES:?}:
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"x" * n)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
print("done")
"#,
        port = server.1
    );
    assert_eq!(python_shimmed(&script), ["done"]);
    let seen: Vec<String> = lines
        .by_ref()
        .take(SIZES.len())
        .map(Result::unwrap)
        .collect();
    let expected: Vec<String> = SIZES
        .iter()
        .map(|n| format!("{n} ConnectionResetError 33"))
        .collect();
    assert_eq!(seen, expected, "every byte, then the reset, encrypted");
}

/// An abortive close of a socket whose connect is still held (the server
/// has not answered the hello yet), or has failed (the mandatory policy
/// refused a plain server), returns at once, as the kernel's does:
/// nothing of the program's waits to be sent (happy-eyeballs clients
/// close their losing attempts so; Netty sets `SO_LINGER` 0 on every
/// socket it makes).
#[test]
fn an_abortive_close_during_a_held_or_failed_connect_returns_at_once() {
    // Silent: the negotiation waits for its hello. Speaking first: plain,
    // which the mandatory policy refuses.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let speaking = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = [&silent, &speaking].map(|l| l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    std::thread::spawn(move || {
        let mut c = speaking.incoming().next().unwrap().unwrap();
        let _ = c.write_all(b"220 plain\r\n");
        let _ = c.read_to_end(&mut Vec::new());
    });
    let lines = python_shimmed_with(
        &format!(
            r#"
import errno, select, socket, struct, time
for port, settle in (({silent}, False), ({speaking}, True)):
    s = socket.socket(); s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert s.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
    if settle:
        select.select([], [s], [], 20)
        print(errno.errorcode[s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)])
    else:
        time.sleep(0.3)
    t = time.monotonic(); s.close()
    print(time.monotonic() - t < 0.5)
"#,
            silent = ports[0],
            speaking = ports[1]
        ),
        &[("TCPCRYPT_POLICY", "mandatory")],
    );
    assert_eq!(lines, ["True", "EPERM", "True"], "close waited");
    // A connected socket whose peer does not read (a server resetting a
    // stalled client): the daemon takes nothing more, and the close does
    // not wait for it.
    let stalled = tcpcrypt_server("127.0.0.1:0", |s| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(s);
    });
    let lines = python_shimmed(&format!(
        r#"
import socket, struct, time
s = socket.create_connection(("127.0.0.1", {port}))
s.setblocking(False)
try:
    while True: s.send(b"x" * 65536)
except BlockingIOError:
    pass
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
t = time.monotonic(); s.close()
print(time.monotonic() - t < 0.5)
"#,
        port = stalled.port()
    ));
    assert_eq!(
        lines,
        ["True"],
        "close waited for a peer that does not read"
    );
}

/// A plain server that sends and then resets at once (an HTTP server
/// that answers 503 and aborts): the program's connect succeeds, and it
/// reads the bytes, then the reset, as without the shim; not a connect
/// that fails with the bytes dropped.
#[test]
fn a_server_that_sends_then_resets_is_read_before_its_reset() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"503 service unavailable\n");
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
        }
    });
    let script = format!(
        r#"
import socket
got = b""
try:
    s = socket.create_connection(("127.0.0.1", {port}))
    while True:
        d = s.recv(100)
        if not d:
            break
        got += d
    print(len(got), "end")
except OSError as e:
    print(len(got), type(e).__name__)
"#
    );
    let plain = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let without = String::from_utf8_lossy(&plain.stdout).trim().to_string();
    assert_eq!(
        without, "24 ConnectionResetError",
        "the kernel's own behaviour"
    );
    // The first contact takes the server for legacy; the next ones go
    // plain at once, and their connect is the kernel's.
    let _ = python_shimmed_with(&script, &[]);
    for i in 0..5 {
        assert_eq!(
            python_shimmed_with(&script, &[]),
            [without.as_str()],
            "run {i}"
        );
    }
}

#[test]
fn a_legacy_verdict_serves_every_process() {
    // A plain server that waits for its client to speak: the first process
    // pays the wait for a hello answer and a reconnect; the second goes
    // straight to plain TCP.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let firsts = Arc::new(Mutex::new(Vec::new()));
    let firsts2 = firsts.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let firsts = firsts2.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4];
                if c.read_exact(&mut buf).is_ok() {
                    firsts.lock().unwrap().push(buf.to_vec());
                    if &buf == b"ping" {
                        let _ = c.write_all(b"pong");
                    }
                }
            });
        }
    });
    let script = format!(
        r#"
import socket, time
t = time.monotonic()
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"ping")
print(s.recv(4).decode(), round(time.monotonic() - t, 3))
"#
    );
    let run =
        || python_shimmed_with(&script, &[("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "2000")]).join("");
    let first = run();
    assert!(first.starts_with("pong "), "{first}");
    let n = firsts.lock().unwrap().len();
    assert_eq!(n, 2, "the hello, then the plain reconnect");
    let second = run();
    assert!(second.starts_with("pong "), "{second}");
    let seen = firsts.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one connection for the second process");
    assert_eq!(seen[2], b"ping", "no hello: the verdict was shared");
    let took: f64 = second.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        took < 1.5,
        "the second process waited for a hello answer: {took} s"
    );
}

/// A private daemon directory for one test (removed with the value).
struct OwnDir(PathBuf);

impl OwnDir {
    fn new(name: &str) -> OwnDir {
        let p = std::env::temp_dir().join(format!("tcpcrypt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        OwnDir(p)
    }

    fn env(&self) -> [(&'static str, std::ffi::OsString); 3] {
        let mut env = shim_env();
        env[1].1 = self.0.clone().into();
        env[2].1 = "1s".into();
        env
    }
}

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = Command::new(tcpcrypt_bin())
            .args(["daemon", "--stop"])
            .env("TCPCRYPT_RUNTIME_DIR", &self.0)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pid of the daemon answering in `dir` (from its socket's
/// credentials).
fn daemon_pid(dir: &Path) -> Option<i32> {
    let s = std::os::unix::net::UnixStream::connect(daemon_socket(dir)).ok()?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(cred.pid())
}

/// How many daemons serve `dir`.
fn daemons_of(dir: &Path) -> usize {
    let needle = format!("TCPCRYPT_RUNTIME_DIR={}", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
            let daemon = b"daemon\0--foreground";
            cmd.windows(daemon.len()).any(|w| w == daemon)
                && env.split(|&b| b == 0).any(|v| v == needle.as_bytes())
        })
        .count()
}

/// A program that writes, closes and exits, while its peer takes the bytes
/// and the FIN and then keeps its end open without a word, leaves its
/// socket to the kernel, which ends it on its own: so does the daemon
/// with the relay, which it used to hold (two descriptors and a task) for
/// as long as it ran. Here the daemon, idle once it has let go, exits.
#[test]
fn a_closed_programs_connection_to_a_silent_peer_is_let_go() {
    let dir = OwnDir::new("orphan");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tcpcrypt_server("127.0.0.1:0", move |mut s| {
        let tx = tx.clone();
        async move {
            let mut all = Vec::new();
            let r = s.read_to_end(&mut all).await;
            let _ = tx.send((s.session().is_some() && r.is_ok(), all));
            // Silent and open, for longer than the test.
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
    });
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket\ns = socket.create_connection(('127.0.0.1', {port}))\ns.sendall(b'last words')\ns.close()",
                port = server.port()
            ),
        ])
        .envs(dir.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (encrypted, got) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(encrypted, "read to its clean end over tcpcrypt");
    assert_eq!(got, b"last words");
    assert_eq!(daemons_of(&dir.0), 1);
    // The daemon looks every 5 s, then stays 1 s idle.
    wait_until(
        "the daemon lets go of the connection",
        Duration::from_secs(30),
        || daemons_of(&dir.0) == 0,
    );
}

/// A client that sends its request, ends its half and never reads, facing
/// a server program that writes more than the buffers hold, then closes
/// and exits: the kernel gives up on such a closed socket after its
/// probes go unanswered for about a minute, and so does the daemon with
/// the relay it held for the program (its end saw the client's FIN, not
/// the program's, which waits behind the program's bytes).
#[test]
fn a_closed_programs_connection_to_a_peer_that_stopped_reading_is_reset() {
    let dir = OwnDir::new("orphan-unread");
    let dir_text = dir.0.to_string_lossy().to_string();
    let (server, mut lines) = shimmed_python_server_with(
        r#"
import socket
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1)
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
while c.recv(65536):
    pass
c.settimeout(2)
try:
    c.sendall(b"x" * (64 << 20))
    print("all sent", flush=True)
except OSError as e:
    print("stopped:", e, flush=True)
c.close()
"#,
        &[
            ("TCPCRYPT_RUNTIME_DIR", &dir_text),
            ("TCPCRYPT_DAEMON_IDLE_EXIT", "1s"),
        ],
    );
    let port = server.1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let connector = tcpcrypt_tokio::TcpcryptConnector::new(Arc::new(Config::default()));
        let mut s = connector.connect_tcp(tcp).await.unwrap();
        assert!(s.session().is_some(), "encrypted");
        s.write_all(b"a request").await.unwrap();
        s.shutdown().await.unwrap();
        s
    });
    // The program wrote what the buffers hold, then closed and exited.
    assert_eq!(lines.next().unwrap().unwrap(), "stopped: timed out");
    drop(server);
    wait_until(
        "the daemon gives up on the closed program's connection",
        Duration::from_secs(150),
        || daemons_of(&dir.0) == 0,
    );
    drop(client);
}

/// `TCPCRYPT_DAEMON` names the daemon's program: the shim starts that one.
/// And the daemon's directory holds only its socket and its lock: nothing
/// of a session (no secret, no ticket) is ever written to disk.
#[test]
fn tcpcrypt_daemon_names_the_program_and_nothing_of_a_session_is_on_disk() {
    let dir = OwnDir::new("named-daemon");
    let elsewhere = std::env::temp_dir().join(format!("tcpcrypt-bin-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let copy = elsewhere.join("tcpcrypt-copy");
    std::fs::copy(tcpcrypt_bin(), &copy).unwrap();
    let (server, seen) = tcpcrypt_http(b"x".to_vec());
    let script = format!(
        "import socket\ns=socket.create_connection(('127.0.0.1',{port}))\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nwhile s.recv(100): pass\nprint('done')",
        port = server.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .envs(dir.env())
        .env("TCPCRYPT_DAEMON_IDLE_EXIT", "60s")
        .env("TCPCRYPT_DAEMON", &copy)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    assert!(seen.lock().unwrap()[0].is_some(), "encrypted");
    let pid = daemon_pid(&dir.0).expect("a daemon answers");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, copy, "the daemon is the named program");
    let mut files: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files[0].ends_with(".lock") && files[1].ends_with(".sock"),
        "{files:?}"
    );
    drop(dir);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

/// The systemd user unit's commands, as systemd runs them: `ExecStart`
/// runs the daemon in the foreground, shimmed programs use that one (none
/// of their own), and `ExecStop` stops it.
#[test]
fn the_systemd_unit_runs_the_daemon_that_programs_use_and_stops_it() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/tcpcrypt-daemon.service"),
    )
    .unwrap();
    let command = |key: &str| -> Vec<String> {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"));
        let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], "/usr/bin/tcpcrypt", "{line}");
        words.remove(0);
        words
    };
    let dir = OwnDir::new("unit-daemon");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir.0)
        .unwrap();
    let mut daemon = Command::new(tcpcrypt_bin())
        .args(command("ExecStart="))
        .env("TCPCRYPT_RUNTIME_DIR", &dir.0)
        .spawn()
        .unwrap();
    wait_until("the unit's daemon answers", Duration::from_secs(10), || {
        daemon_pid(&dir.0).is_some()
    });
    let (server, seen) = tcpcrypt_http(b"x".to_vec());
    let script = format!(
        "import socket\ns=socket.create_connection(('127.0.0.1',{port}))\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nwhile s.recv(100): pass",
        port = server.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .envs(dir.env())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(seen.lock().unwrap()[0].is_some(), "encrypted");
    assert_eq!(
        daemon_pid(&dir.0),
        Some(daemon.id() as i32),
        "the unit's daemon"
    );
    let stop = Command::new(tcpcrypt_bin())
        .args(command("ExecStop="))
        .env("TCPCRYPT_RUNTIME_DIR", &dir.0)
        .status()
        .unwrap();
    assert!(stop.success());
    let mut exited = None;
    wait_until("the unit's daemon exits", Duration::from_secs(10), || {
        exited = daemon.try_wait().unwrap();
        exited.is_some()
    });
}

/// The daemon's log (`TCPCRYPT_DAEMON_LOG`) is never opened through a
/// symbolic link: one planted there leaves its target untouched.
#[test]
fn the_daemon_log_is_not_written_through_a_symbolic_link() {
    let dir = OwnDir::new("log-link");
    let scratch = std::env::temp_dir().join(format!("tcpcrypt-log-victim-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let target = scratch.join("victim");
    std::fs::write(&target, b"precious").unwrap();
    let link = scratch.join("daemon.log");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (server, seen) = tcpcrypt_http(b"x".to_vec());
    let script = format!(
        "import socket\ns=socket.create_connection(('127.0.0.1',{port}))\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nwhile s.recv(100): pass",
        port = server.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .envs(dir.env())
        .env("TCPCRYPT_DAEMON_LOG", &link)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        seen.lock().unwrap()[0].is_some(),
        "encrypted: the daemon ran"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    drop(dir);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn concurrent_first_connections_start_one_daemon_which_exits_when_idle() {
    let dir = OwnDir::new("one-daemon");
    let (server, _seen) = tcpcrypt_http(b"x".to_vec());
    let script = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(len(s.recv(100)) > 0)
"#,
        port = server.port()
    );
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new("python3")
                .args(["-c", &script])
                .envs(dir.env())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "True\n");
    }
    assert_eq!(daemons_of(&dir.0), 1, "exactly one daemon");
    wait_until("the idle daemon exits", Duration::from_secs(10), || {
        daemons_of(&dir.0) == 0
    });
    assert!(!daemon_socket(&dir.0).exists(), "its socket goes with it");
}

#[test]
fn a_daemon_that_dies_resets_the_relayed_sockets() {
    let dir = OwnDir::new("daemon-death");
    let (server, _seen) = tcpcrypt_http(b"x".to_vec());
    let mut py = Command::new("python3")
        .args([
            "-c",
            &format!(
                r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.settimeout(20)
print("connected", flush=True)
try:
    print("read", s.recv(100), flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except socket.timeout:
    print("hang", flush=True)
"#,
                port = server.port()
            ),
        ])
        .envs(dir.env())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    let pid = daemon_pid(&dir.0).expect("a daemon answers");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "reset");
    let _ = py.wait();
}

/// A non-blocking listener under the mandatory policy with no daemon: the
/// connection it cannot carry is reset and `accept` fails with
/// `ECONNABORTED`, as with a blocking one; the program goes on.
#[test]
fn without_a_daemon_a_nonblocking_accept_under_mandatory_fails_cleanly() {
    let dir = OwnDir::new("no-daemon-accept");
    let port = free_port();
    let mut server = Command::new("python3")
        .args([
            "-c",
            &format!(
                r#"
import select, socket
l = socket.socket()
l.bind(("127.0.0.1", {port}))
l.listen()
l.setblocking(False)
print("listening", flush=True)
select.select([l], [], [], 20)
try:
    l.accept()
    print("accepted", flush=True)
except ConnectionAbortedError:
    print("aborted", flush=True)
print("alive", flush=True)
"#
            ),
        ])
        .envs(dir.env())
        .env("TCPCRYPT_DAEMON", "/nonexistent/tcpcrypt")
        .env("TCPCRYPT_POLICY", "mandatory")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = client.write_all(b"secret");
    assert_eq!(lines.next().unwrap().unwrap(), "aborted");
    assert_eq!(lines.next().unwrap().unwrap(), "alive");
    assert!(server.wait().unwrap().success());
    let mut got = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let end = client.read_to_end(&mut got);
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "reset, with nothing sent: {got:?}"
    );
}

#[test]
fn without_a_daemon_mandatory_refuses_and_opportunistic_goes_plain() {
    let dir = OwnDir::new("no-daemon");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let mut all = Vec::new();
            let _ = c.read_to_end(&mut all);
            rec.lock().unwrap().push(all);
        }
    });
    let script = format!(
        r#"
import socket
try:
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"secret")
    s.close()
    print("sent")
except PermissionError:
    print("EPERM")
"#
    );
    let run = |policy: &str| {
        let out = Command::new("python3")
            .args(["-c", &script])
            .envs(dir.env())
            .env("TCPCRYPT_DAEMON", "/nonexistent/tcpcrypt")
            .env("TCPCRYPT_POLICY", policy)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run("mandatory"), "EPERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(received.lock().unwrap().is_empty(), "nothing sent");
    assert_eq!(run("opportunistic"), "sent");
    wait_until("the plain bytes arrive", Duration::from_secs(5), || {
        received.lock().unwrap().first() == Some(&b"secret".to_vec())
    });
}

/// A program that writes and closes at once, without reading, learns at
/// `connect` (blocking or not) that its bytes cannot go, as it would from
/// the kernel: the socket turns writable only once the connection can carry
/// them. Under the mandatory policy a plain server is refused (`EPERM`) and
/// receives none of the program's bytes; under the opportunistic policy a
/// one-shot server, whose only connection took the hello, refuses the
/// plain reconnect (`ECONNREFUSED`); a plain server that takes more
/// connections gets exactly the program's bytes.
#[test]
fn a_program_that_writes_and_closes_learns_at_connect_when_its_bytes_cannot_go() {
    let dir = OwnDir::new("write-and-close");
    // A plain server that reads each connection to its end and keeps what
    // it got; `one_shot`: it takes a single connection, then stops
    // listening.
    let server = |one_shot: bool| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let _ = c.read_to_end(&mut all);
                    let _ = tx.send(all);
                });
                if one_shot {
                    break;
                }
            }
        });
        (port, rx)
    };
    let client = |port: u16, policy: &str, blocking: bool| {
        let script = format!(
            r#"
import errno, select, socket
s = socket.socket()
try:
    if {blocking}:
        s.connect(("127.0.0.1", {port}))
    else:
        s.setblocking(False)
        assert s.connect_ex(("127.0.0.1", {port})) == errno.EINPROGRESS
        select.select([], [s], [], 30)
        e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if e:
            raise OSError(e, "")
        s.setblocking(True)
    s.sendall(b"the program's bytes")
    s.close()
    print("sent")
except OSError as e:
    print(errno.errorcode[e.errno])
"#,
            blocking = if blocking { "True" } else { "False" },
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .envs(dir.env())
            .env("TCPCRYPT_POLICY", policy)
            .env("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "300")
            // The whole handshake for a silent server under the mandatory
            // policy (docs/PROTOCOL.md, "A silent server").
            .env("TCPCRYPT_HANDSHAKE_TIMEOUT_MS", "500")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let carried = |rx: &std::sync::mpsc::Receiver<Vec<u8>>| -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(300));
        rx.try_iter().collect()
    };
    let payload = b"the program's bytes".to_vec();
    for blocking in [true, false] {
        let (port, rx) = server(false);
        assert_eq!(client(port, "mandatory", blocking), "EPERM", "{blocking}");
        let got = carried(&rx);
        assert!(
            got.iter()
                .all(|b| !b.windows(payload.len()).any(|w| w == payload)),
            "none of the program's bytes: {got:?}"
        );
        let (port, rx) = server(true);
        assert_eq!(
            client(port, "opportunistic", blocking),
            "ECONNREFUSED",
            "{blocking}"
        );
        let got = carried(&rx);
        assert!(
            got.len() == 1 && got[0].starts_with(b"\xe5ENO"),
            "the one connection took the hello, and only that: {got:?}"
        );
        let (port, rx) = server(false);
        assert_eq!(client(port, "opportunistic", blocking), "sent");
        wait_until("the plain bytes arrive", Duration::from_secs(5), || {
            rx.try_iter().any(|b| b == payload)
        });
    }
}

/// A process that connects to a listener of its own before it accepts, as
/// test suites do, is not held up, whether its connect blocks or waits in
/// `poll` with a timeout: its negotiation needs the accept, so that
/// connect returns at the TCP handshake, the accept gets that very
/// connection, and the pair is encrypted once accepted.
#[test]
fn a_process_that_connects_to_itself_before_accepting_is_not_held() {
    let dir = OwnDir::new("self-connect");
    let script = r#"
import ctypes, socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
# Blocking, then with a timeout (a non-blocking connect waited for in poll).
for timeout in (None, 10):
    t = time.monotonic()
    c = socket.create_connection(l.getsockname(), timeout=timeout)
    took = time.monotonic() - t
    a, peer = l.accept()
    c.sendall(b"ping"); print(a.recv(10).decode())
    a.sendall(b"pong"); print(c.recv(10).decode())
    print(ctypes.CDLL(None).tcpcrypt_is_encrypted(c.fileno()) == 1)
    print(took < 1.0, peer == c.getsockname())
"#;
    // The daemon first, so that its start is not in the connect's time.
    let started = Command::new(tcpcrypt_bin())
        .arg("daemon")
        .env("TCPCRYPT_RUNTIME_DIR", &dir.0)
        .env("TCPCRYPT_DAEMON_IDLE_EXIT", "60s")
        .status()
        .unwrap();
    assert!(started.success());
    let out = Command::new("python3")
        .args(["-c", script])
        .envs(dir.env())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ping\npong\nTrue\nTrue True\n".repeat(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A shimmed server answers a hello only once its program accepts the
/// connection: a sequential server busy with one client leaves the next
/// ones silent in its backlog, past the hello wait. A client whose daemon
/// has seen the server encrypted waits for it, as plain TCP waits in the
/// backlog, instead of taking it for a legacy server (a plain reconnect,
/// and the server's accept handed the abandoned connection).
#[test]
fn clients_of_a_busy_sequential_server_wait_for_it_and_stay_encrypted() {
    let dir = OwnDir::new("busy-server");
    let server = r#"
import ctypes, socket, time
lib = ctypes.CDLL(None)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(8)
print(l.getsockname()[1], flush=True)
for _ in range(3):
    c, _ = l.accept()
    name = c.recv(100)
    print(name.decode(), flush=True)
    time.sleep(1.5)
    how = b"encrypted" if lib.tcpcrypt_is_encrypted(c.fileno()) == 1 else b"plain"
    c.sendall(name + b" " + how)
    c.close()
"#;
    let mut srv = Command::new("python3")
        .args(["-c", server])
        .envs(dir.env())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(srv.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let clients: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let script = format!(
                r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=20)
s.sendall(b"{name}")
print(s.recv(100).decode())
"#
            );
            let child = Command::new("python3")
                .args(["-c", &script])
                .envs(dir.env())
                .env("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "400")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if *name == "a" {
                // The others come once the server has seen `a` encrypted
                // and is busy with it, however long `a` took to get there.
                assert_eq!(lines.next().unwrap().unwrap(), "a");
            } else {
                std::thread::sleep(Duration::from_millis(300));
            }
            child
        })
        .collect();
    let answers: Vec<String> = clients
        .into_iter()
        .map(|c| output_text(c.wait_with_output().unwrap()))
        .collect();
    let _ = srv.kill();
    let _ = srv.wait();
    assert_eq!(answers, ["a encrypted\n", "b encrypted\n", "c encrypted\n"]);
}

/// A blocking connect that waits for its negotiation is interrupted by a
/// signal only as the kernel's would be (signal(7)): a handler installed
/// with `SA_RESTART` leaves it waiting (here until the plain fallback from
/// a server that never speaks), one without ends it with `EINTR` at once.
#[test]
fn a_signal_interrupts_a_waiting_connect_only_as_it_would_the_kernels() {
    let dir = OwnDir::new("connect-signal");
    // A plain server that never speaks: the negotiation waits for its
    // hello until the fallback. One for each run: the daemon remembers a
    // server that fell back and goes plain to it at once.
    let silent_server = || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for c in l.incoming().flatten() {
                kept.push(c);
            }
        });
        port
    };
    let run = |interrupt: bool| {
        let port = silent_server();
        let script = format!(
            r#"
import ctypes, errno, signal, socket, struct, time
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGALRM, lambda *a: None)
# Every handler as the test asks (Python installs SIGINT's without SA_RESTART).
for sig in (signal.SIGALRM, signal.SIGINT):
    signal.siginterrupt(sig, {interrupt})
s = socket.socket()
addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", {port}) + socket.inet_aton("127.0.0.1") + bytes(8)
signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
t = time.monotonic()
r = libc.connect(s.fileno(), addr, len(addr))
e = ctypes.get_errno() if r else 0
took = time.monotonic() - t
signal.setitimer(signal.ITIMER_REAL, 0)
print(errno.errorcode.get(e, e) if r else "connected", took > 0.5)
"#,
            interrupt = if interrupt { "True" } else { "False" }
        );
        output_text(
            Command::new("python3")
                .args(["-c", &script])
                .envs(dir.env())
                .output()
                .unwrap(),
        )
    };
    assert_eq!(run(false), "connected True\n", "SA_RESTART: restarted");
    assert_eq!(run(true), "EINTR False\n", "no SA_RESTART: interrupted");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `script` in Python as user `nobody`.
fn as_nobody(script: &str, arg: &Path) -> String {
    let wrapped = format!("import os, sys\nos.setgid(65534)\nos.setuid(65534)\n{script}");
    // The system's Python: one installed under root's home is not
    // readable by `nobody`.
    output_text(
        Command::new("/usr/bin/python3")
            .args(["-c", &wrapped])
            .arg(arg)
            .output()
            .unwrap(),
    )
}

/// A program's standard output followed by its standard error.
fn output_text(out: std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn another_user_can_neither_reach_the_daemon_nor_stand_in_for_it() {
    assert!(
        is_root(),
        "this test switches users: run it as root (CI does)"
    );
    let dir = OwnDir::new("other-user");
    let (server, _seen) = tcpcrypt_http(b"x".to_vec());
    let connect = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(len(s.recv(100)) > 0)
"#,
        port = server.port()
    );
    let out = Command::new("python3")
        .args(["-c", &connect])
        .envs(dir.env())
        .env("TCPCRYPT_DAEMON_IDLE_EXIT", "60s")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True\n");
    let sock = daemon_socket(&dir.0);
    // The directory keeps everyone else out.
    let probe = r#"
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    s.sendall(b"\x01\x00\x00\x00\x07")
    print("answer", s.recv(100) or "none")
except PermissionError:
    print("EACCES")
except (ConnectionResetError, BrokenPipeError):
    print("answer none")
"#;
    assert_eq!(as_nobody(probe, &sock).trim(), "EACCES");
    // With the directory opened up by mistake, the daemon still answers
    // its own user only (SO_PEERCRED).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let answer = as_nobody(probe, &sock);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(answer.trim(), "answer none", "no status for another user");
    // A directory another user made for this one is refused: under the
    // mandatory policy the connection fails, and nothing goes there.
    let theirs = OwnDir::new("planted");
    std::fs::create_dir(&theirs.0).unwrap();
    std::fs::set_permissions(&theirs.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(
        &theirs.0,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {}))\n    print('connected')\nexcept PermissionError:\n    print('EPERM')",
                server.port()
            ),
        ])
        .envs(theirs.env())
        .env("TCPCRYPT_POLICY", "mandatory")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EPERM");
    assert_eq!(std::fs::read_dir(&theirs.0).unwrap().count(), 0);
}

#[test]
fn the_daemon_keeps_nothing_of_the_program_that_started_it() {
    let dir = OwnDir::new("inherit");
    let (server, _seen) = tcpcrypt_http(b"x".to_vec());
    let lines: Vec<String> = {
        let out = Command::new("python3")
            .args([
                "-c",
                &format!(
                    r#"
import os, socket
r, w = os.pipe()
os.set_inheritable(w, True)
s = socket.socket()
os.set_inheritable(s.fileno(), True)
s.connect(("127.0.0.1", {port}))
print("pipe:[%d]" % os.fstat(w).st_ino)
print("socket:[%d]" % os.fstat(s.fileno()).st_ino)
"#,
                    port = server.port()
                ),
            ])
            .envs(dir.env())
            .env("TCPCRYPT_DAEMON_IDLE_EXIT", "60s")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let pid = daemon_pid(&dir.0).expect("a daemon answers");
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    for inherited in &lines {
        assert!(!held.contains(inherited), "the daemon holds {inherited}");
    }
}

#[test]
fn a_blocking_connect_longer_than_the_daemons_request_deadline_succeeds() {
    // A plain server whose accept queue is full: the kernel drops the
    // client's SYNs until the server accepts, 6 s later, and the client's
    // retransmission (at about 7 s) gets through.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(1).unwrap();
    let listener: TcpListener = listener.into();
    let port = listener.local_addr().unwrap().port();
    let fillers: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut child = Command::new("python3")
        .args([
            "-c",
            &format!(
                r#"
import socket, time
print("connecting", flush=True)
t = time.monotonic()
s = socket.create_connection(("127.0.0.1", {port}))
print(s.makefile().readline().strip(), round(time.monotonic() - t))
"#
            ),
        ])
        .envs(shim_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The 6 s count from the connect, not from the program's start (which
    // a loaded machine may take a second or more over).
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "connecting");
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(6));
        for c in listener.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"hello\n");
        }
    });
    let out = child.wait_with_output().unwrap();
    drop(fillers);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (greeting, seconds) = text.trim().split_once(' ').unwrap();
    assert_eq!(greeting, "hello");
    let seconds: u64 = seconds.parse().unwrap();
    assert!(
        seconds >= 5,
        "the connect took {seconds} s: the test did not test"
    );
}

#[test]
fn a_program_that_clears_its_environment_keeps_the_policy_and_the_daemon() {
    // As nginx does for its workers: the settings are the ones the program
    // started with.
    let dir = OwnDir::new("cleared-env");
    let (port, received) = recording_server();
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                r#"
import os, socket
os.environ.clear()
try:
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"secret-after-clear")
    s.settimeout(10)
    print("read", s.recv(10))
except OSError as e:
    print("error")
"#
            ),
        ])
        .envs(dir.env())
        .env("TCPCRYPT_DAEMON_IDLE_EXIT", "60s")
        .env("TCPCRYPT_POLICY", "mandatory")
        .env("TCPCRYPT_HANDSHAKE_TIMEOUT_MS", "500")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "error");
    std::thread::sleep(Duration::from_millis(200));
    let got = received.lock().unwrap();
    assert!(
        !got.windows(6).any(|w| w == b"secret"),
        "plaintext reached the server"
    );
    assert!(
        daemon_pid(&dir.0).is_some(),
        "the configured daemon served it"
    );
}

/// Lets a stopped process go on when dropped, whatever the test did; and
/// a watchdog does it after two minutes should the test itself be killed.
struct Stopped(nix::unistd::Pid, std::process::Child);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        let watchdog = Command::new("sh")
            .args(["-c", &format!("sleep 120; kill -CONT {pid}")])
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid, watchdog)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        let _ = self.1.kill();
        let _ = self.1.wait();
    }
}

/// A stopped daemon (`SIGSTOP`, a terminal's `^Z`) is, for new
/// connections, as good as none: under the opportunistic policy they go
/// plain with every byte, at once; under the mandatory policy they are
/// refused and nothing is sent. Once the daemon goes on, the same process encrypts again, and
/// the connection it relayed before it stopped is intact.
#[test]
fn a_stopped_daemon_is_as_good_as_none_until_it_goes_on() {
    let dir = OwnDir::new("stopped-daemon");
    let (encrypted, from_encrypted) = sink(true);
    let (plain, from_plain) = sink(false);
    let script = format!(
        r#"
import socket, sys, time
kept = socket.create_connection(("127.0.0.1", {enc}))
kept.sendall(b"kept")
# Stopped once its handshake is over (a session ID to read), not during it.
for _ in range(400):
    try:
        kept.getsockopt(socket.IPPROTO_TCP, 0x54430001, 64)
        break
    except OSError:
        time.sleep(0.05)
print("connected", flush=True)
sys.stdin.readline()
took = []
for i in range(3):
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", {plain}))
    # A loopback peer's addresses: answered without the daemon.
    assert s.getpeername() == ("127.0.0.1", {plain})
    s.getsockname()
    took.append(time.monotonic() - t)
    s.sendall(b"plain%d" % i)
    s.close()
print(" ".join("%.3f" % t for t in took), flush=True)
sys.stdin.readline()
for i in range(3):
    s = socket.create_connection(("127.0.0.1", {enc}))
    s.sendall(b"again")
    s.close()
kept.sendall(b" and more")
kept.close()
print("done", flush=True)
"#,
        enc = encrypted.port(),
        plain = plain.port()
    );
    let mut py = Command::new("python3")
        .args(["-c", &script])
        .envs(dir.env())
        // A loaded machine must not take the slow server for a legacy one.
        .env("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "30000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_py = py.stdin.take().unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    let stopped = Stopped::stop(daemon_pid(&dir.0).expect("a daemon answers"));

    // The mandatory policy, in a process of its own: refused, nothing sent.
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                r#"
import socket
try:
    socket.create_connection(("127.0.0.1", {plain})).sendall(b"secret")
    print("sent")
except PermissionError:
    print("EPERM")
"#,
                plain = plain.port()
            ),
        ])
        .envs(dir.env())
        .env("TCPCRYPT_POLICY", "mandatory")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EPERM");

    // The opportunistic policy: plain, every byte, one deadline per process.
    writeln!(to_py).unwrap();
    let took: Vec<f64> = lines
        .next()
        .unwrap()
        .unwrap()
        .split(' ')
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(
        took.iter().all(|&t| t < 2.0),
        "a stopped daemon is seen at once, with no deadline to wait: {took:?}"
    );
    let mut got: Vec<_> = (0..3)
        .map(|_| from_plain.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (false, b"plain0".to_vec()),
            (false, b"plain1".to_vec()),
            (false, b"plain2".to_vec())
        ],
        "exactly the bytes, and nothing of the refused connection"
    );

    // Going on: the same process encrypts again (after a moment for the
    // daemon to take the questions queued while it was stopped).
    drop(stopped);
    std::thread::sleep(Duration::from_secs(1));
    writeln!(to_py).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    let _ = py.wait();
    let got: Vec<_> = (0..4)
        .map(|_| {
            from_encrypted
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
        })
        .collect();
    assert!(
        got.contains(&(true, b"kept and more".to_vec())),
        "the relayed connection is intact: {got:?}"
    );
    assert!(
        got.contains(&(true, b"again".to_vec())),
        "a new connection is encrypted again: {got:?}"
    );
    assert!(
        got.iter()
            .all(|(_, b)| b == b"again" || b == b"kept and more"),
        "{got:?}"
    );
}

/// `tcpcrypt status`, `tcpcrypt daemon` and `tcpcrypt daemon --stop` tell
/// a stopped daemon at once, by name, instead of waiting for an answer
/// that cannot come; `--stop` lets it go on to stop.
#[test]
fn the_commands_tell_a_stopped_daemon_at_once_and_stop_stops_it() {
    let dir = OwnDir::new("stopped-commands");
    let tcpcrypt = |args: &[&str]| {
        let t = Instant::now();
        let out = Command::new(tcpcrypt_bin())
            .args(args)
            .env("TCPCRYPT_RUNTIME_DIR", &dir.0)
            .env("TCPCRYPT_DAEMON_IDLE_EXIT", "60s")
            .output()
            .unwrap();
        (out, t.elapsed())
    };
    let (out, _) = tcpcrypt(&["daemon"]);
    assert!(out.status.success(), "{out:?}");
    let pid = daemon_pid(&dir.0).expect("the daemon answers");
    // A second start says that one runs already, whose settings stay.
    let (again, _) = tcpcrypt(&["daemon", "--zero-rtt"]);
    assert!(again.status.success(), "{again:?}");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(daemon_pid(&dir.0), Some(pid), "the same daemon");
    let stopped = Stopped::stop(pid);
    wait_until("the daemon is stopped", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.starts_with(" T")))
    });
    let says_stopped = |out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains(&format!("(pid {pid}) is stopped"))
                && err.contains(&format!("kill -CONT {pid}")),
            "{err}"
        );
    };
    for args in [&["status"][..], &["daemon"]] {
        let (out, took) = tcpcrypt(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        says_stopped(&out);
        assert!(took < Duration::from_secs(2), "{args:?} took {took:?}");
    }
    let (out, took) = tcpcrypt(&["daemon", "--stop"]);
    assert!(out.status.success(), "{out:?}");
    assert!(took < Duration::from_secs(2), "--stop took {took:?}");
    wait_until("the daemon exits", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.starts_with(" Z")))
    });
    drop(stopped);
}

/// A daemon that runs but does not answer (hung): the connection handed
/// to it fails after the deadline with an error, never a silent loss, and
/// its real connection is reset at once, although the hand-over still
/// holds it; the process then asks with a short deadline before each
/// hand-over, so that its next connections go plain (opportunistic) or
/// are refused (mandatory), with nothing of the refused ones sent.
#[test]
fn a_daemon_that_does_not_answer_fails_one_connection_then_is_passed_by() {
    let dir = OwnDir::new("hung-daemon");
    // A real daemon makes the directory and names its socket; in its
    // place then, a listener that takes connections and never answers.
    let (plain, from_plain) = sink(false);
    let first = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket; socket.create_connection(('127.0.0.1', {})).close()",
                plain.port()
            ),
        ])
        .envs(dir.env())
        // Stopped below, not by its idle exit (which `--stop` could race).
        .env("TCPCRYPT_DAEMON_IDLE_EXIT", "60s")
        .status()
        .unwrap();
    assert!(first.success());
    // Its first contact: the hello, then the plain connection.
    for _ in 0..2 {
        let _ = from_plain.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    let path = daemon_socket(&dir.0);
    let status = Command::new(tcpcrypt_bin())
        .args(["daemon", "--stop"])
        .env("TCPCRYPT_RUNTIME_DIR", &dir.0)
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the daemon is gone", Duration::from_secs(10), || {
        daemons_of(&dir.0) == 0
    });
    let _ = std::fs::remove_file(&path);
    let hung = std::os::unix::net::UnixListener::bind(&path).unwrap();

    let script = format!(
        r#"
import socket, time
for i in range(3):
    t = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", {plain}))
        s.sendall(b"plain%d" % i)
        s.close()
        print("sent %.3f" % (time.monotonic() - t), flush=True)
    except OSError as e:
        print("errno %d %.3f" % (e.errno, time.monotonic() - t), flush=True)
"#,
        plain = plain.port()
    );
    let run = |policy: &str| {
        let out = Command::new("python3")
            .args(["-c", &script])
            .envs(dir.env())
            .env("TCPCRYPT_POLICY", policy)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let (what, took) = l.rsplit_once(' ').unwrap();
                (what.to_string(), took.parse::<f64>().unwrap())
            })
            .collect::<Vec<_>>()
    };
    for (policy, later) in [("opportunistic", "sent"), ("mandatory", "errno 1")] {
        let got = run(policy);
        assert_eq!(got.len(), 3, "{policy}: {got:?}");
        assert_eq!(got[0].0, "errno 103", "{policy}: the first fails: {got:?}");
        assert!(got[0].1 < 15.0, "{policy}: after one deadline: {got:?}");
        for (what, took) in &got[1..] {
            assert_eq!(what, later, "{policy}: {got:?}");
            assert!(
                *took < 3.0,
                "{policy}: one short deadline, not the full one: {got:?}"
            );
        }
    }
    // Collected while the hung listener still holds the hand-overs.
    let mut got: Vec<_> =
        std::iter::from_fn(|| from_plain.recv_timeout(Duration::from_secs(2)).ok())
            .take(10)
            .collect();
    drop(hung);
    got.sort();
    // The two that failed reached the server, with no byte.
    assert_eq!(
        got,
        [
            (false, Vec::new()),
            (false, Vec::new()),
            (false, b"plain1".to_vec()),
            (false, b"plain2".to_vec())
        ],
        "exactly the bytes of the connections that went plain"
    );
}
