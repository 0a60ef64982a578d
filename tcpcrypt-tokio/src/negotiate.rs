//! Drives the core's handshake state machines over an async byte stream,
//! with the deadlines of the [`Config`](crate::Config).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Duration, Instant, error::Elapsed, timeout, timeout_at};

use crate::Config;
use crate::error::{Error, FallbackReason};
use crate::first_write::HoldFn;
use crate::path::{self, PathInfo, PathProbe};
use crate::proto::{
    ClientHandshake, ClientOutcome, LegacyEvidence, OsRandom, ResumptionSecret, ServerHandshake,
    ServerOutcome, Session,
};

/// Enough for any handshake message, and for the first frames that may
/// arrive with it (kept as leftover for the data phase).
const READ_CHUNK: usize = 16 * 1024;

/// How long a read that its deadline ended is given once more. After the
/// process was stopped (`SIGSTOP`, a debugger) or starved, the runtime can
/// run the timers that expired meanwhile before it collects the socket
/// events of the same moment (an `epoll_wait` that a stop interrupted
/// returns none): an answer waiting in the socket would be taken for
/// silence.
const SECOND_LOOK: Duration = Duration::from_millis(2);

/// Reads into `buf` before `limit`, or says it elapsed: with one more look
/// at the socket after `limit` ([`SECOND_LOOK`]).
async fn read_before<IO: AsyncRead + Unpin>(
    io: &mut IO,
    limit: Instant,
    buf: &mut Vec<u8>,
) -> Result<io::Result<usize>, Elapsed> {
    match timeout_at(limit, io.read_buf(buf)).await {
        Err(_) => timeout(SECOND_LOOK, io.read_buf(buf)).await,
        read => read,
    }
}

/// How the client's negotiation ended.
pub(crate) enum ClientEnd {
    /// Encrypted; bytes received after the handshake, and how many of the
    /// early data the session carried as 0-RTT data.
    Encrypted(Box<Session>, Vec<u8>, usize),
    /// Plain on this same connection; bytes received after the server's
    /// hello are application data.
    PlainHere(FallbackReason, Vec<u8>),
    /// The connection is spoiled (the server saw our hello as data or may
    /// be encrypting): a plain connection must replace it.
    Reconnect(FallbackReason),
}

/// How the server's negotiation ended.
pub(crate) enum ServerEnd {
    /// Encrypted; bytes received after the handshake, and whether its last
    /// message waits in the kernel for the application's first bytes.
    Encrypted(Box<Session>, Vec<u8>, bool),
    /// Plain; every byte the client sent, to hand to the application.
    Plain(FallbackReason, Vec<u8>),
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Sends a handshake message within the handshake's `deadline`: a peer
/// that takes none of it (a full window it never opens, over a transport
/// whose buffer is smaller than the message) cannot hold the handshake
/// past its time.
async fn send<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<()> {
    if !out.is_empty() {
        let sent = timeout_at(deadline, async {
            io.write_all(out).await?;
            io.flush().await
        })
        .await;
        match sent {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer took no handshake message within the handshake's time",
                ));
            }
        }
        out.clear();
    }
    Ok(())
}

/// How the connecting side's handshake starts.
pub(crate) enum ClientStart {
    /// With the in-band hello, offering this resumption ticket.
    InBand(Option<ResumptionSecret>),
    /// After the kernel carried the ENO options: the handshake has B's
    /// SYN-ACK option, and Init1 is the first payload byte.
    Kernel(Box<ClientHandshake>),
}

/// How the accepting side's handshake starts.
pub(crate) enum ServerStart {
    /// With the in-band hello (or a plain client's first bytes).
    InBand,
    /// After the kernel carried the ENO options: A's SYN option and the
    /// SYN-ACK answer; A's Init1 is the first payload byte.
    Kernel { syn: Vec<u8>, synack: Vec<u8> },
}

