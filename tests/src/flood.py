# A TCP packet flood for the hostile-traffic lab tests (run by tests/src/flood.rs in the
# client's namespace). IPv4 and TCP headers are built by hand and sent on a raw socket, so the
# source address and port of every packet can be spoofed. Bounded by a packet count and a
# time; paced to a packet rate. Prints `sent N` when done.
#
# argv: KIND DST DPORT SOURCES SPORT_MIN SPORT_MAX SECONDS MAX_PACKETS RATE
#   KIND     `stray`: ACKs and RSTs by turns (segments of no connection); `syn`: SYNs
#   SOURCES  comma-separated IPv4 source addresses, used by turns
import random, socket, struct, sys, time

kind, dst, dport, sources, sport_min, sport_max, seconds, max_packets, rate = sys.argv[1:10]
dport, sport_min, sport_max = int(dport), int(sport_min), int(sport_max)
seconds, max_packets, rate = float(seconds), int(max_packets), int(rate)
dst_bytes = socket.inet_aton(dst)
sources = [socket.inet_aton(s) for s in sources.split(",")]
ACK, RST, SYN = 0x10, 0x04, 0x02
flag_cycle = [ACK, RST | ACK, RST] if kind == "stray" else [SYN]


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(src, sport, flags):
    seq = random.getrandbits(32)
    ack = random.getrandbits(32) if flags & ACK else 0
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    pseudo = src + dst_bytes + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000, 64,
        socket.IPPROTO_TCP, 0, src, dst_bytes,
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


# IPPROTO_RAW: the kernel sends our IP header as it is (IP_HDRINCL), spoofed source and all.
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
start = time.monotonic()
sent = 0
while sent < max_packets:
    elapsed = time.monotonic() - start
    if elapsed >= seconds:
        break
    if sent >= rate * elapsed:
        time.sleep(0.001)
        continue
    pkt = packet(
        sources[sent % len(sources)],
        random.randint(sport_min, sport_max),
        flag_cycle[sent % len(flag_cycle)],
    )
    try:
        s.sendto(pkt, (dst, 0))
        sent += 1
    except OSError:
        # A full queue (ENOBUFS): wait for it to drain rather than spin.
        time.sleep(0.001)
print("sent", sent, "in", round(time.monotonic() - start, 2), "s", flush=True)
