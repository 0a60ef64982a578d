//! Corners of the kernel's socket semantics that programs rely on, each
//! compared with the same program without the shim where the kernel has
//! an answer: non-TCP sockets untouched, IPv6-only sockets, `SO_ERROR`
//! after a failure was reported, TCP Fast Open under the mandatory policy,
//! IPv6 scope ids.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

mod common;
use common::*;

/// Runs a Python script with and without the shim; both outputs.
fn both_ways(script: &str, args: &[&str]) -> (String, String) {
    let run = |shimmed: bool| {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).args(args);
        if shimmed {
            cmd.envs(shim_env());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "shimmed {shimmed}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    (run(true), run(false))
}

#[test]
fn unix_socket_accept_is_untouched() {
    let script = r#"
import socket, os, threading, tempfile, shutil
d = tempfile.mkdtemp()
p = os.path.join(d, "s")
l = socket.socket(socket.AF_UNIX); l.bind(p); l.listen()
def client(bound):
    c = socket.socket(socket.AF_UNIX)
    if bound: c.bind(os.path.join(d, "c"))
    c.connect(p); c.sendall(b"x"); c.close()
for bound in (False, True):
    t = threading.Thread(target=client, args=(bound,)); t.start()
    c, addr = l.accept(); t.join()
    print(repr(addr).replace(d, "D"), c.recv(1), c.getsockname().replace(d, "D"))
shutil.rmtree(d)
"#;
    let (shimmed, plain) = both_ways(script, &[]);
    assert_eq!(shimmed, plain);
    assert_eq!(plain, "'' b'x' D/s\n'D/c' b'x' D/s\n");
}

#[test]
fn so_error_after_a_failure_reported_by_a_second_connect_is_zero() {
    let script = r#"
import socket, select, errno, sys
s = socket.socket()
s.setblocking(False)
r = s.connect_ex(("127.0.0.1", int(sys.argv[1])))
print("first", errno.errorcode.get(r, r))
select.select([], [s], [], 10)
r = s.connect_ex(("127.0.0.1", int(sys.argv[1])))
print("second", errno.errorcode.get(r, r))
print("so_error", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
"#;
    let port = closed_port().to_string();
    let (shimmed, plain) = both_ways(script, &[&port]);
    assert_eq!(shimmed, plain);
    assert_eq!(
        plain,
        "first EINPROGRESS\nsecond ECONNREFUSED\nso_error 0\n"
    );
}

#[test]
fn an_ipv6_only_socket_connects_encrypted() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = tcpcrypt_server("[::1]:0", move |mut s| {
        let _ = tx
            .lock()
            .unwrap()
            .send(s.session_id().map(|i| i.to_string()));
        async move {
            let _ = s.write_all(b"v6").await;
            let _ = s.shutdown().await;
        }
    });
    let lines = python_shimmed(&format!(
        r#"
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.connect(("::1", {port}))
print(s.getpeername()[0], s.getsockname()[0])
print(s.recv(2).decode())
print(s.getsockopt(socket.IPPROTO_TCP, 0x54430001, 33).hex())
"#,
        port = addr.port()
    ));
    let id = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(lines, ["::1 ::1", "v6", id.as_str()]);
}

#[test]
fn tcp_fast_open_sends_nothing_in_the_clear_under_the_mandatory_policy() {
    let (port, got) = recording_server();
    let script = format!(
        r#"
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
# sockaddr_in: the family in host order, the port in network order.
addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", {port}) + socket.inet_aton("127.0.0.1") + bytes(8)
def attempt(how):
    s = socket.socket()
    try:
        secret = b"secret-" + how.encode()
        if how == "sendto":
            s.sendto(secret, socket.MSG_FASTOPEN, ("127.0.0.1", {port}))
        elif how == "sendmsg":
            s.sendmsg([secret], [], socket.MSG_FASTOPEN, ("127.0.0.1", {port}))
        elif how == "sendmmsg":
            iov = iovec(secret, len(secret))
            m = mmsghdr(msghdr(addr, len(addr), ctypes.pointer(iov), 1, None, 0, 0), 0)
            if libc.sendmmsg(s.fileno(), ctypes.byref(m), 1, socket.MSG_FASTOPEN) != 1:
                raise OSError(ctypes.get_errno(), "sendmmsg")
        elif how == "__connect":
            if libc.__connect(s.fileno(), addr, len(addr)) != 0:
                raise OSError(ctypes.get_errno(), "__connect")
            s.sendall(secret)
        else:
            s.setsockopt(socket.IPPROTO_TCP, 30, 1)  # TCP_FASTOPEN_CONNECT
            s.connect(("127.0.0.1", {port}))
            s.sendall(b"secret-" + how.encode())
        s.settimeout(10)
        print(how, "read", s.recv(10))
    except OSError as e:
        print(how, "error")
for how in ("sendto", "sendmsg", "sendmmsg", "__connect", "connect"):
    attempt(how)
"#
    );
    let lines = python_shimmed_with(
        &script,
        &[
            ("TCPCRYPT_POLICY", "mandatory"),
            // A silent server, under the mandatory policy: waited for the
            // whole handshake (docs/PROTOCOL.md, "A silent server").
            ("TCPCRYPT_HANDSHAKE_TIMEOUT_MS", "500"),
        ],
    );
    assert_eq!(
        lines,
        [
            "sendto error",
            "sendmsg error",
            "sendmmsg error",
            "__connect error",
            "connect error"
        ]
    );
    std::thread::sleep(Duration::from_millis(200));
    let got = got.lock().unwrap();
    assert!(
        !got.windows(7).any(|w| w == b"secret-"),
        "plaintext reached the server: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.starts_with(b"\xE5ENO"), "only hellos arrived");
}

#[test]
fn tcp_fast_open_is_carried_encrypted() {
    let (server, seen) = tcpcrypt_http(b"fast".to_vec());
    let lines = python_shimmed(&format!(
        r#"
import socket
s = socket.socket()
s.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, ("127.0.0.1", {port}))
data = b""
while True:
    c = s.recv(100)
    if not c: break
    data += c
print(data.split(b"\r\n\r\n")[1].decode())
"#,
        port = server.port()
    ));
    assert_eq!(lines, ["fast"]);
    assert!(seen.lock().unwrap()[0].is_some(), "encrypted");
}

#[test]
fn accepted_ipv6_link_local_peers_keep_their_scope_id() {
    // A network namespace of the test's own, with a link-local address on
    // its loopback interface; a daemon of its own starts there.
    let script = r#"
import socket, sys, threading
l = socket.socket(socket.AF_INET6)
l.bind(("fe80::1", 0, 0, socket.if_nametoindex("lo")))
l.listen()
port = l.getsockname()[1]
def client():
    c = socket.socket(socket.AF_INET6)
    c.connect(("fe80::1", port, 0, socket.if_nametoindex("lo")))
    c.sendall(b"x"); c.close()
t = threading.Thread(target=client); t.start()
c, addr = l.accept()
c.recv(1); t.join()
sid = c.getsockopt(socket.IPPROTO_TCP, 0x54430001, 33)
print(addr[0], addr[3] == socket.if_nametoindex("lo"), c.getpeername()[3] == addr[3], len(sid))
"#;
    let shell = format!(
        "ip link set lo up && ip -6 addr add fe80::1/64 dev lo nodad && exec python3 -c '{}'",
        script.replace('\'', "'\\''")
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &shell])
        .envs(shim_env())
        .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "10000")
        .env("TCPCRYPT_DAEMON_IDLE_EXIT", "1s")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "fe80::1 True True 33\n", "scope kept, and encrypted");
}

