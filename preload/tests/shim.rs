//! Real programs under the shim: curl and Python, against tcpcrypt servers
//! built with the library, against plain servers, and shimmed on both ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpcrypt_tokio::TcpcryptListener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::*;

#[test]
fn shimmed_curl_to_a_tcpcrypt_server_is_encrypted_and_the_wire_is_ciphertext() {
    let page = [&b"secret page "[..], &body(200_000)].concat();
    let (server, seen) = tcpcrypt_http(page.clone());
    let (relay, wire) = recording_relay(server);
    let (code, got) = curl(true, &format!("http://{relay}/"));
    assert_eq!(code, 0);
    assert!(got == page, "body intact");
    assert!(
        seen.lock().unwrap()[0].is_some(),
        "the server saw an encrypted session"
    );
    let wire = wire.lock().unwrap();
    assert!(wire.starts_with(b"\xE5ENO\x01B\r\n"), "the server's hello");
    assert!(
        !wire.windows(12).any(|w| w == b"secret page "),
        "plaintext on the wire"
    );
}

#[test]
fn fallback_and_plain_clients_get_identical_bodies() {
    let dir = std::env::temp_dir().join(format!("tcpcrypt-shim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = body(300_000);
    std::fs::write(dir.join("page.bin"), &page).unwrap();
    // Shimmed curl, plain Python: fallback.
    let plain = python_server(&dir, false);
    let (code, got) = curl(true, &format!("http://127.0.0.1:{}/page.bin", plain.1));
    assert_eq!(code, 0);
    assert!(got == page);
    // Plain curl, shimmed Python; and both shimmed.
    let shimmed = python_server(&dir, true);
    for both in [false, true] {
        let (code, got) = curl(both, &format!("http://127.0.0.1:{}/page.bin", shimmed.1));
        assert_eq!(code, 0, "shimmed client: {both}");
        assert!(got == page, "shimmed client: {both}");
    }
    drop((plain, shimmed));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connect_errors_are_the_real_ones() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/");
    let (plain_code, _) = curl(false, &url);
    let (shim_code, _) = curl(true, &url);
    assert_eq!(plain_code, 7);
    assert_eq!(shim_code, plain_code, "same exit code as without the shim");
}

#[test]
fn python_blocking_sockets_and_the_session_id_through_ctypes() {
    let (server, seen) = tcpcrypt_http(b"hello".to_vec());
    let script = format!(
        r#"
import ctypes, socket, urllib.request
lib = ctypes.CDLL("{so}")
s = socket.create_connection(("127.0.0.1", {port}))
buf = ctypes.create_string_buffer(64)
n = -1
for _ in range(200):
    n = lib.tcpcrypt_session_id(s.fileno(), buf, 64)
    if n > 0:
        break
    import time; time.sleep(0.01)
print(buf.raw[:n].hex())
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n\r\n", 1)[1].decode())
print(s.getpeername()[1])
print(urllib.request.urlopen("http://127.0.0.1:{port}/").read().decode())
"#,
        so = shim().display(),
        port = server.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .envs(shim_env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = BufReader::new(stdout.as_bytes())
        .lines()
        .map(|l| l.unwrap().leak() as &str)
        .collect();
    let server_id = seen.lock().unwrap()[0].expect("encrypted").to_string();
    assert_eq!(
        lines[0], server_id,
        "the C call returns the server's session ID"
    );
    assert_eq!(lines[1], "hello");
    assert_eq!(
        lines[2],
        server.port().to_string(),
        "getpeername gives the real peer"
    );
    assert_eq!(lines[3], "hello", "urllib works under the shim");
}

#[test]
fn getsockopt_answers_the_tcpinc_options() {
    let (server, seen) = tcpcrypt_http(b"x".to_vec());
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in plain.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.0 400 no\r\n\r\n");
        }
    });
    let lines = python_shimmed(&format!(
        r#"
import socket, struct, time
TCP_ENO_SESSID, TCP_ENO_NEGTEP, TCP_ENO_ROLE, TCP_ENO_SELF_NAME, TCP_CRYPT_CONF = 0x54430001, 0x54430002, 0x54430003, 0x54430004, 0x54430008
s = socket.create_connection(("127.0.0.1", {port}))
for _ in range(200):
    try:
        sid = s.getsockopt(socket.IPPROTO_TCP, TCP_ENO_SESSID, 64)
        break
    except OSError as e:
        assert e.errno == 107, e  # ENOTCONN while negotiating
        time.sleep(0.01)
print(sid.hex())
print(s.getsockopt(socket.IPPROTO_TCP, TCP_ENO_NEGTEP))
print(s.getsockopt(socket.IPPROTO_TCP, TCP_ENO_ROLE))
print(s.getsockopt(socket.IPPROTO_TCP, TCP_ENO_SELF_NAME, 64).hex())
print(s.getsockopt(socket.IPPROTO_TCP, TCP_CRYPT_CONF))
p = socket.create_connection(("127.0.0.1", {plain_port}))
p.sendall(b"GET / HTTP/1.0\r\n\r\n")
p.recv(100)
try:
    p.getsockopt(socket.IPPROTO_TCP, TCP_ENO_SESSID, 64)
    print("no error")
except OSError as e:
    print("errno", e.errno)
"#,
        port = server.port()
    ));
    let id = seen.lock().unwrap()[0].expect("encrypted").to_string();
    assert_eq!(lines[0], id);
    assert_eq!(lines[1], "35", "TEP 0x23 as B sent it");
    assert_eq!(lines[2], "0", "role A");
    assert_eq!(
        lines[3],
        format!("00{id}"),
        "self name: role byte, then the session ID"
    );
    assert_eq!(lines[4], "1", "AES-128-GCM");
    assert_eq!(
        lines[5], "errno 22",
        "a plain connection has no session ID: EINVAL"
    );
}

#[test]
fn the_session_outlives_the_relay_and_follows_duplicates() {
    let (server, seen) = tcpcrypt_http(b"x".to_vec());
    let lines = python_shimmed(&format!(
        r#"
import os, socket, time
SESSID = 0x54430001
def sid(sock):
    for _ in range(200):
        try:
            return sock.getsockopt(socket.IPPROTO_TCP, SESSID, 64).hex()
        except OSError as e:
            assert e.errno == 107, e  # ENOTCONN while negotiating
            time.sleep(0.01)
# Both directions end (the relay with them); the socket stays open.
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
s.shutdown(socket.SHUT_WR)
while s.recv(4096):
    pass
time.sleep(0.5)
print(sid(s))
s.close()
# Duplicates made behind the hooks' back (fcntl, dup2), the original closed.
s = socket.create_connection(("127.0.0.1", {port}))
sid(s)
d = s.dup()
os.dup2(d.fileno(), 200)
s.close()
print(sid(d))
print(d.getpeername()[1])
e = socket.socket(fileno=200)
print(sid(e))
d.close()
e.sendall(b"GET / HTTP/1.0\r\n\r\n")
e.shutdown(socket.SHUT_WR)
reply = b""
while True:
    chunk = e.recv(4096)
    if not chunk:
        break
    reply += chunk
print(reply.split(b"\r\n\r\n", 1)[1].decode())
"#,
        port = server.port()
    ));
    let ids: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|id| id.expect("encrypted").to_string())
        .collect();
    assert_eq!(lines[0], ids[0], "queryable after the relay ended");
    assert_eq!(lines[1], ids[1], "through a dup, the original closed");
    assert_eq!(lines[2], server.port().to_string(), "getpeername too");
    assert_eq!(lines[3], ids[1], "through a dup2 to another number");
    assert_eq!(lines[4], "x", "and the connection still works");
}

