//! TCP encryption protocols (TEPs) of tcpcrypt and their key agreement
//! (RFC 8548 5).

use std::fmt;

use zeroize::Zeroizing;

use super::crypto::{CryptoBackend, PreparedKey};
use super::error::Error;
use super::random::RandomSource;

/// A tcpcrypt TEP identifier (the `glt` value of an ENO suboption, v bit
/// excluded).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Tep {
    /// TCPCRYPT_ECDHE_P256, 0x21 (OPTIONAL).
    EcdheP256,
    /// TCPCRYPT_ECDHE_P521, 0x22 (OPTIONAL).
    EcdheP521,
    /// TCPCRYPT_ECDHE_Curve25519, 0x23 (REQUIRED).
    EcdheCurve25519,
    /// TCPCRYPT_ECDHE_Curve448, 0x24 (RECOMMENDED).
    EcdheCurve448,
}

/// Length of the `pubkey_len` prefix of the NIST curves' Pub field.
const EC_LEN_PREFIX: usize = 2;
/// Length of a compressed P-256 point.
const P256_COMPRESSED_LEN: usize = 33;
/// Length of a compressed P-521 point.
const P521_COMPRESSED_LEN: usize = 67;
/// The value of `pubkey_len` for P-256. It counts its own two bytes: the
/// figure in RFC 8548 section 5 numbers the last byte of the field `L - 1`
/// (decision recorded in docs/PROTOCOL.md).
pub const P256_PUBKEY_LEN: u16 = (EC_LEN_PREFIX + P256_COMPRESSED_LEN) as u16;
/// The value of `pubkey_len` for P-521, by the same rule.
pub const P521_PUBKEY_LEN: u16 = (EC_LEN_PREFIX + P521_COMPRESSED_LEN) as u16;

impl Tep {
    /// Every TEP this implementation supports, in increasing order of
    /// preference. [`DEFAULT`](Self::DEFAULT) is what a default
    /// configuration offers.
    pub const ALL: [Tep; 4] = [
        Tep::EcdheP521,
        Tep::EcdheP256,
        Tep::EcdheCurve448,
        Tep::EcdheCurve25519,
    ];

    /// The TEPs a default configuration offers, in increasing order of
    /// preference: X25519 (REQUIRED of every implementation, and the
    /// fastest) and P-256. Curve448 and P-521 cost more per handshake and
    /// make the ENO option longer; configure them to offer them.
    pub const DEFAULT: [Tep; 2] = [Tep::EcdheP256, Tep::EcdheCurve25519];

    /// The seven-bit identifier.
    pub const fn id(self) -> u8 {
        match self {
            Tep::EcdheP256 => 0x21,
            Tep::EcdheP521 => 0x22,
            Tep::EcdheCurve25519 => 0x23,
            Tep::EcdheCurve448 => 0x24,
        }
    }

    /// The TEP for a seven-bit identifier, if supported.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            0x21 => Some(Tep::EcdheP256),
            0x22 => Some(Tep::EcdheP521),
            0x23 => Some(Tep::EcdheCurve25519),
            0x24 => Some(Tep::EcdheCurve448),
            _ => None,
        }
    }

    /// The registry name.
    pub const fn name(self) -> &'static str {
        match self {
            Tep::EcdheP256 => "TCPCRYPT_ECDHE_P256",
            Tep::EcdheP521 => "TCPCRYPT_ECDHE_P521",
            Tep::EcdheCurve25519 => "TCPCRYPT_ECDHE_Curve25519",
            Tep::EcdheCurve448 => "TCPCRYPT_ECDHE_Curve448",
        }
    }

    /// Length of a private key in bytes: the X25519 or X448 scalar, or the
    /// big-endian P-256 or P-521 scalar.
    pub const fn private_key_len(self) -> usize {
        match self {
            Tep::EcdheP256 | Tep::EcdheCurve25519 => 32,
            Tep::EcdheP521 => 66,
            Tep::EcdheCurve448 => 56,
        }
    }

    /// Length of the Pub_A / Pub_B field in Init1 / Init2.
    pub const fn pub_field_len(self) -> usize {
        match self {
            Tep::EcdheP256 => EC_LEN_PREFIX + P256_COMPRESSED_LEN,
            Tep::EcdheP521 => EC_LEN_PREFIX + P521_COMPRESSED_LEN,
            Tep::EcdheCurve25519 => 32,
            Tep::EcdheCurve448 => 56,
        }
    }

    /// The `pubkey_len` of a NIST curve's Pub field; `None` for the
    /// Montgomery curves, whose keys go without a prefix.
    const fn pubkey_len(self) -> Option<u16> {
        match self {
            Tep::EcdheP256 => Some(P256_PUBKEY_LEN),
            Tep::EcdheP521 => Some(P521_PUBKEY_LEN),
            Tep::EcdheCurve25519 | Tep::EcdheCurve448 => None,
        }
    }

    /// Makes random bytes a candidate private key: a P-521 scalar has 521
    /// bits, so the top seven bits of its 66 bytes are cleared (the
    /// candidate is then below the group order with probability near 1).
    pub(crate) fn shape_private(self, private: &mut [u8]) {
        if self == Tep::EcdheP521 {
            private[0] &= 0x01;
        }
    }

    /// Encodes a public key (raw X25519 or X448 bytes, or a compressed
    /// P-256 or P-521 point) as the Pub field of an Init message.
    pub(crate) fn encode_pub_field(self, public: &[u8], out: &mut Vec<u8>) {
        if let Some(len) = self.pubkey_len() {
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(public);
    }

    /// Extracts the public key from a Pub field of exactly
    /// [`pub_field_len`](Self::pub_field_len) bytes.
    pub(crate) fn decode_pub_field(self, field: &[u8]) -> Result<&[u8], Error> {
        let Some(expected) = self.pubkey_len() else {
            return Ok(field);
        };
        let (len, point) = field.split_at(EC_LEN_PREFIX);
        if u16::from_be_bytes([len[0], len[1]]) != expected {
            return Err(Error::BadPublicKey);
        }
        // Compressed form is mandatory (RFC 8548 5).
        if point[0] != 0x02 && point[0] != 0x03 {
            return Err(Error::BadPublicKey);
        }
        Ok(point)
    }
}

