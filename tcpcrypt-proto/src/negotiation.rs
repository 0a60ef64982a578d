//! TCP-ENO negotiation as tcpcrypt applies it: which suboptions each side
//! sends, and which TEP (fresh or resumed) wins (RFC 8547 4.2 to 4.6,
//! RFC 8548 3.2 and 3.5).
//!
//! Decisions on what the RFCs leave open (docs/PROTOCOL.md):
//! * a TEP named more than once in one option is invalid (tcpcrypt defines
//!   no repetition);
//! * a `v = 1` suboption with fewer than 9 or more than 17 data bytes is a
//!   fresh offer for that TEP (`v = 1` always implies willingness to run a
//!   fresh exchange with the same TEP);
//! * resumption data on one side only does not resume.

use std::fmt;

use super::config::{HandshakeConfig, MAX_RESUMPTION_NONCE_LEN};
use super::eno::{EnoOption, TepSuboption};
use super::error::Error;
use super::resumption::{ResumeHalf, ResumptionCache, ResumptionSecret};
use super::schedule::RESUME_HALF_LEN;
use super::tep::Tep;

/// Why ENO was disabled for a connection, leaving it plain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisableReason {
    /// The peer's ENO option was ill-formed (RFC 8547 4.4).
    IllFormedOption,
    /// Both sides sent the same `b` bit (RFC 8547 4.3).
    RoleClash,
    /// No TEP is valid for both sides (RFC 8547 4.5, RFC 8548 3.2).
    NoCommonTep,
    /// The peer's option was vacuous: it supports ENO but disabled it.
    PeerDeclined,
    /// Mandatory application-aware mode and the peer's `a` bit is 0.
    PeerNotApplicationAware,
    /// The only answer was a resumption suboption whose identifier half
    /// does not match ours (RFC 8548 3.5).
    ResumptionMismatch,
}

impl fmt::Display for DisableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DisableReason::IllFormedOption => "ill-formed ENO option",
            DisableReason::RoleClash => "both sides claimed the same ENO role",
            DisableReason::NoCommonTep => "no TEP in common",
            DisableReason::PeerDeclined => "peer declined encryption",
            DisableReason::PeerNotApplicationAware => "peer is not application-aware",
            DisableReason::ResumptionMismatch => "resumption identifier mismatch",
        })
    }
}

/// Resumption data carried in a suboption: identifier half and nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumptionData {
    /// The sender's identifier half.
    pub half: ResumeHalf,
    /// The sender's resumption nonce (0 to 8 bytes).
    pub nonce: Vec<u8>,
}

impl ResumptionData {
    /// Reads resumption data from a suboption. `None` means the suboption
    /// is a fresh offer (v = 0, or data outside 9..=17 bytes).
    pub fn from_suboption(s: &TepSuboption) -> Option<Self> {
        let max = RESUME_HALF_LEN + MAX_RESUMPTION_NONCE_LEN;
        if !s.v() || s.data.len() < RESUME_HALF_LEN || s.data.len() > max {
            return None;
        }
        Some(ResumptionData {
            half: s.data[..RESUME_HALF_LEN].try_into().expect("9 bytes"),
            nonce: s.data[RESUME_HALF_LEN..].to_vec(),
        })
    }

    /// The resumption suboption carrying this data for `tep` (`v = 1`).
    pub fn suboption(&self, tep: Tep) -> TepSuboption {
        let mut data = self.half.to_vec();
        data.extend_from_slice(&self.nonce);
        TepSuboption::with_data(tep.id(), data)
    }
}

/// What the connecting side offered.
#[derive(Clone, Debug)]
pub struct ClientOffer {
    /// Its option.
    pub option: EnoOption,
    /// TEPs offered for a fresh exchange (a resumption offer is one too).
    pub fresh: Vec<Tep>,
    /// The resumption offer, if any: the secret and the data sent.
    pub resumption: Option<(ResumptionSecret, ResumptionData)>,
    /// The TEP of a pipelined Init1: the last `v = 0` TEP of the option.
    pub pipelined: Option<Tep>,
}

