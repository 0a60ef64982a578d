//! Known-answer tests against `interop/kat/vectors.json`, which an
//! independent Python reference (pyca/cryptography, written from the RFC
//! text) produced. Every backend must reproduce every value, the frame
//! opener must read every frame back, and the handshake state machines,
//! given the vectors' randomness, must put exactly the vectors' bytes on the
//! wire.

#[path = "../examples/conformance/vectors.rs"]
mod vectors;

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use tcpcrypt_proto::crypto::{self, CryptoBackend};
use tcpcrypt_proto::frame::{CONTROL_REKEY, FLAG_FIN, FrameOpener};
use tcpcrypt_proto::hello::{HelloKind, marker};
use tcpcrypt_proto::schedule::{KeyDirection, SessionSecret};
use tcpcrypt_proto::{
    AeadAlgorithm, ClientHandshake, ClientOutcome, Error, HandshakeConfig, RandomSource,
    ResumptionCache, ResumptionSettings, ServerHandshake, ServerOutcome, Session, Tep,
};
use vectors::{hex_field, int_field};

fn load() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../interop/kat/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors.json")).expect("valid JSON")
}

/// The vector with every computed field removed: what a harness gets.
fn inputs_of(v: &Value) -> Value {
    const OUT: &[&str] = &[
        "pub_a_field",
        "pub_b_field",
        "eno_transcript",
        "init1",
        "init2",
        "es",
        "prk",
        "ss0",
        "ss1",
        "ss2",
        "session_id_0",
        "mk0",
        "mk1",
        "k_ab0",
        "k_ba0",
        "k_ab1",
        "k_ba1",
        "resume_1",
        "sn_1",
        "suboption_from_orig_A",
        "suboption_from_orig_B",
        "session_id_1",
        "mk0_session1",
        "k_ab0_session1",
        "k_ba0_session1",
        "mk_early",
        "k_early",
        "end_mark",
        "end_mark_offset",
        "frame",
    ];
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !OUT.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), inputs_of(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(inputs_of).collect()),
        other => other.clone(),
    }
}

#[test]
fn vectors_cover_what_they_must() {
    let v = load();
    let names: Vec<&str> = v.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert!(names.len() >= 10, "{names:?}");
    let has = |pred: &dyn Fn(&Value) -> bool| v.iter().any(pred);
    for aead in [1, 2, 16] {
        assert!(
            has(&|x| x["tep"] == 0x23 && x["sym_cipher"] == aead),
            "X25519 with AEAD {aead}"
        );
    }
    // Every TEP this implementation supports, with every AEAD.
    for tep in Tep::ALL {
        for aead in [1, 2, 16] {
            assert!(
                has(&|x| x["tep"] == tep.id() && x["sym_cipher"] == aead),
                "{tep} with AEAD {aead}"
            );
        }
    }
    let frames = |x: &Value| -> Vec<Value> {
        let mut all = Vec::new();
        for part in [
            Some(&x["frames"]),
            x.get("resumption")
                .filter(|r| !r.is_null())
                .map(|r| &r["frames"]),
        ]
        .into_iter()
        .flatten()
        {
            for d in ["a_to_b", "b_to_a"] {
                all.extend(part[d].as_array().unwrap().iter().cloned());
            }
        }
        all
    };
    assert!(
        has(&|x| frames(x)
            .iter()
            .filter(|f| f["control"].as_u64().unwrap() & 1 == 1)
            .count()
            >= 4),
        "rekeys"
    );
    assert!(
        has(&|x| frames(x)
            .iter()
            .any(|f| f["flags"].as_u64().unwrap() & 1 == 1)),
        "FINp"
    );
    assert!(
        has(&|x| frames(x)
            .iter()
            .any(|f| f["flags"].as_u64().unwrap() & 2 == 2)),
        "URGp"
    );
    assert!(has(&|x| x["resumption"].is_object()), "resumption");
    assert!(
        has(&|x| x["resumption"]["early"]["frames"].is_array()),
        "0-RTT data"
    );
}

#[test]
fn every_backend_reproduces_every_value() {
    for backend in crypto::all_backends() {
        for v in load() {
            let computed = vectors::compute(backend, &inputs_of(&v)).expect("computes");
            assert_eq!(
                computed,
                v,
                "backend {} vector {}",
                backend.name(),
                v["name"]
            );
        }
    }
}

