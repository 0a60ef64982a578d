//! The key-exchange messages Init1 and Init2 (RFC 8548 3.3, 4.1).

use super::error::Error;
use super::tep::Tep;

/// INIT1_MAGIC (RFC 8548 4.3), sent big-endian.
pub const INIT1_MAGIC: [u8; 4] = 0x1510_1a0e_u32.to_be_bytes();
/// INIT2_MAGIC.
pub const INIT2_MAGIC: [u8; 4] = 0x0971_05e0_u32.to_be_bytes();
/// Magic and `message_len`.
pub const HEADER_LEN: usize = 8;
/// Length of N_A and N_B for every tcpcrypt TEP (RFC 8548 5).
pub const NONCE_LEN: usize = 32;
/// The largest `message_len` accepted. RFC 8548 4.1 says a receiver MUST
/// accept and ignore bytes after the fields it knows; the largest message
/// we parse meaningfully is about 600 bytes (Init1 with 255 ciphers and a
/// P-256 key). 64 KiB leaves a future sender room for any extension that
/// fits in a handshake while bounding what a peer can make us buffer
/// (bytes it must actually send, within the handshake deadline, for at
/// most `max_pending_handshakes` connections at once). docs/PROTOCOL.md
/// records the decision.
pub const MAX_MESSAGE_LEN: u32 = 64 * 1024;

/// Which Init message, for errors and for the header check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitKind {
    /// Init1, sent by host A.
    Init1,
    /// Init2, sent by host B.
    Init2,
}

impl InitKind {
    fn magic(self) -> [u8; 4] {
        match self {
            InitKind::Init1 => INIT1_MAGIC,
            InitKind::Init2 => INIT2_MAGIC,
        }
    }

    fn name(self) -> &'static str {
        match self {
            InitKind::Init1 => "Init1",
            InitKind::Init2 => "Init2",
        }
    }
}

/// Reads the fixed header of an Init message and returns its whole length,
/// bounded before anything is buffered.
pub fn message_len(kind: InitKind, header: &[u8; HEADER_LEN]) -> Result<usize, Error> {
    if header[..4] != kind.magic() {
        return Err(Error::BadMagic(kind.name()));
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    // The smallest meaningful message: header plus the fields common to both.
    if (len as usize) < HEADER_LEN + 2 + NONCE_LEN || len > MAX_MESSAGE_LEN {
        return Err(Error::BadMessageLength {
            msg: kind.name(),
            len,
        });
    }
    Ok(len as usize)
}

fn check_header(kind: InitKind, bytes: &[u8]) -> Result<(), Error> {
    let header: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(Error::BadMessageLength {
            msg: kind.name(),
            len: bytes.len() as u32,
        })?;
    let len = message_len(kind, header)?;
    if len != bytes.len() {
        return Err(Error::BadMessageLength {
            msg: kind.name(),
            len: len as u32,
        });
    }
    Ok(())
}

fn too_short(kind: InitKind, len: usize) -> Error {
    Error::BadMessageLength {
        msg: kind.name(),
        len: len as u32,
    }
}

/// Init1: A's AEAD list, nonce and public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Init1 {
    /// `sym_cipher_list`, as sent (identifiers may be unknown to us).
    pub sym_ciphers: Vec<u16>,
    /// N_A.
    pub nonce: [u8; NONCE_LEN],
    /// The Pub_A field.
    pub pub_field: Vec<u8>,
}

impl Init1 {
    /// Encodes with an empty "ignored" field, as the RFC requires.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.sym_ciphers.is_empty() || self.sym_ciphers.len() > 255 {
            return Err(Error::InvalidConfig(
                "Init1 needs 1 to 255 AEAD identifiers",
            ));
        }
        let len = HEADER_LEN + 1 + 2 * self.sym_ciphers.len() + NONCE_LEN + self.pub_field.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&INIT1_MAGIC);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(self.sym_ciphers.len() as u8);
        for c in &self.sym_ciphers {
            out.extend_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.pub_field);
        Ok(out)
    }

    /// Decodes a whole message (exactly `message_len` bytes) for `tep`,
    /// skipping any bytes after Pub_A.
    pub fn decode(tep: Tep, bytes: &[u8]) -> Result<Self, Error> {
        check_header(InitKind::Init1, bytes)?;
        let n = bytes[HEADER_LEN] as usize;
        if n == 0 {
            return Err(Error::NoCiphers);
        }
        let ciphers_end = HEADER_LEN + 1 + 2 * n;
        let nonce_end = ciphers_end + NONCE_LEN;
        let pub_end = nonce_end + tep.pub_field_len();
        if bytes.len() < pub_end {
            return Err(too_short(InitKind::Init1, bytes.len()));
        }
        let sym_ciphers = bytes[HEADER_LEN + 1..ciphers_end]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        Ok(Init1 {
            sym_ciphers,
            nonce: bytes[ciphers_end..nonce_end].try_into().expect("32 bytes"),
            pub_field: bytes[nonce_end..pub_end].to_vec(),
        })
    }
}

