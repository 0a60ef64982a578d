//! `tcpcrypt bench`: bulk transfer and connection setup over tcpcrypt
//! against plain TCP, measured in the same run, on loopback (a server in
//! this process) or against `tcpcrypt bench --serve` on another machine.
//!
//! The benchmark protocol is tiny: the client sends one request, an
//! operation byte and a big-endian u64; the server answers `D`ownload with
//! that many bytes, `U`pload by reading that many bytes and answering one
//! byte, and `P`ing with one byte, then closes. A plain client speaks first,
//! so the server recognises it at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tcpcrypt_tokio::{Config, Policy, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Arguments of `tcpcrypt bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Measure against a `tcpcrypt bench --serve` server instead of one in
    /// this process.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "serve")]
    to: Option<String>,
    /// Be the server for another machine's `tcpcrypt bench --to`.
    #[arg(long, value_name = "ADDR:PORT")]
    serve: Option<SocketAddr>,
    /// Bytes per bulk transfer (suffixes K, M, G: powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    bytes: u64,
    /// Connections per connection-setup test.
    #[arg(long, value_name = "N", default_value_t = 500)]
    connections: u32,
    /// Rounds of each test, alternating plain and tcpcrypt; the best round
    /// of each counts.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Print the results as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also draw the ratios as a bar chart into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

/// Parses 1048576, 64K, 256M, 1G (powers of 1024; a trailing "iB" or "B"
/// is accepted).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text}: expected a size such as 256M"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n && *v > 0)
        .ok_or_else(|| format!("{text}: not a usable size"))
}

const DOWNLOAD: u8 = b'D';
const UPLOAD: u8 = b'U';
const PING: u8 = b'P';
/// Transfer buffer size on both ends.
const CHUNK: usize = 256 * 1024;

/// Serves one benchmark request.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut request = [0u8; 9];
    s.read_exact(&mut request).await?;
    let n = u64::from_be_bytes(request[1..].try_into().expect("8 bytes"));
    match request[0] {
        DOWNLOAD => {
            let buf = vec![0x5a; CHUNK];
            let mut left = n;
            while left > 0 {
                let k = left.min(CHUNK as u64) as usize;
                s.write_all(&buf[..k]).await?;
                left -= k as u64;
            }
        }
        UPLOAD => {
            let mut buf = vec![0; CHUNK];
            let mut left = n;
            while left > 0 {
                let k = s.read(&mut buf[..left.min(CHUNK as u64) as usize]).await?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                left -= k as u64;
            }
            s.write_all(b"k").await?;
        }
        PING => s.write_all(b"k").await?,
        _ => return Err(std::io::ErrorKind::InvalidData.into()),
    }
    s.shutdown().await
}

/// Accepts tcpcrypt and plain clients until the process ends.
async fn server(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let config = Config::builder()
        .max_pending_handshakes(256)
        .build()
        .expect("valid configuration");
    let mut listener = TcpcryptListener::bind(addr, &Arc::new(config)).await?;
    let local = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(e) = serve_one(s).await {
                    tracing::debug!(error = %e, "benchmark request failed");
                }
            });
        }
    });
    Ok(local)
}

/// How a benchmark client connects.
#[derive(Clone)]
enum Client {
    Plain,
    Tcpcrypt(Arc<Config>),
}

/// A connection of either kind.
enum Conn {
    Plain(TcpStream),
    Tcpcrypt(Box<TcpcryptStream<TcpStream>>),
}

impl Client {
    /// Connects and sends the request's header: over tcpcrypt with the
    /// hello as 0-RTT data when the connection resumes an earlier session.
    async fn connect(&self, to: &str, header: &[u8]) -> std::io::Result<Conn> {
        Ok(match self {
            Client::Plain => {
                let mut s = TcpStream::connect(to).await?;
                s.set_nodelay(true)?;
                s.write_all(header).await?;
                Conn::Plain(s)
            }
            Client::Tcpcrypt(config) => {
                let s = TcpcryptStream::connect_with_data(to, config, header).await?;
                s.get_ref().set_nodelay(true)?;
                Conn::Tcpcrypt(Box::new(s))
            }
        })
    }
}

/// A request's header: the operation and its byte count.
fn header(op: u8, n: u64) -> [u8; 9] {
    let mut req = [0u8; 9];
    req[0] = op;
    req[1..].copy_from_slice(&n.to_be_bytes());
    req
}

/// Runs the rest of one request on a connection whose header is sent:
/// bytes moved.
async fn request(conn: Conn, op: u8, n: u64) -> std::io::Result<u64> {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        op: u8,
        n: u64,
    ) -> std::io::Result<u64> {
        let mut moved = 0u64;
        if op == UPLOAD {
            let buf = vec![0xa5; CHUNK];
            while moved < n {
                let k = (n - moved).min(CHUNK as u64) as usize;
                s.write_all(&buf[..k]).await?;
                moved += k as u64;
            }
        }
        s.flush().await?;
        let mut buf = vec![0; CHUNK];
        let mut received = 0u64;
        loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            received += k as u64;
        }
        let expected = if op == DOWNLOAD { n } else { 1 };
        if received != expected {
            return Err(std::io::Error::other(format!(
                "the server sent {received} bytes, expected {expected}"
            )));
        }
        s.shutdown().await?;
        Ok(moved + if op == DOWNLOAD { received } else { 0 })
    }
    match conn {
        Conn::Plain(s) => run(s, op, n).await,
        Conn::Tcpcrypt(s) => run(*s, op, n).await,
    }
}

