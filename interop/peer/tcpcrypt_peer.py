#!/usr/bin/env python3
"""An independent tcpcrypt (RFC 8548) peer, negotiated by TCP-ENO (RFC 8547)
carried in band as docs/PROTOCOL.md describes.

Written from the RFC texts and docs/PROTOCOL.md only.  The key-agreement
primitives, Extract/CPRF and the Init message builders come from
interop/kat/tcpcrypt_ref.py (itself written from the RFC text on top of
pyca/cryptography); everything on the wire (hello, ENO option, negotiation,
pipelined Init1, frames, FINp, rekeying, resumption and 0-RTT data) is
done here.

    tcpcrypt_peer.py client HOST PORT [--tep 0x23,0x21] [--aead 1,2,16]
                                      [--rekey-after N] [--no-pipeline]
                                      [--connections N] [--no-resume]
                                      [--no-early-data]
                                      [--hello-delay S] [--hello-delay-on N,..]
    tcpcrypt_peer.py server --port PORT [--tep ...] [--aead ...] [--once]
                                        [--no-resume] [--no-early-data]
                                        [--hello-wait S] [--banner TEXT]

See README.md in this folder.
"""

import argparse
import collections
try:
    import fcntl
    import termios
except ImportError:                      # not a POSIX system
    fcntl = termios = None
import json
import os
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # write nothing outside this folder
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "kat"))

import tcpcrypt_ref as ref  # noqa: E402
from cryptography.exceptions import InvalidTag  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import (  # noqa: E402
    AESGCM,
    ChaCha20Poly1305,
)

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

# PROTOCOL.md section 2: E5 'E' 'N' 'O' version kind CR LF, then the option.
MARKER_HEAD = b"\xe5ENO\x01"
KIND_A = 0x41  # connecting side, plain hello
KIND_P = 0x50  # connecting side, hello followed by a pipelined Init1
KIND_E = 0x45  # connecting side, resumption hello followed by 0-RTT frames
KIND_B = 0x42  # accepting side
KIND_L = 0x4C  # accepting side: "your hello came late", no option after it
KINDS_A = (KIND_A, KIND_P, KIND_E)
ENO_KIND = 0x45
# PROTOCOL.md 3.4 rule 1: the late marker, and how many new hellos the
# connecting side sends on it per connection asked for.
LATE_MARKER = MARKER_HEAD + bytes([KIND_L]) + b"\r\n"
LATE_HELLO_RETRIES = 2
# How long the accepting side waits for its late marker to be acknowledged
# before the reset, which would discard it from the send queue.
LATE_MARKER_LINGER = 1.0

TEP_P256, TEP_P521, TEP_X25519, TEP_X448 = 0x21, 0x22, 0x23, 0x24
TEP_NAMES = {
    TEP_P256: "TCPCRYPT_ECDHE_P256",
    TEP_P521: "TCPCRYPT_ECDHE_P521",
    TEP_X25519: "TCPCRYPT_ECDHE_Curve25519",
    TEP_X448: "TCPCRYPT_ECDHE_Curve448",
}
AEAD_AES128, AEAD_AES256, AEAD_CHACHA = 0x0001, 0x0002, 0x0010
AEAD_NAMES = {
    AEAD_AES128: "AEAD_AES_128_GCM",
    AEAD_AES256: "AEAD_AES_256_GCM",
    AEAD_CHACHA: "AEAD_CHACHA20_POLY1305",
}
AEAD_KEY_LEN = {AEAD_AES128: 16, AEAD_AES256: 32, AEAD_CHACHA: 32}
AE_NONCE_LEN = 12
TAG_LEN = 16

# Defaults (PROTOCOL.md section 8: X25519 and P-256; the most preferred TEP
# is the last of the list, so the option reads 45 04 21 23).
DEFAULT_TEPS = [TEP_P256, TEP_X25519]
# PROTOCOL.md gives no default AEAD order; AES-128-GCM (REQUIRED) first.
DEFAULT_AEADS = [AEAD_AES128, AEAD_AES256, AEAD_CHACHA]

CONST_NEXTK, CONST_SESSID, CONST_REKEY = 0x01, 0x02, 0x03
CONST_KEY_A, CONST_KEY_B = 0x04, 0x05
CONST_RESUME = ref.CONST_RESUME            # 0x06
CONST_EARLY = ref.CONST_EARLY              # 0x07, PROTOCOL.md 7.1 (not RFC)
INIT1_MAGIC = bytes.fromhex("15101a0e")
INIT2_MAGIC = bytes.fromhex("097105e0")
N_LEN = 32
K_LEN = 32

# PROTOCOL.md section 9: message_len bounds.
MIN_INIT_LEN = 42
MAX_INIT_LEN = 65536

# PROTOCOL.md section 5 and RFC 8548 section 4.2.
CONTROL_REKEY = 0x01
FLAG_FINP = 0x01
FLAG_URGP = 0x02
MIN_CLEN = 1 + TAG_LEN
MAX_CLEN = 0xFFFF
MAX_DATA = MAX_CLEN - TAG_LEN - 1  # 65518

# PROTOCOL.md section 6: automatic rekey thresholds.
AUTO_REKEY_FRAMES = 1 << 24
AUTO_REKEY_BYTES = 1 << 62

MOD64 = 1 << 64

# RFC 8548 3.5: resume[i] is 18 bytes, two halves of 9; the nonce is 0 to 8
# bytes, and we send 8.
RESUME_ID_LEN = 18
RESUME_HALF_LEN = 9
RESUME_NONCE_LEN = 8
# Server cache bound: the oldest entries go first beyond it.
RESUME_CACHE_LIMIT = 4096

# PROTOCOL.md 7.1: at most 16384 bytes of early frames precede the end mark
# (a frame header with clen = 0).  We send one frame: header, flags, data,
# tag.
END_OF_EARLY_DATA = ref.END_OF_EARLY_DATA  # 00 00 00
EARLY_DATA_LIMIT = 16384
MAX_EARLY_DATA = EARLY_DATA_LIMIT - 3 - 1 - TAG_LEN   # 16364

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_ENCRYPTED = 3

_stderr_lock = threading.Lock()


def emit(obj):
    """One JSON line on stderr."""
    line = json.dumps(obj, sort_keys=False)
    with _stderr_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


# ---------------------------------------------------------------------------
# Errors and outcomes
# ---------------------------------------------------------------------------

class ProtocolError(Exception):
    """Anything that aborts the connection (RST)."""

    def __init__(self, kind, detail=""):
        super().__init__("%s: %s" % (kind, detail) if detail else kind)
        self.kind = kind
        self.detail = detail


class NotEncrypted(Exception):
    """The connection ends up unencrypted (RFC 8547 fallback).

    same_connection: the plain stream continues on this connection (B
    declined with a vacuous option, or the client is plain); otherwise the
    connection is spoiled and a plain peer must reconnect.
    """

    def __init__(self, reason, detail="", same_connection=False):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason
        self.detail = detail
        self.same_connection = same_connection


class IllFormedOption(Exception):
    pass


class HelloLate(Exception):
    """The server answered our hello with the late marker (PROTOCOL.md 3.4
    rule 1): it took us for a plain client, delivered none of our bytes and
    resets the connection.  The connection is spoiled; a new one may carry
    a new hello."""


def wait_acknowledged(sock, limit):
    """Wait, at most limit seconds, until everything sent on sock has been
    acknowledged by the peer (Linux: TIOCOUTQ counts unsent and
    unacknowledged bytes), so that an abort right after does not discard
    it.  Without that ioctl it returns at once."""
    if fcntl is None or not hasattr(termios, "TIOCOUTQ"):
        return
    end = time.monotonic() + limit
    while True:
        try:
            buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
        except (OSError, ValueError):
            return
        if struct.unpack("i", buf)[0] <= 0 or time.monotonic() >= end:
            return
        time.sleep(0.005)


