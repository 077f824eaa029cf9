//! The data plane as the agent sees it: its maps behind two small traits, so that what decides
//! the map contents (`state`) runs the same against the kernel (`kernel::Dataplane`) and against
//! an in-memory twin (`memory::MemoryMaps`) in plain unit tests.
//!
//! `MapReader` is what readers need (counters, the connection table, the data plane's clock);
//! `Maps` adds every write, and is only ever used by the agent's one writer. `InstanceLinks`
//! puts the data plane on the veths of `local` instances, also only from the writer.

pub mod kernel;
pub mod memory;

use lb_common::{
    Backend, Counters, Flow, FlowKey, GroupInfo, ListenerInfo, ListenerKey, ReverseFlow, Settings,
    VipKey, verdict,
};

pub use kernel::{
    AttachMode, Dataplane, DataplaneError, DataplaneReader, NextHopMisses, OverFlow, Sweeper,
    interface_driver,
};

/// Results of map operations.
pub type Result<T> = std::result::Result<T, DataplaneError>;

/// Packets per verdict reason (`lb_common::verdict`).
pub type Verdicts = [u64; verdict::COUNT as usize];

/// Reading the data plane: counters and the connection table. Safe to use beside the writer.
pub trait MapReader {
    /// A listener's counters, summed over CPUs.
    fn listener_counters(&self, listener_id: u32) -> Result<Counters>;
    /// A backend's counters, summed over CPUs.
    fn backend_counters(&self, backend_id: u32) -> Result<Counters>;
    /// Packets per verdict reason, summed over CPUs.
    fn verdicts(&self) -> Result<Verdicts>;
    /// Every connection-table entry.
    fn flows(&self) -> Result<Vec<(FlowKey, Flow)>>;
    /// Every reverse-NAT entry (the backends' halves of the flows).
    fn reverse_flows(&self) -> Result<Vec<(FlowKey, ReverseFlow)>>;
    /// Flows the connection table holds (the same on any number of CPUs).
    fn flow_capacity(&self) -> u32;
    /// The clock of the entries' `last_seen` (the kernel's `bpf_ktime_get_coarse_ns`).
    fn clock_ns(&self) -> u64;
}

/// Writing the data plane's maps (and reading back what the writer needs to write only
/// differences). Every map write of the agent goes through this.
pub trait Maps: MapReader {
    /// Entries of each Maglev table.
    fn maglev_size(&self) -> u32;
    /// Target groups the maps hold.
    fn group_capacity(&self) -> u32;
    /// Whether the maps were adopted from an earlier agent (their contents are in use).
    fn adopted(&self) -> bool;
    /// The data-plane settings in force (an adopted data plane's: its flow-hash seed).
    fn settings(&self) -> Result<Settings>;
    /// Writes the data-plane settings.
    fn set_settings(&mut self, settings: &Settings) -> Result<()>;
    /// Every listener entry.
    fn listeners(&self) -> Result<Vec<(ListenerKey, ListenerInfo)>>;
    /// Adds or replaces a listener entry.
    fn set_listener(&mut self, key: &ListenerKey, info: &ListenerInfo) -> Result<()>;
    /// Removes a listener entry.
    fn remove_listener(&mut self, key: &ListenerKey) -> Result<()>;
    /// The ports some listener uses (host order), with their `lb_common::port_bits`.
    fn ports(&self) -> Result<Vec<(u16, u32)>>;
    /// Sets which protocols' listeners use `port` (0: none).
    fn set_port(&mut self, port: u16, bits: u32) -> Result<()>;
    /// Every VIP.
    fn vips(&self) -> Result<Vec<VipKey>>;
    /// Marks an address as a VIP.
    fn set_vip(&mut self, key: &VipKey) -> Result<()>;
    /// Unmarks a VIP.
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    /// A backend entry.
    fn backend(&self, id: u32) -> Result<Backend>;
    /// Writes a backend entry.
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    /// A group's entry (active slot, flags).
    fn group(&self, id: u32) -> Result<GroupInfo>;
    /// Writes a group's entry: the one write that switches new flows to another table.
    fn set_group(&mut self, id: u32, info: &GroupInfo) -> Result<()>;
    /// Writes a whole Maglev table (backend ids) into `slot` of group `id`.
    fn write_maglev(&mut self, id: u32, slot: u32, table: &[u32]) -> Result<()>;
    /// One entry of a group's Maglev slot.
    fn maglev_entry(&self, id: u32, slot: u32, index: u32) -> Result<u32>;
    /// Deletes every connection-table and reverse-NAT entry of a backend id; how many flows
    /// it cut.
    fn purge_backend(&mut self, backend_id: u32) -> Result<usize>;
}

/// The error a map write reports when the kernel refuses it, `errno` as given.
pub fn refused(name: &'static str, call: &'static str, errno: i32) -> DataplaneError {
    DataplaneError::Map {
        name,
        source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call,
            io_error: std::io::Error::from_raw_os_error(errno),
        })),
    }
}

/// Taking the data plane off the NICs.
pub trait Detach {
    /// Detaches the program from every NIC and removes every pin.
    fn detach(&mut self) -> Result<()>;
}

/// One `local` instance's veth pair, as the data plane attaches to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceVeth {
    /// The instance (for messages and logs).
    pub instance_id: String,
    /// The load balancer's end, in the agent's namespace: it gets the load balancer itself,
    /// which rewrites the instance's replies.
    pub lb_interface: String,
    /// The instance's namespace (`/run/netns/NAME`).
    pub namespace: String,
    /// The instance's end, in its namespace: it gets the pass program.
    pub interface: String,
}

/// How the data plane ended up on an instance's veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceAttached {
    /// The load balancer's mode on the LB end.
    pub mode: AttachMode,
    /// The attachments were pinned by an earlier agent and taken over (the program replaced
    /// in place, without a gap), not made afresh.
    pub taken_over: bool,
}

/// Putting the data plane on the veths of `local` instances, which it forwards to like NICs.
///
/// Full NAT sends the instance's replies back through the load balancer, so the LB end of the
/// veth runs it (and is a redirect target); and frames XDP redirects into a veth are dropped
/// unless the peer runs an XDP program (DESIGN.md, "The lab"), so the instance's end runs the
/// pass program. Pinned like the NICs' attachments, they outlive the agent and are taken over
/// by the next one.
pub trait InstanceLinks {
    /// Attaches to `veth` (both ends); attaching again to one attached is a no-op, and one an
    /// earlier agent pinned is taken over.
    fn attach_instance(&mut self, veth: &InstanceVeth) -> Result<InstanceAttached>;
    /// Detaches from the veth whose LB end is `lb_interface` and removes its pins; an
    /// interface already gone is fine. Whether there was anything to detach.
    fn detach_instance(&mut self, lb_interface: &str) -> Result<bool>;
    /// Detaches from every instance veth (attached or pinned) whose LB end is not in `keep`
    /// (instances an earlier agent left that no longer exist); their LB ends.
    fn retain_instances(&mut self, keep: &[String]) -> Result<Vec<String>>;
    /// The LB ends of the instance veths attached or pinned, sorted.
    fn instance_links(&self) -> Vec<String>;
}
