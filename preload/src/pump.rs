//! Copying both directions of a relayed connection. Where the source lends
//! its bytes in place (a tcpcrypt stream's decrypted frames), they go to
//! the destination in one vectored write and are never copied in user
//! space; a plain socket is read into a buffer held only while bytes flow,
//! so that an idle connection costs no buffer memory, and a busy one reuses
//! buffers kept per thread instead of allocating them.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tcpcrypt_tokio::TcpcryptStream;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// Bytes moved per read and write, at first.
const BUF_LEN: usize = 128 * 1024;
/// The size a buffer doubles up to while reads keep filling it: a bulk
/// transfer moves more per system call and wakes the application less
/// often.
const MAX_BUF_LEN: usize = 1024 * 1024;
/// Buffers kept per thread for reuse.
const SPARE: usize = 2;
/// Slices lent per vectored write: more than a tcpcrypt stream opens ahead.
const MAX_SLICES: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer taken from the pool when a read needs one and given back
/// when the read has to wait.
struct Buffer(Option<Vec<u8>>);

impl Buffer {
    fn get(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(|| {
            POOL.with(|p| p.borrow_mut().pop())
                .unwrap_or_else(|| vec![0; BUF_LEN])
        })
    }

    /// Doubles the buffer, up to `MAX_BUF_LEN`.
    fn grow(&mut self) {
        let buf = self.get();
        if buf.len() < MAX_BUF_LEN {
            let len = (2 * buf.len()).min(MAX_BUF_LEN);
            buf.resize(len, 0);
        }
    }

    fn release(&mut self) {
        if let Some(buf) = self.0.take() {
            POOL.with(|p| {
                let mut pool = p.borrow_mut();
                if pool.len() < SPARE {
                    pool.push(buf);
                }
            });
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.release();
    }
}

/// Where a direction's bytes come from: lent in place, then consumed.
pub(crate) trait Source {
    /// Lends the bytes ready to read as up to `bufs.len()` slices; returns
    /// how many, `0` at end of stream.
    fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>],
    ) -> Poll<io::Result<usize>>;

    /// Marks `n` lent bytes as read.
    fn consume(&mut self, n: usize);
}

/// Decrypted frames, lent straight from the stream's receive buffer.
impl<IO: AsyncRead + AsyncWrite + Unpin> Source for TcpcryptStream<IO> {
    fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>],
    ) -> Poll<io::Result<usize>> {
        TcpcryptStream::poll_fill_bufs(self, cx, bufs)
    }

    fn consume(&mut self, n: usize) {
        Pin::new(self).consume(n);
    }
}

/// A plain byte stream as a [`Source`]: read into a pooled buffer that
/// doubles while reads keep filling it. Writes go straight through.
pub(crate) struct Buffered<T> {
    inner: T,
    buf: Buffer,
    /// Unread bytes: `buf[start..end]`.
    start: usize,
    end: usize,
    /// The last read filled the buffer: the next one gets a larger one.
    filled: bool,
}