/// Opens one direction's frames with the opener, starting at the first
/// frame's offset, and checks what it reports against the vector.
fn open_direction(
    backend: &'static dyn CryptoBackend,
    ss: &SessionSecret,
    sn: &[u8],
    aead: AeadAlgorithm,
    d: KeyDirection,
    frames: &[Value],
) {
    let Some(first) = frames.first() else { return };
    let mk0 = ss.master_key(backend, sn);
    let mut opener =
        FrameOpener::dangerous_new(backend, mk0, d, aead, int_field(first, "offset").unwrap());
    let mut stream: Vec<u8> = frames
        .iter()
        .flat_map(|f| hex_field(f, "frame").unwrap())
        .collect();
    let mut pos = 0;
    for f in frames {
        let opened = opener
            .open_in_place(&mut stream[pos..])
            .expect("authentic")
            .expect("complete");
        let data = &stream[pos + opened.data.start..pos + opened.data.end];
        assert_eq!(data, &hex_field(f, "plaintext").unwrap()[..]);
        let flags = int_field(f, "flags").unwrap() as u8;
        assert_eq!(opened.fin, flags & FLAG_FIN != 0);
        assert_eq!(opened.urgent, f["urgent"].as_u64().map(|u| u as u16));
        assert_eq!(
            opened.rekeyed,
            int_field(f, "control").unwrap() as u8 & CONTROL_REKEY != 0
        );
        pos += opened.frame_len;
        if opened.fin {
            break;
        }
    }
}

#[test]
fn opener_reads_every_vector_frame() {
    for backend in crypto::all_backends() {
        for v in load() {
            let aead = AeadAlgorithm::from_id(v["sym_cipher"].as_u64().unwrap() as u16).unwrap();
            let ss0 = SessionSecret::dangerous_from_bytes(
                hex_field(&v, "ss0").unwrap().try_into().unwrap(),
            );
            let ss1 = SessionSecret::dangerous_from_bytes(
                hex_field(&v, "ss1").unwrap().try_into().unwrap(),
            );
            let parts = [(ss0, vec![], &v["frames"])].into_iter().chain(
                v.get("resumption")
                    .filter(|r| r.is_object())
                    .map(|r| (ss1.clone(), hex_field(r, "sn_1").unwrap(), &r["frames"])),
            );
            for (ss, sn, frames) in parts {
                for (d, name) in [
                    (KeyDirection::AToB, "a_to_b"),
                    (KeyDirection::BToA, "b_to_a"),
                ] {
                    open_direction(backend, &ss, &sn, aead, d, frames[name].as_array().unwrap());
                }
            }
        }
    }
}

#[test]
fn tampered_vector_frames_fail_authentication() {
    let v = &load()[0];
    let backend = crypto::default_backend();
    let ss0 = SessionSecret::dangerous_from_bytes(hex_field(v, "ss0").unwrap().try_into().unwrap());
    let f = &v["frames"]["a_to_b"][0];
    let good = hex_field(f, "frame").unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x40;
        let mut opener = FrameOpener::dangerous_new(
            backend,
            ss0.master_key(backend, &[]),
            KeyDirection::AToB,
            AeadAlgorithm::Aes128Gcm,
            int_field(f, "offset").unwrap(),
        );
        let r = opener.open_in_place(&mut bad);
        // Flipping a length bit makes the frame look longer (incomplete) or
        // too short; every other flip is an authentication failure.
        match (i, r) {
            (1 | 2, Ok(None)) | (1 | 2, Err(Error::FrameTooShort(_))) => {}
            (_, Err(Error::AuthenticationFailed)) => {}
            (_, other) => panic!("byte {i}: {other:?}"),
        }
    }
    // The right frame at the wrong offset fails too.
    let mut opener = FrameOpener::dangerous_new(
        backend,
        ss0.master_key(backend, &[]),
        KeyDirection::AToB,
        AeadAlgorithm::Aes128Gcm,
        0,
    );
    assert_eq!(
        opener.open_in_place(&mut good.clone()),
        Err(Error::AuthenticationFailed)
    );
}

/// Hands out the vector's randomness in the order the handshake draws it.
struct Scripted(VecDeque<Vec<u8>>);

impl RandomSource for Scripted {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        let next = self
            .0
            .pop_front()
            .expect("handshake drew more randomness than scripted");
        assert_eq!(
            next.len(),
            dest.len(),
            "randomness drawn in an unexpected size"
        );
        dest.copy_from_slice(&next);
        Ok(())
    }
}

