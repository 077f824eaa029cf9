//! The XDP data plane.
//!
//! Each frame goes through one pipeline: parse (Ethernet, one VLAN tag, IPv4/IPv6, TCP/UDP),
//! look up the listener, choose a backend (connection table, else the group's Maglev table),
//! rewrite (full NAT), and send (`bpf_fib_lookup`, then XDP_TX or a redirect). A backend's reply
//! to a full-NAT source address is matched in `SNAT` and rewritten back to the client.
//!
//! Policy for what we cannot balance safely, all counted in `VERDICTS`:
//! - not IP, or an IP header the kernel would reject: XDP_PASS (the kernel discards or handles
//!   it; we never forward it).
//! - IPv4 fragments and IPv6 packets with extension headers carry no ports we could trust (or
//!   would need walking): dropped when sent to a VIP, passed untouched otherwise.
//! - a truncated TCP/UDP header to a VIP: dropped.
//!
//! Nothing here returns XDP_ABORTED.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference on purpose: by value they would be copied onto the 512-byte BPF stack"
)]

mod headers;
mod maps;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action},
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    macros::xdp,
    maps::PerCpuArray,
    programs::XdpContext,
};
use headers::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr,
    VlanHdr, ptr_at,
};
use lb_common::{
    Addr, Counters, FAMILY_V4, FAMILY_V6, Flow, FlowKey, GroupInfo, ListenerInfo, ListenerKey,
    PROTO_TCP, PROTO_UDP, ReverseFlow, Settings, VipKey,
    checksum::Delta,
    conntrack, group_flags,
    hash::{flow_hash, source_hash},
    listener_kind, port_bits, verdict,
};
use maps::{
    BACKEND_STATS, BACKENDS, CONNTRACK, GROUPS, LISTENER_STATS, LISTENERS, MAGLEV, PORTS, SCRATCH,
    SETTINGS, SNAT, TX_PORTS, VERDICTS, VIPS,
};

/// How many SNAT source ports a new flow tries before it is dropped.
const SNAT_PORT_TRIES: u32 = 8;

/// A verdict and the reason counted for it.
#[derive(Clone, Copy)]
struct Verdict {
    action: u32,
    reason: u32,
}

impl Verdict {
    const fn pass(reason: u32) -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }

    const fn drop(reason: u32) -> Self {
        Self {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }
}

/// Where a parsed TCP/UDP packet's headers start. Its addresses, ports and protocol are in
/// `Scratch::key`.
struct Packet {
    l3: usize,
    l4: usize,
}

/// Per-CPU working memory for one packet. The BPF stack is 512 bytes and the inlined pipeline
/// would overflow it with these; a per-CPU map value is as fast and has room.
#[repr(C)]
pub struct Scratch {
    /// The packet's flow as it arrived (client → VIP, or backend → SNAT address).
    key: FlowKey,
    listener_key: ListenerKey,
    vip_key: VipKey,
    /// A new flow being created.
    flow: Flow,
    reverse: ReverseFlow,
    reverse_key: FlowKey,
    /// The flow whose SNAT port a new flow may take over.
    old_key: FlowKey,
    fib: FibParams,
}

/// What the parser found.
enum Parsed {
    /// A TCP or UDP packet we can balance.
    Packet(Packet),
    /// Anything else: its verdict is already known.
    Done(Verdict),
}

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let verdict = match SCRATCH.get_ptr_mut(0) {
        Some(scratch) => {
            // SAFETY: a per-CPU value, used by this program run alone.
            let scratch = unsafe { &mut *scratch };
            match parse(&ctx, &mut scratch.key) {
                Parsed::Packet(packet) => balance(&ctx, &packet, scratch),
                Parsed::Done(verdict) => verdict,
            }
        }
        None => Verdict::pass(verdict::PASS_NO_LISTENER),
    };
    count_verdict(verdict.reason);
    verdict.action
}

