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
    /// Queues the handshake's last message.
    pub(crate) hold: HoldFn<IO>,
    /// Sends a held message.
    pub(crate) release: PushFn<IO>,
    /// Sends a small write past Nagle's algorithm.
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
    release: release_tcp,
    push: push_tcp,
};

/// Queues `data` on `tcp` with `MSG_MORE`: it leaves with the next send,
/// when [`release_tcp`] sends it, with a FIN (`shutdown`), or at the
/// kernel's bound.
#[cfg(target_os = "linux")]
pub(crate) fn hold_tcp(tcp: &TcpStream, data: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
    tcp.try_io(tokio::io::Interest::WRITABLE, || {
        socket2::SockRef::from(tcp).send_with_flags(data, flags)
    })
}

/// Elsewhere nothing is held: the first write is pushed.
#[cfg(not(target_os = "linux"))]
pub(crate) fn hold_tcp(_: &TcpStream, _: &[u8]) -> io::Result<usize> {
    Ok(0)
}

/// [`hold_tcp`] on the write half of a split stream.
pub(crate) fn hold_write_half(
    half: &tokio::net::tcp::OwnedWriteHalf,
    data: &[u8],
) -> io::Result<usize> {
    hold_tcp(half.as_ref(), data)
}

/// Sends bytes held with `MSG_MORE`: switching `TCP_NODELAY` on sends
/// them, even when it was on already; switching it off again leaves the
/// algorithm as the application has it.
fn release_tcp(stream: &TcpStream) {
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

/// Sends what the socket holds now, past Nagle's algorithm, which holds a
/// small segment while an earlier small one is unacknowledged: switching
/// `TCP_NODELAY` on sends it, switching it off again leaves the algorithm
/// as the application has it. Nothing to do when it is on.
fn push_tcp(stream: &TcpStream) {
    if stream.nodelay().is_ok_and(|on| !on) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_nodelay(false);
    }
}

/// The state of a stream's first write.
pub(crate) struct FirstWrite<IO> {
    /// The handshake's last message waits in the kernel.
    held: bool,
    transport: Transport<IO>,
}

impl<IO> FirstWrite<IO> {
    /// After a handshake whose last message is `held` in the kernel, or
    /// was sent.
    pub(crate) fn new(held: bool, transport: Transport<IO>) -> Self {
        FirstWrite { held, transport }
    }

    /// The application waits for its peer: a held message leaves now.
    pub(crate) fn release(&mut self, io: &IO) {
        if std::mem::take(&mut self.held) {
            (self.transport.release)(io);
        }
    }

    /// Bytes of the library's own (a rekey answer) took a held message
    /// along.
    pub(crate) fn sent(&mut self) {
        self.held = false;
    }

    /// The first bytes of the application are in the kernel: they took a
    /// held message along; otherwise they are pushed past Nagle's
    /// algorithm.
    pub(crate) fn written(self, io: &IO) {
        if !self.held {
            (self.transport.push)(io);
        }
    }
}

const DONE: u8 = 0;
const HELD: u8 = 1;
const PUSH: u8 = 2;

