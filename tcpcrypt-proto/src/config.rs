//! What a host offers and accepts in a handshake.

use std::sync::Arc;

use super::aead::AeadAlgorithm;
use super::crypto::{self, CryptoBackend};
use super::error::Error;
use super::key_pairs::KeyPairPool;
use super::random::RandomSource;
use super::tep::{EphemeralKey, Tep};

/// The longest resumption nonce (RFC 8548 3.5).
pub const MAX_RESUMPTION_NONCE_LEN: usize = 8;

/// Session caching controls (RFC 8548 3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumptionSettings {
    /// Offer (client) or honour (server) resumption. `false` is the RFC's
    /// "resumption requests will be ignored": a fresh key exchange always.
    pub resume: bool,
    /// Keep `ss[i+1]` of new sessions for a later resumption. `false` is the
    /// RFC's "no session secrets will be cached".
    pub cache: bool,
    /// Length of the resumption nonce, 0 to 8. The default is 8 because
    /// this implementation cannot rule out reuse of a secret after a VM
    /// snapshot is restored.
    pub nonce_len: usize,
}

impl Default for ResumptionSettings {
    fn default() -> Self {
        ResumptionSettings {
            resume: true,
            cache: true,
            nonce_len: MAX_RESUMPTION_NONCE_LEN,
        }
    }
}

/// The protocol configuration of one host.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The crypto backend.
    pub backend: &'static dyn CryptoBackend,
    /// TEPs offered (as A) and accepted (as B), in increasing order of
    /// preference, as in a B option (RFC 8547 4.5).
    pub teps: Vec<Tep>,
    /// AEADs: as A, the list sent in Init1 (in this order); as B, the
    /// preference for choosing from A's list, in increasing order.
    pub aeads: Vec<AeadAlgorithm>,
    /// The local `a` bit: this application is application-aware.
    pub application_aware: bool,
    /// Mandatory application-aware mode (RFC 8547 4.2): ENO fails unless
    /// the peer sets `a`.
    pub require_application_aware: bool,
    /// As A, send Init1 for the preferred TEP together with the hello,
    /// saving a round trip when B picks that TEP.
    pub pipeline_init1: bool,
    /// 0-RTT data on resumed connections (docs/PROTOCOL.md 7.1): as A, send
    /// the first application bytes under the resumed secret with the
    /// hello; as B, accept them. With `false`, A sends none and B answers
    /// an offer that carries them with a fresh exchange (A then sends the
    /// same bytes again after it).
    pub early_data: bool,
    /// Resumption controls.
    pub resumption: ResumptionSettings,
    /// Key pairs made ahead of time (`None`: each handshake makes its
    /// own). Pairs made with another backend than `backend` are not used.
    pub key_pairs: Option<Arc<KeyPairPool>>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            backend: crypto::default_backend(),
            teps: Tep::DEFAULT.to_vec(),
            aeads: AeadAlgorithm::ALL.to_vec(),
            application_aware: false,
            require_application_aware: false,
            pipeline_init1: true,
            early_data: true,
            resumption: ResumptionSettings::default(),
            key_pairs: None,
        }
    }
}

impl HandshakeConfig {
    /// Checks the invariants the handshake relies on.
    pub fn validate(&self) -> Result<(), Error> {
        if self.teps.is_empty() {
            return Err(Error::InvalidConfig("no TEP configured"));
        }
        if self.aeads.is_empty() || self.aeads.len() > 255 {
            return Err(Error::InvalidConfig("configure 1 to 255 AEADs"));
        }
        if self.resumption.nonce_len > MAX_RESUMPTION_NONCE_LEN {
            return Err(Error::InvalidConfig("resumption nonce longer than 8 bytes"));
        }
        let mut seen = Vec::new();
        for t in &self.teps {
            if seen.contains(t) {
                return Err(Error::InvalidConfig("TEP listed twice"));
            }
            seen.push(*t);
        }
        Ok(())
    }

    /// An ephemeral key pair for one handshake: from the pool when it has
    /// one, otherwise made now.
    pub(crate) fn ephemeral_key(
        &self,
        tep: Tep,
        rng: &mut dyn RandomSource,
    ) -> Result<EphemeralKey, Error> {
        let pooled = self
            .key_pairs
            .as_ref()
            .filter(|p| p.backend().name() == self.backend.name())
            .and_then(|p| p.take(tep));
        match pooled {
            Some(key) => Ok(key),
            None => EphemeralKey::generate(tep, self.backend, rng),
        }
    }

    /// The global suboption this host sends.
    pub(crate) fn global(&self, role_b: bool) -> u8 {
        let mut g = 0;
        if role_b {
            g |= super::eno::GLOBAL_B;
        }
        // Mandatory application-aware mode is for applications that are
        // application-aware themselves (RFC 8547 4.2, 8.4).
        if self.application_aware || self.require_application_aware {
            g |= super::eno::GLOBAL_A;
        }
        g
    }
}
