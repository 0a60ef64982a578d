//! The middlebox self-test: `tcpcrypt check --path HOST:PORT` against a
//! responder (`tcpcrypt listen --check-responder`) sends a plain HTTP
//! request, non-HTTP bytes and a tcpcrypt connection, each echoed by the
//! responder, and reports which of them the path between breaks or alters.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tcpcrypt_tokio::{Config, Policy, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes the responder echoes per connection.
const MAX_ECHO: u64 = 1 << 20;
/// How long one probe or one echo may take.
const LIMIT: Duration = Duration::from_secs(10);

/// The HTTP probe: a request any web filter lets through.
const HTTP_PROBE: &[u8] =
    b"GET /tcpcrypt-path-check HTTP/1.1\r\nHost: tcpcrypt-path-check\r\nUser-Agent: tcpcrypt\r\n\r\n";

/// The non-HTTP probe: every byte value, in a few kilobytes.
fn binary_probe() -> Vec<u8> {
    (0..4096u32).map(|i| (i * 7 % 256) as u8).collect()
}

/// Echoes what a connection sends, up to `MAX_ECHO` bytes, then half-closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<()> {
    let mut got = Vec::new();
    (&mut *s).take(MAX_ECHO).read_to_end(&mut got).await?;
    s.write_all(&got).await?;
    s.shutdown().await
}

/// `tcpcrypt listen --check-responder`: echoes every connection, plain or
/// tcpcrypt, concurrently, until killed.
pub async fn respond(listener: tokio::net::TcpListener, config: &Arc<Config>) -> i32 {
    let mut listener = match TcpcryptListener::from_listener(listener, config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcpcrypt: listening: {e}");
            return 1;
        }
    };
    loop {
        match listener.accept().await {
            Ok((mut s, _)) => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(LIMIT, echo(&mut s)).await;
                });
            }
            Err(e) => {
                eprintln!("tcpcrypt: accept: {e}");
                return 1;
            }
        }
    }
}

/// What the path did to one probe.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
enum Verdict {
    /// Echoed exactly (and, for tcpcrypt, encrypted).
    Intact,
    /// Echoed, but not the bytes sent.
    Altered(String),
    /// No echo: the connection was refused, reset, closed or timed out.
    Blocked(String),
    /// The tcpcrypt probe could not negotiate (the path ate or changed the
    /// hello); a plain fallback would have been needed.
    Downgraded(String),
}

/// Sends `probe`, half-closes, and reads the echo to its end.
async fn echo_of<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    probe: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(probe).await?;
    s.shutdown().await?;
    let mut echo = Vec::new();
    s.read_to_end(&mut echo).await?;
    Ok(echo)
}

/// Sends `probe` in plain TCP and compares the echo.
async fn plain_probe(dest: &str, probe: &[u8]) -> Verdict {
    let run = async { echo_of(&mut TcpStream::connect(dest).await?, probe).await };
    match tokio::time::timeout(LIMIT, run).await {
        Err(_) => Verdict::Blocked("timed out".into()),
        Ok(Err(e)) => Verdict::Blocked(e.to_string()),
        Ok(Ok(echo)) if echo == probe => Verdict::Intact,
        Ok(Ok(echo)) if echo.is_empty() => Verdict::Blocked("closed without an answer".into()),
        Ok(Ok(echo)) => Verdict::Altered(format!(
            "{} bytes came back for {} sent, the first difference at byte {}",
            echo.len(),
            probe.len(),
            echo.iter()
                .zip(probe)
                .position(|(a, b)| a != b)
                .unwrap_or(echo.len().min(probe.len()))
        )),
    }
}

