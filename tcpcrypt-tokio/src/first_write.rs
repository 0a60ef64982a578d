//! The accepting side's first application bytes (docs/PROTOCOL.md,
//! section 4). Its handshake ends with a message of its own (Init2, or its
//! resumption hello). Sent alone, that message costs a segment, and the
//! first application bytes then wait behind Nagle's algorithm for its
//! acknowledgement, which a peer with nothing to send delays. So the
//! message is queued in the kernel without being sent (`MSG_MORE`) and
//! leaves:
//!
//! * with the application's first write, in one segment (a greeting, the
//!   answer to a 0-RTT request);
//! * when the application waits for its peer (a read finds nothing, a
//!   flush): the peer may be waiting for that message; the first write then
//!   goes past Nagle's algorithm;
//! * at the latest at the kernel's bound for held data (one retransmission
//!   timeout: at least 200 ms), for an application that does neither.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::net::TcpStream;

/// What a transport does to send at once what it holds. Set for TCP
/// sockets.
pub(crate) type PushFn<IO> = fn(&IO);

/// Queues bytes on a transport without sending them: returns how many were
/// queued. Set for TCP sockets.
pub(crate) type HoldFn<IO> = fn(&IO, &[u8]) -> io::Result<usize>;

/// What a transport does for its first write. Set for TCP sockets.
pub(crate) struct Transport<IO> {
    pub(crate) hold: HoldFn<IO>,
    pub(crate) push: PushFn<IO>,
}

// Function pointers whatever `IO` is: a derive would ask `IO: Copy`.
impl<IO> Clone for Transport<IO> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<IO> Copy for Transport<IO> {}

/// The first write of TCP sockets.
pub(crate) const TCP: Transport<TcpStream> = Transport {
    hold: hold_tcp,
    push: push_tcp,
};

/// Queues `data` on `tcp` with `MSG_MORE`: it leaves with the next send,
/// when [`push_tcp`] pushes it, or at the kernel's bound.
#[cfg(target_os = "linux")]
fn hold_tcp(tcp: &TcpStream, data: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
    tcp.try_io(tokio::io::Interest::WRITABLE, || {
        socket2::SockRef::from(tcp).send_with_flags(data, flags)
    })
}

/// Elsewhere nothing is held: the first write is pushed.
#[cfg(not(target_os = "linux"))]
fn hold_tcp(_: &TcpStream, _: &[u8]) -> io::Result<usize> {
    Ok(0)
}

/// Sends what the socket holds now, past Nagle's algorithm, which holds a
/// small segment while an earlier small one is unacknowledged. Switching
/// `TCP_NODELAY` on sends it, held bytes included (even when it was on
/// already); switching it off again leaves the algorithm as the
/// application has it.
pub(crate) fn push_tcp(stream: &TcpStream) {
    match stream.nodelay() {
        Ok(true) => {
            let _ = stream.set_nodelay(true);
        }
        Ok(false) => {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_nodelay(false);
        }
        Err(_) => {}
    }
}

/// The state of a stream's first write.
pub(crate) struct FirstWrite<IO> {
    /// The handshake's last message waits in the kernel.
    held: bool,
    push: PushFn<IO>,
}

impl<IO> FirstWrite<IO> {
    /// After a handshake whose last message is `held` in the kernel, or
    /// was sent alone.
    pub(crate) fn new(held: bool, push: PushFn<IO>) -> Self {
        FirstWrite { held, push }
    }

    /// The application waits for its peer: a held message leaves now.
    pub(crate) fn release(&mut self, io: &IO) {
        if std::mem::take(&mut self.held) {
            (self.push)(io);
        }
    }

    /// The first write is in the kernel: it took a held message along;
    /// otherwise it is pushed past Nagle's algorithm.
    pub(crate) fn written(self, io: &IO) {
        if !self.held {
            (self.push)(io);
        }
    }
}

