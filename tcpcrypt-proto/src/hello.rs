//! The in-band hello: how ENO travels when user space cannot set SYN
//! options (docs/PROTOCOL.md, "Hello").
//!
//! ```text
//! hello  = marker(8) | ENO option (kind 0x45, length, suboptions)
//! marker = E5 'E' 'N' 'O' 01 kind '\r' '\n'
//! kind   = 'A' (connecting side), 'P' (connecting side, an Init1 follows),
//!          'E' (connecting side, 0-RTT frames follow), 'B' (accepting side),
//!          'L' (accepting side: your hello came late; the marker alone)
//! ```
//!
//! The first byte above 0x7F starts no text protocol, no TLS record and no
//! SSLv2 hello, so the accepting side tells a plain client from its first
//! byte; the CR LF makes line-based servers answer at once, so the
//! connecting side learns quickly that a server is legacy.

use super::eno::{ENO_KIND, EnoOption};
use super::error::Error;

/// Version byte of the in-band carriage.
pub const VERSION: u8 = 0x01;
/// Length of the marker.
pub const MARKER_LEN: usize = 8;
/// The longest hello: marker and a 255-byte option.
pub const MAX_HELLO_LEN: usize = MARKER_LEN + super::eno::MAX_OPTION_LEN;

/// Which hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloKind {
    /// The connecting side's hello.
    A,
    /// The connecting side's hello followed by a pipelined Init1.
    Pipelined,
    /// The connecting side's hello offering resumption, followed by 0-RTT
    /// frames and, once the accepting side's hello has arrived, the
    /// end-of-early-data mark (docs/PROTOCOL.md 7.1).
    Early,
    /// The accepting side's answer.
    B,
    /// The accepting side's answer to a hello that came after it had taken
    /// the client for plain (its hello was lost and sent again): nothing
    /// of the client's was delivered and nothing else was sent; connect
    /// again (docs/PROTOCOL.md 3.4). The marker alone, no option.
    Late,
}

impl HelloKind {
    /// The kind byte of the marker.
    pub const fn byte(self) -> u8 {
        match self {
            HelloKind::A => b'A',
            HelloKind::Pipelined => b'P',
            HelloKind::Early => b'E',
            HelloKind::B => b'B',
            HelloKind::Late => b'L',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'A' => Some(HelloKind::A),
            b'P' => Some(HelloKind::Pipelined),
            b'E' => Some(HelloKind::Early),
            b'B' => Some(HelloKind::B),
            b'L' => Some(HelloKind::Late),
            _ => None,
        }
    }
}

/// The kinds a connecting side sends.
pub const CLIENT_KINDS: &[HelloKind] = &[HelloKind::A, HelloKind::Pipelined, HelloKind::Early];

/// The kinds an accepting side sends.
pub const SERVER_KINDS: &[HelloKind] = &[HelloKind::B, HelloKind::Late];

/// The marker for a hello kind.
pub const fn marker(kind: HelloKind) -> [u8; MARKER_LEN] {
    [0xE5, b'E', b'N', b'O', VERSION, kind.byte(), b'\r', b'\n']
}

/// Appends a hello to `out`.
pub fn encode(kind: HelloKind, option: &EnoOption, out: &mut Vec<u8>) {
    out.extend_from_slice(&marker(kind));
    out.extend_from_slice(option.as_bytes());
}

/// What the bytes received so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloScan {
    /// Consistent with a hello so far; more bytes are needed.
    Incomplete,
    /// Byte `at` departs from every marker the peer could send: the peer
    /// does not speak this protocol, and every byte is application data.
    NotAHello {
        /// Index of the first byte that departs.
        at: usize,
    },
    /// A whole hello of `len` bytes. The option is the raw delimited bytes;
    /// whether its contents are well formed is for the negotiation to judge
    /// (an ill-formed option disables ENO, it does not break the stream).
    Hello {
        /// The kind in the marker.
        kind: HelloKind,
        /// The option bytes (kind 0x45 and length included); empty for
        /// [`HelloKind::Late`], which has none.
        option: Vec<u8>,
        /// Bytes the hello occupies.
        len: usize,
    },
}

/// Scans the start of the stream for a hello of one of `expected` kinds.
///
/// Only the first five marker bytes and the kind and CR LF bytes decide
/// whether the peer speaks this protocol. Once the whole marker matched, a
/// broken option header is a protocol error, not a plain peer.
pub fn scan(buf: &[u8], expected: &[HelloKind]) -> Result<HelloScan, Error> {
    let fixed = [0xE5, b'E', b'N', b'O', VERSION];
    for (i, &b) in buf.iter().take(MARKER_LEN).enumerate() {
        let ok = match i {
            0..=4 => b == fixed[i],
            5 => HelloKind::from_byte(b).is_some_and(|k| expected.contains(&k)),
            6 => b == b'\r',
            _ => b == b'\n',
        };
        if !ok {
            return Ok(HelloScan::NotAHello { at: i });
        }
    }
    if buf.len() < MARKER_LEN {
        return Ok(HelloScan::Incomplete);
    }
    let kind = HelloKind::from_byte(buf[5]).expect("checked above");
    if kind == HelloKind::Late {
        return Ok(HelloScan::Hello {
            kind,
            option: Vec::new(),
            len: MARKER_LEN,
        });
    }
    if buf.len() < MARKER_LEN + 2 {
        return Ok(HelloScan::Incomplete);
    }
    let opt_kind = buf[MARKER_LEN];
    let opt_len = buf[MARKER_LEN + 1] as usize;
    if opt_kind != ENO_KIND || opt_len < 2 {
        return Err(Error::MalformedHello);
    }
    let len = MARKER_LEN + opt_len;
    if buf.len() < len {
        return Ok(HelloScan::Incomplete);
    }
    Ok(HelloScan::Hello {
        kind,
        option: buf[MARKER_LEN..len].to_vec(),
        len,
    })
}

