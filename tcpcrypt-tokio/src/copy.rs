//! Copying between streams, as a proxy or a relay does, without copying
//! in user space what a tcpcrypt stream has decrypted: its frames go from
//! the receive buffer to the destination in one vectored write (`writev`).
//! A plain source is read into a buffer held only while bytes flow, so an
//! idle connection costs no buffer memory.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::record::{MAX_READY_FRAMES, PlainRecv};

/// An [`AsyncBufRead`] that lends everything it has at hand at once, as
/// several slices: a [`TcpcryptStream`](crate::TcpcryptStream) lends each
/// decrypted frame in place. [`copy`] and [`copy_bidirectional`] hand the
/// slices to one vectored write.
///
/// ```no_run
/// use std::future::poll_fn;
/// use std::io::IoSlice;
/// use std::pin::Pin;
/// use tokio::io::{AsyncBufRead, AsyncWrite};
/// use tcpcrypt_tokio::{TcpcryptStream, VectoredBufRead};
///
/// /// Moves one batch of decrypted data to `out`; `0` at end of stream.
/// async fn forward(
///     stream: &mut TcpcryptStream,
///     out: &mut tokio::net::TcpStream,
/// ) -> std::io::Result<usize> {
///     let n = poll_fn(|cx| {
///         let mut bufs = [IoSlice::new(&[]); 16];
///         let k = std::task::ready!(stream.poll_fill_bufs(cx, &mut bufs))?;
///         if k == 0 {
///             return std::task::Poll::Ready(Ok(0));
///         }
///         Pin::new(&mut *out).poll_write_vectored(cx, &bufs[..k])
///     })
///     .await?;
///     Pin::new(stream).consume(n);
///     Ok(n)
/// }
/// ```
pub trait VectoredBufRead: AsyncBufRead + Unpin {
    /// Lends the data ready to read, in order, as many slices as `bufs`
    /// holds, none empty. Returns how many were filled, `0` at end of
    /// stream; follow with [`consume`](AsyncBufRead::consume) of the bytes
    /// used. Errors are those of `poll_read`.
    fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>],
    ) -> Poll<io::Result<usize>>;
}

/// A plain byte stream (a `TcpStream`, say) as a [`VectoredBufRead`]: read
/// into a buffer taken from a per-thread pool while bytes flow and given
/// back when the stream has none, which doubles (to about 1 MiB) while
/// reads keep filling it. Writes go straight through.
pub struct PlainSource<T> {
    io: T,
    recv: PlainRecv,
}

impl<T> PlainSource<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        PlainSource {
            io,
            recv: PlainRecv::new(Vec::new()),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The wrapped stream; bytes read but not yet consumed are lost.
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PlainSource<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.recv.poll_read(&mut this.io, cx, buf)
    }
}

impl<T: AsyncRead + Unpin> AsyncBufRead for PlainSource<T> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.recv.poll_fill(&mut this.io, cx))?;
        Poll::Ready(Ok(this.recv.pending()))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().recv.consume(amt);
    }
}

impl<T: AsyncRead + Unpin> VectoredBufRead for PlainSource<T> {
    fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.recv.poll_fill(&mut self.io, cx))?;
        Poll::Ready(Ok(self.recv.ready_slices(bufs)))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PlainSource<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Slices lent per vectored write: every frame a stream opens ahead.
const MAX_SLICES: usize = 2 * MAX_READY_FRAMES;

/// One direction of a copy.
#[derive(Default)]
struct Transfer {
    copied: u64,
    /// The source ended and the destination was shut down.
    done: bool,
}

impl Transfer {
    fn poll<S, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut S,
        to: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        S: VectoredBufRead + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        while !self.done {
            let mut bufs = [IoSlice::new(&[]); MAX_SLICES];
            let lent = match from.poll_fill_bufs(cx, &mut bufs) {
                Poll::Pending => {
                    // A writer that buffers must not sit on what it holds
                    // while the other side waits for it: the tail of a
                    // response a tcpcrypt stream kept when its socket was
                    // full, or the answer to a peer's rekey the other
                    // direction could not send.
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(lent)) => lent,
                Poll::Ready(Err(e)) => {
                    // A source that failed (a reset) gave its bytes before
                    // the failure: they are handed on as far as the
                    // destination takes them now, then the error.
                    let _ = Pin::new(&mut *to).poll_flush(cx);
                    return Poll::Ready(Err(e));
                }
            };
            if lent == 0 {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                break;
            }
            let n = ready!(Pin::new(&mut *to).poll_write_vectored(cx, &bufs[..lent]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *from).consume(n);
            self.copied += n as u64;
        }
        Poll::Ready(Ok(self.copied))
    }
}

