//! The shim against the library it is built on and against no encryption,
//! in one run: a large download with curl (shimmed, from a tcpcrypt
//! server) against the library's own client (from the same server) and
//! unpreloaded curl (from a plain server of the same code); request and
//! response over one and over eight connections, both ends shimmed,
//! against the same programs unshimmed; the latency of small requests
//! from one Python process; the time a shimmed program takes to start;
//! and the relay daemon's memory per idle connection.
//!
//! `cargo bench -p tcpcrypt-preload --bench shim` (`SHIM_MIB` sets the
//! download size, default 512). The download is repeated in seven rounds
//! that alternate the contenders; the figures are medians. The shimmed
//! programs use a daemon of the benchmark's own, stopped at the end.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use tcpcrypt_tokio::{Config, Policy, TcpcryptListener, TcpcryptStream};

#[path = "../tests/support/daemon_socket.rs"]
mod daemon_socket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// libtcpcrypt.so, with the `tcpcrypt` that runs its daemon beside it.
fn shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "tcpcrypt-preload", "--lib"])
        .args(["-p", "tcpcrypt-cli", "--bin", "tcpcrypt"])
        .args(if dir.ends_with("release") {
            &["--release"][..]
        } else {
            &[][..]
        })
        .status()
        .unwrap();
    assert!(status.success());
    dir.join("libtcpcrypt.so")
}

/// The daemon directory of this benchmark run.
fn daemon_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tcpcrypt-bench-{}", std::process::id()))
}

/// Preloads the shim into `cmd`, with the benchmark's own daemon.
fn preload(cmd: &mut Command, so: &PathBuf) {
    cmd.env("LD_PRELOAD", so)
        .env("TCPCRYPT_RUNTIME_DIR", daemon_dir())
        .env("TCPCRYPT_DAEMON_IDLE_EXIT", "30s")
        .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "5000");
}

