//! The kernel's data plane: load the XDP object, and read and write its maps (`Maps`,
//! `MapReader`) with aya; layouts are `lb-common`'s. Attaching it to NICs (and pinning the
//! attachments) is `attach`; to the veths of `local` instances, `instance`; the batched map
//! system calls are `batch`; the next hops the program could not resolve are `next_hops`.

mod attach;
mod batch;
mod instance;
mod next_hops;
mod sweep;

pub use attach::interface_driver;
use batch::{lookup_batch, update_batch};
pub use next_hops::NextHopMisses;
pub use sweep::{OverFlow, Sweeper};

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{ProgramError, Xdp, links::FdLink, xdp::XdpLinkId},
};

use super::{MapReader, Maps, Verdicts, refused};
use crate::pinning::{PinDir, PinError};
use lb_common::{
    Backend, CONNTRACK_SIZE, Counters, Flow, FlowKey, GroupInfo, ListenerInfo, ListenerKey,
    MAX_GROUPS, ReverseFlow, Settings, VipKey, map_names, program_names, verdict,
};

/// The compiled XDP object (`lb-ebpf`), embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Errors of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The embedded object is empty: the agent was built with `AYA_BUILD_SKIP`.
    #[error("this lb-agent was built without its XDP program (AYA_BUILD_SKIP); rebuild it")]
    NoObject,
    /// The kernel refused to load the object or one of its maps.
    #[error("loading the XDP object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or failed the verifier.
    #[error("program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing from the object (agent and program disagree).
    #[error("map `{0}` is missing from the XDP object")]
    MissingMap(&'static str),
    /// A map read or write failed in the kernel.
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The interface does not exist.
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// Neither native nor generic XDP could be attached.
    #[error("attaching XDP to `{iface}` failed: native: {native}; generic: {generic}")]
    Attach {
        iface: String,
        native: Box<ProgramError>,
        generic: Box<ProgramError>,
    },
    /// The Maglev table does not have the configured size.
    #[error("a Maglev table has {got} entries, the data plane expects {expected}")]
    TableSize { got: usize, expected: u32 },
    /// The interface could not be added to the redirect map.
    #[error("adding the interface to the redirect map: {0}")]
    TxPort(String),
    /// A group id beyond the capacity the maps were sized for.
    #[error("target group id {0} exceeds the data plane's capacity")]
    GroupCapacity(u32),
    /// The pin directory cannot be used.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// Another XDP program is attached to the interface, and not through our pins.
    #[error(
        "`{iface}` already has an XDP program attached ({program}): another lb-agent with another pin directory, or another tool; detach it first"
    )]
    Occupied { iface: String, program: String },
    /// Pinning or adopting an attachment failed.
    #[error("the attachment to `{iface}`: {message}")]
    Link { iface: String, message: String },
}

use super::Result;

/// How the program ended up attached: the one attach-mode type the lab shares.
pub use lb_common::xdp_attachment::AttachMode;

/// The loaded XDP object and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    maglev_size: u32,
    group_capacity: u32,
    /// Flows the connection table holds.
    flow_capacity: u32,
    /// Where maps and attachments are pinned; none: they live as long as the agent.
    pins: Option<PinDir>,
    /// The maps were pinned by an earlier agent and are in use (connection table included).
    adopted: bool,
    /// Every NIC the program is attached to.
    attachments: Vec<Attachment>,
    /// Every instance veth it is attached to, by LB end.
    instances: instance::InstanceAttachments,
    /// The counters and the connection table, read through handles of their own.
    reader: DataplaneReader,
}

/// The program on one NIC.
struct Attachment {
    iface: String,
    mode: AttachMode,
    link: AttachmentLink,
}

enum AttachmentLink {
    /// Ends with the agent.
    Owned(XdpLinkId),
    /// Pinned at the path: stays attached until the pin is removed.
    Pinned(FdLink, std::path::PathBuf),
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        name,
        source: Box::new(source),
    }
}

impl Dataplane {
    /// Loads the object with `group_capacity` target groups of Maglev tables of `maglev_size`
    /// entries each (two per group) and a connection table of the default size, and loads
    /// (verifies) the load-balancer program. Its maps and attachments end with the agent.
    pub fn load(maglev_size: u32, group_capacity: u32) -> Result<Self> {
        Self::load_with(maglev_size, group_capacity, CONNTRACK_SIZE, None)
    }

    /// As `load`, with a connection table of `flow_capacity` flows.
    pub fn load_sized(maglev_size: u32, group_capacity: u32, flow_capacity: u32) -> Result<Self> {
        Self::load_with(maglev_size, group_capacity, flow_capacity, None)
    }

