//! The XDP data plane.
//!
//! Each frame goes through one pipeline: parse (Ethernet, VLAN tags, IPv4/IPv6, TCP/UDP),
//! look up the listener, choose a backend (connection table, else the group's Maglev table),
//! rewrite (full NAT), and send (`bpf_fib_lookup`, then XDP_TX or a redirect). A backend's reply
//! to a full-NAT source address is matched in `SNAT` and rewritten back to the client.
//!
//! Policy for what we cannot balance safely, all counted in `VERDICTS`:
//! - not IP, or an IP header the kernel would reject: XDP_PASS (the kernel discards or handles
//!   it; we never forward it).
//! - IPv4 fragments and IPv6 packets with extension headers carry no ports we could trust (or
//!   would need walking): dropped when sent to a VIP, passed untouched otherwise.
//! - a TCP/UDP packet to a VIP whose headers a target would discard (truncated, lengths that
//!   disagree, a bad TCP data offset, SYN with FIN or RST, a martian source, two VLAN tags):
//!   dropped before any state is created (`parse`).
//! - a VLAN-tagged frame, or a TTL / hop limit of 1 or 0, to a listener or a full-NAT address:
//!   passed untouched to the kernel (`not_ours_to_forward`).
//! - forwarded packets leave with the TTL / hop limit one lower; a next hop behind an
//!   interface outside the redirect map is a drop (DROP_REDIRECT), never counted as forwarded.
//! - a TCP segment other than a SYN that belongs to no flow: dropped, claiming nothing.
//! - a new flow over its listener's per-CPU rate (`new_flow_rate_limit`): dropped.
//!
//! Nothing here returns XDP_ABORTED.
#![no_std]
#![no_main]
// Port takeover compares and swaps a generation (`flow::take_over`); BPF has the instruction
// but Rust's BPF target exposes no `compare_exchange`.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_cxchg and atomic_xadd: see above")]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference on purpose: by value they would be copied onto the 512-byte BPF stack"
)]

mod bench;
mod flow;
mod headers;
mod icmp;
mod maps;
mod nat;
mod parse;
mod send;

use aya_ebpf::{bindings::xdp_action, macros::xdp, maps::PerCpuArray, programs::XdpContext};
use flow::{to_backend, touch};
use lb_common::{
    Addr, Counters, FAMILY_V4, FAMILY_V6, Flow, FlowKey, ListenerKey, PROTO_TCP, ReverseFlow,
    Settings, VipKey, listener_kind, port_bits, verdict,
};
use maps::{BACKEND_STATS, LISTENER_STATS, LISTENERS, PORTS, SCRATCH, SETTINGS, SNAT, VERDICTS};
use nat::{Nat, rewrite};
use parse::{closes, parse};
use send::{FibParams, send};

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
    /// Whether the frame carries a VLAN tag (then it is never balanced: see `balance`).
    tagged: bool,
    /// IPv4 TTL or IPv6 hop limit, as it arrived.
    ttl: u8,
    /// The TCP header's data offset and flags word, host order (read once, in `parse`); 0 for
    /// UDP.
    tcp_flags: u16,
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
    /// The flow an ICMP error is about, as the connection table keys it (`icmp`).
    quoted_key: FlowKey,
}

