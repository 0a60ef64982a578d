//! `tcpcrypt connect` and `tcpcrypt listen`: netcat over tcpcrypt. Standard
//! input goes to the peer and the peer to standard output; the end of
//! standard input becomes a half-close (a FINp frame, then FIN), and the
//! command ends when both directions are done. The negotiation result goes
//! to standard error.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tcpcrypt_tokio::{Config, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::options::Negotiation;
use crate::report::Report;

/// Arguments of `tcpcrypt connect`.
#[derive(clap::Args)]
pub struct ConnectArgs {
    /// The destination, HOST:PORT (a name, an IPv4 address, or an IPv6
    /// address in brackets).
    #[arg(value_parser = crate::options::destination)]
    destination: String,
    #[command(flatten)]
    negotiation: Negotiation,
    /// Print the negotiation report as one JSON object on stderr.
    #[arg(long)]
    json: bool,
}

/// Arguments of `tcpcrypt listen`.
#[derive(clap::Args)]
pub struct ListenArgs {
    /// Where to listen: PORT (all IPv4 addresses) or ADDR:PORT (an IPv6
    /// address in brackets).
    /// Port 0 picks a free port, printed on stderr.
    address: String,
    /// Serve connections one after another instead of exiting after the
    /// first.
    #[arg(short, long)]
    keep_open: bool,
    /// Answer `tcpcrypt check --path`: echo every connection, plain or
    /// tcpcrypt, concurrently, until killed (standard input is not read).
    #[arg(long)]
    check_responder: bool,
    #[command(flatten)]
    negotiation: Negotiation,
    /// Print the listening address and each negotiation report as JSON
    /// objects on stderr, one per line.
    #[arg(long)]
    json: bool,
}

/// Standard input as a stream of chunks shared by successive connections:
/// what one connection did not send goes to the next.
struct Input {
    chunks: mpsc::Receiver<Vec<u8>>,
    ended: bool,
}

impl Input {
    fn stdin() -> Self {
        let (tx, chunks) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(buf).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Input {
            chunks,
            ended: false,
        }
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        let chunk = self.chunks.recv().await;
        self.ended = chunk.is_none();
        chunk
    }
}

/// Carries both directions until both are done.
async fn pump(stream: TcpcryptStream<TcpStream>, input: &mut Input) -> io::Result<()> {
    let (mut from_peer, mut to_peer) = stream.into_split();
    let send = async {
        while let Some(chunk) = input.next().await {
            to_peer.write_all(&chunk).await?;
            // Out now, not when more input comes: the peer may be waiting
            // for exactly this before it answers.
            to_peer.flush().await?;
        }
        to_peer.shutdown().await
    };
    let receive = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_peer.read(&mut buf).await?;
            if n == 0 {
                return stdout.flush().await;
            }
            stdout.write_all(&buf[..n]).await?;
            stdout.flush().await?;
        }
    };
    tokio::try_join!(send, receive).map(|_| ())
}

/// Connects and negotiates, with the library's fallback (a server that
/// does not speak tcpcrypt is connected to again in plain TCP, or refused
/// under `--mandatory`; a verdict is remembered per destination), and
/// reports the outcome and how long it took.
pub async fn connect_reported(
    destination: &str,
    config: &std::sync::Arc<Config>,
) -> io::Result<(TcpcryptStream<TcpStream>, Report)> {
    let started = Instant::now();
    let stream = TcpcryptStream::connect(destination, config).await?;
    let peer = stream.peer_addr().ok_or(io::ErrorKind::NotConnected)?;
    let report = Report::of(&stream, peer, started.elapsed());
    Ok((stream, report))
}

/// Exit status and message for a failed connection.
fn failed(what: &str, e: &io::Error) -> i32 {
    eprintln!("tcpcrypt: {what}: {e}");
    1
}

/// `tcpcrypt connect`.
pub async fn connect(args: ConnectArgs) -> i32 {
    let config = args.negotiation.config();
    let (stream, report) = match connect_reported(&args.destination, &config).await {
        Ok(c) => c,
        Err(e) => return failed(&args.destination, &e),
    };
    report.print_stderr(args.json);
    let mut input = Input::stdin();
    match pump(stream, &mut input).await {
        Ok(()) => 0,
        Err(e) => failed(&args.destination, &e),
    }
}

/// Parses PORT or ADDR:PORT (IPv6 in brackets).
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    text.parse()
        .map_err(|_| format!("{text}: expected PORT, ADDR:PORT or [ADDR6]:PORT"))
}

/// `tcpcrypt listen`.
pub async fn listen(args: ListenArgs) -> i32 {
    let addr = match listen_address(&args.address) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tcpcrypt: {e}");
            return 2;
        }
    };
    let config = args.negotiation.config();
    let listener = match tcpcrypt_tokio::bind_tcp(addr, &config).await {
        Ok(l) => l,
        Err(e) => return failed(&format!("listening on {addr}"), &e),
    };
    let local = listener.local_addr().expect("bound");
    if args.json {
        eprintln!("{}", serde_json::json!({ "listening": local.to_string() }));
    } else {
        eprintln!("tcpcrypt: listening on {local}");
    }
    if args.check_responder {
        return crate::pathcheck::respond(listener, &config).await;
    }
    // Handshakes run concurrently, each bounded by its deadline: a slow or
    // idle client delays nobody's handshake, even while one connection is
    // being served.
    let mut listener = match TcpcryptListener::from_listener(listener, &config) {
        Ok(l) => l,
        Err(e) => return failed("listening", &e),
    };
    let mut input = Input::stdin();
    loop {
        let stream = match listener.accept_attempt().await {
            Ok((_, Ok(s))) => s,
            Ok((peer, Err(e))) => {
                // Not served: a refused plain client or a failed handshake
                // does not end the listener.
                eprintln!("tcpcrypt: {peer}: {e}");
                continue;
            }
            Err(e) => return failed("accept", &e),
        };
        let peer = stream.peer_addr().expect("accepted over TCP");
        Report::of(&stream, peer, stream.handshake_duration()).print_stderr(args.json);
        if !args.keep_open {
            // One connection, as `nc -l`: the listening socket closes before
            // it is served, so that a client connecting again (a fallback
            // after its hello was taken for data) is refused, and knows it,
            // instead of writing into a backlog nobody will read.
            drop(listener);
            return match pump(stream, &mut input).await {
                Ok(()) => 0,
                Err(e) => failed(&peer.to_string(), &e),
            };
        }
        if let Err(e) = pump(stream, &mut input).await {
            failed(&peer.to_string(), &e);
        }
    }
}