    /// As `load`, with a connection table of `flow_capacity` flows, and maps and attachments
    /// pinned in `pins`, where they outlive the agent. Maps an earlier agent pinned there are
    /// adopted (`adopted()`), contents and all, if they fit this program.
    pub fn load_pinned(
        maglev_size: u32,
        group_capacity: u32,
        flow_capacity: u32,
        pins: PinDir,
    ) -> Result<Self> {
        Self::load_with(maglev_size, group_capacity, flow_capacity, Some(pins))
    }

    fn load_with(
        maglev_size: u32,
        group_capacity: u32,
        flow_capacity: u32,
        pins: Option<PinDir>,
    ) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let group_capacity = group_capacity.clamp(1, MAX_GROUPS);
        let maglev_entries = group_capacity * 2 * maglev_size;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_names::MAGLEV, maglev_entries);
        // Both halves of every flow: one reverse entry per connection-table entry.
        loader.map_max_entries(map_names::CONNTRACK, flow_capacity);
        loader.map_max_entries(map_names::SNAT, flow_capacity);
        let mut adopted = false;
        if let Some(pins) = &pins {
            pins.check_compatible(maglev_entries, flow_capacity)?;
            adopted = pins.holds_data_plane();
            for (name, _, _) in crate::pinning::MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let reader = DataplaneReader::of(&ebpf, flow_capacity)?;
        let mut dataplane = Self {
            ebpf,
            maglev_size,
            group_capacity,
            flow_capacity,
            pins,
            adopted,
            attachments: Vec::new(),
            instances: instance::InstanceAttachments::new(),
            reader,
        };
        dataplane.program(program_names::LB)?;
        Ok(dataplane)
    }

    /// The pin directory, if any.
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pins.as_ref().map(PinDir::path)
    }

    /// The loaded program `name` (loading it on first use).
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Program {
                name,
                source: Box::new(ProgramError::NotLoaded),
            })?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name,
                source: Box::new(source),
            })?;
        if program.fd().is_err() {
            // The verifier gives up with EAGAIN when a signal arrives meanwhile (a child
            // exiting, say): that is worth another try, a few times.
            let mut tries = 0;
            loop {
                match program.load() {
                    Ok(()) => break,
                    Err(ProgramError::LoadError { io_error, .. })
                        if io_error.kind() == std::io::ErrorKind::WouldBlock && tries < 5 =>
                    {
                        tries += 1;
                    }
                    Err(source) => {
                        return Err(DataplaneError::Program {
                            name,
                            source: Box::new(source),
                        });
                    }
                }
            }
        }
        Ok(program)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    fn tx_ports(&mut self) -> Result<DevMapHash<&mut MapData>> {
        DevMapHash::try_from(self.map_mut(map_names::TX_PORTS)?)
            .map_err(map_err(map_names::TX_PORTS))
    }

    /// A reader of this data plane's counters and connection table, with handles of its own:
    /// it reads beside the writer without sharing anything with it.
    pub fn reader(&self) -> Result<DataplaneReader> {
        DataplaneReader::of(&self.ebpf, self.flow_capacity)
    }

    /// The connection table's sweeper, with handles of its own (see `sweep`).
    pub fn sweeper(&self) -> Result<Sweeper> {
        Sweeper::of(&self.ebpf)
    }
}

impl super::Detach for Dataplane {
    fn detach(&mut self) -> Result<()> {
        self.detach_all()
    }
}

impl MapReader for Dataplane {
    fn listener_counters(&self, listener_id: u32) -> Result<Counters> {
        self.reader.listener_counters(listener_id)
    }

    fn backend_counters(&self, backend_id: u32) -> Result<Counters> {
        self.reader.backend_counters(backend_id)
    }

    fn verdicts(&self) -> Result<Verdicts> {
        self.reader.verdicts()
    }

    fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.reader.flows()
    }

    fn reverse_flows(&self) -> Result<Vec<(FlowKey, ReverseFlow)>> {
        self.reader.reverse_flows()
    }

    fn flow_capacity(&self) -> u32 {
        self.flow_capacity
    }

    fn clock_ns(&self) -> u64 {
        monotonic_coarse_ns()
    }
}

impl Maps for Dataplane {
    fn maglev_size(&self) -> u32 {
        self.maglev_size
    }

    fn group_capacity(&self) -> u32 {
        self.group_capacity
    }

    fn adopted(&self) -> bool {
        self.adopted
    }