#[test]
fn fork_and_many_threads() {
    let (server, seen) = tcpcrypt_http(b"ok".to_vec());
    let lines = python_shimmed(&format!(
        r#"
import os, socket, threading, urllib.request
url = "http://127.0.0.1:{port}/"
def get():
    return urllib.request.urlopen(url, timeout=30).read()
# A connection opened before fork keeps working in the parent.
s = socket.create_connection(("127.0.0.1", {port}))
pid = os.fork()
if pid == 0:
    # The child gets its own relay on first use.
    os._exit(0 if get() == b"ok" else 1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    c = s.recv(4096)
    if not c:
        break
    data += c
print("parent", data.endswith(b"ok"))
# Many threads connecting at once.
results = []
def worker():
    results.append(get())
threads = [threading.Thread(target=worker) for _ in range(200)]
for t in threads: t.start()
for t in threads: t.join()
print("threads", sum(1 for r in results if r == b"ok"))
"#,
        port = server.port()
    ));
    assert_eq!(lines, ["child 0", "parent True", "threads 200"]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 202);
    assert!(
        seen.iter().all(|s| s.is_some()),
        "every connection encrypted"
    );
}

/// `fork` while other threads are busy connecting: the shim's
/// process-wide locks are taken across `fork`, so a child never starts
/// with one held by a thread it does not have (its first connection would
/// hang).
#[test]
fn fork_while_other_threads_connect() {
    let (server, _) = tcpcrypt_http(b"ok".to_vec());
    let lines = python_shimmed(&format!(
        r#"
import os, socket, threading, time
# Python's own codec import lock must not be held by a thread at fork.
"warm".encode("idna")
def get():
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while s.recv(65536): pass
    s.close()
stop = False
def churn():
    while not stop:
        get()
threads = [threading.Thread(target=churn) for _ in range(2)]
for t in threads: t.start()
hung = failed = 0
for _ in range(150):
    pid = os.fork()
    if pid == 0:
        get()
        os._exit(0)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            failed += os.waitstatus_to_exitcode(status) != 0
            break
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.002)
stop = True
for t in threads: t.join()
print("hung", hung, "failed", failed)
"#,
        port = server.port()
    ));
    assert_eq!(lines, ["hung 0 failed 0"]);
}

