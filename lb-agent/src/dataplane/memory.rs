//! The data plane's maps in memory: the twin of `kernel::Dataplane` for unit tests of
//! everything above the maps (target lifecycle, reloads, rollback) without root or BPF.
//!
//! It holds what the kernel maps would hold, counts the writes made, can be told to refuse a
//! write (as the kernel may, e.g. with ENOMEM), and lets a test put flows into the connection
//! table and move the data plane's clock. It records the instance veths it is attached to
//! (`InstanceLinks`), and those an earlier agent left pinned.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{
    Backend, Counters, Flow, FlowKey, GroupInfo, ListenerInfo, ListenerKey, ReverseFlow, Settings,
    VipKey, map_names,
};

use super::{
    AttachMode, DataplaneError, InstanceAttached, InstanceLinks, InstanceVeth, MapReader, Maps,
    Result, Verdicts, refused,
};

/// The maps, in memory.
#[derive(Debug, Clone)]
pub struct MemoryMaps {
    maglev_size: u32,
    group_capacity: u32,
    adopted: bool,
    pub settings: Settings,
    pub listeners: Vec<(ListenerKey, ListenerInfo)>,
    pub ports: BTreeMap<u16, u32>,
    pub vips: Vec<VipKey>,
    pub backends: BTreeMap<u32, Backend>,
    pub groups: Vec<GroupInfo>,
    /// Every group's two slots, as the kernel's MAGLEV array lays them out.
    maglev: Vec<u32>,
    /// The connection table.
    pub flows: Vec<(FlowKey, Flow)>,
    /// The reverse-NAT entries (backends' halves); a flow without one is judged on its
    /// forward half alone.
    pub reverse_flows: Vec<(FlowKey, ReverseFlow)>,
    pub listener_counters: BTreeMap<u32, Counters>,
    pub backend_counters: BTreeMap<u32, Counters>,
    pub verdicts: Verdicts,
    /// The data plane's clock (`MapReader::clock_ns`).
    pub clock_ns: u64,
    /// Map writes made so far.
    pub writes: usize,
    /// Writes still allowed before every further one is refused; none: no limit.
    refuse_after: Option<usize>,
    /// `Detach::detach` was called.
    pub detached: bool,
    /// The instance veths attached, by LB end.
    pub instance_veths: BTreeMap<String, InstanceVeth>,
    /// Instance veths an earlier agent left attached (pinned), not yet taken over, by LB end.
    pub pinned_instances: BTreeSet<String>,
    /// Interfaces that do not exist: attaching to one fails as the kernel's would.
    pub absent_interfaces: BTreeSet<String>,
}

impl MemoryMaps {
    /// Empty maps for `group_capacity` groups of Maglev tables of `maglev_size` entries.
    pub fn new(maglev_size: u32, group_capacity: u32) -> Self {
        Self {
            maglev_size,
            group_capacity,
            adopted: false,
            settings: Settings::default(),
            listeners: Vec::new(),
            ports: BTreeMap::new(),
            vips: Vec::new(),
            backends: BTreeMap::new(),
            groups: vec![GroupInfo::default(); group_capacity as usize],
            maglev: vec![0; (group_capacity * 2 * maglev_size) as usize],
            flows: Vec::new(),
            reverse_flows: Vec::new(),
            listener_counters: BTreeMap::new(),
            backend_counters: BTreeMap::new(),
            verdicts: [0; lb_common::verdict::COUNT as usize],
            clock_ns: 1_000_000_000_000,
            writes: 0,
            refuse_after: None,
            detached: false,
            instance_veths: BTreeMap::new(),
            pinned_instances: BTreeSet::new(),
            absent_interfaces: BTreeSet::new(),
        }
    }

    /// These maps as a restarted agent finds them pinned: contents kept, marked adopted; the
    /// instance veths stay attached through their pins, for the new agent to take over.
    pub fn adopt(mut self) -> Self {
        self.adopted = true;
        self.writes = 0;
        let veths = std::mem::take(&mut self.instance_veths);
        self.pinned_instances.extend(veths.into_keys());
        self
    }

