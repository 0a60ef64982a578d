//! The computation behind the conformance harness: from the inputs of a
//! vector (keys, nonces, ENO options, frames) to every intermediate value
//! of the key schedule and every frame, using the library's own code.
//! Shared by `examples/conformance` and the known-answer tests.

use serde_json::{Map, Value, json};
use tcpcrypt_proto::aead::AeadAlgorithm;
use tcpcrypt_proto::crypto::CryptoBackend;
use tcpcrypt_proto::eno::EnoOption;
use tcpcrypt_proto::frame::{self, FrameFields};
use tcpcrypt_proto::init::{Init1, Init2};
use tcpcrypt_proto::negotiation::{self, ClientOffer, ClientResult, ResumptionData};
use tcpcrypt_proto::resumption::{ResumptionSecret, session_nonce};
use tcpcrypt_proto::schedule::{KeyDirection, MasterKey, SessionSecret};
use tcpcrypt_proto::tep::{EphemeralKey, Tep};
use tcpcrypt_proto::{HandshakeConfig, Role};

pub type Result<T> = std::result::Result<T, String>;

pub fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name).ok_or_else(|| format!("missing field `{name}`"))
}

pub fn hex_field(v: &Value, name: &str) -> Result<Vec<u8>> {
    let s = field(v, name)?
        .as_str()
        .ok_or_else(|| format!("`{name}` is not a string"))?;
    hex::decode(s).map_err(|e| format!("`{name}`: {e}"))
}

pub fn int_field(v: &Value, name: &str) -> Result<u64> {
    field(v, name)?
        .as_u64()
        .ok_or_else(|| format!("`{name}` is not an integer"))
}

fn aead_of(id: u64) -> Result<AeadAlgorithm> {
    u16::try_from(id)
        .ok()
        .and_then(AeadAlgorithm::from_id)
        .ok_or_else(|| format!("unsupported AEAD {id}"))
}

/// The TEP byte B sent for the negotiated TEP, by the library's rule (the
/// last valid TEP in B's option that A offered).
fn negotiated_tep_byte(
    backend: &'static dyn CryptoBackend,
    tep: Tep,
    a: &EnoOption,
    b: &EnoOption,
) -> Result<u8> {
    let config = HandshakeConfig {
        backend,
        ..HandshakeConfig::default()
    };
    let offer = ClientOffer {
        option: a.clone(),
        fresh: a
            .teps()
            .iter()
            .filter_map(|s| Tep::from_id(s.id()))
            .collect(),
        resumption: None,
        pipelined: None,
    };
    match negotiation::client_interpret(&config, &offer, b) {
        Ok(ClientResult::Fresh(t, byte)) if t == tep => Ok(byte),
        other => Err(format!("options do not negotiate {tep}: {other:?}")),
    }
}

/// Seals every frame of one direction, tracking generations: a frame with
/// the rekey bit is the first of the next generation.
fn seal_frames(
    backend: &'static dyn CryptoBackend,
    mk0: &MasterKey,
    direction: KeyDirection,
    aead: AeadAlgorithm,
    frames: &Value,
) -> Result<Value> {
    let list = frames.as_array().ok_or("frames must be an array")?;
    let mut mk = mk0.clone();
    let mut out = Vec::new();
    for f in list {
        let control = int_field(f, "control")? as u8;
        if control & frame::CONTROL_REKEY != 0 {
            mk = mk.next(backend);
        }
        let traffic = mk.traffic_key(backend, direction, aead);
        let urgent = match field(f, "urgent")? {
            Value::Null => None,
            v => Some(v.as_u64().ok_or("urgent is not an integer")? as u16),
        };
        let fields = FrameFields {
            control,
            flags: int_field(f, "flags")? as u8,
            urgent,
        };
        let mut bytes = Vec::new();
        frame::dangerous_seal_frame(
            &*traffic.aead_key(backend),
            &traffic.nonce_randomizer(),
            int_field(f, "offset")?,
            fields,
            &hex_field(f, "plaintext")?,
            &mut bytes,
        )
        .map_err(|e| e.to_string())?;
        let mut obj = f.as_object().cloned().ok_or("frame is not an object")?;
        obj.insert("frame".into(), json!(hex::encode(bytes)));
        out.push(Value::Object(obj));
    }
    Ok(Value::Array(out))
}

