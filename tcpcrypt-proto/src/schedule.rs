//! The key schedule (RFC 8548 3.3 to 3.5): PRK, session secrets, master
//! keys, traffic keys, session IDs and resumption identifiers.
//!
//! Every secret here is zeroized on drop.

use std::fmt;

use zeroize::Zeroizing;

use super::aead::{AeadAlgorithm, NONCE_LEN};
use super::crypto::{AeadKey, CryptoBackend};

/// CONST_NEXTK.
pub const CONST_NEXTK: u8 = 0x01;
/// CONST_SESSID.
pub const CONST_SESSID: u8 = 0x02;
/// CONST_REKEY.
pub const CONST_REKEY: u8 = 0x03;
/// CONST_KEY_A.
pub const CONST_KEY_A: u8 = 0x04;
/// CONST_KEY_B.
pub const CONST_KEY_B: u8 = 0x05;
/// CONST_RESUME.
pub const CONST_RESUME: u8 = 0x06;
/// CONST_EARLY: not an RFC 8548 constant (0x01 to 0x06 are). It keys the
/// connecting side's 0-RTT frames, sent before the accepting side's
/// resumption nonce is known (docs/PROTOCOL.md 7.1).
pub const CONST_EARLY: u8 = 0x07;
/// K_LEN for every tcpcrypt TEP (RFC 8548 5).
pub const K_LEN: usize = 32;
/// Length of a resumption identifier.
pub const RESUME_ID_LEN: usize = 18;
/// Length of each half of a resumption identifier.
pub const RESUME_HALF_LEN: usize = 9;
/// Length of a tcpcrypt session ID: the TEP byte and K_LEN bytes.
pub const SESSION_ID_LEN: usize = 1 + K_LEN;

/// Which traffic key: the one host A (originally) encrypts with, or B's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyDirection {
    /// `k_ab`: encrypted by the host that was A in the original session.
    AToB,
    /// `k_ba`: encrypted by the host that was B in the original session.
    BToA,
}

impl KeyDirection {
    fn constant(self) -> u8 {
        match self {
            KeyDirection::AToB => CONST_KEY_A,
            KeyDirection::BToA => CONST_KEY_B,
        }
    }
}

/// CPRF(K, CONST, L) = HKDF-Expand-SHA256 (RFC 8548 5), into a fixed array.
fn cprf<const N: usize>(
    backend: &dyn CryptoBackend,
    key: &[u8; K_LEN],
    info: &[&[u8]],
) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    backend.expand(key, info, &mut out[..]);
    out
}

/// A session secret `ss[i]`.
#[derive(Clone)]
pub struct SessionSecret(Zeroizing<[u8; K_LEN]>);

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

impl SessionSecret {
    /// `ss[0] = PRK = Extract(N_A, eno_transcript | Init1 | Init2 | ES)`,
    /// with the messages exactly as transmitted.
    pub fn from_key_exchange(
        backend: &dyn CryptoBackend,
        n_a: &[u8],
        transcript: &[u8],
        init1: &[u8],
        init2: &[u8],
        es: &[u8],
    ) -> Self {
        SessionSecret(backend.extract(n_a, &[transcript, init1, init2, es]))
    }

    /// A secret from its bytes. Dangerous: for known-answer tests.
    #[cfg(any(test, feature = "dangerous"))]
    pub fn dangerous_from_bytes(bytes: [u8; K_LEN]) -> Self {
        SessionSecret(Zeroizing::new(bytes))
    }

    /// The secret bytes. Dangerous: for known-answer tests.
    #[cfg(any(test, feature = "dangerous"))]
    pub fn dangerous_as_bytes(&self) -> &[u8; K_LEN] {
        &self.0
    }

    /// `ss[i+1] = CPRF(ss[i], CONST_NEXTK, K_LEN)`.
    pub fn next(&self, backend: &dyn CryptoBackend) -> SessionSecret {
        SessionSecret(cprf(backend, &self.0, &[&[CONST_NEXTK]]))
    }

    /// `session_id[i] = TEP-byte | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN)`.
    pub fn session_id(&self, backend: &dyn CryptoBackend, tep_byte: u8, sn: &[u8]) -> SessionId {
        let tail: Zeroizing<[u8; K_LEN]> = cprf(backend, &self.0, &[&[CONST_SESSID], sn]);
        let mut id = [0u8; SESSION_ID_LEN];
        id[0] = tep_byte;
        id[1..].copy_from_slice(&tail[..]);
        SessionId(id)
    }

