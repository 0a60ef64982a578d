//! AEAD algorithms of the "tcpcrypt AEAD Algorithms" registry (RFC 8548 6, 7).

use std::fmt;

/// Length of every registered AEAD's nonce (`ae_nonce_len`).
pub const NONCE_LEN: usize = 12;
/// Length of every registered AEAD's authentication tag.
pub const TAG_LEN: usize = 16;

/// An AEAD algorithm with its two-byte identifier as sent in Init1/Init2.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum AeadAlgorithm {
    /// AEAD_AES_128_GCM, 0x0001 (REQUIRED).
    Aes128Gcm,
    /// AEAD_AES_256_GCM, 0x0002.
    Aes256Gcm,
    /// AEAD_CHACHA20_POLY1305, 0x0010.
    ChaCha20Poly1305,
}

impl AeadAlgorithm {
    /// Every algorithm this implementation supports, weakest preference first.
    pub const ALL: [AeadAlgorithm; 3] = [
        AeadAlgorithm::ChaCha20Poly1305,
        AeadAlgorithm::Aes256Gcm,
        AeadAlgorithm::Aes128Gcm,
    ];

    /// The registry identifier.
    pub const fn id(self) -> u16 {
        match self {
            AeadAlgorithm::Aes128Gcm => 0x0001,
            AeadAlgorithm::Aes256Gcm => 0x0002,
            AeadAlgorithm::ChaCha20Poly1305 => 0x0010,
        }
    }

    /// The algorithm for a registry identifier, if supported.
    pub const fn from_id(id: u16) -> Option<Self> {
        match id {
            0x0001 => Some(AeadAlgorithm::Aes128Gcm),
            0x0002 => Some(AeadAlgorithm::Aes256Gcm),
            0x0010 => Some(AeadAlgorithm::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// `ae_key_len`.
    pub const fn key_len(self) -> usize {
        match self {
            AeadAlgorithm::Aes128Gcm => 16,
            AeadAlgorithm::Aes256Gcm | AeadAlgorithm::ChaCha20Poly1305 => 32,
        }
    }

    /// Length of a traffic key: the AEAD key followed by the nonce randomizer.
    pub const fn traffic_key_len(self) -> usize {
        self.key_len() + NONCE_LEN
    }

    /// The name used in the IANA registry.
    pub const fn name(self) -> &'static str {
        match self {
            AeadAlgorithm::Aes128Gcm => "AEAD_AES_128_GCM",
            AeadAlgorithm::Aes256Gcm => "AEAD_AES_256_GCM",
            AeadAlgorithm::ChaCha20Poly1305 => "AEAD_CHACHA20_POLY1305",
        }
    }
}

impl fmt::Display for AeadAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
