//! Moving frames between the core's sealer/opener and an async byte
//! stream: the receive and send halves of an encrypted connection. Each
//! half owns its buffer and key state; the only thing the receiving side
//! asks of the sending side is to answer the peer's rekeys.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::protocol_error;
use crate::proto::frame::{DATA_OFFSET, MAX_DATA, MAX_FRAME_LEN};
use crate::proto::hello::{HelloKind, is_late_client_marker, marker};
use crate::proto::{Error as ProtoError, FrameOpener, FrameSealer};

/// Receive buffer size: several frames of the largest size, so that a bulk
/// reader makes few `read` calls. Released whenever the connection goes
/// idle.
pub(crate) const RECV_BUF_LEN: usize = 4 * MAX_FRAME_LEN;
/// The size a receive buffer doubles up to while reads keep filling it: a
/// receiver that falls behind (a relay, a busy thread) then takes what has
/// piled up in a few large reads and hands it on in large writes.
pub(crate) const MAX_RECV_BUF_LEN: usize = 16 * MAX_FRAME_LEN;
/// Most frames opened ahead of the reader: more than a full receive
/// buffer of full-size frames, and what one vectored write takes at most.
pub(crate) const MAX_READY_FRAMES: usize = 32;
/// Bytes kept at the front of an empty send buffer so that the data of the
/// first frame starts 16-byte aligned (copies into misaligned destinations
/// can be several times slower).
const SEND_HEADROOM: usize = 16 - DATA_OFFSET;
/// Sealed bytes the sender keeps before it stops accepting more.
const SEND_HIGH_WATER: usize = 4 * MAX_FRAME_LEN;
/// Application bytes sealed per `poll_write` before trying to write: a few
/// frames, so that one system call carries them all.
const SEND_BATCH: usize = 4 * MAX_DATA;

/// Buffer size while the first bytes of a silent client are watched for a
/// late hello: more than the eight bytes of its marker.
const WATCH_LEN: usize = 16;

/// Receive buffers kept per thread for reuse.
const SPARE_BUFFERS: usize = 2;

thread_local! {
    /// Receive buffers of connections that found their socket empty, for
    /// the next reader on this thread: a bulk reader, which finds its
    /// socket empty all the time, gets a buffer back without allocating
    /// and zeroing it again, and an idle connection holds none.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A receive buffer of at least `RECV_BUF_LEN` bytes, reused when there is
/// one.
fn take_buffer() -> Vec<u8> {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; RECV_BUF_LEN])
}

/// Keeps a receive buffer for reuse, up to `SPARE_BUFFERS` per thread.
fn give_back(buf: Vec<u8>) {
    if buf.len() >= RECV_BUF_LEN {
        SPARE.with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        });
    }
}

/// Frame sizes for `len` bytes: as few frames as the limit allows, of
/// nearly equal size, so that a 64 KiB write is not a full frame and a
/// runt.
fn frame_data_len(len: usize) -> usize {
    let frames = len.div_ceil(MAX_DATA).max(1);
    len.div_ceil(frames)
}

/// The receiving direction of a plain stream: bytes read before the
/// application asked for them (what the handshake saw before deciding the
/// peer is plain, or what a buffered read brought), delivered first.
pub(crate) struct PlainRecv {
    bytes: Vec<u8>,
    /// Undelivered bytes: `bytes[start..end]`.
    start: usize,
    end: usize,
    /// The buffer size for the next read: doubles, up to
    /// `MAX_RECV_BUF_LEN`, while reads keep filling the buffer.
    read_len: usize,
    /// The first bytes are held until they tell a client's late hello
    /// from data (see [`PlainRecv::watching_for_late_hello`]).
    watch: bool,
    /// Whether a client's late hello is answered with the late marker
    /// before the reset: only while this side has sent nothing.
    late_answer: LateAnswer,
}

