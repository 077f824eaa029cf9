//! The full-NAT rewrite of addresses and ports, with incremental checksums.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, FAMILY_V4, FlowKey, PROTO_TCP, checksum::Delta};

use crate::{
    Packet,
    headers::{Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, ptr_at, set_packet_word, set_packet_words},
};

/// The addresses and ports a packet is rewritten to (ports in network byte order).
pub(crate) struct Nat<'a> {
    pub(crate) src: &'a Addr,
    pub(crate) sport: u16,
    pub(crate) dst: &'a Addr,
    pub(crate) dport: u16,
}

/// Rewrites addresses and ports from `key`'s to `nat`'s and takes one off the TTL / hop limit
/// (we forward as a router does; `balance` passed those at 1 or 0), updating the IPv4 header
/// checksum and the TCP/UDP checksum (whose pseudo-header covers the addresses, not the TTL)
/// incrementally.
#[inline(always)]
pub(crate) fn rewrite(
    ctx: &XdpContext,
    packet: &Packet,
    key: &FlowKey,
    nat: &Nat<'_>,
) -> Option<()> {
    let mut delta = Delta::new();
    if key.family == FAMILY_V4 {
        delta.addr(&key.src, nat.src, 4);
        delta.addr(&key.dst, nat.dst, 4);
        let ip = ptr_at::<Ipv4Hdr>(ctx, packet.l3)?;
        unsafe {
            // The TTL shares a checksummed word with the protocol.
            let (ttl, protocol) = ((*ip).ttl, (*ip).protocol);
            let ttl_after = ttl.saturating_sub(1);
            let mut header_delta = delta;
            header_delta.word(
                u16::from_ne_bytes([ttl, protocol]),
                u16::from_ne_bytes([ttl_after, protocol]),
            );
            (*ip).ttl = ttl_after;
            (*ip).check = header_delta.apply((*ip).check);
            set_packet_word(&raw mut (*ip).src, nat.src.words()[0]);
            set_packet_word(&raw mut (*ip).dst, nat.dst.words()[0]);
        }
    } else {
        delta.addr(&key.src, nat.src, 16);
        delta.addr(&key.dst, nat.dst, 16);
        let ip = ptr_at::<Ipv6Hdr>(ctx, packet.l3)?;
        unsafe {
            // No header checksum in IPv6.
            (*ip).hop_limit = (*ip).hop_limit.saturating_sub(1);
            set_packet_words(&raw mut (*ip).src, nat.src.words());
            set_packet_words(&raw mut (*ip).dst, nat.dst.words());
        }
    }
    delta.word(key.sport, nat.sport);
    delta.word(key.dport, nat.dport);
    if key.proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, packet.l4)?;
        unsafe {
            (*tcp).check = delta.apply((*tcp).check);
            (*tcp).sport = nat.sport;
            (*tcp).dport = nat.dport;
        }
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, packet.l4)?;
        unsafe {
            // IPv4 UDP without a checksum keeps none; IPv6 always has one.
            (*udp).check = if key.family == FAMILY_V4 {
                delta.apply_udp((*udp).check)
            } else {
                match delta.apply((*udp).check) {
                    0 => 0xffff,
                    c => c,
                }
            };
            (*udp).sport = nat.sport;
            (*udp).dport = nat.dport;
        }
    }
    Some(())
}
