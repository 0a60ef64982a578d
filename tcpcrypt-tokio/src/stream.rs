//! `TcpcryptStream`: an encrypted (or, by policy, plain) byte stream with
//! `AsyncRead + AsyncWrite`, used like `tokio_rustls`'s `TlsStream`.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::copy::VectoredBufRead;
use crate::error::FallbackReason;
use crate::first_write::{FirstWrite, HoldFn};
use crate::late_ack::LateAck;
use crate::proto::{Session, SessionId, SessionInfo};
use crate::record::{Flow, PlainRecv, RecvEvent, RecvState, SendState};

/// What to do with the transport when a protocol error aborts the
/// connection (RFC 8548 3.3: ABORT, i.e. RST). Set for TCP sockets.
pub(crate) type AbortFn<IO> = fn(&IO);

/// A byte stream that is encrypted with tcpcrypt, or plain when the policy
/// allowed a fallback. Reads return end of stream only after the peer's
/// authenticated FINp frame; a TCP end of stream without it is an error
/// (kind `UnexpectedEof`), and a frame that fails authentication is an
/// error (kind `InvalidData`) that aborts the connection.
///
/// ```no_run
/// use std::sync::Arc;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tcpcrypt_tokio::{Config, TcpcryptStream};
///
/// # async fn run() -> std::io::Result<()> {
/// let config = Arc::new(Config::default());
/// let mut stream = TcpcryptStream::connect("127.0.0.1:8080", &config).await?;
/// match stream.session() {
///     Some(s) => println!("encrypted, session ID {}", s.session_id),
///     None => println!("plain: {}", stream.fallback_reason().unwrap()),
/// }
/// stream.write_all(b"hello").await?;
/// stream.shutdown().await?; // FINp, then TCP FIN; reading still works
/// let mut reply = Vec::new();
/// stream.read_to_end(&mut reply).await?;
/// # Ok(()) }
/// ```
pub struct TcpcryptStream<IO = TcpStream> {
    pub(crate) io: IO,
    pub(crate) mode: Mode,
    pub(crate) abort: Option<AbortFn<IO>>,
    /// A protocol error aborted the connection: writes fail.
    pub(crate) aborted: bool,
    pub(crate) peer: Option<SocketAddr>,
    /// The configuration an encrypted stream was negotiated with, whose
    /// caches [`forget_session`](Self::forget_session) flushes.
    pub(crate) config: Option<Arc<crate::Config>>,
    /// How long the negotiation took.
    pub(crate) handshake: std::time::Duration,
    /// The kernel carried the ENO negotiation (in the SYNs).
    pub(crate) kernel_carried: bool,
    /// Bytes of the application's first data delivered as 0-RTT data.
    pub(crate) early_delivered: usize,
    /// How the application's first bytes leave (`first_write.rs`); taken
    /// by the first write.
    pub(crate) first_write: Option<FirstWrite<IO>>,
    /// Queues bytes without sending them (set for TCP sockets): FINp and
    /// the FIN leave in one segment.
    pub(crate) hold: Option<HoldFn<IO>>,
}

pub(crate) enum Mode {
    Plain {
        recv: PlainRecv,
        reason: FallbackReason,
        /// The late marker's wait for its acknowledgement (`late_ack.rs`),
        /// armed on the accepting side's TCP connections.
        ack: LateAck,
    },
    Encrypted(Box<Encrypted>),
}

pub(crate) struct Encrypted {
    pub(crate) info: Arc<SessionInfo>,
    pub(crate) recv: RecvState,
    pub(crate) send: SendState,
    /// A reader waiting for rekey answers to be written. Its wake-up is
    /// the socket's writability, which a writer in another task (the
    /// stream shared through `tokio::io::split`) may take over: the writer
    /// wakes it when it has written.
    pub(crate) reader_waiting: Option<Waker>,
    /// A writer waiting for the socket, whose wake-up the reader may take
    /// over in turn: the reader wakes it when it has written answers.
    pub(crate) writer_waiting: Option<Waker>,
}

impl Encrypted {
    /// Runs a write operation, remembers the writer when it must wait, and
    /// wakes a reader waiting for rekey answers if it wrote any byte (see
    /// `reader_waiting`).
    fn wake_reader_after<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut SendState, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let before = self.send.written();
        let result = op(&mut self.send, cx);
        if result.is_pending() {
            self.writer_waiting = Some(cx.waker().clone());
        }
        if result.is_ready() || self.send.written() > before {
            if let Some(w) = self.reader_waiting.take() {
                w.wake();
            }
        }
        result
    }
}