/// One measured value of one kind of client.
async fn measure(client: &Client, to: &str, test: Test, args: &Args) -> std::io::Result<f64> {
    match test {
        Test::Download | Test::Upload => {
            let op = if test == Test::Download {
                DOWNLOAD
            } else {
                UPLOAD
            };
            let conn = client.connect(to, &header(op, args.bytes)).await?;
            let started = Instant::now();
            let moved = request(conn, op, args.bytes).await?;
            Ok(moved as f64 / started.elapsed().as_secs_f64() / 1e6)
        }
        Test::Connections | Test::Resumed => {
            let started = Instant::now();
            for _ in 0..args.connections {
                let conn = client.connect(to, &header(PING, 0)).await?;
                request(conn, PING, 0).await?;
            }
            Ok(args.connections as f64 / started.elapsed().as_secs_f64())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Test {
    Download,
    Upload,
    Connections,
    Resumed,
}

impl Test {
    const ALL: [Test; 4] = [
        Test::Download,
        Test::Upload,
        Test::Connections,
        Test::Resumed,
    ];

    fn name(self) -> &'static str {
        match self {
            Test::Download => "download",
            Test::Upload => "upload",
            Test::Connections => "connections (full handshake)",
            Test::Resumed => "connections (resumed)",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Test::Download | Test::Upload => "MB/s",
            Test::Connections | Test::Resumed => "conn/s",
        }
    }
}

/// One row of the table.
#[derive(Serialize)]
struct Row {
    test: &'static str,
    unit: &'static str,
    plain: f64,
    tcpcrypt: f64,
    /// tcpcrypt / plain: above 1 is faster than plain TCP.
    ratio: f64,
}

#[derive(Serialize)]
struct Results {
    target: String,
    bytes: u64,
    connections: u32,
    rounds: u32,
    results: Vec<Row>,
}

/// `tcpcrypt bench`.
pub async fn bench(args: Args) -> i32 {
    if let Some(addr) = args.serve {
        return match server(addr).await {
            Ok(local) => {
                eprintln!("tcpcrypt: benchmark server on {local}; stop it with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
                0
            }
            Err(e) => {
                eprintln!("tcpcrypt: benchmark server on {addr}: {e}");
                1
            }
        };
    }
    let (to, target) = match &args.to {
        Some(to) => (to.clone(), to.clone()),
        None => match server(SocketAddr::from(([127, 0, 0, 1], 0))).await {
            Ok(local) => (local.to_string(), "loopback, server in this process".into()),
            Err(e) => {
                eprintln!("tcpcrypt: cannot start the benchmark server: {e}");
                return 1;
            }
        },
    };
    // The server must speak tcpcrypt: never measure a fallback.
    let full = Config::builder()
        .policy(Policy::Mandatory)
        .resumption(false)
        .build()
        .expect("valid configuration");
    let resuming = Config::builder()
        .policy(Policy::Mandatory)
        .build()
        .expect("valid configuration");
    let full = Client::Tcpcrypt(Arc::new(full));
    let resuming = Client::Tcpcrypt(Arc::new(resuming));
    // On stderr, drawn only when it is a terminal.
    let progress = indicatif::ProgressBar::new((Test::ALL.len() * 2 * args.rounds as usize) as u64)
        .with_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
                .expect("a valid template"),
        );
    let mut rows = Vec::new();
    for test in Test::ALL {
        let tcpcrypt = if test == Test::Resumed {
            &resuming
        } else {
            &full
        };
        let (mut best_plain, mut best_tcpcrypt) = (0f64, 0f64);
        for round in 1..=args.rounds {
            for (label, client, best) in [
                ("plain TCP", &Client::Plain, &mut best_plain),
                ("tcpcrypt", tcpcrypt, &mut best_tcpcrypt),
            ] {
                progress.set_message(format!(
                    "{}: {label}, round {round}/{}",
                    test.name(),
                    args.rounds
                ));
                let result = measure(client, &to, test, &args).await;
                progress.inc(1);
                match result {
                    Ok(v) => *best = best.max(v),
                    Err(e) => {
                        progress.finish_and_clear();
                        eprintln!("tcpcrypt: {} over {label} to {to}: {e}", test.name());
                        return 1;
                    }
                }
            }
        }
        rows.push(Row {
            test: test.name(),
            unit: test.unit(),
            plain: round2(best_plain),
            tcpcrypt: round2(best_tcpcrypt),
            ratio: round2(best_tcpcrypt / best_plain),
        });
    }
    progress.finish_and_clear();
    let results = Results {
        target,
        bytes: args.bytes,
        connections: args.connections,
        rounds: args.rounds,
        results: rows,
    };
    if args.json {
        println!("{}", serde_json::to_string(&results).expect("serializable"));
    } else {
        print_table(&results);
    }
    if let Some(path) = &args.plot {
        let bars: Vec<_> = results
            .results
            .iter()
            .map(|row| crate::plot::Bar {
                label: row.test,
                ratio: row.ratio,
            })
            .collect();
        let title = format!("tcpcrypt against plain TCP: {}", results.target);
        if let Err(e) = crate::plot::write_svg(path, &title, &bars) {
            eprintln!("tcpcrypt: cannot write the chart: {e}");
            return 1;
        }
    }
    0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn print_table(r: &Results) {
    println!(
        "tcpcrypt bench: {} ({} bytes per transfer, {} connections per setup test, best of {})",
        r.target, r.bytes, r.connections, r.rounds
    );
    println!(
        "{:<30} {:>7} {:>12} {:>12} {:>9}",
        "test", "unit", "plain TCP", "tcpcrypt", "ratio"
    );
    for row in &r.results {
        println!(
            "{:<30} {:>7} {:>12.1} {:>12.1} {:>8.2}x",
            row.test, row.unit, row.plain, row.tcpcrypt, row.ratio
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