def abort_socket(sock):
    """Abort: close with RST (SO_LINGER 0), never a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Buffered reading with deadlines
# ---------------------------------------------------------------------------

class HandshakeTimeout(Exception):
    pass


class Stream:
    """Reads from a socket into a buffer."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def fill(self, deadline=None):
        """Read once more.  False at end of stream.  With a deadline, raises
        HandshakeTimeout when it passes; without one the socket's own
        timeout applies (socket.timeout)."""
        if self.eof:
            return False
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeTimeout()
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                raise HandshakeTimeout()
        else:
            data = self.sock.recv(262144)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_exact(self, n, deadline=None, what="data"):
        while len(self.buf) < n:
            if not self.fill(deadline):
                raise ProtocolError(
                    "Truncated", "end of stream inside %s (%d of %d bytes)"
                    % (what, len(self.buf), n))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def take_all(self):
        out = bytes(self.buf)
        self.buf.clear()
        return out


# ---------------------------------------------------------------------------
# The hello (PROTOCOL.md section 2)
# ---------------------------------------------------------------------------

def encode_hello(kind, option):
    return MARKER_HEAD + bytes([kind]) + b"\r\n" + option


def marker_byte_ok(i, x, kinds):
    if i < 5:
        return x == MARKER_HEAD[i]
    if i == 5:
        return x in kinds
    if i == 6:
        return x == 0x0D
    return x == 0x0A


def marker_status(buf, kinds):
    """'hello' (8 bytes match), 'prefix' (all so far match, fewer than 8),
    or 'departed'."""
    for i in range(min(len(buf), 8)):
        if not marker_byte_ok(i, buf[i], kinds):
            return "departed"
    return "hello" if len(buf) >= 8 else "prefix"


def scan_marker(stream, kinds, deadline):
    """Look at bytes 0 to 7 as they arrive.  Returns 'hello', 'departed',
    'eof' or 'timeout'."""
    while True:
        st = marker_status(stream.buf, kinds)
        if st != "prefix":
            return st
        try:
            if not stream.fill(deadline):
                return "eof"
        except HandshakeTimeout:
            return "timeout"


def read_option(stream, deadline):
    """After a whole marker: the ENO option header and body."""
    try:
        hdr = stream.read_exact(2, deadline, "the hello's ENO option")
        if hdr[0] != ENO_KIND or hdr[1] < 2:
            raise ProtocolError("MalformedHello",
                                "option header %s" % hdr.hex())
        return hdr + stream.read_exact(hdr[1] - 2, deadline,
                                       "the hello's ENO option")
    except HandshakeTimeout:
        raise ProtocolError("Timeout", "stalled handshake inside a hello")


# ---------------------------------------------------------------------------
# The ENO option (RFC 8547 sections 4.1, 4.2, 4.4)
# ---------------------------------------------------------------------------

def parse_option(opt):
    """Returns (global suboption or None, [(byte as sent, glt, data), ...]).

    Raises IllFormedOption for the two cases of RFC 8547 4.4 (and a length
    byte that ends the option)."""
    assert opt[0] == ENO_KIND and opt[1] == len(opt)
    body = opt[2:]
    n = len(body)
    gsub = None
    subs = []
    i = 0
    while i < n:
        x = body[i]
        if x < 0x20:                      # global suboption
            if gsub is None:              # only the first one counts
                gsub = x
            i += 1
        elif x < 0x80:                    # TEP, v = 0
            subs.append((x, x, b""))
            i += 1
        elif x < 0xA0:                    # length byte
            dlen = (x & 0x1F) + 1
            if i + 1 >= n:
                raise IllFormedOption("length byte ends the option")
            t = body[i + 1]
            if t < 0xA0:
                raise IllFormedOption("length byte followed by 0x%02x" % t)
            if i + 2 + dlen > n:
                raise IllFormedOption("suboption data beyond the option")
            subs.append((t, t & 0x7F, bytes(body[i + 2:i + 2 + dlen])))
            i += 2 + dlen
        else:                             # TEP, v = 1, data to the end
            subs.append((x, x & 0x7F, bytes(body[i + 1:])))
            i = n
    return gsub, subs


def is_resumption_data(byte, data):
    """RFC 8548 3.5 and PROTOCOL.md 3.2: v = 1 with 9 to 17 data bytes is
    resumption data; fewer or more is a fresh offer."""
    return bool(byte & 0x80) and 9 <= len(data) <= 17


def encode_option_a(teps, resumption=b""):
    """A's option: its fresh TEPs, then (optionally) one resumption
    suboption, last, so that it needs no length byte (PROTOCOL.md 3.1)."""
    # Implicit global suboption 0x00 (b = 0, a = 0): none sent.
    body = bytes(teps) + resumption
    return bytes([ENO_KIND, 2 + len(body)]) + body


def encode_option_b(tep):
    return bytes([ENO_KIND, 4, 0x01, tep])


def encode_option_b_resumed(suboption):
    """B's answer resuming a session: b = 1, then its resumption
    suboption."""
    return bytes([ENO_KIND, 3 + len(suboption), 0x01]) + suboption


def encode_resumption(tep, half, nonce):
    """RFC 8548 3.5, figures 2 and 3: TEP byte with v = 1, an identifier
    half, a nonce."""
    assert len(half) == RESUME_HALF_LEN and len(nonce) <= RESUME_NONCE_LEN
    return bytes([tep | 0x80]) + half + nonce


VACUOUS_B = bytes([ENO_KIND, 3, 0x01])


# ---------------------------------------------------------------------------
# Key agreement and the Init messages (RFC 8548 sections 3.3, 4.1, 5)
# ---------------------------------------------------------------------------

def new_private(tep):
    if tep == TEP_X25519:
        return os.urandom(32)
    if tep == TEP_X448:
        return os.urandom(56)
    if tep == TEP_P256:
        order = ref.P256_ORDER
        while True:
            raw = os.urandom(32)
            if 1 <= int.from_bytes(raw, "big") < order:
                return raw
    if tep == TEP_P521:
        order = ref.P521_ORDER
        while True:
            raw = bytearray(os.urandom(66))
            raw[0] &= 0x01                      # 521 bits
            if 1 <= int.from_bytes(raw, "big") < order:
                return bytes(raw)
    raise ValueError("unsupported TEP 0x%02x" % tep)


def agree(tep, priv, peer_field):
    try:
        return ref.shared_secret(tep, priv, peer_field)
    except (ValueError, TypeError) as e:
        raise ProtocolError("BadPublicKey", str(e))


def read_init(stream, magic, deadline, what):
    """One Init message, whole, header checked before anything is buffered."""
    try:
        hdr = stream.read_exact(8, deadline, what)
        if hdr[:4] != magic:
            raise ProtocolError("BadMagic", "%s starts %s" % (what, hdr.hex()))
        mlen = int.from_bytes(hdr[4:8], "big")
        if not MIN_INIT_LEN <= mlen <= MAX_INIT_LEN:
            raise ProtocolError("BadMessageLength",
                                "%s message_len %d" % (what, mlen))
        return hdr + stream.read_exact(mlen - 8, deadline, what)
    except HandshakeTimeout:
        raise ProtocolError("Timeout", "stalled handshake waiting for %s"
                            % what)


def parse_init1(msg, tep):
    k = msg[8]
    if k == 0:
        raise ProtocolError("NoCiphers", "Init1 with nciphers = 0")
    plen = ref.pub_field_len(tep)
    need = 9 + 2 * k + N_LEN + plen
    if len(msg) < need:
        raise ProtocolError("MalformedInit1", "message_len %d < %d for %d "
                            "ciphers and TEP 0x%02x" % (len(msg), need, k, tep))
    ciphers = [int.from_bytes(msg[9 + 2 * i:11 + 2 * i], "big")
               for i in range(k)]
    n_a = msg[9 + 2 * k:9 + 2 * k + N_LEN]
    pub = msg[9 + 2 * k + N_LEN:need]        # bytes after Pub_A: ignored
    return ciphers, n_a, pub


def parse_init2(msg, tep):
    plen = ref.pub_field_len(tep)
    need = 10 + N_LEN + plen
    if len(msg) < need:
        raise ProtocolError("MalformedInit2", "message_len %d < %d for TEP "
                            "0x%02x" % (len(msg), need, tep))
    cipher = int.from_bytes(msg[8:10], "big")
    n_b = msg[10:10 + N_LEN]
    pub = msg[10 + N_LEN:need]
    return cipher, n_b, pub


