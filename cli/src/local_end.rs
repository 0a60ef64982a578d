//! The local end of a relayed connection: a program on this machine (the
//! shimmed program behind the daemon, the plain backend or client of
//! `tcpcrypt proxy`) that talks to us over loopback while we carry its
//! bytes on another connection.
//!
//! A program that closes its socket leaves it to the kernel, which ends it
//! on its own: `tcp_fin_timeout` for a peer that stays silent after the
//! FIN, a bounded number of probes for one that takes nothing. No one
//! holds a closed socket forever. A relay holds the other connection for
//! the program, so without this watch a peer that acknowledged the FIN and
//! went silent, or stopped reading, kept the relay, its descriptors and
//! its buffers for as long as the relay ran.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::sockopt;

/// How often a relay looks whether the program of a connection that may
/// be over still holds its socket, at first: the pause doubles, up to
/// [`CHECK_MAX`], while the program keeps it.
const CHECK: Duration = Duration::from_secs(5);
const CHECK_MAX: Duration = Duration::from_secs(60);

/// The second look that confirms a socket is no longer held.
const RECHECK: Duration = Duration::from_millis(200);

/// How long a connection whose program has closed its socket may go
/// without the peer taking any of what the program wrote before it is
/// reset (the kernel gives up on a closed socket whose peer takes nothing
/// after about as long).
const SEND_STALL: Duration = Duration::from_secs(60);

/// The local program's end of a relayed connection, as the relay watches
/// it.
pub struct LocalEnd {
    /// Our end of the loopback connection to the program.
    ours: RawFd,
    /// The connection we carry its bytes on.
    other: RawFd,
    /// The program's socket's address and its peer's (our end): only for
    /// a loopback connection, whose both ends the kernel's socket table of
    /// this network namespace lists.
    addrs: Option<(SocketAddr, SocketAddr)>,
}

impl LocalEnd {
    /// `ours`, connected to the program over loopback, and `other`, the
    /// connection its bytes go on. A connection that is not over loopback
    /// is never taken for closed.
    pub fn of(ours: &TcpStream, other: &TcpStream) -> Self {
        let addrs = ours
            .peer_addr()
            .ok()
            .zip(ours.local_addr().ok())
            .filter(|(program, _)| program.ip().to_canonical().is_loopback());
        LocalEnd {
            ours: ours.as_raw_fd(),
            other: other.as_raw_fd(),
            addrs,
        }
    }

    /// Runs `copy` (both directions of the relay) to its end, or until the
    /// program has closed its socket: then `Ok((0, 0))` at once when the
    /// other connection has sent its FIN (everything the program wrote is
    /// in the kernel, which ends that connection as any closed socket);
    /// otherwise the copy goes on while the peer takes the program's
    /// bytes, ends as above once they and the FIN are all out, and fails
    /// after [`SEND_STALL`] without progress.
    pub async fn relay<F>(&self, copy: F) -> io::Result<(u64, u64)>
    where
        F: std::future::Future<Output = io::Result<(u64, u64)>>,
    {
        tokio::pin!(copy);
        let sent_all = tokio::select! {
            result = &mut copy => return result,
            sent_all = self.closed() => sent_all,
        };
        if sent_all {
            return Ok((0, 0));
        }
        let mut acked = sockopt::bytes_acked(self.other);
        loop {
            match tokio::time::timeout(SEND_STALL, &mut copy).await {
                Ok(result) => return result,
                // All out, the FIN too, and the peer silent: its end is
                // the kernel's, as a closed socket's is.
                Err(_) if sockopt::has_sent_fin(self.other) && self.other_unsent() == 0 => {
                    return Ok((0, 0));
                }
                // Progress, or nothing of ours waiting for the peer (the
                // program's last bytes and FIN are on their way to us).
                Err(_) if sockopt::bytes_acked(self.other) > acked || self.other_unsent() == 0 => {
                    acked = sockopt::bytes_acked(self.other);
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the program closed its socket and the peer stopped taking \
                         what it still had to send",
                    ));
                }
            }
        }
    }

    fn other_unsent(&self) -> usize {
        sockopt::unsent_bytes(self.other)
    }

    /// Returns once the program no longer holds its socket: `true` when
    /// the other connection has sent its FIN, `false` when bytes remain to
    /// send. Asked (a read of the kernel's socket table) only of a
    /// connection that may be over: our end is no longer established (the
    /// program or the peer has ended its half), or the other connection
    /// has bytes to send and its peer took none since the last look (our
    /// end then stops reading, and the program's FIN waits behind its
    /// bytes). Never returns for a program that keeps its socket (plain
    /// TCP keeps such a connection as long).
    async fn closed(&self) -> bool {
        let Some((program, ours)) = self.addrs else {
            return std::future::pending::<bool>().await;
        };
        let mut pause = CHECK;
        let mut acked = sockopt::bytes_acked(self.other);
        loop {
            tokio::time::sleep(pause).await;
            let progress = sockopt::bytes_acked(self.other);
            let stuck = self.other_unsent() > 0 && progress == acked;
            acked = progress;
            let ending = sockopt::tcp_state(self.ours) != Some(sockopt::ESTABLISHED);
            if !(ending || stuck) {
                pause = CHECK;
                continue;
            }
            let held = || async move {
                tokio::task::spawn_blocking(move || sockopt::socket_held(program, ours))
                    .await
                    .unwrap_or(true)
            };
            // Twice: a read of a table that changes under it can miss a
            // line.
            if !held().await && {
                tokio::time::sleep(RECHECK).await;
                !held().await
            } {
                return sockopt::has_sent_fin(self.other);
            }
            pause = (pause * 2).min(CHECK_MAX);
        }
    }
}