/// Whether a late hello is answered (docs/PROTOCOL.md 3.4, rule 1).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LateAnswer {
    /// This side has sent nothing: a late hello would be answered.
    Silent,
    /// A hello came late and the marker is to be sent.
    Due,
    /// This side has sent bytes of its own (the client has taken them for
    /// a plain server's, and a marker after them would be data), or the
    /// marker itself.
    Spoken,
}

/// The accepting side's answer to a late hello.
const LATE_MARKER: [u8; 8] = marker(HelloKind::Late);

impl PlainRecv {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        PlainRecv {
            bytes,
            start: 0,
            end,
            read_len: RECV_BUF_LEN,
            watch: false,
            late_answer: LateAnswer::Silent,
        }
    }

    /// This side sent bytes of its own: a late hello is then only reset.
    pub(crate) fn note_sent(&mut self) {
        if self.late_answer == LateAnswer::Silent {
            self.late_answer = LateAnswer::Spoken;
        }
    }

    /// The late marker, once, when a client's hello came late and this
    /// side had sent nothing: the client then knows to send a new hello
    /// rather than take the reset for a plain server's.
    pub(crate) fn take_late_answer(&mut self) -> Option<&'static [u8]> {
        if self.late_answer != LateAnswer::Due {
            return None;
        }
        self.late_answer = LateAnswer::Spoken;
        Some(&LATE_MARKER[..])
    }

    /// The receiving direction of a client the accepting side took for
    /// plain because it stayed silent: its hello may still come, late (a
    /// lost segment, a slow path). The first bytes are held until they
    /// tell; a hello is an error that aborts the connection, never data
    /// (the core decides: `hello::is_late_client_marker`).
    pub(crate) fn watching_for_late_hello(bytes: Vec<u8>) -> Self {
        PlainRecv {
            watch: true,
            ..PlainRecv::new(bytes)
        }
    }

    /// While watching, reads until the first bytes tell a late hello from
    /// data (or the stream ends).
    fn poll_watch<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.watch {
            match is_late_client_marker(self.pending()) {
                Some(true) => {
                    if self.late_answer == LateAnswer::Silent {
                        self.late_answer = LateAnswer::Due;
                    }
                    return Poll::Ready(Err(protocol_error(ProtoError::LateHello)));
                }
                Some(false) => self.watch = false,
                None => {
                    if self.start > 0 {
                        self.bytes.copy_within(self.start..self.end, 0);
                        self.end -= self.start;
                        self.start = 0;
                    }
                    // Fewer than eight bytes are pending: a small buffer
                    // tells (an idle client holds no large one).
                    if self.bytes.len() < WATCH_LEN {
                        self.bytes.resize(WATCH_LEN, 0);
                    }
                    let mut rb = ReadBuf::new(&mut self.bytes[self.end..]);
                    ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
                    match rb.filled().len() {
                        // The end of the stream: what came is data.
                        0 => self.watch = false,
                        n => self.end += n,
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads into `out`: pending bytes first, then straight from `io`
    /// (without going through the buffer).
    pub(crate) fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_watch(io, cx))?;
        if self.start == self.end {
            return Pin::new(&mut *io).poll_read(cx, out);
        }
        let n = (self.end - self.start).min(out.remaining());
        out.put_slice(&self.bytes[self.start..self.start + n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }

    /// Makes bytes pending, with one read of `io` if there are none;
    /// none pending afterwards means end of stream.
    pub(crate) fn poll_fill<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_watch(io, cx))?;
        if self.start < self.end {
            return Poll::Ready(Ok(()));
        }
        if self.bytes.len() < RECV_BUF_LEN {
            self.bytes = take_buffer();
        }
        if self.bytes.len() < self.read_len {
            self.bytes.resize(self.read_len, 0);
        }
        let mut rb = ReadBuf::new(&mut self.bytes);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Pending => {
                // Nothing pending: hold no buffer while waiting.
                give_back(std::mem::take(&mut self.bytes));
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    give_back(std::mem::take(&mut self.bytes));
                } else if n == self.bytes.len() {
                    // The stream had more: read more at a time.
                    self.read_len = (2 * n).min(MAX_RECV_BUF_LEN);
                }
                (self.start, self.end) = (0, n);
                Poll::Ready(Ok(()))
            }
        }
    }

    /// The size of the buffer held.
    #[cfg(test)]
    pub(crate) fn buffer_len(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes not yet delivered.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// The pending bytes as one slice in `bufs`; returns how many slices
    /// that is.
    pub(crate) fn ready_slices<'a>(&'a self, bufs: &mut [IoSlice<'a>]) -> usize {
        match bufs.first_mut() {
            Some(slot) if self.start < self.end => {
                *slot = IoSlice::new(self.pending());
                1
            }
            _ => 0,
        }
    }

    /// Marks `n` pending bytes as read.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n.min(self.end - self.start);
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.bytes.len() < RECV_BUF_LEN {
                // The handshake's bytes, delivered: free them. A read
                // buffer stays for the next read, and goes back to the
                // pool when the stream has nothing to give.
                self.bytes = Vec::new();
            }
        }
    }
}