def make_init1(tep, aeads):
    priv = new_private(tep)
    n_a = os.urandom(N_LEN)
    init1 = ref.build_init1(aeads, n_a, ref.pub_field(tep, priv))
    return init1, priv, n_a


def fresh_secret(transcript, init1, init2, es, n_a):
    """ss[0] = PRK (RFC 8548 3.3)."""
    return ref.extract(n_a, transcript + init1 + init2 + es)


def derive_from_secret(tep_byte, ss, sn=b""):
    """The session ID and mk[0] from ss[i] and sn[i] (RFC 8548 3.3, 3.4)."""
    session_id = bytes([tep_byte]) + ref.cprf(
        ss, bytes([CONST_SESSID]) + sn, K_LEN)
    mk0 = ref.cprf(ss, bytes([CONST_REKEY]) + sn, K_LEN)
    return session_id, mk0


def derive_session(tep_byte, transcript, init1, init2, es, n_a):
    """PRK, the session ID and mk[0] (RFC 8548 3.3, 3.4; sn[0] empty)."""
    prk = fresh_secret(transcript, init1, init2, es, n_a)
    return derive_from_secret(tep_byte, prk)


def next_secret(ss):
    """ss[i+1] = CPRF(ss[i], CONST_NEXTK, K_LEN)."""
    return ref.cprf(ss, bytes([CONST_NEXTK]), K_LEN)


def resume_id(ss):
    """resume[i] = CPRF(ss[i], CONST_RESUME, 18) (RFC 8548 3.5)."""
    return ref.cprf(ss, bytes([CONST_RESUME]), RESUME_ID_LEN)


def resume_half(ss, orig_role):
    """The identifier half a host sends: the first if it was A in the
    original session, the second if it was B."""
    rid = resume_id(ss)
    return rid[:RESUME_HALF_LEN] if orig_role == "A" \
        else rid[RESUME_HALF_LEN:]


def other_role(role):
    return "B" if role == "A" else "A"


def session_nonce(orig_role, own_nonce, peer_nonce):
    """sn[i] = nonce_a | nonce_b, nonce_a from the host that was A in the
    original session, whatever the roles are now (PROTOCOL.md 7)."""
    if orig_role == "A":
        return own_nonce + peer_nonce
    return peer_nonce + own_nonce


def early_master(ss, nonce):
    """mk_early = CPRF(ss[i], CONST_EARLY | nonce, K_LEN), nonce the
    connecting side's resumption nonce of this hello (PROTOCOL.md 7.1)."""
    return ref.cprf(ss, bytes([CONST_EARLY]) + nonce, K_LEN)


def key_const(orig_role):
    """The traffic-key constant a host sends with: by its original role."""
    return CONST_KEY_A if orig_role == "A" else CONST_KEY_B


class Keyed:
    """What a completed handshake hands to the data phase.

    role is the role on this connection; orig_role the role in the session
    that made ss[0], which decides the key directions (RFC 8548 3.5).
    ss_next is ss[i+1], for the next resumption.  early_mk, when set, is
    the key of 0-RTT frames the peer sends before its end mark;
    mark_pending, that our own end mark is still to be written, in front
    of our first frame (send_off already counts it)."""

    def __init__(self, role, tep, aead, session_id, mk0, send_off, recv_off,
                 orig_role=None, ss_next=None, resumed=False):
        self.role = role
        self.orig_role = orig_role or role
        self.tep = tep
        self.aead = aead
        self.session_id = session_id
        self.mk0 = mk0
        self.send_const = key_const(self.orig_role)
        self.recv_const = key_const(other_role(self.orig_role))
        self.send_off = send_off
        self.recv_off = recv_off
        self.ss_next = ss_next
        self.resumed = resumed
        self.zero_rtt = False
        self.early_mk = None
        self.early_bytes = 0       # bytes of ours the peer took as 0-RTT
        self.mark_pending = False  # our end mark goes with our first frame

    def report(self):
        return {"encrypted": True, "tep": self.tep, "aead": self.aead,
                "session_id": self.session_id.hex(), "role": self.role,
                "resumed": self.resumed, "zero_rtt": self.zero_rtt}


# ---------------------------------------------------------------------------
# Resumption state (RFC 8548 3.5, PROTOCOL.md 7)
# ---------------------------------------------------------------------------

class Ticket:
    """A cached session secret ss[i] with what the resumed session needs:
    the TEP, the AEAD of the original session and this host's original
    role.  The client keeps one per server; the server's cache holds
    many."""

    def __init__(self, ss, tep, aead, orig_role):
        self.ss = ss
        self.tep = tep
        self.aead = aead
        self.orig_role = orig_role

    @classmethod
    def after(cls, keyed):
        """ss[i+1] of a keyed session."""
        return cls(keyed.ss_next, keyed.tep, keyed.aead, keyed.orig_role)

    def own_half(self):
        return resume_half(self.ss, self.orig_role)

    def peer_half(self):
        return resume_half(self.ss, other_role(self.orig_role))


class ResumptionCache:
    """The server's secrets, keyed by the identifier half the peer will
    send, for the life of the process.  Single use: take() removes."""

    def __init__(self, limit=RESUME_CACHE_LIMIT):
        self.lock = threading.Lock()
        self.entries = collections.OrderedDict()
        self.limit = limit

    def put(self, ticket):
        with self.lock:
            self.entries[ticket.peer_half()] = ticket
            while len(self.entries) > self.limit:
                self.entries.popitem(last=False)

    def take(self, half):
        with self.lock:
            return self.entries.pop(bytes(half), None)


def resumption_offer(subs):
    """A's resumption offer: its last suboption when it carries resumption
    data for a TEP named once.  Returns (TEP, half, nonce) or None."""
    if not subs:
        return None
    byte, glt, data = subs[-1]
    if not is_resumption_data(byte, data):
        return None
    if sum(1 for (_, g, _) in subs if g == glt) != 1:
        return None                       # named twice: invalid
    return glt, data[:RESUME_HALF_LEN], data[RESUME_HALF_LEN:]


def client_choose(teps, opt_b, offer=None):
    """Host A's reading of B's option (RFC 8547 4.5, PROTOCOL.md 3.2, 3.3).

    teps: every TEP A offered (fresh or by resumption).  offer: (TEP, the
    identifier half B must send) of A's resumption offer, or None.
    Returns (TEP byte as B sent it, TEP id, B's resumption nonce or None
    for a fresh exchange) or raises NotEncrypted."""
    try:
        gsub, subs = parse_option(opt_b)
    except IllFormedOption as e:
        raise NotEncrypted("disabled", "ill-formed option from B (%s): %s"
                           % (e, opt_b.hex()))
    if not subs:
        # Vacuous: B declined; the rest of the stream is plain data.
        raise NotEncrypted("declined", "B sent a vacuous option %s"
                           % opt_b.hex(), same_connection=True)
    if gsub is None or not gsub & 0x01:
        raise NotEncrypted("disabled", "B's option has b = 0: %s"
                           % opt_b.hex())

    counts = collections.Counter(glt for (_, glt, _) in subs)
    chosen = None
    for byte, glt, data in subs:          # the last valid one wins
        if glt not in teps or counts[glt] != 1:
            continue
        nonce_b = None
        if is_resumption_data(byte, data):
            # Valid only for the TEP we offered resumption with, and with
            # the other half of our identifier (RFC 8548 3.5): else ignored.
            if offer is None or glt != offer[0] \
                    or data[:RESUME_HALF_LEN] != offer[1]:
                continue
            nonce_b = data[RESUME_HALF_LEN:]
        chosen = (byte, glt, nonce_b)
    if chosen is None:
        raise NotEncrypted("disabled", "no valid TEP in B's option %s"
                           % opt_b.hex())
    return chosen


