#!/usr/bin/env python3
"""Build the tcpcrypt known-answer vectors and write vectors.json.

    python3 gen_vectors.py           # (re)write vectors.json
    python3 gen_vectors.py --check   # regenerate in memory, compare, exit 1 on
                                     # any difference

All inputs are derived deterministically from SHA-256 of fixed labels, so
the output is byte-identical on every run.  Before anything is generated the
primitives are checked against published test vectors (RFC 5869, RFC 7748,
the GCM specification), so a broken library cannot silently produce vectors.
"""

import argparse
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep the folder free of __pycache__

import tcpcrypt_ref as ref  # noqa: E402

OUT_PATH = os.path.join(HERE, "vectors.json")


# ---------------------------------------------------------------------------
# Self-test of the building blocks
# ---------------------------------------------------------------------------

def _expand_by_hand(prk, info, length):
    """HKDF-Expand written out from the RFC 8548 Figure 1 recurrence."""
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = ref.hmac_sha256(prk, t + info + bytes([i]))
        okm += t
        i += 1
    return okm[:length]


def self_test():
    h = bytes.fromhex

    # RFC 5869, appendix A.1 (test case 1, SHA-256).
    ikm = h("0b" * 22)
    salt = h("000102030405060708090a0b0c")
    info = h("f0f1f2f3f4f5f6f7f8f9")
    prk = ref.extract(salt, ikm)
    assert prk == h("077709362c2e32df0ddc3f0dc47bba63"
                    "90b6c73bb50f9c3122ec844ad7c2b3e5"), "HKDF-Extract"
    okm = h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db0"
            "2d56ecc4c5bf34007208d5b887185865")
    assert ref.cprf(prk, info, 42) == okm, "HKDF-Expand (library)"
    assert _expand_by_hand(prk, info, 42) == okm, "HKDF-Expand (by hand)"
    # The lengths used by tcpcrypt, with one-byte and longer CONST values.
    for const in (b"\x01", b"\x03", b"\x02" + h("0102030405060708"),
                  b"\x03" + h("aabbcc")):
        for n in (18, 28, 32, 44, 64, 65):
            assert ref.cprf(prk, const, n) == _expand_by_hand(prk, const, n)

    # RFC 7748, section 6.1 (X25519 Diffie-Hellman).
    a_priv = h("77076d0a7318a57d3c16c17251b26645"
               "df4c2f87ebc0992ab177fba51db92c2a")
    a_pub = h("8520f0098930a754748b7ddcb43ef75a"
              "0dbf3a0d26381af4eba4a98eaa9b4e6a")
    b_priv = h("5dab087e624a8a4b79e17f8b83800ee6"
               "6f3bb1292618b6fd1c2f8b27ff88e0eb")
    b_pub = h("de9edb7d7b7dc1b4d35b61c2ece43537"
              "3f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25"
               "e07e21c947d19e3376f09b3c1e161742")
    assert ref.pub_field(ref.TEP_X25519, a_priv) == a_pub, "X25519 pub A"
    assert ref.pub_field(ref.TEP_X25519, b_priv) == b_pub, "X25519 pub B"
    assert ref.shared_secret(ref.TEP_X25519, a_priv, b_pub) == shared
    assert ref.shared_secret(ref.TEP_X25519, b_priv, a_pub) == shared

    # RFC 7748, section 6.2 (X448 Diffie-Hellman).
    a_priv = h("9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28d"
               "d9c9baf574a9419744897391006382a6f127ab1d9ac2d8c0a598726b")
    a_pub = h("9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c"
              "22c5d9bbc836647241d953d40c5b12da88120d53177f80e532c41fa0")
    b_priv = h("1c306a7ac2a0e2e0990b294470cba339e6453772b075811d8fad0d1d"
               "6927c120bb5ee8972b0d3e21374c9c921b09d1b0366f10b65173992d")
    b_pub = h("3eb7a829b0cd20f5bcfc0b599b6feccf6da4627107bdb0d4f345b430"
              "27d8b972fc3e34fb4232a13ca706dcb57aec3dae07bdc1c67bf33609")
    shared = h("07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282b"
               "b60c0b56fd2464c335543936521c24403085d59a449a5037514a879d")
    assert ref.pub_field(ref.TEP_X448, a_priv) == a_pub, "X448 pub A"
    assert ref.pub_field(ref.TEP_X448, b_priv) == b_pub, "X448 pub B"
    assert ref.shared_secret(ref.TEP_X448, a_priv, b_pub) == shared
    assert ref.shared_secret(ref.TEP_X448, b_priv, a_pub) == shared

    # GCM specification (McGrew and Viega), test cases 1 and 2.
    gcm = ref.AESGCM(bytes(16))
    assert gcm.encrypt(bytes(12), b"", b"") == h(
        "58e2fccefa7e3061367f1d57a4e7455a"), "AES-GCM TC1"
    assert gcm.encrypt(bytes(12), bytes(16), b"") == h(
        "0388dace60b6a392f328c2b971b2fe78"
        "ab6e47d42cec13bdf53a67b21257bddf"), "AES-GCM TC2"

    # P-256: the generator point (private key 1) in compressed form.
    g = ref.pub_field(ref.TEP_P256, (1).to_bytes(32, "big"))
    assert g == h("0023" "03" "6b17d1f2e12c4247f8bce6e563a440f2"
                  "77037d812deb33a0f4a13945d898c296"), "P-256 generator"

    # P-521: the generator point (private key 1) in compressed form, and
    # (n - 1) * G = -G, which has the other y parity.  The published
    # generator y ends in ...6650, so it is even and the prefix is 0x02.
    g_x = h("00c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af"
            "606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429b"
            "f97e7e31c2e5bd66")
    g = ref.pub_field(ref.TEP_P521, (1).to_bytes(66, "big"))
    assert g == h("0045" "02") + g_x, "P-521 generator"
    g = ref.pub_field(ref.TEP_P521, (ref.P521_ORDER - 1).to_bytes(66, "big"))
    assert g == h("0045" "03") + g_x, "P-521 order"


