//! An established session: its parameters, and the frame sealer and opener
//! keyed for it.

use std::fmt;

use super::aead::AeadAlgorithm;
use super::crypto::CryptoBackend;
use super::frame::{FrameOpener, FrameSealer};
use super::resumption::{ResumeHalf, ResumptionSecret};
use super::schedule::{KeyDirection, SessionId, SessionSecret};
use super::tep::Tep;

/// An ENO role (RFC 8547 4.2): A sent `b = 0`, B sent `b = 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Host A: the connecting side; sends Init1.
    A,
    /// Host B: the accepting side; sends Init2.
    B,
}

impl Role {
    /// The other role.
    pub fn peer(self) -> Role {
        match self {
            Role::A => Role::B,
            Role::B => Role::A,
        }
    }

    /// The key a host encrypts with, from its role in the original session
    /// (RFC 8548 3.3, 3.5).
    pub fn sending_direction(self) -> KeyDirection {
        match self {
            Role::A => KeyDirection::AToB,
            Role::B => KeyDirection::BToA,
        }
    }

    /// 0 for A, 1 for B, as `TCP_ENO_ROLE` reports it.
    pub fn as_u8(self) -> u8 {
        match self {
            Role::A => 0,
            Role::B => 1,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::A => "A",
            Role::B => "B",
        })
    }
}

/// What an application may know about an encrypted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// This host's role in this connection.
    pub role: Role,
    /// The negotiated TEP.
    pub tep: Tep,
    /// The negotiated TEP byte as B sent it, `v` bit included.
    pub tep_byte: u8,
    /// The negotiated AEAD.
    pub aead: AeadAlgorithm,
    /// The session ID.
    pub session_id: SessionId,
    /// The negotiation transcript: A's option bytes, then B's.
    pub transcript: Vec<u8>,
    /// The global suboption this host sent.
    pub local_global: u8,
    /// The global suboption the peer sent (implicit 0 if none).
    pub peer_global: u8,
    /// Whether the session was resumed from a cached secret.
    pub resumed: bool,
    /// Whether the connecting side's 0-RTT data was accepted: sent (A) or
    /// received (B) under the early key before the handshake's round trip
    /// (docs/PROTOCOL.md 7.1).
    pub zero_rtt: bool,
    /// Where the accepting side cached the secret for this peer's next
    /// resumption (the key for a flush), if it did.
    pub cached_resumption: Option<ResumeHalf>,
}

impl SessionInfo {
    /// Whether the peer set the application-aware bit.
    pub fn peer_application_aware(&self) -> bool {
        self.peer_global & super::eno::GLOBAL_A != 0
    }

    /// `TCP_ENO_SELF_NAME` of the tcpinc API draft: the role byte, then
    /// the session ID. One end's self name is the other end's peer name.
    pub fn self_name(&self) -> Vec<u8> {
        let mut v = vec![self.role.as_u8()];
        v.extend_from_slice(self.session_id.as_bytes());
        v
    }

    /// `TCP_ENO_PEER_NAME`: like the self name with the role negated.
    pub fn peer_name(&self) -> Vec<u8> {
        let mut v = vec![self.role.peer().as_u8()];
        v.extend_from_slice(self.session_id.as_bytes());
        v
    }
}

/// An established session, ready to move data.
#[derive(Debug)]
pub struct Session {
    /// The session's parameters.
    pub info: SessionInfo,
    /// Seals this host's frames.
    pub sealer: FrameSealer,
    /// Opens the peer's frames.
    pub opener: FrameOpener,
    /// `ss[i+1]`, for the connecting side to cache for its next connection
    /// to the same peer (the accepting side caches it itself). `None` when
    /// caching is off.
    pub resumption: Option<ResumptionSecret>,
}

/// The outcome of negotiation, before keys exist.
pub(crate) struct Negotiated {
    pub role: Role,
    pub tep: Tep,
    pub tep_byte: u8,
    pub aead: AeadAlgorithm,
    pub transcript: Vec<u8>,
    pub local_global: u8,
    pub peer_global: u8,
    pub resumed: bool,
}

/// Everything the key schedule needs to key a session.
pub(crate) struct Keying<'a> {
    pub backend: &'static dyn CryptoBackend,
    pub secret: &'a SessionSecret,
    pub index: u64,
    pub sn: &'a [u8],
    pub original_role: Role,
    pub send_offset: u64,
    pub recv_offset: u64,
    pub cache_next: bool,
}

impl Session {
    /// Keys a session from `ss[i]` and `sn[i]` (RFC 8548 3.3 to 3.5). The
    /// caller drops `ss[i]` afterwards; `ss[i+1]` is derived here when it
    /// will be cached.
    pub(crate) fn key(k: Keying<'_>, n: Negotiated) -> Session {
        let mk0 = k.secret.master_key(k.backend, k.sn);
        let info = SessionInfo {
            role: n.role,
            tep: n.tep,
            tep_byte: n.tep_byte,
            aead: n.aead,
            session_id: k.secret.session_id(k.backend, n.tep_byte, k.sn),
            transcript: n.transcript,
            local_global: n.local_global,
            peer_global: n.peer_global,
            resumed: n.resumed,
            zero_rtt: false,
            cached_resumption: None,
        };
        let send = k.original_role.sending_direction();
        let recv = k.original_role.peer().sending_direction();
        let sealer = FrameSealer::new(k.backend, mk0.clone(), send, info.aead, k.send_offset);
        let opener = FrameOpener::new(k.backend, mk0, recv, info.aead, k.recv_offset);
        let resumption = k.cache_next.then(|| ResumptionSecret {
            tep: info.tep,
            aead: info.aead,
            original_role: k.original_role,
            index: k.index + 1,
            secret: k.secret.next(k.backend),
        });
        Session {
            info,
            sealer,
            opener,
            resumption,
        }
    }
}