def server_choose(teps, opt_a):
    """Host B's fresh choice (PROTOCOL.md 3.2): (chosen TEP or None, decline
    reason or None, suboptions).  A resumption offer counts as a fresh offer
    too (RFC 8548 3.2: v = 1 implies willingness to go fresh); whether it
    is honoured instead is decided by the caller (resumption_offer)."""
    try:
        gsub, subs = parse_option(opt_a)
    except IllFormedOption as e:
        return None, "ill-formed option from A (%s)" % e, []
    if gsub is not None and gsub & 0x01:
        return None, "A's option has b = 1", subs
    counts = collections.Counter(glt for (_, glt, _) in subs)
    offered = {glt for (_, glt, _) in subs if counts[glt] == 1}
    for t in reversed(teps):              # our most preferred is last
        if t in offered:
            return t, None, subs
    return None, "no common TEP in %s" % opt_a.hex(), subs


# ---------------------------------------------------------------------------
# Host A (the connecting side)
# ---------------------------------------------------------------------------

def client_handshake(sock, stream, teps, aeads, pipeline, deadline,
                     ticket=None, early=b"", hello_delay=0.0):
    """Host A's handshake.  With a ticket, offers resumption (no pipelined
    Init1) and, with early bytes, sends them as one 0-RTT frame after hello
    'E'.  hello_delay: seconds to stay silent after connecting before the
    hello leaves (a hello that comes late, for tests).  Returns Keyed
    (early_bytes: how many of them B took) or raises NotEncrypted /
    ProtocolError, or HelloLate on B's late marker."""
    pipelined = None
    offer = None
    early_frame = b""
    if hello_delay > 0:
        time.sleep(hello_delay)
    if ticket is not None:
        nonce_a = os.urandom(RESUME_NONCE_LEN)
        offer = (ticket.tep, ticket.peer_half(), nonce_a)
        fresh = [t for t in teps if t != ticket.tep]
        opt_a = encode_option_a(fresh, encode_resumption(
            ticket.tep, ticket.own_half(), nonce_a))
        if early:
            early_frame = seal_early(ticket, nonce_a, early)
            sock.sendall(encode_hello(KIND_E, opt_a) + early_frame)
        else:
            sock.sendall(encode_hello(KIND_A, opt_a))
    elif pipeline:
        opt_a = encode_option_a(teps)
        # Init1 for the most preferred TEP, the last v = 0 suboption.
        pipelined = (teps[-1],) + make_init1(teps[-1], aeads)
        sock.sendall(encode_hello(KIND_P, opt_a) + pipelined[1])
    else:
        opt_a = encode_option_a(teps)
        sock.sendall(encode_hello(KIND_A, opt_a))

    st = scan_marker(stream, (KIND_B, KIND_L), deadline)
    if st == "hello" and stream.buf[5] == KIND_L:
        # PROTOCOL.md 3.4 rule 1: B took us for a plain client and resets.
        if early_frame:
            # The marker is not authenticated: with 0-RTT data out it does
            # not allow sending that data again (7.1 rule 7).
            exc = ProtocolError("EarlyDataUnconfirmed", "the server "
                                "answered the 'E' hello with the late "
                                "marker; the 0-RTT data is not sent again")
            exc.late_marker = True
            raise exc
        raise HelloLate("the server answered with the late marker %s"
                        % bytes(stream.buf[:8]).hex())
    if st == "departed":
        raise NotEncrypted("legacy", "the server answered with bytes that "
                           "are not a hello: %s" % bytes(stream.buf[:8]).hex())
    if st == "eof":
        raise NotEncrypted("legacy", "the server closed before answering")
    if st == "timeout":
        raise NotEncrypted("legacy", "the server sent no answer in time")
    del stream.buf[:8]
    opt_b = read_option(stream, deadline)

    try:
        tep_byte, tep, nonce_b = client_choose(teps, opt_b, offer and
                                               offer[:2])
    except NotEncrypted as e:
        # PROTOCOL.md 7.1 rule 4: B declined, so the end mark goes out at
        # once; a spoiled connection gets none.
        if early_frame and e.same_connection:
            sock.sendall(END_OF_EARLY_DATA)
        raise
    sent = 0
    if early_frame:
        # The mark counts in our offsets wherever it is written.
        sent = len(early_frame) + len(END_OF_EARLY_DATA)

    if nonce_b is not None:
        # Accepted: the mark goes in the same write as our first frame of
        # the resumed session (the data phase prepends it), not before.
        return client_resumed(ticket, tep_byte, offer[2], nonce_b, sent,
                              len(early) if early_frame else 0)
    if early_frame:
        sock.sendall(END_OF_EARLY_DATA)   # not accepted: at once

    if pipelined is not None and pipelined[0] == tep:
        _, init1, priv, n_a = pipelined
        sent += len(init1)
    else:
        if pipelined is not None:
            sent += len(pipelined[1])     # discarded by B, still counted
        init1, priv, n_a = make_init1(tep, aeads)
        sock.sendall(init1)
        sent += len(init1)

    init2 = read_init(stream, INIT2_MAGIC, deadline, "Init2")
    cipher, n_b, pub_b = parse_init2(init2, tep)
    if cipher not in aeads:
        raise ProtocolError("CipherNotOffered",
                            "Init2 chose AEAD 0x%04x, offered %s"
                            % (cipher, aeads))
    es = agree(tep, priv, pub_b)
    ss = fresh_secret(opt_a + opt_b, init1, init2, es, n_a)
    sid, mk0 = derive_from_secret(tep_byte, ss)
    return Keyed("A", tep, cipher, sid, mk0, sent, len(init2),
                 ss_next=next_secret(ss))


def seal_early(ticket, nonce, data):
    """The one 0-RTT frame: data under the key derived from mk_early as
    k_ab[0] / k_ba[0] are from mk[0], for our original role, at offset 0
    (PROTOCOL.md 7.1 rules 2 and 3)."""
    assert 0 < len(data) <= MAX_EARLY_DATA
    keyed = Keyed("A", ticket.tep, ticket.aead, b"",
                  early_master(ticket.ss, nonce), 0, 0,
                  orig_role=ticket.orig_role)
    return Sealer(keyed).seal(data)


def client_resumed(ticket, tep_byte, nonce_a, nonce_b, sent, early_bytes):
    """B resumed: key from ss[i] and sn = nonce_a | nonce_b, no Init
    messages (RFC 8548 3.5).  B's offsets start at 0; ours after the early
    frame and the end mark, if any."""
    sn = session_nonce(ticket.orig_role, nonce_a, nonce_b)
    sid, mk0 = derive_from_secret(tep_byte, ticket.ss, sn)
    keyed = Keyed("A", ticket.tep, ticket.aead, sid, mk0, sent, 0,
                  orig_role=ticket.orig_role,
                  ss_next=next_secret(ticket.ss), resumed=True)
    if early_bytes:
        keyed.zero_rtt = True
        keyed.early_bytes = early_bytes
        keyed.mark_pending = True
    return keyed


# ---------------------------------------------------------------------------
# Host B (the accepting side)
# ---------------------------------------------------------------------------