# ---------------------------------------------------------------------------
# Deterministic inputs
# ---------------------------------------------------------------------------

def det(label, length):
    """`length` bytes derived from SHA-256 of a label (counter mode)."""
    out, i = b"", 0
    while len(out) < length:
        out += hashlib.sha256(("tcpcrypt-kat:%s:%d" % (label, i))
                              .encode()).digest()
        i += 1
    return out[:length]


def private_key(tep, label):
    if tep == ref.TEP_P521:
        raw = det(label, ref.P521_SCALAR_LEN)
        d = int.from_bytes(raw, "big") % (ref.P521_ORDER - 1) + 1
        return d.to_bytes(ref.P521_SCALAR_LEN, "big").hex()
    if tep == ref.TEP_X448:
        return det(label, 56).hex()
    raw = det(label, 32)
    if tep == ref.TEP_P256:
        d = int.from_bytes(raw, "big") % (ref.P256_ORDER - 1) + 1
        raw = d.to_bytes(32, "big")
    return raw.hex()


class F:
    """Frame spec: data is bytes or an int length (derived bytes)."""

    def __init__(self, data=b"", control=0x00, flags=0x00, urgent=None):
        self.data, self.control = data, control
        self.flags, self.urgent = flags, urgent


def layout(specs, start, label):
    frames, offset = [], start
    for i, s in enumerate(specs):
        data = s.data
        if isinstance(data, int):
            data = det("%s/%d" % (label, i), data)
        frames.append({
            "offset": offset,
            "control": s.control,
            "flags": s.flags,
            "urgent": s.urgent,
            "plaintext": data.hex(),
        })
        offset += ref.frame_len(s.flags, len(data))
    return frames


