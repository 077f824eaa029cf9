"""Sends malformed frames at a VIP, as a new user's fuzzer would, from this namespace's eth0
over AF_PACKET, then CONTROL well-formed UDP datagrams (payload b"control", one 5-tuple) that
must get through. Paced, so that no veth ring on the way overflows.

Usage: malformed_frames.py DST_MAC SRC4 VIP4 SRC6 VIP6 PORT CONTROL
Prints one line per kind of frame, "KIND COUNT", then "total COUNT".
"""
import random
import socket
import struct
import sys
import time

dst_mac = bytes.fromhex(sys.argv[1].replace(":", ""))
src4, vip4 = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
src6, vip6 = socket.inet_pton(socket.AF_INET6, sys.argv[4]), socket.inet_pton(socket.AF_INET6, sys.argv[5])
port, control = int(sys.argv[6]), int(sys.argv[7])
with open("/sys/class/net/eth0/address") as f:
    src_mac = bytes.fromhex(f.read().strip().replace(":", ""))
rng = random.Random(9)
PAYLOAD = b"fuzz fuzz fuzz"
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo(src, dst, proto, length):
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp(src, dst, flags=SYN, words=5, payload=PAYLOAD, sport=None):
    sport = sport or rng.randrange(1024, 65535)
    head = struct.pack("!HHIIBBHHH", sport, port, 1, 0, (words & 15) << 4, flags, 65535, 0, 0)
    seg = head + payload
    c = checksum(pseudo(src, dst, 6, len(seg)) + seg)
    return 6, seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(src, dst, length=None, payload=PAYLOAD, sport=None):
    sport = sport or rng.randrange(1024, 65535)
    real = 8 + len(payload)
    length = real if length is None else length
    dgram = struct.pack("!HHHH", sport, port, length, 0) + payload
    c = checksum(pseudo(src, dst, 17, real) + dgram) or 0xFFFF
    return 17, dgram[:6] + struct.pack("!H", c) + dgram[8:]


def ipv4(src, dst, l4, total=None, ihl=5):
    proto, body = l4
    total = 20 + len(body) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, 0, 64, proto, 0, src, dst)
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return 0x0800, head + body


def ipv6(src, dst, l4):
    proto, body = l4
    return 0x86DD, struct.pack("!IHBB", 0x60000000, len(body), proto, 64) + src + dst + body


def frame(ip, tags=()):
    ether_type, packet = ip
    head = dst_mac + src_mac
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", ether_type) + packet


def martian4(text):
    return socket.inet_aton(text)


def martian6(text):
    return socket.inet_pton(socket.AF_INET6, text)


kinds = []
# TCP data offsets below 5 words or past the segment (14 bytes of payload: 34 bytes in all).
kinds.append(("tcp data offset 0/1/4/15", [
    frame(ipv4(src4, vip4, tcp(src4, vip4, words=w))) for w in (0, 1, 4, 15) for _ in range(100)
] + [frame(ipv6(src6, vip6, tcp(src6, vip6, words=w))) for w in (0, 1, 4, 15) for _ in range(25)]))
kinds.append(("tcp data offset past the datagram", [
    frame(ipv4(src4, vip4, tcp(src4, vip4, words=w, payload=b""))) for w in range(6, 15) for _ in range(100)
]))
kinds.append(("double tagged", [
    frame(ipv4(src4, vip4, tcp(src4, vip4)), tags=((0x88A8, 5), (0x8100, 7))) for _ in range(100)
] + [frame(ipv4(src4, vip4, tcp(src4, vip4)), tags=((0x8100, 5), (0x8100, 7))) for _ in range(100)
] + [frame(ipv6(src6, vip6, udp(src6, vip6)), tags=((0x8100, 5), (0x8100, 7))) for _ in range(100)]))
# Total lengths below IP header + transport header: the transport header lies in padding.
kinds.append(("short ip total length", [
    frame(ipv4(src4, vip4, tcp(src4, vip4), total=t)) for t in (10, 20, 39, 30) for _ in range(200)
] + [frame(ipv4(src4, vip4, udp(src4, vip4), total=t)) for t in (20, 27) for _ in range(100)]))
kinds.append(("bad udp length", [
    frame(ipv4(src4, vip4, udp(src4, vip4, length=n))) for n in (0, 7, 21, 23, 1000) for _ in range(160)
] + [frame(ipv6(src6, vip6, udp(src6, vip6, length=n))) for n in (0, 7, 21, 23) for _ in range(50)]))
kinds.append(("syn with fin or rst", [
    frame(ipv4(src4, vip4, tcp(src4, vip4, flags=f))) for f in (SYN | FIN, SYN | RST) for _ in range(300)
] + [frame(ipv6(src6, vip6, tcp(src6, vip6, flags=f))) for f in (SYN | FIN, SYN | RST | ACK) for _ in range(100)]))
kinds.append(("martian source", [
    frame(ipv4(martian4(m), vip4, tcp(martian4(m), vip4)))
    for m in ("0.1.2.3", "127.0.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255") for _ in range(100)
] + [frame(ipv6(martian6(m), vip6, udp(martian6(m), vip6)))
     for m in ("::1", "ff02::1", "::ffff:198.18.0.10") for _ in range(100)]))
# The IP length says more than the frame holds.
kinds.append(("ip length beyond the frame", [
    frame(ipv4(src4, vip4, tcp(src4, vip4), total=20 + 34 + n)) for n in (1, 100, 1000, 20000) for _ in range(175)
]))

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
total = 0
for name, frames in kinds:
    for i, f in enumerate(frames):
        s.send(f)
        if i % 32 == 31:
            time.sleep(0.002)
    total += len(frames)
    print(name, len(frames), flush=True)
print("total", total, flush=True)
time.sleep(0.2)
for _ in range(control):
    s.send(frame(ipv4(src4, vip4, udp(src4, vip4, payload=b"control", sport=45999))))
    time.sleep(0.01)