def server_handshake(sock, stream, teps, aeads, hello_deadline, deadline,
                     cache=None, early_data=True):
    """Host B's handshake.  cache: the ResumptionCache, or None when
    resumption is off; early_data: whether 0-RTT frames are accepted."""
    st = scan_marker(stream, KINDS_A, hello_deadline)
    if st == "departed":
        raise NotEncrypted("plain-client", "first bytes %s are not a hello"
                           % bytes(stream.buf[:8]).hex(),
                           same_connection=True)
    if st == "eof":
        raise NotEncrypted("plain-client", "the client closed after %d "
                           "bytes" % len(stream.buf), same_connection=True)
    if st == "timeout":
        exc = NotEncrypted("plain-client", "the client sent %d bytes before "
                           "the hello wait ended" % len(stream.buf),
                           same_connection=True)
        exc.late_hello_possible = True
        raise exc
    kind = stream.buf[5]
    del stream.buf[:8]
    opt_a = read_option(stream, deadline)

    chosen, decline, subs = server_choose(teps, opt_a)
    pipelined_tep = None
    if kind == KIND_P:
        for byte, glt, _ in subs:
            if not byte & 0x80:
                pipelined_tep = glt       # the last v = 0 suboption

    resumed = None
    offer = resumption_offer(subs)
    if offer is not None and cache is not None:
        entry = cache.take(offer[1])      # named: spent, whatever follows
        if entry is not None and entry.tep == offer[0] and decline is None \
                and (kind != KIND_E or early_data):
            resumed = entry

    if decline is not None:
        if kind == KIND_P:
            # Skip the pipelined Init1 whole before answering (3.3).
            read_init(stream, INIT1_MAGIC, deadline, "pipelined Init1")
        sock.sendall(encode_hello(KIND_B, VACUOUS_B))
        if kind == KIND_E:
            skip_early(stream, deadline)  # answered at once (7.1 rule 6)
        raise NotEncrypted("declined", decline, same_connection=True)

    if resumed is not None:
        return server_resumed(sock, stream, kind, resumed, offer, deadline)

    opt_b = encode_option_b(chosen)
    sock.sendall(encode_hello(KIND_B, opt_b))

    received = 0
    if kind == KIND_E:
        received += skip_early(stream, deadline)
    elif kind == KIND_P and pipelined_tep != chosen:
        skipped = read_init(stream, INIT1_MAGIC, deadline,
                            "pipelined Init1 (discarded)")
        received += len(skipped)
    init1 = read_init(stream, INIT1_MAGIC, deadline, "Init1")
    received += len(init1)
    ciphers, n_a, pub_a = parse_init1(init1, chosen)
    cipher = None
    for c in aeads:                        # our preference order
        if c in ciphers:
            cipher = c
            break
    if cipher is None:
        raise ProtocolError("NoAcceptableAead", "A offered %s" % ciphers)
    priv = new_private(chosen)
    es = agree(chosen, priv, pub_a)
    init2 = ref.build_init2(cipher, os.urandom(N_LEN),
                            ref.pub_field(chosen, priv))
    sock.sendall(init2)
    ss = fresh_secret(opt_a + opt_b, init1, init2, es, n_a)
    sid, mk0 = derive_from_secret(chosen, ss)
    return Keyed("B", chosen, cipher, sid, mk0, len(init2), received,
                 ss_next=next_secret(ss))


def server_resumed(sock, stream, kind, entry, offer, deadline):
    """Answer with our resumption suboption (the other half, our nonce) and
    key from ss[i] with sn = nonce_a | nonce_b: no Init messages, offsets
    from 0.  After hello 'E' the peer's 0-RTT frames come first, under
    mk_early; the data phase opens them (early_mk)."""
    tep, _, peer_nonce = offer
    nonce = os.urandom(RESUME_NONCE_LEN)
    suboption = encode_resumption(tep, entry.own_half(), nonce)
    sock.sendall(encode_hello(KIND_B, encode_option_b_resumed(suboption)))
    received = 0
    if kind == KIND_P:
        # Another implementation may pipeline an Init1 beside a
        # resumption offer: skipped, and counted like a discarded one.
        received += len(read_init(stream, INIT1_MAGIC, deadline,
                                  "pipelined Init1 (discarded)"))
    sn = session_nonce(entry.orig_role, nonce, peer_nonce)
    sid, mk0 = derive_from_secret(suboption[0], entry.ss, sn)
    keyed = Keyed("B", tep, entry.aead, sid, mk0, 0, received,
                  orig_role=entry.orig_role, ss_next=next_secret(entry.ss),
                  resumed=True)
    if kind == KIND_E:
        keyed.zero_rtt = True
        keyed.early_mk = early_master(entry.ss, peer_nonce)
    return keyed


# ---------------------------------------------------------------------------
# 0-RTT frames before the end mark (PROTOCOL.md 7.1)
# ---------------------------------------------------------------------------

def read_early_frame(stream, offset, deadline=None):
    """The next early frame at offset (counted from the first byte after
    the hello), or None at the end mark.  More than EARLY_DATA_LIMIT bytes
    of frames before the mark is an error."""
    try:
        header = stream.read_exact(3, deadline, "0-RTT data")
        if header == END_OF_EARLY_DATA:
            return None
        clen = int.from_bytes(header[1:3], "big")
        if clen < MIN_CLEN:
            raise ProtocolError("FrameTooShort", "clen %d among the 0-RTT "
                                "frames" % clen)
        if offset + 3 + clen > EARLY_DATA_LIMIT:
            raise ProtocolError("EarlyData", "more than %d bytes of 0-RTT "
                                "frames before the end mark"
                                % EARLY_DATA_LIMIT)
        return header, stream.read_exact(clen, deadline, "a 0-RTT frame")
    except HandshakeTimeout:
        raise ProtocolError("Timeout", "stalled handshake inside 0-RTT data")


def skip_early(stream, deadline):
    """Skip 0-RTT frames we do not accept, by their length and unread, up
    to the end mark.  Returns the bytes consumed, mark included (they
    count in the peer's offsets)."""
    offset = 0
    while True:
        frame = read_early_frame(stream, offset, deadline)
        if frame is None:
            return offset + len(END_OF_EARLY_DATA)
        offset += 3 + len(frame[1])


# ---------------------------------------------------------------------------
# Frames and generations (RFC 8548 sections 3.6 to 3.8, 4.2)
# ---------------------------------------------------------------------------

def _aead_object(aead, key):
    if aead in (AEAD_AES128, AEAD_AES256):
        return AESGCM(key)
    return ChaCha20Poly1305(key)


class KeyChain:
    """mk[j] and the traffic key of one direction; old keys are dropped."""

    def __init__(self, mk0, const, aead):
        self.mk = mk0
        self.const = const
        self.aead = aead
        self.gen = 0
        self._derive()

    def _derive(self):
        klen = AEAD_KEY_LEN[self.aead]
        tk = ref.cprf(self.mk, bytes([self.const]), klen + AE_NONCE_LEN)
        self.cipher = _aead_object(self.aead, tk[:klen])
        self.nr = tk[klen:]

    def advance(self):
        self.mk = ref.cprf(self.mk, bytes([CONST_REKEY]), K_LEN)
        self.gen += 1
        self._derive()

    def nonce(self, offset):
        fid = bytes(AE_NONCE_LEN - 8) + (offset % MOD64).to_bytes(8, "big")
        return bytes(a ^ b for a, b in zip(fid, self.nr))


class Sealer:
    """Outgoing frames.  Not thread safe: the DataPhase lock guards it."""

    def __init__(self, keyed, rekey_after=0):
        self.keys = KeyChain(keyed.mk0, keyed.send_const, keyed.aead)
        self.offset = keyed.send_off
        self.remote_gen = 0               # updated by the receive side
        self.rekey_requested = False
        self.rekey_after = rekey_after
        self.frames_sent = 0
        self.frames_under_key = 0
        self.bytes_under_key = 0
        self.fin_sent = False

    @property
    def local_gen(self):
        return self.keys.gen

    def _seal(self, data, fin, rekey):
        if self.fin_sent:
            raise ProtocolError("SendAfterFin")
        assert len(data) <= MAX_DATA
        if rekey:
            self.keys.advance()
            self.frames_under_key = 0
            self.bytes_under_key = 0
        control = CONTROL_REKEY if rekey else 0
        pt = bytes([FLAG_FINP if fin else 0]) + data
        clen = len(pt) + TAG_LEN
        ad = bytes([control]) + clen.to_bytes(2, "big")
        ct = self.keys.cipher.encrypt(self.keys.nonce(self.offset), pt, ad)
        frame = ad + ct
        self.offset = (self.offset + len(frame)) % MOD64
        self.frames_sent += 1
        self.frames_under_key += 1
        self.bytes_under_key += len(frame)
        if fin:
            self.fin_sent = True
        if self.rekey_after and self.frames_sent % self.rekey_after == 0:
            self.rekey_requested = True
        if (self.frames_under_key >= AUTO_REKEY_FRAMES
                or self.bytes_under_key >= AUTO_REKEY_BYTES):
            self.rekey_requested = True
        return frame

    def seal(self, data, fin=False):
        rekey = False
        if self.rekey_requested:
            # RFC 8548 3.8: never initiate with an empty frame while a
            # rekey is outstanding (the peer's generation below ours).
            if data or self.remote_gen >= self.local_gen:
                rekey = True
                self.rekey_requested = False
        return self._seal(data, fin, rekey)

    def seal_answers(self, data=b""):
        """Frames owed to the peer's rekeys: one rekey = 1 frame per
        generation behind, the last carrying data.  None after FINp.
        Returns (frames, data_consumed)."""
        frames = []
        if self.fin_sent:
            return frames, False
        owed = self.remote_gen - self.local_gen
        for i in range(owed):
            frames.append(self._seal(data if i == owed - 1 else b"",
                                     False, True))
        return frames, owed > 0


