//! Types and pure functions shared by the XDP program (`lb-ebpf`) and the agent (`lb-agent`).
//!
//! Every map key and value the two sides exchange is defined here once, `#[repr(C)]`, with
//! explicit padding and a compile-time size check, so the kernel and userspace can never
//! disagree about a layout. The flow hash and the checksum arithmetic live here too: the data
//! plane runs them per packet, and host tests run the very same code to predict its choices.
#![no_std]

// The userspace-only parts (`xdp_attachment`) run commands and parse JSON; tests use std.
#[cfg(any(feature = "user", test))]
extern crate std;

pub mod checksum;
pub mod hash;
#[cfg(feature = "user")]
pub mod xdp_attachment;

/// Address family tag used in keys: IPv4.
pub const FAMILY_V4: u8 = 4;
/// Address family tag used in keys: IPv6.
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Map names, shared so the agent and tests never spell them differently from the program.
pub mod map_names {
    pub const LISTENERS: &str = "LISTENERS";
    pub const PORTS: &str = "PORTS";
    pub const VIPS: &str = "VIPS";
    pub const GROUPS: &str = "GROUPS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const SNAT: &str = "SNAT";
    pub const SETTINGS: &str = "SETTINGS";
    pub const LISTENER_STATS: &str = "LISTENER_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const VERDICTS: &str = "VERDICTS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const NEXT_HOP_MISSES: &str = "NEXT_HOP_MISSES";
}

/// Program names inside the object.
pub mod program_names {
    /// The load balancer.
    pub const LB: &str = "lb";
    /// Passes every frame: the lab attaches it to veth peers so XDP_TX frames are received.
    pub const PASS: &str = "pass";
    /// Bounces every frame: the benchmarks' baseline for the cost of XDP itself.
    pub const TX: &str = "tx";
    /// Benchmarks only: `lb` on a frame it puts back as it found it, so `repeat` runs take
    /// one path again and again.
    pub const LB_RESTORING: &str = "lb_restoring";
    /// Benchmarks only: the same save and restore around a bare XDP_TX.
    pub const TX_RESTORING: &str = "tx_restoring";
}

/// Capacity of the maps indexed by id. Ids are dense and assigned by the agent.
pub const MAX_LISTENERS: u32 = 1024;
/// Backend id 0 is never used, so an empty Maglev slot (0) always means "no backend".
pub const MAX_BACKENDS: u32 = 65536;
/// Target groups. Each owns two Maglev slots of `SETTINGS.maglev_size` entries.
pub const MAX_GROUPS: u32 = 256;
/// Default connection-table capacity (flows); SNAT holds one reverse entry per flow. The
/// agent sizes both maps at load time from `agent.connection_table_size`.
pub const CONNTRACK_SIZE: u32 = 1 << 20;
/// Default Maglev table size: prime, and > 100 × the largest expected group.
pub const DEFAULT_MAGLEV_SIZE: u32 = 65537;

/// An IP address as 16 bytes in network byte order. IPv4 fills the first 4 bytes, rest zero.
///
/// 4-byte aligned so the data plane compares, copies and hashes it in 32-bit words: BPF has no
/// unaligned loads, and byte-wise code spills registers until the 512-byte stack overflows.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Eq, Default)]
pub struct Addr(pub [u8; 16]);
const _: () = assert!(size_of::<Addr>() == 16);

