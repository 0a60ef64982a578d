//! Behaviour of the two handshake state machines: negotiation between TEPs
//! and AEADs, fallback decisions, the pipelined Init1 and its discard rule,
//! resumption, and a typed error for every class of bad input.

mod common;

use std::sync::Arc;

use common::*;
use tcpcrypt_proto::crypto;
use tcpcrypt_proto::eno::{EnoOption, TepSuboption};
use tcpcrypt_proto::hello::{self, HelloKind, marker};
use tcpcrypt_proto::init::{INIT1_MAGIC, Init1};
use tcpcrypt_proto::schedule::SessionSecret;
use tcpcrypt_proto::{
    AeadAlgorithm, ClientOutcome, DisableReason, Error, HandshakeConfig, LegacyEvidence,
    ResumptionCache, ResumptionSecret, ResumptionSettings, Role, ServerOutcome, Tep,
};

fn config(teps: &[Tep], aeads: &[AeadAlgorithm]) -> Arc<HandshakeConfig> {
    Arc::new(HandshakeConfig {
        teps: teps.to_vec(),
        aeads: aeads.to_vec(),
        ..HandshakeConfig::default()
    })
}

fn default() -> Arc<HandshakeConfig> {
    Arc::new(HandshakeConfig::default())
}

/// A raw client hello, for inputs our own client would never send.
fn raw_client_hello(kind: HelloKind, option: &[u8]) -> Vec<u8> {
    [&marker(kind)[..], option].concat()
}

#[test]
fn every_tep_and_aead_on_every_backend() {
    for backend in crypto::all_backends() {
        for tep in Tep::ALL {
            for aead in AeadAlgorithm::ALL {
                let cfg = Arc::new(HandshakeConfig {
                    backend,
                    teps: vec![tep],
                    aeads: vec![aead],
                    ..HandshakeConfig::default()
                });
                let (mut a, mut b) = encrypted(drive(client(&cfg, None), server(&cfg, None)));
                assert_eq!(a.info.session_id, b.info.session_id);
                assert_eq!((a.info.tep, a.info.aead), (tep, aead));
                assert_eq!((a.info.role, b.info.role), (Role::A, Role::B));
                assert_eq!(a.info.session_id.tep_byte(), tep.id());
                assert_eq!(a.info.transcript, b.info.transcript);
                assert_eq!(a.info.self_name(), b.info.peer_name());
                let (got, fin) = transfer(&mut a, &mut b, b"ping", true);
                assert_eq!((got.as_slice(), fin), (&b"ping"[..], true));
                let (got, _) = transfer(&mut b, &mut a, &[7u8; 100_000], false);
                assert_eq!(got, vec![7u8; 100_000]);
            }
        }
    }
}

#[test]
fn default_negotiates_x25519_and_aes128gcm_with_pipelined_init1() {
    let e = drive(client(&default(), None), server(&default(), None));
    let (a, b) = encrypted(e);
    assert_eq!(a.info.tep, Tep::EcdheCurve25519);
    assert_eq!(a.info.aead, AeadAlgorithm::Aes128Gcm);
    // A's first frame follows the one Init1 it sent (75 bytes: one... three
    // ciphers here, so 79), B's follows Init2 (74).
    assert_eq!(a.sealer.offset(), 73 + 2 * 3);
    assert_eq!(b.opener.offset(), 73 + 2 * 3);
    assert_eq!(b.sealer.offset(), 74);
    assert_eq!(a.opener.offset(), 74);
}

#[test]
fn b_picks_another_tep_and_the_pipelined_init1_is_discarded() {
    // A prefers X25519 and pipelines its Init1; B only does P-256.
    let a_cfg = default();
    let b_cfg = config(&[Tep::EcdheP256], &AeadAlgorithm::ALL);
    let (mut a, mut b) = encrypted(drive(client(&a_cfg, None), server(&b_cfg, None)));
    assert_eq!(a.info.tep, Tep::EcdheP256);
    assert_eq!(a.info.session_id, b.info.session_id);
    // Both Init1s count in A's offsets: 79 (X25519) + 82 (P-256).
    assert_eq!(a.sealer.offset(), 79 + 82);
    assert_eq!(b.opener.offset(), 79 + 82);
    let (got, _) = transfer(&mut a, &mut b, b"after the discarded Init1", false);
    assert_eq!(got, b"after the discarded Init1");
}

#[test]
fn b_preference_decides_and_a_order_does_not() {
    let a_cfg = config(&[Tep::EcdheCurve25519, Tep::EcdheP256], &AeadAlgorithm::ALL);
    let b_cfg = config(
        &[Tep::EcdheCurve25519, Tep::EcdheP256],
        &[AeadAlgorithm::Aes128Gcm, AeadAlgorithm::ChaCha20Poly1305],
    );
    let (a, _) = encrypted(drive(client(&a_cfg, None), server(&b_cfg, None)));
    assert_eq!(a.info.tep, Tep::EcdheP256);
    assert_eq!(a.info.aead, AeadAlgorithm::ChaCha20Poly1305);
}

