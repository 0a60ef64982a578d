//! The peer of the interop suite (`interop/run`): a server and two
//! clients that check every byte, over tcpcrypt or plain TCP.
//!
//! The exchange, the same in both modes: the client sends how many bytes
//! it wants back (8 bytes, big-endian), then its payload, and half-closes;
//! the server checks the payload against the pattern, answers with the
//! bytes asked for and then how many payload bytes it received (8 bytes,
//! `u64::MAX` if they were not the pattern: junk reached the
//! application), and half-closes. The client checks both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod impair;
mod middlebox;

use clap::{Parser, Subcommand, ValueEnum};
use tcpcrypt_tokio::{Config, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "The interop suite's peer")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Tcpcrypt,
    Plain,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the exchange until killed.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, value_enum)]
        mode: Mode,
    },
    /// One checksummed transfer each way; prints a JSON report.
    Transfer {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum)]
        mode: Mode,
        /// Bytes each way.
        #[arg(long, default_value_t = 8 << 20)]
        bytes: u64,
    },
    /// Opens `count` tcpcrypt connections, each past its handshake, and
    /// holds them idle until standard input closes; prints a JSON line
    /// once all are open.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
    /// Holds `count` slowloris connections (a first byte of a hello, then
    /// nothing) while `honest` exchanges run one after another; prints the
    /// honest ones' median and worst time and how they ended.
    Slowloris {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 50)]
        honest: usize,
    },
    /// A middlebox: relays connections to `to`, misbehaving as told
    /// (one-byte, text-only-fin, text-only-rst, text-only-discard,
    /// strip-marker, flip:N, truncate:N, reset-after:N).
    Middlebox {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        behaviour: middlebox::Behaviour,
    },
    /// An NFQUEUE handler that impairs the path (reorder:N, duplicate:N,
    /// corrupt:N, delay:MS); runs until killed.
    Impair {
        #[arg(long, default_value_t = 0)]
        queue: u16,
        #[arg(long)]
        behaviour: impair::Behaviour,
    },
    /// Many short exchanges; prints a JSON report of how each ended.
    Handshakes {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

/// Longest any one exchange may take.
const LIMIT: Duration = Duration::from_secs(120);

/// The pattern: a xorshift stream from `seed`, so that every byte is
/// checked without holding the data.
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

const CLIENT_SEED: u64 = 1;
const SERVER_SEED: u64 = 2;

/// Writes `n` pattern bytes.
async fn send_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    mut n: u64,
) -> std::io::Result<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 << 10];
    while n > 0 {
        let k = (n as usize).min(buf.len());
        p.fill(&mut buf[..k]);
        w.write_all(&buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

/// Reads `limit` bytes (or to the end when `None`) and checks them against
/// the pattern: how many, and whether they all matched.
async fn check_pattern<R: AsyncRead + Unpin>(
    r: &mut R,
    seed: u64,
    limit: Option<u64>,
) -> std::io::Result<(u64, bool)> {
    let mut p = Pattern::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let (mut total, mut good) = (0u64, true);
    loop {
        let room = match limit {
            Some(l) if l == total => return Ok((total, good)),
            Some(l) => ((l - total) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = r.read(&mut buf[..room]).await?;
        if n == 0 {
            return Ok((total, good && limit.is_none()));
        }
        p.fill(&mut want[..n]);
        good &= buf[..n] == want[..n];
        total += n as u64;
    }
}

/// The server's half of one exchange.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<()> {
    let wanted = s.read_u64().await?;
    let (received, good) = check_pattern(s, CLIENT_SEED, None).await?;
    send_pattern(s, SERVER_SEED, wanted).await?;
    s.write_u64(if good { received } else { u64::MAX }).await?;
    s.shutdown().await
}

async fn serve(listen: SocketAddr, mode: Mode) -> std::io::Result<()> {
    match mode {
        Mode::Plain => {
            let l = TcpListener::bind(listen).await?;
            loop {
                let (mut s, _) = l.accept().await?;
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(LIMIT, serve_one(&mut s)).await;
                });
            }
        }
        Mode::Tcpcrypt => {
            let mut l = TcpcryptListener::bind(listen, &Arc::new(Config::default())).await?;
            loop {
                let (mut s, _) = l.accept().await?;
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(LIMIT, serve_one(&mut s)).await;
                });
            }
        }
    }
}