/// nginx under the shim (epoll, edge-triggered; `accept4` non-blocking;
/// `sendfile`; a master process that forks its worker), serving 100 MB to
/// shimmed and plain curl.
#[test]
fn nginx_serves_a_large_file_to_shimmed_and_plain_curl() {
    let Ok(nginx) = which("nginx") else {
        panic!("nginx is not installed (scripts/test installs it)");
    };
    let dir = std::env::temp_dir().join(format!("tcpcrypt-nginx-{}", std::process::id()));
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("tmp")).unwrap();
    let file = body(100 << 20);
    std::fs::write(www.join("big.bin"), &file).unwrap();
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{ access_log off; sendfile on; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}
"
    );
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx)
        .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
        .envs(shim_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Nginx(child);
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let (relay, wire) = recording_relay(format!("127.0.0.1:{port}").parse().unwrap());
    for (shimmed, target) in [
        (true, relay.to_string()),
        (false, format!("127.0.0.1:{port}")),
    ] {
        let out = dir.join("out.bin");
        let mut cmd = Command::new("curl");
        // A 100 MB transfer takes about a second: 30 s catches a stall
        // (such as a tail left unflushed until nginx's keepalive ends).
        cmd.args(["-sS", "--max-time", "30", "-o"])
            .arg(&out)
            .arg(format!("http://{target}/big.bin"));
        if shimmed {
            cmd.envs(shim_env());
        }
        assert!(cmd.status().unwrap().success(), "curl (shimmed: {shimmed})");
        let got = std::fs::read(&out).unwrap();
        assert!(
            got.len() == file.len() && got == file,
            "100 MB intact (shimmed: {shimmed})"
        );
    }
    let wire = wire.lock().unwrap();
    assert!(
        wire.starts_with(b"\xE5ENO\x01B\r\n"),
        "nginx answered in tcpcrypt"
    );
    assert!(
        !wire.windows(8).any(|w| w == b"HTTP/1.1"),
        "no plaintext HTTP on the wire"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops nginx the way its master expects (SIGTERM), so that the master
/// takes its worker down with it.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn banner_servers_with_both_kinds_of_clients() {
    // A server that speaks first, plain and shimmed, and clients of both kinds.
    let server_script = r#"
import socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(16)
print(l.getsockname()[1], flush=True)
while True:
    c, _ = l.accept()
    c.sendall(b"220 banner\r\n")
    line = c.recv(100)
    c.sendall(b"got " + line)
    c.close()
"#;
    let client_script = |port: &str| {
        format!(
            r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
f = s.makefile("rb")
print(f.readline().decode().strip())
s.sendall(b"HELO\r\n")
print(f.readline().decode().strip())
"#
        )
    };
    for server_shimmed in [false, true] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", server_script]).stdout(Stdio::piped());
        if server_shimmed {
            cmd.envs(shim_env());
        }
        let mut child = cmd.spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first.trim().to_string();
        let _guard = Py(child, 0);
        for client_shimmed in [false, true] {
            let mut c = Command::new("python3");
            c.args(["-c", &client_script(&port)]);
            if client_shimmed {
                c.envs(shim_env());
            }
            let out = c.output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "server shimmed {server_shimmed}, client shimmed {client_shimmed}: {text}"
            );
            assert_eq!(
                text, "220 banner\ngot HELO\n",
                "server shimmed {server_shimmed}, client shimmed {client_shimmed}"
            );
        }
    }
}

#[test]
fn mandatory_policy_fails_closed() {
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for c in plain.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            got2.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nplain");
        }
    });
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-H",
            "X-Secret: swordfish",
            &format!("http://{addr}/"),
        ])
        .envs(shim_env())
        .env("TCPCRYPT_POLICY", "mandatory")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "mandatory must not talk to a plain server"
    );
    assert!(out.stdout.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    let wire = got.lock().unwrap();
    assert!(
        wire.starts_with(b"\xE5ENO\x01"),
        "only the hello reached the server"
    );
    assert!(
        !wire.windows(9).any(|w| w == b"swordfish"),
        "no application byte in the clear"
    );
}

/// Connections the shim cannot carry (a socket bound to its own port; a
/// relay that cannot start for want of descriptors) fail with EPERM under
/// the mandatory policy, before any packet leaves, and go ahead
/// unencrypted otherwise. A policy that does not parse counts as mandatory.
#[test]
fn mandatory_policy_refuses_what_the_shim_cannot_carry() {
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let connections = Arc::new(Mutex::new(0usize));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for c in plain.incoming().flatten() {
            *counted.lock().unwrap() += 1;
            let mut c = c;
            let _ = c.write_all(b"plain");
        }
    });
    let script = format!(
        r#"
import resource, socket
s = socket.socket()
if "CASE" == "bound":
    s.bind(("127.0.0.1", 0))
else:
    # The socket took the lowest free descriptor number: leave one more,
    # too few for the shim's loopback pairing.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (s.fileno() + 2, hard))
try:
    s.connect(("127.0.0.1", {port}))
    print(s.recv(100).decode())
except PermissionError:
    print("EPERM")
"#
    );
    let run = |case: &str, policy: &str| {
        let script = script.replace("CASE", case);
        python_shimmed_with(&script, &[("TCPCRYPT_POLICY", policy)]).join("\n")
    };
    for policy in ["mandatory", "mandatroy"] {
        for case in ["bound", "no-relay"] {
            assert_eq!(run(case, policy), "EPERM", "{case} under {policy}");
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        *connections.lock().unwrap(),
        0,
        "nothing reached the server"
    );
    for case in ["bound", "no-relay"] {
        assert_eq!(run(case, "opportunistic"), "plain", "{case}");
    }
    assert_eq!(*connections.lock().unwrap(), 2);

    // The accepting side, short of the descriptors the hand-over takes:
    // `accept` fails with EMFILE before taking the connection, which
    // stays queued; the application never gets it unencrypted.
    let server = r#"
import errno, resource, socket, time
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (l.fileno() + 2, hard))
print(l.getsockname()[1], flush=True)
try:
    c, _ = l.accept()
    print("accepted", c.recv(100))
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
time.sleep(2)
"#;
    let (mut child, mut lines) =
        shimmed_python_server_with(server, &[("TCPCRYPT_POLICY", "mandatory")]);
    let mut client = TcpStream::connect(("127.0.0.1", child.1)).unwrap();
    client.write_all(b"secret").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "EMFILE");
    // Queued, neither read nor reset.
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let r = client.read(&mut [0u8; 16]);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{r:?}"
    );
    assert!(child.0.wait().unwrap().success());
}