/// Builds the connecting side's offer: fresh TEPs in preference order,
/// then at most one resumption suboption, last, so it needs no length
/// byte. A fresh offer is not repeated for the resumed TEP.
pub fn client_offer(
    config: &HandshakeConfig,
    resumption: Option<(ResumptionSecret, Vec<u8>)>,
) -> Result<ClientOffer, Error> {
    let resumption = resumption
        .filter(|(secret, _)| config.resumption.resume && config.teps.contains(&secret.tep))
        .map(|(secret, nonce)| {
            let data = ResumptionData {
                half: secret.own_half(config.backend),
                nonce,
            };
            (secret, data)
        });
    let resumed_tep = resumption.as_ref().map(|(s, _)| s.tep);
    let mut subs: Vec<TepSuboption> = config
        .teps
        .iter()
        .filter(|t| Some(**t) != resumed_tep)
        .map(|t| TepSuboption::plain(t.id()))
        .collect();
    let pipelined = if config.pipeline_init1 && resumption.is_none() {
        config.teps.last().copied()
    } else {
        None
    };
    if let Some((secret, data)) = &resumption {
        subs.push(data.suboption(secret.tep));
    }
    let global = config.global(false);
    let option = EnoOption::encode((global != 0).then_some(global), &subs)?;
    Ok(ClientOffer {
        option,
        fresh: config.teps.clone(),
        resumption,
        pipelined,
    })
}

/// The most ENO option bytes a SYN or SYN-ACK has room for beside Linux's
/// own options (MSS, SACK-permitted, timestamps, window scale: 20 of the
/// 40 bytes). The kernel carriage keeps its options within it.
pub const KERNEL_OPTION_ROOM: usize = 20;

/// The connecting side's offer in at most `room` option bytes (the kernel
/// carriage: [`KERNEL_OPTION_ROOM`]). An offer with resumption that does
/// not fit is sent with the resumption suboption alone (it is a fresh
/// offer for its TEP too, RFC 8548 3.5); if even that does not fit (a
/// global suboption and an 8-byte nonce: 21 bytes), the offer is fresh and
/// the secret goes unused. A fresh offer longer than `room` is returned as
/// it is, for the caller to refuse.
pub fn client_offer_within(
    config: &HandshakeConfig,
    resumption: Option<(ResumptionSecret, Vec<u8>)>,
    room: usize,
) -> Result<ClientOffer, Error> {
    let full = client_offer(config, resumption)?;
    if full.option.as_bytes().len() <= room {
        return Ok(full);
    }
    let Some((secret, data)) = full.resumption else {
        return Ok(full);
    };
    let global = config.global(false);
    let option = EnoOption::encode(
        (global != 0).then_some(global),
        &[data.suboption(secret.tep)],
    )?;
    if option.as_bytes().len() <= room {
        return Ok(ClientOffer {
            option,
            fresh: vec![secret.tep],
            resumption: Some((secret, data)),
            pipelined: None,
        });
    }
    client_offer(config, None)
}

/// What the accepting side decided.
#[derive(Debug)]
pub enum ServerChoice {
    /// A fresh key exchange with this TEP.
    Fresh(Tep),
    /// Resumption with a cached secret; the peer's data.
    Resume(ResumptionSecret, ResumptionData),
}

/// Checks the connecting side's global suboption.
fn check_global(
    config: &HandshakeConfig,
    peer: &EnoOption,
    peer_must_be_b: bool,
) -> Result<(), DisableReason> {
    if peer.b() != peer_must_be_b {
        return Err(DisableReason::RoleClash);
    }
    if config.require_application_aware && !peer.a() {
        return Err(DisableReason::PeerNotApplicationAware);
    }
    Ok(())
}

