"""Counts the frames arriving on this namespace's eth0 for one TCP/UDP destination port, for a
while: ARP, neighbour discovery and any other port are not counted. Frames carrying b"control"
are counted apart (a sender's well-formed control traffic).

Usage: port_counter.py PORT SECONDS
Prints "ready" once listening, then "control N other M" when the time is up.
"""
import select
import socket
import struct
import sys
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0))
print("ready", flush=True)


def dst_port(f):
    """The TCP/UDP destination port of an Ethernet frame (any VLAN tags skipped), or None."""
    at, ether_type = 12, None
    while len(f) >= at + 2:
        ether_type = struct.unpack("!H", f[at:at + 2])[0]
        if ether_type in (0x8100, 0x88A8):
            at += 4
            continue
        at += 2
        break
    if ether_type == 0x0800 and len(f) >= at + 20:
        proto, l4 = f[at + 9], at + (f[at] & 15) * 4
    elif ether_type == 0x86DD and len(f) >= at + 40:
        proto, l4 = f[at + 6], at + 40
    else:
        return None
    if proto not in (6, 17) or len(f) < l4 + 4:
        return None
    return struct.unpack("!H", f[l4 + 2:l4 + 4])[0]


control = other = 0
end = time.monotonic() + seconds
while (left := end - time.monotonic()) > 0:
    if not select.select([s], [], [], min(left, 0.5))[0]:
        continue
    f, addr = s.recvfrom(65535)
    # Outgoing frames (the target's own answers) are not arrivals.
    if addr[2] == socket.PACKET_OUTGOING or dst_port(f) != port:
        continue
    if b"control" in f:
        control += 1
    else:
        other += 1
print("control", control, "other", other, flush=True)
