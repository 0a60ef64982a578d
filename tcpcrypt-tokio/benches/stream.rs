//! `TcpcryptStream` against plain tokio TCP and tokio-rustls (TLS 1.3,
//! AES-128-GCM, X25519, an ECDSA P-256 certificate, aws-lc-rs) on
//! loopback, in one process and one run, printed as ratios: bulk
//! throughput and the CPU time it costs both ends per GiB, bulk throughput
//! through a proxy that decrypts in front of a plain server, full and
//! resumed handshakes per second, handshake capacity (many concurrent
//! clients: handshakes per CPU-second of both ends), 0-RTT resumed
//! requests (a request with the hello, the answer's first byte) against
//! plain TCP's, and user-space heap bytes per idle connection pair. As
//! root, where BPF allows, also the kernel carriage (ENO in the SYN) beside
//! the in-band one: full handshakes, and the first connection to a server
//! that does not speak tcpcrypt, against plain TCP.
//!
//! `cargo bench -p tcpcrypt-tokio --bench stream` (`BULK_MIB=256` for a
//! shorter run; the default moves 1 GiB per contender). With `-- --json`
//! the table goes to stderr and stdout gets one JSON object with every
//! figure and ratio.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tcpcrypt_tokio::{Carriage, Config, PlainSource, TcpcryptListener, TcpcryptStream};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
    copy_bidirectional_with_sizes as copy_with_sizes,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Counts live heap bytes, for the idle-connection measurement.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const CHUNK: usize = 64 * 1024;

/// With `--json`, the table goes to stderr and every figure into `REPORT`.
static JSON: AtomicBool = AtomicBool::new(false);
static REPORT: Mutex<Vec<(String, serde_json::Value)>> = Mutex::new(Vec::new());

/// Prints a line of the table for people.
fn say(text: String) {
    if JSON.load(Ordering::Relaxed) {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

/// Records figures for `--json`.
fn record(name: &str, value: serde_json::Value) {
    REPORT.lock().unwrap().push((name.to_string(), value));
}

/// CPU seconds this process has used, user and system, every thread: both
/// ends of every contender run in it. To the nanosecond
/// (`CLOCK_PROCESS_CPUTIME_ID`).
fn cpu_seconds() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
        .unwrap_or_else(|_| {
            let (user, system) = cpu_split();
            user + system
        })
}

/// User and system CPU seconds of this process, from `/proc/self/stat`
/// (clock ticks of 1/100 s on Linux): read over runs of a second or more.
fn cpu_split() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of the file (utime, stime), counted after `comm`.
    let tick = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    (tick(11), tick(12))
}
/// TCP segments this machine has sent (`OutSegs` of `/proc/net/snmp`):
/// both ends of a loopback connection count. `None` where there is no such
/// file.
fn tcp_segments_sent() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "OutSegs")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Sizes of a run: `cargo bench` passes `--bench`; `cargo test --benches`
/// does not, and gets a quick smoke run that checks every path works.
struct Sizes {
    bulk_mib: u64,
    rounds: usize,
    handshakes: usize,
    idle_pairs: usize,
    /// Handshakes per contender in the capacity run, and its clients.
    capacity: usize,
    clients: usize,
}

fn sizes() -> Sizes {
    if std::env::args().any(|a| a == "--bench") {
        Sizes {
            bulk_mib: std::env::var("BULK_MIB")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1024),
            rounds: 3,
            handshakes: 1000,
            idle_pairs: 200,
            capacity: 3000,
            clients: 32,
        }
    } else {
        Sizes {
            bulk_mib: 4,
            rounds: 1,
            handshakes: 5,
            idle_pairs: 5,
            capacity: 8,
            clients: 4,
        }
    }
}

struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    resuming: TlsConnector,
}

fn tls() -> Tls {
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = |resume: bool| {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        if !resume {
            c.resumption = rustls::client::Resumption::disabled();
        }
        TlsConnector::from(Arc::new(c))
    };
    Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: client(false),
        resuming: client(true),
    }
}

async fn sink<S: AsyncRead + Unpin>(mut s: S) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return n,
            Ok(k) => n += k as u64,
        }
    }
}

async fn pump<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: u64) -> io::Result<()> {
    let buf = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await?;
    // Read until the server closes: closing with unread bytes (TLS session
    // tickets) would reset the connection and lose data in flight.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    Ok(())
}