def vector(name, tep, ciphers, cipher, opt_a, opt_b, a_to_b, b_to_a,
           resumption=None):
    """resumption: (len(nonce_a), len(nonce_b), a_to_b specs, b_to_a specs)"""
    v = {
        "name": name,
        "tep": tep,
        "sym_cipher_list": ciphers,
        "sym_cipher": cipher,
        "priv_a": private_key(tep, name + "/priv_a"),
        "priv_b": private_key(tep, name + "/priv_b"),
        "n_a": det(name + "/n_a", 32).hex(),
        "n_b": det(name + "/n_b", 32).hex(),
        "eno_option_a": opt_a,
        "eno_option_b": opt_b,
        "frames": {
            "a_to_b": layout(a_to_b, ref.init1_len(tep, len(ciphers)),
                             name + "/a_to_b"),
            "b_to_a": layout(b_to_a, ref.init2_len(tep), name + "/b_to_a"),
        },
        "resumption": None,
    }
    if resumption is not None:
        la, lb, ra, rb = resumption
        v["resumption"] = {
            "nonce_a": det(name + "/nonce_a", la).hex(),
            "nonce_b": det(name + "/nonce_b", lb).hex(),
            "frames": {
                "a_to_b": layout(ra, 0, name + "/resumed/a_to_b"),
                "b_to_a": layout(rb, 0, name + "/resumed/b_to_a"),
            },
        }
    return v


X25519, P256 = ref.TEP_X25519, ref.TEP_P256
P521, X448 = ref.TEP_P521, ref.TEP_X448
AES128, AES256, CHACHA = (ref.AEAD_AES_128_GCM, ref.AEAD_AES_256_GCM,
                          ref.AEAD_CHACHA20_POLY1305)
FIN, URG = ref.FLAG_FINP, ref.FLAG_URGP
REKEY = ref.CONTROL_REKEY
MAX_DATA = 0xFFFF - ref.TAG_LEN - 1  # 65518: clen = 65535 with flags only


def basic_frames():
    """A few frames per direction: data, empty, data, FINp last."""
    a = [F(b"GET / HTTP/1.0\r\n\r\n"), F(b""), F(200), F(b"bye", flags=FIN)]
    b = [F(b"HTTP/1.0 200 OK\r\n\r\n"), F(1000), F(b""), F(b"", flags=FIN)]
    return a, b


def resumed_frames():
    a = [F(b"resumed request"), F(b""), F(64, flags=FIN)]
    b = [F(b"resumed reply"), F(33), F(b"", flags=FIN)]
    return a, b