impl Addr {
    /// An IPv4 address from its 4 octets.
    #[inline(always)]
    pub const fn v4(o: [u8; 4]) -> Self {
        Self([o[0], o[1], o[2], o[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// The address as four native-endian words (aligned loads).
    #[inline(always)]
    pub fn words(&self) -> [u32; 4] {
        let p = (self as *const Self).cast::<u32>();
        // SAFETY: `Addr` is 16 bytes, 4-byte aligned, every bit pattern valid. Word by word:
        // an aggregate copy may become a call to a byte-wise memmove in BPF.
        unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] }
    }

    /// Overwrites the address with four native-endian words (aligned stores).
    #[inline(always)]
    pub fn set_words(&mut self, w: [u32; 4]) {
        let p = (self as *mut Self).cast::<u32>();
        // SAFETY: as for `words`.
        unsafe {
            p.write(w[0]);
            p.add(1).write(w[1]);
            p.add(2).write(w[2]);
            p.add(3).write(w[3]);
        }
    }

    /// Copies `other` in, word by word (`*self = *other` may become a byte-wise memmove in BPF).
    #[inline(always)]
    pub fn set(&mut self, other: &Addr) {
        self.set_words(other.words());
    }

    /// The address as eight native-endian 16-bit words, as the Internet checksum sums them.
    #[inline(always)]
    pub fn halves(&self) -> [u16; 8] {
        let p = (self as *const Self).cast::<u16>();
        // SAFETY: as for `words`.
        unsafe {
            [
                p.read(),
                p.add(1).read(),
                p.add(2).read(),
                p.add(3).read(),
                p.add(4).read(),
                p.add(5).read(),
                p.add(6).read(),
                p.add(7).read(),
            ]
        }
    }
}

// Equal addresses have equal bytes, so hashing the bytes agrees with `eq`.
impl core::hash::Hash for Addr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Addr {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
    }
}

/// `LISTENERS` key: what a packet is matched on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenerKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`; a `tcp_udp` listener is two keys.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}
const _: () = assert!(size_of::<ListenerKey>() == 20);

/// `PORTS` value bits: which protocols have a listener on a port (any address).
pub mod port_bits {
    pub const TCP: u32 = 1;
    pub const UDP: u32 = 2;
}

/// What to do with a listener's packets.
pub mod listener_kind {
    /// L4: Maglev, connection table, full NAT in XDP.
    pub const L4_NAT: u8 = 1;
    /// L7 (or anything the agent serves itself): hand the packet to the kernel stack.
    pub const PASS_TO_STACK: u8 = 2;
}

/// `LISTENERS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenerInfo {
    /// Index into `LISTENER_STATS`.
    pub listener_id: u32,
    /// Index into `GROUPS`.
    pub group_id: u32,
    /// One of `listener_kind`.
    pub kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ListenerInfo>() == 12);

/// `VIPS` key: an address some listener uses. Fragments and IPv6 packets with extension
/// headers sent to such an address are dropped (we cannot tell their ports); to any other
/// address they pass untouched.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: Addr,
    pub family: u8,
    /// Padding as a byte and a half-word: the data plane zeroes it with two stores (three
    /// zeroed bytes become a call to a byte-wise memset in BPF).
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// Group flags.
pub mod group_flags {
    /// Stickiness `source_ip`: new flows hash on the client address alone.
    pub const STICKY_SOURCE_IP: u32 = 1;
}

/// `GROUPS` value, indexed by group id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GroupInfo {
    /// Which of the group's two Maglev slots (0 or 1) new flows read. The agent fills the
    /// other slot, then flips this in one map write.
    pub active_slot: u32,
    /// `group_flags`.
    pub flags: u32,
}
const _: () = assert!(size_of::<GroupInfo>() == 8);

impl GroupInfo {
    /// Index of the first entry of `slot` of `group` in `MAGLEV`.
    #[inline(always)]
    pub fn maglev_base(group_id: u32, slot: u32, maglev_size: u32) -> u32 {
        (group_id * 2 + (slot & 1)) * maglev_size
    }
}

/// `BACKENDS` value, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Backend>() == 20);

/// A flow as seen in one direction: `CONNTRACK` and `SNAT` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// `CONNTRACK` value: where a client's flow goes, keyed by the client→VIP `FlowKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// The backend is copied in, so a flow keeps its backend even after the id is reused.
    pub backend: Addr,
    /// Network byte order.
    pub backend_port: u16,
    /// Source port towards the backend, network byte order.
    pub snat_port: u16,
    pub snat_addr: Addr,
    pub backend_id: u32,
    pub listener_id: u32,
    /// 1 once a FIN or RST went by from the client (see `conntrack::over`).
    pub closing: u8,
    pub _pad: [u8; 3],
    /// When the client last sent a packet (`bpf_ktime_get_coarse_ns`, refreshed at most
    /// every `conntrack::REFRESH_NS`).
    pub last_seen: u64,
}
const _: () = assert!(size_of::<Flow>() == 56);