/// Whether the first bytes from a client the accepting side has already
/// taken for plain (it stayed silent past the wait) are the marker of a
/// client hello that came late. `None`: too few bytes to tell. A marker is
/// never application data: the caller aborts instead of delivering it
/// (`docs/PROTOCOL.md`, "Fallback").
pub fn is_late_client_marker(buf: &[u8]) -> Option<bool> {
    match scan(buf, CLIENT_KINDS) {
        Ok(HelloScan::NotAHello { .. }) => Some(false),
        Ok(HelloScan::Incomplete) if buf.len() < MARKER_LEN => None,
        // The whole marker matched (a broken option after it included).
        _ => Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &[HelloKind] = &[HelloKind::A, HelloKind::Pipelined];

    #[test]
    fn a_late_client_marker_is_told_from_data_after_eight_bytes() {
        let hello = marker(HelloKind::Pipelined);
        assert_eq!(is_late_client_marker(&hello[..7]), None);
        assert_eq!(is_late_client_marker(&hello), Some(true));
        assert_eq!(is_late_client_marker(&marker(HelloKind::A)), Some(true));
        assert_eq!(is_late_client_marker(&marker(HelloKind::Early)), Some(true));
        assert_eq!(is_late_client_marker(b"\xE5ENO\x01A\r\n\x00"), Some(true));
        assert_eq!(is_late_client_marker(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(is_late_client_marker(b"\xE5EN"), None);
        assert_eq!(is_late_client_marker(b"\xE5ENX"), Some(false));
        // The server's own kinds are not a client's hello.
        assert_eq!(is_late_client_marker(&marker(HelloKind::B)), Some(false));
        assert_eq!(is_late_client_marker(&marker(HelloKind::Late)), Some(false));
    }

    #[test]
    fn the_late_answer_is_the_marker_alone() {
        let m = marker(HelloKind::Late);
        assert_eq!(m, *b"\xE5ENO\x01L\r\n");
        for n in 0..MARKER_LEN {
            assert_eq!(scan(&m[..n], SERVER_KINDS).unwrap(), HelloScan::Incomplete);
        }
        let mut then_more = m.to_vec();
        then_more.extend_from_slice(b"anything");
        assert_eq!(
            scan(&then_more, SERVER_KINDS).unwrap(),
            HelloScan::Hello {
                kind: HelloKind::Late,
                option: Vec::new(),
                len: MARKER_LEN
            }
        );
        // Only a connecting side expects it.
        assert_eq!(
            scan(&m, CLIENT_KINDS).unwrap(),
            HelloScan::NotAHello { at: 5 }
        );
    }

    #[test]
    fn marker_bytes() {
        assert_eq!(marker(HelloKind::A), *b"\xE5ENO\x01A\r\n");
        assert_eq!(marker(HelloKind::Pipelined), *b"\xE5ENO\x01P\r\n");
        assert_eq!(marker(HelloKind::B), *b"\xE5ENO\x01B\r\n");
        assert_eq!(marker(HelloKind::Early), *b"\xE5ENO\x01E\r\n");
    }

    #[test]
    fn scan_whole_and_partial_hello() {
        let mut h = marker(HelloKind::A).to_vec();
        h.extend_from_slice(&[0x45, 0x03, 0x23, 0xff]);
        for n in 0..h.len() - 1 {
            assert_eq!(scan(&h[..n], CLIENT).unwrap(), HelloScan::Incomplete, "{n}");
        }
        assert_eq!(
            scan(&h, CLIENT).unwrap(),
            HelloScan::Hello {
                kind: HelloKind::A,
                option: vec![0x45, 0x03, 0x23],
                len: 11
            }
        );
    }

    #[test]
    fn plain_protocols_depart_at_the_first_byte() {
        for first in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"\x80\x2e",
            b"SSH-2.0-x\r\n",
            b"\x00\x00\x00\x10",
        ] {
            assert_eq!(scan(first, CLIENT).unwrap(), HelloScan::NotAHello { at: 0 });
        }
    }

    #[test]
    fn echo_of_our_own_hello_is_not_an_answer() {
        // An echo server returns the connecting side's marker: kind 'A'.
        let h = marker(HelloKind::A);
        assert_eq!(
            scan(&h, &[HelloKind::B]).unwrap(),
            HelloScan::NotAHello { at: 5 }
        );
    }

    #[test]
    fn other_version_is_not_a_hello() {
        let mut h = marker(HelloKind::B);
        h[4] = 2;
        assert_eq!(
            scan(&h, &[HelloKind::B]).unwrap(),
            HelloScan::NotAHello { at: 4 }
        );
    }

    #[test]
    fn broken_option_header_after_full_marker_is_an_error() {
        let mut h = marker(HelloKind::B).to_vec();
        h.extend_from_slice(&[0x46, 0x02]);
        assert_eq!(scan(&h, &[HelloKind::B]), Err(Error::MalformedHello));
        let mut h = marker(HelloKind::B).to_vec();
        h.extend_from_slice(&[0x45, 0x01]);
        assert_eq!(scan(&h, &[HelloKind::B]), Err(Error::MalformedHello));
    }
}
