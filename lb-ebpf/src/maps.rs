//! The maps shared with the agent. Layouts are `lb-common`'s; see DESIGN.md "Maps".

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, CONNTRACK_SIZE, Counters, Flow, FlowKey, GroupInfo, ListenerInfo, ListenerKey,
    MAX_BACKENDS, MAX_GROUPS, MAX_LISTENERS, NEXT_HOP_MISSES_SIZE, NextHop, ReverseFlow, Settings,
    VipKey, verdict,
};

/// (VIP, port, protocol, family) → listener. A `tcp_udp` listener has two entries.
#[map]
pub static LISTENERS: HashMap<ListenerKey, ListenerInfo> =
    HashMap::with_max_entries(MAX_LISTENERS * 2, 0);

/// Destination port → `lb_common::port_bits` of the protocols some listener uses on it.
#[map]
pub static PORTS: Array<u32> = Array::with_max_entries(65536, 0);

/// Addresses that carry listeners: fragments and extension headers to them are dropped.
#[map]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Group id → active Maglev slot and flags.
#[map]
pub static GROUPS: Array<GroupInfo> = Array::with_max_entries(MAX_GROUPS, 0);

/// Every group's two Maglev tables, back to back: `GroupInfo::maglev_base` → backend id.
/// Sized by the agent at load time (groups × 2 × table size); 1 here is a placeholder.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(1, 0);

/// Backend id → address and port.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Client flow → its backend and SNAT source. One table shared by all CPUs (a flow's packets
/// and its replies may arrive on different CPUs); its LRU lists are per CPU
/// (BPF_F_NO_COMMON_LRU), so inserts on different CPUs do not contend for one lock.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(CONNTRACK_SIZE, BPF_F_NO_COMMON_LRU);

/// Backend → SNAT address flow → the client flow it belongs to (the reverse NAT index).
#[map]
pub static SNAT: LruHashMap<FlowKey, ReverseFlow> =
    LruHashMap::with_max_entries(CONNTRACK_SIZE, BPF_F_NO_COMMON_LRU);

/// `[0]`: data-plane settings.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per-listener counters, by listener id.
#[map]
pub static LISTENER_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_LISTENERS, 0);

/// Per-backend counters, by backend id.
#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Packets per verdict reason (`lb_common::verdict`).
#[map]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(verdict::COUNT, 0);

/// ifindex → interface, for redirects to a NIC other than the ingress one.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Next hops a packet was dropped for because their neighbour entry is missing or unresolved
/// (the value is unused): the agent asks the kernel to resolve each and deletes it. Not pinned:
/// only a running agent reads it, and the program an agent attaches writes that agent's map.
#[map]
pub static NEXT_HOP_MISSES: LruHashMap<NextHop, u32> =
    LruHashMap::with_max_entries(NEXT_HOP_MISSES_SIZE, 0);

/// Per-CPU working memory for the packet being processed (see `Scratch`).
#[map]
pub static SCRATCH: PerCpuArray<crate::Scratch> = PerCpuArray::with_max_entries(1, 0);