    fn settings(&self) -> Result<Settings> {
        let map: Array<_, Settings> = Array::try_from(self.map(map_names::SETTINGS)?)
            .map_err(map_err(map_names::SETTINGS))?;
        map.get(&0, 0).map_err(map_err(map_names::SETTINGS))
    }

    /// Writes the data-plane settings.
    fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        let mut map: Array<_, Settings> = Array::try_from(self.map_mut(map_names::SETTINGS)?)
            .map_err(map_err(map_names::SETTINGS))?;
        map.set(0, settings, 0)
            .map_err(map_err(map_names::SETTINGS))
    }

    /// Every listener entry.
    fn listeners(&self) -> Result<Vec<(ListenerKey, ListenerInfo)>> {
        let map: HashMap<_, ListenerKey, ListenerInfo> =
            HashMap::try_from(self.map(map_names::LISTENERS)?)
                .map_err(map_err(map_names::LISTENERS))?;
        Ok(map.iter().filter_map(std::result::Result::ok).collect())
    }

    /// Adds or replaces a listener entry.
    fn set_listener(&mut self, key: &ListenerKey, info: &ListenerInfo) -> Result<()> {
        let mut map: HashMap<_, ListenerKey, ListenerInfo> =
            HashMap::try_from(self.map_mut(map_names::LISTENERS)?)
                .map_err(map_err(map_names::LISTENERS))?;
        map.insert(key, info, 0)
            .map_err(map_err(map_names::LISTENERS))
    }

    /// Removes a listener entry.
    fn remove_listener(&mut self, key: &ListenerKey) -> Result<()> {
        let mut map: HashMap<_, ListenerKey, ListenerInfo> =
            HashMap::try_from(self.map_mut(map_names::LISTENERS)?)
                .map_err(map_err(map_names::LISTENERS))?;
        map.remove(key).map_err(map_err(map_names::LISTENERS))
    }

    /// The ports some listener uses, with their protocol bits.
    fn ports(&self) -> Result<Vec<(u16, u32)>> {
        let map = self.map(map_names::PORTS)?;
        // All 65,536 entries in a few batched reads, else one by one.
        if let aya::maps::Map::Array(data) = map
            && let Ok(entries) = lookup_batch::<u32, u32>(data.fd().as_fd().as_raw_fd())
        {
            return Ok(entries
                .into_iter()
                .filter(|&(_, bits)| bits != 0)
                .filter_map(|(port, bits)| Some((u16::try_from(port).ok()?, bits)))
                .collect());
        }
        let map: Array<_, u32> = Array::try_from(map).map_err(map_err(map_names::PORTS))?;
        Ok((0..=u16::MAX)
            .zip(map.iter())
            .filter_map(|(port, bits)| match bits {
                Ok(0) | Err(_) => None,
                Ok(bits) => Some((port, bits)),
            })
            .collect())
    }

    /// Sets which protocols' listeners use `port` (host order): `lb_common::port_bits`.
    fn set_port(&mut self, port: u16, bits: u32) -> Result<()> {
        let mut map: Array<_, u32> =
            Array::try_from(self.map_mut(map_names::PORTS)?).map_err(map_err(map_names::PORTS))?;
        map.set(u32::from(port), bits, 0)
            .map_err(map_err(map_names::PORTS))
    }

    /// Every VIP.
    fn vips(&self) -> Result<Vec<VipKey>> {
        let map: HashMap<_, VipKey, u32> =
            HashMap::try_from(self.map(map_names::VIPS)?).map_err(map_err(map_names::VIPS))?;
        Ok(map.keys().filter_map(std::result::Result::ok).collect())
    }

    /// Marks an address as a VIP.
    fn set_vip(&mut self, key: &VipKey) -> Result<()> {
        let mut map: HashMap<_, VipKey, u32> =
            HashMap::try_from(self.map_mut(map_names::VIPS)?).map_err(map_err(map_names::VIPS))?;
        map.insert(key, 1, 0).map_err(map_err(map_names::VIPS))
    }

    /// Unmarks a VIP.
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let mut map: HashMap<_, VipKey, u32> =
            HashMap::try_from(self.map_mut(map_names::VIPS)?).map_err(map_err(map_names::VIPS))?;
        map.remove(key).map_err(map_err(map_names::VIPS))
    }

    /// Writes a group's entry: the one write that switches new flows to another table.
    fn set_group(&mut self, id: u32, info: &GroupInfo) -> Result<()> {
        if id >= self.group_capacity {
            return Err(DataplaneError::GroupCapacity(id));
        }
        let mut map: Array<_, GroupInfo> = Array::try_from(self.map_mut(map_names::GROUPS)?)
            .map_err(map_err(map_names::GROUPS))?;
        map.set(id, info, 0).map_err(map_err(map_names::GROUPS))
    }

    /// Writes a whole Maglev table (backend ids) into `slot` of group `id`.
    fn write_maglev(&mut self, id: u32, slot: u32, table: &[u32]) -> Result<()> {
        if id >= self.group_capacity {
            return Err(DataplaneError::GroupCapacity(id));
        }
        if table.len() != self.maglev_size as usize {
            return Err(DataplaneError::TableSize {
                got: table.len(),
                expected: self.maglev_size,
            });
        }
        let base = GroupInfo::maglev_base(id, slot, self.maglev_size);
        let fd = match self.map(map_names::MAGLEV)? {
            aya::maps::Map::Array(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(DataplaneError::MissingMap(map_names::MAGLEV)),
        };
        // One syscall for the whole table instead of one per slot (65,537 by default).
        if update_batch(fd, base, table).is_ok() {
            return Ok(());
        }
        // Kernels without batch updates for arrays: slot by slot.
        let mut map: Array<_, u32> = Array::try_from(self.map_mut(map_names::MAGLEV)?)
            .map_err(map_err(map_names::MAGLEV))?;
        for (i, backend_id) in (base..).zip(table) {
            map.set(i, backend_id, 0)
                .map_err(map_err(map_names::MAGLEV))?;
        }
        Ok(())
    }

    /// One entry of a group's Maglev slot (for tests and diagnostics).
    fn maglev_entry(&self, id: u32, slot: u32, index: u32) -> Result<u32> {
        let map: Array<_, u32> =
            Array::try_from(self.map(map_names::MAGLEV)?).map_err(map_err(map_names::MAGLEV))?;
        map.get(
            &(GroupInfo::maglev_base(id, slot, self.maglev_size) + index),
            0,
        )
        .map_err(map_err(map_names::MAGLEV))
    }

    /// Deletes every connection-table and reverse-NAT entry of a backend id; returns how
    /// many flows it cut. Their next packets are hashed again (to a target in service, which
    /// answers a stray TCP segment with a reset).
    fn purge_backend(&mut self, backend_id: u32) -> Result<usize> {
        let mut conntrack: HashMap<_, FlowKey, Flow> =
            HashMap::try_from(self.map_mut(map_names::CONNTRACK)?)
                .map_err(map_err(map_names::CONNTRACK))?;
        let doomed: Vec<FlowKey> = conntrack
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, flow)| flow.backend_id == backend_id)
            .map(|(key, _)| key)
            .collect();
        let mut cut = 0;
        for key in &doomed {
            // Gone already (evicted, or a SYN re-picked it) is fine.
            if conntrack.remove(key).is_ok() {
                cut += 1;
            }
        }
        let mut snat: HashMap<_, FlowKey, ReverseFlow> =
            HashMap::try_from(self.map_mut(map_names::SNAT)?).map_err(map_err(map_names::SNAT))?;
        let doomed: Vec<FlowKey> = snat
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, reverse)| reverse.backend_id == backend_id)
            .map(|(key, _)| key)
            .collect();
        for key in &doomed {
            let _ = snat.remove(key);
        }
        Ok(cut)
    }

    fn backend(&self, id: u32) -> Result<Backend> {
        let map: Array<_, Backend> = Array::try_from(self.map(map_names::BACKENDS)?)
            .map_err(map_err(map_names::BACKENDS))?;
        map.get(&id, 0).map_err(map_err(map_names::BACKENDS))
    }

    /// Writes a backend entry.
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        let mut map: Array<_, Backend> = Array::try_from(self.map_mut(map_names::BACKENDS)?)
            .map_err(map_err(map_names::BACKENDS))?;
        map.set(id, backend, 0)
            .map_err(map_err(map_names::BACKENDS))
    }

    /// A group's entry (active slot, flags).
    fn group(&self, id: u32) -> Result<GroupInfo> {
        let map: Array<_, GroupInfo> =
            Array::try_from(self.map(map_names::GROUPS)?).map_err(map_err(map_names::GROUPS))?;
        map.get(&id, 0).map_err(map_err(map_names::GROUPS))
    }
}