/// Bytes per second of a one-way transfer, and the CPU seconds per GiB it
/// cost both ends.
async fn bulk(kind: &str, bytes: u64, tls: &Tls) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cpu = cpu_seconds();
    let start = Instant::now();
    let received = match kind {
        "tcp" => {
            let server =
                tokio::spawn(async move { sink(listener.accept().await.unwrap().0).await });
            pump(TcpStream::connect(addr).await.unwrap(), bytes)
                .await
                .unwrap();
            server.await.unwrap()
        }
        "tls" => {
            let acceptor = tls.acceptor.clone();
            let server = tokio::spawn(async move {
                let s = acceptor
                    .accept(listener.accept().await.unwrap().0)
                    .await
                    .unwrap();
                sink(s).await
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let s = tls
                .connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            pump(s, bytes).await.unwrap();
            server.await.unwrap()
        }
        _ => {
            drop(listener);
            let config = Arc::new(Config::default());
            let mut l = TcpcryptListener::bind("127.0.0.1:0", &config)
                .await
                .unwrap();
            let addr = l.local_addr();
            let server = tokio::spawn(async move { sink(l.accept().await.unwrap().0).await });
            let s = TcpcryptStream::connect(addr, &config).await.unwrap();
            assert!(s.is_encrypted());
            pump(s, bytes).await.unwrap();
            server.await.unwrap()
        }
    };
    assert_eq!(received, bytes, "{kind}: bytes lost");
    let rate = bytes as f64 / start.elapsed().as_secs_f64();
    (
        rate,
        (cpu_seconds() - cpu) / (bytes as f64 / (1u64 << 30) as f64),
    )
}

/// Copy buffers of the plain and TLS proxies: large, so that they do not
/// lose to tcpcrypt's for want of room (tokio's default is 8 KiB).
const PROXY_BUF: usize = 256 * 1024;

/// Bytes per second of a one-way transfer from a client through a proxy
/// in this process, which ends the client's protocol (plain, TLS or
/// tcpcrypt) and forwards in plain TCP to a server that counts the bytes:
/// the deployment of `tcpcrypt proxy --mode server` in front of a plain
/// server, or a TLS terminator. tcpcrypt's proxy uses
/// `tcpcrypt_tokio::copy_bidirectional`, the others tokio's.
async fn proxied(kind: &str, bytes: u64, tls: &Tls) -> f64 {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let server = tokio::spawn(async move { sink(backend.accept().await.unwrap().0).await });
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let start = Instant::now();
    match kind {
        "tcp" | "tls" => {
            let acceptor = (kind == "tls").then(|| tls.acceptor.clone());
            let proxy = tokio::spawn(async move {
                let tcp = front.accept().await.unwrap().0;
                let mut out = TcpStream::connect(backend_addr).await.unwrap();
                let _ = match acceptor {
                    Some(a) => {
                        let mut s = a.accept(tcp).await.unwrap();
                        copy_with_sizes(&mut s, &mut out, PROXY_BUF, PROXY_BUF).await
                    }
                    None => copy_with_sizes(&mut { tcp }, &mut out, PROXY_BUF, PROXY_BUF).await,
                };
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            if kind == "tls" {
                let name = ServerName::try_from("localhost").unwrap();
                pump(tls.connector.connect(name, tcp).await.unwrap(), bytes)
                    .await
                    .unwrap();
            } else {
                pump(tcp, bytes).await.unwrap();
            }
            proxy.await.unwrap();
        }
        _ => {
            let config = Arc::new(Config::default());
            let mut l = TcpcryptListener::from_listener(front, &config).unwrap();
            let proxy = tokio::spawn(async move {
                let mut s = l.accept().await.unwrap().0;
                let out = TcpStream::connect(backend_addr).await.unwrap();
                let _ =
                    tcpcrypt_tokio::copy_bidirectional(&mut s, &mut PlainSource::new(out)).await;
            });
            let s = TcpcryptStream::connect(addr, &config).await.unwrap();
            assert!(s.is_encrypted());
            pump(s, bytes).await.unwrap();
            proxy.await.unwrap();
        }
    }
    let received = server.await.unwrap();
    assert_eq!(received, bytes, "{kind}: bytes lost through the proxy");
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// Handshakes per second, one connection at a time, each closed cleanly.
async fn handshakes(kind: &str, tls: &Tls, n: usize) -> f64 {
    match kind {
        "tcp" => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            });
            let start = Instant::now();
            for _ in 0..n {
                drop(TcpStream::connect(addr).await.unwrap());
            }
            n as f64 / start.elapsed().as_secs_f64()
        }
        "tls" | "tls-resumed" => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tls.acceptor.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(mut s) = acceptor.accept(s).await {
                            let _ = s.write_all(b"k").await;
                            let _ = s.shutdown().await;
                        }
                    });
                }
            });
            let connector = if kind == "tls" {
                &tls.connector
            } else {
                &tls.resuming
            };
            let start = Instant::now();
            for _ in 0..n {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut s = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap();
                // Read the server's byte: the handshake is complete both ways.
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
            }
            n as f64 / start.elapsed().as_secs_f64()
        }
        _ => {
            let resume = kind.ends_with("-resumed");
            let carriage = if kind.starts_with("tcpcrypt-kernel") {
                Carriage::Kernel
            } else {
                Carriage::InBand
            };
            let config = Arc::new(
                Config::builder()
                    .resumption(resume)
                    .carriage(carriage)
                    .build()
                    .unwrap(),
            );
            let mut l = TcpcryptListener::bind("127.0.0.1:0", &config)
                .await
                .unwrap();
            let addr = l.local_addr();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = s.write_all(b"k").await;
                        let _ = s.shutdown().await;
                    });
                }
            });
            // Warm the resumption cache.
            let mut s = TcpcryptStream::connect(addr, &config).await.unwrap();
            s.read_exact(&mut [0u8; 1]).await.unwrap();
            let start = Instant::now();
            for _ in 0..n {
                let mut s = TcpcryptStream::connect(addr, &config).await.unwrap();
                assert_eq!(s.session().unwrap().resumed, resume);
                s.read_exact(&mut [0u8; 1]).await.unwrap();
            }
            n as f64 / start.elapsed().as_secs_f64()
        }
    }
}