/// `SNAT` value: how to turn a backend's reply back into the client's flow, keyed by the
/// backend→load-balancer `FlowKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReverseFlow {
    pub client: Addr,
    pub vip: Addr,
    /// Network byte order.
    pub client_port: u16,
    /// Network byte order.
    pub vip_port: u16,
    pub backend_id: u32,
    pub listener_id: u32,
    /// 1 once a FIN or RST went by from the backend.
    pub closing: u8,
    /// 1 once the backend sent anything: until then a TCP flow is half-open and over after
    /// `Settings::half_open_s`.
    pub answered: u8,
    pub _pad: u16,
    /// A sequence count for taking this entry's SNAT port over: the CPU that takes it makes
    /// it odd (compare-and-swap from the even value it judged), rewrites the entry, then makes
    /// it even again; nobody judges an odd entry. So two CPUs can never both take the same
    /// finished flow's port. 64 bits: BPF compares and swaps 32-bit words only with ALU32
    /// instructions.
    pub generation: u64,
    /// When the backend last sent a packet (as `Flow::last_seen`); when the flow was made
    /// (or its SYN last seen) until the backend answers.
    pub last_seen: u64,
}
const _: () = assert!(size_of::<ReverseFlow>() == 64);

/// `SETTINGS[0]`: data-plane settings written by the agent before it adds listeners.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Entries per Maglev table (prime).
    pub maglev_size: u32,
    /// First SNAT source port, host byte order.
    pub snat_port_min: u16,
    /// Last SNAT source port, host byte order (inclusive).
    pub snat_port_max: u16,
    /// Full-NAT source address for IPv4 flows; `has_snat_v4` says whether it is set.
    pub snat_v4: Addr,
    /// Full-NAT source address for IPv6 flows.
    pub snat_v6: Addr,
    pub has_snat_v4: u8,
    pub has_snat_v6: u8,
    pub _pad: [u8; 2],
    /// A TCP flow with no packet for this long may give its SNAT port to a new flow.
    pub tcp_idle_s: u32,
    /// The same for UDP.
    pub udp_idle_s: u32,
    /// A TCP flow that saw a FIN or RST, once quiet for this long.
    pub closed_s: u32,
    /// A TCP flow whose backend never answered (half-open), this long after its SYN.
    pub half_open_s: u32,
    /// New flows one listener may start per second on one CPU (token bucket, a second's
    /// burst); 0: no limit.
    pub new_flows_per_s: u32,
    /// Seed of the flow hash (`hash::flow_hash`, `hash::source_hash`): the same on every node
    /// of a cluster, secret from clients, so they cannot aim flows or predict SNAT ports.
    pub hash_seed: u32,
}
const _: () = assert!(size_of::<Settings>() == 68);

/// When a flow is over, so its SNAT port may serve a new flow and its entries may go: shared
/// by the XDP program (which reclaims ports) and the agent (which counts active flows and
/// sweeps over flows out of the table), so both always agree.
pub mod conntrack {
    use super::{Flow, FlowKey, PROTO_TCP, ReverseFlow, Settings};

    /// `last_seen` is rewritten at most this often (one write a second per busy flow).
    pub const REFRESH_NS: u64 = 1_000_000_000;

    /// Whether the flow made of `forward` (the client's half, `CONNTRACK`) and `reverse` (the
    /// backend's half, `SNAT`) is over at `now`. Both directions count: a flow is live while
    /// either side still sends. Without its forward half a flow counts as closed (its client's
    /// packets no longer pass), so only the closed timeout keeps its port from a new flow;
    /// without its reverse half it is judged on the forward half alone. A TCP flow whose
    /// backend never answered is half-open and over after `half_open_s`.
    #[inline(always)]
    pub fn over(
        settings: &Settings,
        proto: u8,
        forward: Option<&Flow>,
        reverse: Option<&ReverseFlow>,
        now: u64,
    ) -> bool {
        let (f_seen, f_closing) = match forward {
            Some(f) => (f.last_seen, f.closing != 0),
            None => (0, true),
        };
        let (r_seen, r_closing, answered) = match reverse {
            Some(r) => (r.last_seen, r.closing != 0, r.answered != 0),
            None => (0, false, true),
        };
        let seen = if f_seen > r_seen { f_seen } else { r_seen };
        let mut limit_s = if f_closing || r_closing {
            settings.closed_s
        } else if proto == PROTO_TCP {
            settings.tcp_idle_s
        } else {
            settings.udp_idle_s
        };
        if proto == PROTO_TCP && !answered && settings.half_open_s < limit_s {
            limit_s = settings.half_open_s;
        }
        now.saturating_sub(seen) > u64::from(limit_s) * 1_000_000_000
    }

