//! Property tests: codec round trips, and the two state machines driven
//! against each other through arbitrary segmentation always agree.

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use tcpcrypt_proto::eno::{EnoOption, TepSuboption};
use tcpcrypt_proto::init::{Init1, Init2};
use tcpcrypt_proto::{
    AeadAlgorithm, ClientHandshake, HandshakeConfig, ResumptionCache, ServerHandshake, Tep,
};

fn suboption() -> impl Strategy<Value = TepSuboption> {
    prop_oneof![
        (0x20u8..=0x7f).prop_map(TepSuboption::plain),
        ((0x20u8..=0x7f), prop::collection::vec(any::<u8>(), 1..=32))
            .prop_map(|(id, d)| TepSuboption::with_data(id, d)),
    ]
}

fn subset<T: Clone + std::fmt::Debug + 'static>(
    all: &'static [T],
) -> impl Strategy<Value = Vec<T>> {
    prop::sample::subsequence(all.to_vec(), 1..=all.len()).prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn eno_option_round_trips(global in prop::option::of(0u8..0x20), subs in prop::collection::vec(suboption(), 0..6)) {
        if let Ok(o) = EnoOption::encode(global, &subs) {
            let parsed = EnoOption::parse(o.as_bytes()).unwrap();
            prop_assert_eq!(parsed.teps(), &subs[..]);
            prop_assert_eq!(parsed.global(), global.unwrap_or(0));
        }
    }

    #[test]
    fn eno_parse_never_panics_and_is_consistent(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(o) = EnoOption::parse(&bytes) {
            prop_assert_eq!(o.as_bytes(), &bytes[..]);
            prop_assert!(o.teps().iter().all(|t| t.id() >= 0x20));
        }
    }

    #[test]
    fn init_messages_round_trip(
        ciphers in prop::collection::vec(any::<u16>(), 1..40),
        nonce in any::<[u8; 32]>(),
        p256 in any::<bool>(),
        trailing in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let tep = if p256 { Tep::EcdheP256 } else { Tep::EcdheCurve25519 };
        let pub_field = vec![0x42; tep.pub_field_len()];
        let m1 = Init1 { sym_ciphers: ciphers.clone(), nonce, pub_field: pub_field.clone() };
        let mut bytes = m1.encode().unwrap();
        bytes.extend_from_slice(&trailing);
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_be_bytes());
        prop_assert_eq!(Init1::decode(tep, &bytes).unwrap(), m1);
        let m2 = Init2 { sym_cipher: ciphers[0], nonce, pub_field };
        let mut bytes = m2.encode();
        bytes.extend_from_slice(&trailing);
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_be_bytes());
        prop_assert_eq!(Init2::decode(tep, &bytes).unwrap(), m2);
    }

    #[test]
    fn init_decode_never_panics(tep in prop::sample::select(Tep::ALL.to_vec()), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Init1::decode(tep, &bytes);
        let _ = Init2::decode(tep, &bytes);
    }

    #[test]
    fn state_machines_agree_through_any_segmentation(
        a_teps in subset(&Tep::ALL),
        b_teps in subset(&Tep::ALL),
        a_aeads in subset(&AeadAlgorithm::ALL),
        b_aeads in subset(&AeadAlgorithm::ALL),
        pipeline in any::<bool>(),
        resume in any::<bool>(),
        splits in prop::collection::vec(1usize..40, 1..50),
        seed in any::<u8>(),
    ) {
        // No common AEAD is a handshake error, covered elsewhere.
        prop_assume!(a_aeads.iter().any(|x| b_aeads.contains(x)));
        let a_cfg = Arc::new(HandshakeConfig { teps: a_teps.clone(), aeads: a_aeads.clone(), pipeline_init1: pipeline, ..HandshakeConfig::default() });
        let b_cfg = Arc::new(HandshakeConfig { teps: b_teps.clone(), aeads: b_aeads.clone(), ..HandshakeConfig::default() });
        let cache = Arc::new(ResumptionCache::new(4));
        let mut ticket = None;
        let rounds = if resume { 2 } else { 1 };
        for round in 0..rounds {
            let c = ClientHandshake::new(a_cfg.clone(), ticket.take(), Box::new(Counter(seed))).unwrap();
            let s = ServerHandshake::new(b_cfg.clone(), Some(cache.clone()), Box::new(Counter(seed.wrapping_add(99)))).unwrap();
            let mut i = 0;
            let mut split = |_: usize| { i += 1; splits[i % splits.len()] };
            let ended = drive_with(c, s, &mut split);
            let common_tep = a_teps.iter().any(|t| b_teps.contains(t));
            if !common_tep {
                prop_assert!(matches!(ended.server, tcpcrypt_proto::ServerOutcome::Declined(_)));
                prop_assert!(matches!(ended.client, tcpcrypt_proto::ClientOutcome::Declined(_)));
                return Ok(());
            }
            let (mut a, mut b) = encrypted(ended);
            prop_assert_eq!(a.info.session_id, b.info.session_id);
            prop_assert_eq!(&a.info.transcript, &b.info.transcript);
            prop_assert_eq!(a.info.aead, b.info.aead);
            prop_assert_eq!(a.info.resumed, round == 1);
            prop_assert!(b_teps.contains(&a.info.tep) && a_teps.contains(&a.info.tep));
            // B's preference: its most preferred TEP among A's.
            let expected = *b_teps.iter().rev().find(|t| a_teps.contains(t)).unwrap();
            if round == 0 {
                prop_assert_eq!(a.info.tep, expected);
            }
            let (got, _) = transfer(&mut a, &mut b, &splits.iter().map(|&x| x as u8).collect::<Vec<_>>(), false);
            prop_assert_eq!(got.len(), splits.len());
            let (got, fin) = transfer(&mut b, &mut a, b"reply", true);
            prop_assert_eq!((got.as_slice(), fin), (&b"reply"[..], true));
            ticket = a.resumption.take();
        }
    }

    #[test]
    fn frames_survive_any_segmentation(sizes in prop::collection::vec(0usize..3000, 1..20), cut in prop::collection::vec(1usize..5000, 1..20)) {
        let cfg = Arc::new(HandshakeConfig::default());
        let (mut a, mut b) = encrypted(drive(client(&cfg, None), server(&cfg, None)));
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| (i * 7 + j) as u8).collect();
            a.sealer.seal(&data, i + 1 == sizes.len(), &mut wire).unwrap();
            sent.extend_from_slice(&data);
        }
        // Feed the receiver in arbitrary pieces, as a socket would.
        let mut buf: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        let mut fin = false;
        while pos < wire.len() {
            let n = cut[k % cut.len()].min(wire.len() - pos);
            k += 1;
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(f) = b.opener.open_in_place(&mut buf).unwrap() {
                got.extend_from_slice(&buf[f.data.clone()]);
                fin = f.fin;
                buf.drain(..f.frame_len);
            }
        }
        prop_assert!(fin);
        prop_assert_eq!(got, sent);
        prop_assert!(b.opener.end_of_stream(0).is_ok());
    }
}

#[test]
fn one_byte_pieces_fresh_and_resumed() {
    let cfg = Arc::new(HandshakeConfig::default());
    let cache = Arc::new(ResumptionCache::new(4));
    let mut ticket = None;
    for round in 0..2 {
        let c = ClientHandshake::new(cfg.clone(), ticket.take(), Box::new(Counter(round))).unwrap();
        let s =
            ServerHandshake::new(cfg.clone(), Some(cache.clone()), Box::new(Counter(200))).unwrap();
        let (mut a, b) = encrypted(drive_with(c, s, &mut |_| 1));
        assert_eq!(a.info.session_id, b.info.session_id);
        assert_eq!(a.info.resumed, round == 1);
        ticket = a.resumption.take();
    }
}
