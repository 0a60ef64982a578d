//! Owned read and write halves of a `TcpcryptStream<TcpStream>` that share
//! no lock: each owns its half of the socket and its half of the keys. The
//! only thing they share is the peer's key generation, an atomic, so that
//! the write half can answer a peer's rekey.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::copy::VectoredBufRead;
use crate::error::FallbackReason;
use crate::proto::SessionInfo;
use crate::record::{PlainRecv, RecvEvent, RecvState, SendState};
use crate::stream::{Mode, TcpcryptStream};

/// The read half of a split [`TcpcryptStream`].
pub struct ReadHalf {
    io: OwnedReadHalf,
    inner: ReadInner,
    info: Option<Arc<SessionInfo>>,
    peer_generation: Arc<AtomicU64>,
}

enum ReadInner {
    Plain(PlainRecv),
    Encrypted(Box<RecvState>),
}

/// The write half of a split [`TcpcryptStream`].
pub struct WriteHalf {
    io: OwnedWriteHalf,
    send: Option<Box<SendState>>,
    info: Option<Arc<SessionInfo>>,
    fallback: Option<FallbackReason>,
    peer_generation: Arc<AtomicU64>,
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
    let peer_generation = Arc::new(AtomicU64::new(0));
    match stream.mode {
        Mode::Plain { recv, reason } => (
            ReadHalf {
                io: r,
                inner: ReadInner::Plain(recv),
                info: None,
                peer_generation: peer_generation.clone(),
            },
            WriteHalf {
                io: w,
                send: None,
                info: None,
                fallback: Some(reason),
                peer_generation,
            },
        ),
        Mode::Encrypted(e) => {
            let e = *e;
            (
                ReadHalf {
                    io: r,
                    inner: ReadInner::Encrypted(Box::new(e.recv)),
                    info: Some(e.info.clone()),
                    peer_generation: peer_generation.clone(),
                },
                WriteHalf {
                    io: w,
                    send: Some(Box::new(e.send)),
                    info: Some(e.info),
                    fallback: None,
                    peer_generation,
                },
            )
        }
    }
}

impl ReadHalf {
    /// The session, when encrypted.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.info.as_deref()
    }
}

impl WriteHalf {
    /// The session, when encrypted.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.info.as_deref()
    }

    /// Why the stream is plain, when it is.
    pub fn fallback_reason(&self) -> Option<&FallbackReason> {
        self.fallback.as_ref()
    }

    /// Starts a rekey; see [`TcpcryptStream::rekey`].
    pub fn rekey(&mut self) -> io::Result<()> {
        match &mut self.send {
            Some(s) => s.rekey(),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the stream is not encrypted",
            )),
        }
    }

    /// Hands the sealer any rekey the read half has seen.
    fn sync(&mut self) {
        if let Some(s) = &mut self.send {
            s.peer_rekeyed(self.peer_generation.load(Ordering::Acquire));
        }
    }
}

impl ReadHalf {
    /// Makes data ready to read; none ready afterwards means end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            ReadInner::Plain(recv) => recv.poll_fill(&mut self.io, cx),
            ReadInner::Encrypted(recv) => {
                let generation = &self.peer_generation;
                recv.poll_fill(&mut self.io, cx, &mut |ev| match ev {
                    RecvEvent::PeerRekeyed(g) => generation.store(g, Ordering::Release),
                })
            }
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.inner {
            ReadInner::Plain(recv) => recv.poll_read(&mut this.io, cx, buf),
            ReadInner::Encrypted(recv) => {
                let generation = &this.peer_generation;
                recv.poll_read(&mut this.io, cx, buf, &mut |ev| match ev {
                    RecvEvent::PeerRekeyed(g) => generation.store(g, Ordering::Release),
                })
            }
        }
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
        self.sync();
        let this = &mut *self;
        match &mut this.send {
            Some(s) => s.poll_write(&mut this.io, cx, data),
            None => Pin::new(&mut this.io).poll_write(cx, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sync();
        let this = &mut *self;
        match &mut this.send {
            Some(s) => s.poll_flush(&mut this.io, cx),
            None => Pin::new(&mut this.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sync();
        let this = &mut *self;
        match &mut this.send {
            Some(s) => s.poll_shutdown(&mut this.io, cx),
            None => Pin::new(&mut this.io).poll_shutdown(cx),
        }
    }
}