impl fmt::Display for Tep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.name(), self.id())
    }
}

/// An ephemeral key pair for one connection. The private key is zeroized on
/// drop and never leaves this value.
pub struct EphemeralKey {
    tep: Tep,
    private: Zeroizing<Vec<u8>>,
    /// The private key as the backend that made the pair loaded it, when
    /// that saves work in [`agree`](Self::agree).
    prepared: Option<Box<dyn PreparedKey>>,
    pub_field: Vec<u8>,
}

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("tep", &self.tep)
            .finish_non_exhaustive()
    }
}

/// How many random scalars to try before giving up (a P-256 scalar is out of
/// range with probability about 2^-32, a shaped P-521 one far less).
const KEYGEN_ATTEMPTS: usize = 8;

impl EphemeralKey {
    /// Generates a fresh key pair from `rng`.
    pub fn generate(
        tep: Tep,
        backend: &dyn CryptoBackend,
        rng: &mut dyn RandomSource,
    ) -> Result<Self, Error> {
        for _ in 0..KEYGEN_ATTEMPTS {
            let mut private = Zeroizing::new(vec![0u8; tep.private_key_len()]);
            rng.fill(&mut private)?;
            tep.shape_private(&mut private);
            if let Ok(key) = Self::from_private(tep, &private, backend) {
                return Ok(key);
            }
        }
        Err(Error::Randomness)
    }

    /// A key pair from given private key bytes. Dangerous: a key pair
    /// must be fresh for each handshake; for known-answer tests.
    #[cfg(feature = "dangerous")]
    pub fn dangerous_from_private(
        tep: Tep,
        private: &[u8],
        backend: &dyn CryptoBackend,
    ) -> Result<Self, Error> {
        Self::from_private(tep, private, backend)
    }

    /// A key pair from given private key bytes.
    fn from_private(tep: Tep, private: &[u8], backend: &dyn CryptoBackend) -> Result<Self, Error> {
        let pair = backend
            .key_pair(tep, private)
            .map_err(|_| Error::InvalidConfig("private key out of range"))?;
        let mut pub_field = Vec::with_capacity(tep.pub_field_len());
        tep.encode_pub_field(&pair.public, &mut pub_field);
        Ok(EphemeralKey {
            tep,
            private: Zeroizing::new(private.to_vec()),
            prepared: pair.prepared,
            pub_field,
        })
    }

    /// The TEP of this key.
    pub fn tep(&self) -> Tep {
        self.tep
    }

    /// The public key as the Pub field of an Init message.
    pub fn pub_field(&self) -> &[u8] {
        &self.pub_field
    }

    /// Computes the shared secret ES with the peer's Pub field, validating
    /// the peer's key and rejecting the all-zero X25519 result. A key
    /// pair the backend keeps in its own form agrees through it (`backend`
    /// is the one that made the pair).
    pub fn agree(
        &self,
        peer_pub_field: &[u8],
        backend: &dyn CryptoBackend,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let peer = self.tep.decode_pub_field(peer_pub_field)?;
        let shared = match &self.prepared {
            Some(key) => key.agree(peer),
            None => backend.agree(self.tep, &self.private, peer),
        }
        .map_err(|_| Error::BadPublicKey)?;
        if shared.iter().all(|&b| b == 0) {
            return Err(Error::BadPublicKey);
        }
        Ok(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::all_backends;
    use crate::random::OsRandom;

    /// A key pair that keeps its private key in the backend's own form
    /// agrees on the same secret as the private key's bytes do, with
    /// either backend on the other side.
    #[test]
    fn a_prepared_key_agrees_as_its_bytes_do() {
        for backend in all_backends() {
            for tep in Tep::ALL {
                let a = EphemeralKey::generate(tep, backend, &mut OsRandom).unwrap();
                // aws-lc-rs keeps what it loaded (it has no X448).
                assert_eq!(
                    a.prepared.is_some(),
                    backend.name() == "aws-lc-rs" && tep != Tep::EcdheCurve448,
                    "{} {}",
                    backend.name(),
                    tep.name()
                );
                for other in all_backends() {
                    let b = EphemeralKey::generate(tep, other, &mut OsRandom).unwrap();
                    let from_prepared = a.agree(b.pub_field(), backend).unwrap();
                    let peer = tep.decode_pub_field(b.pub_field()).unwrap();
                    let from_bytes = backend.agree(tep, &a.private, peer).unwrap();
                    assert_eq!(
                        from_prepared,
                        from_bytes,
                        "{} {}",
                        backend.name(),
                        tep.name()
                    );
                    assert_eq!(
                        from_prepared,
                        b.agree(a.pub_field(), other).unwrap(),
                        "{} with {}, {}",
                        backend.name(),
                        other.name(),
                        tep.name()
                    );
                }
            }
        }
    }
}