/// A later end for the wait for the peer's first bytes, when the path
/// says the peer could not have answered yet (`rule`, from
/// [`path`]); never past the handshake's `deadline`.
fn wait_longer(
    probe: Option<&PathProbe>,
    deadline: Instant,
    rule: impl FnOnce(Instant, &PathInfo) -> Option<Instant>,
) -> Option<Instant> {
    let now = Instant::now();
    if now >= deadline {
        return None;
    }
    let info = probe?.read()?;
    let until = rule(now, &info)?.min(deadline);
    tracing::debug!(?info, wait = ?until - now, "the peer could not have answered yet");
    Some(until)
}

/// Runs the connecting side's handshake on `io`; `probe` reads the path's
/// figures when `io` is a TCP connection. `early` is the application's
/// first bytes: a resumed in-band handshake sends what it can of them as
/// 0-RTT data in its first flight, and [`ClientEnd::Encrypted`] says how
/// much was delivered that way; the caller sends the rest. `hello_wait`:
/// how long a silent server may take to answer the hello before it is
/// taken for a legacy one.
pub(crate) async fn client<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    config: &Config,
    start: ClientStart,
    probe: Option<PathProbe>,
    early: &[u8],
    hello_wait: Duration,
) -> io::Result<ClientEnd> {
    let deadline = Instant::now() + config.handshake_timeout;
    let mut first_deadline = deadline.min(Instant::now() + hello_wait);
    // Over the kernel carriage the server is known to speak tcpcrypt: only
    // the handshake's deadline applies.
    let kernel = matches!(start, ClientStart::Kernel(_));
    let mut received = 0;
    let (mut hs, mut heard) = match start {
        ClientStart::InBand(ticket) => (
            ClientHandshake::with_early_data(
                config.handshake.clone(),
                ticket,
                early,
                Box::new(OsRandom),
            )
            .map_err(Error::from)?,
            false,
        ),
        ClientStart::Kernel(hs) => (*hs, true),
    };
    if let Some(outcome) = hs.outcome() {
        // B declined in its SYN-ACK: plain on this connection, nothing of
        // ours sent.
        return Ok(client_end(outcome, Vec::new(), 0));
    }
    // 0-RTT data that a failed connection may have delivered is never sent
    // again on another one: that is an error instead.
    let early_sent = hs.early_data_len() > 0;
    let unconfirmed = |end: ClientEnd| match end {
        ClientEnd::Reconnect(reason) if early_sent => {
            Err(Error::EarlyDataUnconfirmed(reason).into())
        }
        end => Ok(end),
    };
    let mut out = Vec::new();
    hs.write_to(&mut out);
    if let Err(e) = send(io, &mut out, deadline).await {
        // A server that resets at once is legacy, not an error.
        return if is_reset(&e) {
            unconfirmed(ClientEnd::Reconnect(FallbackReason::ServerClosed))
        } else {
            Err(e)
        };
    }
    // Read into spare capacity: nothing to zero first.
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let limit = if heard { deadline } else { first_deadline };
        buf.clear();
        let n = match read_before(io, limit, &mut buf).await {
            // Both SYNs carried ENO and the server ended the connection
            // before any answer to Init1: a path that strips ENO from
            // later segments makes it disable ENO (RFC 8547 4.6) and
            // reset. Weak evidence, as in band: the caller decides.
            Ok(Ok(0)) if kernel && received == 0 => {
                return Ok(ClientEnd::Reconnect(FallbackReason::ServerClosed));
            }
            Ok(Err(e)) if kernel && received == 0 && is_reset(&e) => {
                return Ok(ClientEnd::Reconnect(FallbackReason::ServerClosed));
            }
            Err(_) if !heard => {
                // Silence counts from the hello's acknowledgement.
                let wait = hello_wait;
                if let Some(later) = wait_longer(probe.as_ref(), deadline, |now, info| {
                    path::client_wait(now, info, wait)
                }) {
                    first_deadline = later;
                    continue;
                }
                hs.peer_silent().map_err(Error::from)?;
                // Never acknowledged: the path, not the server, ate it.
                if probe
                    .as_ref()
                    .and_then(PathProbe::read)
                    .is_some_and(|i| i.unacked)
                {
                    return unconfirmed(ClientEnd::Reconnect(FallbackReason::HelloDropped));
                }
                0
            }
            Err(_) => return Err(Error::HandshakeTimeout.into()),
            Ok(Ok(0)) => {
                hs.peer_eof().map_err(Error::from)?;
                0
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) if is_reset(&e) && !heard => {
                hs.peer_eof().map_err(Error::from)?;
                0
            }
            Ok(Err(e)) => return Err(e),
        };
        heard |= n > 0;
        received += n;
        let used = hs.read(&buf[..n]).map_err(Error::from)?;
        hs.write_to(&mut out);
        send(io, &mut out, deadline).await?;
        if let Some(outcome) = hs.outcome() {
            let early = hs.early_data_len();
            return unconfirmed(client_end(outcome, buf[used..n].to_vec(), early));
        }
    }
}

