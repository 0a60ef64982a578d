//! The pure-Rust RustCrypto backend.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{AeadKey, CryptoBackend, CryptoError};
use crate::aead::{AeadAlgorithm, NONCE_LEN, TAG_LEN};
use crate::tep::Tep;

#[derive(Debug)]
pub(super) struct RustCrypto;

fn x25519_scalar(private: &[u8]) -> Result<x25519_dalek::StaticSecret, CryptoError> {
    let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(private.try_into().map_err(|_| CryptoError)?);
    Ok(x25519_dalek::StaticSecret::from(*bytes))
}

fn p256_scalar(private: &[u8]) -> Result<p256::SecretKey, CryptoError> {
    p256::SecretKey::from_slice(private).map_err(|_| CryptoError)
}

fn p521_scalar(private: &[u8]) -> Result<p521::SecretKey, CryptoError> {
    p521::SecretKey::from_slice(private).map_err(|_| CryptoError)
}

/// Refuses a NIST-curve point that is not in compressed form (RFC 8548 5).
fn compressed(point: &[u8]) -> Result<(), CryptoError> {
    match point.first() {
        Some(0x02 | 0x03) => Ok(()),
        _ => Err(CryptoError),
    }
}

impl CryptoBackend for RustCrypto {
    fn name(&self) -> &'static str {
        "rustcrypto"
    }

    fn extract(&self, salt: &[u8], ikm: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(salt)
            .expect("HMAC accepts keys of any length");
        for part in ikm {
            mac.update(part);
        }
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    fn expand(&self, prk: &[u8; 32], info: &[&[u8]], out: &mut [u8]) {
        let hkdf = Hkdf::<Sha256>::from_prk(prk).expect("PRK is one hash length");
        hkdf.expand_multi_info(info, out)
            .expect("HKDF-Expand length within limit");
    }

    fn public_key(&self, tep: Tep, private: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match tep {
            Tep::EcdheCurve25519 => {
                let secret = x25519_scalar(private)?;
                Ok(x25519_dalek::PublicKey::from(&secret).as_bytes().to_vec())
            }
            Tep::EcdheP256 => {
                let secret = p256_scalar(private)?;
                Ok(secret.public_key().to_sec1_point(true).as_bytes().to_vec())
            }
            Tep::EcdheP521 => {
                let secret = p521_scalar(private)?;
                Ok(secret.public_key().to_sec1_point(true).as_bytes().to_vec())
            }
            Tep::EcdheCurve448 => super::x448::public_key(private),
        }
    }

    fn agree(
        &self,
        tep: Tep,
        private: &[u8],
        peer_public: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match tep {
            Tep::EcdheCurve25519 => {
                let secret = x25519_scalar(private)?;
                let peer: [u8; 32] = peer_public.try_into().map_err(|_| CryptoError)?;
                let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
                Ok(Zeroizing::new(shared.as_bytes().to_vec()))
            }
            Tep::EcdheP256 => {
                compressed(peer_public)?;
                let secret = p256_scalar(private)?;
                // from_sec1_bytes checks that the point is on the curve and
                // not the identity (IEEE 1363 A.16.10 for a prime-order curve).
                let peer =
                    p256::PublicKey::from_sec1_bytes(peer_public).map_err(|_| CryptoError)?;
                let shared =
                    p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            Tep::EcdheP521 => {
                compressed(peer_public)?;
                let secret = p521_scalar(private)?;
                // As for P-256: on the curve, not the identity.
                let peer =
                    p521::PublicKey::from_sec1_bytes(peer_public).map_err(|_| CryptoError)?;
                let shared =
                    p521::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            Tep::EcdheCurve448 => super::x448::agree(private, peer_public),
        }
    }

    fn aead_key(&self, alg: AeadAlgorithm, key: &[u8]) -> Box<dyn AeadKey> {
        // The key length comes from the traffic key split, which always
        // matches the algorithm.
        const LEN: &str = "AEAD key length matches algorithm";
        match alg {
            AeadAlgorithm::Aes128Gcm => {
                Box::new(Generic(Aes128Gcm::new_from_slice(key).expect(LEN)))
            }
            AeadAlgorithm::Aes256Gcm => {
                Box::new(Generic(Aes256Gcm::new_from_slice(key).expect(LEN)))
            }
            AeadAlgorithm::ChaCha20Poly1305 => {
                Box::new(Generic(ChaCha20Poly1305::new_from_slice(key).expect(LEN)))
            }
        }
    }
}

/// Any RustCrypto AEAD with a 12-byte nonce and a 16-byte tag.
struct Generic<A>(A);

impl<A> AeadKey for Generic<A>
where
    A: AeadInOut + Send + Sync,
{
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let nonce = aes_gcm::aead::Nonce::<A>::try_from(&nonce[..]).expect("12-byte nonce");
        let tag = self
            .0
            .encrypt_inout_detached(&nonce, aad, in_out.into())
            .expect("frame length within AEAD limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        out
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        let nonce = aes_gcm::aead::Nonce::<A>::try_from(&nonce[..]).expect("12-byte nonce");
        let tag = aes_gcm::aead::Tag::<A>::try_from(&tag[..]).expect("16-byte tag");
        self.0
            .decrypt_inout_detached(&nonce, aad, in_out.into(), &tag)
            .map_err(|_| CryptoError)
    }
}
