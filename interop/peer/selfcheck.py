#!/usr/bin/env python3
"""Self-check of tcpcrypt_peer.py: no Rust involved.

1. kat:       the peer's own negotiation, session derivation, Sealer and
              Opener reproduce / read interop/kat/vectors.json.
2. matrix:    client against server on loopback for every TEP x AEAD, with
              and without pipelining, with and without --rekey-after 1,
              a few hundred KB each.
3. variants:  B picks another TEP (pipelined Init1 discarded), B's AEAD
              preference, declines, plain clients, legacy servers, late
              hellos, no common AEAD.
4. tamper:    a man-in-the-middle proxy flips one byte (option, Init,
              frame), truncates, or appends after FINp; the receiver must
              fail.
5. resume:    --connections N against one server: resumption, 0-RTT data,
              servers that refuse either or were restarted, replays, and
              the limits on 0-RTT frames.
6. late:      hellos that come after the server's hello wait: the late
              marker and the reset, the client's new hellos (at most two),
              banners, and 0-RTT data that is never sent twice.

    python3 selfcheck.py            # everything
    python3 selfcheck.py kat matrix # some parts
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "tcpcrypt_peer.py")
sys.dont_write_bytecode = True  # write nothing outside this folder
sys.path.insert(0, HERE)
import tcpcrypt_peer as tp  # noqa: E402

PY = sys.executable
FAILS = []
COUNT = [0]


def check(cond, what):
    COUNT[0] += 1
    if cond:
        print("  ok   %s" % what)
    else:
        print("  FAIL %s" % what)
        FAILS.append(what)


def json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------------------
# 1. Known answers
# ---------------------------------------------------------------------------

def kat():
    print("kat: vectors.json through the peer's own code")
    path = os.path.join(HERE, "..", "kat", "vectors.json")
    vecs = json.load(open(path))
    for v in vecs:
        try:
            ok = kat_one(v)
        except Exception as e:  # noqa: BLE001
            ok = False
            print("       %s: %r" % (v["name"], e))
        check(ok, "kat %s" % v["name"])


def kat_one(v):
    if True:
        h = bytes.fromhex
        opt_a, opt_b = h(v["eno_option_a"]), h(v["eno_option_b"])
        _, subs_a = tp.parse_option(opt_a)
        a_teps = [glt for (_, glt, _) in subs_a]
        tep_byte, tep, nonce_b = tp.client_choose(a_teps, opt_b)
        ok = tep == v["tep"] and nonce_b is None
        # The server side of the choice, when B's option is one we would
        # have produced (a single TEP).
        _, subs_b = tp.parse_option(opt_b)
        if len(subs_b) == 1:
            chosen, decline, _ = tp.server_choose([v["tep"]], opt_a)
            ok = ok and chosen == v["tep"] and decline is None
        sid, mk0 = tp.derive_session(tep_byte, opt_a + opt_b, h(v["init1"]),
                                     h(v["init2"]), h(v["es"]), h(v["n_a"]))
        ok = ok and sid.hex() == v["session_id_0"] and mk0.hex() == v["mk0"]
        # Parse the Init messages as the peer does.
        ciphers, n_a, pub_a = tp.parse_init1(h(v["init1"]), tep)
        cipher, n_b, pub_b = tp.parse_init2(h(v["init2"]), tep)
        ok = ok and ciphers == v["sym_cipher_list"] and \
            cipher == v["sym_cipher"] and n_a.hex() == v["n_a"] and \
            pub_a.hex() == v["pub_a_field"] and pub_b.hex() == v["pub_b_field"]
        for direction, sender_role in (("a_to_b", "A"), ("b_to_a", "B")):
            frames = v["frames"][direction]
            if not frames:
                continue
            first = frames[0]["offset"]
            recv_role = "B" if sender_role == "A" else "A"
            opener = tp.Opener(tp.Keyed(recv_role, tep, cipher, sid, mk0,
                                        0, first))
            sealer = tp.Sealer(tp.Keyed(sender_role, tep, cipher, sid, mk0,
                                        first, 0))
            for f in frames:
                raw = h(f["frame"])
                ok = ok and opener.offset == f["offset"]
                rekey, fin, urgent, data = opener.open(raw[:3], raw[3:])
                ok = ok and rekey == bool(f["control"] & 1) and \
                    fin == bool(f["flags"] & 1) and urgent == f["urgent"] and \
                    data.hex() == f["plaintext"]
                if f["control"] in (0, 1) and f["flags"] in (0, 1):
                    ok = ok and sealer.offset == f["offset"]
                    mine = sealer._seal(data, bool(f["flags"] & 1),
                                        bool(f["control"] & 1))
                    ok = ok and mine == raw
                else:
                    sealer = None  # reserved bits / URGp: we never send them
                    break
            # A flipped byte in every frame must fail.
            opener = tp.Opener(tp.Keyed(recv_role, tep, cipher, sid, mk0,
                                        0, first))
            raw = bytearray(h(frames[0]["frame"]))
            raw[-1] ^= 0x01
            try:
                opener.open(bytes(raw[:3]), bytes(raw[3:]))
                ok = False
            except tp.ProtocolError as e:
                ok = ok and e.kind == "AuthenticationFailed"
    if v.get("resumption") is not None:
        ok = ok and kat_resumption(v, tep, cipher)
    return ok


def kat_resumption(v, tep, cipher):
    """The connection resumed with ss[1] (and its 0-RTT frames, if any)
    through the peer's own resumption code."""
    h = bytes.fromhex
    r = v["resumption"]
    ss0, ss1 = h(v["ss0"]), h(v["ss1"])
    nonce_a, nonce_b = h(r["nonce_a"]), h(r["nonce_b"])
    ok = tp.next_secret(ss0) == ss1 and tp.next_secret(ss1) == h(v["ss2"])
    ok = ok and tp.resume_id(ss1).hex() == r["resume_1"]
    ta = tp.Ticket(ss1, tep, cipher, "A")      # what the client keeps
    tb = tp.Ticket(ss1, tep, cipher, "B")      # what the server caches
    sub_a, sub_b = h(r["suboption_from_orig_A"]), h(r["suboption_from_orig_B"])
    ok = ok and tp.encode_resumption(tep, ta.own_half(), nonce_a) == sub_a
    ok = ok and tp.encode_resumption(tep, tb.own_half(), nonce_b) == sub_b
    ok = ok and ta.peer_half() == tb.own_half() and \
        tb.peer_half() == ta.own_half()
    # Both sides reach the same sn, session ID and mk[0].
    sn_a = tp.session_nonce("A", nonce_a, nonce_b)
    sn_b = tp.session_nonce("B", nonce_b, nonce_a)
    ok = ok and sn_a == sn_b == h(r["sn_1"])
    sid, mk0 = tp.derive_from_secret(tep | 0x80, ss1, sn_a)
    ok = ok and sid.hex() == r["session_id_1"] and \
        mk0.hex() == r["mk0_session1"]
    # The server's side of the offer, from A's option.
    opt_a = tp.encode_option_a([], sub_a)
    _, subs = tp.parse_option(opt_a)
    offer = tp.resumption_offer(subs)
    ok = ok and offer == (tep, ta.own_half(), nonce_a)
    # A reads B's answer as a resumption with B's nonce.
    opt_b = tp.encode_option_b_resumed(sub_b)
    byte, glt, nb = tp.client_choose([tep], opt_b, (tep, ta.peer_half()))
    ok = ok and byte == tep | 0x80 and glt == tep and nb == nonce_b
    early = r.get("early")
    a_first = 0
    if early is not None:
        mk_early = tp.early_master(ss1, nonce_a)
        ok = ok and mk_early.hex() == early["mk_early"]
        opener = tp.Opener(tp.Keyed("B", tep, cipher, b"", mk_early, 0, 0,
                                    orig_role="B"))
        for f in early["frames"]:
            raw = h(f["frame"])
            ok = ok and opener.offset == f["offset"]
            rekey, fin, _, data = opener.open(raw[:3], raw[3:])
            ok = ok and not rekey and not fin and data.hex() == f["plaintext"]
        ok = ok and opener.offset == early["end_mark_offset"] and \
            early["end_mark"] == tp.END_OF_EARLY_DATA.hex()
        if len(early["frames"]) == 1:
            f = early["frames"][0]
            ok = ok and tp.seal_early(ta, nonce_a, h(f["plaintext"])) == \
                h(f["frame"])
        a_first = early["end_mark_offset"] + 3
    for direction, recv_role, first in (("a_to_b", "B", a_first),
                                        ("b_to_a", "A", 0)):
        frames = r["frames"][direction]
        if not frames:
            continue
        ok = ok and frames[0]["offset"] == first
        opener = tp.Opener(tp.Keyed(recv_role, tep, cipher, sid, mk0, 0,
                                    first, orig_role=recv_role))
        for f in frames:
            raw = h(f["frame"])
            ok = ok and opener.offset == f["offset"]
            _, _, _, data = opener.open(raw[:3], raw[3:])
            ok = ok and data.hex() == f["plaintext"]
    return ok