class Opener:
    """Incoming frames."""

    def __init__(self, keyed):
        self.keys = KeyChain(keyed.mk0, keyed.recv_const, keyed.aead)
        self.offset = keyed.recv_off

    def open(self, header, ct):
        control = header[0]
        rekey = bool(control & CONTROL_REKEY)     # cres ignored
        if rekey:
            self.keys.advance()
        try:
            pt = self.keys.cipher.decrypt(self.keys.nonce(self.offset), ct,
                                          header)
        except InvalidTag:
            raise ProtocolError("AuthenticationFailed",
                                "frame at offset %d (generation %d) does "
                                "not authenticate" % (self.offset,
                                                      self.keys.gen))
        self.offset = (self.offset + 3 + len(ct)) % MOD64
        flags = pt[0]                             # fres ignored
        urgent = None
        if flags & FLAG_URGP:
            if len(pt) < 3:
                raise ProtocolError("MalformedFrame",
                                    "URGp set without an urgent field")
            urgent = int.from_bytes(pt[1:3], "big")
            data = pt[3:]
        else:
            data = pt[1:]
        return rekey, bool(flags & FLAG_FINP), urgent, data


# ---------------------------------------------------------------------------
# The data phase: a sender thread drains a queue; the receive loop opens
# frames and answers rekeys at once (the answers bypass the queue bound).
# ---------------------------------------------------------------------------

class DataPhase:
    def __init__(self, sock, stream, keyed, rekey_after=0, echo=False,
                 queue_limit=4 << 20):
        self.sock = sock
        self.stream = stream
        self.sealer = Sealer(keyed, rekey_after)
        self.opener = Opener(keyed)
        self.early = None
        if keyed.early_mk is not None:
            # The peer's 0-RTT frames: from offset 0, under mk_early, in
            # the peer's key direction (PROTOCOL.md 7.1).
            self.early = Opener(Keyed(keyed.role, keyed.tep, keyed.aead, b"",
                                      keyed.early_mk, 0, 0,
                                      orig_role=keyed.orig_role))
        # PROTOCOL.md 7.1 rule 4: after accepted 0-RTT data our end mark
        # leaves in the same write as our first frame, whichever it is.
        self.prefix = END_OF_EARLY_DATA if keyed.mark_pending else b""
        self.echo = echo
        self.queue_limit = queue_limit
        self.cond = threading.Condition()
        self.queue = collections.deque()
        self.queued = 0
        self.error = None
        self.sender_done = threading.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames_in = 0
        self.rekeys_in = 0
        self.sender = threading.Thread(target=self._sender, daemon=True)

    def start(self):
        self.sender.start()

    def fail(self, exc):
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()

    def _sender(self):
        try:
            while True:
                with self.cond:
                    while not self.queue and self.error is None:
                        self.cond.wait()
                    if self.error is not None:
                        return
                    item = self.queue.popleft()
                    if item is not None:
                        self.queued -= len(item)
                    self.cond.notify_all()
                if item is None:
                    self.sock.shutdown(socket.SHUT_WR)   # TCP FIN
                    return
                self.sock.sendall(item)
        except OSError as e:
            self.fail(ProtocolError("SendFailed", str(e)))
        finally:
            self.sender_done.set()

    def _enqueue(self, frames):
        if self.prefix and frames:
            frames = [self.prefix + frames[0]] + list(frames[1:])
            self.prefix = b""
        for f in frames:
            self.queue.append(f)
            self.queued += len(f)
        self.cond.notify_all()

    def send(self, data, fin=False):
        """Seal data (split into frames of at most MAX_DATA bytes) and, with
        fin, the FINp frame; then the TCP FIN.  Blocks while the queue is
        over its limit."""
        with self.cond:
            while self.queued > self.queue_limit and self.error is None:
                self.cond.wait()
            if self.error is not None:
                raise self.error
            frames = []
            for i in range(0, len(data), MAX_DATA):
                frames.append(self.sealer.seal(data[i:i + MAX_DATA]))
            self.bytes_out += len(data)
            if fin:
                frames.append(self.sealer.seal(b"", fin=True))
            self._enqueue(frames)
            if fin:
                self.queue.append(None)
                self.cond.notify_all()

    def _read_frame(self):
        s = self.stream
        while len(s.buf) < 3:
            if not s.fill():
                if s.buf:
                    raise ProtocolError("Truncated", "end of stream inside "
                                        "a frame header")
                raise ProtocolError("Truncated", "TCP end of stream "
                                    "without a FINp frame")
        clen = int.from_bytes(s.buf[1:3], "big")
        if clen < MIN_CLEN:
            raise ProtocolError("FrameTooShort", "clen %d" % clen)
        while len(s.buf) < 3 + clen:
            if not s.fill():
                raise ProtocolError("Truncated", "end of stream inside a "
                                    "frame (%d of %d bytes)"
                                    % (len(s.buf), 3 + clen))
        header = bytes(s.buf[:3])
        ct = bytes(s.buf[3:3 + clen])
        del s.buf[:3 + clen]
        return header, ct

    def _handle_data(self, data, deliver):
        if data:
            if self.echo:
                self.send(data)
            elif deliver is not None:
                deliver(data)

    def receive_early(self, deliver=None):
        """The peer's 0-RTT frames up to its end mark, each handed on at
        once; then the resumed session's frames start after the mark."""
        offset = 0
        while True:
            frame = read_early_frame(self.stream, offset)
            if frame is None:
                break
            header, ct = frame
            if header[0] & CONTROL_REKEY:
                raise ProtocolError("EarlyData", "rekey bit on a 0-RTT "
                                    "frame")
            _rekey, fin, _urgent, data = self.early.open(header, ct)
            if fin:
                raise ProtocolError("EarlyData", "FINp on a 0-RTT frame")
            offset = self.early.offset
            self.frames_in += 1
            self.bytes_in += len(data)
            self._handle_data(data, deliver)
        self.opener.offset = (offset + len(END_OF_EARLY_DATA)) % MOD64
        self.early = None

    def receive_until_fin(self, deliver=None):
        """Open frames until the peer's FINp (0-RTT frames first, if any).
        Rekeys are answered at once; data goes to deliver() or, echoing,
        back to the peer."""
        if self.early is not None:
            self.receive_early(deliver)
        while True:
            header, ct = self._read_frame()
            rekey, fin, _urgent, data = self.opener.open(header, ct)
            self.frames_in += 1
            self.bytes_in += len(data)
            consumed = False
            with self.cond:
                if self.error is not None:
                    raise self.error
                if rekey:
                    self.rekeys_in += 1
                    self.sealer.remote_gen += 1
                    frames, consumed = self.sealer.seal_answers(
                        data if self.echo else b"")
                    if consumed and self.echo:
                        self.bytes_out += len(data)
                    self._enqueue(frames)
            if data:
                if self.echo:
                    if not consumed:
                        self.send(data)
                elif deliver is not None:
                    deliver(data)
            if fin:
                return

    def check_nothing_after_fin(self, timeout):
        """After FINp: nothing may follow but the TCP FIN.  Waits for it at
        most timeout seconds (None: the socket's timeout)."""
        s = self.stream
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            if s.buf:
                raise ProtocolError("DataAfterFin", "%d bytes after the "
                                    "FINp frame" % len(s.buf))
            try:
                if not s.fill():
                    return True
            except socket.timeout:
                return False


# ---------------------------------------------------------------------------
# Plain fallbacks
# ---------------------------------------------------------------------------

def stdin_chunks(size):
    """stdin as it comes."""
    while True:
        chunk = os.read(0, size)
        if not chunk:
            return
        yield chunk