impl<IO> std::fmt::Debug for TcpcryptStream<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("TcpcryptStream");
        match &self.mode {
            Mode::Plain { reason, .. } => d.field("plain", reason),
            Mode::Encrypted(e) => d.field("session_id", &e.info.session_id),
        };
        d.finish_non_exhaustive()
    }
}

impl<IO> TcpcryptStream<IO> {
    pub(crate) fn encrypted(io: IO, session: Session, leftover: Vec<u8>) -> Self {
        TcpcryptStream {
            io,
            mode: Mode::Encrypted(Box::new(Encrypted {
                info: Arc::new(session.info),
                recv: RecvState::new(session.opener, leftover),
                send: SendState::new(session.sealer),
                reader_waiting: None,
                writer_waiting: None,
            })),
            abort: None,
            aborted: false,
            peer: None,
            config: None,
            handshake: std::time::Duration::ZERO,
            kernel_carried: false,
            early_delivered: 0,
            first_write: None,
            hold: None,
        }
    }

    pub(crate) fn plain(io: IO, reason: FallbackReason, prefix: Vec<u8>) -> Self {
        // A client taken for plain because it was silent may still send its
        // hello, late: that is never data.
        let recv = if reason == FallbackReason::ClientSilent {
            PlainRecv::watching_for_late_hello(prefix)
        } else {
            PlainRecv::new(prefix)
        };
        TcpcryptStream {
            io,
            mode: Mode::Plain {
                recv,
                reason,
                ack: LateAck::default(),
            },
            abort: None,
            aborted: false,
            peer: None,
            config: None,
            handshake: std::time::Duration::ZERO,
            kernel_carried: false,
            early_delivered: 0,
            first_write: None,
            hold: None,
        }
    }

    /// How the ENO negotiation of an encrypted stream travelled:
    /// [`Carriage::Kernel`](crate::Carriage::Kernel) (in the SYNs) or
    /// [`Carriage::InBand`](crate::Carriage::InBand). `None` when plain.
    pub fn carriage(&self) -> Option<crate::Carriage> {
        match (self.is_encrypted(), self.kernel_carried) {
            (false, _) => None,
            (true, true) => Some(crate::Carriage::Kernel),
            (true, false) => Some(crate::Carriage::InBand),
        }
    }

    /// Whether the stream is encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.mode, Mode::Encrypted(_))
    }

    /// The session: roles, TEP, AEAD, session ID, transcript, the peer's
    /// application-aware bit. `None` for a plain stream: there is no
    /// session ID then, never an empty one (RFC 8547 5.1).
    pub fn session(&self) -> Option<&SessionInfo> {
        match &self.mode {
            Mode::Encrypted(e) => Some(&e.info),
            Mode::Plain { .. } => None,
        }
    }

    /// The session ID, when encrypted.
    pub fn session_id(&self) -> Option<SessionId> {
        self.session().map(|s| s.session_id)
    }

    /// Why the stream is plain, when it is.
    pub fn fallback_reason(&self) -> Option<&FallbackReason> {
        match &self.mode {
            Mode::Plain { reason, .. } => Some(reason),
            Mode::Encrypted(_) => None,
        }
    }

    /// The address of the peer this stream was connected to or accepted
    /// from, when it came from a TCP socket.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// How long the negotiation took on this connection: the tcpcrypt
    /// handshake, or what it took to find the peer plain (zero when the
    /// policy or a cached verdict skipped it).
    pub fn handshake_duration(&self) -> std::time::Duration {
        self.handshake
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The underlying transport, mutably. Reading or writing it directly
    /// breaks the framing.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Starts a rekey (RFC 8548 3.8): the next frame, or an empty one sent
    /// by the next flush, is sealed under new keys and the old ones are
    /// erased. The peer must answer at once with a rekey of its own, so
    /// `rekey()` followed by `flush()` is also an authenticated liveness
    /// probe (RFC 8548 3.9). Fails while a previous rekey is unanswered.
    pub fn rekey(&mut self) -> io::Result<()> {
        match &mut self.mode {
            Mode::Encrypted(e) => e.send.rekey(),
            Mode::Plain { .. } => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the stream is not encrypted",
            )),
        }
    }

    /// Flushes the resumption state this connection used or created
    /// (RFC 8548 3.5) from the caches of the configuration it was made
    /// with: on the connecting side the secret cached for this
    /// destination, on the accepting side the secret cached for this
    /// peer's next connection.
    pub fn forget_session(&self) {
        let (Some(info), Some(config)) = (self.session(), &self.config) else {
            return;
        };
        match info.role {
            crate::Role::A => {
                if let Some(peer) = self.peer {
                    config.client_cache.forget_ticket(peer);
                }
            }
            crate::Role::B => {
                if let Some(half) = info.cached_resumption {
                    config.server_cache.remove(&half);
                }
            }
        }
    }

    /// This side's key generation and the peer's (as last seen).
    pub fn generations(&self) -> Option<(u64, u64)> {
        match &self.mode {
            Mode::Encrypted(e) => {
                Some((e.send.sealer().generation(), e.recv.opener().generation()))
            }
            Mode::Plain { .. } => None,
        }
    }

    /// Aborts after a protocol error: reset the transport when it is
    /// closed, and refuse further writes.
    fn fail(&mut self) {
        self.aborted = true;
        if let Some(abort) = self.abort {
            abort(&self.io);
        }
    }

    fn check_aborted(&self) -> io::Result<()> {
        if self.aborted {
            return Err(crate::Error::Aborted.into());
        }
        Ok(())
    }
}

