//! Owned read and write halves of a `TcpcryptStream<TcpStream>`. Each owns
//! its half of the socket; the read half owns the receiving keys. The
//! sending side (keys, offset, sealed bytes) sits behind a mutex that the
//! write half takes for each write and the read half only when rekey
//! answers are waiting: the read half then seals and sends them itself, at
//! once (RFC 8548 3.8), without waiting for the application's next write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::copy::VectoredBufRead;
use crate::error::FallbackReason;
use crate::first_write::{self, SharedFirstWrite};
use crate::late_ack::LateAck;
use crate::path::PathProbe;
use crate::proto::SessionInfo;
use crate::record::{Flow, PlainRecv, RecvEvent, RecvState, SendState};
use crate::stream::{Mode, TcpcryptStream, abort_tcp};

/// The read half of a split [`TcpcryptStream`].
pub struct ReadHalf {
    io: OwnedReadHalf,
    inner: ReadInner,
    info: Option<Arc<SessionInfo>>,
    shared: Arc<Shared>,
    /// The late marker's wait for its acknowledgement (`late_ack.rs`).
    ack: LateAck,
}

enum ReadInner {
    Plain(PlainRecv),
    Encrypted(Box<RecvState>),
}

/// The write half of a split [`TcpcryptStream`].
pub struct WriteHalf {
    /// `None` only while dropping.
    io: Option<OwnedWriteHalf>,
    info: Option<Arc<SessionInfo>>,
    shared: Arc<Shared>,
}

/// What the halves share.
struct Shared {
    /// Why the stream is plain, when it is.
    fallback: Option<FallbackReason>,
    /// The peer's address.
    peer: Option<std::net::SocketAddr>,
    /// The sending side of an encrypted stream.
    send: Option<Mutex<Sender>>,
    /// Whether a protocol error is answered with a reset.
    abortable: bool,
    /// A protocol error aborted the connection: writes fail, and dropping
    /// the write half sends no FIN (the reset comes when the socket closes).
    aborted: AtomicBool,
    /// The write half of a plain stream has sent something (a late hello
    /// is then only reset, never answered).
    plain_sent: AtomicBool,
    /// Rekey answers are owed or unwritten (`SendState::answers_waiting`),
    /// published by whoever held the sending side last, so that the read
    /// half learns it without taking the lock on every read.
    answers_waiting: AtomicBool,
    /// How the first application bytes leave (`first_write.rs`).
    first_write: SharedFirstWrite,
}

/// The sending side, and the tasks waiting for the socket to take its
/// bytes: both halves write through it, and the one that gets the socket's
/// wake-up (tokio keeps one per direction) wakes the other.
struct Sender {
    send: SendState,
    reader_waiting: Option<Waker>,
    writer_waiting: Option<Waker>,
}

impl Shared {
    fn sender(&self) -> Option<MutexGuard<'_, Sender>> {
        self.send
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Publishes whether rekey answers are waiting, from the sending side
    /// just used.
    fn publish(&self, send: &SendState) {
        self.answers_waiting
            .store(send.answers_waiting(), Ordering::Release);
    }

    fn check_aborted(&self) -> io::Result<()> {
        if self.aborted.load(Ordering::Acquire) {
            return Err(crate::Error::Aborted.into());
        }
        Ok(())
    }
}

/// Writes to the socket through a shared reference, for the read half's
/// rekey answers.
struct SharedWrite<'a>(&'a TcpStream);

impl AsyncWrite for SharedWrite<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for ReadHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHalf").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHalf").finish_non_exhaustive()
    }
}

pub(crate) fn split(stream: TcpcryptStream<TcpStream>) -> (ReadHalf, WriteHalf) {
    let (r, w) = stream.io.into_split();
    let abortable = stream.abort.is_some();
    let first_write = SharedFirstWrite::new(stream.first_write);
    let (inner, send, info, fallback, ack) = match stream.mode {
        Mode::Plain { recv, reason, ack } => {
            (ReadInner::Plain(recv), None, None, Some(reason), ack)
        }
        Mode::Encrypted(e) => {
            let e = *e;
            let sender = Sender {
                send: e.send,
                reader_waiting: None,
                writer_waiting: None,
            };
            (
                ReadInner::Encrypted(Box::new(e.recv)),
                Some(Mutex::new(sender)),
                Some(e.info),
                None,
                LateAck::default(),
            )
        }
    };
    let shared = Arc::new(Shared {
        fallback,
        peer: stream.peer,
        send,
        abortable,
        aborted: AtomicBool::new(stream.aborted),
        answers_waiting: AtomicBool::new(false),
        plain_sent: AtomicBool::new(false),
        first_write,
    });
    (
        ReadHalf {
            io: r,
            inner,
            info: info.clone(),
            shared: shared.clone(),
            ack,
        },
        WriteHalf {
            io: Some(w),
            info,
            shared,
        },
    )
}

