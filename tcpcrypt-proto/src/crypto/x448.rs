//! X448 (RFC 7748) for both backends, from the `x448` crate: aws-lc-rs has
//! no X448, and it is the Rust implementation of the function (a
//! Montgomery ladder with constant-time swaps over `ed448-goldilocks`).
//! The crate does not zeroize its copies of the scalar; ours are.

use zeroize::Zeroizing;

use super::CryptoError;

/// X448 scalar and point length.
const LEN: usize = 56;

/// The public key of a 56-byte private key (clamped as RFC 7748 says).
pub(super) fn public_key(private: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let secret = x448::Secret::from_bytes(private).ok_or(CryptoError)?;
    Ok(x448::PublicKey::from(&secret).as_bytes().to_vec())
}

/// The shared secret with a peer's 56-byte public key. Low-order points,
/// whose result would be all zero (RFC 7748 6.2), are refused.
pub(super) fn agree(private: &[u8], peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if peer_public.len() != LEN {
        return Err(CryptoError);
    }
    let secret = x448::Secret::from_bytes(private).ok_or(CryptoError)?;
    let peer = x448::PublicKey::from_bytes(peer_public).ok_or(CryptoError)?;
    let shared = secret.as_diffie_hellman(&peer).ok_or(CryptoError)?;
    Ok(Zeroizing::new(shared.as_bytes().to_vec()))
}