/// Copies `from` to `to` until `from` ends, then shuts `to` down (for a
/// tcpcrypt stream: the FINp frame, then TCP FIN). Returns the bytes
/// copied. Whenever `from` has nothing to give, `to` is flushed.
pub async fn copy<S, W>(from: &mut S, to: &mut W) -> io::Result<u64>
where
    S: VectoredBufRead + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut transfer = Transfer::default();
    poll_fn(|cx| transfer.poll(cx, from, to)).await
}

/// Copies both ways between `a` and `b` until both directions have ended,
/// each shutting its destination down when its source ends (a half-close
/// travels through), as `tokio::io::copy_bidirectional` does, but without
/// copying a tcpcrypt stream's decrypted data in user space. Returns the
/// bytes copied from `a` to `b` and from `b` to `a`; an error in either
/// direction ends both.
///
/// ```no_run
/// use std::sync::Arc;
/// use tokio::net::TcpStream;
/// use tcpcrypt_tokio::{Config, PlainSource, TcpcryptListener};
///
/// # async fn run() -> std::io::Result<()> {
/// // An encrypting front for a plain server.
/// let config = Arc::new(Config::default());
/// let mut listener = TcpcryptListener::bind("0.0.0.0:8080", &config).await?;
/// loop {
///     let (mut client, _peer) = listener.accept().await?;
///     tokio::spawn(async move {
///         let backend = TcpStream::connect("127.0.0.1:8081").await?;
///         tcpcrypt_tokio::copy_bidirectional(&mut client, &mut PlainSource::new(backend)).await
///     });
/// }
/// # }
/// ```
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: VectoredBufRead + AsyncWrite + ?Sized,
    B: VectoredBufRead + AsyncWrite + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Transfer::default(), Transfer::default());
    poll_fn(|cx| {
        let forth = a_to_b.poll(cx, a, b)?;
        let back = b_to_a.poll(cx, b, a)?;
        match (forth, back) {
            (Poll::Ready(forth), Poll::Ready(back)) => Poll::Ready(Ok((forth, back))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MAX_RECV_BUF_LEN, RECV_BUF_LEN};
    use crate::{Config, Connected, TcpcryptAcceptor, TcpcryptConnector};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn copies_everything_then_half_closes() {
        let (mut a, b) = tokio::io::duplex(4096);
        let (mut c, mut d) = tokio::io::duplex(4096);
        let data = pattern(1_000_000);
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let copier = tokio::spawn(async move { copy(&mut PlainSource::new(b), &mut c).await });
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(copier.await.unwrap().unwrap(), expected.len() as u64);
        assert!(got == expected);
    }

    #[tokio::test]
    async fn both_directions_end_independently() {
        let (mut a, b) = tokio::io::duplex(4096);
        let (c, mut d) = tokio::io::duplex(4096);
        let copier = tokio::spawn(async move {
            copy_bidirectional(&mut PlainSource::new(b), &mut PlainSource::new(c)).await
        });
        // One way ends first; the other still flows, then ends.
        a.write_all(b"request").await.unwrap();
        a.shutdown().await.unwrap();
        let mut request = Vec::new();
        d.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        d.write_all(b"response").await.unwrap();
        d.shutdown().await.unwrap();
        let mut response = Vec::new();
        a.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, b"response");
        assert_eq!(copier.await.unwrap().unwrap(), (7, 8));
    }

    /// A source that gives some bytes, then fails (a reset).
    struct ThenReset(Option<&'static [u8]>);

    impl AsyncRead for ThenReset {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.take() {
                Some(bytes) => {
                    buf.put_slice(bytes);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }

    #[tokio::test]
    async fn bytes_before_a_source_error_are_flushed_before_the_error() {
        let (c, mut d) = tokio::io::duplex(4096);
        let mut to = tokio::io::BufWriter::new(c);
        let mut from = PlainSource::new(ThenReset(Some(b"the last words")));
        let err = copy(&mut from, &mut to).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        drop(to);
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"the last words");
    }

    #[tokio::test]
    async fn a_buffering_writer_is_flushed_while_the_reader_waits() {
        // The source sends a little and stays open; the destination
        // buffers until flushed. The bytes must arrive all the same.
        let (mut a, b) = tokio::io::duplex(4096);
        let (c, mut d) = tokio::io::duplex(4096);
        let copier = tokio::spawn(async move {
            copy(&mut PlainSource::new(b), &mut tokio::io::BufWriter::new(c)).await
        });
        a.write_all(b"the tail of a response").await.unwrap();
        let mut got = [0u8; 22];
        tokio::time::timeout(std::time::Duration::from_secs(5), d.read_exact(&mut got))
            .await
            .expect("flushed while the source waits")
            .unwrap();
        assert_eq!(&got, b"the tail of a response");
        drop(a);
        assert_eq!(copier.await.unwrap().unwrap(), 22);
    }

    #[tokio::test]
    async fn a_waiting_plain_source_holds_no_buffer() {
        let (mut a, b) = tokio::io::duplex(4096);
        let mut source = PlainSource::new(b);
        a.write_all(b"some bytes").await.unwrap();
        let got = poll_fn(|cx| {
            Pin::new(&mut source)
                .poll_fill_buf(cx)
                .map_ok(|b| b.to_vec())
        })
        .await
        .unwrap();
        assert_eq!(got, b"some bytes");
        assert!(
            source.recv.buffer_len() >= RECV_BUF_LEN,
            "a buffer while reading"
        );
        Pin::new(&mut source).consume(got.len());
        // Nothing more to read: the buffer goes back.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut source).poll_fill_buf(&mut cx).is_pending());
        assert_eq!(source.recv.buffer_len(), 0, "no buffer while waiting");
    }

    /// A destination that takes everything, keeps it, and notes how many
    /// bytes and slices each write carried.
    #[derive(Default)]
    struct Recorder {
        data: Vec<u8>,
        sizes: Vec<usize>,
        slices: Vec<usize>,
    }

    impl Recorder {
        fn take(&mut self, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.sizes.push(n);
            self.slices.push(bufs.len());
            for b in bufs {
                self.data.extend_from_slice(b);
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.take(&[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.take(bufs)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_plain_source_that_keeps_filling_the_buffer_gets_larger_reads() {
        let data = pattern(8 * MAX_RECV_BUF_LEN);
        let mut to = Recorder::default();
        let copied = copy(&mut PlainSource::new(&data[..]), &mut to)
            .await
            .unwrap();
        assert_eq!(copied, data.len() as u64);
        assert!(to.data == data);
        assert_eq!(to.sizes[0], RECV_BUF_LEN);
        assert_eq!(to.sizes.iter().max(), Some(&MAX_RECV_BUF_LEN));
    }

    #[tokio::test]
    async fn decrypted_frames_leave_in_vectored_writes() {
        let config = Arc::new(Config::default());
        // Room for everything, so that frames pile up before the copy runs.
        let (a, b) = tokio::io::duplex(8 << 20);
        let data = pattern(3_000_000);
        let sent = data.clone();
        let acceptor = TcpcryptAcceptor::new(config.clone());
        let server = tokio::spawn(async move {
            let mut s = acceptor.accept(b).await.unwrap();
            s.write_all(&sent).await.unwrap();
            s.shutdown().await.unwrap();
            s
        });
        let Connected::Stream(mut stream) =
            TcpcryptConnector::new(config).connect(a).await.unwrap()
        else {
            panic!("not encrypted");
        };
        let _server = server.await.unwrap();
        let mut to = Recorder::default();
        let copied = copy(&mut stream, &mut to).await.unwrap();
        assert_eq!(copied, data.len() as u64);
        assert!(to.data == data, "the data, in order");
        assert!(
            to.slices.iter().any(|&n| n > 1),
            "several frames per write: {:?}",
            to.slices
        );
    }
}
