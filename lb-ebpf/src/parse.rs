//! Parsing: Ethernet, one VLAN tag, IPv4/IPv6, and the TCP/UDP ports, bounds-checked.

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
#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext, key: &mut FlowKey) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Done(Verdict::pass(verdict::PASS_NOT_IP));
    };
    let mut l3 = size_of::<EthHdr>();
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
            return Parsed::Done(Verdict::pass(verdict::PASS_NOT_IP));
        };
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += size_of::<VlanHdr>();
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3, key),
        ETH_P_IPV6 => parse_ipv6(ctx, l3, key),
        _ => Parsed::Done(Verdict::pass(verdict::PASS_NOT_IP)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Parsed {
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
    let ip_end = l3 + usize::from(u16::from_be(unsafe { (*ip).tot_len }));
    parse_l4(ctx, l3, l3 + ihl, ip_end, key)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Parsed {
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
    let ip_end = l4 + usize::from(u16::from_be(unsafe { (*ip).payload_len }));
    parse_l4(ctx, l3, l4, ip_end, key)
}

/// IPv6 extension headers (RFC 8200 §4, and those IANA lists since).
#[inline(always)]
fn is_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// `ip_end`: where the IP header's length field says the packet ends. A frame may be longer
/// (Ethernet padding) but not shorter: a packet cut short is never forwarded.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, l3: usize, l4: usize, ip_end: usize, key: &mut FlowKey) -> Parsed {
    // Only TCP and UDP are balanced; ICMP errors may be about a balanced flow (`icmp`); the
    // rest goes to the kernel.
    let header = match key.proto {
        PROTO_TCP => size_of::<TcpHdr>(),
        PROTO_UDP => size_of::<UdpHdr>(),
        PROTO_ICMP if key.family == FAMILY_V4 => {
            return Parsed::Icmp(IcmpPacket { l3, l4, ip_end });
        }
        PROTO_ICMPV6 if key.family == FAMILY_V6 => {
            return Parsed::Icmp(IcmpPacket { l3, l4, ip_end });
        }
        _ => return Parsed::Done(Verdict::pass(verdict::PASS_NO_LISTENER)),
    };
    let complete = match key.proto {
        PROTO_TCP => ptr_at::<TcpHdr>(ctx, l4).is_some(),
        _ => ptr_at::<UdpHdr>(ctx, l4).is_some(),
    } && ip_end >= l4 + header
        && ctx.data() + ip_end <= ctx.data_end();
    // Both headers start with the two ports.
    match ptr_at::<[u16; 2]>(ctx, l4) {
        Some(ports) if complete => unsafe {
            key.sport = (*ports)[0];
            key.dport = (*ports)[1];
        },
        _ => {
            return Parsed::Done(if is_vip(&key.dst, key.family) {
                Verdict::drop(verdict::DROP_MALFORMED)
            } else {
                Verdict::pass(verdict::PASS_BAD_IP)
            });
        }
    }
    Parsed::Packet(Packet { l3, l4 })
}

/// A TCP segment with SYN and without ACK: a client opening a connection.
#[inline(always)]
pub(crate) fn is_syn(ctx: &XdpContext, packet: &Packet, key: &FlowKey) -> bool {
    tcp_flags(ctx, packet, key) & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a TCP packet ends its connection (FIN or RST).
#[inline(always)]
pub(crate) fn closes(ctx: &XdpContext, packet: &Packet, key: &FlowKey) -> bool {
    tcp_flags(ctx, packet, key) & (TCP_FIN | TCP_RST) != 0
}

/// A TCP packet's flags; 0 for UDP.
#[inline(always)]
fn tcp_flags(ctx: &XdpContext, packet: &Packet, key: &FlowKey) -> u16 {
    if key.proto != PROTO_TCP {
        return 0;
    }
    match ptr_at::<TcpHdr>(ctx, packet.l4) {
        Some(tcp) => u16::from_be(unsafe { (*tcp).off_flags }),
        None => 0,
    }
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