    /// The `SNAT` key of the reverse entry of `flow` (keyed `key` in `CONNTRACK`): the
    /// backend's replies, to the SNAT address and port.
    pub fn reverse_key(key: &FlowKey, flow: &Flow) -> FlowKey {
        let mut reverse = FlowKey::default();
        set_reverse_key(&mut reverse, key, flow);
        reverse
    }

    /// `reverse_key`, written into `out` field by field: the data plane keeps keys in per-CPU
    /// memory, as a returned value would be built on the 512-byte BPF stack.
    #[inline(always)]
    pub fn set_reverse_key(out: &mut FlowKey, key: &FlowKey, flow: &Flow) {
        out.src.set(&flow.backend);
        out.dst.set(&flow.snat_addr);
        out.sport = flow.backend_port;
        out.dport = flow.snat_port;
        out.proto = key.proto;
        out.family = key.family;
        out._pad = [0; 2];
    }

    /// Whether the reverse entry `reverse` belongs to the client flow `key`.
    #[inline(always)]
    pub fn belongs(reverse: &ReverseFlow, key: &FlowKey) -> bool {
        reverse.client == key.src
            && reverse.client_port == key.sport
            && reverse.vip == key.dst
            && reverse.vip_port == key.dport
    }

    /// A prime stride for the SNAT port probe. The probe visits `start + attempt * stride`
    /// modulo the span; a stride coprime to the span never repeats a port within `span` tries.
    /// 7919 and 7907 are primes whose product exceeds any span (at most 65,536 ports), so at
    /// least one of them does not divide it.
    #[inline(always)]
    pub fn probe_stride(span: u32) -> u32 {
        if span.is_multiple_of(7919) {
            7907
        } else {
            7919
        }
    }