def memory_chunks(data, size, start=0):
    """Data read before the first connection, from start on."""
    for i in range(start, len(data), size):
        yield data[i:i + size]


def pump_to_socket(sock, chunks, errors):
    try:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        errors.append(e)


def plain_client(sock, leftover, data=None):
    """Plain TCP: stdin (or data, when read up front) to the socket, the
    socket to stdout until EOF."""
    out = sys.stdout.buffer
    errors = []
    chunks = stdin_chunks(65536) if data is None \
        else memory_chunks(data, 65536)
    t = threading.Thread(target=pump_to_socket, args=(sock, chunks, errors),
                         daemon=True)
    t.start()
    if leftover:
        out.write(leftover)
        out.flush()
    while True:
        data = sock.recv(65536)
        if not data:
            break
        out.write(data)
        out.flush()
    t.join()
    if errors:
        raise errors[0]
    sock.close()


def plain_echo(sock, stream, late_hello_possible, sent_before=False):
    """Echo a plain connection.  sent_before: we have already sent bytes
    of our own on it (a banner)."""
    if late_hello_possible:
        # PROTOCOL.md 3.4 rule 1: a hello that comes after the wait is
        # never data.  Hold the bytes until they tell.
        while marker_status(stream.buf, KINDS_A) == "prefix":
            if not stream.fill():
                break
        if marker_status(stream.buf, KINDS_A) == "hello":
            if sent_before:
                # Our bytes were read as a plain server's: a marker after
                # them would be data.  Only the reset.
                exc = ProtocolError("LateHello", "the client's hello came "
                                    "after the hello wait and our banner")
                exc.late_marker = False
                raise exc
            # Nothing sent yet: the late marker, alone, then the reset
            # (the caller aborts).  It must be acknowledged first, or the
            # reset could discard it from our send queue.
            sock.sendall(LATE_MARKER)
            wait_acknowledged(sock, LATE_MARKER_LINGER)
            exc = ProtocolError("LateHello", "the client's hello came after "
                                "the hello wait; late marker sent")
            exc.late_marker = True
            raise exc
    pending = stream.take_all()
    if pending:
        sock.sendall(pending)
    while True:
        data = sock.recv(65536)
        if not data:
            break
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.close()


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------

def fatal(kind, detail, code=EXIT_ERROR, sock=None, extra=None):
    if sock is not None:
        abort_socket(sock)
    line = {"error": kind, "detail": detail}
    line.update(extra or {})
    emit(line)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


def run_client(args):
    """One connection (stdin streamed), or --connections N made one after
    another with stdin read up front, each sending it all; from the second
    on, resumption is offered with the ticket the previous one left."""
    if args.connections == 1:
        return client_connection(args, None, None)[0]
    data = b"".join(stdin_chunks(65536))
    ticket = None
    for _ in range(args.connections):
        code, ticket = client_connection(args, data, ticket)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def client_connection(args, data, ticket):
    """One connection asked for: data is the whole input, or None to
    stream stdin.  The server's late marker makes it connect again with a
    new hello, at most LATE_HELLO_RETRIES times (PROTOCOL.md 3.4 rule 1).
    Returns (exit code, the ticket for the next connection or None)."""
    if args.no_resume:
        ticket = None
    early = b""
    if ticket is not None and data and not args.no_early_data:
        early = data[:MAX_EARLY_DATA]
    late = {"late_retries": 0, "late_markers": 0}
    while True:
        deadline = time.monotonic() + args.timeout
        try:
            sock = socket.create_connection((args.host, args.port),
                                            timeout=args.timeout)
        except OSError as e:
            fatal("ConnectFailed", str(e), extra=late)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = Stream(sock)
        args.hello_attempts += 1
        delay = args.hello_delay \
            if args.hello_attempts in args.hello_delay_on else 0.0
        try:
            try:
                keyed = client_handshake(sock, stream, args.tep, args.aead,
                                         not args.no_pipeline, deadline,
                                         ticket, early, delay)
            except HelloLate as e:
                abort_socket(sock)
                late["late_markers"] += 1
                resend = late["late_markers"] <= LATE_HELLO_RETRIES
                if resend:
                    late["late_retries"] += 1
                line = {"hello_late": True, "resend": resend,
                        "detail": str(e)}
                line.update(late)
                emit(line)
                if resend:
                    # Nothing of ours was delivered: a new connection, a
                    # new hello (the same resumption offer, if any: the
                    # server never read it).
                    continue
                # A third marker is weak evidence, like a reset before any
                # answer (PROTOCOL.md 3.4 rule 3).
                raise NotEncrypted("hello-late", "the server answered %d "
                                   "hellos with the late marker"
                                   % late["late_markers"])
        except ProtocolError as e:
            if getattr(e, "late_marker", False):
                late["late_markers"] += 1
                line = {"hello_late": True, "resend": False,
                        "detail": e.detail}
                line.update(late)
                emit(line)
            fatal(e.kind, e.detail, sock=sock, extra=late)
        except NotEncrypted as e:
            line = {"encrypted": False, "reason": e.reason,
                    "detail": e.detail}
            line.update(late)
            emit(line)
            if not args.allow_plain:
                if e.same_connection:
                    sock.close()
                else:
                    abort_socket(sock)
                return EXIT_NOT_ENCRYPTED, None
            try:
                if e.same_connection:
                    sock.settimeout(args.timeout or None)
                    plain_client(sock, stream.take_all(), data)
                else:
                    abort_socket(sock)
                    sock = socket.create_connection(
                        (args.host, args.port), timeout=args.timeout or None)
                    plain_client(sock, b"", data)
            except OSError as e2:
                fatal("PlainFailed", str(e2), sock=sock, extra=late)
            return EXIT_OK, None
        except OSError as e:
            fatal("HandshakeFailed", str(e), sock=sock, extra=late)
        break

    report = keyed.report()
    report.update(late)
    emit(report)
    next_ticket = None if args.no_resume else Ticket.after(keyed)
    sock.settimeout(args.timeout or None)
    dp = DataPhase(sock, stream, keyed, rekey_after=args.rekey_after)
    dp.start()
    if data is None:
        chunks = stdin_chunks(MAX_DATA)
    else:
        # What B took as 0-RTT data is not sent again (PROTOCOL.md 7.1).
        chunks = memory_chunks(data, MAX_DATA, keyed.early_bytes)
    out = sys.stdout.buffer
    peer_fin = threading.Event()
    reader_done = threading.Event()
    stdin_done = threading.Event()

    def deliver(data):
        out.write(data)
        out.flush()

    def reader():
        try:
            dp.receive_until_fin(deliver)
            peer_fin.set()
            dp.check_nothing_after_fin(None)
        except ProtocolError as e:
            dp.fail(e)
        except socket.timeout:
            if not peer_fin.is_set():
                dp.fail(ProtocolError("Timeout", "no data from the server "
                                      "for %s s" % args.timeout))
        except OSError as e:
            dp.fail(ProtocolError("ReceiveFailed", str(e)))
        finally:
            reader_done.set()
            with dp.cond:
                dp.cond.notify_all()

    def writer():
        try:
            for chunk in chunks:
                dp.send(chunk)
            dp.send(b"", fin=True)
        except ProtocolError as e:
            dp.fail(e)
        except OSError as e:
            dp.fail(ProtocolError("StdinFailed", str(e)))
        finally:
            stdin_done.set()
            with dp.cond:
                dp.cond.notify_all()

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()

    with dp.cond:
        while dp.error is None and not (
                peer_fin.is_set() and stdin_done.is_set()
                and dp.sender_done.is_set()):
            if reader_done.is_set() and not peer_fin.is_set():
                break
            dp.cond.wait(0.05)
        err = dp.error
    if err is None and not peer_fin.is_set():
        err = ProtocolError("Truncated", "the receive side ended without "
                            "a FINp frame")
    if err is not None:
        kind = getattr(err, "kind", type(err).__name__)
        fatal(kind, getattr(err, "detail", str(err)), sock=sock)
    # Both FINp frames are out; give the peer's TCP FIN a moment to arrive
    # so that bytes after its FINp would be noticed.
    reader_done.wait(2.0)
    with dp.cond:
        err = dp.error
    if err is not None:
        fatal(err.kind, err.detail, sock=sock)
    sock.close()
    return EXIT_OK, next_ticket


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------

