//! What the kernel knows of a TCP connection's path: its round-trip and
//! retransmission times, and whether the peer has acknowledged what was
//! sent. The negotiation's deadlines count from when the peer could have
//! answered (docs/PROTOCOL.md, section 3.4), which only these figures
//! tell: a hello lost once on a slow path is retransmitted after the
//! sender's retransmission timeout, later than any fixed wait.
//!
//! The figures come from the kernel's `tcp_info`, read through sock_diag
//! netlink (the socket named by its addresses), which needs no `unsafe`
//! here. They are read only when a deadline expires, or while a late
//! marker waits for its acknowledgement (`late_ack.rs`), never on the
//! connection's fast path. Where they cannot be read (another platform, a
//! transport that is not a TCP socket, a kernel whose `tcp_info` is older
//! than 5.4), the deadlines stay as configured.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The figures a deadline is adapted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PathInfo {
    /// The smoothed round-trip time.
    pub rtt: Duration,
    /// The retransmission timeout: a lost segment is sent again after it.
    pub rto: Duration,
    /// Whether bytes sent are still unacknowledged.
    pub unacked: bool,
    /// How long ago the last acknowledgement arrived.
    pub since_last_ack: Duration,
}

/// Reads [`PathInfo`] for one TCP connection, named by its addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PathProbe {
    local: SocketAddr,
    peer: SocketAddr,
}

impl PathProbe {
    /// A probe for the connection of `tcp`; `None` if its addresses are
    /// unknown.
    pub fn of(tcp: &tokio::net::TcpStream) -> Option<Self> {
        Some(PathProbe {
            local: tcp.local_addr().ok()?,
            peer: tcp.peer_addr().ok()?,
        })
    }

    /// [`of`](Self::of) a connection whose peer's address is known: one
    /// system call fewer on every connection.
    pub fn to(tcp: &tokio::net::TcpStream, peer: SocketAddr) -> Option<Self> {
        Some(PathProbe {
            local: tcp.local_addr().ok()?,
            peer,
        })
    }

    /// The kernel's figures now, if it gives them.
    pub fn read(&self) -> Option<PathInfo> {
        imp::read(self.local, self.peer)
    }

    /// How many segments with data the connection has sent, and how many
    /// bytes it holds unsent: what the tests of `first_write.rs` look at.
    #[cfg(all(test, target_os = "linux"))]
    pub fn sent(&self) -> Option<(u32, u32)> {
        imp::sent(self.local, self.peer).map(|(data, unsent, _)| (data, unsent))
    }

    /// How many segments the connection has sent, with or without data.
    #[cfg(all(test, target_os = "linux"))]
    pub fn segments_out(&self) -> Option<u32> {
        imp::sent(self.local, self.peer).map(|(_, _, all)| all)
    }
}

/// Shortest and longest pause between two looks at a hello that is not yet
/// acknowledged.
const RECHECK_MIN: Duration = Duration::from_millis(10);
const RECHECK_MAX: Duration = Duration::from_secs(1);

/// The connecting side's rule: its hello's answer is awaited for `wait`
/// from the moment the server had the hello, that is from its
/// acknowledgement. Called when the wait counted from the hello's sending
/// has passed; returns when to look again, or `None` when the server is
/// silent.
///
/// A hello still unacknowledged has not reached the server (lost, or a
/// slow path): look again after about a retransmission timeout.
pub(crate) fn client_wait(now: Instant, info: &PathInfo, wait: Duration) -> Option<Instant> {
    if info.unacked {
        return Some(now + info.rto.clamp(RECHECK_MIN, RECHECK_MAX));
    }
    // The last acknowledgement is that of the hello or a later one: the
    // server had the hello no later than that.
    let acked = now.checked_sub(info.since_last_ack)?;
    let until = acked + wait;
    (until > now).then_some(until)
}