/// Init2: B's AEAD choice, nonce and public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Init2 {
    /// `sym_cipher`.
    pub sym_cipher: u16,
    /// N_B.
    pub nonce: [u8; NONCE_LEN],
    /// The Pub_B field.
    pub pub_field: Vec<u8>,
}

impl Init2 {
    /// Encodes with an empty "ignored" field.
    pub fn encode(&self) -> Vec<u8> {
        let len = HEADER_LEN + 2 + NONCE_LEN + self.pub_field.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&INIT2_MAGIC);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&self.sym_cipher.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.pub_field);
        out
    }

    /// Decodes a whole message for `tep`, skipping bytes after Pub_B.
    pub fn decode(tep: Tep, bytes: &[u8]) -> Result<Self, Error> {
        check_header(InitKind::Init2, bytes)?;
        let nonce_start = HEADER_LEN + 2;
        let nonce_end = nonce_start + NONCE_LEN;
        let pub_end = nonce_end + tep.pub_field_len();
        if bytes.len() < pub_end {
            return Err(too_short(InitKind::Init2, bytes.len()));
        }
        Ok(Init2 {
            sym_cipher: u16::from_be_bytes([bytes[HEADER_LEN], bytes[HEADER_LEN + 1]]),
            nonce: bytes[nonce_start..nonce_end].try_into().expect("32 bytes"),
            pub_field: bytes[nonce_end..pub_end].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init1() -> Init1 {
        Init1 {
            sym_ciphers: vec![0x0001],
            nonce: [0xaa; 32],
            pub_field: vec![0xbb; 32],
        }
    }

    #[test]
    fn init1_layout_matches_rfc_example() {
        let bytes = init1().encode().unwrap();
        assert_eq!(bytes.len(), 75);
        assert_eq!(
            &bytes[..11],
            &hex::decode("15101a0e0000004b010001").unwrap()[..]
        );
        assert_eq!(
            Init1::decode(Tep::EcdheCurve25519, &bytes).unwrap(),
            init1()
        );
    }

    #[test]
    fn init2_layout_matches_rfc_example() {
        let m = Init2 {
            sym_cipher: 1,
            nonce: [1; 32],
            pub_field: vec![2; 32],
        };
        let bytes = m.encode();
        assert_eq!(bytes.len(), 74);
        assert_eq!(
            &bytes[..10],
            &hex::decode("097105e00000004a0001").unwrap()[..]
        );
        assert_eq!(Init2::decode(Tep::EcdheCurve25519, &bytes).unwrap(), m);
    }

    #[test]
    fn trailing_bytes_are_accepted_and_skipped() {
        let mut bytes = init1().encode().unwrap();
        bytes.extend_from_slice(&[9; 20]);
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            Init1::decode(Tep::EcdheCurve25519, &bytes).unwrap(),
            init1()
        );
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let good = init1().encode().unwrap();
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        assert_eq!(
            Init1::decode(Tep::EcdheCurve25519, &bad_magic),
            Err(Error::BadMagic("Init1"))
        );
        // Init2 magic where Init1 is expected.
        let mut swapped = good.clone();
        swapped[..4].copy_from_slice(&INIT2_MAGIC);
        assert!(matches!(
            Init1::decode(Tep::EcdheCurve25519, &swapped),
            Err(Error::BadMagic(_))
        ));
        // A message_len shorter than the fields present.
        let mut short = good.clone();
        short.truncate(60);
        short[4..8].copy_from_slice(&60u32.to_be_bytes());
        assert!(matches!(
            Init1::decode(Tep::EcdheCurve25519, &short),
            Err(Error::BadMessageLength { .. })
        ));
        // A huge message_len is refused from the header alone.
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&INIT1_MAGIC);
        header[4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            message_len(InitKind::Init1, &header),
            Err(Error::BadMessageLength { len: u32::MAX, .. })
        ));
        header[4..].copy_from_slice(&3u32.to_be_bytes());
        assert!(message_len(InitKind::Init1, &header).is_err());
        // nciphers = 0.
        let mut none = good.clone();
        none[8] = 0;
        assert_eq!(
            Init1::decode(Tep::EcdheCurve25519, &none),
            Err(Error::NoCiphers)
        );
        // A P-256 Init1 is longer than an X25519 one: the X25519-sized
        // message is too short for P-256.
        assert!(matches!(
            Init1::decode(Tep::EcdheP256, &good),
            Err(Error::BadMessageLength { .. })
        ));
    }
}