    /// The `attempt`-th SNAT port (host byte order) a new flow with hash `hash` tries, in
    /// `min..min + span` (span >= 1). Successive attempts scatter over the range (so a crowded
    /// neighbourhood is left at once) and never repeat a port.
    #[inline(always)]
    pub fn probe_port(min: u32, span: u32, hash: u32, attempt: u32) -> u32 {
        let start = hash % span;
        let step = (attempt % span) * (probe_stride(span) % span) % span;
        min + (start + step) % span
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const S: u64 = 1_000_000_000;

        fn settings() -> Settings {
            Settings {
                tcp_idle_s: 350,
                udp_idle_s: 120,
                closed_s: 60,
                half_open_s: 10,
                ..Settings::default()
            }
        }

        fn forward(last_seen: u64, closing: u8) -> Flow {
            Flow {
                last_seen,
                closing,
                ..Flow::default()
            }
        }

        fn reverse(last_seen: u64, closing: u8, answered: u8) -> ReverseFlow {
            ReverseFlow {
                last_seen,
                closing,
                answered,
                ..ReverseFlow::default()
            }
        }

        #[test]
        fn a_half_open_tcp_flow_is_over_after_the_half_open_timeout() {
            let s = settings();
            let (f, r) = (forward(S, 0), reverse(S, 0, 0));
            assert!(!over(&s, PROTO_TCP, Some(&f), Some(&r), 10 * S));
            assert!(over(&s, PROTO_TCP, Some(&f), Some(&r), 12 * S));
        }

        #[test]
        fn an_answered_tcp_flow_lasts_the_idle_timeout() {
            let s = settings();
            let (f, r) = (forward(S, 0), reverse(S, 0, 1));
            assert!(!over(&s, PROTO_TCP, Some(&f), Some(&r), 300 * S));
            assert!(over(&s, PROTO_TCP, Some(&f), Some(&r), 352 * S));
        }

        #[test]
        fn a_udp_flow_only_the_target_still_sends_on_is_live() {
            let s = settings();
            // The client spoke once at 1 s; the target streams on at 500 s.
            let (f, r) = (forward(S, 0), reverse(500 * S, 0, 1));
            assert!(!over(&s, crate::PROTO_UDP, Some(&f), Some(&r), 510 * S));
            assert!(over(&s, crate::PROTO_UDP, Some(&f), Some(&r), 621 * S));
        }

        #[test]
        fn an_unanswered_udp_flow_lasts_the_udp_idle_timeout() {
            let s = settings();
            let (f, r) = (forward(S, 0), reverse(S, 0, 0));
            assert!(!over(&s, crate::PROTO_UDP, Some(&f), Some(&r), 100 * S));
        }

        #[test]
        fn a_closing_mark_on_either_half_applies_the_closed_timeout() {
            let s = settings();
            for (fc, rc) in [(1, 0), (0, 1)] {
                let (f, r) = (forward(S, fc), reverse(S, rc, 1));
                assert!(!over(&s, PROTO_TCP, Some(&f), Some(&r), 60 * S));
                assert!(over(&s, PROTO_TCP, Some(&f), Some(&r), 62 * S));
            }
        }

        #[test]
        fn a_flow_without_its_forward_half_counts_as_closed() {
            let s = settings();
            let r = reverse(S, 0, 1);
            assert!(over(&s, PROTO_TCP, None, Some(&r), 62 * S));
        }

        #[test]
        fn a_flow_without_its_reverse_half_is_judged_on_the_forward_half() {
            let s = settings();
            let f = forward(S, 0);
            assert!(!over(&s, PROTO_TCP, Some(&f), None, 300 * S));
            assert!(over(&s, PROTO_TCP, Some(&f), None, 352 * S));
        }

        #[test]
        fn the_reverse_key_is_the_backends_reply_to_the_snat_source() {
            let key = FlowKey {
                sport: 40000u16.to_be(),
                dport: 80u16.to_be(),
                proto: PROTO_TCP,
                family: crate::FAMILY_V4,
                ..FlowKey::default()
            };
            let flow = Flow {
                backend: crate::Addr::v4([198, 18, 0, 21]),
                backend_port: 8080u16.to_be(),
                snat_addr: crate::Addr::v4([198, 18, 0, 1]),
                snat_port: 20000u16.to_be(),
                ..Flow::default()
            };
            let r = reverse_key(&key, &flow);
            assert_eq!((r.src, r.dst), (flow.backend, flow.snat_addr));
            assert_eq!((r.sport, r.dport), (flow.backend_port, flow.snat_port));
            assert_eq!((r.proto, r.family), (key.proto, key.family));
        }

        #[test]
        fn the_port_probe_never_repeats_a_port() {
            // Spans that 7919 divides repeated after one try before.
            for span in [1, 2, 3, 7, 8, 100, 7919, 15838, 31744, 31838, 64512, 65536] {
                let mut seen = std::collections::BTreeSet::new();
                let tries = span.min(4096);
                for attempt in 0..tries {
                    let port = probe_port(1024, span, 0xdead_beef, attempt);
                    assert!((1024..1024 + span).contains(&port), "span {span}: {port}");
                    assert!(
                        seen.insert(port),
                        "span {span}: port {port} again at {attempt}"
                    );
                }
            }
        }

        #[test]
        fn the_port_probe_scatters_its_tries() {
            let ports: [u32; 3] = core::array::from_fn(|a| probe_port(0, 31744, 5, a as u32));
            assert_eq!(ports, [5, 5 + 7919, 5 + 2 * 7919]);
        }
    }
}

/// Per-listener and per-backend counters (per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(size_of::<Counters>() == 24);

/// `NEXT_HOP_MISSES` key: a next hop `bpf_fib_lookup` found no resolved neighbour entry for
/// (BPF_FIB_LKUP_RET_NO_NEIGH), which the agent asks the kernel to resolve: an XDP program
/// cannot send an ARP request or a neighbour solicitation itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NextHop {
    /// The gateway, or the destination itself on a directly connected network.
    pub addr: Addr,
    /// The interface the packet would have left by.
    pub ifindex: u32,
    /// `FAMILY_V4` or `FAMILY_V6` of `addr` (an IPv4 route may have an IPv6 gateway).
    pub family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(size_of::<NextHop>() == 24);

/// Next hops `NEXT_HOP_MISSES` holds at most: the agent empties it every 100 ms.
pub const NEXT_HOP_MISSES_SIZE: u32 = 1024;