# ---------------------------------------------------------------------------
# Running the peer
# ---------------------------------------------------------------------------

class Server:
    def __init__(self, *args):
        self.p = subprocess.Popen([PY, PEER, "server", "--port", "0"]
                                  + list(args), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        line = self.p.stderr.readline().decode()
        self.port = json.loads(line)["listening"]

    def stop(self):
        """A server without --once: end it and collect its output."""
        self.p.terminate()
        out, err = self.p.communicate(timeout=30)
        return self.p.returncode, out, err.decode()

    def finish(self, timeout=60):
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, err = self.p.communicate()
            return -9, out, err.decode()
        return self.p.returncode, out, err.decode()


def run_client(port, data, *args, timeout=60):
    p = subprocess.run([PY, PEER, "client", "127.0.0.1", str(port)]
                       + list(args), input=data, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode()


def pair(data, server_args=(), client_args=(), port_override=None):
    srv = Server("--once", *server_args)
    port = port_override(srv.port) if port_override else srv.port
    crc, cout, cerr = run_client(port, data, *client_args)
    src, sout, serr = srv.finish()
    return crc, cout, json_lines(cerr), src, json_lines(serr)


def keyed_line(lines):
    for l in lines:
        if l.get("encrypted") is True:
            return l
    return None


def closed_line(lines):
    for l in lines:
        if l.get("closed"):
            return l
    return None


# ---------------------------------------------------------------------------
# 2. Matrix
# ---------------------------------------------------------------------------

def matrix():
    print("matrix: every TEP x AEAD, pipelined or not, rekey or not")
    data = os.urandom(300 * 1024)
    for tep in (0x21, 0x22, 0x23, 0x24):
        for aead in (1, 2, 16):
            for pipe in (True, False):
                for rekey in (0, 1):
                    cargs = ["--tep", hex(tep), "--aead", str(aead)]
                    if not pipe:
                        cargs.append("--no-pipeline")
                    if rekey:
                        cargs += ["--rekey-after", str(rekey)]
                    sargs = ["--tep", hex(tep), "--aead", str(aead)]
                    crc, cout, cl, src, sl = pair(data, sargs, cargs)
                    ck, sk, sc = keyed_line(cl), keyed_line(sl), closed_line(sl)
                    ok = (crc == 0 and src == 0 and cout == data and ck and sk
                          and ck["session_id"] == sk["session_id"]
                          and ck["tep"] == tep and ck["aead"] == aead
                          and len(ck["session_id"]) == 66
                          and ck["session_id"][:2] == "%02x" % tep)
                    if ok and rekey:
                        ok = sc["rekeys_in"] > 0 and \
                            sc["rekeys_out"] == sc["rekeys_in"]
                    what = "tep 0x%02x aead %d %s%s" % (
                        tep, aead, "pipelined" if pipe else "no-pipeline",
                        " rekey-after 1" if rekey else "")
                    if ok and rekey:
                        what += " (%d rekeys answered)" % sc["rekeys_in"]
                    if not ok:
                        what += " crc=%s src=%s %s %s" % (crc, src, cl, sl)
                    check(ok, what)


# ---------------------------------------------------------------------------
# 3. Variants
# ---------------------------------------------------------------------------

def plain_echo_server(conns):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)

    def run():
        for _ in range(conns):
            c, _ = ls.accept()
            try:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)
            except OSError:
                pass
            c.close()
        ls.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return ls.getsockname()[1], t