/// What either half tells of the connection, as the whole stream does.
macro_rules! connection_facts {
    ($half:ty) => {
        impl $half {
            /// The session, when encrypted.
            pub fn session(&self) -> Option<&SessionInfo> {
                self.info.as_deref()
            }

            /// The session ID, when encrypted.
            pub fn session_id(&self) -> Option<crate::SessionId> {
                self.session().map(|s| s.session_id)
            }

            /// Why the stream is plain, when it is.
            pub fn fallback_reason(&self) -> Option<&FallbackReason> {
                self.shared.fallback.as_ref()
            }

            /// The address of the peer.
            pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
                self.shared.peer
            }
        }
    };
}

connection_facts!(ReadHalf);
connection_facts!(WriteHalf);

impl WriteHalf {
    /// Starts a rekey; see [`TcpcryptStream::rekey`].
    pub fn rekey(&mut self) -> io::Result<()> {
        self.shared.check_aborted()?;
        match self.shared.sender() {
            Some(mut s) => s.send.rekey(),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the stream is not encrypted",
            )),
        }
    }

    /// Runs `op` on the sending side with the socket, keeping the two
    /// halves' wake-ups straight.
    fn poll_send<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut SendState, &mut OwnedWriteHalf, &mut Context<'_>) -> Poll<io::Result<T>>,
        plain: impl FnOnce(Pin<&mut OwnedWriteHalf>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.shared.check_aborted()?;
        let io = self.io.as_mut().expect("present until dropped");
        let Some(mut sender) = self.shared.sender() else {
            let result = plain(Pin::new(io), cx);
            if result.is_ready() && !self.shared.plain_sent.load(Ordering::Relaxed) {
                self.shared.plain_sent.store(true, Ordering::Release);
            }
            return result;
        };
        let before = sender.send.written();
        let result = op(&mut sender.send, io, cx);
        self.shared.publish(&sender.send);
        if result.is_pending() {
            sender.writer_waiting = Some(cx.waker().clone());
        }
        // Having written, pass on the socket's wake-up, which may have been
        // the reader's. Without progress, waking it would only make the two
        // halves wake each other in a loop.
        if result.is_ready() || sender.send.written() > before {
            if let Some(w) = sender.reader_waiting.take() {
                w.wake();
            }
        }
        result
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            if self.shared.aborted.load(Ordering::Acquire) {
                // No FIN before the reset.
                io.forget();
            }
        }
    }
}

/// Sends the rekey answers the peer is owed from the read half (see the
/// module documentation); resumes opening once they are written.
fn poll_answer(
    shared: &Shared,
    io: &OwnedReadHalf,
    cx: &mut Context<'_>,
    recv: &mut RecvState,
) -> Poll<io::Result<()>> {
    let Some(mut sender) = shared.sender() else {
        return Poll::Ready(Ok(()));
    };
    let before = sender.send.written();
    let result = sender.send.poll_answer(&mut SharedWrite(io.as_ref()), cx);
    shared.publish(&sender.send);
    if sender.send.written() > before {
        shared.first_write.sent();
    }
    match &result {
        Poll::Pending => sender.reader_waiting = Some(cx.waker().clone()),
        Poll::Ready(Ok(())) => recv.resume(),
        // Reading stays held; the error shows on this read (as for a
        // whole stream) or at the next write.
        Poll::Ready(Err(_)) => {}
    }
    if result.is_ready() || sender.send.written() > before {
        if let Some(w) = sender.writer_waiting.take() {
            w.wake();
        }
    }
    result
}

/// Sends the late marker when a client's hello came late and neither half
/// has sent anything (docs/PROTOCOL.md 3.4, rule 1), and holds the read's
/// error until the marker is acknowledged, as [`TcpcryptStream`] does.
fn answer_late_hello(
    shared: &Shared,
    recv: &mut PlainRecv,
    ack: &mut LateAck,
    io: &OwnedReadHalf,
    cx: &mut Context<'_>,
    result: Poll<io::Result<()>>,
) -> Poll<io::Result<()>> {
    if shared.plain_sent.load(Ordering::Acquire) {
        recv.note_sent();
    }
    if let Some(marker) = recv.take_late_answer() {
        if io.as_ref().try_write(marker).is_ok() {
            if !ack.is_armed() {
                ack.arm(PathProbe::of(io.as_ref()));
            }
            ack.start();
        }
    }
    // The client has given the connection up: no more writes.
    if ack.is_waiting() {
        shared.aborted.store(true, Ordering::Release);
    }
    if let Poll::Ready(Err(_)) = result {
        ready!(ack.poll(cx));
    }
    result
}