/// More connections than one status message holds (about 50): `tcpcrypt
/// status` asks page by page and lists every one.
#[test]
fn the_status_lists_every_connection_however_many() {
    let (server, _seen) = tcpcrypt_http(b"x".to_vec());
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                r#"
import json, os, socket, subprocess, sys, time
held = [socket.create_connection(("127.0.0.1", {port})) for _ in range(150)]
for _ in range(500):
    out = subprocess.run([sys.argv[1], "status", "--json"], capture_output=True, check=True).stdout
    mine = [c for c in json.loads(out) if c["pid"] == os.getpid() and c["encrypted"]]
    if len(mine) >= 150: break
    time.sleep(0.02)
print(len(mine), len(set(c["local"] for c in mine)))
"#,
                port = server.port()
            ),
            tcpcrypt_bin().to_str().unwrap(),
        ])
        .envs(shim_env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "150 150", "every connection, each once");
}

#[test]
fn the_daemon_lists_live_connections_with_their_process() {
    let (server, seen) = tcpcrypt_http(b"x".to_vec());
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                r#"
import json, os, socket, subprocess, sys, time
def status():
    out = subprocess.run([sys.argv[1], "status", "--json"], capture_output=True, check=True).stdout
    return [c for c in json.loads(out) if c["pid"] == os.getpid()]
s = socket.create_connection(("127.0.0.1", {port}))
for _ in range(500):
    mine = [c for c in status() if c["encrypted"]]
    if mine: break
    time.sleep(0.01)
print(json.dumps(mine[0]))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
while s.recv(4096): pass
s.close()
for _ in range(500):
    if not status(): break
    time.sleep(0.01)
print(len(status()))
# A second connection resumes the session: the same TEP, said resumed.
s = socket.create_connection(("127.0.0.1", {port}))
for _ in range(500):
    mine = [c for c in status() if c["encrypted"]]
    if mine: break
    time.sleep(0.01)
print(json.dumps(mine[0]))
s.close()
"#,
                port = server.port()
            ),
            tcpcrypt_bin().to_str().unwrap(),
        ])
        .envs(shim_env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let record: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let id = seen.lock().unwrap()[0].unwrap().to_string();
    assert_eq!(record["session_id"], id.as_str(), "{record}");
    assert_eq!(record["program"], "python3", "{record}");
    assert_eq!(record["role"], "A", "{record}");
    assert_eq!(
        record["peer"],
        format!("127.0.0.1:{}", server.port()).as_str(),
        "{record}"
    );
    assert_eq!(lines[1], "0", "the entry goes when the connection closes");
    let resumed: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    // The TEP's identifier (TCPCRYPT_ECDHE_Curve25519) either way, not
    // the suboption byte with its v bit.
    assert_eq!(
        (&record["tep"], &record["resumed"]),
        (&serde_json::json!(0x23), &serde_json::json!(false)),
        "{record}"
    );
    assert_eq!(
        (&resumed["tep"], &resumed["resumed"]),
        (&serde_json::json!(0x23), &serde_json::json!(true)),
        "{resumed}"
    );
}

#[test]
fn exec_children_inherit_and_connections_leak_nothing() {
    let (server, seen) = tcpcrypt_http(b"ok".to_vec());
    let lines = python_shimmed(&format!(
        r#"
import os, socket, subprocess
# An exec'd child inherits the preload through the environment.
print(subprocess.run(["curl", "-sS", "http://127.0.0.1:{port}/"], capture_output=True).stdout.decode())
def fds(): return len(os.listdir("/proc/self/fd"))
def threads(): return len(os.listdir("/proc/self/task"))
def once():
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while s.recv(4096): pass
    s.close()
once()
import time; time.sleep(0.2)
before = (fds(), threads())
for _ in range(300): once()
time.sleep(0.5)
after = (fds(), threads())
print(before == after, before, after)
"#,
        port = server.port()
    ));
    assert_eq!(lines[0], "ok");
    assert!(
        lines[1].starts_with("True"),
        "descriptors and threads after 300 connections: {}",
        lines[1]
    );
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|s| s.is_some()) && seen.len() == 302);
}

#[test]
fn half_close_socket_options_and_logging() {
    // The server reads to the end (which needs the client's FINp) and only
    // then answers.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut l = TcpcryptListener::bind("127.0.0.1:0", &Arc::new(patient_server()))
                .await
                .unwrap();
            tx.send(l.local_addr()).unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(format!("got {} bytes", all.len()).as_bytes())
                .await
                .unwrap();
            s.shutdown().await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    let log = std::env::temp_dir().join(format!("tcpcrypt-log-{}", std::process::id()));
    let script = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
s.sendall(b"x" * 100000)
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    c = s.recv(4096)
    if not c: break
    data += c
print(data.decode())
"#,
        port = addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .envs(shim_env())
        .env("TCPCRYPT_LOG", "debug")
        .env("TCPCRYPT_LOG_FILE", &log)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text, "1\ngot 100000 bytes\n",
        "half-close reached the server as FINp; options did not fail"
    );
    assert!(
        out.stderr.is_empty(),
        "logs stay out of the program's stderr"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("handed to the daemon"),
        "debug log in the file: {logged}"
    );
    let _ = std::fs::remove_file(&log);
}

/// A plain server that reads each connection to its end: its port.
fn draining_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.read_to_end(&mut Vec::new());
        }
    });
    port
}

/// A scratch directory for the log tests: the shim's log and a file of
/// the program's own; removed on drop.
struct LogScratch {
    dir: std::path::PathBuf,
    log: std::path::PathBuf,
    own: std::path::PathBuf,
}

