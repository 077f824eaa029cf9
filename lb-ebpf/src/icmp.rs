//! ICMP errors about balanced flows, translated like the flows they quote.
//!
//! An error (destination unreachable, fragmentation needed / packet too big, time exceeded)
//! quotes the start of the packet that caused it. Behind a full NAT the two ends of a flow
//! never see each other's addresses, so an error must be rewritten like the flow itself or
//! its sender's kernel will not match it to a socket: without this, Path MTU discovery
//! through the VIP fails and large responses stall behind a smaller-MTU link.
//!
//! - To a VIP, quoting a packet the VIP sent (VIP:vport → client:cport): the flow is found in
//!   `CONNTRACK` and the error goes to its backend, from the flow's SNAT address, quoting the
//!   packet as the backend sent it (backend:tport → SNAT:port).
//! - To the SNAT address, quoting a packet it sent (SNAT:port → backend:tport): the flow is
//!   found in `SNAT` and the error goes to its client, from the VIP, quoting the packet as the
//!   client sent it (client:cport → VIP:vport).
//!
//! Both rewrites update, incrementally: the quoted IPv4 header checksum, the quoted TCP/UDP
//! checksum when the quote holds it, the ICMP checksum (over the quote; for ICMPv6 also the
//! pseudo-header of the outer addresses) and the outer IPv4 header checksum. ICMP creates no
//! state and refreshes none.
//!
//! Everything else goes to the kernel as before (echo, errors about no flow, quotes of other
//! protocols, of fragments, or of an IPv4 header with options, which the fixed offsets here
//! do not follow). A truncated or inconsistent ICMP message to a VIP is dropped; to the SNAT
//! address (the node's own) it is the kernel's.

use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP, checksum::Delta, verdict};

use crate::{
    Route, Scratch, Verdict,
    headers::{
        IcmpHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, packet_word, packet_words, ptr_at,
        set_packet_word, set_packet_words,
    },
    is_snat_addr,
    maps::{CONNTRACK, SETTINGS, SNAT},
    nat::Nat,
    not_ours_to_forward,
    parse::is_vip,
    send_and_count,
};

/// IP protocol number of ICMP.
pub(crate) const PROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub(crate) const PROTO_ICMPV6: u8 = 58;

/// Where a parsed ICMP message's headers start and its IP packet ends. Its outer addresses,
/// protocol and family are in `Scratch::key` (its ports are not set).
pub(crate) struct IcmpPacket {
    pub(crate) l3: usize,
    /// The ICMP header.
    pub(crate) l4: usize,
    /// Where the IP length field says the packet ends (Ethernet padding may follow).
    pub(crate) ip_end: usize,
    /// Whether the frame carried a VLAN tag.
    pub(crate) tagged: bool,
    /// The outer TTL or hop limit.
    pub(crate) ttl: u8,
}

/// Where the quoted packet's headers start, inside the ICMP message.
struct Quote {
    l3: usize,
    l4: usize,
}

/// What the quoted packet is.
enum Quoted {
    /// A TCP or UDP packet whose flow we may know.
    Flow(Quote),
    /// Something the kernel may know about: another protocol, a fragment, IPv4 options.
    Other,
    /// Cut short, or not the packet the error claims to be about.
    Broken,
}

/// What a translated error becomes: its new outer addresses, and the quoted packet's new
/// addresses and ports (network byte order).
struct Translation<'a> {
    outer_src: &'a Addr,
    outer_dst: &'a Addr,
    quoted_src: &'a Addr,
    quoted_sport: u16,
    quoted_dst: &'a Addr,
    quoted_dport: u16,
}

