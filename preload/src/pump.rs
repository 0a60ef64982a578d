//! Copying one direction of a relayed connection, holding a buffer only
//! while bytes flow: an idle connection costs no buffer memory, and a busy
//! one reuses buffers kept per thread instead of allocating them.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes moved per read and write, at first.
const BUF_LEN: usize = 128 * 1024;
/// The size a buffer doubles up to while reads keep filling it: a bulk
/// transfer moves more per system call and wakes the application less
/// often.
const MAX_BUF_LEN: usize = 1024 * 1024;
/// Buffers kept per thread for reuse.
const SPARE: usize = 2;

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

    /// Doubles the buffer (up to `MAX_BUF_LEN`) after a read filled it.
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

/// Copies `from` to `to` until `from` ends, then shuts `to` down (a
/// half-close). Returns the bytes copied. Whenever `from` has nothing to
/// give, `to` is flushed: a writer that buffers (a tcpcrypt stream whose
/// socket was full) must not sit on the tail of a response while the
/// application waits for its peer.
pub(crate) async fn pump<R, W>(mut from: R, mut to: W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Buffer(None);
    let mut total = 0u64;
    let mut unflushed = false;
    loop {
        let n = poll_fn(|cx| {
            let mut read = ReadBuf::new(buf.get());
            match Pin::new(&mut from).poll_read(cx, &mut read) {
                Poll::Pending => {
                    buf.release();
                    if unflushed {
                        match Pin::new(&mut to).poll_flush(cx) {
                            Poll::Ready(Ok(())) => unflushed = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {}
                        }
                    }
                    Poll::Pending
                }
                Poll::Ready(r) => Poll::Ready(r.map(|()| read.filled().len())),
            }
        })
        .await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buf.get()[..n]).await?;
        if n == buf.get().len() {
            buf.grow();
        }
        unflushed = true;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn copies_everything_then_half_closes() {
        let (mut a, b) = tokio::io::duplex(4096);
        let (c, mut d) = tokio::io::duplex(4096);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let copier = tokio::spawn(pump(b, c));
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(copier.await.unwrap().unwrap(), expected.len() as u64);
        assert!(got == expected);
    }

    #[tokio::test]
    async fn a_buffering_writer_is_flushed_while_the_reader_waits() {
        // The source sends a little and stays open; the destination
        // buffers until flushed. The bytes must arrive all the same.
        let (mut a, b) = tokio::io::duplex(4096);
        let (c, mut d) = tokio::io::duplex(4096);
        let copier = tokio::spawn(pump(b, tokio::io::BufWriter::new(c)));
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
    async fn a_waiting_pump_holds_no_buffer() {
        POOL.with(|p| p.borrow_mut().clear());
        let (mut a, b) = tokio::io::duplex(4096);
        let (c, _d) = tokio::io::duplex(1 << 20);
        a.write_all(b"some bytes").await.unwrap();
        let copier = tokio::spawn(pump(b, c));
        // The current-thread runtime runs the pump until it waits for more.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(POOL.with(|p| p.borrow().len()), 1, "the buffer went back");
        drop(a);
        assert_eq!(copier.await.unwrap().unwrap(), 10);
    }

    /// A destination that takes everything and notes the size of each write.
    struct Sizes(Vec<usize>);

    impl AsyncWrite for Sizes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_source_that_keeps_filling_the_buffer_gets_larger_reads() {
        let data = vec![7u8; 8 * MAX_BUF_LEN];
        let mut sizes = Sizes(Vec::new());
        let copied = pump(&data[..], &mut sizes).await.unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(sizes.0[0], BUF_LEN);
        assert_eq!(sizes.0.iter().max(), Some(&MAX_BUF_LEN));
        assert_eq!(sizes.0.iter().sum::<usize>(), data.len());
    }
}
