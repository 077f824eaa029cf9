//! Parsing: Ethernet, up to two VLAN tags, IPv4/IPv6, and the TCP/UDP ports, bounds-checked,
//! with the consistency checks that keep malformed packets away from targets and state.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, verdict};

use crate::{
    Packet, Parsed, Verdict,
    headers::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr,
        VlanHdr, packet_word, packet_words, ptr_at,
    },
    icmp::{IcmpPacket, PROTO_ICMP, PROTO_ICMPV6},
    maps::{SCRATCH, VIPS},
};

/// Parses up to the ports, filling `key` (addresses, ports, protocol, family).
///
/// Every header a target's kernel would discard is refused here, before `balance` can create
/// any flow or claim a SNAT port for it: dropped (DROP_MALFORMED) when sent to a VIP, passed
/// untouched otherwise.
#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext, key: &mut FlowKey) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Done(Verdict::pass(verdict::PASS_NOT_IP));
    };
    let mut l3 = size_of::<EthHdr>();
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut tags = 0u8;
    // Two tags at most are read: one is a VLAN (passed to the kernel by `balance`); a second
    // (QinQ) is read through only so that such a frame to a VIP is seen and dropped.
    if is_vlan(ether_type) {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
            return Parsed::Done(Verdict::pass(verdict::PASS_NOT_IP));
        };
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += size_of::<VlanHdr>();
        tags = 1;
        if is_vlan(ether_type) {
            let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
                return Parsed::Done(Verdict::pass(verdict::PASS_NOT_IP));
            };
            ether_type = u16::from_be(unsafe { (*vlan).ether_type });
            l3 += size_of::<VlanHdr>();
            tags = 2;
        }
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3, tags, key),
        ETH_P_IPV6 => parse_ipv6(ctx, l3, tags, key),
        _ => Parsed::Done(Verdict::pass(verdict::PASS_NOT_IP)),
    }
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// What the IP header says about the transport header that follows.
struct Ip {
    l3: usize,
    l4: usize,
    /// Where the IP length field says the packet ends.
    end: usize,
    /// VLAN tags before the IP header.
    tags: u8,
    ttl: u8,
    /// A source address no host sends from (RFC 1122 §3.2.1.3, RFC 4291 §2.5.3, §2.7).
    martian: bool,
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize, tags: u8, key: &mut FlowKey) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Parsed::Done(Verdict::pass(verdict::PASS_BAD_IP));
    };
    let (version_ihl, frag_off) = unsafe { ((*ip).version_ihl, (*ip).frag_off) };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Parsed::Done(Verdict::pass(verdict::PASS_BAD_IP));
    }
    unsafe {
        key.src
            .set_words([packet_word(&raw const (*ip).src), 0, 0, 0]);
        key.dst
            .set_words([packet_word(&raw const (*ip).dst), 0, 0, 0]);
        key.proto = (*ip).protocol;
    }
    key.family = FAMILY_V4;
    // More-fragments flag or a non-zero offset.
    if u16::from_be(frag_off) & 0x3fff != 0 {
        return Parsed::Done(if is_vip(&key.dst, FAMILY_V4) {
            Verdict::drop(verdict::DROP_FRAGMENT)
        } else {
            Verdict::pass(verdict::PASS_FRAGMENT_OR_EXT)
        });
    }
    // 0/8 ("this network"), 127/8 (loopback), 224/4 (multicast), 240/4 (reserved, with the
    // broadcast address).
    let first = key.src.0[0];
    let header = Ip {
        l3,
        l4: l3 + ihl,
        end: l3 + usize::from(u16::from_be(unsafe { (*ip).tot_len })),
        tags,
        ttl: unsafe { (*ip).ttl },
        martian: first == 0 || first == 127 || first >= 224,
    };
    parse_l4(ctx, &header, key)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, tags: u8, key: &mut FlowKey) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Parsed::Done(Verdict::pass(verdict::PASS_BAD_IP));
    };
    if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 {
        return Parsed::Done(Verdict::pass(verdict::PASS_BAD_IP));
    }
    unsafe {
        key.src.set_words(packet_words(&raw const (*ip).src));
        key.dst.set_words(packet_words(&raw const (*ip).dst));
        key.proto = (*ip).next_header;
    }
    key.family = FAMILY_V6;
    if is_extension_header(key.proto) {
        return Parsed::Done(if is_vip(&key.dst, FAMILY_V6) {
            Verdict::drop(verdict::DROP_IPV6_EXT)
        } else {
            Verdict::pass(verdict::PASS_FRAGMENT_OR_EXT)
        });
    }
    let l4 = l3 + size_of::<Ipv6Hdr>();
    // Multicast (ff00::/8), unspecified (::), loopback (::1), IPv4-mapped (::ffff:0:0/96,
    // which Linux refuses on the wire).
    let w = key.src.words();
    let zero_prefix = w[0] == 0 && w[1] == 0;
    let header = Ip {
        l3,
        l4,
        end: l4 + usize::from(u16::from_be(unsafe { (*ip).payload_len })),
        tags,
        ttl: unsafe { (*ip).hop_limit },
        martian: key.src.0[0] == 0xff
            || (zero_prefix
                && ((w[2] == 0 && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1])))
                    || w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]))),
    };
    parse_l4(ctx, &header, key)
}