/// An ICMP or ICMPv6 message: translated and forwarded when it is an error about a balanced
/// flow, else passed or (to a VIP, when broken) dropped.
#[inline(always)]
pub(crate) fn translate(ctx: &XdpContext, packet: &IcmpPacket, scratch: &mut Scratch) -> Verdict {
    let key = &scratch.key;
    let to_vip = is_vip(&key.dst, key.family);
    let to_snat = !to_vip
        && SETTINGS
            .get(0)
            .is_some_and(|settings| is_snat_addr(settings, &key.dst, key.family));
    if !to_vip && !to_snat {
        return Verdict::pass(verdict::PASS_NO_LISTENER);
    }
    // As for the flows' own packets: a tag or an expiring TTL is the kernel's to handle.
    if let Some(verdict) = not_ours_to_forward(packet.tagged, packet.ttl) {
        return verdict;
    }
    // A VIP is ours alone: what we cannot make sense of goes nowhere. The SNAT address is
    // the node's own: its kernel has the last word.
    let unusable = if to_vip {
        Verdict::drop(verdict::DROP_ICMP)
    } else {
        Verdict::pass(verdict::PASS_NO_LISTENER)
    };
    let quote = packet.l4 + size_of::<IcmpHdr>();
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, packet.l4) else {
        return unusable;
    };
    // Verifier: read through a volatile load, so the compiler cannot turn "the IP packet
    // ends inside the frame" into proof that later accesses are in bounds and drop the
    // `ptr_at` checks the verifier needs to see.
    let ip_end = unsafe { core::ptr::read_volatile(&packet.ip_end) };
    if ip_end < quote || ctx.data() + ip_end > ctx.data_end() {
        return unusable;
    }
    if !is_error(key.family, unsafe { (*icmp).kind }) {
        return Verdict::pass(verdict::PASS_NO_LISTENER);
    }
    let quoted = match parse_quote(
        ctx,
        quote,
        packet.ip_end,
        key.family,
        &mut scratch.quoted_key,
    ) {
        Quoted::Flow(quoted) => quoted,
        Quoted::Other => return Verdict::pass(verdict::PASS_NO_LISTENER),
        Quoted::Broken => return unusable,
    };
    // An error goes to the sender of the packet it quotes.
    if scratch.quoted_key.dst != scratch.key.dst {
        return unusable;
    }
    if to_vip {
        to_backend(ctx, packet, &quoted, scratch)
    } else {
        to_client(ctx, packet, &quoted, scratch)
    }
}

/// An error from the client's side about a packet the VIP sent: to the flow's backend.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    packet: &IcmpPacket,
    quoted: &Quote,
    scratch: &mut Scratch,
) -> Verdict {
    let Some(flow) = CONNTRACK.get_ptr(&scratch.quoted_key) else {
        return Verdict::pass(verdict::PASS_NO_LISTENER);
    };
    // SAFETY: map values stay valid for the whole program run (RCU).
    let flow = unsafe { &*flow };
    let translation = Translation {
        outer_src: &flow.snat_addr,
        outer_dst: &flow.backend,
        quoted_src: &flow.backend,
        quoted_sport: flow.backend_port,
        quoted_dst: &flow.snat_addr,
        quoted_dport: flow.snat_port,
    };
    let route = Route {
        reason: verdict::FWD_ICMP_TO_BACKEND,
        listener_id: flow.listener_id,
        backend_id: flow.backend_id,
    };
    forward(ctx, packet, quoted, &translation, scratch, &route)
}

/// An error from a backend's side about a packet the SNAT address sent: to the flow's client.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    packet: &IcmpPacket,
    quoted: &Quote,
    scratch: &mut Scratch,
) -> Verdict {
    let Some(reverse) = SNAT.get_ptr(&scratch.quoted_key) else {
        return Verdict::pass(verdict::PASS_NO_LISTENER);
    };
    // SAFETY: as in `to_backend`.
    let reverse = unsafe { &*reverse };
    let translation = Translation {
        outer_src: &reverse.vip,
        outer_dst: &reverse.client,
        quoted_src: &reverse.client,
        quoted_sport: reverse.client_port,
        quoted_dst: &reverse.vip,
        quoted_dport: reverse.vip_port,
    };
    let route = Route {
        reason: verdict::FWD_ICMP_TO_CLIENT,
        listener_id: reverse.listener_id,
        backend_id: reverse.backend_id,
    };
    forward(ctx, packet, quoted, &translation, scratch, &route)
}