    /// `mk[0] = CPRF(ss[i], CONST_REKEY | sn[i], K_LEN)`.
    pub fn master_key(&self, backend: &dyn CryptoBackend, sn: &[u8]) -> MasterKey {
        MasterKey(cprf(backend, &self.0, &[&[CONST_REKEY], sn]))
    }

    /// The master key of the connecting side's 0-RTT frames:
    /// `mk_early = CPRF(ss[i], CONST_EARLY | nonce, K_LEN)`, with `nonce`
    /// the connecting side's resumption nonce of this connection. Its
    /// traffic key is derived as `k_ab[0]`/`k_ba[0]` are, for the
    /// connecting side's original role.
    pub fn early_master_key(&self, backend: &dyn CryptoBackend, nonce: &[u8]) -> MasterKey {
        MasterKey(cprf(backend, &self.0, &[&[CONST_EARLY], nonce]))
    }

    /// `resume[i] = CPRF(ss[i], CONST_RESUME, 18)`.
    pub fn resume_id(&self, backend: &dyn CryptoBackend) -> [u8; RESUME_ID_LEN] {
        *cprf::<RESUME_ID_LEN>(backend, &self.0, &[&[CONST_RESUME]])
    }
}

/// A master key `mk[j]`.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; K_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// The master key bytes. Dangerous: for known-answer tests.
    #[cfg(any(test, feature = "dangerous"))]
    pub fn dangerous_as_bytes(&self) -> &[u8; K_LEN] {
        &self.0
    }

    /// `mk[j+1] = CPRF(mk[j], CONST_REKEY, K_LEN)`.
    pub fn next(&self, backend: &dyn CryptoBackend) -> MasterKey {
        MasterKey(cprf(backend, &self.0, &[&[CONST_REKEY]]))
    }

    /// `k_ab[j]` or `k_ba[j]`: the AEAD key followed by the nonce
    /// randomizer.
    pub fn traffic_key(
        &self,
        backend: &dyn CryptoBackend,
        direction: KeyDirection,
        aead: AeadAlgorithm,
    ) -> TrafficKey {
        let len = aead.traffic_key_len();
        let mut bytes = Zeroizing::new([0u8; MAX_TRAFFIC_KEY_LEN]);
        backend.expand(&self.0, &[&[direction.constant()]], &mut bytes[..len]);
        TrafficKey { bytes, aead }
    }
}

const MAX_TRAFFIC_KEY_LEN: usize = 32 + NONCE_LEN;

/// A traffic key `k_ab[j]` / `k_ba[j]`: K followed by NR.
pub struct TrafficKey {
    bytes: Zeroizing<[u8; MAX_TRAFFIC_KEY_LEN]>,
    aead: AeadAlgorithm,
}

impl fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficKey")
            .field("aead", &self.aead)
            .finish_non_exhaustive()
    }
}

impl TrafficKey {
    /// The whole traffic key (`ae_key_len + ae_nonce_len` bytes).
    /// Dangerous: for known-answer tests.
    #[cfg(any(test, feature = "dangerous"))]
    pub fn dangerous_as_bytes(&self) -> &[u8] {
        &self.bytes[..self.aead.traffic_key_len()]
    }

    /// The nonce randomizer NR.
    pub fn nonce_randomizer(&self) -> [u8; NONCE_LEN] {
        let k = self.aead.key_len();
        self.bytes[k..k + NONCE_LEN].try_into().expect("12 bytes")
    }

    /// A keyed AEAD for K.
    pub fn aead_key(&self, backend: &dyn CryptoBackend) -> Box<dyn AeadKey> {
        backend.aead_key(self.aead, &self.bytes[..self.aead.key_len()])
    }
}

/// A tcpcrypt session ID (RFC 8547 5.1, RFC 8548 3.4): the negotiated TEP
/// byte as B sent it, then 32 bytes. Formats as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; SESSION_ID_LEN]);

impl SessionId {
    /// A session ID received from elsewhere (a PROXY protocol TLV, the
    /// other end of an application protocol), to compare with a stream's.
    ///
    /// ```
    /// use tcpcrypt_proto::SessionId;
    /// let id = SessionId::from_bytes([0x23; 33]);
    /// assert_eq!(id.tep_byte(), 0x23);
    /// assert_eq!(id.to_string().len(), 66);
    /// ```
    pub fn from_bytes(bytes: [u8; SESSION_ID_LEN]) -> Self {
        SessionId(bytes)
    }

    /// The 33 bytes.
    pub fn as_bytes(&self) -> &[u8; SESSION_ID_LEN] {
        &self.0
    }

    /// Byte 0: the negotiated TEP identifier with B's `v` bit.
    pub fn tep_byte(&self) -> u8 {
        self.0[0]
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}