fn seal_both(
    backend: &'static dyn CryptoBackend,
    mk0: &MasterKey,
    aead: AeadAlgorithm,
    frames: &Value,
) -> Result<Value> {
    Ok(json!({
        "a_to_b": seal_frames(backend, mk0, KeyDirection::AToB, aead, field(frames, "a_to_b")?)?,
        "b_to_a": seal_frames(backend, mk0, KeyDirection::BToA, aead, field(frames, "b_to_a")?)?,
    }))
}

fn traffic_hex(
    backend: &'static dyn CryptoBackend,
    mk: &MasterKey,
    d: KeyDirection,
    aead: AeadAlgorithm,
) -> String {
    hex::encode(mk.traffic_key(backend, d, aead).dangerous_as_bytes())
}

/// Computes the outputs of one vector.
pub fn compute(backend: &'static dyn CryptoBackend, input: &Value) -> Result<Value> {
    let tep_id = int_field(input, "tep")?;
    let tep = u8::try_from(tep_id)
        .ok()
        .and_then(Tep::from_id)
        .ok_or_else(|| format!("unsupported TEP {tep_id}"))?;
    let list: Vec<u16> = field(input, "sym_cipher_list")?
        .as_array()
        .ok_or("sym_cipher_list must be an array")?
        .iter()
        .map(|c| {
            c.as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .ok_or("bad cipher id")
        })
        .collect::<std::result::Result<_, _>>()?;
    let aead = aead_of(int_field(input, "sym_cipher")?)?;
    let key_a = EphemeralKey::dangerous_from_private(tep, &hex_field(input, "priv_a")?, backend)
        .map_err(|e| e.to_string())?;
    let key_b = EphemeralKey::dangerous_from_private(tep, &hex_field(input, "priv_b")?, backend)
        .map_err(|e| e.to_string())?;
    let n_a: [u8; 32] = hex_field(input, "n_a")?
        .try_into()
        .map_err(|_| "n_a must be 32 bytes")?;
    let n_b: [u8; 32] = hex_field(input, "n_b")?
        .try_into()
        .map_err(|_| "n_b must be 32 bytes")?;
    let option_a =
        EnoOption::parse(&hex_field(input, "eno_option_a")?).map_err(|e| e.to_string())?;
    let option_b =
        EnoOption::parse(&hex_field(input, "eno_option_b")?).map_err(|e| e.to_string())?;
    let tep_byte = negotiated_tep_byte(backend, tep, &option_a, &option_b)?;
    let transcript = [option_a.as_bytes(), option_b.as_bytes()].concat();

    let init1 = Init1 {
        sym_ciphers: list,
        nonce: n_a,
        pub_field: key_a.pub_field().to_vec(),
    }
    .encode()
    .map_err(|e| e.to_string())?;
    let init2 = Init2 {
        sym_cipher: aead.id(),
        nonce: n_b,
        pub_field: key_b.pub_field().to_vec(),
    }
    .encode();
    let es = key_a
        .agree(key_b.pub_field(), backend)
        .map_err(|e| e.to_string())?;
    let es_b = key_b
        .agree(key_a.pub_field(), backend)
        .map_err(|e| e.to_string())?;
    if es != es_b {
        return Err("A and B computed different shared secrets".into());
    }
    let ss0 = SessionSecret::from_key_exchange(backend, &n_a, &transcript, &init1, &init2, &es);
    let ss1 = ss0.next(backend);
    let ss2 = ss1.next(backend);
    let mk0 = ss0.master_key(backend, &[]);
    let mk1 = mk0.next(backend);

    let mut out: Map<String, Value> = input
        .as_object()
        .cloned()
        .ok_or("vector is not an object")?;
    let mut put = |k: &str, v: &[u8]| {
        out.insert(k.into(), json!(hex::encode(v)));
    };
    put("pub_a_field", key_a.pub_field());
    put("pub_b_field", key_b.pub_field());
    put("eno_transcript", &transcript);
    put("init1", &init1);
    put("init2", &init2);
    put("es", &es);
    put("prk", ss0.dangerous_as_bytes());
    put("ss0", ss0.dangerous_as_bytes());
    put("ss1", ss1.dangerous_as_bytes());
    put("ss2", ss2.dangerous_as_bytes());
    put(
        "session_id_0",
        ss0.session_id(backend, tep_byte, &[]).as_bytes(),
    );
    put("mk0", mk0.dangerous_as_bytes());
    put("mk1", mk1.dangerous_as_bytes());
    for (name, mk, d) in [
        ("k_ab0", &mk0, KeyDirection::AToB),
        ("k_ba0", &mk0, KeyDirection::BToA),
        ("k_ab1", &mk1, KeyDirection::AToB),
        ("k_ba1", &mk1, KeyDirection::BToA),
    ] {
        out.insert(name.into(), json!(traffic_hex(backend, mk, d, aead)));
    }
    out.insert(
        "frames".into(),
        seal_both(backend, &mk0, aead, field(input, "frames")?)?,
    );

    if let Some(r) = input.get("resumption").filter(|r| !r.is_null()) {
        out.insert("resumption".into(), resumption(backend, tep, aead, ss1, r)?);
    }
    Ok(Value::Object(out))
}

