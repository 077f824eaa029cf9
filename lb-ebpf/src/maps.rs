//! The maps shared with the agent. Layouts are `lb-common`'s; see DESIGN.md "Maps".

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
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
/// and its replies may arrive on different CPUs), sized by the agent at load time
/// (`agent.connection_table_size`; the default here).
///
/// A plain hash, not an LRU: it holds exactly `max_entries` flows on any number of CPUs, and
/// never evicts an established flow for a new one (a full table drops new flows). Flows that
/// are over leave when a new flow takes their SNAT port, or with the agent's sweeper. Not
/// preallocated: a deleted element stays memory of its own until every program run that
/// looked it up has ended, so a port takeover's in-place write can never land in an element
/// that meanwhile holds another flow.
#[map]
pub static CONNTRACK: HashMap<FlowKey, Flow> =
    HashMap::with_max_entries(CONNTRACK_SIZE, BPF_F_NO_PREALLOC);

/// Backend → SNAT address flow → the client flow it belongs to (the reverse NAT index): one
/// entry per `CONNTRACK` entry, made and removed with it.
#[map]
pub static SNAT: HashMap<FlowKey, ReverseFlow> =
    HashMap::with_max_entries(CONNTRACK_SIZE, BPF_F_NO_PREALLOC);

/// Per CPU, by listener id: the new-flow token bucket (`agent.new_flow_rate_limit`).
#[map]
pub static NEW_FLOW_BUDGET: PerCpuArray<crate::flow::FlowBudget> =
    PerCpuArray::with_max_entries(MAX_LISTENERS, 0);

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

/// Benchmarks only: the frame bytes `lb_restoring` keeps aside (see `bench`).
#[map]
pub static BENCH_SAVED: PerCpuArray<[u64; crate::bench::SAVED_BYTES / 8]> =
    PerCpuArray::with_max_entries(1, 0);