impl TcpcryptStream<TcpStream> {
    /// Splits into owned read and write halves. The sending side sits
    /// behind a mutex, which the write half takes for each write and the
    /// read half only to answer a rekey.
    ///
    /// A rekey frame from the peer obliges this side to answer at once with
    /// one of its own (RFC 8548 3.8): the read half sends it, without
    /// waiting for the write half. A protocol error seen by the read half
    /// aborts the connection as the whole stream would: later writes fail
    /// and the socket is reset when both halves are dropped.
    ///
    /// To half-close, call `shutdown` on the write half: it sends FINp,
    /// and the read half goes on reading. A write half dropped without it
    /// ends the sending direction with a TCP FIN alone, which the peer
    /// reads as a truncation (`UnexpectedEof`), not as the end of the
    /// stream, as for a whole stream dropped without `shutdown`.
    pub fn into_split(self) -> (crate::split::ReadHalf, crate::split::WriteHalf) {
        crate::split::split(self)
    }
}

/// Sends the late marker when a client's hello came late and nothing has
/// been sent (docs/PROTOCOL.md 3.4, rule 1), before the reset: at most
/// once, written at once (the send buffer of a connection that has sent
/// nothing takes eight bytes). `result` is the read's; its error (the late
/// hello) is held until the client has acknowledged the marker, so that
/// the reset cannot overtake it (`late_ack.rs`); writes fail meanwhile.
fn answer_late_hello<IO: AsyncWrite + Unpin>(
    recv: &mut PlainRecv,
    ack: &mut LateAck,
    io: &mut IO,
    cx: &mut Context<'_>,
    result: Poll<io::Result<()>>,
) -> Poll<io::Result<()>> {
    if let Some(marker) = recv.take_late_answer() {
        if let Poll::Ready(Ok(_)) = Pin::new(io).poll_write(cx, marker) {
            ack.start();
        }
    }
    if let Poll::Ready(Err(_)) = result {
        ready!(ack.poll(cx));
    }
    result
}