impl<T> Buffered<T> {
    pub(crate) fn new(inner: T) -> Self {
        Buffered {
            inner,
            buf: Buffer(None),
            start: 0,
            end: 0,
            filled: false,
        }
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> Source for Buffered<T> {
    fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>],
    ) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            if self.filled {
                self.buf.grow();
            }
            let mut read = ReadBuf::new(self.buf.get());
            match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                Poll::Pending => {
                    self.buf.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    self.filled = n == read.capacity();
                    (self.start, self.end) = (0, n);
                }
            }
        }
        match bufs.first_mut() {
            Some(slot) if self.start < self.end => {
                *slot = IoSlice::new(&self.buf.get()[self.start..self.end]);
                Poll::Ready(Ok(1))
            }
            _ => Poll::Ready(Ok(0)),
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n.min(self.end - self.start);
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One direction of a copy.
#[derive(Default)]
struct Transfer {
    copied: u64,
    /// Written since the destination was last flushed.
    unflushed: bool,
    /// The source ended and the destination was shut down.
    done: bool,
}

impl Transfer {
    /// Copies `from` to `to` until `from` ends, then shuts `to` down (a
    /// half-close). Returns the bytes copied. Whenever `from` has nothing
    /// to give, `to` is flushed: a writer that buffers (a tcpcrypt stream
    /// whose socket was full) must not sit on the tail of a response while
    /// the application waits for its peer.
    fn poll<S, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut S,
        to: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        S: Source,
        W: AsyncWrite + Unpin,
    {
        while !self.done {
            let mut bufs = [IoSlice::new(&[]); MAX_SLICES];
            let lent = match from.poll_fill_bufs(cx, &mut bufs) {
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *to).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(r) => r?,
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
            from.consume(n);
            self.copied += n as u64;
            self.unflushed = true;
        }
        Poll::Ready(Ok(self.copied))
    }
}

/// Copies `from` to `to` until `from` ends, then half-closes `to`.
#[cfg(test)]
async fn copy<S, W>(from: &mut S, to: &mut W) -> io::Result<u64>
where
    S: Source,
    W: AsyncWrite + Unpin,
{
    let mut transfer = Transfer::default();
    poll_fn(|cx| transfer.poll(cx, from, to)).await
}

/// Copies both ways between `a` and `b` until both directions have ended,
/// each half-closing its destination when its source ends. Returns the
/// bytes copied each way; an error in either direction ends both.
pub(crate) async fn copy_both<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: Source + AsyncWrite + Unpin,
    B: Source + AsyncWrite + Unpin,
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
    use std::sync::Arc;
    use tcpcrypt_tokio::{Config, Connected, TcpcryptAcceptor, TcpcryptConnector};
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
        let copier = tokio::spawn(async move { copy(&mut Buffered::new(b), &mut c).await });
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
        let copier =
            tokio::spawn(
                async move { copy_both(&mut Buffered::new(b), &mut Buffered::new(c)).await },
            );
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

    #[tokio::test]
    async fn a_buffering_writer_is_flushed_while_the_reader_waits() {
        // The source sends a little and stays open; the destination
        // buffers until flushed. The bytes must arrive all the same.
        let (mut a, b) = tokio::io::duplex(4096);
        let (c, mut d) = tokio::io::duplex(4096);
        let copier = tokio::spawn(async move {
            copy(&mut Buffered::new(b), &mut tokio::io::BufWriter::new(c)).await
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
    async fn a_waiting_copy_holds_no_buffer() {
        POOL.with(|p| p.borrow_mut().clear());
        let (mut a, b) = tokio::io::duplex(4096);
        let (mut c, _d) = tokio::io::duplex(1 << 20);
        a.write_all(b"some bytes").await.unwrap();
        let copier = tokio::spawn(async move { copy(&mut Buffered::new(b), &mut c).await });
        // The current-thread runtime runs the copy until it waits for more.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(POOL.with(|p| p.borrow().len()), 1, "the buffer went back");
        drop(a);
        assert_eq!(copier.await.unwrap().unwrap(), 10);
    }

    /// A destination that takes everything, keeps it, and notes how many
    /// bytes and slices each write carried.
    #[derive(Default)]
    struct Recorder {
        data: Vec<u8>,
        sizes: Vec<usize>,
        slices: Vec<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored_now(&[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored_now(bufs)
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

    impl Recorder {
        fn poll_write_vectored_now(&mut self, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.sizes.push(n);
            self.slices.push(bufs.len());
            for b in bufs {
                self.data.extend_from_slice(b);
            }
            Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn a_source_that_keeps_filling_the_buffer_gets_larger_reads() {
        let data = vec![7u8; 8 * MAX_BUF_LEN];
        let mut to = Recorder::default();
        let copied = copy(&mut Buffered::new(&data[..]), &mut to).await.unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(to.sizes[0], BUF_LEN);
        assert_eq!(to.sizes.iter().max(), Some(&MAX_BUF_LEN));
        assert!(to.data == data);
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