impl LogScratch {
    fn new(name: &str) -> LogScratch {
        let dir = std::env::temp_dir().join(format!("tcpcrypt-log-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (log, own) = (dir.join("shim.log"), dir.join("own.txt"));
        LogScratch { dir, log, own }
    }

    /// The program's own file, as a Python literal.
    fn own(&self) -> String {
        format!("{:?}", self.own.to_str().unwrap())
    }

    /// Runs `cmd` shimmed, logging at the debug level into the log.
    fn run(&self, cmd: &mut Command) -> std::process::Output {
        cmd.envs(shim_env())
            .env("TCPCRYPT_LOG", "debug")
            .env("TCPCRYPT_LOG_FILE", &self.log)
            .output()
            .unwrap()
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LogScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shim's log keeps no descriptor in the program: a program that
/// closes every descriptor and reuses the numbers for files of its own
/// finds in them only what it wrote, and the log gets the lines.
#[test]
fn the_shims_log_never_writes_to_a_descriptor_the_program_reused() {
    let port = draining_server();
    let scratch = LogScratch::new("reuse");
    let script = format!(
        r#"
import os, socket
os.closerange(3, 1024)
f = open({own}, "w")
socket.create_connection(("127.0.0.1", {port})).close()
f.write("program data\n")
f.close()
"#,
        own = scratch.own(),
    );
    let out = scratch.run(Command::new("python3").args(["-c", &script]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&scratch.own).unwrap(),
        "program data\n",
        "the program's own file holds only what it wrote"
    );
    let logged = scratch.logged();
    assert!(logged.contains("handed to the daemon"), "{logged}");
}

/// The shim's log never takes a standard stream's number: a program
/// started with its standard output closed (`>&-`, as some daemons are)
/// gets number 1 for the next file it opens, as without the shim.
#[test]
fn the_shims_log_leaves_a_closed_standard_streams_number_to_the_program() {
    let port = draining_server();
    let scratch = LogScratch::new("stdout");
    let script = format!(
        r#"
import os, socket
socket.create_connection(("127.0.0.1", {port})).close()
fd = os.open({own}, os.O_WRONLY | os.O_CREAT)
os.write(2, b"opened at %d" % fd)
"#,
        own = scratch.own(),
    );
    let out = scratch.run(Command::new("sh").args(["-c", "exec python3 -c \"$0\" >&-", &script]));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "opened at 1",
        "{out:?}"
    );
    let logged = scratch.logged();
    assert!(logged.contains("handed to the daemon"), "{logged}");
}

#[test]
fn timeouts_come_from_the_environment() {
    // A plain server that ignores anything but "PING" (so a tcpcrypt hello
    // gets no answer at all) and then answers "PONG".
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4];
                if c.read_exact(&mut buf).is_ok() && &buf == b"PING" {
                    let _ = c.write_all(b"PONG");
                }
                let mut sink = [0u8; 1024];
                while c.read(&mut sink).unwrap_or(0) > 0 {}
            });
        }
    });
    let script = format!(
        "import socket,time\nt=time.time()\ns=socket.create_connection(('127.0.0.1',{port}))\ns.sendall(b'PING')\nprint(s.recv(4).decode(), round(time.time()-t, 2))\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .envs(shim_env())
        .env("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "150")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let (word, secs) = text.trim().split_once(' ').unwrap();
    assert_eq!(word, "PONG", "fell back to plain after the silence");
    let secs: f64 = secs.parse().unwrap();
    assert!(
        secs < 1.5,
        "a 150 ms wait, not the 2 s default: took {secs} s"
    );
}

/// A loopback listener that answers no SYN: its backlog is full and never
/// accepted from. Connections to it hang in the TCP handshake, as to an
/// unreachable host. Dropping it releases everything.
struct Blackhole {
    listener: socket2::Socket,
    _held: Vec<socket2::Socket>,
}

impl Blackhole {
    fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let held: Vec<Socket> = (0..4)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.set_nonblocking(true).unwrap();
                let _ = s.connect(&addr);
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        Blackhole {
            listener,
            _held: held,
        }
    }

    fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap()
            .port()
    }
}

/// A program that sets `TCP_NOTSENT_LOWAT` while its non-blocking connect
/// is under way reads back its own value, and its socket still turns
/// writable (or failed) only with the outcome: setting the option on the
/// socket at once would have made it writable with the negotiation still
/// running, `SO_ERROR` 0, and what the program then wrote lost when the
/// mandatory policy refused the plain server. The value is the socket's
/// once the connect has ended, either way.
#[test]
fn setting_notsent_lowat_during_a_connect_does_not_end_it_early() {
    let (tcpcrypt, _seen) = tcpcrypt_http(b"hello".to_vec());
    // A plain server that speaks first: refused under the mandatory
    // policy as soon as its banner arrives.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"220 plain\r\n");
            let _ = c.read_to_end(&mut Vec::new());
        }
    });
    let lines = python_shimmed_with(
        &format!(
            r#"
import errno, select, socket
LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
def attempt(port):
    s = socket.socket(); s.setblocking(False)
    assert s.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
    # More than any filler: on the socket at once, it would poll writable.
    s.setsockopt(socket.IPPROTO_TCP, LOWAT, 1 << 30)
    seen = s.getsockopt(socket.IPPROTO_TCP, LOWAT)
    select.select([], [s], [], 20)
    e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    print(seen, errno.errorcode.get(e, e), s.getsockopt(socket.IPPROTO_TCP, LOWAT))
    s.close()
attempt({tcpcrypt})
attempt({plain})
"#,
            tcpcrypt = tcpcrypt.port()
        ),
        &[("TCPCRYPT_POLICY", "mandatory")],
    );
    assert_eq!(
        lines,
        ["1073741824 0 1073741824", "1073741824 EPERM 1073741824"]
    );
}