/// Sets `SO_LINGER` to zero so that closing the socket sends RST: the
/// RFC 793 ABORT that RFC 8548 asks for on a protocol error.
pub(crate) fn abort_tcp(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TcpcryptStream<IO> {
    /// Makes data ready to read; none ready afterwards means end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_recv(cx, |recv, io, cx, on_event| {
            recv.poll_fill(io, cx, on_event)
        })
    }

    /// Runs `op` on the receiving side of an encrypted stream; answers the
    /// peer's rekey at once (RFC 8548 3.8), holds reading while answers
    /// cannot be sent, and aborts the connection on a protocol error. A
    /// plain stream reads into its own buffer.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(
            &mut RecvState,
            &mut IO,
            &mut Context<'_>,
            &mut dyn FnMut(RecvEvent) -> Flow,
        ) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        let e = match &mut self.mode {
            Mode::Plain { recv, ack, .. } => {
                let result = recv.poll_fill(&mut self.io, cx);
                let result = answer_late_hello(recv, ack, &mut self.io, cx, result);
                // The client has given the connection up: no more writes.
                self.aborted |= ack.is_waiting();
                return self.abort_on_error(result);
            }
            Mode::Encrypted(e) => e,
        };
        let Encrypted {
            recv,
            send,
            reader_waiting,
            writer_waiting,
            ..
        } = &mut **e;
        let result = loop {
            let result = op(recv, &mut self.io, cx, &mut |ev| match ev {
                RecvEvent::PeerRekeyed(g) => send.peer_rekeyed(g),
            });
            // Only answers of its own make the reader write: draining the
            // writer's bytes would take the socket's wake-up from a writer
            // waiting for it, and this reader, woken in its place, would
            // not pass it on once nothing of its own is left to write.
            if !recv.held() && !send.answers_waiting() {
                break result;
            }
            let before = send.written();
            let answered = send.poll_answer(&mut self.io, cx);
            if send.written() > before {
                if let Some(first) = &mut self.first_write {
                    first.sent();
                }
            }
            if answered.is_ready() || send.written() > before {
                if let Some(w) = writer_waiting.take() {
                    w.wake();
                }
            }
            match answered {
                Poll::Ready(Ok(())) => {
                    let was_held = recv.held();
                    recv.resume();
                    if was_held && result.is_pending() {
                        continue;
                    }
                }
                // Reading resumes when the socket takes the answers.
                Poll::Pending => *reader_waiting = Some(cx.waker().clone()),
                Poll::Ready(Err(e)) if result.is_pending() => break Poll::Ready(Err(e)),
                // The write side's error shows at the next write.
                Poll::Ready(Err(_)) => {}
            }
            break result;
        };
        // The application waits for its peer, which may wait for the
        // handshake's last message.
        if result.is_pending() {
            if let Some(first) = &mut self.first_write {
                first.release(&self.io);
            }
        }
        self.abort_on_error(result)
    }

    /// Aborts the connection when `result` is a protocol error.
    fn abort_on_error(&mut self, result: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = &result {
            if crate::Error::aborts(e) {
                self.fail();
            }
        }
        result
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TcpcryptStream<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Mode::Plain { recv, ack, .. } = &mut this.mode {
            let result = recv.poll_read(&mut this.io, cx, buf);
            let result = answer_late_hello(recv, ack, &mut this.io, cx, result);
            // The client has given the connection up: no more writes.
            this.aborted |= ack.is_waiting();
            return this.abort_on_error(result);
        }
        this.poll_recv(cx, |recv, io, cx, on_event| {
            recv.poll_read(io, cx, buf, on_event)
        })
    }
}

/// Reading without a copy out of the receive buffer: `poll_fill_buf` lends
/// the first decrypted frame ([`VectoredBufRead::poll_fill_bufs`] lends
/// all of them).
impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncBufRead for TcpcryptStream<IO> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.poll_fill(cx))?;
        Poll::Ready(Ok(match &this.mode {
            Mode::Plain { recv, .. } => recv.pending(),
            Mode::Encrypted(e) => e.recv.first_ready(),
        }))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        match &mut self.get_mut().mode {
            Mode::Plain { recv, .. } => recv.consume(amt),
            Mode::Encrypted(e) => e.recv.consume(amt),
        }
    }
}

/// The decrypted frames at hand, one slice each.
impl<IO: AsyncRead + AsyncWrite + Unpin> VectoredBufRead for TcpcryptStream<IO> {
    fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_fill(cx))?;
        Poll::Ready(Ok(match &self.mode {
            Mode::Plain { recv, .. } => recv.ready_slices(bufs),
            Mode::Encrypted(e) => e.recv.ready_slices(bufs),
        }))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TcpcryptStream<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check_aborted()?;
        match &mut this.mode {
            Mode::Plain { recv, .. } => {
                let written = ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
                if written > 0 {
                    recv.note_sent();
                }
                Poll::Ready(Ok(written))
            }
            Mode::Encrypted(e) => {
                let result =
                    e.wake_reader_after(cx, |send, cx| send.poll_write(&mut this.io, cx, data));
                // An empty write sends nothing.
                if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
                    if let Some(first) = this.first_write.take() {
                        first.written(&this.io);
                    }
                }
                result
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_aborted()?;
        match &mut this.mode {
            Mode::Plain { .. } => Pin::new(&mut this.io).poll_flush(cx),
            Mode::Encrypted(e) => {
                if let Some(first) = &mut this.first_write {
                    first.release(&this.io);
                }
                e.wake_reader_after(cx, |send, cx| send.poll_flush(&mut this.io, cx))
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_aborted()?;
        match &mut this.mode {
            Mode::Plain { recv, .. } => {
                recv.note_sent();
                Pin::new(&mut this.io).poll_shutdown(cx)
            }
            Mode::Encrypted(e) => {
                // FINp is a write like any other: it takes a held message
                // along, and the FIN is never held back.
                this.first_write = None;
                e.wake_reader_after(cx, |send, cx| {
                    send.poll_shutdown(&mut this.io, cx, this.hold)
                })
            }
        }
    }
}