/// Read-only handles of the maps readers use: counters and the connection table.
pub struct DataplaneReader {
    listener_stats: aya::maps::Map,
    backend_stats: aya::maps::Map,
    verdicts: aya::maps::Map,
    conntrack: aya::maps::Map,
    snat: aya::maps::Map,
    flow_capacity: u32,
}

/// A handle of `ebpf`'s map `name` on a descriptor of its own.
fn own_handle(ebpf: &Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    let map = ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
    let (data, wrap): (&MapData, fn(MapData) -> aya::maps::Map) = match map {
        aya::maps::Map::PerCpuArray(d) => (d, aya::maps::Map::PerCpuArray),
        aya::maps::Map::Array(d) => (d, aya::maps::Map::Array),
        aya::maps::Map::LruHashMap(d) => (d, aya::maps::Map::LruHashMap),
        aya::maps::Map::HashMap(d) => (d, aya::maps::Map::HashMap),
        _ => return Err(DataplaneError::MissingMap(name)),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| refused(name, "dup", e.raw_os_error().unwrap_or(libc::EBADF)))?;
    Ok(wrap(MapData::from_fd(fd).map_err(map_err(name))?))
}

/// Every entry of the hash map `map` (`name`): in batches of thousands per system call
/// (BPF_MAP_LOOKUP_BATCH, Linux 5.6+), else entry by entry.
fn read_hash<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &aya::maps::Map,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    let one_by_one = || -> Result<Vec<(K, V)>> {
        // aya's `HashMap` reads LRU hash maps too.
        let map: HashMap<_, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
        map.iter().map(|r| r.map_err(map_err(name))).collect()
    };
    let fd = match map {
        aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data) => {
            data.fd().as_fd().as_raw_fd()
        }
        _ => return one_by_one(),
    };
    match lookup_batch::<K, V>(fd) {
        Ok(entries) => Ok(entries),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => one_by_one(),
        Err(e) => Err(refused(
            name,
            "bpf_map_lookup_batch",
            e.raw_os_error().unwrap_or(libc::EIO),
        )),
    }
}