fn scripted(chunks: Vec<Vec<u8>>) -> Box<Scripted> {
    Box::new(Scripted(chunks.into()))
}

/// Vectors whose options are what our own hosts send for one TEP: A offers
/// only that TEP, B answers with it.
fn handshake_vectors() -> Vec<Value> {
    load()
        .into_iter()
        .filter(|v| {
            let tep = v["tep"].as_u64().unwrap();
            v["eno_option_a"] == format!("4503{tep:02x}")
                && v["eno_option_b"] == format!("450401{tep:02x}")
        })
        .collect()
}

/// Drives both state machines to completion, delivering every byte.
fn run(client: &mut ClientHandshake, server: &mut ServerHandshake) -> (Vec<u8>, Vec<u8>) {
    let (mut c_wire, mut s_wire) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut out = Vec::new();
        client.write_to(&mut out);
        let used = server.read(&out).expect("server reads");
        // A server done with a 0-RTT hello leaves the early frames to its
        // session.
        assert!(used == out.len() || server.is_done());
        c_wire.extend_from_slice(&out);
        let mut back = Vec::new();
        server.write_to(&mut back);
        let used = client.read(&back).expect("client reads");
        assert_eq!(used, back.len());
        s_wire.extend_from_slice(&back);
        if client.is_done() && server.is_done() {
            return (c_wire, s_wire);
        }
    }
    panic!("handshake did not finish");
}