/// A tcpcrypt connection under the mandatory policy, with the binary probe.
async fn tcpcrypt_probe(dest: &str) -> Verdict {
    let config = Arc::new(
        Config::builder()
            .policy(Policy::Mandatory)
            .resumption(false)
            .build()
            .expect("valid configuration"),
    );
    let probe = binary_probe();
    let run = async { echo_of(&mut TcpcryptStream::connect(dest, &config).await?, &probe).await };
    match tokio::time::timeout(LIMIT, run).await {
        Err(_) => Verdict::Blocked("timed out".into()),
        Ok(Err(e)) => match tcpcrypt_tokio::Error::from_io(&e) {
            Some(tcpcrypt_tokio::Error::EncryptionRequired(reason)) => {
                Verdict::Downgraded(reason.to_string())
            }
            _ => Verdict::Blocked(e.to_string()),
        },
        // Every byte was authenticated: intact, or it would be an error.
        Ok(Ok(echo)) if echo == probe => Verdict::Intact,
        Ok(Ok(echo)) => Verdict::Altered(format!("{} bytes came back", echo.len())),
    }
}

/// The findings, as `--json` prints them.
#[derive(Serialize)]
struct PathFindings {
    destination: String,
    http: Verdict,
    binary: Verdict,
    tcpcrypt: Verdict,
    /// With `--remember`: whether the relay daemon now skips the hello to
    /// this destination, or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    remembered: Option<Result<bool, String>>,
}

impl PathFindings {
    /// The path breaks tcpcrypt while plain TCP gets through.
    fn breaks_only_tcpcrypt(&self) -> bool {
        self.tcpcrypt != Verdict::Intact
            && (self.http == Verdict::Intact || self.binary == Verdict::Intact)
    }
}

/// Tells the running relay daemon to skip the hello to every address of
/// `destination`. `Ok(false)` when no daemon runs.
async fn remember_broken_path(destination: &str) -> Result<bool, String> {
    use crate::wire::{Reply, Request};
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(destination)
        .await
        .map_err(|e| format!("{destination}: {e}"))?
        .collect();
    let dir = match crate::wire::existing_runtime_dir() {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    for peer in addrs {
        match crate::daemon::ask(&dir, &Request::SkipHello { peer }) {
            Ok(Reply::Ok) => {}
            Ok(other) => return Err(format!("unexpected answer from the daemon: {other:?}")),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(format!("the daemon does not answer: {e}")),
        }
    }
    Ok(true)
}

/// `tcpcrypt check --path`: exit 0 when every probe came back intact.
pub async fn check_path(destination: &str, json: bool, remember: bool) -> i32 {
    let mut findings = PathFindings {
        destination: destination.to_string(),
        http: plain_probe(destination, HTTP_PROBE).await,
        binary: plain_probe(destination, &binary_probe()).await,
        tcpcrypt: tcpcrypt_probe(destination).await,
        remembered: None,
    };
    if remember {
        findings.remembered = Some(if findings.breaks_only_tcpcrypt() {
            remember_broken_path(destination).await
        } else {
            Ok(false)
        });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(&findings).expect("serializable")
        );
    } else {
        for (name, v) in [
            ("plain HTTP request", &findings.http),
            ("non-HTTP bytes", &findings.binary),
            ("tcpcrypt connection", &findings.tcpcrypt),
        ] {
            match v {
                Verdict::Intact => println!("{name}: intact"),
                Verdict::Altered(d) => println!("{name}: ALTERED ({d})"),
                Verdict::Blocked(d) => println!("{name}: BLOCKED ({d})"),
                Verdict::Downgraded(d) => println!("{name}: DOWNGRADED ({d})"),
            }
        }
        match &findings.remembered {
            None => {}
            Some(Ok(true)) => println!(
                "the relay daemon now connects to {destination} without a hello (for 10 minutes)"
            ),
            Some(Ok(false)) if findings.breaks_only_tcpcrypt() => {
                println!("no relay daemon is running: nothing remembered")
            }
            Some(Ok(false)) => {
                println!("the path does not break tcpcrypt alone: nothing remembered")
            }
            Some(Err(e)) => println!("could not tell the relay daemon: {e}"),
        }
    }
    let all = [&findings.http, &findings.binary, &findings.tcpcrypt];
    if all.iter().all(|v| **v == Verdict::Intact) {
        0
    } else {
        1
    }
}
