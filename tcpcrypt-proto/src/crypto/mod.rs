//! The one small trait between the protocol and its cryptographic
//! primitives, and the two backends that implement it.
//!
//! * `aws-lc-rs` (feature `aws-lc-rs`, the default): the fastest AES-GCM on
//!   the machines we target.
//! * RustCrypto (feature `rustcrypto`): pure Rust (`x25519-dalek`, `p256`,
//!   `p521`, `aes-gcm`, `chacha20poly1305`, `hkdf`), for builds without a C
//!   toolchain.
//!
//! X448 comes from the `x448` crate in both (aws-lc-rs has none).
//!
//! Both produce identical bytes for identical inputs; a test checks it.

use std::fmt;

use zeroize::Zeroizing;

use super::aead::{AeadAlgorithm, NONCE_LEN, TAG_LEN};
use super::tep::Tep;

#[cfg(feature = "aws-lc-rs")]
mod aws_lc;
#[cfg(feature = "rustcrypto")]
mod rust_crypto;
mod x448;

#[cfg(not(any(feature = "aws-lc-rs", feature = "rustcrypto")))]
compile_error!("enable at least one crypto backend: feature `aws-lc-rs` or `rustcrypto`");

/// A failure inside a primitive (a rejected key, an unauthentic ciphertext).
/// Carries no detail on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoError;

/// The primitives tcpcrypt needs: HKDF-SHA256, key agreement for the
/// supported TEPs, and the registered AEADs.
pub trait CryptoBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// HKDF-Extract-SHA256 (`HMAC-SHA256(salt, ikm)`) over the concatenation
    /// of `ikm`.
    fn extract(&self, salt: &[u8], ikm: &[&[u8]]) -> Zeroizing<[u8; 32]>;

    /// HKDF-Expand-SHA256 of `prk` with the concatenation of `info`, filling
    /// `out` (at most 255 * 32 bytes).
    fn expand(&self, prk: &[u8; 32], info: &[&[u8]], out: &mut [u8]);

    /// The public key for a private key: 32 or 56 raw bytes for X25519 or
    /// X448, the compressed point (33 or 67 bytes) for P-256 or P-521.
    fn public_key(&self, tep: Tep, private: &[u8]) -> Result<Vec<u8>, CryptoError>;

    /// The public key for a private key, with the private key in this
    /// backend's own form when parsing it costs work that a later
    /// [`agree`](Self::agree) would do again (aws-lc-rs computes the public
    /// key whenever it loads a private one: as much as the agreement
    /// itself). Key pairs made ahead of time keep it, so that a handshake
    /// pays for the agreement alone. The default has no such form.
    fn key_pair(&self, tep: Tep, private: &[u8]) -> Result<LoadedKey, CryptoError> {
        Ok(LoadedKey {
            public: self.public_key(tep, private)?,
            prepared: None,
        })
    }

    /// Key agreement with a peer's public key (raw X25519 or X448 bytes, or
    /// a compressed P-256 or P-521 point, which is validated). Returns the
    /// shared secret (for the NIST curves the big-endian x-coordinate, 32
    /// or 66 bytes).
    fn agree(
        &self,
        tep: Tep,
        private: &[u8],
        peer_public: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;

    /// A keyed AEAD.
    fn aead_key(&self, alg: AeadAlgorithm, key: &[u8]) -> Box<dyn AeadKey>;
}

/// What [`CryptoBackend::key_pair`] makes of a private key.
pub struct LoadedKey {
    /// As [`CryptoBackend::public_key`] returns it.
    pub public: Vec<u8>,
    /// The private key in the backend's own form, if it has one.
    pub prepared: Option<Box<dyn PreparedKey>>,
}

/// A private key loaded into a backend, ready for key agreement.
/// Implementations must erase the key when it is dropped.
pub trait PreparedKey: Send + Sync {
    /// [`CryptoBackend::agree`] with this key: the same secret, and the
    /// same peer keys refused.
    fn agree(&self, peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
}

/// An AEAD key ready to seal and open.
pub trait AeadKey: Send + Sync {
    /// Encrypts `in_out` in place and returns the tag.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN];

    /// Decrypts `in_out` in place if `tag` authenticates it.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError>;
}

/// The backend selected by default: aws-lc-rs when compiled in, RustCrypto
/// otherwise.
pub fn default_backend() -> &'static dyn CryptoBackend {
    #[cfg(feature = "aws-lc-rs")]
    {
        aws_lc_rs()
    }
    #[cfg(not(feature = "aws-lc-rs"))]
    {
        rustcrypto()
    }
}

/// The aws-lc-rs backend.
#[cfg(feature = "aws-lc-rs")]
pub fn aws_lc_rs() -> &'static dyn CryptoBackend {
    &aws_lc::AwsLcRs
}

/// The pure-Rust RustCrypto backend.
#[cfg(feature = "rustcrypto")]
pub fn rustcrypto() -> &'static dyn CryptoBackend {
    &rust_crypto::RustCrypto
}

/// Every backend compiled into this build.
pub fn all_backends() -> Vec<&'static dyn CryptoBackend> {
    [
        #[cfg(feature = "aws-lc-rs")]
        aws_lc_rs(),
        #[cfg(feature = "rustcrypto")]
        rustcrypto(),
    ]
    .to_vec()
}