/// Aborts the connection when `result` is a protocol error, as the whole
/// stream would.
fn abort_on_error(
    shared: &Shared,
    io: &OwnedReadHalf,
    result: Poll<io::Result<()>>,
) -> Poll<io::Result<()>> {
    if let Poll::Ready(Err(e)) = &result {
        if shared.abortable && crate::Error::aborts(e) {
            abort_tcp(io.as_ref());
            shared.aborted.store(true, Ordering::Release);
        }
    }
    result
}

impl ReadHalf {
    /// Runs `op` on the receiving side, as [`TcpcryptStream`] does: rekeys
    /// answered at once, reading held while answers cannot be sent, a
    /// reset after a protocol error. A plain stream reads into its buffer.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(
            &mut RecvState,
            &mut OwnedReadHalf,
            &mut Context<'_>,
            &mut dyn FnMut(RecvEvent) -> Flow,
        ) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        let ReadHalf {
            io,
            inner,
            shared,
            ack,
            ..
        } = self;
        let recv = match inner {
            ReadInner::Plain(recv) => {
                let result = recv.poll_fill(io, cx);
                let result = answer_late_hello(shared, recv, ack, io, cx, result);
                return abort_on_error(shared, io, result);
            }
            ReadInner::Encrypted(recv) => recv,
        };
        let result = loop {
            let result = op(recv, io, cx, &mut |ev| match ev {
                RecvEvent::PeerRekeyed(g) => match shared.sender() {
                    Some(mut s) => {
                        let flow = s.send.peer_rekeyed(g);
                        shared.publish(&s.send);
                        flow
                    }
                    None => Flow::Go,
                },
            });
            // Only answers of its own make the read half write (see
            // `TcpcryptStream::poll_recv`): draining the write half's bytes
            // would take the socket's wake-up from it.
            let waiting = shared.answers_waiting.load(Ordering::Acquire);
            if !recv.held() && !waiting {
                break result;
            }
            let was_held = recv.held();
            match poll_answer(shared, io, cx, recv) {
                Poll::Ready(Ok(())) if was_held && result.is_pending() => continue,
                Poll::Ready(Err(e)) if result.is_pending() => break Poll::Ready(Err(e)),
                _ => break result,
            }
        };
        // The application waits for its peer, which may wait for the
        // handshake's last message.
        if result.is_pending() {
            shared.first_write.release(io.as_ref());
        }
        abort_on_error(shared, io, result)
    }

    /// Makes data ready to read; none ready afterwards means end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_recv(cx, |recv, io, cx, on_event| {
            recv.poll_fill(io, cx, on_event)
        })
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let ReadInner::Plain(recv) = &mut this.inner {
            let result = recv.poll_read(&mut this.io, cx, buf);
            let result = answer_late_hello(&this.shared, recv, &mut this.ack, &this.io, cx, result);
            return abort_on_error(&this.shared, &this.io, result);
        }
        this.poll_recv(cx, |recv, io, cx, on_event| {
            recv.poll_read(io, cx, buf, on_event)
        })
    }
}

/// Reading without a copy; see [`TcpcryptStream`]'s implementation.
impl AsyncBufRead for ReadHalf {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.poll_fill(cx))?;
        Poll::Ready(Ok(match &this.inner {
            ReadInner::Plain(recv) => recv.pending(),
            ReadInner::Encrypted(recv) => recv.first_ready(),
        }))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        match &mut self.get_mut().inner {
            ReadInner::Plain(recv) => recv.consume(amt),
            ReadInner::Encrypted(recv) => recv.consume(amt),
        }
    }
}

/// The decrypted frames at hand, one slice each.
impl VectoredBufRead for ReadHalf {
    fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_fill(cx))?;
        Poll::Ready(Ok(match &self.inner {
            ReadInner::Plain(recv) => recv.ready_slices(bufs),
            ReadInner::Encrypted(recv) => recv.ready_slices(bufs),
        }))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.poll_send(
            cx,
            |s, io, cx| s.poll_write(io, cx, data),
            |io, cx| io.poll_write(cx, data),
        );
        // An empty write sends nothing.
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            if let Some(io) = &self.io {
                self.shared.first_write.written(io.as_ref());
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(io) = &self.io {
            self.shared.first_write.release(io.as_ref());
        }
        self.poll_send(
            cx,
            |s, io, cx| s.poll_flush(io, cx),
            |io, cx| io.poll_flush(cx),
        )
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.first_write.done();
        self.poll_send(
            cx,
            |s, io, cx| s.poll_shutdown(io, cx, Some(first_write::hold_write_half)),
            |io, cx| io.poll_shutdown(cx),
        )
    }
}