/// How one exchange ended, from the client.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every byte intact both ways, encrypted.
    Encrypted,
    /// Every byte intact both ways, in plain TCP (against a tcpcrypt
    /// server in tcpcrypt mode: a downgrade).
    Plain,
    /// The bytes that arrived were not the ones sent, on either side.
    Corrupt,
    /// An error (an honest outcome, counted), and what it said.
    Error(String),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Encrypted => "encrypted",
            Outcome::Plain => "plain",
            Outcome::Corrupt => "corrupt",
            Outcome::Error(_) => "error",
        }
    }
}

/// The client's half of one exchange; `Ok(encrypted)` when every byte
/// arrived intact both ways.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: u64,
) -> std::io::Result<bool> {
    s.write_u64(bytes).await?;
    send_pattern(s, CLIENT_SEED, bytes).await?;
    finish_exchange(s, bytes).await
}

/// A short exchange's whole request (the length, then the pattern), for
/// `connect_with_data`: a resumed connection carries it as 0-RTT data.
fn short_request(bytes: u64) -> Option<Vec<u8>> {
    let n = usize::try_from(bytes)
        .ok()
        .filter(|n| *n <= SHORT_REQUEST)?;
    let mut req = bytes.to_be_bytes().to_vec();
    let mut body = vec![0u8; n];
    Pattern::new(CLIENT_SEED).fill(&mut body);
    req.extend_from_slice(&body);
    Some(req)
}

/// Largest exchange whose request goes with `connect_with_data`.
const SHORT_REQUEST: usize = 16 * 1024;

/// Connections whose request went as 0-RTT data, for the reports.
static ZERO_RTT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The rest of the client's half once its request is sent.
async fn finish_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: u64,
) -> std::io::Result<bool> {
    s.shutdown().await?;
    let (got, good) = check_pattern(s, SERVER_SEED, Some(bytes)).await?;
    let trailer = s.read_u64().await?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    Ok(good && got == bytes && trailer == bytes && rest.is_empty())
}