#[test]
fn no_pipelining_when_configured_off() {
    let cfg = Arc::new(HandshakeConfig {
        pipeline_init1: false,
        ..HandshakeConfig::default()
    });
    let mut out = Vec::new();
    client(&cfg, None).write_to(&mut out);
    assert!(out.starts_with(&marker(HelloKind::A)));
    assert_eq!(out.len(), 8 + 4, "hello only");
    let (a, b) = encrypted(drive(client(&cfg, None), server(&default(), None)));
    assert_eq!(a.info.session_id, b.info.session_id);
}

#[test]
fn plain_clients_are_detected_and_nothing_is_lost() {
    let streams: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01",
        b"\xE5ENX not ours",
        b"\xE5ENO\x01A\rX",          // departs at the last marker byte
        b"\xE5ENO\x01B\r\n\x45\x03", // a B marker from a client is not a hello
        b"\xE5ENO\x02A\r\n",         // another version
    ];
    for stream in streams {
        for piece in 1..=stream.len() {
            let mut s = server(&default(), None);
            let mut fed = 0;
            let (prefix, rest) = loop {
                let chunk = &stream[fed..(fed + piece).min(stream.len())];
                assert!(!chunk.is_empty(), "{stream:?}: no verdict");
                let used = s.read(chunk).unwrap();
                if let Some(o) = s.outcome() {
                    let ServerOutcome::PlainClient { prefix } = o else {
                        panic!("{stream:?} in pieces of {piece}: {o:?}");
                    };
                    break (prefix, stream[fed + used..].to_vec());
                }
                assert_eq!(used, chunk.len());
                fed += chunk.len();
            };
            assert_eq!([prefix, rest].concat(), stream, "pieces of {piece}");
            let mut out = Vec::new();
            s.write_to(&mut out);
            assert!(out.is_empty(), "nothing is sent to a plain client");
        }
    }
}

#[test]
fn silent_client_is_plain_until_a_whole_marker_arrived() {
    let mut s = server(&default(), None);
    s.peer_silent().unwrap();
    assert!(
        matches!(s.outcome(), Some(ServerOutcome::PlainClient { prefix }) if prefix.is_empty())
    );

    let mut s = server(&default(), None);
    s.read(b"\xE5EN").unwrap();
    s.peer_silent().unwrap();
    assert!(
        matches!(s.outcome(), Some(ServerOutcome::PlainClient { prefix }) if prefix == b"\xE5EN")
    );

    // A client that sent a whole marker and stalls is a slow handshake.
    let mut s = server(&default(), None);
    s.read(&marker(HelloKind::A)).unwrap();
    assert!(s.peer_silent().is_err());
    assert_eq!(s.peer_eof(), Err(Error::HandshakeEof));
}

#[test]
fn legacy_servers_are_recognised() {
    for reply in [
        &b"HTTP/1.0 400 Bad Request\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\xE5",
        b"220 smtp ready\r\n",
    ] {
        let mut c = client(&default(), None);
        let mut hello = Vec::new();
        c.write_to(&mut hello);
        c.read(reply).unwrap();
        match c.outcome() {
            Some(ClientOutcome::Legacy(LegacyEvidence::Bytes(b)))
                if !b.is_empty() && reply.starts_with(&b) => {}
            Some(ClientOutcome::Legacy(LegacyEvidence::Bytes(b)))
                if reply == b"\xE5" && b.is_empty() => {}
            other => {
                // A lone 0xE5 is still a possible marker: no verdict yet.
                assert!(reply == b"\xE5" && other.is_none(), "{reply:?}: {other:?}");
            }
        }
    }
    // An echo server returns our own hello.
    let mut c = client(&default(), None);
    let mut hello = Vec::new();
    c.write_to(&mut hello);
    c.read(&hello).unwrap();
    assert!(matches!(
        c.outcome(),
        Some(ClientOutcome::Legacy(LegacyEvidence::Bytes(_)))
    ));
    // A server that closes, or says nothing.
    let mut c = client(&default(), None);
    c.peer_eof().unwrap();
    assert!(matches!(
        c.outcome(),
        Some(ClientOutcome::Legacy(LegacyEvidence::Eof))
    ));
    let mut c = client(&default(), None);
    c.peer_silent().unwrap();
    assert!(matches!(
        c.outcome(),
        Some(ClientOutcome::Legacy(LegacyEvidence::Silence))
    ));
}

#[test]
fn no_common_tep_declines_in_band_and_data_continues_plain() {
    let a_cfg = config(&[Tep::EcdheCurve25519], &AeadAlgorithm::ALL);
    let b_cfg = config(&[Tep::EcdheP256], &AeadAlgorithm::ALL);
    let mut c = client(&a_cfg, None);
    let mut s = server(&b_cfg, None);
    let mut wire = Vec::new();
    c.write_to(&mut wire);
    wire.extend_from_slice(b"plain application bytes");
    let used = s.read(&wire).unwrap();
    assert!(matches!(
        s.outcome(),
        Some(ServerOutcome::Declined(DisableReason::NoCommonTep))
    ));
    // The pipelined Init1 was skipped: what remains is application data.
    assert_eq!(&wire[used..], b"plain application bytes");
    let mut back = Vec::new();
    s.write_to(&mut back);
    assert_eq!(&back[..8], &marker(HelloKind::B));
    let b_option = EnoOption::parse(&back[8..]).unwrap();
    assert!(b_option.is_vacuous() && b_option.b());
    back.extend_from_slice(b"server speaks");
    let used = c.read(&back).unwrap();
    assert!(matches!(
        c.outcome(),
        Some(ClientOutcome::Declined(DisableReason::PeerDeclined))
    ));
    assert_eq!(&back[used..], b"server speaks");
}