/// Why a packet got its verdict: indexes of the per-CPU `VERDICTS` counters.
pub mod verdict {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    pub const PASS_NOT_IP: u32 = 0;
    /// No listener and no SNAT reply: passed untouched.
    pub const PASS_NO_LISTENER: u32 = 1;
    /// Listener handled by the kernel stack (L7): passed.
    pub const PASS_TO_STACK: u32 = 2;
    /// IP header too short or inconsistent: passed for the kernel to discard.
    pub const PASS_BAD_IP: u32 = 3;
    /// A fragment, or IPv6 extension headers, to an address that is no VIP: passed.
    pub const PASS_FRAGMENT_OR_EXT: u32 = 4;
    /// Forwarded to a backend (client → backend) with XDP_TX or a redirect.
    pub const FWD_TO_BACKEND: u32 = 5;
    /// Reply reverse-NATed to its client.
    pub const FWD_TO_CLIENT: u32 = 6;
    /// A fragment to a VIP: dropped (no ports in it; we do not reassemble).
    pub const DROP_FRAGMENT: u32 = 7;
    /// IPv6 extension headers to a VIP: dropped.
    pub const DROP_IPV6_EXT: u32 = 8;
    /// A TCP/UDP packet to a VIP that a target's kernel would discard: dropped before any
    /// state. Truncated headers, an IP length shorter than its headers, a UDP length other
    /// than the IP payload's, a TCP data offset below 5 or past the datagram, SYN with FIN
    /// or RST, a martian source address, two VLAN tags.
    pub const DROP_MALFORMED: u32 = 9;
    /// The listener's group has no backend: dropped.
    pub const DROP_NO_BACKEND: u32 = 10;
    /// No SNAT address or no free SNAT port for a new flow: dropped.
    pub const DROP_NO_SNAT: u32 = 11;
    /// No route to the backend or client: dropped.
    pub const DROP_NO_ROUTE: u32 = 12;
    /// Next hop's MAC not yet resolved: dropped (the agent keeps targets' neighbours resolved).
    pub const DROP_NO_NEIGH: u32 = 13;
    /// A map update failed (the connection table is full): dropped.
    pub const DROP_MAP_FULL: u32 = 14;
    /// A TCP segment other than a SYN that belongs to no flow: dropped, claiming nothing (the
    /// target would answer it with a reset anyway).
    pub const DROP_NO_FLOW: u32 = 15;
    /// A new flow above its listener's `new_flow_rate_limit` on this CPU: dropped.
    pub const DROP_FLOOD: u32 = 16;
    /// TTL or hop limit of 1 or 0 to a listener or a full-NAT address: passed untouched, for
    /// the kernel to answer (ICMP time exceeded) as a router would; no flow is created.
    pub const PASS_TTL_EXPIRED: u32 = 17;
    /// An 802.1Q-tagged frame to a listener or a full-NAT address: passed untouched to the
    /// kernel (its VLAN device), never balanced.
    pub const PASS_VLAN: u32 = 18;
    /// The next hop's interface takes no XDP redirect (not in the redirect map: a VLAN
    /// device, or one that appeared after attaching): dropped, not counted as forwarded.
    pub const DROP_REDIRECT: u32 = 19;
    /// An ICMP error from the client side about a balanced flow, translated and forwarded
    /// to the flow's backend.
    pub const FWD_ICMP_TO_BACKEND: u32 = 20;
    /// An ICMP error from a backend's side about a balanced flow, translated and forwarded
    /// to the flow's client.
    pub const FWD_ICMP_TO_CLIENT: u32 = 21;
    /// A truncated or inconsistent ICMP message to a VIP: dropped.
    pub const DROP_ICMP: u32 = 22;
    /// Number of verdict counters.
    pub const COUNT: u32 = 23;

    /// Names for stats output, indexed by the constants above.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ip",
        "pass_no_listener",
        "pass_to_stack",
        "pass_bad_ip",
        "pass_fragment_or_ext",
        "fwd_to_backend",
        "fwd_to_client",
        "drop_fragment",
        "drop_ipv6_ext",
        "drop_malformed",
        "drop_no_backend",
        "drop_no_snat",
        "drop_no_route",
        "drop_no_neigh",
        "drop_map_full",
        "drop_no_flow",
        "drop_flood",
        "pass_ttl_expired",
        "pass_vlan",
        "drop_redirect",
        "fwd_icmp_to_backend",
        "fwd_icmp_to_client",
        "drop_icmp",
    ];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made of integers and byte arrays, with explicit
    // padding fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerInfo {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for GroupInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for ReverseFlow {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for NextHop {}
}