/// The accepting side's rule: a client's hello sent as soon as its
/// connection was up and lost once arrives about one retransmission timeout
/// after the accept (the client's timeout, which its measurement of the
/// same path makes about equal to ours), give or take a round trip. The
/// wait from the accept is therefore `wait` or that, whichever is longer;
/// returns its end if it is still to come.
pub(crate) fn server_wait(
    accepted: Instant,
    now: Instant,
    info: &PathInfo,
    wait: Duration,
) -> Option<Instant> {
    let until = accepted + wait.max(info.rto + info.rtt);
    (until > now).then_some(until)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
    use netlink_packet_sock_diag::inet::nlas::{Nla, TcpInfo};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_sys::protocols::NETLINK_SOCK_DIAG;
    use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

    use super::PathInfo;

    /// The kernel's "no cookie": look the socket up by its addresses alone.
    const NO_COOKIE: [u8; 8] = [0xff; 8];

    pub(super) fn read(local: SocketAddr, peer: SocketAddr) -> Option<PathInfo> {
        let (info, send_queue) = tcp_info(local, peer)?;
        Some(PathInfo {
            rtt: Duration::from_micros(info.rtt.into()),
            rto: Duration::from_micros(info.rto.into()),
            unacked: info.unacked > 0 || send_queue > 0,
            since_last_ack: Duration::from_millis(info.last_ack_recv.into()),
        })
    }

    #[cfg(test)]
    pub(super) fn sent(local: SocketAddr, peer: SocketAddr) -> Option<(u32, u32, u32)> {
        let (info, _) = tcp_info(local, peer)?;
        Some((info.data_segs_out, info.notsent_bytes, info.segs_out))
    }

    /// The connection's `tcp_info` and send queue.
    fn tcp_info(local: SocketAddr, peer: SocketAddr) -> Option<(TcpInfo, u32)> {
        let family = match local.ip() {
            IpAddr::V4(_) => AF_INET,
            IpAddr::V6(_) => AF_INET6,
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                states: StateFlags::all(),
                socket_id: SocketId {
                    source_port: local.port(),
                    destination_port: peer.port(),
                    source_address: local.ip(),
                    destination_address: peer.ip(),
                    interface_id: 0,
                    cookie: NO_COOKIE,
                },
            })
            .into(),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);

        let mut socket = Socket::new(NETLINK_SOCK_DIAG).ok()?;
        socket.bind_auto().ok()?;
        socket.connect(&NetlinkAddr::new(0, 0)).ok()?;
        socket.send(&bytes, 0).ok()?;
        // The kernel answers within the send: nothing to wait for.
        socket.set_non_blocking(true).ok()?;
        let mut reply = vec![0; 8192];
        let n = socket.recv(&mut &mut reply[..], 0).ok()?;
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[..n]).ok()?;
        let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) = message.payload
        else {
            return None;
        };
        let info = response.nlas.into_iter().find_map(|nla| match nla {
            Nla::TcpInfo(info) => Some(info),
            _ => None,
        })?;
        Some((info, response.header.send_queue))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::net::SocketAddr;

    pub(super) fn read(_local: SocketAddr, _peer: SocketAddr) -> Option<super::PathInfo> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(rtt_ms: u64, rto_ms: u64, unacked: bool, since_ack_ms: u64) -> PathInfo {
        PathInfo {
            rtt: Duration::from_millis(rtt_ms),
            rto: Duration::from_millis(rto_ms),
            unacked,
            since_last_ack: Duration::from_millis(since_ack_ms),
        }
    }

    #[test]
    fn an_unacknowledged_hello_is_awaited_a_retransmission_timeout_longer() {
        let now = Instant::now();
        let wait = Duration::from_secs(2);
        let again = client_wait(now, &info(600, 1800, true, 2000), wait).unwrap();
        assert_eq!(
            again - now,
            Duration::from_millis(1000),
            "capped at a second"
        );
        let again = client_wait(now, &info(1, 204, true, 0), wait).unwrap();
        assert_eq!(again - now, Duration::from_millis(204));
    }

    #[test]
    fn the_answer_is_awaited_from_the_hellos_acknowledgement() {
        let now = Instant::now() + Duration::from_secs(10);
        let wait = Duration::from_secs(2);
        // Acknowledged half a second ago: one and a half seconds to go.
        let until = client_wait(now, &info(600, 1800, false, 500), wait).unwrap();
        assert_eq!(until - now, Duration::from_millis(1500));
        // Acknowledged long ago: the server is silent.
        assert_eq!(client_wait(now, &info(1, 204, false, 2500), wait), None);
    }

    #[test]
    fn a_slow_path_lengthens_the_servers_wait_and_a_fast_one_keeps_it() {
        let accepted = Instant::now();
        let wait = Duration::from_millis(300);
        // Loopback: the retransmission timeout is the kernel's minimum.
        assert_eq!(
            server_wait(accepted, accepted + wait, &info(0, 201, false, 0), wait),
            None
        );
        // A 600 ms path: a lost hello comes back after 1.8 s.
        let until = server_wait(accepted, accepted + wait, &info(600, 1800, false, 0), wait);
        assert_eq!(until, Some(accepted + Duration::from_millis(2400)));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_kernel_tells_a_loopback_connection_figures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for tcp in [&client, &server] {
            let info = PathProbe::of(tcp).unwrap().read().expect("tcp_info");
            // Linux's minimum retransmission timeout is 200 ms.
            assert!(info.rto >= Duration::from_millis(200), "{info:?}");
            assert!(info.rtt < Duration::from_millis(200), "{info:?}");
            assert!(!info.unacked, "{info:?}");
        }
    }
}
