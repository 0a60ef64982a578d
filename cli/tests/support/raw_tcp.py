"""Hand-made TCP segments on loopback, for the kernel carriage's tests:
TCP options the kernel would never send (two ENO options in a SYN).

    raw_tcp.py syn PORT OPTIONS_HEX
        Sends a SYN with these options from port 40000+ to 127.0.0.1:PORT
        and prints the options of the SYN-ACK that answers it, in hex.
    raw_tcp.py synack PORT OPTIONS_HEX
        Answers the first SYN to 127.0.0.1:PORT with a SYN-ACK carrying
        these options (the kernel's own reset must be dropped meanwhile),
        then prints the payload of the client's first data segment in hex
        (after a line "ready" once it listens).

Exits 2 after 10 seconds without an answer.
"""

import random
import socket
import struct
import sys
import time

LOOPBACK = "127.0.0.1"
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(sport, dport, seq, ack, flags, options=b"", payload=b""):
    options += b"\0" * (-len(options) % 4)
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 65535, 0, 0)
    tcp = header + options + payload
    pseudo = socket.inet_aton(LOOPBACK) * 2 + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    csum = checksum(pseudo + tcp)
    return tcp[:16] + struct.pack("!H", csum) + tcp[18:]


def parse(packet):
    ihl = (packet[0] & 0x0F) * 4
    tcp = packet[ihl:]
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", tcp[:14])
    offset = (off >> 4) * 4
    return sport, dport, seq, ack, flags, tcp[20:offset], tcp[offset:]


def receive(raw, match):
    deadline = time.time() + 10
    while time.time() < deadline:
        raw.settimeout(max(0.01, deadline - time.time()))
        try:
            packet = raw.recv(65535)
        except socket.timeout:
            break
        fields = parse(packet)
        if match(*fields):
            return fields
    sys.exit(2)


def main():
    mode, port, options = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    if mode == "syn":
        sport = random.randint(40000, 60000)
        seq = random.getrandbits(32)
        raw.sendto(segment(sport, port, seq, 0, SYN, options), (LOOPBACK, 0))
        _, _, their_seq, _, _, opts, _ = receive(
            raw, lambda s, d, q, a, f, o, p: s == port and d == sport and f & (SYN | ACK) == SYN | ACK
        )
        raw.sendto(segment(sport, port, seq + 1, 0, RST), (LOOPBACK, 0))
        print(opts.hex())
    elif mode == "synack":
        print("ready", flush=True)
        client, _, their_seq, _, _, _, _ = receive(
            raw, lambda s, d, q, a, f, o, p: d == port and f & (SYN | ACK) == SYN
        )
        seq = random.getrandbits(32)
        raw.sendto(segment(port, client, seq, their_seq + 1, SYN | ACK, options), (LOOPBACK, 0))
        _, _, q, _, _, _, payload = receive(
            raw, lambda s, d, q, a, f, o, p: s == client and d == port and len(p) > 0
        )
        print(payload.hex(), flush=True)
        # A FIN, not a reset: resets from this port are being dropped.
        raw.sendto(segment(port, client, seq + 1, q + len(payload), FIN | ACK), (LOOPBACK, 0))
    else:
        sys.exit("unknown mode " + mode)


main()