impl DataplaneReader {
    /// Handles of `ebpf`'s maps, on descriptors of their own.
    fn of(ebpf: &Ebpf, flow_capacity: u32) -> Result<Self> {
        Ok(Self {
            listener_stats: own_handle(ebpf, map_names::LISTENER_STATS)?,
            backend_stats: own_handle(ebpf, map_names::BACKEND_STATS)?,
            verdicts: own_handle(ebpf, map_names::VERDICTS)?,
            conntrack: own_handle(ebpf, map_names::CONNTRACK)?,
            snat: own_handle(ebpf, map_names::SNAT)?,
            flow_capacity,
        })
    }

    fn sum_counters(&self, map: &aya::maps::Map, name: &'static str, id: u32) -> Result<Counters> {
        let map: PerCpuArray<_, Counters> = PerCpuArray::try_from(map).map_err(map_err(name))?;
        let values = map.get(&id, 0).map_err(map_err(name))?;
        Ok(values.iter().fold(Counters::default(), |a, c| Counters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
        }))
    }

    /// As `flows`, two system calls per entry (the fallback, and the benchmark's peer).
    pub fn flows_one_by_one(&self) -> Result<Vec<(FlowKey, Flow)>> {
        // aya's `HashMap` reads LRU hash maps too.
        let map: HashMap<_, FlowKey, Flow> =
            HashMap::try_from(&self.conntrack).map_err(map_err(map_names::CONNTRACK))?;
        map.iter()
            .map(|r| r.map_err(map_err(map_names::CONNTRACK)))
            .collect()
    }
}

impl MapReader for DataplaneReader {
    fn listener_counters(&self, listener_id: u32) -> Result<Counters> {
        self.sum_counters(&self.listener_stats, map_names::LISTENER_STATS, listener_id)
    }

    fn backend_counters(&self, backend_id: u32) -> Result<Counters> {
        self.sum_counters(&self.backend_stats, map_names::BACKEND_STATS, backend_id)
    }

    fn verdicts(&self) -> Result<Verdicts> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(&self.verdicts).map_err(map_err(map_names::VERDICTS))?;
        let mut out = [0; verdict::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = map
                .get(&(i as u32), 0)
                .map_err(map_err(map_names::VERDICTS))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// Read in batches of thousands per system call (BPF_MAP_LOOKUP_BATCH, Linux 5.6+), else
    /// entry by entry.
    fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        read_hash(&self.conntrack, map_names::CONNTRACK)
    }

    fn reverse_flows(&self) -> Result<Vec<(FlowKey, ReverseFlow)>> {
        read_hash(&self.snat, map_names::SNAT)
    }

    fn flow_capacity(&self) -> u32 {
        self.flow_capacity
    }

    fn clock_ns(&self) -> u64 {
        monotonic_coarse_ns()
    }
}

/// The clock of the data plane's `last_seen` (`bpf_ktime_get_coarse_ns`).
fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
