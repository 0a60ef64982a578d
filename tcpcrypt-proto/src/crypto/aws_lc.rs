//! The aws-lc-rs backend.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::encoding::{AsBigEndian, EcPublicKeyCompressedBin};
use aws_lc_rs::{hkdf, hmac};
use zeroize::Zeroizing;

use super::{AeadKey, CryptoBackend, CryptoError, LoadedKey, PreparedKey};
use crate::aead::{AeadAlgorithm, NONCE_LEN, TAG_LEN};
use crate::tep::Tep;

#[derive(Debug)]
pub(super) struct AwsLcRs;

/// The aws-lc-rs algorithm of a TEP; `None` for X448, which it lacks.
fn algorithm(tep: Tep) -> Option<&'static agreement::Algorithm> {
    match tep {
        Tep::EcdheCurve25519 => Some(&agreement::X25519),
        Tep::EcdheP256 => Some(&agreement::ECDH_P256),
        Tep::EcdheP521 => Some(&agreement::ECDH_P521),
        Tep::EcdheCurve448 => None,
    }
}

/// The public key of a loaded private key, in the form
/// [`CryptoBackend::public_key`] returns.
fn public_of(tep: Tep, key: &PrivateKey) -> Result<Vec<u8>, CryptoError> {
    let public = key.compute_public_key().map_err(|_| CryptoError)?;
    if tep == Tep::EcdheCurve25519 {
        return Ok(public.as_ref().to_vec());
    }
    let compressed: EcPublicKeyCompressedBin<'_> = public.as_be_bytes().map_err(|_| CryptoError)?;
    Ok(compressed.as_ref().to_vec())
}

/// Key agreement with a loaded private key; a NIST curve's peer key must
/// be a compressed point, as its Pub field carries it.
fn agree_with(
    tep: Tep,
    key: &PrivateKey,
    peer_public: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if tep != Tep::EcdheCurve25519 && !matches!(peer_public.first(), Some(0x02 | 0x03)) {
        return Err(CryptoError);
    }
    let peer = UnparsedPublicKey::new(key.algorithm(), peer_public);
    agreement::agree(key, peer, CryptoError, |secret| {
        Ok(Zeroizing::new(secret.to_vec()))
    })
}

/// A private key aws-lc-rs has loaded (its public key computed once). aws-lc
/// wipes the key's memory when it frees it (`OPENSSL_free` runs
/// `OPENSSL_cleanse`), unless the process installs allocator hooks of its
/// own in aws-lc, which this crate never does.
struct Loaded {
    tep: Tep,
    key: PrivateKey,
}

impl PreparedKey for Loaded {
    fn agree(&self, peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        agree_with(self.tep, &self.key, peer_public)
    }
}

/// An HKDF output length, as aws-lc-rs wants it.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl CryptoBackend for AwsLcRs {
    fn name(&self) -> &'static str {
        "aws-lc-rs"
    }

    fn extract(&self, salt: &[u8], ikm: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
        let mut ctx = hmac::Context::with_key(&key);
        for part in ikm {
            ctx.update(part);
        }
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn expand(&self, prk: &[u8; 32], info: &[&[u8]], out: &mut [u8]) {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, prk);
        // Lengths are fixed by the protocol (at most 44 bytes), far below
        // HKDF's limit, so neither step can fail.
        let okm = prk
            .expand(info, Len(out.len()))
            .expect("HKDF-Expand length within limit");
        okm.fill(out).expect("HKDF-Expand length within limit");
    }

    fn public_key(&self, tep: Tep, private: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some(alg) = algorithm(tep) else {
            return super::x448::public_key(private);
        };
        let key = PrivateKey::from_private_key(alg, private).map_err(|_| CryptoError)?;
        public_of(tep, &key)
    }

    fn key_pair(&self, tep: Tep, private: &[u8]) -> Result<LoadedKey, CryptoError> {
        let Some(alg) = algorithm(tep) else {
            return Ok(LoadedKey {
                public: super::x448::public_key(private)?,
                prepared: None,
            });
        };
        let key = PrivateKey::from_private_key(alg, private).map_err(|_| CryptoError)?;
        Ok(LoadedKey {
            public: public_of(tep, &key)?,
            prepared: Some(Box::new(Loaded { tep, key })),
        })
    }

    fn agree(
        &self,
        tep: Tep,
        private: &[u8],
        peer_public: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let Some(alg) = algorithm(tep) else {
            return super::x448::agree(private, peer_public);
        };
        let key = PrivateKey::from_private_key(alg, private).map_err(|_| CryptoError)?;
        agree_with(tep, &key, peer_public)
    }

    fn aead_key(&self, alg: AeadAlgorithm, key: &[u8]) -> Box<dyn AeadKey> {
        let algorithm = match alg {
            AeadAlgorithm::Aes128Gcm => &aead::AES_128_GCM,
            AeadAlgorithm::Aes256Gcm => &aead::AES_256_GCM,
            AeadAlgorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        // The key length comes from the traffic key split, which always
        // matches the algorithm.
        let unbound = UnboundKey::new(algorithm, key).expect("AEAD key length matches algorithm");
        Box::new(AwsLcAead(LessSafeKey::new(unbound)))
    }
}

struct AwsLcAead(LessSafeKey);

impl AeadKey for AwsLcAead {
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            .expect("frame length within AEAD limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                in_out,
            )
            .map(|_| ())
            .map_err(|_| CryptoError)
    }
}