/// Whether an ICMP (`FAMILY_V4`) or ICMPv6 type is an error that quotes a packet of a flow:
/// destination unreachable (fragmentation needed among its codes) and time exceeded; for
/// ICMPv6 also packet too big.
#[inline(always)]
fn is_error(family: u8, kind: u8) -> bool {
    if family == FAMILY_V4 {
        matches!(kind, 3 | 11)
    } else {
        matches!(kind, 1..=3)
    }
}

/// Reads the quoted packet's addresses and ports into `key`, reversed: as the connection
/// table keys the flow the packet belongs to (its `dst` is the quoted packet's sender).
#[inline(always)]
fn parse_quote(
    ctx: &XdpContext,
    l3: usize,
    ip_end: usize,
    family: u8,
    key: &mut FlowKey,
) -> Quoted {
    let l4 = if family == FAMILY_V4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
            return Quoted::Broken;
        };
        let (version_ihl, frag_off) = unsafe { ((*ip).version_ihl, (*ip).frag_off) };
        if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
            return Quoted::Broken;
        }
        // Options would move the ports to a variable offset; the kernel can have those.
        // A fragment other than the first carries no ports.
        if version_ihl & 0x0f != 5 || u16::from_be(frag_off) & 0x1fff != 0 {
            return Quoted::Other;
        }
        unsafe {
            key.dst
                .set_words([packet_word(&raw const (*ip).src), 0, 0, 0]);
            key.src
                .set_words([packet_word(&raw const (*ip).dst), 0, 0, 0]);
            key.proto = (*ip).protocol;
        }
        l3 + size_of::<Ipv4Hdr>()
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
            return Quoted::Broken;
        };
        if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 {
            return Quoted::Broken;
        }
        unsafe {
            key.dst.set_words(packet_words(&raw const (*ip).src));
            key.src.set_words(packet_words(&raw const (*ip).dst));
            // Extension headers are other protocols here: the load balancer never sends them.
            key.proto = (*ip).next_header;
        }
        l3 + size_of::<Ipv6Hdr>()
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Quoted::Other;
    }
    key.family = family;
    key._pad = [0; 2];
    // RFC 792 quotes 8 bytes of the transport header at least: both ports, and for UDP its
    // checksum. The quote must end inside the ICMP message, not in Ethernet padding.
    if l4 + size_of::<UdpHdr>() > ip_end {
        return Quoted::Broken;
    }
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, l4) else {
        return Quoted::Broken;
    };
    unsafe {
        key.dport = (*ports)[0];
        key.sport = (*ports)[1];
    }
    Quoted::Flow(Quote { l3, l4 })
}

/// The tail of both directions: rewrite, send, count.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    packet: &IcmpPacket,
    quoted: &Quote,
    translation: &Translation<'_>,
    scratch: &mut Scratch,
    route: &Route,
) -> Verdict {
    if rewrite(
        ctx,
        packet,
        quoted,
        &scratch.key,
        &scratch.quoted_key,
        translation,
    )
    .is_none()
    {
        return Verdict::drop(verdict::DROP_ICMP);
    }
    let nat = Nat {
        src: translation.outer_src,
        sport: 0,
        dst: translation.outer_dst,
        dport: 0,
    };
    send_and_count(ctx, &scratch.key, &nat, &mut scratch.fib, route)
}

