//! Path impairments that iptables alone cannot make (these kernels have no
//! netem): an NFQUEUE handler that reorders, duplicates, corrupts or
//! delays the TCP segments iptables hands it.
//!
//! `interop/run` queues each namespace's outgoing segments on the veth
//! (`iptables -A OUTPUT -o VETH -p tcp -m mark ! --mark 0x7a -j NFQUEUE`)
//! and runs one handler per namespace. Behaviours:
//!
//! * `reorder:N`: every Nth segment is held back and released after the
//!   one that follows it, or after 5 ms when none follows (the last
//!   segment of a flow must not wait for the next flow).
//! * `duplicate:N`: every Nth segment is sent twice (the copy through a raw
//!   socket, marked so that it is not queued again).
//! * `corrupt:N`: every Nth full-sized data segment (at least 1200 bytes of
//!   payload: the data phase, not a handshake) has one payload byte
//!   flipped, with the TCP checksum made right again, as a faulty
//!   middlebox would: TCP cannot see it, tcpcrypt must.
//! * `delay:MS`: every segment waits MS milliseconds (order kept). The
//!   original is dropped and a copy sent when it is due, so that held
//!   segments cost their own size only.
//!
//! Copies sent through the raw socket get a full TCP checksum: a segment
//! seen on its way out may carry only the pseudo-header's sum, left for
//! the device to complete.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};
use socket2::{Domain, Protocol, Socket, Type};

/// The mark of packets the handler sends itself (never queued again).
pub const OWN_MARK: u32 = 0x7a;

#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Reorder(u64),
    Duplicate(u64),
    Corrupt(u64),
    Delay(Duration),
}

impl std::str::FromStr for Behaviour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, n) = s
            .split_once(':')
            .ok_or_else(|| format!("{s}: expected NAME:N"))?;
        let n: u64 = n.parse().map_err(|_| format!("{s}: N must be a number"))?;
        if n == 0 {
            return Err(format!("{s}: N must be at least 1"));
        }
        match name {
            "reorder" => Ok(Behaviour::Reorder(n)),
            "duplicate" => Ok(Behaviour::Duplicate(n)),
            "corrupt" => Ok(Behaviour::Corrupt(n)),
            "delay" => Ok(Behaviour::Delay(Duration::from_millis(n))),
            _ => Err(format!("{s}: unknown behaviour")),
        }
    }
}

/// Smallest payload of a segment `corrupt` may touch.
const FULL_SIZED: usize = 1200;
/// Longest a reordered segment waits for one to overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(5);
/// Most segments held at once (delay); beyond it, segments pass at once.
const MAX_HELD: usize = 100_000;

/// Runs the handler on queue `num` until killed.
pub fn run(num: u16, behaviour: Behaviour) -> std::io::Result<()> {
    let mut queue = Queue::open()?;
    queue.bind(num)?;
    queue.set_queue_max_len(num, 65536)?;
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?;
    raw.set_mark(OWN_MARK)?;
    if matches!(behaviour, Behaviour::Delay(_) | Behaviour::Reorder(_)) {
        queue.set_nonblocking(true);
    }
    let mut count = 0u64;
    let mut held: Option<(Instant, nfq::Message)> = None;
    let mut delayed: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let send_copy = |packet: &mut Vec<u8>| -> std::io::Result<()> {
        if let Some(dst) = ipv4_destination(packet) {
            if tcp_payload(packet).is_some() {
                fix_tcp_checksum(packet);
            }
            raw.send_to(packet, &SocketAddrV4::new(dst, 0).into())?;
        }
        Ok(())
    };
    loop {
        if held
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() >= REORDER_HOLD)
        {
            let (_, msg) = held.take().expect("checked");
            queue.verdict(msg)?;
        }
        if let Behaviour::Delay(_) = behaviour {
            let now = Instant::now();
            while delayed.front().is_some_and(|(due, _)| *due <= now) {
                let (_, mut packet) = delayed.pop_front().expect("checked");
                send_copy(&mut packet)?;
            }
        }
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            Err(e) => return Err(e),
        };
        msg.set_verdict(Verdict::Accept);
        match behaviour {
            Behaviour::Reorder(n) => {
                count += 1;
                if let Some((_, earlier)) = held.take() {
                    // The later segment first, then the one held back.
                    queue.verdict(msg)?;
                    queue.verdict(earlier)?;
                } else if count.is_multiple_of(n) {
                    held = Some((Instant::now(), msg));
                } else {
                    queue.verdict(msg)?;
                }
            }
            Behaviour::Duplicate(n) => {
                count += 1;
                let copy = (count.is_multiple_of(n)).then(|| msg.get_payload().to_vec());
                queue.verdict(msg)?;
                if let Some(mut packet) = copy {
                    send_copy(&mut packet)?;
                }
            }
            Behaviour::Corrupt(n) => {
                let checksum_ready = msg.is_checksum_ready();
                let packet = msg.get_payload_mut();
                if let Some((start, len)) = tcp_payload(packet) {
                    if len >= FULL_SIZED {
                        count += 1;
                        if count.is_multiple_of(n) {
                            let at = start + (count as usize * 7919) % len;
                            packet[at] ^= 0x20;
                            if checksum_ready {
                                fix_tcp_checksum(packet);
                            }
                        }
                    }
                }
                queue.verdict(msg)?;
            }
            Behaviour::Delay(d) => {
                if delayed.len() < MAX_HELD {
                    delayed.push_back((Instant::now() + d, msg.get_payload().to_vec()));
                    msg.set_verdict(Verdict::Drop);
                }
                queue.verdict(msg)?;
            }
        }
    }
}

fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    (packet.len() >= 20 && packet[0] >> 4 == 4)
        .then(|| Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]))
}

/// Where an IPv4 TCP segment's payload starts, and its length.
fn tcp_payload(packet: &[u8]) -> Option<(usize, usize)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 6 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    let doff = usize::from(*packet.get(ihl + 12)? >> 4) * 4;
    let start = ihl + doff;
    (start <= total).then_some((start, total - start))
}

/// Recomputes an IPv4 TCP segment's checksum (RFC 793's one's complement
/// sum over the pseudo-header and the segment).
fn fix_tcp_checksum(packet: &mut [u8]) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    let tcp_len = total - ihl;
    packet[ihl + 16] = 0;
    packet[ihl + 17] = 0;
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&packet[12..20]);
    add(&[0, 6]);
    add(&(tcp_len as u16).to_be_bytes());
    add(&packet[ihl..total]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    packet[ihl + 16..ihl + 18].copy_from_slice(&checksum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP segment 10.0.0.1:1 -> 10.0.0.2:2 with a known-good checksum
    /// (computed by hand from RFC 793's definition).
    fn segment(payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[21] = 1; // source port 1
        p[23] = 2; // destination port 2
        p[32] = 0x50; // data offset 5
        p[40..].copy_from_slice(payload);
        p
    }

    /// Independent check: the one's complement sum over the pseudo-header
    /// and the segment, checksum included, is 0xffff when it is right.
    fn verifies(p: &[u8]) -> bool {
        let mut words: Vec<u16> = Vec::new();
        let tcp = &p[20..];
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        for chunk in pseudo.chunks(2).chain(tcp.chunks(2)) {
            words.push(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        }
        let mut sum: u64 = words.iter().map(|&w| u64::from(w)).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn a_corrupted_segment_gets_a_checksum_that_verifies() {
        for payload in [&b"hello"[..], &b"odd length!"[..], &[0xffu8; 1400][..]] {
            let mut p = segment(payload);
            fix_tcp_checksum(&mut p);
            assert!(verifies(&p));
            let (start, len) = tcp_payload(&p).unwrap();
            assert_eq!((start, len), (40, payload.len()));
            p[start] ^= 0x20;
            assert!(!verifies(&p));
            fix_tcp_checksum(&mut p);
            assert!(verifies(&p));
        }
    }

    #[test]
    fn behaviours_parse() {
        assert!(matches!("reorder:5".parse(), Ok(Behaviour::Reorder(5))));
        assert!(
            matches!("delay:20".parse(), Ok(Behaviour::Delay(d)) if d == Duration::from_millis(20))
        );
        assert!("corrupt:0".parse::<Behaviour>().is_err());
        assert!("bogus:1".parse::<Behaviour>().is_err());
    }
}