/// [`FirstWrite`] of TCP sockets, shared by the two halves of a split
/// stream.
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
            release_tcp(tcp);
        }
    }

    /// See [`FirstWrite::sent`].
    pub(crate) fn sent(&self) {
        if self.0.load(Ordering::Relaxed) == HELD {
            let _ = self
                .0
                .compare_exchange(HELD, PUSH, Ordering::AcqRel, Ordering::Relaxed);
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
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use crate::path::PathProbe;
    use crate::proto::Tep;
    use crate::{Carriage, Config, TcpcryptAcceptor, TcpcryptStream};

    /// The kernel sends a held message after about 200 ms on loopback: a
    /// trial that took longer than this between the hold and a look at
    /// the socket (a loaded machine) shows nothing and is run again.
    const STALL: Duration = Duration::from_millis(120);
    const TRIALS: usize = 5;

    fn config() -> Arc<Config> {
        Arc::new(
            Config::builder()
                .carriage(Carriage::InBand)
                .build()
                .unwrap(),
        )
    }

    /// A connection of `listener`'s, as its server sees it.
    struct Trial {
        /// The client: connected with `request` (0-RTT data when it
        /// resumes), then reading `answer_len` bytes.
        client: JoinHandle<(TcpcryptStream, Vec<u8>)>,
        server: TcpcryptStream,
        probe: PathProbe,
        /// Taken before the server's handshake: the hold is later.
        started: Instant,
    }

    impl Trial {
        async fn new(
            listener: &TcpListener,
            client: &Arc<Config>,
            server: &Arc<Config>,
            request: &'static [u8],
            answer_len: usize,
        ) -> Trial {
            let addr = listener.local_addr().unwrap();
            let config = client.clone();
            let client = tokio::spawn(async move {
                let mut s = TcpcryptStream::connect_with_data(addr, &config, request)
                    .await
                    .unwrap();
                let mut answer = vec![0; answer_len];
                s.read_exact(&mut answer).await.unwrap();
                (s, answer)
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let probe = PathProbe::of(&tcp).unwrap();
            let started = Instant::now();
            let server = TcpcryptAcceptor::new(server.clone())
                .accept_tcp(tcp)
                .await
                .unwrap();
            assert!(server.is_encrypted());
            Trial {
                client,
                server,
                probe,
                started,
            }
        }

        /// Segments with data the server sent, and bytes it holds; `None`
        /// when the trial took too long to show anything.
        fn sent(&self) -> Option<(u32, u32)> {
            let sent = self.probe.sent().expect("tcp_info");
            (self.started.elapsed() < STALL).then_some(sent)
        }
    }

    #[tokio::test]
    async fn a_greeting_leaves_in_one_segment_with_the_handshakes_last_message() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..TRIALS {
            let mut t = Trial::new(&listener, &client, &server, b"", 5).await;
            let Some((segments, unsent)) = t.sent() else {
                continue;
            };
            assert_eq!(segments, 0, "the hello and Init2 wait for the greeting");
            assert!(unsent > 0);
            t.server.write_all(b"hello").await.unwrap();
            let Some((segments, _)) = t.sent() else {
                continue;
            };
            let (_, greeting) = t.client.await.unwrap();
            assert_eq!(greeting, b"hello");
            assert_eq!(segments, 1, "one segment for all three");
            return;
        }
        panic!("every trial took too long");
    }

    #[tokio::test]
    async fn the_answer_to_a_0rtt_request_leaves_with_the_servers_hello() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..TRIALS {
            // A connection that leaves the ticket, then one that resumes
            // with its request as 0-RTT data.
            let mut t = Trial::new(&listener, &client, &server, b"", 1).await;
            t.server.write_all(b"k").await.unwrap();
            t.client.await.unwrap();
            let mut t = Trial::new(&listener, &client, &server, b"ping\n", 5).await;
            assert!(t.server.session().unwrap().zero_rtt);
            let mut request = [0u8; 5];
            t.server.read_exact(&mut request).await.unwrap();
            assert_eq!(&request, b"ping\n");
            let Some((segments, _)) = t.sent() else {
                continue;
            };
            assert_eq!(segments, 0, "reading what is there holds on");
            t.server.write_all(b"pong\n").await.unwrap();
            let Some((segments, _)) = t.sent() else {
                continue;
            };
            let (c, answer) = t.client.await.unwrap();
            assert!(c.session().unwrap().zero_rtt);
            assert_eq!(answer, b"pong\n");
            assert_eq!(segments, 1, "the hello and the answer");
            return;
        }
        panic!("every trial took too long");
    }

    /// A server that waits for its client before it says anything: the
    /// client waits for the handshake's end, which must leave at once.
    #[tokio::test]
    async fn a_server_that_waits_for_its_client_sends_the_handshakes_end_at_once() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for split in [false, true] {
            let mut done = false;
            for _ in 0..TRIALS {
                let t = Trial::new(&listener, &client, &server, b"", 0).await;
                let mut request = [0u8; 4];
                let mut answer = [0u8; 4];
                // One look at the socket: nothing to read.
                if split {
                    let (mut r, mut w) = t.server.into_split();
                    let nothing = tokio::time::timeout(Duration::ZERO, r.read(&mut request)).await;
                    assert!(nothing.is_err(), "the client cannot have sent anything");
                    let Some((segments, 0)) =
                        t.probe.sent().filter(|_| t.started.elapsed() < STALL)
                    else {
                        continue;
                    };
                    assert_eq!(segments, 1, "released by the read half");
                    let (mut c, _) = t.client.await.unwrap();
                    c.write_all(b"ping").await.unwrap();
                    r.read_exact(&mut request).await.unwrap();
                    w.write_all(b"pong").await.unwrap();
                    c.read_exact(&mut answer).await.unwrap();
                } else {
                    let mut s = t.server;
                    let nothing = tokio::time::timeout(Duration::ZERO, s.read(&mut request)).await;
                    assert!(nothing.is_err(), "the client cannot have sent anything");
                    let Some((segments, 0)) =
                        t.probe.sent().filter(|_| t.started.elapsed() < STALL)
                    else {
                        continue;
                    };
                    assert_eq!(segments, 1, "released by the read");
                    let (mut c, _) = t.client.await.unwrap();
                    c.write_all(b"ping").await.unwrap();
                    s.read_exact(&mut request).await.unwrap();
                    s.write_all(b"pong").await.unwrap();
                    c.read_exact(&mut answer).await.unwrap();
                }
                assert_eq!((&request, &answer), (b"ping", b"pong"));
                done = true;
                break;
            }
            assert!(done, "every trial took too long");
        }
    }

    /// An empty write sends nothing: a read that finds nothing after it
    /// still sends the held message.
    #[tokio::test]
    async fn an_empty_write_is_not_the_first_write() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..TRIALS {
            let mut t = Trial::new(&listener, &client, &server, b"", 0).await;
            assert_eq!(t.server.write(&[]).await.unwrap(), 0);
            let mut buf = [0u8; 1];
            let nothing = tokio::time::timeout(Duration::ZERO, t.server.read(&mut buf)).await;
            assert!(nothing.is_err());
            let Some(sent) = t.sent() else {
                continue;
            };
            assert_eq!(sent, (1, 0), "released by the read");
            t.client.await.unwrap();
            return;
        }
        panic!("every trial took too long");
    }

    #[tokio::test]
    async fn a_flush_sends_the_handshakes_end() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..TRIALS {
            let mut t = Trial::new(&listener, &client, &server, b"", 0).await;
            t.server.flush().await.unwrap();
            let Some(sent) = t.sent() else {
                continue;
            };
            assert_eq!(sent, (1, 0));
            t.client.await.unwrap();
            return;
        }
        panic!("every trial took too long");
    }

    /// FINp and the FIN leave in one segment, through the stream and
    /// through a write half, as a plain close's FIN leaves alone.
    #[tokio::test]
    async fn finp_and_the_fin_leave_in_one_segment() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for split in [false, true] {
            let mut t = Trial::new(&listener, &client, &server, b"", 4).await;
            t.server.write_all(b"pong").await.unwrap();
            let (mut c, answer) = t.client.await.unwrap();
            assert_eq!(answer, b"pong");
            let before = t.probe.segments_out().unwrap();
            if split {
                let (_r, mut w) = t.server.into_split();
                w.shutdown().await.unwrap();
            } else {
                t.server.shutdown().await.unwrap();
            }
            let after = t.probe.segments_out().unwrap();
            assert_eq!(after - before, 1, "split: {split}");
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
    }

    /// A handshake of two messages (B picks another TEP than the one of
    /// A's pipelined Init1, so Init2 follows A's second Init1): nothing is
    /// held, since the first write would wait behind Nagle's algorithm for
    /// the hello's acknowledgement.
    #[tokio::test]
    async fn after_a_handshake_of_two_messages_nothing_is_held() {
        let client = config();
        let server = Arc::new(
            Config::builder()
                .carriage(Carriage::InBand)
                .teps(vec![Tep::EcdheCurve25519, Tep::EcdheP256])
                .build()
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Trial::new(&listener, &client, &server, b"", 0).await;
        assert_eq!(t.server.session().unwrap().tep, Tep::EcdheP256);
        assert_eq!(t.probe.sent(), Some((2, 0)), "the hello, then Init2");
        t.client.await.unwrap();
    }

    /// An application that neither reads nor writes: the kernel sends the
    /// held message at its bound, and the client's handshake completes.
    #[tokio::test]
    async fn an_idle_server_holds_the_handshakes_end_only_for_a_while() {
        let (client, server) = (config(), config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Trial::new(&listener, &client, &server, b"", 0).await;
        let (c, _) = tokio::time::timeout(Duration::from_secs(5), t.client)
            .await
            .expect("the handshake completes")
            .unwrap();
        assert!(c.is_encrypted());
        assert!(
            t.started.elapsed() >= Duration::from_millis(150),
            "held for the kernel's bound, {:?}",
            t.started.elapsed()
        );
        assert_eq!(t.probe.sent(), Some((1, 0)));
    }

    /// A held message leaves once, at the first release; the first write
    /// after a release is pushed past Nagle's algorithm, one that took a
    /// held message along is not, nor one after the library's own bytes
    /// took it.
    #[tokio::test]
    async fn a_release_sends_once_and_the_first_write_after_it_is_pushed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RELEASES: AtomicUsize = AtomicUsize::new(0);
        static PUSHES: AtomicUsize = AtomicUsize::new(0);
        let transport = super::Transport {
            hold: |_: &TcpStream, _: &[u8]| Ok(0),
            release: |_: &TcpStream| {
                RELEASES.fetch_add(1, Ordering::Relaxed);
            },
            push: |_: &TcpStream| {
                PUSHES.fetch_add(1, Ordering::Relaxed);
            },
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let counts = || {
            (
                RELEASES.load(Ordering::Relaxed),
                PUSHES.load(Ordering::Relaxed),
            )
        };
        let mut first = super::FirstWrite::new(true, transport);
        first.release(&s);
        first.release(&s);
        assert_eq!(counts(), (1, 0));
        first.written(&s);
        assert_eq!(counts(), (1, 1));
        super::FirstWrite::new(true, transport).written(&s);
        assert_eq!(counts(), (1, 1));
        let mut first = super::FirstWrite::new(true, transport);
        first.sent();
        first.release(&s);
        first.written(&s);
        assert_eq!(counts(), (1, 2));
    }
}