/// What the parser found.
enum Parsed {
    /// A TCP or UDP packet we can balance.
    Packet(Packet),
    /// An ICMP or ICMPv6 message: an error about a balanced flow is translated (`icmp`).
    Icmp(icmp::IcmpPacket),
    /// Anything else: its verdict is already known.
    Done(Verdict),
}

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// The whole pipeline for one frame; returns the XDP action.
#[inline(always)]
fn run(ctx: &XdpContext) -> u32 {
    let verdict = match SCRATCH.get_ptr_mut(0) {
        Some(scratch) => {
            // SAFETY: a per-CPU value, used by this program run alone.
            let scratch = unsafe { &mut *scratch };
            match parse(ctx, &mut scratch.key) {
                Parsed::Packet(packet) => balance(ctx, &packet, scratch),
                Parsed::Icmp(packet) => icmp::translate(ctx, &packet, scratch),
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

/// Benchmarks only: `lb` on a frame it then puts back as it found it.
///
/// BPF_PROG_TEST_RUN's `repeat` runs a program again and again on one buffer, so a frame the
/// program rewrites is another frame the second time (an established flow's packet, once
/// NATed, is addressed to the target: no listener's). This keeps the frame's first
/// `bench::SAVED_BYTES` bytes aside and writes them back after the run, so every run takes
/// the same path. `tx_restoring` pays the same save and restore around a bare XDP_TX: the
/// difference of the two is the pipeline's own cost.
#[xdp]
pub fn lb_restoring(ctx: XdpContext) -> u32 {
    // Too short to keep aside: passed, which the benchmark refuses as a result.
    if !bench::save(&ctx) {
        return xdp_action::XDP_PASS;
    }
    let action = run(&ctx);
    bench::restore(&ctx);
    action
}

/// Benchmarks only: the save and restore of `lb_restoring` around a bare XDP_TX.
#[xdp]
pub fn tx_restoring(ctx: XdpContext) -> u32 {
    if !bench::save(&ctx) {
        return xdp_action::XDP_PASS;
    }
    bench::restore(&ctx);
    xdp_action::XDP_TX
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
        if let Some(verdict) = not_ours_to_forward(packet.tagged, packet.ttl) {
            return verdict;
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
        if let Some(verdict) = not_ours_to_forward(packet.tagged, packet.ttl) {
            return verdict;
        }
        // SAFETY: map values stay valid for the whole program run (RCU); a racing writer
        // can only make `last_seen` or `closing` a little off.
        unsafe {
            touch(
                &mut (*reverse).last_seen,
                &mut (*reverse).closing,
                closes(ctx, packet, key),
            );
            // The backend answered: the flow is no longer half-open. Written once.
            if (*reverse).answered == 0 {
                (*reverse).answered = 1;
            }
        }
        let reverse = unsafe { &*reverse };
        return to_client(ctx, packet, &scratch.key, reverse, &mut scratch.fib);
    }
    Verdict::pass(verdict::PASS_NO_LISTENER)
}

/// A packet to a listener or a full-NAT address that we leave to the kernel, before any state
/// is touched for it:
/// - a VLAN-tagged frame: the FIB would be asked as if it came in untagged on the parent NIC
///   and the frame would leave with its ingress tag, whatever its egress; the kernel's VLAN
///   device routes it right (slower, but never onto the wrong VLAN).
/// - a TTL or hop limit that forwarding would take to 0: the kernel answers it (ICMP time
///   exceeded), as the router we stand in for must.
#[inline(always)]
fn not_ours_to_forward(tagged: bool, ttl: u8) -> Option<Verdict> {
    if tagged {
        return Some(Verdict::pass(verdict::PASS_VLAN));
    }
    if ttl <= 1 {
        return Some(Verdict::pass(verdict::PASS_TTL_EXPIRED));
    }
    None
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
    send_and_count(ctx, key, nat, fib, route)
}

/// Sends a rewritten packet (`send`) and counts it for its listener and backend unless it
/// was dropped.
#[inline(always)]
fn send_and_count(
    ctx: &XdpContext,
    key: &FlowKey,
    nat: &Nat<'_>,
    fib: &mut FibParams,
    route: &Route,
) -> Verdict {
    let verdict = send(ctx, key, nat, fib, route.reason);
    if verdict.action != xdp_action::XDP_DROP {
        let bytes = frame_len(ctx);
        count_packet(&LISTENER_STATS, route.listener_id, bytes);
        count_packet(&BACKEND_STATS, route.backend_id, bytes);
    }
    verdict
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