/// Handshakes per second of kinds `a` and `b`, measured in five rounds of
/// `n / 5` each, taken in turn.
async fn interleaved_handshakes(a: &str, b: &str, tls: &Tls, n: usize) -> (f64, f64) {
    let (rates, _) = handshake_rounds(&[a, b], tls, n).await;
    (rates[0], rates[1])
}

/// Handshakes per second of each of `kinds` over five rounds of `n / 5`
/// each, the kinds taken in turn in every round (a sequential loop's rate
/// moves by a factor of two with where the runtime happens to run its
/// tasks, and the machine drifts): each kind's overall rate, and its rate
/// in each round.
async fn handshake_rounds(kinds: &[&str], tls: &Tls, n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let m = (n / 5).max(1);
    let mut per_round = vec![Vec::new(); kinds.len()];
    for _ in 0..5 {
        for (i, kind) in kinds.iter().enumerate() {
            per_round[i].push(handshakes(kind, tls, m).await);
        }
    }
    let overall = per_round
        .iter()
        .map(|r| r.len() as f64 / r.iter().map(|rate| 1.0 / rate).sum::<f64>())
        .collect();
    (overall, per_round)
}

/// The lowest and highest of the rounds' ratios `a[i] / b[i]`.
fn round_ratios(a: &[f64], b: &[f64]) -> (f64, f64) {
    a.iter()
        .zip(b)
        .map(|(x, y)| x / y)
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

/// Connections per second to a server that does not speak tcpcrypt and
/// answers anything with an HTTP error, each client new to it (no
/// verdict remembered): plain TCP, the in-band hello (a second connection
/// after the server's answer), the kernel carriage (`Carriage::Kernel`:
/// the SYN-ACK says it at once), or `record-only`: a plain tokio socket
/// whose record gets an offer before `connect` and is read after it,
/// without the library. The last tells what the kernel's part costs.
async fn legacy_first_contact(kind: &str, n: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let request = b"GET / HTTP/1.0\r\n\r\n";
    let carriage = if kind == "tcpcrypt-kernel" {
        Carriage::Kernel
    } else {
        Carriage::InBand
    };
    let config = Arc::new(Config::builder().carriage(carriage).build().unwrap());
    let mut sockets = None;
    let start = Instant::now();
    for _ in 0..n {
        let mut answer = Vec::new();
        if kind == "tcp" {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request).await.unwrap();
            s.read_to_end(&mut answer).await.unwrap();
        } else if kind == "record-only" {
            let sockets = sockets.get_or_insert_with(|| {
                tcpcrypt_kernel::Sockets::open().expect("the kernel carriage is enabled")
            });
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            // A fresh offer's option: ENO, a global suboption, one TEP.
            sockets.offer(&socket, &[69, 4, 0x01, 0x21]).unwrap();
            let mut s = socket.connect(addr).await.unwrap();
            let outcome = sockets.outcome(&s);
            assert!(
                matches!(outcome, tcpcrypt_kernel::Outcome::PeerSentNone),
                "{outcome:?}"
            );
            s.write_all(request).await.unwrap();
            s.read_to_end(&mut answer).await.unwrap();
        } else {
            // Every contact is a first one: nothing remembered.
            config.client_cache().clear();
            let mut s = TcpcryptStream::connect(addr, &config).await.unwrap();
            assert!(!s.is_encrypted());
            s.write_all(request).await.unwrap();
            s.read_to_end(&mut answer).await.unwrap();
        }
        assert!(answer.starts_with(b"HTTP/1.0 400"));
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// This process in a cgroup of its own with the kernel carriage's program
/// attached, while it lives (root and BPF needed).
struct KernelCgroup {
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl KernelCgroup {
    fn enter() -> Result<Self, String> {
        use tcpcrypt_kernel::attach;
        let root = attach::default_cgroup().map_err(|e| e.to_string())?;
        let dir = root.join(format!("tcpcrypt-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cg = KernelCgroup { root, dir };
        attach::enable(Some(&cg.dir)).map_err(|e| e.to_string())?;
        std::fs::write(cg.dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| e.to_string())?;
        Ok(cg)
    }
}

impl Drop for KernelCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.root.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = tcpcrypt_kernel::attach::disable(Some(&self.dir));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Heap bytes per idle, established connection pair (both ends), after a
/// small exchange so that every buffer has been used once.
async fn idle_bytes(kind: &str, tls: &Tls, pairs: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let config = Arc::new(Config::default());
    let tcpcrypt = tcpcrypt_tokio::TcpcryptAcceptor::new(config.clone());
    let before = LIVE.load(Ordering::SeqCst);
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for _ in 0..pairs {
        let accept = listener.accept();
        let connect = TcpStream::connect(addr);
        let (a, c) = tokio::join!(accept, connect);
        let (a, c) = (a.unwrap().0, c.unwrap());
        match kind {
            "tcp" => {
                let (mut a, mut c) = (a, c);
                c.write_all(b"x").await.unwrap();
                a.read_exact(&mut [0u8; 1]).await.unwrap();
                keep.push(Box::new((a, c)));
            }
            "tls" => {
                let (a, c) = tokio::join!(
                    tls.acceptor.accept(a),
                    tls.connector
                        .connect(ServerName::try_from("localhost").unwrap(), c)
                );
                let (mut a, mut c) = (a.unwrap(), c.unwrap());
                c.write_all(b"x").await.unwrap();
                c.flush().await.unwrap();
                a.read_exact(&mut [0u8; 1]).await.unwrap();
                keep.push(Box::new((a, c)));
            }
            _ => {
                let connector = tcpcrypt_tokio::TcpcryptConnector::new(config.clone());
                let (a, c) = tokio::join!(tcpcrypt.accept(a), connector.connect(c));
                let (mut a, tcpcrypt_tokio::Connected::Stream(mut c)) = (a.unwrap(), c.unwrap())
                else {
                    panic!("not encrypted")
                };
                c.write_all(b"x").await.unwrap();
                c.flush().await.unwrap();
                a.read_exact(&mut [0u8; 1]).await.unwrap();
                keep.push(Box::new((a, c)));
            }
        }
    }
    // Idle means waiting for the peer: give each end one read that finds
    // nothing, as the task that owns an idle connection would.
    for pair in keep.iter_mut() {
        idle_read(kind, pair).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = LIVE.load(Ordering::SeqCst);
    drop(keep);
    (after - before) as f64 / pairs as f64
}

async fn idle_read(kind: &str, pair: &mut Box<dyn std::any::Any + Send>) {
    async fn poke<S: AsyncRead + Unpin>(s: &mut S) {
        let _ = tokio::time::timeout(Duration::from_millis(1), s.read(&mut [0u8; 1])).await;
    }
    match kind {
        "tcp" => {
            let (a, c) = pair.downcast_mut::<(TcpStream, TcpStream)>().unwrap();
            poke(a).await;
            poke(c).await;
        }
        "tls" => {
            let (a, c) = pair
                .downcast_mut::<(
                    tokio_rustls::server::TlsStream<TcpStream>,
                    tokio_rustls::client::TlsStream<TcpStream>,
                )>()
                .unwrap();
            poke(a).await;
            poke(c).await;
        }
        _ => {
            let (a, c) = pair
                .downcast_mut::<(TcpcryptStream<TcpStream>, TcpcryptStream<TcpStream>)>()
                .unwrap();
            poke(a).await;
            poke(c).await;
        }
    }
}

/// Handshake capacity: `clients` concurrent clients make `n` full
/// handshakes in all (each connection closed after the server's first
/// byte). Returns handshakes per CPU-second of the process (both ends),
/// per second of wall time, and the share of the CPU time spent in the
/// kernel.
async fn capacity(kind: &str, tls: &Tls, n: usize, clients: usize) -> (f64, f64, f64) {
    let (addr, server) = match kind {
        "tls" => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tls.acceptor.clone();
            let server = tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(mut s) = acceptor.accept(s).await {
                            let _ = s.write_all(b"k").await;
                            let _ = s.shutdown().await;
                        }
                    });
                }
            });
            (addr, server)
        }
        _ => {
            let config = Arc::new(Config::builder().resumption(false).build().unwrap());
            let mut l = TcpcryptListener::bind("127.0.0.1:0", &config)
                .await
                .unwrap();
            let addr = l.local_addr();
            let server = tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = s.write_all(b"k").await;
                        let _ = s.shutdown().await;
                    });
                }
            });
            (addr, server)
        }
    };
    let client_config = Arc::new(
        Config::builder()
            .resumption(false)
            .carriage(Carriage::InBand)
            .build()
            .unwrap(),
    );
    let connector = tls.connector.clone();
    let (user0, sys0) = cpu_split();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let count = n / clients + usize::from(i < n % clients);
        let kind = kind.to_string();
        let (config, connector) = (client_config.clone(), connector.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                let mut b = [0u8; 1];
                if kind == "tls" {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    let mut s = connector
                        .connect(ServerName::try_from("localhost").unwrap(), tcp)
                        .await
                        .unwrap();
                    s.read_exact(&mut b).await.unwrap();
                } else {
                    let mut s = TcpcryptStream::connect(addr, &config).await.unwrap();
                    assert!(s.is_encrypted() && !s.session().unwrap().resumed);
                    s.read_exact(&mut b).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let (user, sys) = cpu_split();
    let (user, sys) = (user - user0, sys - sys0);
    server.abort();
    (n as f64 / (user + sys), n as f64 / wall, sys / (user + sys))
}

/// Requests of one connection each, one at a time: the client connects,
/// sends `ping\n`, reads the answer's first byte (the time to it is kept)
/// and the rest. `tcp`: plain TCP; `tcpcrypt-0rtt`: a resumed connection
/// with the request as 0-RTT data
/// (`TcpcryptStream::connect_with_data`). Returns requests per second, the
/// median time to the first byte in microseconds, and per request the CPU
/// time of both ends in microseconds and the TCP segments sent (both ends;
/// `NaN` where the machine does not count them).
async fn requests(kind: &str, n: usize) -> (f64, f64, f64, f64) {
    let config = Arc::new(
        Config::builder()
            .carriage(Carriage::InBand)
            .build()
            .unwrap(),
    );
    let addr = if kind == "tcp" {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 5];
                    if s.read_exact(&mut req).await.is_ok() {
                        let _ = s.write_all(b"pong\n").await;
                    }
                });
            }
        });
        addr
    } else {
        let mut l = TcpcryptListener::bind("127.0.0.1:0", &config)
            .await
            .unwrap();
        let addr = l.local_addr();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 5];
                    if s.read_exact(&mut req).await.is_ok() {
                        let _ = s.write_all(b"pong\n").await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        // A first connection leaves the ticket the others resume with.
        let mut s = TcpcryptStream::connect_with_data(addr, &config, b"ping\n")
            .await
            .unwrap();
        s.read_to_end(&mut Vec::new()).await.unwrap();
        addr
    };
    let mut firsts = Vec::with_capacity(n);
    let (segments, cpu) = (tcp_segments_sent(), cpu_seconds());
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let mut answer = [0u8; 5];
        if kind == "tcp" {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ping\n").await.unwrap();
            s.read_exact(&mut answer[..1]).await.unwrap();
            firsts.push(t.elapsed());
            s.read_exact(&mut answer[1..]).await.unwrap();
        } else {
            let mut s = TcpcryptStream::connect_with_data(addr, &config, b"ping\n")
                .await
                .unwrap();
            s.read_exact(&mut answer[..1]).await.unwrap();
            firsts.push(t.elapsed());
            assert!(s.session().unwrap().zero_rtt, "0-RTT");
            s.read_exact(&mut answer[1..]).await.unwrap();
        }
        assert_eq!(&answer, b"pong\n");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu) * 1e6 / n as f64;
    let segments = match (segments, tcp_segments_sent()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / n as f64,
        _ => f64::NAN,
    };
    firsts.sort();
    (rate, firsts[n / 2].as_secs_f64() * 1e6, cpu, segments)
}

