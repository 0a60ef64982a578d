//! The kernel carriage: ENO options in the SYN and SYN-ACK (carried by the
//! kernel), RFC 8548 from the first payload byte. Both state machines are
//! driven here with the options a kernel would carry.

mod common;

use std::sync::Arc;

use common::*;
use tcpcrypt_proto::init::INIT1_MAGIC;
use tcpcrypt_proto::{
    AeadAlgorithm, ClientHandshake, ClientOutcome, Error, HandshakeConfig, OsRandom,
    ServerHandshake, Tep,
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
    let mut a = ClientHandshake::kernel(a_cfg.clone(), Box::new(OsRandom)).unwrap();
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
    let a = ClientHandshake::kernel(cfg.clone(), Box::new(OsRandom)).unwrap();
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
    let mut a = ClientHandshake::kernel(cfg, Box::new(OsRandom)).unwrap();
    // B's global suboption with b = 1 and no TEP: it declines.
    a.kernel_synack(&[69, 3, 0x01]).unwrap();
    assert!(!a.wants_write(), "nothing of ours in the stream");
    assert!(matches!(a.outcome(), Some(ClientOutcome::Declined(_))));
}

#[test]
fn reading_before_the_synack_is_misuse() {
    let cfg = Arc::new(HandshakeConfig::default());
    let mut a = ClientHandshake::kernel(cfg, Box::new(OsRandom)).unwrap();
    assert!(matches!(a.read(b"x"), Err(Error::InvalidState(_))));
}
