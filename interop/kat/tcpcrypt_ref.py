#!/usr/bin/env python3
"""Reference computation of the tcpcrypt (RFC 8548) key schedule and frame
encryption, as negotiated by TCP-ENO (RFC 8547).

Written directly from the RFC texts, on top of pyca/cryptography.  It is meant
to produce known-answer vectors, not to be a protocol implementation: every
input (private keys, nonces, ENO options, frames with their stream offsets)
is given explicitly and every intermediate value is reported.

Usage as a filter:

    python3 tcpcrypt_ref.py < inputs.json > outputs.json

reads a JSON array of input objects and writes the same array with the
output fields added.  See README.md for the field list and conventions.
"""

import copy
import json
import sys

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import (
    AESGCM,
    ChaCha20Poly1305,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

# ---------------------------------------------------------------------------
# Constants (RFC 8548 section 4.3, section 5, section 7; RFC 8547 section 4)
# ---------------------------------------------------------------------------

CONST_NEXTK = 0x01
CONST_SESSID = 0x02
CONST_REKEY = 0x03
CONST_KEY_A = 0x04
CONST_KEY_B = 0x05
CONST_RESUME = 0x06
# Not an RFC 8548 constant: the key of 0-RTT frames (docs/PROTOCOL.md 3.6).
CONST_EARLY = 0x07
# The end-of-early-data mark: a frame header with clen = 0.
END_OF_EARLY_DATA = b"\x00\x00\x00"
INIT1_MAGIC = bytes.fromhex("15101a0e")
INIT2_MAGIC = bytes.fromhex("097105e0")

ENO_KIND = 0x45

TEP_P256 = 0x21
TEP_P521 = 0x22
TEP_X25519 = 0x23
TEP_X448 = 0x24
SUPPORTED_TEPS = (TEP_P256, TEP_P521, TEP_X25519, TEP_X448)

N_LEN = 32  # N_A_LEN = N_B_LEN
K_LEN = 32

AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0010

# id -> (ae_key_len, ae_nonce_len)   (RFC 8548 Table 3)
AEAD_LENGTHS = {
    AEAD_AES_128_GCM: (16, 12),
    AEAD_AES_256_GCM: (32, 12),
    AEAD_CHACHA20_POLY1305: (32, 12),
}
TAG_LEN = 16

FLAG_FINP = 0x01
FLAG_URGP = 0x02
CONTROL_REKEY = 0x01

P256_PUBKEY_POINT_LEN = 33  # compressed SEC1 point
# Decision: pubkey_len counts the whole Pub field including its own two
# bytes (RFC 8548 section 5 numbers the last byte of the field L - 1).
P256_PUB_FIELD_LEN = 2 + P256_PUBKEY_POINT_LEN

P256_ORDER = int(
    "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16
)
P256_SCALAR_LEN = 32  # private key and ES (x-coordinate) size

# P-521: the same decisions as for P-256.  The compressed point is 1 + 66
# bytes, so pubkey_len = 2 + 67 = 69 = 0x0045.
P521_PUBKEY_POINT_LEN = 67
P521_PUB_FIELD_LEN = 2 + P521_PUBKEY_POINT_LEN
P521_ORDER = int(
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "fa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409", 16
)
P521_SCALAR_LEN = 66  # ceil(521 / 8): private key and ES (x-coordinate)

# NIST curves (ECSVDP-DH, IEEE 1363):
# tep -> (name, curve, scalar_len, point_len, pub_field_len, order)
NIST_CURVES = {
    TEP_P256: ("P-256", ec.SECP256R1(), P256_SCALAR_LEN,
               P256_PUBKEY_POINT_LEN, P256_PUB_FIELD_LEN, P256_ORDER),
    TEP_P521: ("P-521", ec.SECP521R1(), P521_SCALAR_LEN,
               P521_PUBKEY_POINT_LEN, P521_PUB_FIELD_LEN, P521_ORDER),
}

# Montgomery curves (RFC 7748): tep -> (name, private class, public class,
# key_len).  Private keys, the Pub field and ES are all key_len raw bytes;
# the Pub field has no length prefix.
X_CURVES = {
    TEP_X25519: ("X25519", x25519.X25519PrivateKey, x25519.X25519PublicKey,
                 32),
    TEP_X448: ("X448", x448.X448PrivateKey, x448.X448PublicKey, 56),
}


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def unhex(s):
    if not isinstance(s, str):
        raise TypeError("expected a hex string, got %r" % (s,))
    if s != s.lower():
        raise ValueError("hex must be lowercase: %r" % s)
    return bytes.fromhex(s)


def u16(n):
    if not 0 <= n <= 0xFFFF:
        raise ValueError("value does not fit in 16 bits: %d" % n)
    return n.to_bytes(2, "big")


def u32(n):
    return n.to_bytes(4, "big")


def u64(n):
    if not 0 <= n < 1 << 64:
        raise ValueError("offset does not fit in 64 bits: %d" % n)
    return n.to_bytes(8, "big")


def xor(a, b):
    assert len(a) == len(b)
    return bytes(x ^ y for x, y in zip(a, b))


# ---------------------------------------------------------------------------
# Extract and CPRF (RFC 8548 section 3.1 and section 5: HKDF with SHA-256)
# ---------------------------------------------------------------------------

def hmac_sha256(key, msg):
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(msg)
    return h.finalize()


def extract(salt, ikm):
    """HKDF-Extract-SHA256: PRK = HMAC-SHA256(key=salt, msg=IKM)."""
    return hmac_sha256(salt, ikm)


def cprf(key, const, length):
    """CPRF(K, CONST, L) = HKDF-Expand-SHA256(PRK=K, info=CONST, L)."""
    return HKDFExpand(
        algorithm=hashes.SHA256(), length=length, info=bytes(const)
    ).derive(key)


def c(*parts):
    """Build a CONST | suffix byte string from ints and byte strings."""
    out = b""
    for p in parts:
        out += bytes([p]) if isinstance(p, int) else bytes(p)
    return out


# ---------------------------------------------------------------------------
# TCP-ENO option parsing (RFC 8547 sections 4.1, 4.2, 4.4)
# ---------------------------------------------------------------------------

def parse_eno_syn_option(opt):
    """Parse a whole SYN-form ENO option (kind and length bytes included).

    Returns (global_suboption, teps) where teps is a list of
    (tep_byte_as_sent, tep_id, data).  Raises ValueError if ill-formed.
    """
    if len(opt) < 2 or opt[0] != ENO_KIND:
        raise ValueError("not an ENO option: %s" % opt.hex())
    if opt[1] != len(opt):
        raise ValueError("ENO length byte %d != option size %d"
                         % (opt[1], len(opt)))
    body = opt[2:]
    n = len(body)
    gopt = None
    teps = []
    i = 0
    while i < n:
        x = body[i]
        if x < 0x20:  # global suboption (v = 0, glt < 0x20)
            if gopt is None:
                gopt = x  # only the first one counts
            i += 1
        elif x < 0x80:  # TEP identifier, v = 0, no data
            teps.append((x, x, b""))
            i += 1
        elif x < 0xA0:  # length byte: next suboption has (x & 0x1f) + 1 bytes
            dlen = (x & 0x1F) + 1
            if i + 1 >= n or body[i + 1] < 0xA0 or i + 2 + dlen > n:
                raise ValueError("ill-formed ENO option: %s" % opt.hex())
            t = body[i + 1]
            teps.append((t, t & 0x7F, body[i + 2:i + 2 + dlen]))
            i += 2 + dlen
        else:  # TEP identifier, v = 1, data runs to the end of the option
            teps.append((x, x & 0x7F, body[i + 1:]))
            i = n
    if gopt is None:
        gopt = 0x00  # implicit global suboption
    return gopt, teps


def negotiated_tep_byte(opt_a, opt_b, tep):
    """Check the options against the claimed negotiated TEP and return the
    TEP byte exactly as host B sent it (session ID byte 0).

    The negotiated TEP is the last TEP in B's option that A also offered
    (RFC 8547 section 4.5; all data of the TEPs used here is acceptable).
    """
    gopt_a, teps_a = parse_eno_syn_option(opt_a)
    gopt_b, teps_b = parse_eno_syn_option(opt_b)
    if gopt_a & 0x01:
        raise ValueError("host A's option has b = 1")
    if not gopt_b & 0x01:
        raise ValueError("host B's option has b = 0")
    offered_by_a = {t for (_, t, _) in teps_a}
    common = [(byte, t) for (byte, t, _) in teps_b if t in offered_by_a]
    if not common:
        raise ValueError("no TEP common to both options")
    byte, t = common[-1]
    if t != tep:
        raise ValueError("options negotiate TEP 0x%02x, vector says 0x%02x"
                         % (t, tep))
    return byte


# ---------------------------------------------------------------------------
# Key agreement (RFC 8548 section 5)
# ---------------------------------------------------------------------------

def _nist_private(tep, raw):
    name, curve, scalar_len, _, _, order = NIST_CURVES[tep]
    if len(raw) != scalar_len:
        raise ValueError("%s private key must be %d bytes"
                         % (name, scalar_len))
    d = int.from_bytes(raw, "big")
    if not 1 <= d < order:
        raise ValueError("%s scalar out of range" % name)
    return ec.derive_private_key(d, curve)


def _x_private(tep, raw):
    name, priv_cls, _, key_len = X_CURVES[tep]
    if len(raw) != key_len:
        raise ValueError("%s private key must be %d bytes" % (name, key_len))
    return priv_cls.from_private_bytes(raw)


def pub_field(tep, priv_raw):
    """The Pub_A / Pub_B field as it appears inside Init1 / Init2."""
    if tep in X_CURVES:
        k = _x_private(tep, priv_raw)
        return k.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if tep in NIST_CURVES:
        _, _, _, point_len, field_len, _ = NIST_CURVES[tep]
        point = _nist_private(tep, priv_raw).public_key().public_bytes(
            serialization.Encoding.X962,
            serialization.PublicFormat.CompressedPoint)
        assert len(point) == point_len
        return u16(field_len) + point
    raise ValueError("unsupported TEP 0x%02x" % tep)


def pub_field_len(tep):
    if tep in X_CURVES:
        return X_CURVES[tep][3]
    return NIST_CURVES[tep][4]


def shared_secret(tep, priv_raw, peer_field):
    """ES computed from the local private key and the peer's Pub field."""
    if tep in X_CURVES:
        name, _, pub_cls, key_len = X_CURVES[tep]
        if len(peer_field) != key_len:
            raise ValueError("bad %s Pub field length" % name)
        k = _x_private(tep, priv_raw)
        es = k.exchange(pub_cls.from_public_bytes(peer_field))
        # RFC 8548 section 5, RFC 7748 section 6: abort on all zero.
        if es == bytes(key_len):
            raise ValueError("%s shared secret is all zero" % name)
        return es
    if tep in NIST_CURVES:
        name, curve, scalar_len, _, field_len, _ = NIST_CURVES[tep]
        if len(peer_field) != field_len:
            raise ValueError("bad %s Pub field length" % name)
        if int.from_bytes(peer_field[:2], "big") != field_len:
            raise ValueError("bad %s pubkey_len" % name)
        point = peer_field[2:]
        if point[0] not in (0x02, 0x03):
            raise ValueError("%s key not in compressed form" % name)
        # from_encoded_point checks that the point is on the curve.
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        es = _nist_private(tep, priv_raw).exchange(ec.ECDH(), peer)
        # x-coordinate, fixed-length big-endian
        assert len(es) == scalar_len
        return es
    raise ValueError("unsupported TEP 0x%02x" % tep)


# ---------------------------------------------------------------------------
# Init1 / Init2 (RFC 8548 section 4.1)
# ---------------------------------------------------------------------------

def build_init1(cipher_list, n_a, pub_a):
    if not 1 <= len(cipher_list) <= 255:
        raise ValueError("nciphers must be 1..255")
    body = bytes([len(cipher_list)])
    body += b"".join(u16(x) for x in cipher_list)
    body += n_a + pub_a
    return INIT1_MAGIC + u32(8 + len(body)) + body


def build_init2(cipher, n_b, pub_b):
    body = u16(cipher) + n_b + pub_b
    return INIT2_MAGIC + u32(8 + len(body)) + body


def init1_len(tep, ncipher):
    return 8 + 1 + 2 * ncipher + N_LEN + pub_field_len(tep)


def init2_len(tep):
    return 8 + 2 + N_LEN + pub_field_len(tep)


# ---------------------------------------------------------------------------
# Frames (RFC 8548 sections 3.6-3.8, 4.2)
# ---------------------------------------------------------------------------

def _aead(cipher, key):
    if cipher in (AEAD_AES_128_GCM, AEAD_AES_256_GCM):
        return AESGCM(key)
    if cipher == AEAD_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError("unsupported AEAD 0x%04x" % cipher)


def frame_plaintext(flags, urgent, data):
    if not 0 <= flags <= 0xFF:
        raise ValueError("flags out of range")
    if flags & FLAG_URGP:
        if urgent is None:
            raise ValueError("URGp set but urgent is null")
        return bytes([flags]) + u16(urgent) + data
    if urgent is not None:
        raise ValueError("urgent given but URGp clear in flags")
    return bytes([flags]) + data


def seal_frame(cipher, traffic_key, offset, control, flags, urgent, data):
    key_len, nonce_len = AEAD_LENGTHS[cipher]
    assert len(traffic_key) == key_len + nonce_len
    k, nr = traffic_key[:key_len], traffic_key[key_len:]
    if not 0 <= control <= 0xFF:
        raise ValueError("control out of range")
    pt = frame_plaintext(flags, urgent, data)
    clen = len(pt) + TAG_LEN
    if clen > 0xFFFF:
        raise ValueError("frame ciphertext too long (%d)" % clen)
    ad = bytes([control]) + u16(clen)
    frame_id = bytes(nonce_len - 8) + u64(offset)
    nonce = xor(frame_id, nr)
    ct = _aead(cipher, k).encrypt(nonce, pt, ad)
    assert len(ct) == clen
    frame = ad + ct
    # Round trip: what a receiver would do with the frame bytes.
    r_control, r_clen = frame[0], int.from_bytes(frame[1:3], "big")
    assert r_clen == len(frame) - 3
    assert _aead(cipher, k).decrypt(nonce, frame[3:], frame[:3]) == pt
    assert r_control == control
    return frame


class KeySchedule:
    """mk[j] and k_ab[j] / k_ba[j] for one session, derived on demand."""

    def __init__(self, mk0, cipher):
        self.mk = [mk0]
        self.cipher = cipher
        key_len, nonce_len = AEAD_LENGTHS[cipher]
        self.tk_len = key_len + nonce_len

    def master(self, j):
        while len(self.mk) <= j:
            self.mk.append(cprf(self.mk[-1], c(CONST_REKEY), K_LEN))
        return self.mk[j]

    def k_ab(self, j):
        return cprf(self.master(j), c(CONST_KEY_A), self.tk_len)

    def k_ba(self, j):
        return cprf(self.master(j), c(CONST_KEY_B), self.tk_len)


def seal_direction(frames, keys_for_gen, cipher):
    """Seal a list of frame objects in order; returns copies with `frame`.

    The generation starts at 0; a frame whose control byte has the rekey bit
    set is the first frame of the next generation.
    """
    out = []
    gen = 0
    for f in frames:
        f = dict(f)
        if f["control"] & CONTROL_REKEY:
            gen += 1
        frame = seal_frame(cipher, keys_for_gen(gen), f["offset"],
                           f["control"], f["flags"], f.get("urgent"),
                           unhex(f["plaintext"]))
        f["frame"] = frame.hex()
        out.append(f)
    return out


def seal_frames(frames_obj, sched):
    frames_obj = frames_obj or {}
    return {
        "a_to_b": seal_direction(frames_obj.get("a_to_b", []),
                                 sched.k_ab, sched.cipher),
        "b_to_a": seal_direction(frames_obj.get("b_to_a", []),
                                 sched.k_ba, sched.cipher),
    }


def frame_len(flags, data_len):
    """Size of a whole frame on the wire, for laying out offsets."""
    return 3 + 1 + (2 if flags & FLAG_URGP else 0) + data_len + TAG_LEN


# ---------------------------------------------------------------------------
# The whole computation
# ---------------------------------------------------------------------------

def compute(vec):
    """Return a copy of one input object with all output fields added."""
    out = copy.deepcopy(vec)
    tep = vec["tep"]
    if tep not in SUPPORTED_TEPS:
        raise ValueError("unsupported TEP 0x%02x" % tep)
    cipher_list = list(vec["sym_cipher_list"])
    cipher = vec["sym_cipher"]
    if cipher not in cipher_list:
        raise ValueError("sym_cipher not in sym_cipher_list")
    if cipher not in AEAD_LENGTHS:
        raise ValueError("unsupported AEAD 0x%04x" % cipher)
    key_len, nonce_len = AEAD_LENGTHS[cipher]
    tk_len = key_len + nonce_len

    priv_a = unhex(vec["priv_a"])
    priv_b = unhex(vec["priv_b"])
    n_a = unhex(vec["n_a"])
    n_b = unhex(vec["n_b"])
    if len(n_a) != N_LEN or len(n_b) != N_LEN:
        raise ValueError("N_A and N_B must be 32 bytes")
    opt_a = unhex(vec["eno_option_a"])
    opt_b = unhex(vec["eno_option_b"])

    # Negotiation transcript and the session ID's first byte.
    tep_byte = negotiated_tep_byte(opt_a, opt_b, tep)
    transcript = opt_a + opt_b

    # Key-exchange messages.
    pub_a = pub_field(tep, priv_a)
    pub_b = pub_field(tep, priv_b)
    init1 = build_init1(cipher_list, n_a, pub_a)
    init2 = build_init2(cipher, n_b, pub_b)
    assert len(init1) == init1_len(tep, len(cipher_list))
    assert len(init2) == init2_len(tep)

    # ES: each side from its own private key and the peer's Pub field as
    # carried in the peer's message.
    es_at_a = shared_secret(tep, priv_a, init2[8 + 2 + N_LEN:])
    es_at_b = shared_secret(tep, priv_b, init1[-len(pub_a):])
    assert es_at_a == es_at_b, "A and B disagree on ES"
    es = es_at_a

    # Session secrets.
    prk = extract(n_a, transcript + init1 + init2 + es)
    ss0 = prk
    ss1 = cprf(ss0, c(CONST_NEXTK), K_LEN)
    ss2 = cprf(ss1, c(CONST_NEXTK), K_LEN)

    session_id_0 = bytes([tep_byte]) + cprf(ss0, c(CONST_SESSID), K_LEN)
    sched0 = KeySchedule(cprf(ss0, c(CONST_REKEY), K_LEN), cipher)

    out.update({
        "pub_a_field": pub_a.hex(),
        "pub_b_field": pub_b.hex(),
        "eno_transcript": transcript.hex(),
        "init1": init1.hex(),
        "init2": init2.hex(),
        "es": es.hex(),
        "prk": prk.hex(),
        "ss0": ss0.hex(),
        "ss1": ss1.hex(),
        "ss2": ss2.hex(),
        "session_id_0": session_id_0.hex(),
        "mk0": sched0.master(0).hex(),
        "mk1": sched0.master(1).hex(),
        "k_ab0": sched0.k_ab(0).hex(),
        "k_ba0": sched0.k_ba(0).hex(),
        "k_ab1": sched0.k_ab(1).hex(),
        "k_ba1": sched0.k_ba(1).hex(),
        "frames": seal_frames(vec.get("frames"), sched0),
    })
    assert len(sched0.k_ab(0)) == tk_len

    res = vec.get("resumption")
    if res is not None:
        nonce_a = unhex(res["nonce_a"])
        nonce_b = unhex(res["nonce_b"])
        if len(nonce_a) > 8 or len(nonce_b) > 8:
            raise ValueError("resumption nonces must be 0..8 bytes")
        resume_1 = cprf(ss1, c(CONST_RESUME), 18)
        sn_1 = nonce_a + nonce_b
        tep_v1 = bytes([tep | 0x80])
        sched1 = KeySchedule(cprf(ss1, c(CONST_REKEY, sn_1), K_LEN), cipher)
        r = dict(out["resumption"])
        r.update({
            "resume_1": resume_1.hex(),
            "sn_1": sn_1.hex(),
            "suboption_from_orig_A": (tep_v1 + resume_1[0:9]
                                      + nonce_a).hex(),
            "suboption_from_orig_B": (tep_v1 + resume_1[9:18]
                                      + nonce_b).hex(),
            "session_id_1": (tep_v1 + cprf(ss1, c(CONST_SESSID, sn_1),
                                           K_LEN)).hex(),
            "mk0_session1": sched1.master(0).hex(),
            "k_ab0_session1": sched1.k_ab(0).hex(),
            "k_ba0_session1": sched1.k_ba(0).hex(),
            # Original roles are kept: the host that was A sends with k_ab.
            "frames": seal_frames(res.get("frames"), sched1),
        })
        early = res.get("early")
        if early is not None:
            # 0-RTT: the connecting host (here the original A) seals its
            # first frames, from offset 0, under a key from ss[1] and its
            # own nonce alone; the end mark follows them, and the resumed
            # session's frames follow the mark.
            mk_early = cprf(ss1, c(CONST_EARLY, nonce_a), K_LEN)
            sched_early = KeySchedule(mk_early, cipher)
            frames = seal_direction(early.get("frames", []), sched_early.k_ab,
                                    cipher)
            end = (frames[-1]["offset"] + len(unhex(frames[-1]["frame"]))
                   if frames else 0)
            e = dict(early)
            e.update({
                "mk_early": mk_early.hex(),
                "k_early": sched_early.k_ab(0).hex(),
                "frames": frames,
                "end_mark": END_OF_EARLY_DATA.hex(),
                "end_mark_offset": end,
            })
            r["early"] = e
        out["resumption"] = r
    return out


def main():
    vecs = json.load(sys.stdin)
    if not isinstance(vecs, list):
        raise SystemExit("input must be a JSON array of vector objects")
    json.dump([compute(v) for v in vecs], sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