/// Seals a direction's frames with the session's sealer when they use only
/// what a sealer sends (rekey bit, FINp), and compares with the vector.
fn seal_and_compare(session: &mut Session, frames: &[Value]) -> usize {
    let simple = frames
        .iter()
        .all(|f| f["control"].as_u64().unwrap() <= 1 && f["flags"].as_u64().unwrap() <= 1);
    if !simple || frames.is_empty() {
        return 0;
    }
    assert_eq!(
        session.sealer.offset(),
        int_field(&frames[0], "offset").unwrap()
    );
    for f in frames {
        if f["control"] == 1 {
            session
                .sealer
                .initiate_rekey()
                .or_else(|e| {
                    if e == Error::RekeyOutstanding {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .unwrap();
        }
        let mut out = Vec::new();
        session
            .sealer
            .seal(
                &hex_field(f, "plaintext").unwrap(),
                f["flags"] == 1,
                &mut out,
            )
            .unwrap();
        assert_eq!(hex::encode(out), f["frame"].as_str().unwrap());
        // The empty-rekey rule needs the peer's answer before another one.
        if f["control"] == 1 {
            let g = session.sealer.generation();
            session.sealer.observe_peer_generation(g);
        }
    }
    frames.len()
}

#[test]
fn state_machines_put_the_vector_bytes_on_the_wire() {
    let vs = handshake_vectors();
    assert!(vs.len() >= 6, "{} vectors usable", vs.len());
    let mut sealed = 0;
    for backend in crypto::all_backends() {
        for v in &vs {
            let tep = Tep::from_id(v["tep"].as_u64().unwrap() as u8).unwrap();
            let list: Vec<AeadAlgorithm> = v["sym_cipher_list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| AeadAlgorithm::from_id(c.as_u64().unwrap() as u16).unwrap())
                .collect();
            let chosen = AeadAlgorithm::from_id(v["sym_cipher"].as_u64().unwrap() as u16).unwrap();
            let resumption = v.get("resumption").filter(|r| r.is_object());
            let nonce_len = |name| resumption.map_or(8, |r| hex_field(r, name).unwrap().len());
            let base = HandshakeConfig {
                backend,
                teps: vec![tep],
                ..HandshakeConfig::default()
            };
            let client_config = Arc::new(HandshakeConfig {
                aeads: list,
                resumption: ResumptionSettings {
                    nonce_len: nonce_len("nonce_a"),
                    ..Default::default()
                },
                ..base.clone()
            });
            let server_config = Arc::new(HandshakeConfig {
                aeads: vec![chosen],
                resumption: ResumptionSettings {
                    nonce_len: nonce_len("nonce_b"),
                    ..Default::default()
                },
                ..base
            });
            let cache = Arc::new(ResumptionCache::new(16));
            let mut client = ClientHandshake::new(
                client_config.clone(),
                None,
                scripted(vec![
                    hex_field(v, "priv_a").unwrap(),
                    hex_field(v, "n_a").unwrap(),
                ]),
            )
            .unwrap();
            let mut server = ServerHandshake::new(
                server_config.clone(),
                Some(cache.clone()),
                scripted(vec![
                    hex_field(v, "priv_b").unwrap(),
                    hex_field(v, "n_b").unwrap(),
                ]),
            )
            .unwrap();
            let (c_wire, s_wire) = run(&mut client, &mut server);
            let expect_c = [
                &marker(HelloKind::Pipelined)[..],
                &hex_field(v, "eno_option_a").unwrap(),
                &hex_field(v, "init1").unwrap(),
            ]
            .concat();
            let expect_s = [
                &marker(HelloKind::B)[..],
                &hex_field(v, "eno_option_b").unwrap(),
                &hex_field(v, "init2").unwrap(),
            ]
            .concat();
            assert_eq!(
                hex::encode(&c_wire),
                hex::encode(&expect_c),
                "{}",
                v["name"]
            );
            assert_eq!(
                hex::encode(&s_wire),
                hex::encode(&expect_s),
                "{}",
                v["name"]
            );
            let Some(ClientOutcome::Encrypted(mut a)) = client.outcome() else {
                panic!("client not encrypted")
            };
            let Some(ServerOutcome::Encrypted(mut b)) = server.outcome() else {
                panic!("server not encrypted")
            };
            assert_eq!(
                hex::encode(a.info.session_id.as_bytes()),
                v["session_id_0"].as_str().unwrap()
            );
            assert_eq!(a.info.session_id, b.info.session_id);
            assert_eq!(
                hex::encode(&a.info.transcript),
                v["eno_transcript"].as_str().unwrap()
            );
            sealed += seal_and_compare(&mut a, v["frames"]["a_to_b"].as_array().unwrap());
            sealed += seal_and_compare(&mut b, v["frames"]["b_to_a"].as_array().unwrap());

            let Some(r) = resumption else { continue };
            let ticket = a.resumption.take().expect("client keeps ss[1]");
            assert_eq!(ticket.index, 1);
            assert_eq!(
                hex::encode(ticket.secret.dangerous_as_bytes()),
                v["ss1"].as_str().unwrap()
            );
            // A 0-RTT vector: A's first frames go with its 'E' hello, and
            // its end-of-early-data mark follows once B's hello is in.
            let early = r.get("early").filter(|e| e.is_object());
            let early_frames =
                early.map_or(Vec::new(), |e| e["frames"].as_array().unwrap().clone());
            let early_data: Vec<u8> = early_frames
                .iter()
                .flat_map(|f| hex_field(f, "plaintext").unwrap())
                .collect();
            let mut client = ClientHandshake::with_early_data(
                client_config,
                Some(ticket),
                &early_data,
                scripted(vec![hex_field(r, "nonce_a").unwrap()]),
            )
            .unwrap();
            assert_eq!(client.early_data_len(), early_data.len());
            let mut server = ServerHandshake::new(
                server_config,
                Some(cache.clone()),
                scripted(vec![hex_field(r, "nonce_b").unwrap()]),
            )
            .unwrap();
            let (mut c_wire, s_wire) = run(&mut client, &mut server);
            // What A sends once B's hello is in (the 0-RTT end mark).
            client.write_to(&mut c_wire);
            let sub_a = hex_field(r, "suboption_from_orig_A").unwrap();
            let sub_b = hex_field(r, "suboption_from_orig_B").unwrap();
            let opt_a = [&[0x45, 2 + sub_a.len() as u8][..], &sub_a].concat();
            let opt_b = [&[0x45, 3 + sub_b.len() as u8, 0x01][..], &sub_b].concat();
            let expect_c = match early {
                None => [&marker(HelloKind::A)[..], &opt_a].concat(),
                Some(e) => {
                    let frames: Vec<u8> = early_frames
                        .iter()
                        .flat_map(|f| hex_field(f, "frame").unwrap())
                        .collect();
                    assert_eq!(
                        frames.len() as u64,
                        int_field(e, "end_mark_offset").unwrap()
                    );
                    // The mark goes with A's first frame of the session.
                    [&marker(HelloKind::Early)[..], &opt_a, &frames].concat()
                }
            };
            assert_eq!(
                hex::encode(&c_wire),
                hex::encode(&expect_c),
                "{}",
                v["name"]
            );
            assert_eq!(
                s_wire,
                [&marker(HelloKind::B)[..], &opt_b].concat(),
                "{}",
                v["name"]
            );
            let Some(ClientOutcome::Encrypted(mut a)) = client.outcome() else {
                panic!("client not resumed")
            };
            let Some(ServerOutcome::Encrypted(mut b)) = server.outcome() else {
                panic!("server not resumed")
            };
            assert!(a.info.resumed && b.info.resumed);
            assert_eq!(
                (a.info.zero_rtt, b.info.zero_rtt),
                (early.is_some(), early.is_some())
            );
            if early.is_some() {
                // B opens the early frames, the mark, and A's resumed frames.
                let mut stream = c_wire[8 + opt_a.len()..].to_vec();
                stream.extend_from_slice(&hex_field(&r["early"], "end_mark").unwrap());
                let resumed = r["frames"]["a_to_b"].as_array().unwrap();
                let mut later: Vec<u8> = resumed
                    .iter()
                    .flat_map(|f| hex_field(f, "frame").unwrap())
                    .collect();
                stream.append(&mut later);
                let mut got = Vec::new();
                let mut pos = 0;
                while pos < stream.len() {
                    let f = b.opener.open_in_place(&mut stream[pos..]).unwrap().unwrap();
                    got.extend_from_slice(&stream[pos + f.data.start..pos + f.data.end]);
                    pos += f.frame_len;
                }
                let want: Vec<u8> = early_frames
                    .iter()
                    .chain(resumed)
                    .flat_map(|f| hex_field(f, "plaintext").unwrap())
                    .collect();
                assert_eq!(got, want);
            }
            assert_eq!(
                hex::encode(a.info.session_id.as_bytes()),
                r["session_id_1"].as_str().unwrap()
            );
            assert_eq!(a.info.session_id, b.info.session_id);
            let mut a_to_b = r["frames"]["a_to_b"].as_array().unwrap().as_slice();
            if let (Some(e), Some((first, rest))) = (early, a_to_b.split_first()) {
                // A's first frame of the session carries the mark before it.
                let mut out = Vec::new();
                a.sealer
                    .seal(&hex_field(first, "plaintext").unwrap(), false, &mut out)
                    .unwrap();
                let want = [
                    hex_field(e, "end_mark").unwrap(),
                    hex_field(first, "frame").unwrap(),
                ];
                assert_eq!(hex::encode(out), hex::encode(want.concat()));
                a_to_b = rest;
                sealed += 1;
            }
            sealed += seal_and_compare(&mut a, a_to_b);
            sealed += seal_and_compare(&mut b, r["frames"]["b_to_a"].as_array().unwrap());
            // The secret was used once: the server no longer holds ss[1],
            // only ss[2] for the next time.
            assert_eq!(cache.len(), 1);
        }
    }
    // Rekeyed and FINp vectors went through the sealer, not only plain ones.
    assert!(sealed >= 40, "only {sealed} frames compared");
}

/// The kernel carriage's vectors: the options are the SYN's and SYN-ACK's,
/// A's first payload byte is Init1's first (no hello), and the frames
/// follow at offsets counted from each direction's first payload byte.
#[test]
fn kernel_carriage_vectors_start_with_init1_and_count_offsets_from_it() {
    let vs: Vec<Value> = load()
        .into_iter()
        .filter(|v| v["carriage"] == "kernel")
        .collect();
    assert_eq!(vs.len(), 3, "kernel-carriage vectors");
    let mut resumed = 0;
    for backend in crypto::all_backends() {
        for v in &vs {
            let tep = Tep::from_id(v["tep"].as_u64().unwrap() as u8).unwrap();
            let aeads = |field: &str| -> Vec<AeadAlgorithm> {
                match &v[field] {
                    Value::Array(list) => list
                        .iter()
                        .map(|c| AeadAlgorithm::from_id(c.as_u64().unwrap() as u16).unwrap())
                        .collect(),
                    one => vec![AeadAlgorithm::from_id(one.as_u64().unwrap() as u16).unwrap()],
                }
            };
            let client_config = Arc::new(HandshakeConfig {
                backend,
                aeads: aeads("sym_cipher_list"),
                ..HandshakeConfig::default()
            });
            let server_config = Arc::new(HandshakeConfig {
                backend,
                teps: vec![tep],
                aeads: aeads("sym_cipher"),
                ..HandshakeConfig::default()
            });
            let syn = hex_field(v, "eno_option_a").unwrap();
            let synack = hex_field(v, "eno_option_b").unwrap();
            let mut client = ClientHandshake::kernel(
                client_config.clone(),
                None,
                scripted(vec![
                    hex_field(v, "priv_a").unwrap(),
                    hex_field(v, "n_a").unwrap(),
                ]),
            )
            .unwrap();
            // What our client puts in its SYN is the vector's option.
            assert_eq!(client.syn_option(), &syn[..], "{}", v["name"]);
            client.kernel_synack(&synack).unwrap();
            let cache = Arc::new(ResumptionCache::new(16));
            let mut server = ServerHandshake::kernel(
                server_config.clone(),
                Some(cache.clone()),
                &syn,
                &synack,
                scripted(vec![
                    hex_field(v, "priv_b").unwrap(),
                    hex_field(v, "n_b").unwrap(),
                ]),
            )
            .unwrap();
            let (c_wire, s_wire) = run(&mut client, &mut server);
            assert_eq!(c_wire, hex_field(v, "init1").unwrap(), "{}", v["name"]);
            assert_eq!(s_wire, hex_field(v, "init2").unwrap(), "{}", v["name"]);
            let Some(ClientOutcome::Encrypted(mut a)) = client.outcome() else {
                panic!("client not encrypted")
            };
            let Some(ServerOutcome::Encrypted(mut b)) = server.outcome() else {
                panic!("server not encrypted")
            };
            assert_eq!(
                hex::encode(a.info.session_id.as_bytes()),
                v["session_id_0"].as_str().unwrap()
            );
            assert_eq!(
                hex::encode(&b.info.transcript),
                v["eno_transcript"].as_str().unwrap()
            );
            let frames = |d: &str| v["frames"][d].as_array().unwrap().clone();
            assert!(seal_and_compare(&mut a, &frames("a_to_b")) > 0);
            assert!(seal_and_compare(&mut b, &frames("b_to_a")) > 0);

            // Resumption in the SYN: A's option is its resumption
            // suboption alone; B's answer (the kernel's) its global
            // suboption and its half with B's nonce; no Init message.
            let Some(r) = v.get("resumption").filter(|r| r.is_object()) else {
                continue;
            };
            let ticket = a.resumption.take().expect("client keeps ss[1]");
            let mut client = ClientHandshake::kernel(
                client_config.clone(),
                Some(ticket),
                scripted(vec![hex_field(r, "nonce_a").unwrap()]),
            )
            .unwrap();
            let sub_a = hex_field(r, "suboption_from_orig_A").unwrap();
            let sub_b = hex_field(r, "suboption_from_orig_B").unwrap();
            let syn = [&[0x45, 2 + sub_a.len() as u8][..], &sub_a].concat();
            let synack = [&[0x45, 3 + sub_b.len() as u8, 0x01][..], &sub_b].concat();
            assert_eq!(
                (syn.len(), synack.len()),
                (20, 20),
                "both fill a SYN's room"
            );
            assert_eq!(client.syn_option(), &syn[..], "{}", v["name"]);
            client.kernel_synack(&synack).unwrap();
            let mut server = ServerHandshake::kernel(
                server_config,
                Some(cache.clone()),
                &syn,
                &synack,
                scripted(vec![]),
            )
            .unwrap();
            assert!(!client.wants_write() && !server.wants_write());
            let Some(ClientOutcome::Encrypted(mut a)) = client.outcome() else {
                panic!("client not resumed")
            };
            let Some(ServerOutcome::Encrypted(mut b)) = server.outcome() else {
                panic!("server not resumed")
            };
            assert!(a.info.resumed && b.info.resumed);
            assert_eq!(
                hex::encode(a.info.session_id.as_bytes()),
                r["session_id_1"].as_str().unwrap()
            );
            assert_eq!(a.info.session_id, b.info.session_id);
            assert!(seal_and_compare(&mut a, r["frames"]["a_to_b"].as_array().unwrap()) > 0);
            assert!(seal_and_compare(&mut b, r["frames"]["b_to_a"].as_array().unwrap()) > 0);
            resumed += 1;
        }
    }
    assert_eq!(
        resumed,
        crypto::all_backends().len(),
        "one resumption vector"
    );
}
