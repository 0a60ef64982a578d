//! The accepting side's wait, once it has answered a late hello with the
//! late marker, for the client to acknowledge the marker before the
//! connection is reset (docs/PROTOCOL.md 3.4, rule 1). A reset sent at
//! once overtakes a marker lost on the way: the client then sees a reset
//! alone, weak evidence that a client new to this server takes for a plain
//! server's, and it falls back to plain TCP.
//!
//! The wait reads the kernel's figures for the connection (`path.rs`), so
//! it exists only where they can be read: on a TCP connection whose
//! addresses are known, on Linux 5.4 or later. It ends when nothing sent
//! is unacknowledged, when the figures cannot be read, or at its bound:
//! long enough for the marker to be sent again once on this path (two
//! retransmission timeouts and a round trip), at least [`MARKER_ACK_WAIT`]
//! and at most [`MARKER_ACK_MAX`]. Writes fail from the marker on: the
//! client has given the connection up.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::path::PathProbe;

/// The shortest bound of the wait for the marker's acknowledgement: a
/// marker lost on the way comes back a retransmission timeout later (200
/// ms and more).
pub(crate) const MARKER_ACK_WAIT: Duration = Duration::from_secs(1);

/// The longest bound, whatever the path: the reset is not put off for
/// longer than a handshake may last.
pub(crate) const MARKER_ACK_MAX: Duration = Duration::from_secs(5);

/// How often the kernel's figures are looked at while waiting: every half
/// round trip, within these limits.
const RECHECK_MIN: Duration = Duration::from_millis(10);
const RECHECK_MAX: Duration = Duration::from_millis(100);

/// The wait: boxed, since almost every stream never needs it.
#[derive(Default)]
pub(crate) struct LateAck(Option<Box<State>>);

enum State {
    /// The connection the wait would read, before any marker.
    Armed(PathProbe),
    Waiting {
        probe: PathProbe,
        until: Instant,
        recheck: Duration,
        sleep: Pin<Box<Sleep>>,
    },
}

impl LateAck {
    /// A wait on the connection `probe` reads, for when a marker is sent
    /// (none without a probe).
    pub(crate) fn arm(&mut self, probe: Option<PathProbe>) {
        self.0 = probe.map(|p| Box::new(State::Armed(p)));
    }

    /// Whether a wait is armed or running.
    pub(crate) fn is_armed(&self) -> bool {
        self.0.is_some()
    }

    /// Whether a wait is running: the marker was sent and the reset is
    /// still to come.
    pub(crate) fn is_waiting(&self) -> bool {
        matches!(self.0.as_deref(), Some(State::Waiting { .. }))
    }

    /// The marker was just written: the wait starts, if armed, bounded by
    /// the path's figures as they are now.
    pub(crate) fn start(&mut self) {
        if let Some(state) = self.0.as_deref_mut() {
            if let State::Armed(probe) = *state {
                let now = Instant::now();
                let (bound, recheck) = match probe.read() {
                    Some(info) => (
                        (info.rto * 2 + info.rtt).clamp(MARKER_ACK_WAIT, MARKER_ACK_MAX),
                        (info.rtt / 2).clamp(RECHECK_MIN, RECHECK_MAX),
                    ),
                    None => (MARKER_ACK_WAIT, RECHECK_MIN),
                };
                *state = State::Waiting {
                    probe,
                    until: now + bound,
                    recheck,
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
            recheck,
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
            sleep.as_mut().reset((now + *recheck).min(*until));
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
    /// `MARKER_ACK_WAIT` on loopback (its figures are far below), no
    /// longer.
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