fn server_verdict(option: &[u8], cfg: &Arc<HandshakeConfig>) -> ServerOutcome {
    let mut s = server(cfg, None);
    s.read(&raw_client_hello(HelloKind::A, option)).unwrap();
    s.outcome().expect("decided")
}

fn client_verdict(b_option: &[u8], a_cfg: &Arc<HandshakeConfig>) -> ClientOutcome {
    let mut c = client(a_cfg, None);
    c.write_to(&mut Vec::new());
    c.read(&[&marker(HelloKind::B)[..], b_option].concat())
        .unwrap();
    c.outcome().expect("decided")
}

#[test]
fn eno_rules_on_the_accepting_side() {
    let cfg = default();
    let declined = |o: &[u8]| match server_verdict(o, &cfg) {
        ServerOutcome::Declined(r) => r,
        other => panic!("{o:02x?}: {other:?}"),
    };
    // b-bit clash: a connecting side claiming role B.
    assert_eq!(
        declined(&[0x45, 0x04, 0x01, 0x23]),
        DisableReason::RoleClash
    );
    // Ill-formed: length byte followed by a v=0 TEP.
    assert_eq!(
        declined(&[0x45, 0x05, 0x81, 0x23, 0x00]),
        DisableReason::IllFormedOption
    );
    // Vacuous, unknown TEPs only, and a TEP named twice (no repetition in tcpcrypt).
    assert_eq!(declined(&[0x45, 0x02]), DisableReason::NoCommonTep);
    assert_eq!(declined(&[0x45, 0x03, 0x30]), DisableReason::NoCommonTep);
    assert_eq!(
        declined(&[0x45, 0x04, 0x23, 0x23]),
        DisableReason::NoCommonTep
    );
    // The repeated TEP is invalid, the other still negotiates.
    let fresh_tep = |o: &[u8]| {
        let mut s = server(&cfg, None);
        s.read(&raw_client_hello(HelloKind::A, o)).unwrap();
        let mut back = Vec::new();
        s.write_to(&mut back);
        EnoOption::parse(&back[8..]).unwrap().teps().to_vec()
    };
    assert_eq!(
        fresh_tep(&[0x45, 0x05, 0x21, 0x23, 0x23]),
        vec![TepSuboption::plain(0x21)]
    );
    // v=1 with fewer than 9 bytes, or more than 17, is a fresh offer.
    assert_eq!(
        fresh_tep(&[0x45, 0x05, 0xa3, 1, 2]),
        vec![TepSuboption::plain(0x23)]
    );
    let long = [&[0x45, 21, 0xa3][..], &[9; 18]].concat();
    assert_eq!(fresh_tep(&long), vec![TepSuboption::plain(0x23)]);
    // An unknown resumption half also falls back to a fresh exchange.
    let unknown = [&[0x45, 20, 0xa3][..], &[9; 17]].concat();
    assert_eq!(fresh_tep(&unknown), vec![TepSuboption::plain(0x23)]);
    // Mandatory application-aware mode.
    let aa = Arc::new(HandshakeConfig {
        require_application_aware: true,
        ..HandshakeConfig::default()
    });
    assert!(matches!(
        server_verdict(&[0x45, 0x03, 0x23], &aa),
        ServerOutcome::Declined(DisableReason::PeerNotApplicationAware)
    ));
    let mut s = server(&aa, None);
    s.read(&raw_client_hello(HelloKind::A, &[0x45, 0x04, 0x02, 0x23]))
        .unwrap();
    assert!(
        s.outcome().is_none(),
        "an application-aware client is accepted: waiting for Init1"
    );
}