/// Passes every frame. The lab attaches it to veth peers: a veth drops XDP_TX frames unless its
/// peer runs an XDP program.
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Bounces every frame: the benchmarks' baseline for the cost of XDP itself.
#[xdp]
pub fn tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Parses up to the ports, filling `key` (addresses, ports, protocol, family).
#[inline(always)]
fn parse(ctx: &XdpContext, key: &mut FlowKey) -> Parsed {
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
    // Only TCP and UDP are balanced; ICMP and the rest go to the kernel.
    let header = match key.proto {
        PROTO_TCP => size_of::<TcpHdr>(),
        PROTO_UDP => size_of::<UdpHdr>(),
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

#[inline(always)]
fn balance(ctx: &XdpContext, packet: &Packet, scratch: &mut Scratch) -> Verdict {
    let key = &scratch.key;
    // Field by field: a struct literal would be built on the stack first (BPF stack: 512 bytes).
    let listener_key = &mut scratch.listener_key;
    listener_key.addr.set(&key.dst);
    listener_key.port = key.dport;
    listener_key.proto = key.proto;
    listener_key.family = key.family;
    let key_ptr: *const FlowKey = key;
    // The port filter (an array lookup, inlined by the JIT) spares traffic to ports no
    // listener uses the hash lookup: the node's own traffic pays as little as possible.
    let port_used = match PORTS.get(u32::from(u16::from_be(key.dport))) {
        Some(bits) => bits & port_bit(key.proto) != 0,
        None => false,
    };
    if port_used && let Some(listener) = LISTENERS.get_ptr(&scratch.listener_key) {
        // SAFETY: map values stay valid for the whole program run (RCU).
        let listener = unsafe { &*listener };
        if listener.kind != listener_kind::L4_NAT {
            return Verdict::pass(verdict::PASS_TO_STACK);
        }
        return to_backend(ctx, packet, listener, scratch);
    }
    let Some(settings) = SETTINGS.get(0) else {
        return Verdict::pass(verdict::PASS_NO_LISTENER);
    };
    // SAFETY: this CPU's scratch, unchanged since parsing.
    let key = unsafe { &*key_ptr };
    if is_snat_addr(settings, &key.dst, key.family)
        && let Some(reverse) = SNAT.get_ptr_mut(key)
    {
        // SAFETY: map values stay valid for the whole program run (RCU); a racing writer
        // can only make `last_seen` or `closing` a little off.
        unsafe {
            touch(
                &mut (*reverse).last_seen,
                &mut (*reverse).closing,
                closes(ctx, packet, key),
            );
        }
        let reverse = unsafe { &*reverse };
        return to_client(ctx, packet, &scratch.key, reverse, &mut scratch.fib);
    }
    Verdict::pass(verdict::PASS_NO_LISTENER)
}

/// A client's packet to a listener: find or make its flow, rewrite, send to the backend.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    packet: &Packet,
    listener: &ListenerInfo,
    scratch: &mut Scratch,
) -> Verdict {
    let flow = match CONNTRACK.get_ptr_mut(&scratch.key) {
        // A SYN opens a new connection even if its 5-tuple is still in the table (a reused
        // client port): it must go where Maglev sends new flows now, not to a stale backend.
        Some(flow) if is_syn(ctx, packet, &scratch.key) => {
            let Some(settings) = SETTINGS.get(0) else {
                return Verdict::drop(verdict::DROP_NO_BACKEND);
            };
            let current = match pick_backend(settings, listener, &scratch.key) {
                Ok((backend_id, _)) => backend_id,
                Err(verdict) => return verdict,
            };
            // SAFETY: a connection-table value, valid for the whole run.
            if unsafe { (*flow).backend_id } == current {
                // The same backend: the entry serves the new connection, from now on.
                unsafe {
                    (*flow).last_seen = now();
                    (*flow).closing = 0;
                }
                flow as *const Flow
            } else {
                forget_reverse(unsafe { &*flow }, &scratch.key, &mut scratch.reverse_key);
                match new_flow(listener, scratch, true) {
                    Ok(flow) => flow,
                    Err(verdict) => return verdict,
                }
            }
        }
        Some(flow) => {
            // SAFETY: as above.
            unsafe {
                touch(
                    &mut (*flow).last_seen,
                    &mut (*flow).closing,
                    closes(ctx, packet, &scratch.key),
                );
            }
            flow as *const Flow
        }
        None => match new_flow(listener, scratch, false) {
            Ok(flow) => flow,
            Err(verdict) => return verdict,
        },
    };
    // SAFETY: a connection-table value or this CPU's scratch: valid for the whole run.
    let flow = unsafe { &*flow };
    let nat = Nat {
        src: &flow.snat_addr,
        sport: flow.snat_port,
        dst: &flow.backend,
        dport: flow.backend_port,
    };
    let route = Route {
        reason: verdict::FWD_TO_BACKEND,
        listener_id: flow.listener_id,
        backend_id: flow.backend_id,
    };
    forward(ctx, packet, &scratch.key, &nat, &mut scratch.fib, &route)
}

/// This protocol's bit in `PORTS`.
#[inline(always)]
fn port_bit(proto: u8) -> u32 {
    if proto == PROTO_TCP {
        port_bits::TCP
    } else {
        port_bits::UDP
    }
}

/// A TCP segment with SYN and without ACK: a client opening a connection.
#[inline(always)]
fn is_syn(ctx: &XdpContext, packet: &Packet, key: &FlowKey) -> bool {
    tcp_flags(ctx, packet, key) & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a TCP packet ends its connection (FIN or RST).
#[inline(always)]
fn closes(ctx: &XdpContext, packet: &Packet, key: &FlowKey) -> bool {
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

/// The clock of `last_seen`.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Notes a packet of a flow: `last_seen` moves on (at most once a `REFRESH_NS`, so a busy
/// flow writes its entry once a second, not per packet), and a FIN or RST marks it closing
/// (and moves `last_seen` to it).
#[inline(always)]
fn touch(last_seen: &mut u64, closing: &mut u8, closes: bool) {
    let now = now();
    if now.wrapping_sub(*last_seen) > conntrack::REFRESH_NS {
        *last_seen = now;
    }
    if closes && *closing == 0 {
        // The closed timeout counts from the FIN or RST itself.
        *closing = 1;
        *last_seen = now;
    }
}

/// The backend Maglev gives a new flow `key` of `listener` now, and the flow's hash.
#[inline(always)]
fn pick_backend(
    settings: &Settings,
    listener: &ListenerInfo,
    key: &FlowKey,
) -> Result<(u32, u32), Verdict> {
    let no_backend = Verdict::drop(verdict::DROP_NO_BACKEND);
    let group = GROUPS.get(listener.group_id).ok_or(no_backend)?;
    let hash = flow_hash(key);
    let pick = if group.flags & group_flags::STICKY_SOURCE_IP != 0 {
        source_hash(&key.src, key.family)
    } else {
        hash
    };
    let maglev_size = settings.maglev_size;
    if maglev_size == 0 {
        return Err(no_backend);
    }
    let slot = GroupInfo::maglev_base(listener.group_id, group.active_slot, maglev_size)
        + pick % maglev_size;
    match MAGLEV.get(slot) {
        Some(&id) if id != 0 => Ok((id, hash)),
        _ => Err(no_backend),
    }
}

/// Removes the reverse-NAT entry of a flow that is being replaced.
#[inline(always)]
fn forget_reverse(flow: &Flow, key: &FlowKey, reverse_key: &mut FlowKey) {
    reverse_key.src.set(&flow.backend);
    reverse_key.dst.set(&flow.snat_addr);
    reverse_key.sport = flow.backend_port;
    reverse_key.dport = flow.snat_port;
    reverse_key.proto = key.proto;
    reverse_key.family = key.family;
    reverse_key._pad = [0; 2];
    let _ = SNAT.remove(&*reverse_key);
}

/// A flow's first packet (or a new connection's SYN replacing a stale entry, `replace`):
/// Maglev picks the backend, a free SNAT port is claimed, and both directions enter the
/// connection table. Returns the flow as stored.
#[inline(always)]
fn new_flow(
    listener: &ListenerInfo,
    scratch: &mut Scratch,
    replace: bool,
) -> Result<*const Flow, Verdict> {
    let settings = SETTINGS
        .get(0)
        .ok_or(Verdict::drop(verdict::DROP_NO_BACKEND))?;
    let (backend_id, hash) = pick_backend(settings, listener, &scratch.key)?;
    let key = &scratch.key;
    let backend = BACKENDS
        .get(backend_id)
        .ok_or(Verdict::drop(verdict::DROP_NO_BACKEND))?;
    let snat_addr = snat_addr(settings, key.family).ok_or(Verdict::drop(verdict::DROP_NO_SNAT))?;
    // Field by field, into per-CPU memory: struct literals would be built on the stack.
    let reverse = &mut scratch.reverse;
    reverse.client.set(&key.src);
    reverse.vip.set(&key.dst);
    reverse.client_port = key.sport;
    reverse.vip_port = key.dport;
    reverse.backend_id = backend_id;
    reverse.listener_id = listener.listener_id;
    let now = now();
    reverse.closing = 0;
    reverse._pad = [0; 3];
    reverse.last_seen = now;
    let reverse_key = &mut scratch.reverse_key;
    reverse_key.src.set(&backend.addr);
    reverse_key.dst.set(snat_addr);
    reverse_key.sport = backend.port;
    reverse_key.proto = key.proto;
    reverse_key.family = backend.family;
    reverse_key._pad = [0; 2];
    let snat_port = claim_snat_port(
        settings,
        hash,
        &mut scratch.reverse_key,
        &scratch.reverse,
        &mut scratch.old_key,
        now,
    )
    .ok_or(Verdict::drop(verdict::DROP_NO_SNAT))?;
    let flow = &mut scratch.flow;
    flow.backend.set(&backend.addr);
    flow.backend_port = backend.port;
    flow.snat_port = snat_port;
    flow.snat_addr.set(snat_addr);
    flow.backend_id = backend_id;
    flow.listener_id = listener.listener_id;
    flow.closing = 0;
    flow._pad = [0; 3];
    flow.last_seen = now;
    let flags = if replace { BPF_ANY } else { BPF_NOEXIST };
    if CONNTRACK
        .insert(&scratch.key, &scratch.flow, u64::from(flags))
        .is_err()
    {
        // Another CPU created this flow first (or the table refused): undo our claim and
        // follow the winner, so both directions agree on one SNAT port.
        let _ = SNAT.remove(&scratch.reverse_key);
        return match CONNTRACK.get_ptr(&scratch.key) {
            Some(existing) => Ok(existing),
            None => Err(Verdict::drop(verdict::DROP_MAP_FULL)),
        };
    }
    count_new_flow(&LISTENER_STATS, listener.listener_id);
    count_new_flow(&BACKEND_STATS, backend_id);
    Ok(&raw const scratch.flow)
}

/// Claims a source port towards the backend that no live flow uses: the reverse entry is
/// inserted only if absent, so two clients can never share (SNAT address, port, backend), or
/// over the entry of a flow that is over (idle past its timeout, or closed and quiet), whose
/// connection-table entry goes with it. Returns the port in network byte order.
#[inline(always)]
fn claim_snat_port(
    settings: &Settings,
    hash: u32,
    reverse_key: &mut FlowKey,
    reverse: &ReverseFlow,
    old_key: &mut FlowKey,
    now: u64,
) -> Option<u16> {
    let min = u32::from(settings.snat_port_min);
    let span = u32::from(settings.snat_port_max).saturating_sub(min) + 1;
    let start = hash % span;
    for attempt in 0..SNAT_PORT_TRIES {
        // A prime stride, so retries scatter instead of probing a crowded neighbourhood.
        let port = ((min + (start + attempt * 7919) % span) as u16).to_be();
        reverse_key.dport = port;
        if SNAT
            .insert(&*reverse_key, reverse, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some(port);
        }
        if over(settings, reverse_key, old_key, now)
            && SNAT
                .insert(&*reverse_key, reverse, u64::from(BPF_ANY))
                .is_ok()
        {
            return Some(port);
        }
    }
    None
}

/// Whether the flow holding the SNAT entry `reverse_key` is over; if it is, its connection-
/// table entry is removed (its client's next packet starts a new flow).
#[inline(always)]
fn over(settings: &Settings, reverse_key: &FlowKey, old_key: &mut FlowKey, now: u64) -> bool {
    let Some(old) = SNAT.get_ptr(reverse_key) else {
        return true;
    };
    // SAFETY: a map value, valid for the whole run.
    let old = unsafe { &*old };
    old_key.src.set(&old.client);
    old_key.dst.set(&old.vip);
    old_key.sport = old.client_port;
    old_key.dport = old.vip_port;
    old_key.proto = reverse_key.proto;
    old_key.family = reverse_key.family;
    old_key._pad = [0; 2];
    let forward = CONNTRACK
        .get_ptr(&*old_key)
        .map(|f| unsafe { &*f })
        .filter(|f| {
            // The client's 5-tuple may carry a newer flow now, with a port of its own.
            f.snat_port == reverse_key.dport && f.backend_id == old.backend_id
        });
    let (seen, closing) = match forward {
        Some(f) => (
            if f.last_seen > old.last_seen {
                f.last_seen
            } else {
                old.last_seen
            },
            f.closing | old.closing != 0,
        ),
        // Its connection-table entry is gone (evicted or replaced): only replies are left.
        None => (old.last_seen, true),
    };
    if !conntrack::expired(settings, reverse_key.proto, closing, seen, now) {
        return false;
    }
    if forward.is_some() {
        let _ = CONNTRACK.remove(&*old_key);
    }
    true
}

/// A backend's reply to a full-NAT address: rewrite it back into the client's flow.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    packet: &Packet,
    key: &FlowKey,
    reverse: &ReverseFlow,
    fib: &mut FibParams,
) -> Verdict {
    let nat = Nat {
        src: &reverse.vip,
        sport: reverse.vip_port,
        dst: &reverse.client,
        dport: reverse.client_port,
    };
    let route = Route {
        reason: verdict::FWD_TO_CLIENT,
        listener_id: reverse.listener_id,
        backend_id: reverse.backend_id,
    };
    forward(ctx, packet, key, &nat, fib, &route)
}

/// Which way a rewritten packet goes, for its counters.
struct Route {
    reason: u32,
    listener_id: u32,
    backend_id: u32,
}

/// The tail of both directions: rewrite, send, count.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    key: &FlowKey,
    nat: &Nat<'_>,
    fib: &mut FibParams,
    route: &Route,
) -> Verdict {
    if rewrite(ctx, packet, key, nat).is_none() {
        return Verdict::drop(verdict::DROP_MALFORMED);
    }
    let verdict = send(ctx, key, nat, fib, route.reason);
    if verdict.action != xdp_action::XDP_DROP {
        let bytes = frame_len(ctx);
        count_packet(&LISTENER_STATS, route.listener_id, bytes);
        count_packet(&BACKEND_STATS, route.backend_id, bytes);
    }
    verdict
}

/// The addresses and ports a packet is rewritten to (ports in network byte order).
struct Nat<'a> {
    src: &'a Addr,
    sport: u16,
    dst: &'a Addr,
    dport: u16,
}

