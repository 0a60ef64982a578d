//! Criterion benchmarks of the protocol core, for each compiled backend:
//! sealing and opening frames of 1 KiB, 16 KiB and 64 KiB (the largest
//! frame, 65518 data bytes) against the raw AEAD, and the CPU cost of a
//! full handshake for each role.
//!
//! `cargo bench -p tcpcrypt-proto --all-features --bench core`
//!
//! At the end it measures, interleaved in the same run, how fast in-place
//! framing seals 16 KiB compared with the raw AEAD seal of the same bytes,
//! and prints the ratio (the framing layer must stay above 0.80).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tcpcrypt_proto::crypto::{self, CryptoBackend};
use tcpcrypt_proto::frame::{DATA_OFFSET, FrameOpener, FrameSealer, MAX_DATA};
use tcpcrypt_proto::schedule::{KeyDirection, SessionSecret};
use tcpcrypt_proto::{
    AeadAlgorithm, ClientHandshake, ClientOutcome, HandshakeConfig, OsRandom, ServerHandshake,
    ServerOutcome,
};

const SIZES: [(usize, &str); 3] = [(1024, "1KiB"), (16 * 1024, "16KiB"), (MAX_DATA, "64KiB")];

fn sealer(backend: &'static dyn CryptoBackend, aead: AeadAlgorithm) -> FrameSealer {
    let mk0 = SessionSecret::dangerous_from_bytes([3; 32]).master_key(backend, &[]);
    FrameSealer::dangerous_new(backend, mk0, KeyDirection::AToB, aead, 0)
}

fn opener(backend: &'static dyn CryptoBackend, aead: AeadAlgorithm) -> FrameOpener {
    let mk0 = SessionSecret::dangerous_from_bytes([3; 32]).master_key(backend, &[]);
    FrameOpener::dangerous_new(backend, mk0, KeyDirection::AToB, aead, 0)
}

/// Seals one frame in place into a reused buffer (the data is written
/// once, as a stream writer would).
fn seal_in_place(s: &mut FrameSealer, buf: &mut Vec<u8>, size: usize) {
    buf.clear();
    buf.resize(DATA_OFFSET + size, 0x61);
    s.seal_in_place(buf, 0, false).unwrap();
}

fn frames(c: &mut Criterion) {
    for backend in crypto::all_backends() {
        let aead = AeadAlgorithm::Aes128Gcm;
        for (size, label) in SIZES {
            let mut g = c.benchmark_group(format!("frame_{label}"));
            g.throughput(Throughput::Bytes(size as u64));
            let raw = SessionSecret::dangerous_from_bytes([3; 32])
                .master_key(backend, &[])
                .traffic_key(backend, KeyDirection::AToB, aead)
                .aead_key(backend);
            let mut data = vec![0x61u8; size];
            g.bench_function(BenchmarkId::new(backend.name(), "raw_aead_seal"), |b| {
                b.iter(|| black_box(raw.seal_in_place(&[0; 12], &[0; 3], &mut data)))
            });
            let mut s = sealer(backend, aead);
            let mut buf = Vec::with_capacity(size + 64);
            g.bench_function(BenchmarkId::new(backend.name(), "seal_in_place"), |b| {
                b.iter(|| seal_in_place(&mut s, &mut buf, size))
            });
            let mut s = sealer(backend, aead);
            g.bench_function(BenchmarkId::new(backend.name(), "seal_copy"), |b| {
                b.iter(|| {
                    buf.clear();
                    s.seal(&data, false, &mut buf).unwrap();
                })
            });
            // Open: a pool of pre-sealed frames. Opening decrypts in place,
            // so each pass works on a fresh copy of the pool; only the
            // opening is timed.
            let count = ((4 << 20) / size).max(8);
            let mut s = sealer(backend, aead);
            let mut pool = Vec::new();
            for _ in 0..count {
                s.seal(&data, false, &mut pool).unwrap();
            }
            let frame_len = pool.len() / count;
            g.bench_function(BenchmarkId::new(backend.name(), "open"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters as usize;
                    let mut work = pool.clone();
                    while left > 0 {
                        let n = left.min(count);
                        work.copy_from_slice(&pool);
                        let mut o = opener(backend, aead);
                        let start = Instant::now();
                        for i in 0..n {
                            let f = o
                                .open_in_place(&mut work[i * frame_len..(i + 1) * frame_len])
                                .unwrap()
                                .unwrap();
                            black_box(f);
                        }
                        total += start.elapsed();
                        left -= n;
                    }
                    total
                })
            });
            g.finish();
        }
    }
}

