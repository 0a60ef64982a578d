//! The shim against the library it is built on and against no encryption,
//! in one run: a large download with curl (shimmed, from a tcpcrypt
//! server) against the library's own client (from the same server) and
//! unpreloaded curl (from a plain server of the same code); and the latency
//! of small requests from one Python process, shimmed and not.
//!
//! `cargo bench -p tcpcrypt-preload --bench shim` (`SHIM_MIB` sets the
//! download size, default 512). The download is repeated in seven rounds
//! that alternate the contenders; the figures are medians.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use tcpcrypt_tokio::{Config, Policy, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "tcpcrypt-preload", "--lib"])
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

/// An HTTP server answering every request with `len` bytes.
async fn server(policy: Policy, len: usize) -> std::net::SocketAddr {
    let config = Arc::new(Config::builder().policy(policy).build().unwrap());
    let mut l = TcpcryptListener::bind("127.0.0.1:0", config).await.unwrap();
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
    let mut l = TcpcryptListener::bind("127.0.0.1:0", config).await.unwrap();
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
        cmd.env("LD_PRELOAD", so);
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
        cmd.env("LD_PRELOAD", so);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Resident memory added per idle connection in one Python process that
/// holds `n` connections open (after one round trip each), shimmed or not.
fn memory_per_connection(shim: Option<&PathBuf>, port: u16, n: usize) -> f64 {
    let script = format!(
        r#"
import socket, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
def conn():
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    s.recv(65536)
    return s
held = [conn() for _ in range(8)]  # the runtime and first buffers
time.sleep(0.2)
before = rss()
held += [conn() for _ in range({n})]
time.sleep(0.5)
print((rss() - before) / {n})
"#
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    if let Some(so) = shim {
        cmd.env("LD_PRELOAD", so);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
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
    let mem_shim = memory_per_connection(Some(&so), hold_enc.port(), held);
    let mem_plain = memory_per_connection(None, hold_plain.port(), held);
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
        "  idle connection held open, resident memory of the process: shimmed {:.0} bytes   unshimmed {:.0} bytes   added {:.0} bytes (plus kernel buffers of one loopback socket pair)",
        mem_shim,
        mem_plain,
        mem_shim - mem_plain
    );
}