#[test]
fn eno_rules_on_the_connecting_side() {
    let cfg = default();
    let disabled = |o: &[u8]| match client_verdict(o, &cfg) {
        ClientOutcome::Disabled(r) => r,
        other => panic!("{o:02x?}: {other:?}"),
    };
    // B's option without b = 1.
    assert_eq!(disabled(&[0x45, 0x03, 0x23]), DisableReason::RoleClash);
    assert_eq!(
        disabled(&[0x45, 0x04, 0x00, 0x23]),
        DisableReason::RoleClash
    );
    // Ill-formed.
    assert_eq!(
        disabled(&[0x45, 0x04, 0x01, 0x80]),
        DisableReason::IllFormedOption
    );
    // A TEP we did not offer, or named twice.
    assert_eq!(
        disabled(&[0x45, 0x04, 0x01, 0x24]),
        DisableReason::NoCommonTep
    );
    assert_eq!(
        disabled(&[0x45, 0x05, 0x01, 0x23, 0x23]),
        DisableReason::NoCommonTep
    );
    // A resumption answer we never asked for.
    let unasked = [&[0x45, 21, 0x01, 0xa3][..], &[9; 17]].concat();
    assert_eq!(disabled(&unasked), DisableReason::NoCommonTep);
    // Vacuous: declined in band, the connection continues plain.
    assert!(matches!(
        client_verdict(&[0x45, 0x03, 0x01], &cfg),
        ClientOutcome::Declined(DisableReason::PeerDeclined)
    ));
    // The last valid TEP in B's option wins, invalid ones are skipped.
    let mut c = client(&cfg, None);
    c.write_to(&mut Vec::new());
    c.read(
        &[
            &marker(HelloKind::B)[..],
            &[0x45, 0x06, 0x01, 0x21, 0x23, 0x30],
        ]
        .concat(),
    )
    .unwrap();
    assert!(c.outcome().is_none(), "waits for Init2 of X25519");
    // Mandatory application-aware mode.
    let aa = Arc::new(HandshakeConfig {
        require_application_aware: true,
        application_aware: true,
        ..HandshakeConfig::default()
    });
    assert!(matches!(
        client_verdict(&[0x45, 0x04, 0x01, 0x23], &aa),
        ClientOutcome::Disabled(DisableReason::PeerNotApplicationAware)
    ));
}

#[test]
fn application_aware_bits_are_carried() {
    let aa = Arc::new(HandshakeConfig {
        application_aware: true,
        require_application_aware: true,
        ..HandshakeConfig::default()
    });
    let (a, b) = encrypted(drive(client(&aa, None), server(&aa, None)));
    assert!(a.info.peer_application_aware() && b.info.peer_application_aware());
    let (a, b) = encrypted(drive(client(&default(), None), server(&default(), None)));
    assert!(!a.info.peer_application_aware() && !b.info.peer_application_aware());
}

fn feed_server_init1(init1: Vec<u8>, cfg: &Arc<HandshakeConfig>) -> Result<usize, Error> {
    let mut s = server(cfg, None);
    s.read(&raw_client_hello(HelloKind::A, &[0x45, 0x03, 0x23]))?;
    s.read(&init1)
}

fn good_init1() -> Init1 {
    Init1 {
        sym_ciphers: vec![1],
        nonce: [5; 32],
        pub_field: vec![9; 32],
    }
}