    /// Refuses every write after the next `writes` ones (0: the next write already fails).
    pub fn refuse_writes_after(&mut self, writes: usize) {
        self.refuse_after = Some(writes);
    }

    /// Accepts every write again.
    pub fn accept_writes(&mut self) {
        self.refuse_after = None;
    }

    /// The active Maglev table of group `id`.
    pub fn active_table(&self, id: u32) -> &[u32] {
        let slot = self.groups.get(id as usize).map_or(0, |g| g.active_slot);
        let base = GroupInfo::maglev_base(id, slot, self.maglev_size) as usize;
        &self.maglev[base..base + self.maglev_size as usize]
    }

    /// How many slots of group `id`'s active table hold each backend id.
    pub fn table_shares(&self, id: u32) -> BTreeMap<u32, usize> {
        let mut shares = BTreeMap::new();
        for &backend in self.active_table(id) {
            *shares.entry(backend).or_insert(0) += 1;
        }
        shares
    }

    /// Counts a write, or refuses it.
    fn write(&mut self, name: &'static str) -> Result<()> {
        match &mut self.refuse_after {
            Some(0) => Err(refused(name, "bpf_map_update_elem", libc::ENOMEM)),
            Some(left) => {
                *left -= 1;
                self.writes += 1;
                Ok(())
            }
            None => {
                self.writes += 1;
                Ok(())
            }
        }
    }

    fn check_group(&self, id: u32) -> Result<()> {
        if id >= self.group_capacity {
            return Err(DataplaneError::GroupCapacity(id));
        }
        Ok(())
    }
}

impl super::Detach for MemoryMaps {
    fn detach(&mut self) -> Result<()> {
        self.detached = true;
        self.instance_veths.clear();
        self.pinned_instances.clear();
        Ok(())
    }
}

impl InstanceLinks for MemoryMaps {
    fn attach_instance(&mut self, veth: &InstanceVeth) -> Result<InstanceAttached> {
        let attached = |taken_over| InstanceAttached {
            mode: AttachMode::Native,
            taken_over,
        };
        if self.instance_veths.contains_key(&veth.lb_interface) {
            return Ok(attached(false));
        }
        for iface in [&veth.lb_interface, &veth.interface] {
            if self.absent_interfaces.contains(iface) {
                return Err(DataplaneError::NoInterface(iface.clone()));
            }
        }
        // The LB end goes into the redirect map: a map write, which may be refused.
        self.write(map_names::TX_PORTS)?;
        let taken_over = self.pinned_instances.remove(&veth.lb_interface);
        self.instance_veths
            .insert(veth.lb_interface.clone(), veth.clone());
        Ok(attached(taken_over))
    }

    fn detach_instance(&mut self, lb_interface: &str) -> Result<bool> {
        let attached = self.instance_veths.remove(lb_interface).is_some();
        let pinned = self.pinned_instances.remove(lb_interface);
        Ok(attached || pinned)
    }

    fn retain_instances(&mut self, keep: &[String]) -> Result<Vec<String>> {
        let dropped: Vec<String> = self
            .instance_links()
            .into_iter()
            .filter(|l| !keep.contains(l))
            .collect();
        for lb_interface in &dropped {
            self.detach_instance(lb_interface)?;
        }
        Ok(dropped)
    }

    fn instance_links(&self) -> Vec<String> {
        let mut links: Vec<String> = self.instance_veths.keys().cloned().collect();
        links.extend(self.pinned_instances.iter().cloned());
        links.sort_unstable();
        links.dedup();
        links
    }
}

impl MapReader for MemoryMaps {
    fn listener_counters(&self, listener_id: u32) -> Result<Counters> {
        Ok(self
            .listener_counters
            .get(&listener_id)
            .copied()
            .unwrap_or_default())
    }

    fn backend_counters(&self, backend_id: u32) -> Result<Counters> {
        Ok(self
            .backend_counters
            .get(&backend_id)
            .copied()
            .unwrap_or_default())
    }