const DONE: u8 = 0;
const HELD: u8 = 1;
const PUSH: u8 = 2;

/// [`FirstWrite`] shared by the two halves of a split stream.
pub(crate) struct SharedFirstWrite(AtomicU8);

impl SharedFirstWrite {
    pub(crate) fn new<IO>(first: Option<FirstWrite<IO>>) -> Self {
        SharedFirstWrite(AtomicU8::new(match first {
            None => DONE,
            Some(f) if f.held => HELD,
            Some(_) => PUSH,
        }))
    }

    /// See [`FirstWrite::release`].
    pub(crate) fn release(&self, tcp: &TcpStream) {
        if self.0.load(Ordering::Relaxed) == HELD
            && self
                .0
                .compare_exchange(HELD, PUSH, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            push_tcp(tcp);
        }
    }

    /// See [`FirstWrite::written`].
    pub(crate) fn written(&self, tcp: &TcpStream) {
        if self.0.load(Ordering::Relaxed) != DONE && self.0.swap(DONE, Ordering::AcqRel) == PUSH {
            push_tcp(tcp);
        }
    }

    /// The stream's end (FINp and FIN) is being sent: nothing is held
    /// back any more.
    pub(crate) fn done(&self) {
        self.0.store(DONE, Ordering::Release);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use crate::path::PathProbe;
    use crate::{Carriage, Config, TcpcryptAcceptor, TcpcryptStream};

    fn config() -> Arc<Config> {
        Arc::new(
            Config::builder()
                .carriage(Carriage::InBand)
                .build()
                .unwrap(),
        )
    }

    /// A client of `listener` connecting with `request` (0-RTT data when
    /// it resumes) and reading `answer_len` bytes; the server's accepted
    /// stream and the probe of its socket.
    async fn connection(
        listener: &TcpListener,
        client: &Arc<Config>,
        server: &Arc<Config>,
        request: &'static [u8],
        answer_len: usize,
    ) -> (
        JoinHandle<(TcpcryptStream, Vec<u8>)>,
        TcpcryptStream,
        PathProbe,
    ) {
        let addr = listener.local_addr().unwrap();
        let client = client.clone();
        let task = tokio::spawn(async move {
            let mut s = TcpcryptStream::connect_with_data(addr, &client, request)
                .await
                .unwrap();
            let mut answer = vec![0; answer_len];
            s.read_exact(&mut answer).await.unwrap();
            (s, answer)
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let probe = PathProbe::of(&tcp).unwrap();
        let stream = TcpcryptAcceptor::new(server.clone())
            .accept_tcp(tcp)
            .await
            .unwrap();
        assert!(stream.is_encrypted());
        (task, stream, probe)
    }

    fn data_segments(probe: &PathProbe) -> u32 {
        probe.sent().expect("tcp_info").0
    }

    #[tokio::test]
    async fn a_greeting_leaves_in_one_segment_with_the_handshakes_last_message() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (task, mut s, probe) = connection(&listener, &client, &server, b"", 5).await;
        let (segments, unsent) = probe.sent().unwrap();
        assert_eq!(segments, 0, "the hello and Init2 wait for the greeting");
        assert!(unsent > 0);
        s.write_all(b"hello").await.unwrap();
        let (_, greeting) = task.await.unwrap();
        assert_eq!(greeting, b"hello");
        assert_eq!(data_segments(&probe), 1, "one segment for all three");
    }

    #[tokio::test]
    async fn the_answer_to_a_0rtt_request_leaves_with_the_servers_hello() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The first connection leaves the ticket.
        let (task, mut s, _) = connection(&listener, &client, &server, b"", 1).await;
        s.write_all(b"k").await.unwrap();
        task.await.unwrap();
        // The second resumes, with its request as 0-RTT data.
        let (task, mut s, probe) = connection(&listener, &client, &server, b"ping\n", 5).await;
        assert!(s.session().unwrap().zero_rtt);
        let mut request = [0u8; 5];
        s.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"ping\n");
        assert_eq!(data_segments(&probe), 0, "reading what is there holds on");
        s.write_all(b"pong\n").await.unwrap();
        let (c, answer) = task.await.unwrap();
        assert!(c.session().unwrap().zero_rtt);
        assert_eq!(answer, b"pong\n");
        assert_eq!(data_segments(&probe), 1, "the hello and the answer");
    }