/// An accepted socket inherits the listening socket's buffer sizes when
/// the program set them (a server tuning its connections' windows); the
/// socket the shim makes for it must too.
#[test]
fn accepted_sockets_inherit_the_listeners_buffer_sizes() {
    let script = r#"
import os, socket, subprocess, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 150000)
l.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 180000)
l.bind(("127.0.0.1", 0)); l.listen()
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
p = subprocess.Popen([sys.executable, "-c", "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1]))).recv(1)",
                      str(l.getsockname()[1])], env=env)
c, _ = l.accept()
sizes = lambda s: [s.getsockopt(socket.SOL_SOCKET, o) for o in (socket.SO_RCVBUF, socket.SO_SNDBUF)]
print(sizes(l) == sizes(c), sizes(c))
c.sendall(b"x"); p.wait()
"#;
    let (shimmed, plain) = both_ways(script, &[]);
    assert!(plain.starts_with("True "), "{plain}");
    assert_eq!(shimmed, plain);
}

/// Python for the descriptor tests: `leave_free(n)` opens descriptors
/// until none is left, closes `n` of them and returns the others.
const LEAVE_FREE: &str = r#"
import os, errno
def leave_free(free):
    held = []
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE, e
            break
    for fd in held[len(held) - free:]:
        os.close(fd)
    return held[:len(held) - free]
"#;