/// The receiving direction of an encrypted stream.
pub(crate) struct RecvState {
    opener: FrameOpener,
    buf: Vec<u8>,
    /// Bytes not yet opened: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opened application data waiting for the reader, frame by frame:
    /// ranges of `buf`, none empty, at most `MAX_READY_FRAMES`.
    ready: VecDeque<Range<usize>>,
    fin: bool,
    /// Opening is held until the owed rekey answers are written.
    held: bool,
}

/// What the receiver learned besides data.
pub(crate) enum RecvEvent {
    /// The peer moved to this generation: answer with rekey frames.
    PeerRekeyed(u64),
}

/// What the owner of the sending side says after hearing of an event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Open more frames.
    Go,
    /// Rekey answers are owed that the sender cannot buffer: open nothing
    /// until [`RecvState::resume`], so that a peer that rekeys faster than
    /// it reads meets back-pressure instead of growing our memory.
    Hold,
}

impl RecvState {
    /// `leftover` holds bytes that arrived with the end of the handshake.
    pub(crate) fn new(opener: FrameOpener, leftover: Vec<u8>) -> Self {
        let end = leftover.len();
        RecvState {
            opener,
            buf: leftover,
            start: 0,
            end,
            ready: VecDeque::new(),
            fin: false,
            held: false,
        }
    }

    /// Whether opening is held for rekey answers (see [`Flow::Hold`]).
    pub(crate) fn held(&self) -> bool {
        self.held
    }

    /// Lets opening go on after [`Flow::Hold`].
    pub(crate) fn resume(&mut self) {
        self.held = false;
    }

    pub(crate) fn opener(&self) -> &FrameOpener {
        &self.opener
    }

    /// Opens the complete frames already received, up to
    /// `MAX_READY_FRAMES` waiting. An error after some data is left for the
    /// next call: the opener repeats it.
    fn open_received(&mut self, on_event: &mut dyn FnMut(RecvEvent) -> Flow) -> io::Result<()> {
        while !self.fin
            && !self.held
            && self.start < self.end
            && self.ready.len() < MAX_READY_FRAMES
        {
            match self
                .opener
                .open_in_place(&mut self.buf[self.start..self.end])
            {
                Ok(Some(f)) => {
                    if !f.data.is_empty() {
                        self.ready
                            .push_back(self.start + f.data.start..self.start + f.data.end);
                    }
                    self.start += f.frame_len;
                    self.fin = f.fin;
                    if f.rekeyed {
                        let flow = on_event(RecvEvent::PeerRekeyed(self.opener.generation()));
                        self.held = flow == Flow::Hold;
                    }
                }
                Ok(None) => break,
                Err(_) if !self.ready.is_empty() => break,
                Err(e) => return Err(protocol_error(e)),
            }
        }
        Ok(())
    }

