//! `tcpcrypt check`: probes a destination and reports whether it speaks
//! tcpcrypt, without sending any application data.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;
use tcpcrypt_tokio::{Config, Connected, TcpcryptConnector};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::report::Report;

/// Arguments of `tcpcrypt check`.
#[derive(clap::Args)]
pub struct Args {
    /// The destination, HOST:PORT.
    #[arg(value_parser = crate::options::destination)]
    destination: String,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Give up connecting after this long.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    connect_timeout: Duration,
    /// How long a silent server may take to answer the hello before it is
    /// taken for a plain server.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s")]
    server_hello_timeout: Duration,
    /// The destination is a responder (`tcpcrypt listen
    /// --check-responder`): test the path to it with a plain HTTP request,
    /// non-HTTP bytes and a tcpcrypt connection, and report which of them
    /// the path breaks or alters (exit 1 if any).
    #[arg(long)]
    path: bool,
    /// With --path: when the path breaks tcpcrypt but lets plain TCP
    /// through, tell the running relay daemon, whose connections to this
    /// destination then skip the hello (for 10 minutes).
    #[arg(long, requires = "path")]
    remember: bool,
    /// How ENO travels: auto (in the SYN where `tcpcrypt kernel enable`
    /// attached its program to this process's cgroup, else the in-band
    /// hello), kernel (the SYN only), in-band. The report says which.
    #[arg(long, value_enum, default_value = "auto")]
    carriage: crate::options::CarriageArg,
}

/// The finding, as `--json` prints it.
#[derive(Serialize)]
struct Finding {
    /// What was asked for.
    destination: String,
    /// Whether a TCP connection was made.
    reachable: bool,
    /// The TCP connect time.
    connect_ms: Option<f64>,
    #[serde(flatten)]
    report: Option<Report>,
    /// Why the probe could not run (the destination was not reachable).
    error: Option<String>,
}

/// The probe's configuration: nothing of it outlives the probe (no
/// verdict, no ticket is kept).
fn probe_config(args: &Args) -> std::sync::Arc<Config> {
    let config = Config::builder()
        .server_hello_timeout(args.server_hello_timeout)
        .resumption(false)
        .carriage(args.carriage.into())
        .build()
        .expect("valid configuration");
    std::sync::Arc::new(config)
}

/// Negotiates on a fresh connection and closes it: the report. A socket
/// whose SYN offered ENO (`kernel`) goes on as the kernel negotiated.
async fn negotiate(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    config: std::sync::Arc<Config>,
    kernel: bool,
) -> io::Result<Report> {
    let connector = TcpcryptConnector::new(config);
    let started = Instant::now();
    let outcome = if kernel {
        connector.connect_tcp(tcp).await.map(Connected::Stream)
    } else {
        // No peer given: the in-band probe reconnects nowhere.
        connector.connect(tcp).await
    };
    let took = started.elapsed();
    Ok(match outcome {
        Ok(Connected::Stream(mut s)) => {
            let report = Report::of(&s, peer, took);
            // A clean close (FINp) so that the server sees no error.
            let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
            report
        }
        Ok(Connected::Reconnect(reason)) => Report::new(peer, None, Some(&reason), took),
        // This host cannot use the carriage asked for (its program is not
        // attached to this cgroup): nothing is known of the destination.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => return Err(e),
        Err(e) => {
            let mut report = Report::new(peer, None, None, took);
            report.reason = Some(format!("negotiation failed: {e}"));
            report
        }
    })
}

/// Connects to the first address of `destination` that answers, its SYN
/// offering ENO where the kernel carriage may be used: the connection,
/// and whether it offered.
async fn connect(destination: &str, config: &Config) -> io::Result<(TcpStream, bool)> {
    let mut last = None;
    for addr in tokio::net::lookup_host(destination).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // Not the destination's fault: said apart from an unreachable one.
        let offered = tcpcrypt_tokio::offer_in_syn(&socket, config)
            .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        match socket.connect(addr).await {
            Ok(tcp) => return Ok((tcp, offered)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// `tcpcrypt check`: exit 0 when the probe ran, whatever it found; 1 when
/// the destination could not be reached.
pub async fn check(args: Args) -> i32 {
    if args.path {
        return crate::pathcheck::check_path(&args.destination, args.json, args.remember).await;
    }
    let config = probe_config(&args);
    let started = Instant::now();
    let connected = tokio::time::timeout(args.connect_timeout, connect(&args.destination, &config))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ))
        })
        .and_then(|(tcp, offered)| Ok((tcp.peer_addr()?, tcp, offered)));
    let connect_time = started.elapsed();
    if let Err(e) = &connected
        && e.kind() == io::ErrorKind::Unsupported
    {
        eprintln!("tcpcrypt check: {e}");
        return 2;
    }
    let finding = match connected {
        Ok((peer, tcp, offered)) => Finding {
            destination: args.destination.clone(),
            reachable: true,
            connect_ms: Some((connect_time.as_secs_f64() * 1e6).round() / 1e3),
            report: match negotiate(tcp, peer, config, offered).await {
                Ok(report) => Some(report),
                Err(e) => {
                    eprintln!("tcpcrypt check: {e}");
                    return 2;
                }
            },
            error: None,
        },
        Err(e) => Finding {
            destination: args.destination.clone(),
            reachable: false,
            connect_ms: None,
            report: None,
            error: Some(e.to_string()),
        },
    };
    if args.json {
        let mut value = serde_json::to_value(&finding).expect("serializable");
        if finding.report.is_none() {
            // Keep the documented keys present for scripts.
            let obj = value.as_object_mut().expect("an object");
            obj.insert("encrypted".into(), false.into());
            for key in ["tep", "aead", "session_id", "handshake_ms"] {
                obj.insert(key.into(), serde_json::Value::Null);
            }
            obj.insert("reason".into(), finding.error.clone().into());
        }
        println!("{value}");
    } else {
        match &finding.report {
            Some(r) if r.encrypted => println!(
                "{} speaks tcpcrypt: {}, {} (handshake {:.1} ms)\nsession ID {}",
                args.destination,
                r.tep.as_deref().unwrap_or("?"),
                r.aead.as_deref().unwrap_or("?"),
                r.handshake_ms,
                r.session_id.as_deref().unwrap_or("?"),
            ),
            Some(r) => println!(
                "{}: not encrypted ({})",
                args.destination,
                r.reason.as_deref().unwrap_or("unknown")
            ),
            None => eprintln!(
                "tcpcrypt: {}: {}",
                args.destination,
                finding.error.as_deref().unwrap_or("unreachable")
            ),
        }
    }
    if finding.reachable { 0 } else { 1 }
}