#[test]
fn nonblocking_connect_is_asynchronous_with_the_real_outcome_in_so_error() {
    let (server, seen) = tcpcrypt_http(b"hello".to_vec());
    let closed = closed_port();
    let hole = Blackhole::new();
    let lines = python_shimmed(&format!(
        r#"
import ctypes, errno, select, socket, time
lib = ctypes.CDLL(None)
def start(port):
    s = socket.socket(); s.setblocking(False)
    t = time.monotonic()
    r = s.connect_ex(("127.0.0.1", port))
    return s, errno.errorcode.get(r, r), time.monotonic() - t
def so_error(s):
    e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return errno.errorcode.get(e, e)
# A tcpcrypt server: EINPROGRESS, then writable, SO_ERROR 0, encrypted.
s, r, _ = start({port})
print(r)
select.select([], [s], [], 10)
print(so_error(s), s.getpeername()[1] == {port})
again = s.connect_ex(("127.0.0.1", {port}))
print(errno.errorcode.get(again, again))
s.setblocking(True)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
body = b""
while not body.endswith(b"hello"): body += s.recv(4096)
buf = ctypes.create_string_buffer(33)
print(lib.tcpcrypt_session_id(s.fileno(), buf, 33), buf.raw.hex())
s.close()
# A closed port: EINPROGRESS (or the refusal at once), then ECONNREFUSED.
s, r, _ = start({closed})
if r == "EINPROGRESS":
    select.select([], [s], [], 10)
    r = so_error(s)
print(r)
# A destination that never answers: connect returns at once and the socket
# is neither writable nor failed while the handshake is pending.
s, r, took = start({hole})
print(r, took < 0.5)
_, w, x = select.select([], [s], [s], 0.5)
print(w == [] and x == [])
try:
    s.getpeername(); print("connected?")
except OSError as e:
    print(errno.errorcode[e.errno])
print(errno.errorcode.get(s.connect_ex(("127.0.0.1", {hole})), "?"))
s.close()
# A blocking connect ends at the socket's SO_SNDTIMEO, as in the kernel.
import struct
b = socket.socket()
b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 300000))
t = time.monotonic()
try:
    b.connect(("127.0.0.1", {hole})); print("connected?")
except OSError as e:
    print(errno.errorcode[e.errno], time.monotonic() - t < 5)
"#,
        port = server.port(),
        hole = hole.port(),
    ));
    assert_eq!(lines[0], "EINPROGRESS");
    assert_eq!(lines[1], "0 True", "connected, with the real peer");
    assert_eq!(lines[2], "EISCONN");
    let id = seen.lock().unwrap()[0].expect("encrypted").to_string();
    assert_eq!(lines[3], format!("33 {id}"), "the session ID of the socket");
    assert_eq!(lines[4], "ECONNREFUSED", "the real error");
    assert_eq!(lines[5], "EINPROGRESS True", "no wait in connect");
    assert_eq!(lines[6], "True", "pending: not writable, no error");
    assert_eq!(lines[7], "ENOTCONN");
    assert_eq!(lines[8], "EALREADY");
    assert_eq!(lines[9], "EINPROGRESS True", "SO_SNDTIMEO bounds connect");
}

#[test]
fn a_pending_connect_survives_closing_the_original_of_a_copy() {
    // A non-blocking connect to a destination that does not answer yet; the
    // application copies the socket (fcntl, behind the hooks' back) and
    // closes the original. The connect must go on for the copy.
    let hole = Blackhole::new();
    let (_py, mut lines) = shimmed_python_server_with(
        &format!(
            r#"
import os, select, socket
s = socket.socket(); s.setblocking(False)
s.connect_ex(("127.0.0.1", {hole}))
copy = os.dup(s.fileno())  # no socket call: the hooks see nothing of it
s.close()
d = socket.socket(fileno=copy)
print(0, flush=True)
_, w, _ = select.select([], [d], [], 20)
print("writable" if w else "timeout", flush=True)
d.settimeout(20)
print(d.recv(100).decode().strip() or "EOF", flush=True)
"#,
            hole = hole.port()
        ),
        &[],
    );
    let greeter = Greeter::open(hole);
    let mut next = || lines.next().expect("a line").unwrap();
    assert_eq!(next(), "writable", "the connect completed for the copy");
    assert_eq!(next(), "banner", "and carries the destination's bytes");
    drop(greeter);
}