/// One transfer's outcome, and how long its connection took to be ready
/// for data (TCP's handshake, and tcpcrypt's negotiation or fallback).
async fn client(
    to: SocketAddr,
    mode: Mode,
    bytes: u64,
    config: &Arc<Config>,
) -> (Outcome, Option<Duration>) {
    let started = Instant::now();
    let mut ready = None;
    let run = async {
        match mode {
            Mode::Plain => {
                let mut s = TcpStream::connect(to).await?;
                ready = Some(started.elapsed());
                Ok::<_, std::io::Error>((exchange(&mut s, bytes).await?, false))
            }
            Mode::Tcpcrypt => match short_request(bytes) {
                // A short request leaves with the connection: as 0-RTT
                // data when the connection resumes.
                Some(req) => {
                    let mut s = TcpcryptStream::connect_with_data(to, config, &req).await?;
                    ready = Some(started.elapsed());
                    if s.session().is_some_and(|i| i.zero_rtt) {
                        ZERO_RTT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let encrypted = s.is_encrypted();
                    Ok((finish_exchange(&mut s, bytes).await?, encrypted))
                }
                None => {
                    let mut s = TcpcryptStream::connect(to, config).await?;
                    ready = Some(started.elapsed());
                    let encrypted = s.is_encrypted();
                    Ok((exchange(&mut s, bytes).await?, encrypted))
                }
            },
        }
    };
    let outcome = match tokio::time::timeout(LIMIT, run).await {
        Ok(Ok((false, _))) => Outcome::Corrupt,
        Ok(Ok((true, true))) => Outcome::Encrypted,
        Ok(Ok((true, false))) => Outcome::Plain,
        Ok(Err(e)) => Outcome::Error(e.to_string()),
        Err(_) => Outcome::Error(format!("no outcome within {LIMIT:?}")),
    };
    (outcome, ready)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = Arc::new(Config::default());
    match args.command {
        Command::Serve { listen, mode } => {
            if let Err(e) = serve(listen, mode).await {
                eprintln!("tcpcrypt-interop: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        Command::Transfer { to, mode, bytes } => {
            let started = Instant::now();
            let (outcome, ready) = client(to, mode, bytes, &config).await;
            let error = match &outcome {
                Outcome::Error(e) => Some(e.clone()),
                _ => None,
            };
            let report = serde_json::json!({
                "outcome": outcome.name(),
                "error": error,
                "secs": started.elapsed().as_secs_f64(),
                "ready_secs": ready.map(|d| d.as_secs_f64()),
                "bytes": bytes,
            });
            println!("{report}");
        }
        Command::Middlebox {
            listen,
            to,
            behaviour,
        } => {
            if let Err(e) = middlebox::run(listen, to, behaviour).await {
                eprintln!("tcpcrypt-interop: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        Command::Impair { queue, behaviour } => {
            let ran = tokio::task::spawn_blocking(move || impair::run(queue, behaviour)).await;
            if let Ok(Err(e)) = ran {
                eprintln!("tcpcrypt-interop: impair: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        Command::Hold { to, count } => {
            let started = Instant::now();
            let mut held = Vec::with_capacity(count);
            let mut failed = 0;
            for _ in 0..count {
                match tokio::time::timeout(LIMIT, TcpcryptStream::connect(to, &config)).await {
                    Ok(Ok(s)) if s.is_encrypted() => held.push(s),
                    _ => failed += 1,
                }
            }
            let report = serde_json::json!({
                "held": held.len(), "failed": failed,
                "secs": started.elapsed().as_secs_f64(),
            });
            println!("{report}");
            // Until the caller has measured.
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
            drop(held);
        }
        Command::Slowloris { to, count, honest } => {
            let mut loris = Vec::with_capacity(count);
            for _ in 0..count {
                if let Ok(mut s) = TcpStream::connect(to).await {
                    // The first byte of a hello's marker, then silence.
                    let _ = s.write_all(&[0xE5]).await;
                    loris.push(s);
                }
            }
            let mut times = Vec::new();
            let mut outcomes = std::collections::BTreeMap::new();
            for _ in 0..honest {
                let started = Instant::now();
                let (o, _) = client(to, Mode::Tcpcrypt, 1000, &config).await;
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                *outcomes.entry(o.name()).or_insert(0) += 1;
            }
            times.sort_by(f64::total_cmp);
            let report = serde_json::json!({
                "slowloris": loris.len(),
                "honest_median_ms": times.get(times.len() / 2),
                "honest_worst_ms": times.last(),
                "outcomes": outcomes,
            });
            println!("{report}");
        }
        Command::Handshakes {
            to,
            count,
            concurrency,
        } => {
            let started = Instant::now();
            let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = Vec::new();
            for _ in 0..count {
                let permit = sem.clone().acquire_owned().await.expect("open");
                let config = config.clone();
                tasks.push(tokio::spawn(async move {
                    let (o, _) = client(to, Mode::Tcpcrypt, 1000, &config).await;
                    drop(permit);
                    o
                }));
            }
            let (mut enc, mut plain, mut corrupt, mut err) = (0, 0, 0, 0);
            // What the errors said, and how often: an error is an honest
            // outcome, but the report says which.
            let mut said = std::collections::BTreeMap::new();
            for t in tasks {
                match t.await.expect("no panic") {
                    Outcome::Encrypted => enc += 1,
                    Outcome::Plain => plain += 1,
                    Outcome::Corrupt => corrupt += 1,
                    Outcome::Error(e) => {
                        err += 1;
                        *said.entry(e).or_insert(0) += 1;
                    }
                }
            }
            let report = serde_json::json!({
                "encrypted": enc, "plain": plain, "corrupt": corrupt, "errors": err,
                "error_kinds": said,
                "zero_rtt": ZERO_RTT.load(std::sync::atomic::Ordering::Relaxed),
                "secs": started.elapsed().as_secs_f64(),
            });
            println!("{report}");
        }
    }
    std::process::ExitCode::SUCCESS
}