    fn verdicts(&self) -> Result<Verdicts> {
        Ok(self.verdicts)
    }

    fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        Ok(self.flows.clone())
    }

    fn reverse_flows(&self) -> Result<Vec<(FlowKey, ReverseFlow)>> {
        Ok(self.reverse_flows.clone())
    }

    fn flow_capacity(&self) -> u32 {
        lb_common::CONNTRACK_SIZE
    }

    fn clock_ns(&self) -> u64 {
        self.clock_ns
    }
}

impl Maps for MemoryMaps {
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
        Ok(self.settings)
    }

    fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        self.write(map_names::SETTINGS)?;
        self.settings = *settings;
        Ok(())
    }

    fn listeners(&self) -> Result<Vec<(ListenerKey, ListenerInfo)>> {
        Ok(self.listeners.clone())
    }

    fn set_listener(&mut self, key: &ListenerKey, info: &ListenerInfo) -> Result<()> {
        self.write(map_names::LISTENERS)?;
        self.listeners.retain(|(k, _)| k != key);
        self.listeners.push((*key, *info));
        Ok(())
    }

    fn remove_listener(&mut self, key: &ListenerKey) -> Result<()> {
        self.write(map_names::LISTENERS)?;
        self.listeners.retain(|(k, _)| k != key);
        Ok(())
    }

    fn ports(&self) -> Result<Vec<(u16, u32)>> {
        Ok(self
            .ports
            .iter()
            .filter(|&(_, &bits)| bits != 0)
            .map(|(&p, &b)| (p, b))
            .collect())
    }

    fn set_port(&mut self, port: u16, bits: u32) -> Result<()> {
        self.write(map_names::PORTS)?;
        self.ports.insert(port, bits);
        Ok(())
    }

    fn vips(&self) -> Result<Vec<VipKey>> {
        Ok(self.vips.clone())
    }

    fn set_vip(&mut self, key: &VipKey) -> Result<()> {
        self.write(map_names::VIPS)?;
        if !self.vips.contains(key) {
            self.vips.push(*key);
        }
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.write(map_names::VIPS)?;
        self.vips.retain(|k| k != key);
        Ok(())
    }

    fn backend(&self, id: u32) -> Result<Backend> {
        Ok(self.backends.get(&id).copied().unwrap_or_default())
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.write(map_names::BACKENDS)?;
        self.backends.insert(id, *backend);
        Ok(())
    }

    fn group(&self, id: u32) -> Result<GroupInfo> {
        self.check_group(id)?;
        Ok(self.groups[id as usize])
    }

    fn set_group(&mut self, id: u32, info: &GroupInfo) -> Result<()> {
        self.check_group(id)?;
        self.write(map_names::GROUPS)?;
        self.groups[id as usize] = *info;
        Ok(())
    }

    fn write_maglev(&mut self, id: u32, slot: u32, table: &[u32]) -> Result<()> {
        self.check_group(id)?;
        if table.len() != self.maglev_size as usize {
            return Err(DataplaneError::TableSize {
                got: table.len(),
                expected: self.maglev_size,
            });
        }
        self.write(map_names::MAGLEV)?;
        let base = GroupInfo::maglev_base(id, slot, self.maglev_size) as usize;
        self.maglev[base..base + table.len()].copy_from_slice(table);
        Ok(())
    }

    fn maglev_entry(&self, id: u32, slot: u32, index: u32) -> Result<u32> {
        self.check_group(id)?;
        let at = GroupInfo::maglev_base(id, slot, self.maglev_size) + index;
        Ok(self.maglev.get(at as usize).copied().unwrap_or_default())
    }

    fn purge_backend(&mut self, backend_id: u32) -> Result<usize> {
        self.write(map_names::CONNTRACK)?;
        let before = self.flows.len();
        self.flows.retain(|(_, flow)| flow.backend_id != backend_id);
        self.reverse_flows
            .retain(|(_, reverse)| reverse.backend_id != backend_id);
        Ok(before - self.flows.len())
    }
}