/// Records what each side receives in a real handshake, so that each role
/// can be timed alone: a fresh key pair each time, against fixed peer bytes
/// (any valid public key costs the same).
fn recorded(config: &Arc<HandshakeConfig>) -> (Vec<u8>, Vec<u8>) {
    let mut c = ClientHandshake::new(config.clone(), None, Box::new(OsRandom)).unwrap();
    let mut s = ServerHandshake::new(config.clone(), None, Box::new(OsRandom)).unwrap();
    let mut to_server = Vec::new();
    c.write_to(&mut to_server);
    s.read(&to_server).unwrap();
    let mut to_client = Vec::new();
    s.write_to(&mut to_client);
    (to_server, to_client)
}

fn handshakes(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    for backend in crypto::all_backends() {
        let config = Arc::new(HandshakeConfig {
            backend,
            ..HandshakeConfig::default()
        });
        let (to_server, to_client) = recorded(&config);
        g.bench_function(BenchmarkId::new(backend.name(), "client_A"), |b| {
            b.iter(|| {
                let mut hs =
                    ClientHandshake::new(config.clone(), None, Box::new(OsRandom)).unwrap();
                hs.write_to(&mut Vec::new());
                hs.read(&to_client).unwrap();
                assert!(matches!(hs.outcome(), Some(ClientOutcome::Encrypted(_))));
            })
        });
        g.bench_function(BenchmarkId::new(backend.name(), "server_B"), |b| {
            b.iter(|| {
                let mut hs =
                    ServerHandshake::new(config.clone(), None, Box::new(OsRandom)).unwrap();
                hs.read(&to_server).unwrap();
                assert!(matches!(hs.outcome(), Some(ServerOutcome::Encrypted(_))));
            })
        });
    }
    g.finish();
}

/// Bytes per second of `f` over a short window.
fn rate(bytes: usize, window: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    (n as f64 * bytes as f64) / start.elapsed().as_secs_f64()
}

/// In-place framing against the raw AEAD, interleaved so that both see the
/// same machine conditions; the best of several rounds for each.
fn framing_overhead() {
    println!("\nFraming overhead, 16 KiB, AES-128-GCM (interleaved rounds, best of each):");
    for backend in crypto::all_backends() {
        let size = 16 * 1024;
        let raw = SessionSecret::dangerous_from_bytes([3; 32])
            .master_key(backend, &[])
            .traffic_key(backend, KeyDirection::AToB, AeadAlgorithm::Aes128Gcm)
            .aead_key(backend);
        let mut data = vec![0x61u8; size];
        let mut s = sealer(backend, AeadAlgorithm::Aes128Gcm);
        let mut buf = Vec::with_capacity(size + 64);
        let (mut best_raw, mut best_framed) = (0f64, 0f64);
        for _ in 0..7 {
            best_raw = best_raw.max(rate(size, Duration::from_millis(150), || {
                black_box(raw.seal_in_place(&[0; 12], &[0; 3], &mut data));
            }));
            best_framed = best_framed.max(rate(size, Duration::from_millis(150), || {
                seal_in_place(&mut s, &mut buf, size)
            }));
        }
        println!(
            "  {:<11} raw AEAD {:>7.2} GB/s   framed {:>7.2} GB/s   ratio {:.3} (target >= 0.80)",
            backend.name(),
            best_raw / 1e9,
            best_framed / 1e9,
            best_framed / best_raw
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    frames(&mut c);
    handshakes(&mut c);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` only smoke-tests.
    if std::env::args().any(|a| a == "--bench") {
        framing_overhead();
    }
}
