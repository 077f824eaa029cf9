//! Types and pure functions shared by the XDP program (`lb-ebpf`) and the agent (`lb-agent`).
//!
//! Every map key and value the two sides exchange is defined here once, `#[repr(C)]`, with
//! explicit padding and a compile-time size check, so the kernel and userspace can never
//! disagree about a layout. The flow hash and the checksum arithmetic live here too: the data
//! plane runs them per packet, and host tests run the very same code to predict its choices.
#![no_std]

// The userspace-only parts (`xdp_attachment`) run commands and parse JSON.
#[cfg(feature = "user")]
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
}

/// Program names inside the object.
pub mod program_names {
    /// The load balancer.
    pub const LB: &str = "lb";
    /// Passes every frame: the lab attaches it to veth peers so XDP_TX frames are received.
    pub const PASS: &str = "pass";
    /// Bounces every frame: the benchmarks' baseline for the cost of XDP itself.
    pub const TX: &str = "tx";
}

/// Capacity of the maps indexed by id. Ids are dense and assigned by the agent.
pub const MAX_LISTENERS: u32 = 1024;
/// Backend id 0 is never used, so an empty Maglev slot (0) always means "no backend".
pub const MAX_BACKENDS: u32 = 65536;
/// Target groups. Each owns two Maglev slots of `SETTINGS.maglev_size` entries.
pub const MAX_GROUPS: u32 = 256;
/// Connection-table capacity (flows); SNAT holds one reverse entry per flow.
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
    /// 1 once a FIN or RST went by from the client (see `conntrack::expired`).
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
    pub _pad: [u8; 3],
    /// When the backend last sent a packet (as `Flow::last_seen`).
    pub last_seen: u64,
}
const _: () = assert!(size_of::<ReverseFlow>() == 56);

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
    /// Seed of the flow hash (`hash::flow_hash`, `hash::source_hash`): the same on every node
    /// of a cluster, secret from clients, so they cannot aim flows or predict SNAT ports.
    pub hash_seed: u32,
}
const _: () = assert!(size_of::<Settings>() == 60);

/// When a connection-table entry is over, so its SNAT port may serve a new flow: shared by
/// the XDP program (which reclaims ports) and the agent (which counts active flows).
pub mod conntrack {
    /// `last_seen` is rewritten at most this often (one write a second per busy flow).
    pub const REFRESH_NS: u64 = 1_000_000_000;

    /// Whether a flow last seen at `last_seen` (closing: a FIN or RST went by) is over at
    /// `now`, with `settings`' timeouts.
    pub fn expired(
        settings: &super::Settings,
        proto: u8,
        closing: bool,
        last_seen: u64,
        now: u64,
    ) -> bool {
        let limit_s = if closing {
            settings.closed_s
        } else if proto == super::PROTO_TCP {
            settings.tcp_idle_s
        } else {
            settings.udp_idle_s
        };
        now.saturating_sub(last_seen) > u64::from(limit_s) * 1_000_000_000
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
    /// A map update failed: dropped.
    pub const DROP_MAP_FULL: u32 = 14;
    // 15 and 16 are the connection-table guards' (issue 9's other branch).
    /// TTL or hop limit of 1 or 0 to a listener or a full-NAT address: passed untouched, for
    /// the kernel to answer (ICMP time exceeded) as a router would; no flow is created.
    pub const PASS_TTL_EXPIRED: u32 = 17;
    /// An 802.1Q-tagged frame to a listener or a full-NAT address: passed untouched to the
    /// kernel (its VLAN device), never balanced.
    pub const PASS_VLAN: u32 = 18;
    /// The next hop's interface takes no XDP redirect (not in the redirect map: a VLAN
    /// device, or one that appeared after attaching): dropped, not counted as forwarded.
    pub const DROP_REDIRECT: u32 = 19;
    /// Number of verdict counters.
    pub const COUNT: u32 = 20;

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
}