/// The accepting side's choice from the connecting side's option: a
/// resumption it can honour first, else its most preferred TEP among
/// those offered once.
pub fn server_choose(
    config: &HandshakeConfig,
    a_option: &EnoOption,
    cache: Option<&ResumptionCache>,
) -> Result<ServerChoice, DisableReason> {
    check_global(config, a_option, false)?;
    let usable = |s: &TepSuboption| {
        Tep::from_id(s.id()).filter(|t| config.teps.contains(t) && a_option.count(s.id()) == 1)
    };
    if let (true, Some(cache)) = (config.resumption.resume, cache) {
        for s in a_option.teps().iter().rev() {
            let (Some(tep), Some(data)) = (usable(s), ResumptionData::from_suboption(s)) else {
                continue;
            };
            if let Some(secret) = cache.take_for(&data.half, tep) {
                return Ok(ServerChoice::Resume(secret, data));
            }
        }
    }
    let offered: Vec<Tep> = a_option.teps().iter().filter_map(usable).collect();
    config
        .teps
        .iter()
        .rev()
        .find(|t| offered.contains(t))
        .map(|t| ServerChoice::Fresh(*t))
        .ok_or(DisableReason::NoCommonTep)
}

/// The accepting side's option for its choice: explicit global suboption
/// with `b = 1` and exactly one TEP (RFC 8547 4.5's SHOULD), or a vacuous
/// option when declining.
pub fn server_option(
    config: &HandshakeConfig,
    choice: Option<(Tep, Option<&ResumptionData>)>,
) -> Result<EnoOption, Error> {
    let subs: Vec<TepSuboption> = match choice {
        None => Vec::new(),
        Some((tep, None)) => vec![TepSuboption::plain(tep.id())],
        Some((tep, Some(data))) => vec![data.suboption(tep)],
    };
    EnoOption::encode(Some(config.global(true)), &subs)
}

/// What the connecting side makes of B's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientResult {
    /// Fresh key exchange with this TEP; the TEP byte as B sent it.
    Fresh(Tep, u8),
    /// Resumption accepted; B's data.
    Resume(ResumptionData),
}

/// Applies RFC 8547 4.5 from A's side: the last valid TEP in B's option
/// wins. A resumption suboption is valid only if we offered resumption for
/// that TEP and B's half is the other half of our identifier; otherwise it
/// is ignored.
pub fn client_interpret(
    config: &HandshakeConfig,
    offer: &ClientOffer,
    b_option: &EnoOption,
) -> Result<ClientResult, DisableReason> {
    if !b_option.b() {
        return Err(DisableReason::RoleClash);
    }
    // A vacuous answer means plain TCP on this connection, whatever the
    // rest of its global suboption says.
    if b_option.is_vacuous() {
        return Err(DisableReason::PeerDeclined);
    }
    check_global(config, b_option, true)?;
    let mut mismatch = false;
    for s in b_option.teps().iter().rev() {
        let Some(tep) = Tep::from_id(s.id()) else {
            continue;
        };
        if b_option.count(s.id()) != 1 || !offer.fresh.contains(&tep) {
            continue;
        }
        if s.v() && s.data.len() >= RESUME_HALF_LEN {
            let ours = offer
                .resumption
                .as_ref()
                .filter(|(secret, _)| secret.tep == tep);
            match (ours, ResumptionData::from_suboption(s)) {
                (Some((secret, _)), Some(theirs))
                    if theirs.half == secret.peer_half(config.backend) =>
                {
                    return Ok(ClientResult::Resume(theirs));
                }
                (Some(_), _) => {
                    mismatch = true;
                    continue;
                }
                // No resumption offered for this TEP, or oversized data: a
                // fresh answer, as on the accepting side.
                (None, _) if ResumptionData::from_suboption(s).is_some() => continue,
                (None, _) => {}
            }
        }
        return Ok(ClientResult::Fresh(tep, s.byte));
    }
    Err(if mismatch {
        DisableReason::ResumptionMismatch
    } else {
        DisableReason::NoCommonTep
    })
}
