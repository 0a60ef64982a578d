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
        tep_byte, tep = tp.client_choose(a_teps, opt_b)
        ok = tep == v["tep"]
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

    # A silent client whose hello comes late: reset, never data.
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
    check(reset and got == b"" and src == 1 and "LateHello" in serr,
          "late hello: the server resets (LateHello), echoes nothing")

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


def main():
    parts = sys.argv[1:] or ["kat", "matrix", "variants", "tamper"]
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