    /// A server that waits for its client before it says anything: the
    /// client waits for the handshake's end, which must leave at once.
    #[tokio::test]
    async fn a_server_that_waits_for_its_client_sends_the_handshakes_end_at_once() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for split in [false, true] {
            let (task, s, probe) = connection(&listener, &client, &server, b"", 0).await;
            let mut request = [0u8; 4];
            // One look at the socket: nothing to read.
            if split {
                let (mut r, mut w) = s.into_split();
                let nothing = tokio::time::timeout(Duration::ZERO, r.read(&mut request)).await;
                assert!(nothing.is_err(), "the client cannot have sent anything");
                assert_eq!(data_segments(&probe), 1, "released by the read half");
                let (mut c, _) = task.await.unwrap();
                c.write_all(b"ping").await.unwrap();
                r.read_exact(&mut request).await.unwrap();
                w.write_all(b"pong").await.unwrap();
                let mut answer = [0u8; 4];
                c.read_exact(&mut answer).await.unwrap();
                assert_eq!(&answer, b"pong");
            } else {
                let mut s = s;
                let nothing = tokio::time::timeout(Duration::ZERO, s.read(&mut request)).await;
                assert!(nothing.is_err(), "the client cannot have sent anything");
                assert_eq!(data_segments(&probe), 1, "released by the read");
                let (mut c, _) = task.await.unwrap();
                c.write_all(b"ping").await.unwrap();
                s.read_exact(&mut request).await.unwrap();
                s.write_all(b"pong").await.unwrap();
                let mut answer = [0u8; 4];
                c.read_exact(&mut answer).await.unwrap();
                assert_eq!(&answer, b"pong");
            }
            assert_eq!(&request, b"ping");
        }
    }

    #[tokio::test]
    async fn a_flush_sends_the_handshakes_end() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (task, mut s, probe) = connection(&listener, &client, &server, b"", 0).await;
        s.flush().await.unwrap();
        assert_eq!(data_segments(&probe), 1);
        task.await.unwrap();
    }

    /// An application that neither reads nor writes: the kernel sends the
    /// held message at its bound, and the client's handshake completes.
    #[tokio::test]
    async fn an_idle_server_holds_the_handshakes_end_only_for_a_while() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (task, s, probe) = connection(&listener, &client, &server, b"", 0).await;
        let t = std::time::Instant::now();
        let (c, _) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the handshake completes")
            .unwrap();
        assert!(c.is_encrypted());
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "held for the kernel's bound, {:?}",
            t.elapsed()
        );
        assert_eq!(data_segments(&probe), 1);
        drop(s);
    }

    /// A held message leaves once, at the first release; the first write
    /// after a release is pushed past Nagle's algorithm, one that took a
    /// held message along is not.
    #[tokio::test]
    async fn a_release_pushes_once_and_the_first_write_after_it_is_pushed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static PUSHES: AtomicUsize = AtomicUsize::new(0);
        fn count(_: &TcpStream) {
            PUSHES.fetch_add(1, Ordering::Relaxed);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut first = super::FirstWrite::new(true, count);
        first.release(&s);
        first.release(&s);
        assert_eq!(PUSHES.load(Ordering::Relaxed), 1);
        first.written(&s);
        assert_eq!(PUSHES.load(Ordering::Relaxed), 2);
        super::FirstWrite::new(true, count).written(&s);
        assert_eq!(PUSHES.load(Ordering::Relaxed), 2);
    }
}