/// A process out of descriptors: `accept` fails with `EMFILE` and leaves
/// the connection queued, so that it is accepted once descriptors are
/// free again (what servers that back off and retry rely on). The shim
/// needs a few descriptors more than the connection's own for its
/// hand-over: it may say `EMFILE` sooner, but never accepts a connection
/// it then loses. Blocking and non-blocking listeners, with 0 to 6
/// descriptors free.
#[test]
fn accept_out_of_descriptors_leaves_the_connection_queued() {
    let script = r#"
import socket, os, sys, subprocess, errno, resource
client = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
print("connected", flush=True)
c.sendall(b"hello")
print(c.recv(2).decode(), flush=True)
"""
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
for blocking in (True, False):
    l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(8)
    l.setblocking(blocking)
    for free in range(7):
        p = subprocess.Popen([sys.executable, "-c", client, str(l.getsockname()[1])],
                             env=env, stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"connected\n"
        held = leave_free(free)
        try:
            c, _ = l.accept()
            first = "accepted"
        except OSError as e:
            first = errno.errorcode[e.errno]
            for fd in held:
                os.close(fd)
            held = []
            # Still queued: accepted at once (a lost one would time out).
            l.settimeout(20)
            c, _ = l.accept()
            l.setblocking(blocking)
        for fd in held:
            os.close(fd)
        c.settimeout(20)
        got = c.recv(5)
        c.sendall(b"ok")
        c.close()
        print(blocking, free, first, got.decode(), p.stdout.readline().decode().strip())
        p.wait()
    l.close()
"#;
    let (shimmed, plain) = both_ways(&[LEAVE_FREE, script].concat(), &[]);
    for out in [&shimmed, &plain] {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 14, "{out}");
        for line in &lines {
            // Every connection reached the application, whole, and its
            // answer the client.
            assert!(line.ends_with(" hello ok"), "{out}");
            let first = line.split(' ').nth(2).unwrap();
            assert!(first == "accepted" || first == "EMFILE", "{out}");
        }
        // Nothing free: EMFILE, as the kernel says.
        assert!(lines[0].starts_with("True 0 EMFILE"), "{out}");
        assert!(lines[7].starts_with("False 0 EMFILE"), "{out}");
    }
    // The shim's extra descriptors are few: with six free, it accepts.
    assert!(shimmed.contains("True 6 accepted"), "{shimmed}");
    assert!(shimmed.contains("False 6 accepted"), "{shimmed}");
}

/// A process out of descriptors: `connect` needs none beyond the
/// socket's own, so it connects as without the shim (`connect(2)` never
/// says `EMFILE`). The shim's hand-over needs a few more: short of them,
/// the connection goes plain under the opportunistic policy, never fails;
/// with enough free, it is encrypted. Blocking and non-blocking sockets,
/// with 0 to 6 descriptors free.
#[test]
fn connect_out_of_descriptors_still_connects() {
    let script = r#"
import socket, os, sys, subprocess, errno, resource, select
server = """
import socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(8)
print(l.getsockname()[1], flush=True)
while True:
    c, _ = l.accept()
    c.sendall(c.recv(5).upper()); c.close()
"""
p = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE)
port = int(p.stdout.readline())
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
for blocking in (True, False):
    for free in range(7):
        s = socket.socket()
        s.setblocking(blocking)
        held = leave_free(free)
        try:
            r = s.connect_ex(("127.0.0.1", port))
            if r == errno.EINPROGRESS:
                select.select([], [s], [], 20)
                r = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            outcome = "connected" if r == 0 else errno.errorcode[r]
        except OSError as e:
            outcome = errno.errorcode[e.errno]
        for fd in held:
            os.close(fd)
        got, carried = "-", "-"
        if outcome == "connected":
            s.setblocking(True)
            s.settimeout(20)
            s.sendall(b"hello")
            got = s.recv(5).decode()
            try:
                carried = "encrypted" if len(s.getsockopt(socket.IPPROTO_TCP, 0x54430001, 33)) == 33 else "?"
            except OSError:
                carried = "plain"
        s.close()
        print(blocking, free, outcome, got, carried, flush=True)
p.kill()
"#;
    let (shimmed, plain) = both_ways(&[LEAVE_FREE, script].concat(), &[]);
    for out in [&shimmed, &plain] {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 14, "{out}");
        for line in &lines {
            // Every connect succeeded and carried the bytes both ways.
            assert!(line.contains(" connected HELLO "), "{out}");
        }
    }
    // The shim's extra descriptors are few: with six free, it encrypts.
    assert!(
        shimmed.contains("True 6 connected HELLO encrypted"),
        "{shimmed}"
    );
    assert!(
        shimmed.contains("False 6 connected HELLO encrypted"),
        "{shimmed}"
    );
}
