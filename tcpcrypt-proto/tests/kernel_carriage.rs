//! The kernel carriage: ENO options in the SYN and SYN-ACK (carried by the
//! kernel), RFC 8548 from the first payload byte. Both state machines are
//! driven here with the options a kernel would carry.

mod common;

use std::sync::Arc;

use common::*;
use tcpcrypt_proto::init::INIT1_MAGIC;
use tcpcrypt_proto::{
    AeadAlgorithm, ClientHandshake, ClientOutcome, DisableReason, Error, HandshakeConfig, OsRandom,
    ResumptionCache, ResumptionSecret, ServerHandshake, ServerOutcome, Tep,
};

/// What the BPF program answers (`bpf/eno.bpf.c`): the template's global
/// byte and its most preferred TEP that A's option offers exactly once.
fn kernel_answer(syn: &[u8], template: &(u8, Vec<u8>)) -> Option<Vec<u8>> {
    let (global, teps) = template;
    let offered = &syn[2..];
    teps.iter()
        .find(|t| offered.iter().filter(|b| *b == *t).count() == 1)
        .map(|t| vec![69, 4, *global, *t])
}

fn kernel_pair(
    a_cfg: &Arc<HandshakeConfig>,
    b_cfg: &Arc<HandshakeConfig>,
) -> (ClientHandshake, ServerHandshake, Vec<u8>) {
    let mut a = ClientHandshake::kernel(a_cfg.clone(), None, Box::new(OsRandom)).unwrap();
    let syn = a.syn_option().to_vec();
    assert!(syn.len() <= 20, "fits in a SYN beside Linux's options");
    let synack = kernel_answer(&syn, &ServerHandshake::kernel_template(b_cfg)).unwrap();
    let b =
        ServerHandshake::kernel(b_cfg.clone(), None, &syn, &synack, Box::new(OsRandom)).unwrap();
    a.kernel_synack(&synack).unwrap();
    (a, b, [syn, synack].concat())
}

#[test]
fn init1_is_the_first_payload_byte_and_offsets_count_from_it() {
    let cfg = Arc::new(HandshakeConfig::default());
    let (mut a, b, transcript) = kernel_pair(&cfg, &cfg);
    let mut first = Vec::new();
    a.write_to(&mut first);
    // No marker, no hello: Init1's magic first (RFC 8548 4.3).
    assert_eq!(first[..4], INIT1_MAGIC, "{first:02x?}");
    let ended = drive_with_written(a, b, first);
    let (mut a_s, mut b_s) = encrypted(ended);
    assert_eq!(a_s.info.session_id, b_s.info.session_id);
    assert_eq!(a_s.info.transcript, transcript);
    assert_eq!(a_s.info.tep, Tep::EcdheCurve25519);
    // A's frames start right after its one Init1, B's after Init2: the
    // stream's first byte is offset 0.
    let init1_len = 73 + 2 * cfg.aeads.len() as u64;
    assert_eq!(a_s.sealer.offset(), init1_len);
    assert_eq!(b_s.opener.offset(), init1_len);
    let (got, fin) = transfer(&mut a_s, &mut b_s, b"over the kernel carriage", true);
    assert_eq!(
        (got.as_slice(), fin),
        (&b"over the kernel carriage"[..], true)
    );
}

/// The rest of the exchange by hand, after A's first bytes were taken out
/// to be looked at: they go to B, B's Init2 to A.
fn drive_with_written(mut a: ClientHandshake, mut b: ServerHandshake, first: Vec<u8>) -> Ended {
    assert_eq!(b.read(&first).unwrap(), first.len());
    let mut init2 = Vec::new();
    b.write_to(&mut init2);
    assert_eq!(a.read(&init2).unwrap(), init2.len());
    Ended {
        client: a.outcome().expect("A ended"),
        server: b.outcome().expect("B ended"),
        client_rest: Vec::new(),
        server_rest: Vec::new(),
    }
}

#[test]
fn every_tep_and_aead_over_the_kernel_carriage() {
    for tep in Tep::ALL {
        for aead in AeadAlgorithm::ALL {
            let cfg = Arc::new(HandshakeConfig {
                teps: vec![tep],
                aeads: vec![aead],
                ..HandshakeConfig::default()
            });
            let (a, b, transcript) = kernel_pair(&cfg, &cfg);
            let (mut a, mut b) = encrypted(drive(a, b));
            assert_eq!((a.info.tep, a.info.aead), (tep, aead));
            assert_eq!(a.info.session_id, b.info.session_id);
            assert_eq!(a.info.transcript, transcript);
            let (got, _) = transfer(&mut b, &mut a, &[9u8; 50_000], false);
            assert_eq!(got, vec![9u8; 50_000]);
        }
    }
}