    /// Makes application data ready, reading `io` only when no complete
    /// frame is at hand. Ready with nothing ready means end of stream (after
    /// the FINp frame). A protocol error is returned as an I/O error, after
    /// the data that came before it, and repeats forever. While opening is
    /// held (see [`Flow::Hold`]) and nothing is ready, returns `Pending`
    /// without reading: the caller arranges the wake-up.
    pub(crate) fn poll_fill<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        on_event: &mut dyn FnMut(RecvEvent) -> Flow,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.ready.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if self.fin {
                // The core decides what may follow the FINp frame.
                let unopened = self.end - self.start;
                return Poll::Ready(self.opener.end_of_stream(unopened).map_err(protocol_error));
            }
            if self.held {
                return Poll::Pending;
            }
            self.open_received(on_event)?;
            // Held: frames stay unopened and nothing more is read (an end
            // of stream read now would be taken for a truncation).
            if !self.ready.is_empty() || self.fin || self.held {
                continue;
            }
            // Need more bytes: move the partial frame to the front.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.is_empty() {
                self.buf = take_buffer();
            } else if self.buf.len() < RECV_BUF_LEN {
                self.buf.resize(RECV_BUF_LEN, 0);
            }
            let room = self.buf.len() - self.end;
            let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if self.end == 0 {
                        // Nothing pending: hold no buffer while waiting.
                        give_back(std::mem::take(&mut self.buf));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        let result = self.opener.end_of_stream(self.end);
                        return Poll::Ready(result.map_err(protocol_error));
                    }
                    self.end += n;
                    if n == room && self.buf.len() < MAX_RECV_BUF_LEN {
                        // The socket had more: read more at a time.
                        let len = (2 * self.buf.len()).min(MAX_RECV_BUF_LEN);
                        self.buf.resize(len, 0);
                    }
                }
            }
        }
    }

    /// The ready data as slices of the receive buffer, in order, as many
    /// as `bufs` holds; returns how many.
    pub(crate) fn ready_slices<'a>(&'a self, bufs: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, range) in bufs.iter_mut().zip(&self.ready) {
            *slot = IoSlice::new(&self.buf[range.clone()]);
            n += 1;
        }
        n
    }

    /// The first ready slice, empty when none is.
    pub(crate) fn first_ready(&self) -> &[u8] {
        self.ready.front().map_or(&[], |r| &self.buf[r.clone()])
    }

    /// Marks `n` ready bytes as read.
    pub(crate) fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(range) = self.ready.front_mut() else {
                return;
            };
            let k = n.min(range.len());
            range.start += k;
            n -= k;
            if range.start == range.end {
                self.ready.pop_front();
            }
        }
    }

    /// Reads application data into `out`: every complete frame already
    /// received, as far as `out` has room (so that a relay writes large
    /// chunks), and otherwise what one read brings. `on_event` hears of
    /// peer rekeys. A protocol error is returned as an I/O error, after
    /// the data that came before it, and repeats forever.
    pub(crate) fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
        on_event: &mut dyn FnMut(RecvEvent) -> Flow,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_fill(io, cx, on_event))?;
        loop {
            while out.remaining() > 0 {
                let Some(range) = self.ready.front() else {
                    break;
                };
                let n = range.len().min(out.remaining());
                out.put_slice(&self.buf[range.start..range.start + n]);
                self.consume(n);
            }
            if out.remaining() == 0 || self.ready.is_empty() && self.fin {
                return Poll::Ready(Ok(()));
            }
            // Room left: open what else has arrived, without reading; an
            // error waits for the next call.
            if self.open_received(on_event).is_err() || self.ready.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The sending direction.
pub(crate) struct SendState {
    sealer: FrameSealer,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// The peer's generation as last seen by the receiver.
    peer_generation: u64,
    /// Rekey answers are sealed in `buf` and not all written yet.
    answers_unwritten: bool,
    /// Bytes written to the transport so far.
    written: u64,
}

impl SendState {
    pub(crate) fn new(sealer: FrameSealer) -> Self {
        SendState {
            sealer,
            buf: Vec::new(),
            pos: 0,
            peer_generation: 0,
            answers_unwritten: false,
            written: 0,
        }
    }

    pub(crate) fn sealer(&self) -> &FrameSealer {
        &self.sealer
    }

    /// Records the peer's generation and seals the rekey frames it obliges
    /// us to send (RFC 8548 3.8), as far as the send buffer has room.
    /// [`Flow::Hold`] when some are still owed: the receiver then opens
    /// nothing more until [`poll_answer`](Self::poll_answer) has written
    /// them.
    pub(crate) fn peer_rekeyed(&mut self, generation: u64) -> Flow {
        if generation > self.peer_generation {
            self.peer_generation = generation;
            self.sealer.observe_peer_generation(generation);
        }
        // Sealing an empty frame cannot fail before FINp, after which
        // nothing is owed; an error would repeat with the next write.
        let _ = self.seal_owed_rekeys(0);
        if self.answers_owed() {
            Flow::Hold
        } else {
            Flow::Go
        }
    }

    /// Rekey frames owed to the peer and not yet sealed.
    pub(crate) fn answers_owed(&self) -> bool {
        self.sealer.rekey_frames_due() > 0
    }

    /// Rekey answers owed or not yet written: the receiving side goes on
    /// sending them ([`poll_answer`](Self::poll_answer)) whether or not the
    /// application writes.
    pub(crate) fn answers_waiting(&self) -> bool {
        self.answers_unwritten || self.answers_owed()
    }

    /// Bytes written to the transport so far: whoever wrote some passes
    /// the socket's wake-up on (see `split.rs`).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Starts a rekey; the rekey frame goes out with the next write or flush
    /// (empty if need be).
    pub(crate) fn rekey(&mut self) -> io::Result<()> {
        self.sealer.initiate_rekey().map_err(protocol_error)
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn seal(&mut self, data: &[u8], fin: bool) -> io::Result<()> {
        if self.pending() == 0 {
            self.buf.clear();
            self.pos = SEND_HEADROOM;
            self.buf.resize(SEND_HEADROOM, 0);
        }
        self.sealer
            .seal(data, fin, &mut self.buf)
            .map_err(protocol_error)?;
        Ok(())
    }

    /// Seals empty frames for every owed rekey but `keep` (a data frame
    /// about to be sealed carries the last one), while the buffer is below
    /// its high-water mark: the rest stay owed, as a count.
    fn seal_owed_rekeys(&mut self, keep: u64) -> io::Result<()> {
        while self.sealer.rekey_frames_due() > keep && self.pending() < SEND_HIGH_WATER {
            self.seal(&[], false)?;
            self.answers_unwritten = true;
        }
        Ok(())
    }

    /// Writes sealed bytes until none are left or the I/O would block.
    fn poll_drain<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending() > 0 {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
            self.written += n as u64;
        }
        self.answers_unwritten = false;
        Poll::Ready(Ok(()))
    }

    /// Seals every owed frame but `keep` and writes until the buffer is
    /// below its high-water mark.
    fn poll_make_room<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        keep: u64,
    ) -> Poll<io::Result<()>> {
        loop {
            self.seal_owed_rekeys(keep)?;
            if self.pending() < SEND_HIGH_WATER {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_drain(io, cx))?;
        }
    }

    /// Sends the owed rekey answers now, without waiting for application
    /// data (RFC 8548 3.8: "immediately"). Ready when none is owed and all
    /// are written.
    pub(crate) fn poll_answer<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            self.seal_owed_rekeys(0)?;
            ready!(self.poll_drain(io, cx))?;
            if !self.answers_owed() {
                return Pin::new(&mut *io).poll_flush(cx);
            }
        }
    }

    pub(crate) fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.poll_make_room(io, cx, 1))?;
        let n = data.len().min(SEND_BATCH);
        let frame = frame_data_len(n);
        for chunk in data[..n].chunks(frame) {
            self.seal(chunk, false)?;
        }
        // Push what we can now; the rest goes with the next call. The
        // bytes are taken either way: an error here shows at the next call
        // (a caller that retried on it would send them twice).
        let _ = self.poll_drain(io, cx);
        Poll::Ready(Ok(n))
    }

    pub(crate) fn poll_flush<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(io, cx))?;
        // Flushed and idle: hold no large buffer.
        self.buf = Vec::new();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends the FINp frame, then shuts the transport's write side (TCP
    /// FIN): a half-close. `hold` queues bytes without sending them (TCP's
    /// `MSG_MORE`): the FIN then leaves in the segment of the FINp frame,
    /// as a plain close's FIN leaves alone, rather than in one more.
    pub(crate) fn poll_shutdown<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        hold: Option<crate::first_write::HoldFn<IO>>,
    ) -> Poll<io::Result<()>> {
        if !self.sealer.fin_sent() {
            // Every owed answer but one is sealed; FINp carries the last.
            ready!(self.poll_make_room(io, cx, 1))?;
            self.seal(&[], true)?;
        }
        if let Some(hold) = hold.filter(|_| self.pending() > 0) {
            // What is not queued is sent below, and takes the rest along.
            if let Ok(n) = hold(io, &self.buf[self.pos..]) {
                self.pos += n;
                self.written += n as u64;
            }
        }
        ready!(self.poll_drain(io, cx))?;
        ready!(Pin::new(&mut *io).poll_shutdown(cx))?;
        self.buf = Vec::new();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::AeadAlgorithm;
    use crate::proto::crypto;
    use crate::proto::schedule::{KeyDirection, SessionSecret};
    use tokio::io::AsyncWriteExt;

    fn keyed() -> (FrameSealer, FrameOpener) {
        let backend = crypto::default_backend();
        let mk0 = SessionSecret::dangerous_from_bytes([9; 32]).master_key(backend, &[]);
        let aead = AeadAlgorithm::ChaCha20Poly1305;
        (
            FrameSealer::dangerous_new(backend, mk0.clone(), KeyDirection::BToA, aead, 0),
            FrameOpener::dangerous_new(backend, mk0, KeyDirection::BToA, aead, 0),
        )
    }

    /// One `poll_read` into a buffer of `room` bytes.
    async fn read_once<IO: AsyncRead + Unpin>(
        recv: &mut RecvState,
        io: &mut IO,
        room: usize,
    ) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; room];
        let mut buf = ReadBuf::new(&mut out);
        std::future::poll_fn(|cx| recv.poll_read(io, cx, &mut buf, &mut |_| Flow::Go)).await?;
        let n = buf.filled().len();
        out.truncate(n);
        Ok(out)
    }

    #[tokio::test]
    async fn one_read_delivers_every_complete_frame_that_fits() {
        let (mut sealer, opener) = keyed();
        let mut wire = Vec::new();
        for (i, len) in [1000usize, 2000, 3000].into_iter().enumerate() {
            sealer.seal(&vec![i as u8; len], false, &mut wire).unwrap();
        }
        let (mut near, mut far) = tokio::io::duplex(1 << 20);
        far.write_all(&wire).await.unwrap();
        let mut recv = RecvState::new(opener, Vec::new());
        // Room for the first two frames and part of the third.
        let got = read_once(&mut recv, &mut near, 4000).await.unwrap();
        assert_eq!(got.len(), 4000);
        assert!(got[..1000].iter().all(|&b| b == 0));
        assert!(got[1000..3000].iter().all(|&b| b == 1));
        assert!(got[3000..].iter().all(|&b| b == 2));
        // The rest of the third frame, without waiting for more bytes.
        let got = read_once(&mut recv, &mut near, 1 << 16).await.unwrap();
        assert_eq!(got, vec![2; 2000]);
    }

    #[tokio::test]
    async fn data_before_a_tampered_frame_arrives_then_the_error() {
        let (mut sealer, opener) = keyed();
        let mut wire = Vec::new();
        sealer.seal(b"authentic", false, &mut wire).unwrap();
        let first = wire.len();
        sealer.seal(b"tampered", false, &mut wire).unwrap();
        wire[first + 5] ^= 1;
        let (mut near, mut far) = tokio::io::duplex(1 << 20);
        far.write_all(&wire).await.unwrap();
        let mut recv = RecvState::new(opener, Vec::new());
        let got = read_once(&mut recv, &mut near, 1 << 16).await.unwrap();
        assert_eq!(got, b"authentic");
        let err = read_once(&mut recv, &mut near, 1 << 16).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // And again: the error is sticky.
        let err = read_once(&mut recv, &mut near, 1 << 16).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn data_then_fin_then_end_and_nothing_may_follow_the_fin() {
        let (mut sealer, opener) = keyed();
        let mut wire = Vec::new();
        sealer.seal(b"last words", true, &mut wire).unwrap();
        wire.extend_from_slice(b"junk after FINp");
        let (mut near, mut far) = tokio::io::duplex(1 << 20);
        far.write_all(&wire).await.unwrap();
        let mut recv = RecvState::new(opener, Vec::new());
        let got = read_once(&mut recv, &mut near, 1 << 16).await.unwrap();
        assert_eq!(got, b"last words");
        let err = read_once(&mut recv, &mut near, 1 << 16).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_receiver_that_falls_behind_reads_more_at_a_time() {
        let (mut sealer, opener) = keyed();
        let mut wire = Vec::new();
        let frames = 40;
        for i in 0..frames {
            sealer
                .seal(&vec![i as u8; MAX_DATA], false, &mut wire)
                .unwrap();
        }
        // Everything is there at once, as in a socket the reader let fill.
        let mut io: &[u8] = &wire;
        let mut recv = RecvState::new(opener, Vec::new());
        let (mut received, mut largest) = (Vec::new(), 0);
        while received.len() < frames * MAX_DATA {
            let got = read_once(&mut recv, &mut io, 4 << 20).await.unwrap();
            assert!(recv.buf.len() <= MAX_RECV_BUF_LEN);
            largest = largest.max(got.len());
            received.extend_from_slice(&got);
        }
        let expected: Vec<u8> = (0..frames).flat_map(|i| vec![i as u8; MAX_DATA]).collect();
        assert!(received == expected, "the data, in order");
        assert_eq!(largest, MAX_RECV_BUF_LEN / MAX_FRAME_LEN * MAX_DATA);
        assert!(largest > RECV_BUF_LEN / MAX_FRAME_LEN * MAX_DATA);
    }

    /// One `poll_fill`, then the ready slices (at most `slots`), copied out.
    async fn fill_once<IO: AsyncRead + Unpin>(
        recv: &mut RecvState,
        io: &mut IO,
        slots: usize,
    ) -> io::Result<Vec<Vec<u8>>> {
        std::future::poll_fn(|cx| recv.poll_fill(io, cx, &mut |_| Flow::Go)).await?;
        let mut bufs = vec![IoSlice::new(&[]); slots];
        let n = recv.ready_slices(&mut bufs);
        let within = recv.buf.as_ptr_range();
        for b in &bufs[..n] {
            assert!(!b.is_empty(), "no empty slice is lent");
            assert!(
                within.contains(&b.as_ptr()),
                "lent in place, from the receive buffer"
            );
        }
        Ok(bufs[..n].iter().map(|b| b.to_vec()).collect())
    }

    #[tokio::test]
    async fn ready_frames_are_lent_in_place_one_slice_each_and_consumed_across_them() {
        let (mut sealer, opener) = keyed();
        let mut wire = Vec::new();
        sealer.seal(&[1; 1000], false, &mut wire).unwrap();
        sealer.seal(&[], false, &mut wire).unwrap();
        sealer.seal(&[2; 2000], false, &mut wire).unwrap();
        sealer.seal(&[3; 3000], true, &mut wire).unwrap();
        let mut io: &[u8] = &wire;
        let mut recv = RecvState::new(opener, Vec::new());
        let lent = fill_once(&mut recv, &mut io, 8).await.unwrap();
        assert_eq!(lent, [vec![1; 1000], vec![2; 2000], vec![3; 3000]]);
        // Fewer slots than frames: the first ones, in order.
        assert_eq!(
            fill_once(&mut recv, &mut io, 1).await.unwrap(),
            [vec![1; 1000]]
        );
        assert_eq!(recv.first_ready(), &[1; 1000][..]);
        // A consume that ends inside the second frame.
        recv.consume(1500);
        let lent = fill_once(&mut recv, &mut io, 8).await.unwrap();
        assert_eq!(lent, [vec![2; 1500], vec![3; 3000]]);
        recv.consume(4500);
        // Then the end of the stream, after the FINp frame.
        assert!(fill_once(&mut recv, &mut io, 8).await.unwrap().is_empty());
        assert!(recv.first_ready().is_empty());
    }

    #[tokio::test]
    async fn at_most_max_ready_frames_are_opened_ahead() {
        let (mut sealer, opener) = keyed();
        let mut wire = Vec::new();
        let frames = 3 * MAX_READY_FRAMES + 5;
        for i in 0..frames {
            sealer.seal(&[i as u8], i + 1 == frames, &mut wire).unwrap();
        }
        let mut io: &[u8] = &wire;
        let mut recv = RecvState::new(opener, Vec::new());
        let mut received = Vec::new();
        loop {
            let lent = fill_once(&mut recv, &mut io, 4 * MAX_READY_FRAMES)
                .await
                .unwrap();
            if lent.is_empty() {
                break;
            }
            assert!(lent.len() <= MAX_READY_FRAMES);
            recv.consume(lent.len());
            received.extend(lent.concat());
        }
        let expected: Vec<u8> = (0..frames).map(|i| i as u8).collect();
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn a_tampered_frame_is_reported_after_the_frames_lent_before_it() {
        let (mut sealer, opener) = keyed();
        let mut wire = Vec::new();
        sealer.seal(b"first", false, &mut wire).unwrap();
        sealer.seal(b"second", false, &mut wire).unwrap();
        let third = wire.len();
        sealer.seal(b"third", false, &mut wire).unwrap();
        wire[third + 6] ^= 1;
        let mut io: &[u8] = &wire;
        let mut recv = RecvState::new(opener, Vec::new());
        let lent = fill_once(&mut recv, &mut io, 8).await.unwrap();
        assert_eq!(lent, [b"first".to_vec(), b"second".to_vec()]);
        recv.consume(11);
        let err = fill_once(&mut recv, &mut io, 8).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_plain_receiver_delivers_the_handshake_bytes_then_reads() {
        let mut recv = PlainRecv::new(b"seen by the handshake ".to_vec());
        let mut io: &[u8] = b"then read";
        let mut got = Vec::new();
        loop {
            std::future::poll_fn(|cx| recv.poll_fill(&mut io, cx))
                .await
                .unwrap();
            let mut bufs = [IoSlice::new(&[]); 4];
            let n = recv.ready_slices(&mut bufs);
            if n == 0 {
                break;
            }
            assert_eq!(n, 1);
            // Half at a time.
            let take = bufs[0].len().div_ceil(2);
            got.extend_from_slice(&bufs[0][..take]);
            recv.consume(take);
        }
        assert_eq!(got, b"seen by the handshake then read");
    }
}