#[test]
fn bad_init1_is_a_typed_error() {
    let cfg = default();
    let mut bad_magic = good_init1().encode().unwrap();
    bad_magic[3] ^= 0xff;
    assert_eq!(
        feed_server_init1(bad_magic, &cfg),
        Err(Error::BadMagic("Init1"))
    );
    let mut huge = INIT1_MAGIC.to_vec();
    huge.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    assert!(matches!(
        feed_server_init1(huge, &cfg),
        Err(Error::BadMessageLength { .. })
    ));
    let mut short = INIT1_MAGIC.to_vec();
    short.extend_from_slice(&9u32.to_be_bytes());
    assert!(matches!(
        feed_server_init1(short, &cfg),
        Err(Error::BadMessageLength { .. })
    ));
    let mut none = good_init1().encode().unwrap();
    none[8] = 0;
    assert_eq!(feed_server_init1(none, &cfg), Err(Error::NoCiphers));
    let unknown = Init1 {
        sym_ciphers: vec![0x0099, 0x1234],
        ..good_init1()
    };
    assert_eq!(
        feed_server_init1(unknown.encode().unwrap(), &cfg),
        Err(Error::NoAcceptableAead)
    );
    // The all-zero X25519 public key forces an all-zero shared secret.
    let zero = Init1 {
        pub_field: vec![0; 32],
        ..good_init1()
    };
    assert_eq!(
        feed_server_init1(zero.encode().unwrap(), &cfg),
        Err(Error::BadPublicKey)
    );
    // A low-order point (order 8) does the same.
    let mut low = vec![0u8; 32];
    low[..32].copy_from_slice(&hex_decode(
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    ));
    let low = Init1 {
        pub_field: low,
        ..good_init1()
    };
    assert_eq!(
        feed_server_init1(low.encode().unwrap(), &cfg),
        Err(Error::BadPublicKey)
    );
    // After an error, the machine stays failed.
    let mut s = server(&cfg, None);
    s.read(&raw_client_hello(HelloKind::A, &[0x45, 0x03, 0x23]))
        .unwrap();
    let mut bad = good_init1().encode().unwrap();
    bad[0] = 0;
    assert!(s.read(&bad).is_err());
    assert!(s.read(b"more").is_err());
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn bad_p256_keys_are_rejected_on_every_backend() {
    for backend in crypto::all_backends() {
        let cfg = Arc::new(HandshakeConfig {
            backend,
            teps: vec![Tep::EcdheP256],
            ..HandshakeConfig::default()
        });
        let with_point = |point: Vec<u8>| {
            let mut field = 35u16.to_be_bytes().to_vec();
            field.extend_from_slice(&point);
            let init1 = Init1 {
                pub_field: field,
                ..good_init1()
            };
            let mut s = server(&cfg, None);
            s.read(&raw_client_hello(HelloKind::A, &[0x45, 0x03, 0x21]))
                .unwrap();
            s.read(&init1.encode().unwrap())
        };
        // x = 1 is not the x-coordinate of a P-256 point (1 - 3 + b is a
        // quadratic non-residue mod p); x = p is out of range; 0x04 is the
        // uncompressed tag.
        let mut not_on_curve = vec![0x02];
        not_on_curve.extend_from_slice(&[0; 31]);
        not_on_curve.push(1);
        assert_eq!(
            with_point(not_on_curve),
            Err(Error::BadPublicKey),
            "{}",
            backend.name()
        );
        let mut p = vec![0x03];
        p.extend_from_slice(&hex_decode(
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        ));
        assert_eq!(with_point(p), Err(Error::BadPublicKey));
        let mut uncompressed_tag = vec![0x04];
        uncompressed_tag.extend_from_slice(&[1; 32]);
        assert_eq!(with_point(uncompressed_tag), Err(Error::BadPublicKey));
        // A pubkey_len other than 35.
        let mut field = 33u16.to_be_bytes().to_vec();
        field.extend_from_slice(&[0x02; 33]);
        let init1 = Init1 {
            pub_field: field,
            ..good_init1()
        };
        let mut s = server(&cfg, None);
        s.read(&raw_client_hello(HelloKind::A, &[0x45, 0x03, 0x21]))
            .unwrap();
        assert_eq!(s.read(&init1.encode().unwrap()), Err(Error::BadPublicKey));
    }
}

/// What a server configured for `tep` says to an Init1 whose Pub field
/// is `field`, on `backend`.
fn server_reading_pub_field(
    backend: &'static dyn crypto::CryptoBackend,
    tep: Tep,
    field: Vec<u8>,
) -> Result<usize, Error> {
    let cfg = Arc::new(HandshakeConfig {
        backend,
        teps: vec![tep],
        ..HandshakeConfig::default()
    });
    let mut s = server(&cfg, None);
    s.read(&raw_client_hello(HelloKind::A, &[0x45, 0x03, tep.id()]))
        .unwrap();
    let init1 = Init1 {
        pub_field: field,
        ..good_init1()
    };
    s.read(&init1.encode().unwrap())
}

#[test]
fn bad_p521_keys_are_rejected_on_every_backend() {
    for backend in crypto::all_backends() {
        let with = |len: u16, point: Vec<u8>| {
            let mut field = len.to_be_bytes().to_vec();
            field.extend_from_slice(&point);
            server_reading_pub_field(backend, Tep::EcdheP521, field)
        };
        // x = p = 2^521 - 1 is out of range.
        let mut p = vec![0x02, 0x01];
        p.extend_from_slice(&[0xff; 65]);
        assert_eq!(with(69, p), Err(Error::BadPublicKey), "{}", backend.name());
        // The uncompressed tag, in a field of the compressed length.
        let mut uncompressed_tag = vec![0x04];
        uncompressed_tag.extend_from_slice(&[1; 66]);
        assert_eq!(with(69, uncompressed_tag), Err(Error::BadPublicKey));
        // A pubkey_len other than 69 (2 + 67).
        let mut generator_x = vec![0x02];
        generator_x.extend_from_slice(&hex_decode(
            "00c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66",
        ));
        assert_eq!(
            with(67, generator_x.clone()),
            Err(Error::BadPublicKey),
            "{}",
            backend.name()
        );
        // The generator itself is a good key: the server answers.
        assert!(with(69, generator_x).is_ok(), "{}", backend.name());
    }
}

#[test]
fn x448_low_order_points_are_rejected_on_every_backend() {
    for backend in crypto::all_backends() {
        // u = 0 and u = 1 give the all-zero shared secret (RFC 7748 6.2).
        for u in [0u8, 1] {
            let mut point = vec![0u8; 56];
            point[0] = u;
            assert_eq!(
                server_reading_pub_field(backend, Tep::EcdheCurve448, point),
                Err(Error::BadPublicKey),
                "u = {u} on {}",
                backend.name()
            );
        }
        let mut base = vec![0u8; 56];
        base[0] = 5;
        assert!(server_reading_pub_field(backend, Tep::EcdheCurve448, base).is_ok());
    }
}

#[test]
fn init2_with_an_aead_a_did_not_offer_aborts() {
    let a_cfg = config(&[Tep::EcdheCurve25519], &[AeadAlgorithm::Aes128Gcm]);
    let mut c = client(&a_cfg, None);
    let mut hello_init1 = Vec::new();
    c.write_to(&mut hello_init1);
    // A B that chose ChaCha20-Poly1305 although only AES-128-GCM was offered.
    let b_cfg = config(&[Tep::EcdheCurve25519], &[AeadAlgorithm::ChaCha20Poly1305]);
    let mut s = server(&b_cfg, None);
    let mut forged = hello_init1.clone();
    // Rewrite A's cipher list so the honest server picks ChaCha.
    let init1_at = 8 + 3;
    forged[init1_at + 9..init1_at + 11].copy_from_slice(&0x0010u16.to_be_bytes());
    s.read(&forged).unwrap();
    let mut back = Vec::new();
    s.write_to(&mut back);
    assert_eq!(c.read(&back), Err(Error::CipherNotOffered(0x0010)));
}

#[test]
fn init2_eof_and_malformed_hello_are_errors() {
    let mut c = client(&default(), None);
    c.write_to(&mut Vec::new());
    c.read(&[&marker(HelloKind::B)[..], &[0x45, 0x04, 0x01, 0x23]].concat())
        .unwrap();
    assert_eq!(c.peer_eof(), Err(Error::HandshakeEof));
    let mut c = client(&default(), None);
    assert_eq!(
        c.read(&[&marker(HelloKind::B)[..], &[0x46, 0x04]].concat()),
        Err(Error::MalformedHello)
    );
}

fn resumption_configs() -> (
    Arc<HandshakeConfig>,
    Arc<HandshakeConfig>,
    Arc<ResumptionCache>,
) {
    (default(), default(), Arc::new(ResumptionCache::new(64)))
}

#[test]
fn resumption_accepted_is_single_use_and_chains() {
    let (a_cfg, b_cfg, cache) = resumption_configs();
    let (mut a, b) = encrypted(drive(client(&a_cfg, None), server(&b_cfg, Some(&cache))));
    assert_eq!(cache.len(), 1);
    assert!(b.info.cached_resumption.is_some());
    let ticket = a.resumption.take().unwrap();
    assert_eq!(ticket.index, 1);
    let replay = ticket.clone();

    let mut hello = Vec::new();
    client(&a_cfg, Some(ticket.clone())).write_to(&mut hello);
    assert!(
        hello.starts_with(&marker(HelloKind::A)),
        "no Init1 is pipelined with a resumption offer"
    );
    // A fresh P-256 offer, then the X25519 resumption suboption (no fresh
    // X25519 offer beside it).
    assert_eq!(hello.len(), 8 + 2 + 1 + 1 + 17);
    let e = drive(client(&a_cfg, Some(ticket)), server(&b_cfg, Some(&cache)));
    let (mut a2, mut b2) = encrypted(e);
    assert!(a2.info.resumed && b2.info.resumed);
    assert_eq!(a2.info.session_id, b2.info.session_id);
    assert_eq!(
        a2.info.session_id.tep_byte(),
        0x80 | Tep::EcdheCurve25519.id()
    );
    assert_ne!(a2.info.session_id, a.info.session_id);
    assert_eq!(a2.info.aead, a.info.aead);
    // Resumed connections carry no Init messages: frames start at 0.
    assert_eq!((a2.sealer.offset(), b2.sealer.offset()), (0, 0));
    let (got, _) = transfer(&mut a2, &mut b2, b"resumed", false);
    assert_eq!(got, b"resumed");
    let (got, _) = transfer(&mut b2, &mut a2, b"both ways", false);
    assert_eq!(got, b"both ways");
    // ss[1] is gone from the server; ss[2] took its place.
    assert_eq!(cache.len(), 1);
    let next = a2.resumption.take().unwrap();
    assert_eq!(next.index, 2);

    // Replaying ss[1] finds nothing: a fresh exchange, not a resumption.
    let (a3, b3) = encrypted(drive(
        client(&a_cfg, Some(replay)),
        server(&b_cfg, Some(&cache)),
    ));
    assert!(!a3.info.resumed && !b3.info.resumed);
    assert_eq!(a3.info.session_id, b3.info.session_id);

    // ss[2] still resumes.
    let (a4, _) = encrypted(drive(
        client(&a_cfg, Some(next)),
        server(&b_cfg, Some(&cache)),
    ));
    assert!(a4.info.resumed);
}

#[test]
fn resumption_declined_and_caching_controls() {
    let (a_cfg, b_cfg, cache) = resumption_configs();
    let (mut a, _) = encrypted(drive(client(&a_cfg, None), server(&b_cfg, Some(&cache))));
    let ticket = a.resumption.take().unwrap();
    // A server that ignores resumption requests runs a fresh exchange.
    let ignoring = Arc::new(HandshakeConfig {
        resumption: ResumptionSettings {
            resume: false,
            ..Default::default()
        },
        ..HandshakeConfig::default()
    });
    let (a2, b2) = encrypted(drive(
        client(&a_cfg, Some(ticket)),
        server(&ignoring, Some(&cache)),
    ));
    assert!(!a2.info.resumed && !b2.info.resumed);
    // A server that caches nothing.
    let no_cache = Arc::new(HandshakeConfig {
        resumption: ResumptionSettings {
            cache: false,
            ..Default::default()
        },
        ..HandshakeConfig::default()
    });
    let fresh_cache = Arc::new(ResumptionCache::new(8));
    let (_, b3) = encrypted(drive(
        client(&a_cfg, None),
        server(&no_cache, Some(&fresh_cache)),
    ));
    assert!(
        fresh_cache.is_empty() && b3.resumption.is_none() && b3.info.cached_resumption.is_none()
    );
    // A client that caches nothing gets no ticket.
    let (a4, b4) = encrypted(drive(
        client(&no_cache, None),
        server(&b_cfg, Some(&fresh_cache)),
    ));
    assert!(a4.resumption.is_none());
    // Flush: the connection's cached state goes away.
    assert!(fresh_cache.remove(&b4.info.cached_resumption.unwrap()));
    assert!(fresh_cache.is_empty());
}

#[test]
fn resumption_with_a_mismatched_half_disables() {
    let (a_cfg, b_cfg, cache) = resumption_configs();
    let (mut a, _) = encrypted(drive(client(&a_cfg, None), server(&b_cfg, Some(&cache))));
    let ticket = a.resumption.take().unwrap();
    let mut c = client(&a_cfg, Some(ticket));
    c.write_to(&mut Vec::new());
    // B answers resumption for X25519 with a half that is not ours.
    let answer = [&[0x45, 21, 0x01, 0xa3][..], &[0x5a; 17]].concat();
    c.read(&[&marker(HelloKind::B)[..], &answer].concat())
        .unwrap();
    assert!(matches!(
        c.outcome(),
        Some(ClientOutcome::Disabled(DisableReason::ResumptionMismatch))
    ));
}

#[test]
fn resumption_keeps_key_directions_of_the_original_roles() {
    // The host that was B originally now connects (a client whose ticket
    // says "original role B"), and the original A accepts.
    for backend in crypto::all_backends() {
        let ss = SessionSecret::dangerous_from_bytes([0x42; 32]);
        let ticket = |role| ResumptionSecret {
            tep: Tep::EcdheCurve25519,
            aead: AeadAlgorithm::ChaCha20Poly1305,
            original_role: role,
            index: 3,
            secret: ss.clone(),
        };
        let cfg = Arc::new(HandshakeConfig {
            backend,
            ..HandshakeConfig::default()
        });
        let cache = Arc::new(ResumptionCache::new(4));
        cache.insert(backend, ticket(Role::A));
        let (mut now_a, mut now_b) = encrypted(drive(
            client(&cfg, Some(ticket(Role::B))),
            server(&cfg, Some(&cache)),
        ));
        assert!(now_a.info.resumed);
        assert_eq!(now_a.info.role, Role::A);
        assert_eq!(now_a.info.aead, AeadAlgorithm::ChaCha20Poly1305);
        assert_eq!(now_a.info.session_id, now_b.info.session_id);
        let (got, _) = transfer(&mut now_a, &mut now_b, b"original B sends with k_ba", false);
        assert_eq!(got, b"original B sends with k_ba");
        let (got, _) = transfer(&mut now_b, &mut now_a, b"original A sends with k_ab", false);
        assert_eq!(got, b"original A sends with k_ab");
        assert_eq!(now_a.resumption.as_ref().unwrap().original_role, Role::B);
    }
}

#[test]
fn resumption_offer_with_a_pipelined_init1_from_another_implementation() {
    // A peer may pipeline an Init1 next to a resumption offer. B resumes and
    // skips the Init1; A's frames then start after it.
    let (a_cfg, b_cfg, cache) = resumption_configs();
    let (mut a, _) = encrypted(drive(client(&a_cfg, None), server(&b_cfg, Some(&cache))));
    let ticket = a.resumption.take().unwrap();
    let mut c = client(&a_cfg, Some(ticket));
    let mut hello = Vec::new();
    c.write_to(&mut hello);
    let option = &hello[8..];
    // Rebuild as a 'P' hello with a fresh P-256 offer first, then an Init1.
    let parsed = EnoOption::parse(option).unwrap();
    let mut subs = vec![TepSuboption::plain(0x21)];
    subs.extend(parsed.teps().iter().filter(|t| t.v()).cloned());
    let opt = EnoOption::encode(None, &subs).unwrap();
    let init1 = Init1 {
        pub_field: vec![3; 35],
        ..good_init1()
    }
    .encode()
    .unwrap();
    let mut s = server(&b_cfg, Some(&cache));
    let mut wire = Vec::new();
    hello::encode(HelloKind::Pipelined, &opt, &mut wire);
    let hello_len = wire.len();
    wire.extend_from_slice(&init1);
    // Deliver the hello alone first: the server answers but waits to skip.
    s.read(&wire[..hello_len]).unwrap();
    assert!(s.outcome().is_none());
    s.read(&wire[hello_len..]).unwrap();
    let Some(ServerOutcome::Encrypted(b)) = s.outcome() else {
        panic!()
    };
    assert!(b.info.resumed);
    assert_eq!(b.opener.offset(), init1.len() as u64);
}

#[test]
fn mandatory_application_aware_mode_sets_the_a_bit_itself() {
    let aa = Arc::new(HandshakeConfig {
        require_application_aware: true,
        ..HandshakeConfig::default()
    });
    let (a, b) = encrypted(drive(client(&aa, None), server(&aa, None)));
    assert!(a.info.peer_application_aware() && b.info.peer_application_aware());
    // A vacuous answer still means plain on this connection, even in that mode.
    assert!(matches!(
        client_verdict(&[0x45, 0x03, 0x01], &aa),
        ClientOutcome::Declined(DisableReason::PeerDeclined)
    ));
}

#[test]
fn a_refused_pipelined_init1_still_shows_a_tcpcrypt_peer() {
    let a_cfg = config(&[Tep::EcdheCurve25519], &[AeadAlgorithm::ChaCha20Poly1305]);
    let b_cfg = config(&[Tep::EcdheCurve25519], &[AeadAlgorithm::Aes128Gcm]);
    let mut c = client(&a_cfg, None);
    let mut s = server(&b_cfg, None);
    let mut wire = Vec::new();
    c.write_to(&mut wire);
    assert_eq!(s.read(&wire), Err(Error::NoAcceptableAead));
    let mut back = Vec::new();
    s.write_to(&mut back);
    assert!(
        back.starts_with(&marker(HelloKind::B)),
        "B's hello goes out before Init1 is judged"
    );
    c.read(&back).unwrap();
    assert!(c.outcome().is_none());
    assert_eq!(
        c.peer_eof(),
        Err(Error::HandshakeEof),
        "an abort, not a legacy server"
    );
}

/// The connecting side's first flight with `extra` bytes appended to its
/// Init1 (and `message_len` grown to match), as a future sender with an
/// extension would send it.
fn first_flight_with_trailing_bytes(extra: usize) -> Vec<u8> {
    let mut c = client(&default(), None);
    let mut out = Vec::new();
    c.write_to(&mut out);
    let at = out
        .windows(4)
        .position(|w| w == INIT1_MAGIC)
        .expect("Init1 is pipelined with the hello");
    assert_eq!(
        u32::from_be_bytes(out[at + 4..at + 8].try_into().unwrap()) as usize,
        out.len() - at,
        "Init1 ends the first flight"
    );
    out.resize(out.len() + extra, 0x5a);
    let len = (out.len() - at) as u32;
    out[at + 4..at + 8].copy_from_slice(&len.to_be_bytes());
    out
}

#[test]
fn init1_with_trailing_bytes_up_to_64_kib_is_accepted() {
    // RFC 8548 4.1: trailing bytes MUST be accepted and ignored.
    let flight = first_flight_with_trailing_bytes(60 * 1024);
    let mut s = server(&default(), None);
    let mut used = 0;
    // In pieces, as TCP delivers them.
    for piece in flight.chunks(1460) {
        used += s.read(piece).expect("a long Init1 is not an error");
    }
    assert_eq!(used, flight.len());
    assert!(
        matches!(s.outcome(), Some(ServerOutcome::Encrypted(_))),
        "the server answered a 60 KiB Init1"
    );

    // One byte over the bound is refused before it is buffered.
    let too_long = first_flight_with_trailing_bytes(64 * 1024);
    let mut s = server(&default(), None);
    let err = too_long
        .chunks(1460)
        .try_for_each(|piece| s.read(piece).map(drop))
        .unwrap_err();
    assert!(
        matches!(err, Error::BadMessageLength { msg: "Init1", .. }),
        "{err:?}"
    );
}

#[test]
fn handshakes_take_key_pairs_made_ahead_and_make_their_own_when_none_is_left() {
    use tcpcrypt_proto::KeyPairPool;
    let pool = Arc::new(KeyPairPool::new(crypto::default_backend(), 2));
    pool.refill(&mut tcpcrypt_proto::OsRandom).unwrap();
    assert_eq!(pool.len(Tep::EcdheCurve25519), 2);
    let cfg = Arc::new(HandshakeConfig {
        key_pairs: Some(pool.clone()),
        ..HandshakeConfig::default()
    });
    let (a, b) = encrypted(drive(client(&cfg, None), server(&cfg, None)));
    assert_eq!(a.info.session_id, b.info.session_id);
    assert_eq!(pool.len(Tep::EcdheCurve25519), 0, "one pair for each side");
    // An empty pool: each side makes its own pair, as without one.
    let (a2, b2) = encrypted(drive(client(&cfg, None), server(&cfg, None)));
    assert_eq!(a2.info.session_id, b2.info.session_id);
    assert_ne!(a.info.session_id, a2.info.session_id);
    // Pairs of another backend are never used.
    for other in crypto::all_backends() {
        if other.name() == crypto::default_backend().name() {
            continue;
        }
        let foreign = Arc::new(KeyPairPool::new(other, 2));
        foreign.refill(&mut tcpcrypt_proto::OsRandom).unwrap();
        let cfg = Arc::new(HandshakeConfig {
            key_pairs: Some(foreign.clone()),
            ..HandshakeConfig::default()
        });
        encrypted(drive(client(&cfg, None), server(&cfg, None)));
        assert_eq!(foreign.len(Tep::EcdheCurve25519), 2);
    }
}
