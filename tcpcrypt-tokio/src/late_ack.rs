//! The accepting side's wait, once it has answered a late hello with the
//! late marker, for the client to acknowledge the marker before the
//! connection is reset (docs/PROTOCOL.md 3.4, rule 1). A reset sent at
//! once overtakes a marker lost on the way: the client then sees a reset
//! alone, weak evidence that a client new to this server takes for a plain
//! server's, and it falls back to plain TCP.
//!
//! The wait reads the kernel's figures for the connection (`path.rs`), so
//! it exists only where they can be read: on a TCP connection whose
//! addresses are known. It ends when nothing sent is unacknowledged, when
//! the figures cannot be read, or after [`MARKER_ACK_WAIT`].

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::path::PathProbe;

/// The longest wait for the marker's acknowledgement: a marker lost on the
/// way comes back a retransmission timeout later (200 ms and more).
pub(crate) const MARKER_ACK_WAIT: Duration = Duration::from_secs(1);

/// How often the kernel's figures are looked at while waiting.
const RECHECK: Duration = Duration::from_millis(10);

/// The wait: boxed, since almost every stream never needs it.
#[derive(Default)]
pub(crate) struct LateAck(Option<Box<State>>);

enum State {
    /// The connection the wait would read, before any marker.
    Armed(PathProbe),
    Waiting {
        probe: PathProbe,
        until: Instant,
        sleep: Pin<Box<Sleep>>,
    },
}

impl LateAck {
    /// A wait on the connection `probe` reads, for when a marker is sent
    /// (none without a probe).
    pub(crate) fn arm(&mut self, probe: Option<PathProbe>) {
        self.0 = probe.map(|p| Box::new(State::Armed(p)));
    }

    /// The marker was just written: the wait starts, if armed.
    pub(crate) fn start(&mut self) {
        if let Some(state) = self.0.as_deref_mut() {
            if let State::Armed(probe) = *state {
                let now = Instant::now();
                *state = State::Waiting {
                    probe,
                    until: now + MARKER_ACK_WAIT,
                    sleep: Box::pin(tokio::time::sleep_until(now)),
                };
            }
        }
    }

    /// Ready when no wait is running, or once the wait has ended.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(State::Waiting {
            probe,
            until,
            sleep,
        }) = self.0.as_deref_mut()
        else {
            return Poll::Ready(());
        };
        loop {
            let now = Instant::now();
            let unacked = probe.read().is_some_and(|info| info.unacked);
            if !unacked || now >= *until {
                self.0 = None;
                return Poll::Ready(());
            }
            sleep.as_mut().reset((now + RECHECK).min(*until));
            ready!(sleep.as_mut().poll(cx));
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Without figures to read there is nothing to wait for.
    #[tokio::test]
    async fn no_probe_no_wait() {
        let mut ack = LateAck::default();
        ack.arm(None);
        ack.start();
        std::future::poll_fn(|cx| ack.poll(cx)).await;
    }

    /// Bytes the peer has acknowledged end the wait at once; bytes it
    /// cannot acknowledge (its receive window closed) hold it for
    /// `MARKER_ACK_WAIT`, no longer.
    #[tokio::test]
    async fn the_wait_ends_at_the_acknowledgement_or_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut client, (_server, _)) = (client.unwrap(), accepted.unwrap());
        client.write_all(b"\xe5ENO\x01L\r\n").await.unwrap();
        let mut ack = LateAck::default();
        let started = std::time::Instant::now();
        ack.arm(PathProbe::of(&client));
        ack.start();
        std::future::poll_fn(|cx| ack.poll(cx)).await;
        assert!(
            started.elapsed() < MARKER_ACK_WAIT / 2,
            "{:?}",
            started.elapsed()
        );

        // The peer never reads: once its buffers are full, what follows
        // stays unacknowledged.
        let chunk = vec![0u8; 1 << 16];
        while tokio::time::timeout(Duration::from_millis(200), client.write_all(&chunk))
            .await
            .is_ok()
        {}
        let started = std::time::Instant::now();
        ack.arm(PathProbe::of(&client));
        ack.start();
        std::future::poll_fn(|cx| ack.poll(cx)).await;
        let waited = started.elapsed();
        assert!(
            waited >= MARKER_ACK_WAIT && waited < MARKER_ACK_WAIT * 3,
            "{waited:?}"
        );
    }
}