/// Lets a [`Blackhole`] answer: accepts what waits there (the held
/// connections, then the shim's) and greets each, until dropped.
struct Greeter(
    Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl Greeter {
    fn open(hole: Blackhole) -> Greeter {
        hole.listener.set_nonblocking(true).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let mut accepted = Vec::new();
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match hole.listener.accept() {
                    Ok((c, _)) => {
                        let _ = (&c).write_all(b"banner\n");
                        accepted.push(c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Greeter(done, Some(thread))
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_pending_connect_goes_on_in_a_child_after_the_parent_closes_it() {
    // A non-blocking connect to a destination that does not answer yet;
    // the process forks and the parent closes its copy at once: the
    // child's copy keeps the connect going, as in the kernel.
    let hole = Blackhole::new();
    let (_py, mut lines) = shimmed_python_server_with(
        &format!(
            r#"
import os, select, socket, sys
s = socket.socket(); s.setblocking(False)
s.connect_ex(("127.0.0.1", {hole}))
if os.fork() != 0:
    s.close()
    os.wait()
    sys.exit(0)
print(0, flush=True)
_, w, _ = select.select([], [s], [], 20)
print("writable" if w else "timeout", flush=True)
s.settimeout(20)
print(s.recv(100).decode().strip() or "EOF", flush=True)
"#,
            hole = hole.port()
        ),
        &[],
    );
    let greeter = Greeter::open(hole);
    let mut next = || lines.next().expect("a line").unwrap();
    assert_eq!(next(), "writable", "the connect completed for the child");
    assert_eq!(next(), "banner", "and carries the destination's bytes");
    drop(greeter);
}

#[test]
fn a_pending_connect_goes_on_in_a_spawned_program_after_the_parent_closes_it() {
    // The same with `posix_spawn`, which runs no fork handlers: the
    // spawned program inherits the socket and is its last holder.
    let hole = Blackhole::new();
    let child = r#"
import select, socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
_, w, _ = select.select([], [s], [], 20)
print("writable" if w else "timeout", flush=True)
s.settimeout(20)
print(s.recv(100).decode().strip() or "EOF", flush=True)
"#;
    let (_py, mut lines) = shimmed_python_server_with(
        &format!(
            r#"
import os, socket, sys
s = socket.socket(); s.setblocking(False)
s.connect_ex(("127.0.0.1", {hole}))
s.set_inheritable(True)
print(0, flush=True)
pid = os.posix_spawn(sys.executable, [sys.executable, "-c", {child:?}, str(s.fileno())], os.environ)
s.close()
os.waitpid(pid, 0)
"#,
            hole = hole.port()
        ),
        &[],
    );
    let greeter = Greeter::open(hole);
    let mut next = || lines.next().expect("a line").unwrap();
    assert_eq!(
        next(),
        "writable",
        "the connect completed for the spawned program"
    );
    assert_eq!(next(), "banner", "and carries the destination's bytes");
    drop(greeter);
}

#[test]
fn a_pending_connect_closed_after_a_fork_and_exec_is_abandoned() {
    // The same, but the child execs at once: the socket (close-on-exec)
    // is gone from it, so the parent's close abandons the connect, which
    // the daemon then no longer lists.
    let hole = Blackhole::new();
    let (_py, mut lines) = shimmed_python_server_with(
        &format!(
            r#"
import os, socket, subprocess, time
s = socket.socket(); s.setblocking(False)
s.connect_ex(("127.0.0.1", {hole}))
# Both ends close on exec: the read below ends once the child has exec'd.
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    os.execvp("sleep", ["sleep", "3"])
os.close(w)
assert os.read(r, 1) == b""
s.close()
print(0, flush=True)
print("closed", flush=True)
time.sleep(20)
"#,
            hole = hole.port()
        ),
        &[],
    );
    assert_eq!(lines.next().unwrap().unwrap(), "closed");
    let peer = format!("127.0.0.1:{}", hole.port());
    let listed = || {
        let out = Command::new(tcpcrypt_bin())
            .args(["status", "--json"])
            .envs(shim_env())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&peer)
    };
    let start = std::time::Instant::now();
    while listed() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the connect to {peer} was not abandoned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn curl_connect_timeout_and_asyncio_work_under_the_shim() {
    // curl's own deadline holds for a destination that never answers: the
    // shim does not hold the thread in connect.
    let hole = Blackhole::new();
    let url = format!("http://127.0.0.1:{}/", hole.port());
    let started = std::time::Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--connect-timeout", "1", &url])
        .envs(shim_env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(28), "curl's timeout exit code");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // asyncio: non-blocking connect on an event loop, many at once.
    let (server, seen) = tcpcrypt_http(b"hello".to_vec());
    let lines = python_shimmed(&format!(
        r#"
import asyncio
async def get():
    r, w = await asyncio.open_connection("127.0.0.1", {port})
    w.write(b"GET / HTTP/1.0\r\n\r\n")
    data = await r.read()
    w.close()
    return data.endswith(b"hello")
async def main():
    results = await asyncio.gather(*[get() for _ in range(20)])
    print(all(results), len(results))
asyncio.run(main())
"#,
        port = server.port()
    ));
    assert_eq!(lines[0], "True 20");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|s| s.is_some()), "all encrypted");
}

#[test]
fn include_and_exclude_rules_choose_the_connections_handled() {
    let (server, seen) = tcpcrypt_http(b"page".to_vec());
    let port = server.port();
    let url = format!("http://127.0.0.1:{port}/");
    // (TCPCRYPT_INCLUDE, TCPCRYPT_EXCLUDE, encrypted?)
    let cases = [
        ("", "", true),
        ("", &format!(":{port}") as &str, false),
        ("127.0.0.0/8", "", true),
        ("10.0.0.0/8,:1", "", false),
        ("127.0.0.1", "127.0.0.1/32", false),
        ("bogus,127.0.0.1", "", true), // a bad rule is ignored, not fatal
    ];
    for (i, (include, exclude, encrypted)) in cases.iter().enumerate() {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", &url])
            .envs(shim_env())
            .env("TCPCRYPT_INCLUDE", include)
            .env("TCPCRYPT_EXCLUDE", exclude)
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"page", "case {i}");
        assert_eq!(
            seen.lock().unwrap()[i].is_some(),
            *encrypted,
            "case {i}: include {include:?}, exclude {exclude:?}"
        );
    }
}

#[test]
fn small_writes_are_not_held_back_by_the_relay() {
    // Two small writes, then an answer: with Nagle's algorithm on the
    // relay's sockets the second write waits for a delayed ACK (40 ms)
    // every time. Both ends shimmed, both set TCP_NODELAY as interactive
    // programs do.
    let server = shimmed_python_server(
        r#"
import socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
while True:
    d = c.recv(100)
    if not d: break
    buf += d
    while len(buf) >= 2:
        buf = buf[2:]; c.sendall(b"ok")
"#,
    );
    let lines = python_shimmed(&format!(
        r#"
import socket, time, ctypes
s = socket.create_connection(("127.0.0.1", {port}))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def exchange():
    s.sendall(b"a"); time.sleep(0.001); s.sendall(b"b")
    r = b""
    while len(r) < 2: r += s.recv(10)
exchange()
took = []
for _ in range(21):
    t = time.monotonic(); exchange(); took.append(time.monotonic() - t)
print(sorted(took)[10] * 1000)
print(ctypes.CDLL(None).tcpcrypt_is_encrypted(s.fileno()))
"#,
        port = server.1
    ));
    // The median: a stall would be on every exchange (40 ms or more), a
    // busy machine delays only some.
    let per_exchange_ms: f64 = lines[0].parse().unwrap();
    assert_eq!(lines[1], "1", "encrypted end to end");
    assert!(
        per_exchange_ms < 30.0,
        "{per_exchange_ms} ms for the median exchange: delayed-ACK stalls"
    );
}

#[test]
fn socket_options_reach_the_real_connection() {
    let (server, _seen) = tcpcrypt_http(b"page".to_vec());
    let lines = python_shimmed(&format!(
        r#"
import socket, subprocess, time
s = socket.socket()
s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x20)        # before connect
s.connect(("127.0.0.1", {port}))
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)     # after connect
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0)
# The real connection is the one whose peer is the server's port.
line = ""
for _ in range(100):
    line = subprocess.run(["ss", "-tnoOH", "--tos", "state", "established",
                           "dst", "127.0.0.1:{port}"], capture_output=True, text=True).stdout
    if "keepalive" in line: break
    time.sleep(0.02)
print(line.strip())
"#,
        port = server.port()
    ));
    assert_eq!(lines[0], "True", "the application reads what it set");
    let real = &lines[1];
    assert!(real.contains("timer:(keepalive,1min"), "keepalive: {real}");
    assert!(real.contains("tos:0x20"), "TOS: {real}");
}