fn client_end(outcome: ClientOutcome, rest: Vec<u8>, early: usize) -> ClientEnd {
    match outcome {
        ClientOutcome::Encrypted(s) => {
            let delivered = if s.info.zero_rtt { early } else { 0 };
            ClientEnd::Encrypted(s, rest, delivered)
        }
        ClientOutcome::Declined(r) => ClientEnd::PlainHere(FallbackReason::Declined(r), rest),
        ClientOutcome::Disabled(r) => ClientEnd::Reconnect(FallbackReason::Disabled(r)),
        ClientOutcome::Legacy(LegacyEvidence::Bytes(_)) => {
            ClientEnd::Reconnect(FallbackReason::ServerSentOtherBytes)
        }
        ClientOutcome::Legacy(LegacyEvidence::Eof) => {
            ClientEnd::Reconnect(FallbackReason::ServerClosed)
        }
        ClientOutcome::Legacy(LegacyEvidence::Silence) => {
            ClientEnd::Reconnect(FallbackReason::ServerSilent)
        }
        ClientOutcome::HelloLate => ClientEnd::Reconnect(FallbackReason::HelloLate),
    }
}

/// How long a legacy server is given to end the connection the hello
/// went on, once the connecting side has ended its half: a one-shot
/// server that finishes its only connection (echoing the hello, answering
/// it with an error, or reading it to its end) and then exits.
const LEGACY_SERVER_END_WAIT: Duration = Duration::from_secs(2);

/// At most this much of what a legacy server sends at the end is read
/// (and discarded) while waiting for that end.
const LEGACY_SERVER_END_BYTES: usize = 64 * 1024;