#[test]
fn b_preference_decides_over_the_kernel_carriage_too() {
    let a_cfg = Arc::new(HandshakeConfig {
        teps: vec![Tep::EcdheCurve25519, Tep::EcdheP256],
        ..HandshakeConfig::default()
    });
    let b_cfg = Arc::new(HandshakeConfig {
        teps: vec![Tep::EcdheCurve25519, Tep::EcdheP256],
        ..HandshakeConfig::default()
    });
    let (a, b, _) = kernel_pair(&a_cfg, &b_cfg);
    let (a, _) = encrypted(drive(a, b));
    // The last of B's list is its most preferred.
    assert_eq!(a.info.tep, Tep::EcdheP256);
}

#[test]
fn an_answer_that_is_not_the_configuration_s_choice_is_refused() {
    let cfg = Arc::new(HandshakeConfig::default());
    let a = ClientHandshake::kernel(cfg.clone(), None, Box::new(OsRandom)).unwrap();
    let syn = a.syn_option().to_vec();
    let (global, teps) = ServerHandshake::kernel_template(&cfg);
    // The least preferred TEP: a template out of step with the config.
    let wrong = vec![69, 4, global, *teps.last().unwrap()];
    let err = ServerHandshake::kernel(cfg, None, &syn, &wrong, Box::new(OsRandom)).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

#[test]
fn a_vacuous_synack_means_plain_tcp_on_this_connection() {
    let cfg = Arc::new(HandshakeConfig::default());
    let mut a = ClientHandshake::kernel(cfg, None, Box::new(OsRandom)).unwrap();
    // B's global suboption with b = 1 and no TEP: it declines.
    a.kernel_synack(&[69, 3, 0x01]).unwrap();
    assert!(!a.wants_write(), "nothing of ours in the stream");
    assert!(matches!(a.outcome(), Some(ClientOutcome::Declined(_))));
}

#[test]
fn reading_before_the_synack_is_misuse() {
    let cfg = Arc::new(HandshakeConfig::default());
    let mut a = ClientHandshake::kernel(cfg, None, Box::new(OsRandom)).unwrap();
    assert!(matches!(a.read(b"x"), Err(Error::InvalidState(_))));
}

/// What the BPF program answers to a SYN whose last suboption names a
/// resumption identifier it holds (`bpf/eno.bpf.c`, `resume_answer`): B's
/// global byte, the TEP with `v = 1`, B's identifier half and a 7-byte
/// nonce (the SYN-ACK's 20 bytes of room).
fn kernel_resume_answer(
    syn: &[u8],
    cfg: &HandshakeConfig,
    cache: &ResumptionCache,
    nonce_b: [u8; 7],
) -> Option<Vec<u8>> {
    let last = syn[2..].iter().position(|b| *b >= 0xa0)? + 2;
    let half: [u8; 9] = syn.get(last + 1..last + 10)?.try_into().ok()?;
    let (tep, own) = cache.answer_for(cfg.backend, &half)?;
    (tep.id() | 0x80 == syn[last]).then_some(())?;
    let (global, _) = ServerHandshake::kernel_template(cfg);
    let mut answer = vec![69, 20, global, syn[last]];
    answer.extend_from_slice(&own);
    answer.extend_from_slice(&nonce_b);
    Some(answer)
}

/// A first session over the kernel carriage: A's ticket, and B's cache
/// holding the next secret.
fn first_session(cfg: &Arc<HandshakeConfig>) -> (ResumptionSecret, Arc<ResumptionCache>) {
    let cache = Arc::new(ResumptionCache::new(16));
    let mut a = ClientHandshake::kernel(cfg.clone(), None, Box::new(OsRandom)).unwrap();
    let syn = a.syn_option().to_vec();
    let synack = kernel_answer(&syn, &ServerHandshake::kernel_template(cfg)).unwrap();
    let b = ServerHandshake::kernel(
        cfg.clone(),
        Some(cache.clone()),
        &syn,
        &synack,
        Box::new(OsRandom),
    )
    .unwrap();
    a.kernel_synack(&synack).unwrap();
    let (mut a, b) = encrypted(drive(a, b));
    assert!(b.info.cached_resumption.is_some());
    (a.resumption.take().expect("a ticket"), cache)
}

#[test]
fn resumption_in_the_syn_needs_no_init_message_and_is_single_use() {
    let cfg = Arc::new(HandshakeConfig::default());
    let (ticket, cache) = first_session(&cfg);
    let mut a = ClientHandshake::kernel(cfg.clone(), Some(ticket), Box::new(OsRandom)).unwrap();
    let syn = a.syn_option().to_vec();
    // The resumption suboption, alone and last: kind, length, TEP with
    // v = 1, A's half (9 bytes) and an 8-byte nonce, in the SYN's 20 bytes.
    assert_eq!(syn.len(), 20, "{syn:02x?}");
    assert!(a.offered_resumption());
    let synack = kernel_resume_answer(&syn, &cfg, &cache, [7; 7]).expect("B holds the secret");
    let b = ServerHandshake::kernel(
        cfg.clone(),
        Some(cache.clone()),
        &syn,
        &synack,
        Box::new(OsRandom),
    )
    .unwrap();
    a.kernel_synack(&synack).unwrap();
    // Nothing to send: A's first frame is the first payload byte.
    assert!(!a.wants_write());
    let (mut a_s, mut b_s) = match (a.outcome(), { b }.outcome()) {
        (Some(ClientOutcome::Encrypted(a)), Some(ServerOutcome::Encrypted(b))) => (*a, *b),
        other => panic!("not resumed at once: {other:?}"),
    };
    assert!(a_s.info.resumed && b_s.info.resumed);
    assert_eq!(a_s.info.session_id, b_s.info.session_id);
    assert_eq!(a_s.info.transcript, [syn.clone(), synack.clone()].concat());
    assert_eq!((a_s.sealer.offset(), b_s.opener.offset()), (0, 0));
    let (got, _) = transfer(&mut a_s, &mut b_s, b"resumed in the SYN", false);
    assert_eq!(got, b"resumed in the SYN");
    // The secret was taken: the same SYN again finds nothing to resume.
    assert!(kernel_resume_answer(&syn, &cfg, &cache, [7; 7]).is_none());
    let again = ServerHandshake::kernel(cfg, Some(cache), &syn, &synack, Box::new(OsRandom));
    assert!(
        matches!(again, Err(Error::ResumptionForgotten)),
        "{again:?}"
    );
}

#[test]
fn a_resumption_answer_with_another_half_disables_eno_at_a() {
    let cfg = Arc::new(HandshakeConfig::default());
    let (ticket, cache) = first_session(&cfg);
    let mut a = ClientHandshake::kernel(cfg.clone(), Some(ticket), Box::new(OsRandom)).unwrap();
    let syn = a.syn_option().to_vec();
    let mut synack = kernel_resume_answer(&syn, &cfg, &cache, [7; 7]).unwrap();
    synack[5] ^= 1; // a half that is not ours: forged, or a stale entry
    a.kernel_synack(&synack).unwrap();
    assert!(matches!(
        a.outcome(),
        Some(ClientOutcome::Disabled(DisableReason::ResumptionMismatch))
    ));
    // B refuses it too (its user space checks what its kernel answered).
    let b = ServerHandshake::kernel(cfg, Some(cache), &syn, &synack, Box::new(OsRandom));
    assert!(b.is_err());
}

#[test]
fn a_declined_resumption_in_the_syn_is_a_fresh_exchange_with_its_tep() {
    let cfg = Arc::new(HandshakeConfig::default());
    let (ticket, _) = first_session(&cfg);
    let a = ClientHandshake::kernel(cfg.clone(), Some(ticket), Box::new(OsRandom)).unwrap();
    let syn = a.syn_option().to_vec();
    // A B that lost the secret answers the TEP without v: fresh.
    let tep = syn[2..].iter().find(|b| **b >= 0xa0).unwrap() & 0x7f;
    let (global, _) = ServerHandshake::kernel_template(&cfg);
    let synack = vec![69, 4, global, tep];
    let b = ServerHandshake::kernel(cfg, None, &syn, &synack, Box::new(OsRandom)).unwrap();
    let mut a = a;
    a.kernel_synack(&synack).unwrap();
    let mut first = Vec::new();
    a.write_to(&mut first);
    assert_eq!(first[..4], INIT1_MAGIC);
    let (a_s, b_s) = encrypted(drive_with_written(a, b, first));
    assert!(!a_s.info.resumed);
    assert_eq!(a_s.info.session_id, b_s.info.session_id);
}

#[test]
fn a_resumption_that_does_not_fit_a_syn_is_sent_alone_or_not_at_all() {
    use tcpcrypt_proto::negotiation::{KERNEL_OPTION_ROOM, client_offer_within};
    // Several TEPs and an 8-byte nonce: the other TEPs are left out.
    let cfg = Arc::new(HandshakeConfig {
        teps: vec![Tep::EcdheCurve25519, Tep::EcdheP256, Tep::EcdheP521],
        ..HandshakeConfig::default()
    });
    let (ticket, _) = first_session(&cfg);
    let offer =
        client_offer_within(&cfg, Some((ticket.clone(), vec![1; 8])), KERNEL_OPTION_ROOM).unwrap();
    assert_eq!(offer.option.as_bytes().len(), 20);
    assert_eq!(offer.option.teps().len(), 1);
    assert!(offer.resumption.is_some());
    // With a global suboption (application-aware) it needs 21: fresh.
    let aware = Arc::new(HandshakeConfig {
        application_aware: true,
        ..(*cfg).clone()
    });
    let offer =
        client_offer_within(&aware, Some((ticket, vec![1; 8])), KERNEL_OPTION_ROOM).unwrap();
    assert!(offer.resumption.is_none());
    assert!(offer.option.as_bytes().len() <= KERNEL_OPTION_ROOM);
}