def build_inputs():
    vs = []
    ba, bb = basic_frames()
    ra, rb = resumed_frames()

    def one_per_aead(prefix, tep):
        """One vector per AEAD on `tep`, each with a resumption part, with
        three resumption nonce shapes."""
        opt_a, opt_b = "4503%02x" % tep, "450401%02x" % tep
        for suffix, aead, nonces in (("aes128gcm", AES128, (8, 8)),
                                     ("aes256gcm", AES256, (0, 0)),
                                     ("chacha20poly1305", CHACHA, (3, 8))):
            vs.append(vector("%s-%s" % (prefix, suffix), tep, [aead], aead,
                             opt_a, opt_b, ba, bb, nonces + (ra, rb)))

    one_per_aead("x25519", X25519)
    one_per_aead("p256", P256)

    # Several ciphers offered, several TEPs offered by A; B picks X25519.
    vs.append(vector("multi-cipher-multi-tep-x25519", X25519,
                     [CHACHA, AES256, AES128], AES256,
                     "4505212223", "45040123", ba, bb, (8, 3, ra, rb)))

    # B lists several TEPs (one it does not share with A, carrying data
    # behind a length byte); the last common one, P-256, is negotiated.
    # A's global suboption has the a bit set.
    vs.append(vector("multi-tep-b-lists-several-p256", P256,
                     [AES128, CHACHA], CHACHA,
                     "4506022321" "24", "450a0182a0aabbcc2321", ba, bb,
                     (5, 0, ra, rb)))

    # Rekeying: each direction through generations 0, 1, 2; fresh and
    # resumed sessions.
    rk_a = [F(b"gen0 first"), F(40),
            F(b"gen1 first", control=REKEY), F(17),
            F(b"", control=REKEY),  # empty rekey frame starts gen 2
            F(b"gen2", flags=FIN)]
    rk_b = [F(b"gen0"),
            F(b"", control=REKEY),  # answer to the peer's rekey
            F(b"gen1 data"),
            F(b"gen2 first", control=REKEY), F(300),
            F(b"", flags=FIN)]
    vs.append(vector("rekey-x25519-aes128gcm", X25519, [AES128], AES128,
                     "450323", "45040123", rk_a, rk_b, (8, 8, rk_a, rk_b)))
    vs.append(vector("rekey-p256-chacha20poly1305", P256, [CHACHA], CHACHA,
                     "450321", "45040121", rk_a, rk_b, (0, 8, rk_a, rk_b)))

    # URGp: urgent field present (flags 0x02), and with FINp (0x03).
    ug_a = [F(b"normal"), F(b"urgent!", flags=URG, urgent=6),
            F(b"after"),
            F(b"last urgent", flags=URG | FIN, urgent=10)]
    ug_b = [F(b"x" * 300, flags=URG, urgent=0x0102),
            F(b"tail", flags=URG | FIN, urgent=3)]
    vs.append(vector("urgp-x25519-aes128gcm", X25519, [AES128], AES128,
                     "450323", "45040123", ug_a, ug_b,
                     (8, 8, [F(b"u", flags=URG | FIN, urgent=0)],
                      [F(b"!", flags=URG | FIN, urgent=0)])))

    # Reserved control bits (cres) and flag bits (fres) are carried as
    # given.  Control 0xfe leaves rekey = 0; 0xff and 0x03 do rekey.
    rs_a = [F(b"cres set", control=0xFE, flags=0xFC),
            F(b"rekey plus cres", control=0x03),
            F(b"fres with URGp", flags=0xFE, urgent=7),
            F(b"", control=0xFE, flags=0xFD)]
    rs_b = [F(b"high bits", control=0x80, flags=0x80),
            F(b"", control=0xFF, flags=0xFC),
            F(b"end", control=0x7E, flags=0x05)]
    vs.append(vector("reserved-bits-x25519-aes256gcm", X25519, [AES256],
                     AES256, "450323", "45040123", rs_a, rs_b,
                     (2, 2, rs_a, rs_b)))

    # Largest frame: 65518 data bytes, clen = 65535.
    vs.append(vector("max-frame-x25519-aes128gcm", X25519, [AES128], AES128,
                     "450323", "45040123",
                     [F(MAX_DATA), F(b"", flags=FIN)],
                     [F(MAX_DATA, flags=FIN)]))

    # Vectors added with P-521 (0x22) and X448 (0x24); appended so that
    # the vectors above stay byte-identical.

    one_per_aead("p521", P521)
    one_per_aead("x448", X448)

    # Rekeying through generations 0, 1, 2 on each new TEP; fresh and
    # resumed sessions.
    vs.append(vector("rekey-p521-aes256gcm", P521, [AES256], AES256,
                     "450322", "45040122", rk_a, rk_b, (8, 8, rk_a, rk_b)))
    vs.append(vector("rekey-x448-chacha20poly1305", X448, [CHACHA], CHACHA,
                     "450324", "45040124", rk_a, rk_b, (0, 8, rk_a, rk_b)))

    # A offers all four TEPs.  B lists two of them; the last one is
    # negotiated: X448 in the first vector, P-521 (behind X448) in the
    # second.
    vs.append(vector("multi-tep-all-four-x448", X448,
                     [AES128, AES256, CHACHA], AES128,
                     "450621222324", "4505012324", ba, bb, (8, 8, ra, rb)))
    vs.append(vector("multi-tep-all-four-p521", P521,
                     [CHACHA, AES128], AES128,
                     "450624232221", "4505012422", ba, bb, (4, 6, ra, rb)))

    # The kernel carriage (docs/PROTOCOL.md 3.5): the options are the SYN's
    # and the SYN-ACK's (A offers P-256 and X25519 with no global
    # suboption; B answers with its global suboption and one TEP), no
    # hello precedes Init1, and each direction's frame offsets count from
    # its first payload byte, so A's first frame sits right after Init1
    # and B's right after Init2.
    for name, tep, opt_b, aead in (
            ("kernel-carriage-x25519-aes128gcm", X25519, "45040123", AES128),
            ("kernel-carriage-p256-chacha20poly1305", P256, "45040121",
             CHACHA)):
        v = vector(name, tep, [AES128, AES256, CHACHA], aead,
                   "45042123", opt_b, ba, bb)
        v["carriage"] = "kernel"
        vs.append(v)

    # Resumption in the SYN (docs/PROTOCOL.md 3.5): A's SYN carries the
    # resumption suboption alone (its 8-byte nonce fills the 20 bytes of
    # room), B's SYN-ACK its global suboption and its half with a 7-byte
    # nonce (what the SYN-ACK's room leaves); the resumed frames count
    # from each direction's first payload byte. Appended, so that the
    # vectors above stay byte-identical.
    v = vector("kernel-carriage-resumption-x25519-aes128gcm", X25519,
               [AES128, AES256, CHACHA], AES128, "45042123", "45040123",
               ba, bb, (8, 7, ra, rb))
    v["carriage"] = "kernel"
    vs.append(v)

    # 0-RTT data (docs/PROTOCOL.md 3.6): the resumed connection's first
    # frame travels with A's 'E' hello under the early key; the end mark
    # follows it, and A's resumed frames follow the mark. Appended, so
    # that the vectors above stay byte-identical.
    name = "zero-rtt-x25519-aes128gcm"
    early = [F(b"GET /early HTTP/1.1\r\nHost: b\r\n\r\n")]
    early_len = sum(ref.frame_len(f.flags, len(f.data)) for f in early)
    v = vector(name, X25519, [AES128], AES128, "4503%02x" % X25519,
               "450401%02x" % X25519, ba, bb, (8, 8, ra, rb))
    v["resumption"]["frames"]["a_to_b"] = layout(
        ra, early_len + 3, name + "/resumed/a_to_b")
    v["resumption"]["early"] = {"frames": layout(early, 0, name + "/early")}
    vs.append(v)
    return vs