/// The connection resumed with ss[1], original roles unchanged.
fn resumption(
    backend: &'static dyn CryptoBackend,
    tep: Tep,
    aead: AeadAlgorithm,
    ss1: SessionSecret,
    r: &Value,
) -> Result<Value> {
    let nonce_a = hex_field(r, "nonce_a")?;
    let nonce_b = hex_field(r, "nonce_b")?;
    let cached = |role| ResumptionSecret {
        tep,
        aead,
        original_role: role,
        index: 1,
        secret: ss1.clone(),
    };
    let (orig_a, orig_b) = (cached(Role::A), cached(Role::B));
    let suboption = |s: &ResumptionSecret, nonce: &[u8]| {
        let sub = ResumptionData {
            half: s.own_half(backend),
            nonce: nonce.to_vec(),
        }
        .suboption(tep);
        [&[sub.byte][..], &sub.data].concat()
    };
    let sn = session_nonce(Role::A, &nonce_a, &nonce_b);
    if sn != session_nonce(Role::B, &nonce_b, &nonce_a) {
        return Err("sn differs between the two hosts".into());
    }
    let mk0 = ss1.master_key(backend, &sn);
    let mut out = r
        .as_object()
        .cloned()
        .ok_or("resumption is not an object")?;
    let mut put = |k: &str, v: &[u8]| {
        out.insert(k.into(), json!(hex::encode(v)));
    };
    put("resume_1", &ss1.resume_id(backend));
    put("sn_1", &sn);
    put("suboption_from_orig_A", &suboption(&orig_a, &nonce_a));
    put("suboption_from_orig_B", &suboption(&orig_b, &nonce_b));
    put(
        "session_id_1",
        ss1.session_id(backend, tep.id() | 0x80, &sn).as_bytes(),
    );
    put("mk0_session1", mk0.dangerous_as_bytes());
    out.insert(
        "k_ab0_session1".into(),
        json!(traffic_hex(backend, &mk0, KeyDirection::AToB, aead)),
    );
    out.insert(
        "k_ba0_session1".into(),
        json!(traffic_hex(backend, &mk0, KeyDirection::BToA, aead)),
    );
    out.insert(
        "frames".into(),
        seal_both(backend, &mk0, aead, field(r, "frames")?)?,
    );
    if let Some(e) = r.get("early").filter(|e| !e.is_null()) {
        // 0-RTT frames: the connecting host (here the original A) seals
        // them under the early key from ss[1] and its own nonce.
        let mk_early = ss1.early_master_key(backend, &nonce_a);
        let frames = seal_frames(
            backend,
            &mk_early,
            KeyDirection::AToB,
            aead,
            field(e, "frames")?,
        )?;
        let end = frames
            .as_array()
            .and_then(|f| f.last())
            .map(|f| -> Result<u64> {
                Ok(int_field(f, "offset")? + hex_field(f, "frame")?.len() as u64)
            })
            .transpose()?
            .unwrap_or(0);
        let mut early = e.as_object().cloned().ok_or("early is not an object")?;
        early.insert(
            "mk_early".into(),
            json!(hex::encode(mk_early.dangerous_as_bytes())),
        );
        early.insert(
            "k_early".into(),
            json!(traffic_hex(backend, &mk_early, KeyDirection::AToB, aead)),
        );
        early.insert("frames".into(), frames);
        early.insert(
            "end_mark".into(),
            json!(hex::encode(frame::END_OF_EARLY_DATA)),
        );
        early.insert("end_mark_offset".into(), json!(end));
        out.insert("early".into(), Value::Object(early));
    }
    Ok(Value::Object(out))
}