/// Rewrites addresses and ports from `key`'s to `nat`'s, updating the IPv4 header checksum and
/// the TCP/UDP checksum (whose pseudo-header covers the addresses) incrementally.
#[inline(always)]
fn rewrite(ctx: &XdpContext, packet: &Packet, key: &FlowKey, nat: &Nat<'_>) -> Option<()> {
    let mut delta = Delta::new();
    if key.family == FAMILY_V4 {
        delta.addr(&key.src, nat.src, 4);
        delta.addr(&key.dst, nat.dst, 4);
        let ip = ptr_at::<Ipv4Hdr>(ctx, packet.l3)?;
        unsafe {
            (*ip).check = delta.apply((*ip).check);
            set_packet_word(&raw mut (*ip).src, nat.src.words()[0]);
            set_packet_word(&raw mut (*ip).dst, nat.dst.words()[0]);
        }
    } else {
        delta.addr(&key.src, nat.src, 16);
        delta.addr(&key.dst, nat.dst, 16);
        let ip = ptr_at::<Ipv6Hdr>(ctx, packet.l3)?;
        unsafe {
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

/// `struct bpf_fib_lookup` (uapi/linux/bpf.h), laid out flat: the unions we use as one member.
#[repr(C)]
pub struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    ifindex: u32,
    flowinfo: u32,
    src: Addr,
    dst: Addr,
    vlan_proto: u16,
    vlan_tci: u16,
    smac: [u16; 3],
    dmac: [u16; 3],
}
const _: () = assert!(size_of::<FibParams>() == 64);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// Routes the rewritten packet: the kernel's FIB and neighbour tables give the next hop, then
/// XDP_TX back out of the same NIC or a redirect to another one.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    key: &FlowKey,
    nat: &Nat<'_>,
    fib: &mut FibParams,
    reason: u32,
) -> Verdict {
    let ingress = ctx.ingress_ifindex() as u32;
    // Field by field, into per-CPU memory: a struct literal would be built on the stack.
    fib.family = if key.family == FAMILY_V4 {
        AF_INET
    } else {
        AF_INET6
    };
    fib.l4_protocol = key.proto;
    fib.sport = 0;
    fib.dport = 0;
    // 0: no MTU check; the frame is no longer than when it arrived.
    fib.tot_len = 0;
    fib.ifindex = ingress;
    fib.flowinfo = 0;
    fib.src.set(nat.src);
    fib.dst.set(nat.dst);
    // vlan_*, smac and dmac are outputs (their union twins, tbid and mark, are read only
    // with flags we do not pass): no need to clear them.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            (fib as *mut FibParams).cast(),
            size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Verdict::drop(verdict::DROP_NO_NEIGH),
        _ => return Verdict::drop(verdict::DROP_NO_ROUTE),
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::drop(verdict::DROP_MALFORMED);
    };
    unsafe {
        (*eth).dst = [fib.dmac[0], fib.dmac[1], fib.dmac[2]];
        (*eth).src = [fib.smac[0], fib.smac[1], fib.smac[2]];
    }
    if fib.ifindex == ingress {
        return Verdict {
            action: xdp_action::XDP_TX,
            reason,
        };
    }
    let action = match TX_PORTS.redirect(fib.ifindex, 0) {
        Ok(action) => action,
        // Not in the devmap: the slower generic redirect still delivers it.
        Err(_) => unsafe { bpf_redirect(fib.ifindex, 0) as u32 },
    };
    Verdict { action, reason }
}