# ---------------------------------------------------------------------------
# Consistency of the generated layout with the computed outputs
# ---------------------------------------------------------------------------

def check_layout(out):
    def walk(frames, start):
        offset = start
        for f in frames:
            assert f["offset"] == offset, (out["name"], f["offset"], offset)
            offset += len(f["frame"]) // 2
    walk(out["frames"]["a_to_b"], len(out["init1"]) // 2)
    walk(out["frames"]["b_to_a"], len(out["init2"]) // 2)
    if out.get("resumption"):
        early = out["resumption"].get("early")
        start = 0
        if early:
            walk(early["frames"], 0)
            start = early["end_mark_offset"] + 3
        walk(out["resumption"]["frames"]["a_to_b"], start)
        walk(out["resumption"]["frames"]["b_to_a"], 0)


def render():
    outs = [ref.compute(v) for v in build_inputs()]
    for o in outs:
        check_layout(o)
    names = [o["name"] for o in outs]
    assert len(set(names)) == len(names), "duplicate vector names"
    return (json.dumps(outs, indent=2) + "\n").encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="compare with vectors.json instead of writing it")
    args = ap.parse_args()
    self_test()
    data = render()
    if args.check:
        try:
            with open(OUT_PATH, "rb") as fh:
                current = fh.read()
        except FileNotFoundError:
            print("vectors.json is missing", file=sys.stderr)
            return 1
        if current != data:
            print("vectors.json differs from the regenerated vectors",
                  file=sys.stderr)
            return 1
        print("vectors.json is up to date (%d bytes)" % len(data))
        return 0
    with open(OUT_PATH, "wb") as fh:
        fh.write(data)
    print("wrote %s (%d bytes)" % (OUT_PATH, len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