/// [`requests`] of plain TCP and of 0-RTT tcpcrypt in five rounds of
/// `n / 5` each, taken in turn (this machine drifts by more than the
/// difference between the two within a minute): for each, requests per
/// second over all rounds, the median of the rounds' median times to the
/// first byte, and CPU and segments per request over all rounds.
async fn interleaved_requests(n: usize) -> [(f64, f64, f64, f64); 2] {
    let m = (n / 5).max(1);
    let mut rounds: [Vec<(f64, f64, f64, f64)>; 2] = Default::default();
    for _ in 0..5 {
        for (i, kind) in ["tcp", "tcpcrypt-0rtt"].into_iter().enumerate() {
            rounds[i].push(requests(kind, m).await);
        }
    }
    rounds.map(|r| {
        let secs: f64 = r.iter().map(|x| 1.0 / x.0).sum();
        let mut firsts: Vec<f64> = r.iter().map(|x| x.1).collect();
        firsts.sort_by(f64::total_cmp);
        let mean = |f: fn(&(f64, f64, f64, f64)) -> f64| r.iter().map(f).sum::<f64>() / 5.0;
        (
            r.len() as f64 / secs,
            firsts[firsts.len() / 2],
            mean(|x| x.2),
            mean(|x| x.3),
        )
    })
}