#[inline(always)]
fn snat_addr(settings: &Settings, family: u8) -> Option<&Addr> {
    match family {
        FAMILY_V4 if settings.has_snat_v4 != 0 => Some(&settings.snat_v4),
        FAMILY_V6 if settings.has_snat_v6 != 0 => Some(&settings.snat_v6),
        _ => None,
    }
}

#[inline(always)]
fn is_snat_addr(settings: &Settings, addr: &Addr, family: u8) -> bool {
    snat_addr(settings, family).is_some_and(|snat| snat == addr)
}

#[inline(always)]
fn is_vip(addr: &Addr, family: u8) -> bool {
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

/// An IPv4 address in the packet (2-byte aligned) as a native-endian word, read in halves:
/// BPF has no unaligned loads, and a byte-wise copy would call a slow memmove.
#[inline(always)]
unsafe fn packet_word(p: *const [u8; 4]) -> u32 {
    let h = p.cast::<u16>();
    // Little-endian (bpfel): the first half is the low half.
    unsafe { u32::from(h.read()) | (u32::from(h.add(1).read()) << 16) }
}

/// An IPv6 address in the packet as four native-endian words.
#[inline(always)]
unsafe fn packet_words(p: *const [u8; 16]) -> [u32; 4] {
    let w = p.cast::<[u8; 4]>();
    unsafe {
        [
            packet_word(w),
            packet_word(w.add(1)),
            packet_word(w.add(2)),
            packet_word(w.add(3)),
        ]
    }
}

/// Writes a native-endian word as an IPv4 address into the packet, in halves.
#[inline(always)]
unsafe fn set_packet_word(p: *mut [u8; 4], w: u32) {
    let h = p.cast::<u16>();
    unsafe {
        h.write(w as u16);
        h.add(1).write((w >> 16) as u16);
    }
}

/// Writes four native-endian words as an IPv6 address into the packet.
#[inline(always)]
unsafe fn set_packet_words(p: *mut [u8; 16], w: [u32; 4]) {
    let q = p.cast::<[u8; 4]>();
    unsafe {
        set_packet_word(q, w[0]);
        set_packet_word(q.add(1), w[1]);
        set_packet_word(q.add(2), w[2]);
        set_packet_word(q.add(3), w[3]);
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

#[inline(always)]
fn count_packet(stats: &PerCpuArray<Counters>, id: u32, bytes: u64) {
    if let Some(c) = stats.get_ptr_mut(id) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
fn count_new_flow(stats: &PerCpuArray<Counters>, id: u32) {
    if let Some(c) = stats.get_ptr_mut(id) {
        unsafe { (*c).new_flows += 1 };
    }
}

#[inline(always)]
fn count_verdict(reason: u32) {
    if let Some(c) = VERDICTS.get_ptr_mut(reason) {
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