def variants():
    print("variants: negotiation outcomes")
    data = os.urandom(100 * 1024)

    # Default configuration on both sides.
    crc, cout, cl, src, sl = pair(data)
    ck = keyed_line(cl)
    check(crc == 0 and src == 0 and cout == data and ck["tep"] == 0x23
          and ck["aead"] == 1, "defaults negotiate X25519 and AES-128-GCM")

    # B picks another TEP: A pipelined X25519, B only does P-256.
    crc, cout, cl, src, sl = pair(data, ["--tep", "0x21"],
                                  ["--tep", "0x21,0x23"])
    ck, sk = keyed_line(cl), keyed_line(sl)
    check(crc == 0 and src == 0 and cout == data and ck["tep"] == 0x21
          and ck["session_id"] == sk["session_id"],
          "B picks P-256, discards the pipelined X25519 Init1")
    crc, cout, cl, src, sl = pair(data, ["--tep", "0x24,0x22"],
                                  ["--tep", "0x22,0x24", "--rekey-after",
                                   "3"])
    ck = keyed_line(cl)
    check(crc == 0 and src == 0 and cout == data and ck["tep"] == 0x22,
          "B's preference (last listed) decides: P-521 over A's pipelined "
          "X448, with rekeys")

    # AEAD preference is B's.
    crc, cout, cl, src, sl = pair(data, ["--aead", "2,16"],
                                  ["--aead", "16,2,1"])
    ck = keyed_line(cl)
    check(crc == 0 and src == 0 and cout == data and ck["aead"] == 2,
          "B's AEAD preference decides (A 16,2,1; B 2,16 -> 2)")

    # No common AEAD: B aborts after its hello, A must fail.
    crc, cout, cl, src, sl = pair(data, ["--aead", "16"], ["--aead", "1"])
    check(crc == 1 and src == 1 and any(l.get("error") == "NoAcceptableAead"
                                        for l in sl),
          "no common AEAD: B aborts (NoAcceptableAead), A fails (%s)"
          % [l.get("error") for l in cl if "error" in l])

    # No common TEP: vacuous answer, plain on the same connection.
    crc, cout, cl, src, sl = pair(data, ["--tep", "0x21"], ["--tep", "0x23"])
    check(crc == 3 and src == 3 and any(l.get("reason") == "declined"
                                        for l in cl),
          "no common TEP: declined, both exit 3 without --allow-plain")
    crc, cout, cl, src, sl = pair(data, ["--tep", "0x21", "--allow-plain"],
                                  ["--tep", "0x23", "--allow-plain"])
    check(crc == 0 and src == 0 and cout == data,
          "no common TEP with --allow-plain: plain echo on the same "
          "connection")
    crc, cout, cl, src, sl = pair(data, ["--tep", "0x21", "--allow-plain"],
                                  ["--tep", "0x23", "--no-pipeline",
                                   "--allow-plain"])
    check(crc == 0 and src == 0 and cout == data,
          "no common TEP, hello 'A': plain echo on the same connection")

    # A plain client against the server.
    srv = Server("--once", "--allow-plain")
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    src, _, serr = srv.finish()
    check(got == b"GET / HTTP/1.0\r\n\r\n" and src == 0,
          "plain client gets its bytes echoed, nothing lost")

    # A silent client whose hello comes late: the late marker, then a
    # reset; never data.
    srv = Server("--once", "--hello-wait", "0.3")
    s = socket.create_connection(("127.0.0.1", srv.port))
    time.sleep(0.8)
    s.sendall(tp.encode_hello(tp.KIND_A, tp.encode_option_a([0x23])))
    got, reset = b"", False
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except ConnectionResetError:
        reset = True
    src, _, serr = srv.finish()
    check(reset and got == tp.LATE_MARKER and src == 1
          and "LateHello" in serr,
          "late hello: the server sends the late marker and resets "
          "(LateHello), echoes nothing")

    # Legacy (plain echo) server: it echoes our hello, kind 'P' is not 'B'.
    port, t = plain_echo_server(1)
    crc, cout, cerr = run_client(port, data)
    check(crc == 3 and any(l.get("reason") == "legacy"
                           for l in json_lines(cerr)),
          "legacy echo server recognised, exit 3")
    port, t = plain_echo_server(2)
    crc, cout, cerr = run_client(port, data, "--allow-plain")
    check(crc == 0 and cout == data,
          "legacy server with --allow-plain: plain reconnect, data intact")

    # The server initiates rekeys: the client must answer each (3.8).
    crc, cout, cl, src, sl = pair(data, ["--rekey-after", "1"],
                                  ["--rekey-after", "2"])
    sc = closed_line(sl)
    check(crc == 0 and src == 0 and cout == data and sc["rekeys_in"] > 0
          and sc["rekeys_out"] >= sc["rekeys_in"],
          "both sides initiate rekeys (server after every frame, client "
          "every 2): %s in, %s generations out" % (
              sc and sc["rekeys_in"], sc and sc["rekeys_out"]))
    # Input that trickles in, so that the server's rekeys arrive while the
    # client is still sending (no answer is due after its FINp).
    srv = Server("--once", "--rekey-after", "1")
    p = subprocess.Popen([PY, PEER, "client", "127.0.0.1", str(srv.port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    chunks = [os.urandom(5000) for _ in range(10)]

    def feed():
        for c in chunks:
            p.stdin.write(c)
            p.stdin.flush()
            time.sleep(0.05)
        p.stdin.close()
    threading.Thread(target=feed, daemon=True).start()
    cout = p.stdout.read()
    p.wait(timeout=60)
    src, _, serr = srv.finish()
    sc = closed_line(json_lines(serr))
    # The server frames that arrive after the client's FINp are owed no
    # answer (RFC 8548 3.8); on a loaded machine the last chunks' echoes,
    # a few frames, can come after it.
    check(p.returncode == 0 and src == 0 and cout == b"".join(chunks)
          and sc["rekeys_in"] >= 5 and sc["rekeys_in"] + 3 >= sc["rekeys_out"],
          "the client answers the server's rekeys at once (%s answers for "
          "%s server generations)" % (sc and sc["rekeys_in"],
                                      sc and sc["rekeys_out"]))

    # An empty input still ends cleanly with both FINp frames.
    crc, cout, cl, src, sl = pair(b"")
    check(crc == 0 and src == 0 and cout == b"", "empty input: FINp only")

    # A large input (several MB, many maximum-size frames).
    big = os.urandom(5 * 1024 * 1024 + 17)
    crc, cout, cl, src, sl = pair(big, (), ["--rekey-after", "7"])
    sc = closed_line(sl)
    check(crc == 0 and src == 0 and cout == big and sc["rekeys_in"] > 0,
          "5 MiB with --rekey-after 7 (%s rekeys)" % (sc and sc["rekeys_in"]))


# ---------------------------------------------------------------------------
# 4. Tampering proxy
# ---------------------------------------------------------------------------

class Proxy:
    """Forwards one connection to the server.  c2s / s2c: None, or
    ("flip", pos) one byte at stream position pos, ("cut", k) forward all
    but the last k bytes of the direction, then FIN, ("tailflip", k) flip
    the k-th byte from the end, ("append", junk) forward it all, then junk,
    then FIN."""

    def __init__(self, server_port, c2s=None, s2c=None):
        self.server_port = server_port
        self.c2s, self.s2c = c2s, s2c
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        c, _ = self.ls.accept()
        s = socket.create_connection(("127.0.0.1", self.server_port))
        a = threading.Thread(target=self.pipe, args=(c, s, self.c2s),
                             daemon=True)
        b = threading.Thread(target=self.pipe, args=(s, c, self.s2c),
                             daemon=True)
        a.start()
        b.start()
        a.join()
        b.join()
        c.close()
        s.close()
        self.ls.close()

    @staticmethod
    def pipe(src, dst, how):
        mode = how[0] if how else None
        keep = how[1] if mode in ("cut", "tailflip") else 0
        # Hold nothing back before `start` (the hello and Init message):
        # the handshake must complete.
        start = how[2] if mode in ("cut", "tailflip") else 0
        pos = 0
        held = bytearray()          # the last `keep` bytes, not yet sent
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                d = bytearray(d)
                if mode == "flip" and pos <= how[1] < pos + len(d):
                    d[how[1] - pos] ^= 0x01
                pos += len(d)
                held += d
                held_at = pos - len(held)
                n = max(len(held) - keep, min(len(held), start - held_at))
                if n > 0:
                    dst.sendall(held[:n])
                    del held[:n]
            if mode == "tailflip":
                held[0] ^= 0x01
                dst.sendall(held)
            if mode == "append":
                dst.sendall(how[1])
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # Pass a reset on as a reset.
            for sock in (src, dst):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
                except OSError:
                    pass


def tamper():
    print("tamper: a proxy alters the stream; the receiver must fail")
    data = os.urandom(200 * 1024)
    # A's stream with defaults: hello 8 + option 4 = 12, Init1(X25519,
    # 3 AEADs) = 79, first frame at stream position 91.
    cases = [
        ("flip in A's first frame's ciphertext", ("flip", 91 + 40), None,
         "server", "AuthenticationFailed"),
        ("flip in A's first frame's clen", ("flip", 91 + 2), None,
         "server", None),
        ("flip in A's first frame's control (rekey bit)", ("flip", 91), None,
         "server", "AuthenticationFailed"),
        ("flip in A's ENO option (0x21 -> 0x20: transcript)", ("flip", 10),
         None, "server", "AuthenticationFailed"),
        ("flip in A's N_A (Init1)", ("flip", 12 + 15 + 3), None, "server",
         "AuthenticationFailed"),
        ("flip in B's N_B (Init2)", None, ("flip", 12 + 10 + 3), "server",
         "AuthenticationFailed"),
        ("flip in B's data frame", None, ("flip", 12 + 74 + 1000), "client",
         "AuthenticationFailed"),
        ("flip in B's last byte (its FINp frame)", None, ("tailflip", 1, 86),
         "client", "AuthenticationFailed"),
        ("B's stream cut by its FINp frame (TCP FIN, no FINp)", None,
         ("cut", 20, 86), "client", "Truncated"),
        ("B's stream cut inside its FINp frame", None, ("cut", 7, 86), "client",
         "Truncated"),
        ("bytes after B's FINp frame", None, ("append", b"\x00" * 5),
         "client", "DataAfterFin"),
        ("A's stream cut by its FINp frame", ("cut", 20, 91), None, "server",
         "Truncated"),
    ]
    for what, c2s, s2c, who, kind in cases:
        srv = Server("--once")
        px = Proxy(srv.port, c2s, s2c)
        crc, cout, cerr = run_client(px.port, data)
        src, _, serr = srv.finish()
        cl, sl = json_lines(cerr), json_lines(serr)
        errs_c = [l.get("error") for l in cl if "error" in l]
        errs_s = [l.get("error") for l in sl if "error" in l]
        victim_rc, victim_errs = (src, errs_s) if who == "server" \
            else (crc, errs_c)
        ok = crc != 0 and victim_rc != 0 and \
            (kind is None or kind in victim_errs)
        check(ok, "%s: %s fails with %s (client %s rc=%d, server %s rc=%d)"
              % (what, who, kind or "an error", errs_c, crc, errs_s, src))


# ---------------------------------------------------------------------------
# 5. Resumption and 0-RTT data
# ---------------------------------------------------------------------------

class Relay:
    """Forwards the k-th connection it accepts to ports[k] (the last port
    for any further one), recording both directions: c2s[k], s2c[k]."""

    def __init__(self, ports):
        self.ports = list(ports)
        self.c2s, self.s2c = [], []
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        k = 0
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            port = self.ports[min(k, len(self.ports) - 1)]
            up, down = bytearray(), bytearray()
            self.c2s.append(up)
            self.s2c.append(down)
            threading.Thread(target=self.serve, args=(c, port, up, down),
                             daemon=True).start()
            k += 1

    def serve(self, c, port, up, down):
        s = socket.create_connection(("127.0.0.1", port))
        a = threading.Thread(target=self.pipe, args=(c, s, up), daemon=True)
        b = threading.Thread(target=self.pipe, args=(s, c, down), daemon=True)
        a.start()
        b.start()
        a.join()
        b.join()
        c.close()
        s.close()

    @staticmethod
    def pipe(src, dst, record):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                record += d
                dst.sendall(d)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
                except OSError:
                    pass

    def close(self):
        self.ls.close()


def keyed_lines(lines):
    return [l for l in lines if l.get("encrypted") is True]


def closed_lines(lines):
    return [l for l in lines if l.get("closed")]


def connections(data, n, server_args=(), client_args=()):
    """n connections of one client against one long-lived server."""
    srv = Server(*server_args)
    crc, cout, cerr = run_client(srv.port, data, "--connections", str(n),
                                 *client_args)
    _, _, serr = srv.stop()
    return crc, cout, json_lines(cerr), json_lines(serr)


def flags(lines, key):
    return [l.get(key) for l in lines]


def read_until_closed(sock):
    got, reset = b"", False
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                break
            got += d
    except ConnectionResetError:
        reset = True
    return got, reset


def resume():
    print("resume: --connections, resumption and 0-RTT data")
    data = os.urandom(100 * 1024)

    # Resumption accepted, no 0-RTT: three connections, one chain.
    crc, cout, cl, sl = connections(data, 3, (), ["--no-early-data"])
    ck, sk = keyed_lines(cl), keyed_lines(sl)
    sids = flags(ck, "session_id")
    check(crc == 0 and cout == data * 3 and len(ck) == 3 and len(sk) == 3
          and flags(ck, "resumed") == [False, True, True]
          and flags(sk, "resumed") == [False, True, True]
          and flags(ck, "zero_rtt") == [False] * 3
          and flags(sk, "zero_rtt") == [False] * 3
          and len(set(sids)) == 3 and sids == flags(sk, "session_id")
          and [x[:2] for x in sids] == ["23", "a3", "a3"]
          and flags(ck, "aead") == [1, 1, 1],
          "resumption over 3 connections: resumed false, true, true; "
          "session IDs differ, byte 0 0x23 then 0xa3; data echoed intact")

    # The AEAD of the original session is kept; another TEP resumes too.
    crc, cout, cl, sl = connections(data, 3, ["--tep", "0x21,0x24",
                                              "--aead", "16"],
                                    ["--tep", "0x24,0x21", "--aead",
                                     "1,16"])
    ck = keyed_lines(cl)
    check(crc == 0 and cout == data * 3
          and flags(ck, "resumed") == [False, True, True]
          and flags(ck, "zero_rtt") == [False, True, True]
          and flags(ck, "aead") == [16] * 3 and flags(ck, "tep") == [0x24] * 3
          and [x[:2] for x in flags(ck, "session_id")] == ["24", "a4", "a4"],
          "X448 and ChaCha20-Poly1305: resumed with the original AEAD")

    # 0-RTT accepted, for inputs around the early limit (16364 data bytes
    # fit in the early frame) and larger, with and without rekeys.
    m = tp.MAX_EARLY_DATA
    big = 300 * 1024
    for size, extra in ((1, ()), (1000, ()), (m, ()), (m + 1, ()),
                        (big, ()), (big, ("--rekey-after", "1"))):
        d = os.urandom(size)
        crc, cout, cl, sl = connections(d, 3, extra, extra)
        ck, sk, sc = keyed_lines(cl), keyed_lines(sl), closed_lines(sl)
        sids = flags(ck, "session_id")
        check(crc == 0 and cout == d * 3
              and flags(ck, "resumed") == [False, True, True]
              and flags(ck, "zero_rtt") == [False, True, True]
              and flags(sk, "resumed") == [False, True, True]
              and flags(sk, "zero_rtt") == [False, True, True]
              and len(set(sids)) == 3 and sids == flags(sk, "session_id")
              and flags(sc, "bytes_in") == [size] * 3,
              "0-RTT accepted, %d bytes%s: resumed and zero_rtt false, "
              "true, true on both sides, echo intact" % (
                  size, " " + " ".join(extra) if extra else ""))

    # The wire of a 0-RTT connection, and a replay of it.
    srv = Server()
    relay = Relay([srv.port])
    crc, cout, cerr = run_client(relay.port, data, "--connections", "2")
    relay.close()
    up, down = bytes(relay.c2s[1]), bytes(relay.s2c[1])
    # Hello 8 + option 21 bytes; the early frame: 3 + 1 + 16364 + 16.
    mark = 29 + tp.EARLY_DATA_LIMIT
    ok = (crc == 0 and cout == data * 2
          and up[:8] == b"\xe5ENO\x01E\r\n"
          and up[8:12] == bytes([0x45, 0x15, 0x21, 0xa3])
          and up[29:32] == bytes([0, 0x3f, 0xfd])      # clen 16381
          and up[mark:mark + 3] == tp.END_OF_EARLY_DATA
          and up[mark + 3] == 0 and len(up) > mark + 3 + 17
          and down[:8] == b"\xe5ENO\x01B\r\n"
          and down[8:12] == bytes([0x45, 0x15, 0x01, 0xa3])
          and up[12:21] != down[12:21])
    check(ok, "0-RTT wire: hello 'E' [45 15 21 a3 half nonce], one early "
          "frame of 16384 bytes, end mark, B answers [45 15 01 a3 ...]")
    # Replayed into the same server: the secret is spent, so the early
    # frame is skipped unread, and what follows the mark is no Init1.
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(up)
    got, reset = read_until_closed(s)
    s.close()
    time.sleep(0.3)
    _, _, serr = srv.stop()
    sl = json_lines(serr)
    check(reset and got[:8] == b"\xe5ENO\x01B\r\n"
          and got[8:] == bytes([0x45, 0x04, 0x01, 0x23])
          and any(l.get("error") == "BadMagic" for l in sl)
          and flags(keyed_lines(sl), "resumed") == [False, True],
          "a replayed 0-RTT connection resumes nothing: fresh answer, early "
          "frame skipped, aborted at the recorded frames (BadMagic)")

    # A server with --no-early-data: the 0-RTT offer becomes a fresh
    # exchange (the secret is spent), the data is delivered once.
    for n in (2, 3):
        crc, cout, cl, sl = connections(data, n, ["--no-early-data"])
        ck, sk, sc = keyed_lines(cl), keyed_lines(sl), closed_lines(sl)
        check(crc == 0 and cout == data * n
              and flags(ck, "resumed") == [False] * n
              and flags(sk, "resumed") == [False] * n
              and flags(ck, "zero_rtt") == [False] * n
              and flags(sk, "zero_rtt") == [False] * n
              and flags(sc, "bytes_in") == [len(data)] * n,
              "0-RTT against a server with --no-early-data, %d connections: "
              "fresh exchanges, each echo equals the input exactly" % n)
    # ... while it still honours a resumption offered without 0-RTT.
    crc, cout, cl, sl = connections(data, 2, ["--no-early-data"],
                                    ["--no-early-data"])
    check(crc == 0 and cout == data * 2
          and flags(keyed_lines(cl), "resumed") == [False, True]
          and flags(keyed_lines(sl), "resumed") == [False, True],
          "a server with --no-early-data resumes a hello 'A' offer")

    # A small input against --no-early-data (all of it in the early frame).
    d = b"GET / HTTP/1.0\r\n\r\n"
    crc, cout, cl, sl = connections(d, 2, ["--no-early-data"])
    check(crc == 0 and cout == d * 2
          and flags(closed_lines(sl), "bytes_in") == [len(d)] * 2,
          "a request refused as 0-RTT is sent again after Init2, once")

    # A server restarted between connections: its cache is gone.
    for cargs, what in (((), "0-RTT offer"),
                        (("--no-early-data",), "resumption offer")):
        s1, s2 = Server("--once"), Server("--once")
        relay = Relay([s1.port, s2.port])
        crc, cout, cerr = run_client(relay.port, data, "--connections", "2",
                                     *cargs)
        relay.close()
        r1, _, e1 = s1.finish()
        r2, _, e2 = s2.finish()
        ck = keyed_lines(json_lines(cerr))
        k2, c2 = keyed_lines(json_lines(e2)), closed_lines(json_lines(e2))
        hello = bytes(relay.c2s[1][:8])
        check(crc == 0 and r1 == 0 and r2 == 0 and cout == data * 2
              and hello[5:6] == (b"A" if cargs else b"E")
              and flags(ck, "resumed") == [False, False]
              and flags(k2, "resumed") == [False]
              and flags(c2, "bytes_in") == [len(data)]
              and ck[1]["session_id"] == k2[0]["session_id"],
              "server restarted between connections (%s): fresh exchange, "
              "data delivered once" % what)

    # --no-resume on either side.
    crc, cout, cl, sl = connections(data, 2, (), ["--no-resume"])
    ck = keyed_lines(cl)
    check(crc == 0 and cout == data * 2
          and flags(ck, "resumed") == [False, False],
          "client --no-resume: two fresh exchanges")
    crc, cout, cl, sl = connections(data, 2, ["--no-resume"])
    ck, sk = keyed_lines(cl), keyed_lines(sl)
    check(crc == 0 and cout == data * 2
          and flags(ck, "resumed") == [False, False]
          and flags(sk, "resumed") == [False, False]
          and flags(sk, "zero_rtt") == [False, False],
          "server --no-resume: the 0-RTT offer is answered fresh")
    crc, cout, cl, sl = connections(b"", 2)
    check(crc == 0 and cout == b""
          and flags(keyed_lines(cl), "resumed") == [False, True]
          and flags(keyed_lines(cl), "zero_rtt") == [False, False],
          "empty input: resumption without 0-RTT (hello 'A')")

    # A declined 0-RTT offer (no common TEP left): vacuous answer, the
    # early frame skipped, plain on the same connection.
    srv = Server("--tep", "0x23", "--allow-plain")
    s = socket.create_connection(("127.0.0.1", srv.port))
    fake = tp.Ticket(os.urandom(32), 0x21, 1, "A")
    opt = tp.encode_option_a([], tp.encode_resumption(
        0x21, fake.own_half(), os.urandom(8)))
    s.sendall(tp.encode_hello(tp.KIND_E, opt)
              + tp.seal_early(fake, b"12345678", b"early") +
              tp.END_OF_EARLY_DATA + b"plain bytes")
    s.shutdown(socket.SHUT_WR)
    got, reset = read_until_closed(s)
    s.close()
    _, _, serr = srv.stop()
    check(got == tp.encode_hello(tp.KIND_B, tp.VACUOUS_B) + b"plain bytes",
          "0-RTT offer with no common TEP: vacuous answer, early frame "
          "skipped, the rest echoed plain")

    early_echo_before_the_mark()
    resume_negotiation_units()
    early_frame_limits()
    mark_with_the_first_frame()


def early_echo_before_the_mark():
    """The server hands 0-RTT data on at once: its echo arrives while the
    client still withholds its end mark (PROTOCOL.md 7.1 rule 5)."""
    srv = Server()
    deadline = time.monotonic() + 20
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    st = tp.Stream(s)
    keyed = tp.client_handshake(s, st, [0x23], [1], True, deadline)
    dp = tp.DataPhase(s, st, keyed)
    dp.start()
    dp.send(b"first", fin=True)
    got = []
    dp.receive_until_fin(got.append)
    s.close()
    ticket = tp.Ticket.after(keyed)

    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    st = tp.Stream(s)
    na = os.urandom(8)
    opt = tp.encode_option_a([], tp.encode_resumption(
        0x23, ticket.own_half(), na))
    request = b"early request"
    early = tp.seal_early(ticket, na, request)
    s.sendall(tp.encode_hello(tp.KIND_E, opt) + early)
    echo = None
    try:
        st.read_exact(8, deadline)
        opt_b = tp.read_option(st, deadline)
        byte, _, nb = tp.client_choose([0x23], opt_b,
                                       (0x23, ticket.peer_half()))
        resumed = tp.client_resumed(ticket, byte, na, nb,
                                    len(early) + 3, len(request))
        dp = tp.DataPhase(s, st, resumed)
        header, ct = dp._read_frame()         # no mark sent yet
        echo = dp.opener.open(header, ct)[3]
        dp.start()
        dp.send(b"", fin=True)                # the mark goes with FINp
        dp.receive_until_fin()
        dp.sender_done.wait(5)
    except (tp.ProtocolError, tp.NotEncrypted, OSError) as e:
        print("       %r" % e)
    s.close()
    time.sleep(0.2)
    _, _, serr = srv.stop()
    sl = json_lines(serr)
    check(got == [b"first"] and echo == request
          and flags(keyed_lines(sl), "zero_rtt") == [False, True]
          and len(closed_lines(sl)) == 2,
          "the server echoes 0-RTT data before the client's end mark")


def resume_negotiation_units():
    """A's and B's reading of resumption suboptions (PROTOCOL.md 3.2)."""
    t = tp.Ticket(os.urandom(32), 0x23, 1, "A")
    half_b = t.peer_half()
    nb = os.urandom(8)

    def a_reads(opt_b, teps=(0x21, 0x23), offer=(0x23, half_b)):
        try:
            return tp.client_choose(list(teps), opt_b, offer)
        except tp.NotEncrypted as e:
            return e.reason
    answer = tp.encode_option_b_resumed(tp.encode_resumption(0x23, half_b,
                                                             nb))
    check(a_reads(answer) == (0xa3, 0x23, nb), "A accepts B's other half")
    wrong = tp.encode_option_b_resumed(tp.encode_resumption(
        0x23, bytes(9), nb))
    check(a_reads(wrong) == "disabled",
          "A ignores a mismatched half: ENO disabled")
    check(a_reads(answer, offer=None) == "disabled",
          "A ignores resumption data it did not ask for")
    short = tp.encode_option_b_resumed(bytes([0xa3]) + bytes(4))
    check(a_reads(short) == (0xa3, 0x23, None),
          "v = 1 with 4 data bytes from B: a fresh choice, byte 0 keeps v")
    check(a_reads(tp.encode_option_b(0x23)) == (0x23, 0x23, None),
          "B's fresh answer for the TEP offered by resumption is valid")

    sub = tp.encode_resumption(0x23, t.own_half(), nb)
    for opt, want, fresh, what in (
            (tp.encode_option_a([0x21], sub), (0x23, t.own_half(), nb),
             0x23, "B reads A's offer (last suboption)"),
            (tp.encode_option_a([0x23], sub), None, None,
             "B: a TEP named fresh and by resumption is invalid"),
            (tp.encode_option_a([0x21], bytes([0xa3]) + bytes(8)), None,
             0x23, "B: v = 1 with 8 data bytes is a fresh offer"),
            (tp.encode_option_a([0x21], bytes([0xa3]) + bytes(18)), None,
             0x23, "B: v = 1 with 18 data bytes is a fresh offer")):
        _, subs = tp.parse_option(opt)
        chosen, _, _ = tp.server_choose([0x23], opt)
        check(tp.resumption_offer(subs) == want and chosen == fresh,
              "%s (fresh choice: %s)" % (what, fresh and hex(fresh)))

    cache = tp.ResumptionCache(limit=2)
    tickets = [tp.Ticket(os.urandom(32), 0x23, 1, "B") for _ in range(3)]
    for x in tickets:
        cache.put(x)
    check(cache.take(tickets[0].peer_half()) is None
          and cache.take(tickets[2].peer_half()) is tickets[2]
          and cache.take(tickets[2].peer_half()) is None,
          "server cache: single use, oldest evicted beyond its bound")


def early_frame_limits():
    """The data phase's reading of 0-RTT frames (PROTOCOL.md 7.1 rule 3)."""
    ss = os.urandom(32)
    na = os.urandom(8)
    t = tp.Ticket(ss, 0x23, 1, "A")

    def server_reads(wire):
        a, b = socket.socketpair()
        a.sendall(wire)
        a.shutdown(socket.SHUT_WR)
        keyed = tp.Keyed("B", 0x23, 1, b"", os.urandom(32), 0, 0)
        keyed.early_mk = tp.early_master(ss, na)
        got = []
        dp = tp.DataPhase(b, tp.Stream(b), keyed)
        try:
            dp.receive_early(got.append)
            result = ("mark", dp.opener.offset)
        except tp.ProtocolError as e:
            result = (e.kind,)
        a.close()
        b.close()
        return result, b"".join(got)

    def early_keyed():
        return tp.Keyed("A", 0x23, 1, b"", tp.early_master(ss, na), 0, 0)
    f = tp.seal_early(t, na, b"x" * 100)
    check(server_reads(f + tp.END_OF_EARLY_DATA) ==
          (("mark", len(f) + 3), b"x" * 100),
          "early frame opened, the resumed frames start after the mark")
    sealer = tp.Sealer(early_keyed())
    two = sealer.seal(b"a" * 8000) + sealer.seal(b"b" * 8000)
    check(server_reads(two + tp.END_OF_EARLY_DATA)[0] ==
          ("mark", len(two) + 3), "two early frames within 16384 bytes")
    sealer = tp.Sealer(early_keyed())
    over = sealer.seal(b"a" * 8000) + sealer.seal(b"b" * 8400)
    check(server_reads(over + tp.END_OF_EARLY_DATA)[0] == ("EarlyData",),
          "more than 16384 bytes before the mark: EarlyData")
    sealer = tp.Sealer(early_keyed())
    check(server_reads(sealer._seal(b"a", False, True))[0] == ("EarlyData",),
          "rekey bit on an early frame: EarlyData")
    sealer = tp.Sealer(early_keyed())
    check(server_reads(sealer.seal(b"a", fin=True))[0] == ("EarlyData",),
          "FINp on an early frame: EarlyData")
    bad = bytearray(f)
    bad[-1] ^= 1
    check(server_reads(bytes(bad))[0] == ("AuthenticationFailed",),
          "a tampered early frame fails authentication")
    check(server_reads(f)[0] == ("Truncated",),
          "an end of stream before the mark: Truncated")
    # Skipping (B does not accept): by length only, same bound.
    for wire, want, what in (
            (f + tp.END_OF_EARLY_DATA + b"rest", len(f) + 3,
             "skipped by length up to the mark"),
            (over + tp.END_OF_EARLY_DATA, "EarlyData",
             "skipping: more than 16384 bytes is an error too"),
            (b"\x00\x00\x05" + bytes(5), "FrameTooShort",
             "skipping: clen below 17 is an error")):
        st = tp.Stream(None)
        st.buf += wire
        st.eof = True
        try:
            got = tp.skip_early(st, None)
        except tp.ProtocolError as e:
            got = e.kind
        check(got == want, what)


def mark_with_the_first_frame():
    """After accepted 0-RTT data the client's end mark is written together
    with its first frame of the resumed session, whichever it is, and only
    then (PROTOCOL.md 7.1 rule 4)."""
    t = tp.Ticket(os.urandom(32), 0x23, 1, "A")
    na, nb = os.urandom(8), os.urandom(8)
    frame_len = len(tp.seal_early(t, na, b"req"))

    def queued(first):
        a, b = socket.socketpair()
        keyed = tp.client_resumed(t, 0xa3, na, nb, frame_len + 3, 3)
        dp = tp.DataPhase(a, tp.Stream(a), keyed)   # sender not started
        first(dp)
        if not dp.sealer.fin_sent:
            dp.send(b"more")
        items = list(dp.queue)
        a.close()
        b.close()
        return items, frame_len + 3

    def answer_rekey(dp):
        dp.sealer.remote_gen += 1
        frames, _ = dp.sealer.seal_answers()
        with dp.cond:
            dp._enqueue(frames)
    for first, what in ((lambda dp: dp.send(b"data"), "data"),
                        (lambda dp: dp.send(b"", fin=True), "FINp"),
                        (answer_rekey, "a rekey answer")):
        items, off = queued(first)
        ok = len(items) >= 2 and items[0][:3] == tp.END_OF_EARLY_DATA \
            and items[0][3] in (0, 1) and \
            int.from_bytes(items[0][4:6], "big") == len(items[0]) - 6 and \
            not any(i and i[:3] == tp.END_OF_EARLY_DATA for i in items[1:])
        check(ok, "the end mark leaves in one write with the first frame "
              "(%s), once" % what)
    keyed = tp.client_resumed(t, 0xa3, na, nb, 0, 0)
    check(not keyed.mark_pending and not keyed.zero_rtt,
          "a resumption without 0-RTT data has no mark")


# ---------------------------------------------------------------------------
# 6. Late hellos (PROTOCOL.md 3.4 rule 1)
# ---------------------------------------------------------------------------

# The server's hello wait and the client's delay: the delay is well past
# the wait, and the wait long enough for an undelayed hello on a busy
# machine.
LATE_WAIT = "0.25"
LATE_DELAY = "0.8"


def late_raw(first, rest, server_args=(), pause=0.8):
    """A hand-made client: `first` at once, `rest` after `pause` s, against
    a --once server with a short hello wait.  Returns (bytes received
    until the end, reset seen, server exit code, server JSON lines)."""
    srv = Server("--once", "--hello-wait", LATE_WAIT, *server_args)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    if first:
        s.sendall(first)
    time.sleep(pause)
    try:
        s.sendall(rest)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    got, reset = read_until_closed(s)
    s.close()
    src, _, serr = srv.finish()
    return got, reset, src, json_lines(serr)


def late_errors(lines):
    return [l for l in lines if l.get("error") == "LateHello"]


def late_server_side():
    """The accepting side: the marker alone, then the reset, only when it
    has sent nothing; plain clients are unaffected."""
    opt = tp.encode_option_a([0x21, 0x23])
    init1 = tp.make_init1(0x23, [1, 2, 16])[0]
    t = tp.Ticket(os.urandom(32), 0x23, 1, "A")
    na = os.urandom(8)
    e_opt = tp.encode_option_a([0x21], tp.encode_resumption(
        0x23, t.own_half(), na))
    hellos = (
        ("'A'", tp.encode_hello(tp.KIND_A, opt)),
        ("'P' with its Init1", tp.encode_hello(tp.KIND_P, opt) + init1),
        ("'E' with a 0-RTT frame", tp.encode_hello(tp.KIND_E, e_opt)
         + tp.seal_early(t, na, b"request") + tp.END_OF_EARLY_DATA),
    )
    for what, hello in hellos:
        got, reset, src, sl = late_raw(b"", hello)
        le = late_errors(sl)
        check(got == tp.LATE_MARKER and reset and src == 1 and len(le) == 1
              and le[0].get("late_marker") is True
              and keyed_line(sl) is None,
              "late hello %s: exactly the 8-byte late marker %s, then a "
              "reset (got %r, reset %s)" % (what, tp.LATE_MARKER.hex(), got,
                                            reset))
    check(tp.LATE_MARKER == b"\xe5ENO\x01L\r\n",
          "the late marker is E5 'E' 'N' 'O' 01 'L' CR LF")

    # Part of the marker before the wait, the rest after: still a hello.
    hello = hellos[0][1]
    got, reset, src, sl = late_raw(hello[:3], hello[3:])
    check(got == tp.LATE_MARKER and reset and src == 1,
          "a hello split across the wait (3 bytes before): late marker, "
          "reset")

    # Silent plain clients are echoed, marker or not.
    for what, first in (("text", b"HELO example\r\n"),
                        ("a marker of another kind",
                         b"\xe5ENO\x01X\r\n and more")):
        got, reset, src, sl = late_raw(b"", first, ["--allow-plain"])
        check(got == first and not reset and src == 0
              and not late_errors(sl),
              "a plain client silent past the wait, then %s: echoed whole, "
              "no late marker" % what)

    # A server that spoke first (a banner) only resets.
    banner = "220 ready\r\n"
    got, reset, src, sl = late_raw(b"", hello, ["--banner", banner])
    le = late_errors(sl)
    check(got == banner.encode() and reset and src == 1 and len(le) == 1
          and le[0].get("late_marker") is False,
          "late hello after the server's banner: no marker, only the reset "
          "(got %r)" % got)
    got, reset, src, sl = late_raw(b"", b"QUIT\r\n",
                                   ["--banner", banner, "--allow-plain"])
    check(got == banner.encode() + b"QUIT\r\n" and src == 0,
          "the banner goes first to a plain client, then its echo")


def late_client(data, n_delayed, client_args=(), server_args=()):
    """The peer's client with its first n_delayed hellos late against a
    long-lived server with a short hello wait."""
    srv = Server("--hello-wait", LATE_WAIT, *server_args)
    on = ",".join(str(i + 1) for i in range(n_delayed))
    crc, cout, cerr = run_client(srv.port, data, "--hello-delay", LATE_DELAY,
                                 "--hello-delay-on", on, *client_args)
    time.sleep(0.3)
    _, _, serr = srv.stop()
    return crc, cout, json_lines(cerr), json_lines(serr)


def late_client_side():
    """The connecting side on the marker: new hellos, at most two."""
    data = os.urandom(50 * 1024)
    for n in (1, 2):
        crc, cout, cl, sl = late_client(data, n)
        ck, sk = keyed_line(cl), keyed_lines(sl)
        notes = [l for l in cl if l.get("hello_late")]
        check(crc == 0 and cout == data and ck is not None
              and ck.get("late_retries") == n and ck.get("late_markers") == n
              and len(notes) == n and all(l["resend"] for l in notes)
              and len(late_errors(sl)) == n and len(sk) == 1
              and sk[0]["session_id"] == ck["session_id"],
              "%d late hello%s: the client connects again with a new hello "
              "and succeeds (late_retries %s)"
              % (n, "s" if n > 1 else "", ck and ck.get("late_retries")))
    for pipe in ((), ("--no-pipeline",)):
        crc, cout, cl, sl = late_client(data, 1, pipe)
        ck = keyed_line(cl)
        check(crc == 0 and cout == data and ck
              and ck.get("late_retries") == 1,
              "late hello %s: one new hello, success"
              % ("'A'" if pipe else "'P' with its Init1"))

    # Three markers: the client stops; the third is weak evidence.
    crc, cout, cl, sl = late_client(data, 3)
    ne = [l for l in cl if l.get("encrypted") is False]
    check(crc == 3 and cout == b"" and len(ne) == 1
          and ne[0]["reason"] == "hello-late"
          and ne[0].get("late_retries") == 2
          and ne[0].get("late_markers") == 3
          and len(late_errors(sl)) == 3 and not keyed_lines(sl)
          and len([l for l in sl if l.get("reason") == "plain-client"]) == 3,
          "three late markers: the client stops after 3 connections "
          "(reason hello-late, late_retries 2), exit 3")
    crc, cout, cl, sl = late_client(data, 3, ["--allow-plain"],
                                    ["--allow-plain"])
    check(crc == 0 and cout == data and len(late_errors(sl)) == 3
          and len(closed_lines(sl)) == 1 and not keyed_lines(sl),
          "three late markers with --allow-plain: a fourth connection, "
          "plain, data intact")

    # A forged marker on every connection: never more than three.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(0.5)
    accepted = []

    def forge():
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            accepted.append(c)
            c.settimeout(5)
            try:
                c.recv(65536)
                c.sendall(tp.LATE_MARKER)
                time.sleep(0.05)
            except OSError:
                pass
            tp.abort_socket(c)
    t = threading.Thread(target=forge, daemon=True)
    t.start()
    crc, cout, cerr = run_client(ls.getsockname()[1], data)
    ls.close()
    t.join(5)
    cl = json_lines(cerr)
    check(crc == 3 and len(accepted) == 3
          and [l.get("late_retries") for l in cl if "encrypted" in l] == [2],
          "a marker on every connection: exactly 3 connections, then the "
          "client stops (%d connections)" % len(accepted))

    # 0-RTT data outstanding: the marker allows no new hello.
    crc, cout, cl, sl = late_client(data, 0, ["--connections", "2",
                                              "--hello-delay-on", "2"])
    errs = [l for l in cl if "error" in l]
    sc = closed_lines(sl)
    check(crc == 1 and cout == data and len(errs) == 1
          and errs[0]["error"] == "EarlyDataUnconfirmed"
          and errs[0].get("late_retries") == 0
          and errs[0].get("late_markers") == 1
          and len(late_errors(sl)) == 1 and len(keyed_lines(sl)) == 1
          and flags(sc, "bytes_in") == [len(data)]
          and len([l for l in sl if l.get("reason") == "plain-client"]) == 1,
          "late marker on a 0-RTT hello: EarlyDataUnconfirmed, no new "
          "connection, the early data delivered nowhere")
    # Without 0-RTT data the resumption offer is made again, and honoured
    # (the server never read the late one).
    for extra, d, what in ((("--no-early-data",), data, "hello 'A' offer"),
                           ((), b"", "empty input")):
        crc, cout, cl, sl = late_client(d, 0, ["--connections", "2",
                                               "--hello-delay-on", "2"]
                                        + list(extra))
        ck, sk = keyed_lines(cl), keyed_lines(sl)
        check(crc == 0 and cout == d * 2
              and flags(ck, "late_retries") == [0, 1]
              and flags(ck, "resumed") == [False, True]
              and flags(sk, "resumed") == [False, True],
              "late resumption %s without 0-RTT data: offered again on a "
              "new connection and resumed" % what)


def late():
    print("late: the late marker (PROTOCOL.md 3.4 rule 1)")
    late_server_side()
    late_client_side()


def main():
    parts = sys.argv[1:] or ["kat", "matrix", "variants", "tamper", "resume",
                             "late"]
    t0 = time.time()
    for part in parts:
        globals()[part]()
    print("%d checks, %d failed, %.1f s" % (COUNT[0], len(FAILS),
                                            time.time() - t0))
    for f in FAILS:
        print("FAILED: %s" % f)
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
