#!/usr/bin/env python3
"""sessid.py: read the tcpcrypt session ID of a socket from Python.

Run it under the shim, against a server that reports the session ID it sees
(the http-session-id example):

    LD_PRELOAD=/path/to/libtcpcrypt.so python3 sessid.py 127.0.0.1:8080

It asks libtcpcrypt.so for the session ID of its socket through ctypes
(tcpcrypt_session_id, declared in preload/include/tcpcrypt.h), then asks
the server for the one it sees, and prints both. They are equal when no one
sits in the middle. Exits 0 if they match, 1 if not, 2 if the connection is
not encrypted or the shim is not loaded.
"""

import ctypes
import ctypes.util
import errno
import os
import socket
import sys
import time


def shim():
    """The libtcpcrypt.so this process runs under."""
    for path in os.environ.get("LD_PRELOAD", "").split():
        if os.path.basename(path) == "libtcpcrypt.so":
            lib = ctypes.CDLL(path, use_errno=True)
            lib.tcpcrypt_session_id.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
            return lib
    return None


def session_id(lib, sock, wait=5.0):
    """The session ID as hex, waiting while the handshake runs (ENOTCONN)."""
    buf = ctypes.create_string_buffer(64)
    deadline = time.monotonic() + wait
    while True:
        n = lib.tcpcrypt_session_id(sock.fileno(), buf, len(buf))
        if n > 0:
            return buf.raw[:n].hex()
        err = ctypes.get_errno()
        if err != errno.ENOTCONN or time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def main():
    if len(sys.argv) != 2:
        print("usage: sessid.py HOST:PORT", file=sys.stderr)
        return 2
    host, port = sys.argv[1].rsplit(":", 1)
    lib = shim()
    if lib is None:
        print("libtcpcrypt.so is not preloaded", file=sys.stderr)
        return 2
    sock = socket.create_connection((host, int(port)))
    mine = session_id(lib, sock)
    sock.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
    response = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    sock.close()
    theirs = None
    for line in response.decode(errors="replace").splitlines():
        if line.startswith("session-id: "):
            theirs = line[len("session-id: "):].strip()
    print("client session ID:", mine)
    print("server session ID:", theirs)
    if mine is None or theirs is None:
        print("not encrypted")
        return 2
    print("match" if mine == theirs else "MISMATCH: someone is in the middle")
    return 0 if mine == theirs else 1


if __name__ == "__main__":
    sys.exit(main())