/// IPv6 extension headers (RFC 8200 §4, and those IANA lists since).
#[inline(always)]
fn is_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// The transport header, checked against the IP header: a frame may be longer than the IP
/// length says (Ethernet padding) but not shorter, and the transport header must lie inside
/// the IP datagram, never in the padding after it.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, ip: &Ip, key: &mut FlowKey) -> Parsed {
    // Only TCP and UDP are balanced; ICMP errors may be about a balanced flow (`icmp`); the
    // rest goes to the kernel.
    let header = match key.proto {
        PROTO_TCP => size_of::<TcpHdr>(),
        PROTO_UDP => size_of::<UdpHdr>(),
        PROTO_ICMP if key.family == FAMILY_V4 => {
            return Parsed::Icmp(IcmpPacket {
                l3: ip.l3,
                l4: ip.l4,
                ip_end: ip.end,
                tagged: ip.tags != 0,
                ttl: ip.ttl,
            });
        }
        PROTO_ICMPV6 if key.family == FAMILY_V6 => {
            return Parsed::Icmp(IcmpPacket {
                l3: ip.l3,
                l4: ip.l4,
                ip_end: ip.end,
                tagged: ip.tags != 0,
                ttl: ip.ttl,
            });
        }
        _ => return Parsed::Done(Verdict::pass(verdict::PASS_NO_LISTENER)),
    };
    // Also refuses an IPv4 header length past the total length (then `end < l4`).
    if ip.end < ip.l4 + header || ctx.data() + ip.end > ctx.data_end() {
        return refused(key, verdict::PASS_BAD_IP);
    }
    let mut tcp_flags = 0;
    // Both headers start with the two ports: read through the header's own checked pointer.
    let (ports, consistent) = if key.proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, ip.l4) else {
            return refused(key, verdict::PASS_BAD_IP);
        };
        let off_flags = u16::from_be(unsafe { (*tcp).off_flags });
        tcp_flags = off_flags;
        let data_offset = usize::from(off_flags >> 12) * 4;
        // A SYN with FIN or RST is no opening a target accepts (Linux discards both in
        // LISTEN); let through, it would count as a SYN and replace a live flow's entry.
        let opens_and_closes = off_flags & TCP_SYN != 0 && off_flags & (TCP_FIN | TCP_RST) != 0;
        let consistent = data_offset >= size_of::<TcpHdr>()
            && ip.l4 + data_offset <= ip.end
            && !opens_and_closes;
        (tcp.cast::<[u16; 2]>(), consistent)
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, ip.l4) else {
            return refused(key, verdict::PASS_BAD_IP);
        };
        // Exactly the IP payload: a shorter one would hide bytes a target trims but we forward.
        let consistent = usize::from(u16::from_be(unsafe { (*udp).len })) == ip.end - ip.l4;
        (udp.cast::<[u16; 2]>(), consistent)
    };
    // One branch on the established path; which reason only when refused.
    if !consistent | ip.martian | (ip.tags > 1) {
        let only_tags = consistent && !ip.martian;
        return refused(
            key,
            if only_tags {
                verdict::PASS_VLAN
            } else {
                verdict::PASS_BAD_IP
            },
        );
    }
    unsafe {
        key.sport = (*ports)[0];
        key.dport = (*ports)[1];
    }
    Parsed::Packet(Packet {
        l3: ip.l3,
        l4: ip.l4,
        tagged: ip.tags != 0,
        ttl: ip.ttl,
        tcp_flags,
    })
}

/// A packet `parse` refuses: dropped when sent to a VIP (it never reaches a target), passed
/// untouched with `pass_reason` otherwise (the kernel, or whoever it is for, decides).
#[inline(always)]
fn refused(key: &FlowKey, pass_reason: u32) -> Parsed {
    Parsed::Done(if is_vip(&key.dst, key.family) {
        Verdict::drop(verdict::DROP_MALFORMED)
    } else {
        Verdict::pass(pass_reason)
    })
}

/// A TCP segment with SYN and without ACK: a client opening a connection.
#[inline(always)]
pub(crate) fn is_syn(_ctx: &XdpContext, packet: &Packet, _key: &FlowKey) -> bool {
    packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a TCP packet ends its connection (FIN or RST).
#[inline(always)]
pub(crate) fn closes(_ctx: &XdpContext, packet: &Packet, _key: &FlowKey) -> bool {
    packet.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

const TCP_FIN: u16 = 0x01;
const TCP_SYN: u16 = 0x02;
const TCP_RST: u16 = 0x04;
const TCP_ACK: u16 = 0x10;

/// Whether some listener uses `addr`.
#[inline(always)]
pub(crate) fn is_vip(addr: &Addr, family: u8) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU; the key is built and used right here.
    let vip_key = unsafe { &mut (*scratch).vip_key };
    vip_key.addr.set(addr);
    vip_key.family = family;
    vip_key._pad0 = 0;
    vip_key._pad1 = 0;
    VIPS.get_ptr(&*vip_key).is_some()
}