/// Lets go of the connection a legacy server answered the hello on
/// (silence, other bytes or its end), before the plain reconnect: ends
/// our half, then waits (bounded in time and bytes) for the server to end
/// its own. A one-shot server (`nc -l`, the echo server of Python's
/// documentation) that took the hello for its only connection then
/// finishes and stops listening, so that the reconnect is refused and the
/// application learns that its bytes cannot go; made at once, the
/// reconnect would land in the listener's queue, never accepted, and the
/// application's bytes with it (docs/PROTOCOL.md, "A silent server").
pub(crate) async fn let_go_of_legacy<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    if io.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut read = 0;
    let _ = timeout(LEGACY_SERVER_END_WAIT, async {
        while read < LEGACY_SERVER_END_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// How long the plain reconnect to a legacy server must stay up before
/// it is handed over.
const LEGACY_RECONNECT_GRACE: Duration = Duration::from_millis(100);

/// The plain reconnect to a legacy server, before it is handed over: an
/// error when it is reset within a short grace, bytes first excepted. A
/// one-shot server whose only connection took the hello ends (and stops
/// listening) after [`let_go_of_legacy`]; a reconnect that still made it
/// into its listener's queue is reset when it ends, never accepted: the
/// application must learn that, not write its bytes into it. A server
/// that sends and then resets sends before its reset: the peek finds its
/// bytes, and the application reads them, then the reset, as without us.
pub(crate) async fn still_up(tcp: &tokio::net::TcpStream) -> io::Result<()> {
    match timeout(LEGACY_RECONNECT_GRACE, tcp.peek(&mut [0u8; 1])).await {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Runs the accepting side's handshake on `io`; `probe` reads the path's
/// figures when `io` is a TCP connection; `hold` queues the last message of
/// an encrypted handshake without sending it (`first_write.rs`).
pub(crate) async fn server<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    config: &Config,
    start: ServerStart,
    probe: Option<PathProbe>,
    hold: Option<HoldFn<IO>>,
) -> io::Result<ServerEnd> {
    let accepted = Instant::now();
    let deadline = accepted + config.handshake_timeout;
    let mut first_deadline = deadline.min(accepted + config.client_hello_wait);
    let cache = Some(config.server_cache.clone());
    // Over the kernel carriage A must send Init1: no wait for a plain
    // client, only the handshake's deadline.
    let (mut hs, mut heard) = match start {
        ServerStart::InBand => (
            ServerHandshake::new(config.handshake.clone(), cache, Box::new(OsRandom))
                .map_err(Error::from)?,
            false,
        ),
        ServerStart::Kernel { syn, synack } => (
            ServerHandshake::kernel(
                config.handshake.clone(),
                cache,
                &syn,
                &synack,
                Box::new(OsRandom),
            )
            .map_err(Error::from)?,
            true,
        ),
    };
    // A resumption the kernel answered in the SYN-ACK: keyed already, and
    // A may wait for this side to speak first.
    if let Some(outcome) = hs.outcome() {
        return Ok(server_end(outcome, &[], false, false));
    }
    let mut out = Vec::new();
    // Only a handshake's only message is held: after an earlier one (our
    // hello, when A's Init1 came in a later read), the first write would
    // wait behind Nagle's algorithm for that one's acknowledgement.
    let mut sent_before = false;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let limit = if heard { deadline } else { first_deadline };
        buf.clear();
        let (n, silent) = match read_before(io, limit, &mut buf).await {
            Err(_) if !heard => {
                // A client's hello lost once comes back a retransmission
                // timeout later.
                let wait = config.client_hello_wait;
                if let Some(later) = wait_longer(probe.as_ref(), deadline, |now, info| {
                    path::server_wait(accepted, now, info, wait)
                }) {
                    first_deadline = later;
                    continue;
                }
                hs.peer_silent().map_err(Error::from)?;
                (0, true)
            }
            // Bytes that began a hello and then stopped: a slow or stalled
            // handshake (slowloris), dropped at the deadline.
            Err(_) => return Err(Error::HandshakeTimeout.into()),
            Ok(Ok(0)) => {
                hs.peer_eof().map_err(Error::from)?;
                (0, false)
            }
            Ok(Ok(n)) => (n, false),
            Ok(Err(e)) => return Err(e),
        };
        heard |= n > 0;
        let used = hs.read(&buf[..n]);
        // Our hello goes out even when A's Init1 is then refused, so that A
        // sees a tcpcrypt peer abort rather than a legacy server.
        hs.write_to(&mut out);
        let outcome = hs.outcome();
        let held = match hold {
            Some(hold)
                if !sent_before
                    && !out.is_empty()
                    && matches!(outcome, Some(ServerOutcome::Encrypted(_))) =>
            {
                // A partial hold is pushed by the rest's send.
                let queued = hold(io, &out).unwrap_or(0);
                out.drain(..queued);
                out.is_empty()
            }
            _ => false,
        };
        sent_before |= !out.is_empty();
        send(io, &mut out, deadline).await?;
        let used = used.map_err(Error::from)?;
        if let Some(outcome) = outcome {
            return Ok(server_end(outcome, &buf[used..n], silent, held));
        }
    }
}

fn server_end(outcome: ServerOutcome, rest: &[u8], silent: bool, held: bool) -> ServerEnd {
    match outcome {
        ServerOutcome::Encrypted(s) => ServerEnd::Encrypted(s, rest.to_vec(), held),
        ServerOutcome::Declined(r) => ServerEnd::Plain(FallbackReason::Declined(r), rest.to_vec()),
        ServerOutcome::PlainClient { mut prefix } => {
            prefix.extend_from_slice(rest);
            let reason = if silent {
                FallbackReason::ClientSilent
            } else {
                FallbackReason::PlainClient
            };
            ServerEnd::Plain(reason, prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{DuplexStream, ReadBuf};

    use super::*;

    /// A connection whose reader sees nothing until `until` (a stopped
    /// process), and then, once, nothing still although the bytes are
    /// there: the runtime ran its expired timers before it collected the
    /// socket's events.
    struct StoppedUntil {
        inner: DuplexStream,
        until: Instant,
        looked: bool,
    }

    impl AsyncRead for StoppedUntil {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if Instant::now() < self.until {
                return Poll::Pending;
            }
            if !self.looked {
                self.looked = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for StoppedUntil {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A client stopped while the server answered, and resumed after its
    /// wait for that answer: the answer is read, not taken for silence.
    #[tokio::test]
    async fn an_answer_waiting_when_the_deadline_fires_is_read() {
        let wait = Duration::from_millis(100);
        let config = Arc::new(
            Config::builder()
                .server_hello_timeout(wait)
                .build()
                .unwrap(),
        );
        let (client_end, mut server_end) = tokio::io::duplex(64 * 1024);
        let server_config = config.clone();
        let server = tokio::spawn(async move {
            server(
                &mut server_end,
                &server_config,
                ServerStart::InBand,
                None,
                None,
            )
            .await
            .map(|end| matches!(end, ServerEnd::Encrypted(..)))
        });
        let mut io = StoppedUntil {
            inner: client_end,
            until: Instant::now() + wait / 2,
            looked: false,
        };
        let hello_wait = config.server_hello_timeout;
        let end = client(
            &mut io,
            &config,
            ClientStart::InBand(None),
            None,
            &[],
            hello_wait,
        )
        .await
        .unwrap();
        match end {
            ClientEnd::Encrypted(..) => {}
            ClientEnd::PlainHere(r, _) | ClientEnd::Reconnect(r) => {
                panic!("taken for a plain server: {r}")
            }
        }
        assert!(
            server.await.unwrap().unwrap(),
            "the server is encrypted too"
        );
    }

    /// A transport whose other end never reads, with room for less than a
    /// hello: the handshake ends at its deadline, as when it waits to
    /// read.
    #[tokio::test]
    async fn a_peer_that_takes_nothing_cannot_hold_the_handshake() {
        let config = Arc::new(
            Config::builder()
                .handshake_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
        );
        for client_side in [true, false] {
            let (mut ours, theirs) = tokio::io::duplex(8);
            let started = Instant::now();
            let ended = if client_side {
                // Open, and never read.
                let _theirs = theirs;
                let run = client(
                    &mut ours,
                    &config,
                    ClientStart::InBand(None),
                    None,
                    &[],
                    config.server_hello_timeout,
                );
                timeout(Duration::from_secs(5), run).await.map(|r| r.err())
            } else {
                // A client's hello arrives; the answer finds no room.
                let (mut client_end, mut ours) = (theirs, ours);
                let mut hello = Vec::new();
                ClientHandshake::with_early_data(
                    config.handshake.clone(),
                    None,
                    &[],
                    Box::new(OsRandom),
                )
                .unwrap()
                .write_to(&mut hello);
                let writer = tokio::spawn(async move {
                    client_end.write_all(&hello).await.unwrap();
                    // Holds its end open, and reads nothing.
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    drop(client_end);
                });
                let run = server(&mut ours, &config, ServerStart::InBand, None, None);
                let ended = timeout(Duration::from_secs(5), run).await.map(|r| r.err());
                writer.abort();
                ended
            };
            let error = ended.expect("ended at its deadline").expect("an error");
            assert_eq!(
                error.kind(),
                io::ErrorKind::TimedOut,
                "{client_side}: {error}"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    }
}