/// Rewrites the outer addresses from `outer`'s and the quoted packet's from `flow`'s (the
/// quoted packet reversed) to `translation`'s, every checksum updated incrementally.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    packet: &IcmpPacket,
    quoted: &Quote,
    outer: &FlowKey,
    flow: &FlowKey,
    translation: &Translation<'_>,
) -> Option<()> {
    let len = if outer.family == FAMILY_V4 { 4 } else { 16 };
    // The quoted packet was sent from `flow.dst`:`flow.dport` to `flow.src`:`flow.sport`.
    let mut addresses = Delta::new();
    addresses.addr(&flow.dst, translation.quoted_src, len);
    addresses.addr(&flow.src, translation.quoted_dst, len);
    // Its transport checksum covers its addresses (pseudo-header) and its ports.
    let mut transport = addresses;
    transport.word(flow.dport, translation.quoted_sport);
    transport.word(flow.sport, translation.quoted_dport);
    // The ICMP checksum covers every byte of the quote that changes.
    let mut icmp = transport;
    if outer.family == FAMILY_V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, quoted.l3)?;
        unsafe {
            let old = (*ip).check;
            let new = addresses.apply(old);
            icmp.word(old, new);
            (*ip).check = new;
            set_packet_word(&raw mut (*ip).src, translation.quoted_src.words()[0]);
            set_packet_word(&raw mut (*ip).dst, translation.quoted_dst.words()[0]);
        }
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, quoted.l3)?;
        unsafe {
            set_packet_words(&raw mut (*ip).src, translation.quoted_src.words());
            set_packet_words(&raw mut (*ip).dst, translation.quoted_dst.words());
        }
    }
    if flow.proto == PROTO_TCP {
        // The TCP checksum is quoted only when the quote is longer than RFC 792's 8 bytes.
        let check = quoted.l4 + offset_of!(TcpHdr, check);
        if check + size_of::<u16>() <= packet.ip_end {
            let check = ptr_at::<u16>(ctx, check)?;
            unsafe {
                let old = *check;
                let new = transport.apply(old);
                icmp.word(old, new);
                *check = new;
            }
        }
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, quoted.l4)?;
        unsafe {
            let old = (*udp).check;
            // IPv4 UDP without a checksum keeps none; IPv6 always has one.
            let new = if outer.family == FAMILY_V4 {
                transport.apply_udp(old)
            } else {
                match transport.apply(old) {
                    0 => 0xffff,
                    c => c,
                }
            };
            icmp.word(old, new);
            (*udp).check = new;
        }
    }
    let ports = ptr_at::<[u16; 2]>(ctx, quoted.l4)?;
    unsafe {
        (*ports)[0] = translation.quoted_sport;
        (*ports)[1] = translation.quoted_dport;
    }
    if outer.family == FAMILY_V4 {
        let mut outer_addresses = Delta::new();
        outer_addresses.addr(&outer.src, translation.outer_src, 4);
        outer_addresses.addr(&outer.dst, translation.outer_dst, 4);
        let ip = ptr_at::<Ipv4Hdr>(ctx, packet.l3)?;
        unsafe {
            // Forwarded like any packet: one hop less. The TTL shares a checksummed word
            // with the protocol.
            let (ttl, protocol) = ((*ip).ttl, (*ip).protocol);
            let ttl_after = ttl.saturating_sub(1);
            outer_addresses.word(
                u16::from_ne_bytes([ttl, protocol]),
                u16::from_ne_bytes([ttl_after, protocol]),
            );
            (*ip).ttl = ttl_after;
            (*ip).check = outer_addresses.apply((*ip).check);
            set_packet_word(&raw mut (*ip).src, translation.outer_src.words()[0]);
            set_packet_word(&raw mut (*ip).dst, translation.outer_dst.words()[0]);
        }
    } else {
        // The ICMPv6 checksum covers the outer addresses too (pseudo-header).
        let ip = ptr_at::<Ipv6Hdr>(ctx, packet.l3)?;
        unsafe {
            // No header checksum in IPv6 (nor is the hop limit in the pseudo-header).
            (*ip).hop_limit = (*ip).hop_limit.saturating_sub(1);
            set_packet_words(&raw mut (*ip).src, translation.outer_src.words());
            set_packet_words(&raw mut (*ip).dst, translation.outer_dst.words());
        }
        icmp.addr(&outer.src, translation.outer_src, 16);
        icmp.addr(&outer.dst, translation.outer_dst, 16);
    }
    let header = ptr_at::<IcmpHdr>(ctx, packet.l4)?;
    unsafe { (*header).check = icmp.apply((*header).check) };
    Some(())
}