def serve_connection(conn, peer, args, cache=None):
    """Returns an exit code for this connection.  cache: the process's
    ResumptionCache (None: resumption off)."""
    accepted = time.monotonic()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = Stream(conn)
    dp = None
    try:
        try:
            keyed = server_handshake(conn, stream, args.tep, args.aead,
                                     accepted + args.hello_wait,
                                     accepted + args.hello_wait
                                     + args.timeout, cache,
                                     not args.no_early_data)
        except NotEncrypted as e:
            emit({"encrypted": False, "reason": e.reason, "detail": e.detail,
                  "peer": "%s:%d" % peer[:2]})
            conn.settimeout(args.timeout or None)
            if args.banner:
                conn.sendall(args.banner)
            plain_echo(conn, stream, getattr(e, "late_hello_possible", False),
                       sent_before=bool(args.banner))
            emit({"closed": True, "ok": True, "encrypted": False,
                  "peer": "%s:%d" % peer[:2]})
            return EXIT_OK if args.allow_plain else EXIT_NOT_ENCRYPTED
        if cache is not None:
            # Once keyed: ss[i+1] for the next resumption (RFC 8548 3.5).
            cache.put(Ticket.after(keyed))
        report = keyed.report()
        report["peer"] = "%s:%d" % peer[:2]
        emit(report)
        conn.settimeout(args.timeout or None)
        dp = DataPhase(conn, stream, keyed, rekey_after=args.rekey_after,
                       echo=True, queue_limit=16 << 20)
        dp.start()
        dp.receive_until_fin()
        dp.send(b"", fin=True)
        dp.check_nothing_after_fin(None)
        dp.sender_done.wait()
        with dp.cond:
            if dp.error is not None:
                raise dp.error
        conn.close()
        emit({"closed": True, "ok": True, "session_id":
              keyed.session_id.hex(), "bytes_in": dp.bytes_in,
              "bytes_out": dp.bytes_out, "frames_in": dp.frames_in,
              "rekeys_in": dp.rekeys_in, "rekeys_out":
              dp.sealer.local_gen})
        return EXIT_OK
    except ProtocolError as e:
        if dp is not None:
            dp.fail(e)
        abort_socket(conn)
        line = {"error": e.kind, "detail": e.detail,
                "peer": "%s:%d" % peer[:2]}
        if hasattr(e, "late_marker"):
            line["late_marker"] = e.late_marker
        emit(line)
        return EXIT_ERROR
    except socket.timeout:
        if dp is not None:
            dp.fail(ProtocolError("Timeout"))
        abort_socket(conn)
        emit({"error": "Timeout", "detail": "no progress for %s s"
              % args.timeout, "peer": "%s:%d" % peer[:2]})
        return EXIT_ERROR
    except OSError as e:
        if dp is not None:
            dp.fail(ProtocolError("IOError", str(e)))
        abort_socket(conn)
        emit({"error": "IOError", "detail": str(e),
              "peer": "%s:%d" % peer[:2]})
        return EXIT_ERROR


def run_server(args):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        lsock.bind((args.bind, args.port))
    except OSError as e:
        emit({"error": "BindFailed", "detail": str(e)})
        return EXIT_ERROR
    lsock.listen(64)
    port = lsock.getsockname()[1]
    emit({"listening": port})
    cache = None if args.no_resume else ResumptionCache()
    if args.once:
        conn, peer = lsock.accept()
        lsock.close()
        return serve_connection(conn, peer, args, cache)
    while True:
        conn, peer = lsock.accept()
        threading.Thread(target=serve_connection,
                         args=(conn, peer, args, cache),
                         daemon=True).start()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def comma_ints(text, base, what):
    """The integers of a comma-separated list (empty items skipped)."""
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            yield int(part, base)
        except ValueError:
            raise argparse.ArgumentTypeError("bad %s %r" % (what, part))


def id_list(supported, what):
    def parse(text):
        out = []
        for v in comma_ints(text, 0, "%s id" % what):
            if v not in supported:
                raise argparse.ArgumentTypeError(
                    "unsupported %s 0x%02x (supported: %s)"
                    % (what, v, ", ".join("0x%02x" % s for s in supported)))
            if v in out:
                raise argparse.ArgumentTypeError("%s 0x%02x named twice"
                                                 % (what, v))
            out.append(v)
        if not out:
            raise argparse.ArgumentTypeError("empty %s list" % what)
        return out
    return parse


def attempt_list(text):
    out = []
    for v in comma_ints(text, 10, "attempt number"):
        if v < 1:
            raise argparse.ArgumentTypeError("attempts count from 1")
        out.append(v)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Independent tcpcrypt in-band peer (RFC 8547/8548 over "
                    "docs/PROTOCOL.md).")
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp):
        sp.add_argument("--tep", type=id_list(sorted(TEP_NAMES), "TEP"),
                        default=list(DEFAULT_TEPS),
                        help="TEP ids, least to most preferred "
                             "(default 0x21,0x23)")
        sp.add_argument("--aead", type=id_list(sorted(AEAD_NAMES), "AEAD"),
                        default=list(DEFAULT_AEADS),
                        help="AEAD ids: A's Init1 list in order; B's "
                             "preference, most preferred first "
                             "(default 1,2,16)")
        sp.add_argument("--timeout", type=float, default=30.0,
                        help="handshake deadline and idle timeout in "
                             "seconds (0: no idle timeout; default 30)")
        sp.add_argument("--rekey-after", type=int, default=0, metavar="N",
                        help="initiate a rekey (rekey bit on the next "
                             "frame) after every N frames sent")
        sp.add_argument("--allow-plain", action="store_true",
                        help="carry on in plain TCP when ENO fails, and "
                             "count it a success")
        sp.add_argument("--no-resume", action="store_true",
                        help="never offer (client) or honour (server) "
                             "session resumption; cache nothing")
        sp.add_argument("--no-early-data", action="store_true",
                        help="client: offer resumption without 0-RTT data; "
                             "server: refuse 0-RTT data (a resumption "
                             "offered with it becomes a fresh exchange)")

    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("port", type=int)
    common(c)
    c.add_argument("--no-pipeline", action="store_true",
                   help="hello 'A', Init1 only after B's answer")
    c.add_argument("--connections", type=int, default=1, metavar="N",
                   help="make N connections one after another, each "
                        "sending all of stdin (read up front when N > 1); "
                        "from the second on, offer resumption (default 1)")
    c.add_argument("--hello-delay", type=float, default=0.0, metavar="S",
                   help="stay silent S seconds after connecting before "
                        "sending the hello, on the attempts named by "
                        "--hello-delay-on (a late hello, for tests)")
    c.add_argument("--hello-delay-on", type=attempt_list, default=[1],
                   metavar="N,M,...",
                   help="which TCP connections carrying a hello get "
                        "--hello-delay, counted from 1 over the whole run, "
                        "new hellos after a late marker included "
                        "(default 1)")

    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bind", default="127.0.0.1")
    common(s)
    s.add_argument("--once", action="store_true",
                   help="serve one connection, exit 0 on success")
    s.add_argument("--hello-wait", type=float, default=3.0,
                   help="seconds a client may take to send its 8-byte "
                        "marker before it is taken for plain (default 3)")
    s.add_argument("--banner", type=lambda t: t.encode("utf-8"), default=b"",
                   metavar="TEXT",
                   help="send TEXT first on every connection that ends up "
                        "unencrypted, before echoing (a server that speaks "
                        "first); a late hello after it is only reset")

    args = p.parse_args(argv)
    if args.timeout <= 0:
        args.timeout = 3600.0 * 24
    if args.rekey_after < 0:
        p.error("--rekey-after must be >= 0")
    if args.mode == "client" and args.connections < 1:
        p.error("--connections must be >= 1")
    if args.mode == "client":
        if args.hello_delay < 0:
            p.error("--hello-delay must be >= 0")
        args.hello_attempts = 0        # TCP connections that carried a hello
    try:
        if args.mode == "client":
            return run_client(args)
        return run_server(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