/// An HTTP server answering every request with `len` bytes.
async fn server(policy: Policy, len: usize) -> std::net::SocketAddr {
    let config = Arc::new(Config::builder().policy(policy).build().unwrap());
    let mut l = TcpcryptListener::bind("127.0.0.1:0", &config)
        .await
        .unwrap();
    let addr = l.local_addr();
    tokio::spawn(async move {
        let body = Arc::new(vec![0x42u8; len]);
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let h = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(h.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A server that answers each request with two bytes and keeps the
/// connection open until the client closes it.
async fn holding_server(policy: Policy) -> std::net::SocketAddr {
    let config = Arc::new(Config::builder().policy(policy).build().unwrap());
    let mut l = TcpcryptListener::bind("127.0.0.1:0", &config)
        .await
        .unwrap();
    let addr = l.local_addr();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = s.write_all(b"ok").await;
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}

fn curl(shim: Option<&PathBuf>, url: &str) -> f64 {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", url]);
    if let Some(so) = shim {
        preload(&mut cmd, so);
    }
    let start = Instant::now();
    assert!(cmd.status().unwrap().success());
    start.elapsed().as_secs_f64()
}

fn python_latency(shim: Option<&PathBuf>, port: u16, n: usize) -> f64 {
    let script = format!(
        r#"
import socket, time
def once():
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while s.recv(65536): pass
    s.close()
once()
t = time.perf_counter()
for _ in range({n}): once()
print((time.perf_counter() - t) / {n})
"#
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    if let Some(so) = shim {
        preload(&mut cmd, so);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The relay daemon's resident memory added per idle connection: one
/// shimmed Python process holds `n` connections open (after one round trip
/// each) and the daemon's `VmRSS` is read before and after.
fn daemon_memory_per_connection(so: &PathBuf, port: u16, n: usize) -> f64 {
    let script = format!(
        r#"
import socket, sys, time
def conn():
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    s.recv(65536)
    return s
held = [conn() for _ in range(8)]  # the daemon's first buffers
time.sleep(0.3)
print("ready", flush=True)
sys.stdin.readline()
held += [conn() for _ in range({n})]
time.sleep(0.5)
print("held", flush=True)
sys.stdin.readline()
"#
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    preload(&mut cmd, so);
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let before = daemon_rss();
    std::io::Write::write_all(&mut input, b"\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "held");
    let after = daemon_rss();
    std::io::Write::write_all(&mut input, b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    (after - before) / n as f64
}

/// The resident memory of the benchmark's daemon, in bytes.
fn daemon_rss() -> f64 {
    let socket = daemon_socket::daemon_socket(&daemon_dir());
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let pid = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .unwrap()
        .pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024.0
}

/// Request and response of 64 bytes each over `conns` connections at once
/// (one Python process at each end, each multiplexing its connections):
/// exchanges per second, both ends shimmed or neither.
fn request_response(so: Option<&PathBuf>, conns: usize, seconds: f64) -> f64 {
    let server = r#"
import selectors, socket
sel = selectors.DefaultSelector()
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(64)
print(l.getsockname()[1], flush=True)
sel.register(l, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is l:
            c, _ = l.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(c, selectors.EVENT_READ)
            continue
        c = key.fileobj
        try:
            data = c.recv(64)
        except ConnectionResetError:
            data = b""
        if not data:
            sel.unregister(c)
            c.close()
            continue
        c.sendall(b"a" * len(data))
"#;
    let client = format!(
        r#"
import selectors, socket, sys, time
port, conns, seconds = int(sys.argv[1]), {conns}, {seconds}
sel = selectors.DefaultSelector()
socks = []
for _ in range(conns):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"q" * 64); assert len(s.recv(64)) == 64  # negotiated, warm
    socks.append(s)
    sel.register(s, selectors.EVENT_READ)
done = 0
got = {{s: 0 for s in socks}}
start = time.perf_counter()
for s in socks: s.sendall(b"q" * 64)
while time.perf_counter() - start < seconds:
    for key, _ in sel.select():
        s = key.fileobj
        got[s] += len(s.recv(64))
        if got[s] >= 64:
            got[s] -= 64
            done += 1
            s.sendall(b"q" * 64)
print(done / (time.perf_counter() - start))
"#
    );
    let mut srv = Command::new("python3");
    srv.args(["-c", server])
        .stdout(std::process::Stdio::piped());
    if let Some(so) = so {
        preload(&mut srv, so);
    }
    let mut srv = srv.spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(srv.stdout.take().unwrap()));
    let port = lines.next().unwrap().unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &client, &port]);
    if let Some(so) = so {
        preload(&mut cmd, so);
    }
    let out = cmd.output().unwrap();
    let _ = srv.kill();
    let _ = srv.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Seconds from exec to exit of `/bin/true`, averaged over `n` runs.
fn startup(so: Option<&PathBuf>, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let mut cmd = Command::new("/bin/true");
        if let Some(so) = so {
            preload(&mut cmd, so);
        }
        assert!(cmd.status().unwrap().success());
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mib: usize = if bench {
        std::env::var("SHIM_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512)
    } else {
        4
    };
    let so = shim();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (encrypted, plain, small_enc, small_plain, hold_enc, hold_plain) = rt.block_on(async {
        (
            server(Policy::Opportunistic, mib << 20).await,
            server(Policy::Off, mib << 20).await,
            server(Policy::Opportunistic, 100).await,
            server(Policy::Off, 100).await,
            holding_server(Policy::Opportunistic).await,
            holding_server(Policy::Off).await,
        )
    });
    let bytes = (mib << 20) as f64;
    // Rounds alternate the three contenders, so that a noisy neighbour
    // slows all of them alike; medians then discard the outliers.
    let rounds = if bench { 7 } else { 1 };
    let (mut shimmed, mut library, mut unencrypted) = (Vec::new(), Vec::new(), Vec::new());
    // One more round first, not counted: it warms the servers, the
    // loader and the page cache.
    for round in 0..=rounds {
        if round == 1 {
            shimmed.clear();
            library.clear();
            unencrypted.clear();
        }
        shimmed.push(bytes / curl(Some(&so), &format!("http://{encrypted}/")));
        library.push(rt.block_on(async {
            let start = Instant::now();
            let mut s = TcpcryptStream::connect(encrypted, &Arc::new(Config::default()))
                .await
                .unwrap();
            assert!(s.is_encrypted());
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0;
            loop {
                let k = s.read(&mut buf).await.unwrap();
                if k == 0 {
                    break;
                }
                n += k;
            }
            assert!(n as f64 >= bytes);
            bytes / start.elapsed().as_secs_f64()
        }));
        unencrypted.push(bytes / curl(None, &format!("http://{plain}/")));
    }
    let ratios: Vec<f64> = shimmed.iter().zip(&library).map(|(s, l)| s / l).collect();
    let n = if bench { 300 } else { 5 };
    let lat_shim = python_latency(Some(&so), small_enc.port(), n);
    let lat_plain = python_latency(None, small_plain.port(), n);
    // The same request from the library's client: the tcpcrypt handshake
    // without the shim, to tell the two costs apart.
    let lat_library = rt.block_on(async {
        let config = Arc::new(Config::default()); // resumes, as the shim does
        let start = Instant::now();
        for _ in 0..n {
            let mut s = TcpcryptStream::connect(small_enc, &config).await.unwrap();
            assert!(s.is_encrypted());
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).await.unwrap();
        }
        start.elapsed().as_secs_f64() / n as f64
    });
    let held = if bench { 500 } else { 20 };
    let mem_daemon = daemon_memory_per_connection(&so, hold_enc.port(), held);
    let _ = hold_plain;
    let seconds = if bench { 3.0 } else { 0.2 };
    // Alternating, medians of three (one each in a quick run).
    let mut rr = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..if bench { 3 } else { 1 } {
        rr[0].push(request_response(Some(&so), 1, seconds));
        rr[1].push(request_response(None, 1, seconds));
        rr[2].push(request_response(Some(&so), 8, seconds));
        rr[3].push(request_response(None, 8, seconds));
    }
    let (mut start_shim, mut start_plain) = (Vec::new(), Vec::new());
    let runs = if bench { 200 } else { 5 };
    for _ in 0..if bench { 5 } else { 1 } {
        start_shim.push(startup(Some(&so), runs));
        start_plain.push(startup(None, runs));
    }
    println!(
        "shim vs library vs no encryption, {mib} MiB download over loopback, {rounds} alternating rounds"
    );
    println!(
        "  median: shimmed curl {:>5.2} GB/s   library client {:>5.2} GB/s   plain curl {:>5.2} GB/s   shim/library {:.2}x (median of the rounds' ratios; target >= 0.75x)   shim/plain {:.2}x",
        median(&shimmed) / 1e9,
        median(&library) / 1e9,
        median(&unencrypted) / 1e9,
        median(&ratios),
        median(&shimmed) / median(&unencrypted)
    );
    println!(
        "  best:   shimmed curl {:>5.2} GB/s   library client {:>5.2} GB/s   plain curl {:>5.2} GB/s   rounds' shim/library ratios {}",
        best(&shimmed) / 1e9,
        best(&library) / 1e9,
        best(&unencrypted) / 1e9,
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  small request, connect to close: shimmed {:.0} us   unshimmed (plain server) {:.0} us   added {:.0} us   library client (tcpcrypt, no shim) {:.0} us",
        lat_shim * 1e6,
        lat_plain * 1e6,
        (lat_shim - lat_plain) * 1e6,
        lat_library * 1e6
    );
    println!(
        "  request/response, 64 bytes each way, both ends shimmed vs neither: 1 connection {:.0}/s vs {:.0}/s = {:.2}x   8 connections {:.0}/s vs {:.0}/s = {:.2}x (target >= 0.5x)",
        median(&rr[0]),
        median(&rr[1]),
        median(&rr[0]) / median(&rr[1]),
        median(&rr[2]),
        median(&rr[3]),
        median(&rr[2]) / median(&rr[3]),
    );
    println!(
        "  start of a program, exec to exit of /bin/true: shimmed {:.3} ms   unshimmed {:.3} ms   added {:.3} ms (target <= 0.2 ms)",
        median(&start_shim) * 1e3,
        median(&start_plain) * 1e3,
        (median(&start_shim) - median(&start_plain)) * 1e3
    );
    println!(
        "  relay daemon, resident memory per idle connection: {mem_daemon:.0} bytes (target <= 8192; plus the kernel buffers of one loopback socket pair); the program holds nothing extra"
    );
    let _ = Command::new(so.parent().unwrap().join("tcpcrypt"))
        .args(["daemon", "--stop"])
        .env("TCPCRYPT_RUNTIME_DIR", daemon_dir())
        .status();
    let _ = std::fs::remove_dir_all(daemon_dir());
}