fn line(name: &str, unit: &str, tc: f64, tcp: f64, tls: f64, target: &str) {
    say(format!(
        "{name:<22} tcpcrypt {tc:>10.1} {unit:<6} plain {tcp:>10.1}  tls {tls:>10.1}   vs plain {:>5.2}x   vs TLS {:>5.2}x   {target}",
        tc / tcp,
        tc / tls
    ));
    record(
        name,
        serde_json::json!({
            "unit": unit, "tcpcrypt": tc, "plain": tcp, "tls": tls,
            "vs_plain": tc / tcp, "vs_tls": tc / tls, "target": target,
        }),
    );
}

fn main() {
    JSON.store(std::env::args().any(|a| a == "--json"), Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sizes = sizes();
        let mib = sizes.bulk_mib;
        let tls = tls();
        say("tcpcrypt vs plain TCP vs TLS 1.3 (tokio-rustls, AES-128-GCM, X25519, ECDSA P-256), loopback, one run".into());
        // Interleave the contenders over three rounds and keep each best.
        let mut best = [0f64; 3];
        let mut cpu = [f64::MAX; 3];
        for _ in 0..sizes.rounds {
            for (i, k) in ["tcp", "tls", "tcpcrypt"].iter().enumerate() {
                let (rate, per_gib) = bulk(k, mib << 20, &tls).await;
                best[i] = best[i].max(rate);
                cpu[i] = cpu[i].min(per_gib);
            }
        }
        let gb = |x: f64| x / 1e9;
        line(&format!("bulk {mib} MiB"), "GB/s", gb(best[2]), gb(best[0]), gb(best[1]), "(targets >= 0.95x plain, >= 1.30x TLS)");
        line("bulk CPU, both ends", "s/GiB", cpu[2], cpu[0], cpu[1], "(target: vs TLS <= 1.00x)");
        let mut best = [0f64; 3];
        for _ in 0..sizes.rounds {
            for (i, k) in ["tcp", "tls", "tcpcrypt"].iter().enumerate() {
                best[i] = best[i].max(proxied(k, mib << 20, &tls).await);
            }
        }
        line(&format!("via proxy {mib} MiB"), "GB/s", gb(best[2]), gb(best[0]), gb(best[1]), "(client -> proxy ending its protocol -> plain server)");
        let n = sizes.handshakes;
        let kinds = ["tcp", "tls", "tls-resumed", "tcpcrypt", "tcpcrypt-resumed"];
        let (rates, rounds) = handshake_rounds(&kinds, &tls, n).await;
        let [tcp, tls_full, tls_resumed, full, resumed] = rates[..] else {
            unreachable!("one rate per kind")
        };
        line("full handshakes", "/s", full, tcp, tls_full, "(target >= 2.5x TLS)");
        line("resumed handshakes", "/s", resumed, tcp, tls_resumed, "(TLS column: resumed TLS)");
        let (full_lo, full_hi) = round_ratios(&rounds[3], &rounds[1]);
        let (resumed_lo, resumed_hi) = round_ratios(&rounds[4], &rounds[0]);
        say(format!(
            "                       rounds: full vs TLS {full_lo:.2}x to {full_hi:.2}x   resumed vs plain {resumed_lo:.2}x to {resumed_hi:.2}x   (five rounds, kinds in turn)"
        ));
        record("handshake rounds", serde_json::json!({
            "full_vs_tls_lowest": full_lo, "full_vs_tls_highest": full_hi,
            "resumed_vs_plain_lowest": resumed_lo, "resumed_vs_plain_highest": resumed_hi,
        }));
        // Both ends on one thread: no thread wakes another. Across the
        // runtime's threads, each message that the other end's task must
        // answer costs a wakeup of a parked thread, tens of microseconds
        // on these virtual machines; plain connect+accept has none (the
        // kernel completes the connect), a handshake has at least two.
        let one_thread = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { handshake_rounds(&kinds, &crate::tls(), n).await.0 })
        })
        .await
        .unwrap();
        let [tcp1, tls1, _, full1, resumed1] = one_thread[..] else {
            unreachable!("one rate per kind")
        };
        say(format!(
            "  one-thread runtime    full {full1:>8.1} /s   tls {tls1:>8.1} /s   vs TLS {:>5.2}x   resumed {resumed1:>8.1} /s   plain {tcp1:>8.1} /s   vs plain {:>5.2}x   (both ends on one thread)",
            full1 / tls1,
            resumed1 / tcp1
        ));
        record("handshakes on one thread", serde_json::json!({
            "full_per_s": full1, "tls_per_s": tls1, "full_vs_tls": full1 / tls1,
            "resumed_per_s": resumed1, "plain_per_s": tcp1, "resumed_vs_plain": resumed1 / tcp1,
        }));
        // Many clients at once: CPU-bound, so CPU per handshake decides.
        let (c, cl) = (sizes.capacity, sizes.clients);
        let (tls_cpu, tls_wall, tls_sys) = capacity("tls", &tls, c, cl).await;
        let (tc_cpu, tc_wall, tc_sys) = capacity("tcpcrypt", &tls, c, cl).await;
        say(format!(
            "handshake capacity     tcpcrypt {tc_cpu:>8.0} /CPU-s ({tc_wall:>6.0} /s, {:.0} us CPU each, {:.0} % in the kernel)   tls {tls_cpu:>8.0} /CPU-s ({tls_wall:>6.0} /s, {:.0} us, {:.0} %)   vs TLS {:>5.2}x   ({cl} clients; target >= 4x TLS)",
            1e6 / tc_cpu,
            100.0 * tc_sys,
            1e6 / tls_cpu,
            100.0 * tls_sys,
            tc_cpu / tls_cpu
        ));
        record("handshake capacity", serde_json::json!({
            "unit": "handshakes per CPU-second", "clients": cl,
            "tcpcrypt": tc_cpu, "tls": tls_cpu, "vs_tls": tc_cpu / tls_cpu,
            "tcpcrypt_per_s": tc_wall, "tls_per_s": tls_wall,
            "tcpcrypt_kernel_share": tc_sys, "tls_kernel_share": tls_sys,
            "target": "vs TLS >= 4x",
        }));
        // One request per connection, the request with the hello: twice as
        // many as handshakes above, for a CPU time long enough to read.
        let m = 2 * n.max(1);
        let [
            (plain_rate, plain_first, plain_cpu, plain_segs),
            (zero_rate, zero_first, zero_cpu, zero_segs),
        ] = interleaved_requests(m).await;
        say(format!(
            "0-RTT resumed requests tcpcrypt {zero_rate:>8.1} /s   plain {plain_rate:>8.1} /s   vs plain {:>5.2}x   vs plain connect+accept {:>5.2}x   first byte {zero_first:>6.1} us vs plain {plain_first:>6.1} us (+{:.1} us)   (targets >= 0.8x plain connect+accept, <= plain + 30 us)",
            zero_rate / plain_rate,
            zero_rate / tcp,
            zero_first - plain_first
        ));
        say(format!(
            "                       per request, both ends: CPU {zero_cpu:>6.1} us vs plain {plain_cpu:>6.1} us ({:.2}x)   TCP segments {zero_segs:.1} vs plain {plain_segs:.1}",
            zero_cpu / plain_cpu
        ));
        record("0-RTT resumed requests", serde_json::json!({
            "tcpcrypt_per_s": zero_rate, "plain_per_s": plain_rate, "vs_plain": zero_rate / plain_rate,
            "plain_connect_accept_per_s": tcp, "vs_plain_connect_accept": zero_rate / tcp,
            "tcpcrypt_first_byte_us": zero_first, "plain_first_byte_us": plain_first,
            "first_byte_extra_us": zero_first - plain_first,
            "tcpcrypt_cpu_us": zero_cpu, "plain_cpu_us": plain_cpu,
            "tcpcrypt_segments": zero_segs, "plain_segments": plain_segs,
            "target": "vs plain connect+accept >= 0.8x; first byte <= plain + 30 us",
        }));
        match KernelCgroup::enter() {
            Ok(cgroup) => {
                // Each carriage beside the in-band hello in rounds taken in
                // turn, in this cgroup: the in-band figures above were
                // measured minutes earlier, and this machine drifts by
                // more than the difference between the two.
                let (kernel, full) =
                    interleaved_handshakes("tcpcrypt-kernel", "tcpcrypt", &tls, n).await;
                say(format!(
                    "kernel carriage        full handshakes {kernel:>8.1} /s   in-band {full:>8.1} /s   plain {tcp:>8.1} /s   vs in-band {:>5.2}x   vs plain {:>5.2}x   (target >= 1.00x in-band)",
                    kernel / full,
                    kernel / tcp
                ));
                // Resumption in the SYN: no Init message, no hello.
                let (kernel_resumed, resumed) = interleaved_handshakes(
                    "tcpcrypt-kernel-resumed",
                    "tcpcrypt-resumed",
                    &tls,
                    n,
                )
                .await;
                say(format!(
                    "kernel carriage     resumed handshakes {kernel_resumed:>8.1} /s   in-band {resumed:>8.1} /s   plain {tcp:>8.1} /s   vs in-band {:>5.2}x   vs plain {:>5.2}x   (target >= 1.00x in-band)",
                    kernel_resumed / resumed,
                    kernel_resumed / tcp
                ));
                // Rounds of each kind in turn: the machine's state (its
                // sockets in TIME_WAIT, its clock speed) weighs on all alike.
                let m = n.min(300);
                let kinds = ["tcp", "tcpcrypt", "tcpcrypt-kernel", "record-only"];
                let mut secs = [0f64; 4];
                for _ in 0..5 {
                    for (i, kind) in kinds.iter().enumerate() {
                        secs[i] += m as f64 / legacy_first_contact(kind, m).await;
                    }
                }
                let first = secs.map(|s| 5.0 * m as f64 / s);
                say(format!(
                    "legacy first contact   kernel {:>8.1} /s   in-band {:>8.1} /s   plain {:>8.1} /s   kernel vs plain {:>5.2}x   in-band vs plain {:>5.2}x   (target: kernel costs <= 1.05x plain, i.e. >= 0.95x the rate)",
                    first[2],
                    first[1],
                    first[0],
                    first[2] / first[0],
                    first[1] / first[0]
                ));
                // What the library cannot remove: the kernel's part alone.
                say(format!(
                    "                       the record alone (offer and outcome around a plain tokio connect, no library) {:>8.1} /s   vs plain {:>5.2}x",
                    first[3],
                    first[3] / first[0]
                ));
                record("kernel carriage", serde_json::json!({
                    "record_only_first_contact_per_s": first[3],
                    "record_only_first_contact_vs_plain": first[3] / first[0],
                    "full_per_s": kernel, "in_band_full_per_s": full, "full_vs_in_band": kernel / full,
                    "resumed_per_s": kernel_resumed, "in_band_resumed_per_s": resumed, "resumed_vs_in_band": kernel_resumed / resumed,
                    "legacy_first_contact_per_s": first[2], "in_band_legacy_first_contact_per_s": first[1],
                    "plain_per_s": first[0], "legacy_first_contact_vs_plain": first[2] / first[0],
                }));
                drop(cgroup);
            }
            Err(why) => {
                say(format!("kernel carriage        not measured: {why}"));
                record("kernel carriage", serde_json::json!({ "not_measured": why }));
            }
        }
        let p = sizes.idle_pairs;
        // The runtime's threads keep up to two spare receive buffers each:
        // a fixed cost per thread, not per connection. Fill them first.
        idle_bytes("tcpcrypt", &tls, 4).await;
        let idle = [idle_bytes("tcp", &tls, p).await, idle_bytes("tls", &tls, p).await, idle_bytes("tcpcrypt", &tls, p).await];
        say(format!(
            "idle pair heap bytes   tcpcrypt {:>8.0}        plain {:>8.0}       tls {:>8.0}   (target <= 9216)",
            idle[2], idle[0], idle[1]
        ));
        record("idle pair heap bytes", serde_json::json!({
            "tcpcrypt": idle[2], "plain": idle[0], "tls": idle[1], "target": "<= 9216",
        }));
    });
    if JSON.load(Ordering::Relaxed) {
        let report: serde_json::Map<String, serde_json::Value> =
            REPORT.lock().unwrap().drain(..).collect();
        println!("{}", serde_json::Value::Object(report));
    }
}