#[test]
fn two_hundred_parallel_curl_transfers() {
    // One curl, 200 transfers at once on its event loop: 200 non-blocking
    // connects under way together, each body checked.
    let page = body(50_000);
    let (server, seen) = tcpcrypt_http(page.clone());
    let dir = std::env::temp_dir().join(format!("tcpcrypt-parallel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = [
        "-sS",
        "--max-time",
        "60",
        "--parallel",
        "--parallel-max",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..200 {
        args.push("-o".into());
        args.push(dir.join(format!("{i}.bin")).display().to_string());
        args.push(format!("http://127.0.0.1:{}/{i}", server.port()));
    }
    let out = Command::new("curl")
        .args(&args)
        .envs(shim_env())
        // 200 first contacts at once: a loaded machine may answer some
        // hellos late, which must not be taken for a plain server.
        .env("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "10000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..200 {
        let got = std::fs::read(dir.join(format!("{i}.bin"))).unwrap();
        assert!(got == page, "transfer {i} intact");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200);
    assert!(seen.iter().all(|s| s.is_some()), "all encrypted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connect_edge_cases_behave_as_in_the_kernel() {
    let (server, _seen) = tcpcrypt_http(b"page".to_vec());
    let closed = closed_port();
    let hole = Blackhole::new();
    let lines = python_shimmed(&format!(
        r#"
import errno, os, select, signal, socket, struct, time
# A refusal that arrives at once still reads as EINPROGRESS, then
# ECONNREFUSED from SO_ERROR, every time.
outcomes = set()
for _ in range(50):
    s = socket.socket(); s.setblocking(False)
    r = s.connect_ex(("127.0.0.1", {closed}))
    if r == errno.EINPROGRESS:
        select.select([], [s], [], 10)
        r = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    outcomes.add(errno.errorcode.get(r, r))
    s.close()
print(sorted(outcomes))
# The application's own TCP_NOTSENT_LOWAT survives a non-blocking connect.
s = socket.socket(); s.setblocking(False)
s.setsockopt(socket.IPPROTO_TCP, 25, 16384)
s.connect_ex(("127.0.0.1", {port}))
select.select([], [s], [], 10)
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), s.getsockopt(socket.IPPROTO_TCP, 25))
s.close()
# A small send buffer does not let a pending socket turn writable.
s = socket.socket(); s.setblocking(False)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
s.connect_ex(("127.0.0.1", {hole}))
_, w, _ = select.select([], [s], [], 0.5)
print("pending", w == [])
s.close()
# A signal whose handler raises ends a blocking connect at once.
def alarm(*_): raise TimeoutError("alarm")
signal.signal(signal.SIGALRM, alarm)
signal.setitimer(signal.ITIMER_REAL, 0.3)
t = time.monotonic()
try:
    socket.create_connection(("127.0.0.1", {hole})); print("connected?")
except TimeoutError as e:
    print(e, time.monotonic() - t < 5)
# A descriptor number reused behind the hooks' back (dup2 over it) is a
# new socket: no stale address, and connect works on it.
s = socket.create_connection(("127.0.0.1", {port}))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
os.dup2(u.fileno(), s.fileno())
try:
    s.getpeername(); print("stale")
except OSError as e:
    print(errno.errorcode[e.errno])
"#,
        port = server.port(),
        hole = hole.port(),
    ));
    assert_eq!(lines[0], "['ECONNREFUSED']");
    assert_eq!(lines[1], "0 16384");
    assert_eq!(lines[2], "pending True");
    assert_eq!(lines[3], "alarm True");
    assert_eq!(lines[4], "ENOTCONN");
}

#[test]
fn a_reset_crosses_the_relay_as_a_reset() {
    // A shimmed server resets a plain client's connection mid-response:
    // the client must see the reset, not a clean end after a truncated body.
    let server = shimmed_python_server(
        r#"
import socket, struct
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
c.recv(100)
c.sendall(b"partial")
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
"#,
    );
    let mut s = TcpStream::connect(("127.0.0.1", server.1)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let result = s.read_to_end(&mut got);
    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "read {got:?}"
    );
}
