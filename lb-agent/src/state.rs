//! What the data plane should be doing, and the map writes that make it so.
//!
//! `State` owns the ids (listeners, target groups, backends) and each group's live target set.
//! A change to a group's targets builds a new Maglev table into the group's idle slot, then
//! flips the group's active slot in one map write: new flows see the old table or the new one,
//! never a mix, and established flows keep their backend through the connection table.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    Addr, Backend, Counters, FAMILY_V4, FAMILY_V6, GroupInfo, ListenerInfo, ListenerKey,
    MAX_BACKENDS, PROTO_TCP, PROTO_UDP, Settings, VipKey, group_flags, listener_kind, port_bits,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, ListenerProtocol, Stickiness},
    dataplane::{Dataplane, DataplaneError},
    maglev::{MaglevError, MaglevTable, MaglevTarget},
};

/// Errors applying a change.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The kernel refused a map write.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The request names a target group that does not exist.
    #[error("no target group named `{0}`")]
    NoGroup(String),
    /// The target is already registered in that group.
    #[error("target {target} is already registered in group `{group}`")]
    Duplicate { group: String, target: SocketAddr },
    /// The target is not registered in that group.
    #[error("target {target} is not registered in group `{group}`")]
    NoTarget { group: String, target: SocketAddr },
    /// No port was given and the group has no default port.
    #[error("target {0} has no port and group `{1}` has no default port")]
    NoPort(IpAddr, String),
    /// The target's address family differs from the group's listeners (no NAT46/64).
    #[error("target {target} is IPv{got} but group `{group}` serves IPv{want} listeners")]
    Family {
        group: String,
        target: SocketAddr,
        got: u8,
        want: u8,
    },
    /// A weight outside 0..=1000.
    #[error("weight {0} is out of range 0..=1000")]
    Weight(u32),
    /// The Maglev table could not be built.
    #[error("building the Maglev table: {0}")]
    Maglev(#[from] MaglevError),
    /// Too many distinct backends.
    #[error("no free backend id (at most {MAX_BACKENDS} backends)")]
    BackendsFull,
    /// No full-NAT source address for a family a listener uses.
    #[error(
        "no IPv{0} full-NAT source address: set agent.snat_addresses or give the interface one"
    )]
    NoSnatAddress(u8),
}

type Result<T> = std::result::Result<T, StateError>;

/// Heaviest weight a target may have.
pub const MAX_WEIGHT: u32 = 1000;

/// A registered target of a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetEntry {
    pub address: SocketAddr,
    pub weight: u32,
    pub backend_id: u32,
}

#[derive(Debug)]
struct GroupState {
    id: u32,
    port: Option<u16>,
    flags: u32,
    /// Address family of the listeners that forward here, if any.
    family: Option<u8>,
    targets: Vec<TargetEntry>,
    active_slot: u32,
}

#[derive(Debug)]
struct ListenerState {
    id: u32,
    name: String,
    group: String,
    address: SocketAddr,
    protocol: ListenerProtocol,
}

/// Counters of a listener or target.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CountersView {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<Counters> for CountersView {
    fn from(c: Counters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
        }
    }
}

/// A target as `targets list` and `stats` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetView {
    pub group: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub counters: CountersView,
}

/// A listener as `stats` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: String,
    pub target_group: String,
    pub counters: CountersView,
}

/// Everything `stats` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsView {
    pub listeners: Vec<ListenerView>,
    pub targets: Vec<TargetView>,
    /// Packets per data-plane verdict (`lb_common::verdict::NAMES`).
    pub verdicts: BTreeMap<String, u64>,
    pub flows: usize,
}

/// The agent's view of what runs.
#[derive(Debug, Default)]
pub struct State {
    groups: BTreeMap<String, GroupState>,
    listeners: Vec<ListenerState>,
    /// Backend identity → (id, number of groups using it).
    backends: HashMap<SocketAddr, (u32, u32)>,
    free_backend_ids: Vec<u32>,
    next_backend_id: u32,
}

/// The data plane's bytes for an address.
pub fn addr_of(ip: IpAddr) -> (Addr, u8) {
    match ip {
        IpAddr::V4(v4) => (Addr::v4(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (Addr(v6.octets()), FAMILY_V6),
    }
}

fn family_of(ip: IpAddr) -> u8 {
    addr_of(ip).1
}

fn protocols(protocol: ListenerProtocol) -> &'static [u8] {
    match protocol {
        ListenerProtocol::Tcp => &[PROTO_TCP],
        ListenerProtocol::Udp => &[PROTO_UDP],
        ListenerProtocol::TcpUdp => &[PROTO_TCP, PROTO_UDP],
        // TLS and L7 listeners are TCP, served by the kernel stack (the agent's proxy).
        _ => &[PROTO_TCP],
    }
}

impl State {
    /// Programs the data plane from a validated config: settings, backends, Maglev tables,
    /// groups, then listeners last, so no listener is visible before its group is complete.
    pub fn apply(config: &Config, snat: &[IpAddr], dp: &mut Dataplane) -> Result<State> {
        let mut settings = Settings {
            maglev_size: dp.maglev_size(),
            snat_port_min: config.agent.snat_port_range.0,
            snat_port_max: config.agent.snat_port_range.1,
            ..Settings::default()
        };
        for ip in snat {
            let (addr, family) = addr_of(*ip);
            if family == FAMILY_V4 {
                settings.snat_v4 = addr;
                settings.has_snat_v4 = 1;
            } else {
                settings.snat_v6 = addr;
                settings.has_snat_v6 = 1;
            }
        }
        let mut state = State {
            next_backend_id: 1,
            ..State::default()
        };
        for (id, group) in (0u32..).zip(&config.target_groups) {
            let flags = match group.stickiness {
                Some(Stickiness::SourceIp) => group_flags::STICKY_SOURCE_IP,
                _ => 0,
            };
            let family = config
                .listeners
                .iter()
                .find(|l| l.forward_group() == Some(group.name.as_str()))
                .map(|l| family_of(l.address));
            state.groups.insert(
                group.name.clone(),
                GroupState {
                    id,
                    port: group.port,
                    flags,
                    family,
                    targets: Vec::new(),
                    active_slot: 0,
                },
            );
        }
        for listener in &config.listeners {
            let family = family_of(listener.address);
            let has_snat = if family == FAMILY_V4 {
                settings.has_snat_v4
            } else {
                settings.has_snat_v6
            };
            if has_snat == 0 && listener.protocol.is_l4() {
                return Err(StateError::NoSnatAddress(if family == FAMILY_V4 {
                    4
                } else {
                    6
                }));
            }
        }
        dp.set_settings(&settings)?;
        for group in &config.target_groups {
            let targets = group
                .targets
                .iter()
                .map(|t| {
                    let port = t
                        .port
                        .or(group.port)
                        .ok_or(StateError::NoPort(t.address, group.name.clone()))?;
                    Ok((SocketAddr::new(t.address, port), t.weight))
                })
                .collect::<Result<Vec<_>>>()?;
            for (address, weight) in targets {
                state.register(dp, &group.name, address, weight)?;
            }
            state.publish(dp, &group.name)?;
        }
        for (id, listener) in (0u32..).zip(&config.listeners) {
            let Some(group) = listener.forward_group() else {
                continue;
            };
            let group_id = state.groups[group].id;
            let kind = if listener.protocol.is_l4() {
                listener_kind::L4_NAT
            } else {
                listener_kind::PASS_TO_STACK
            };
            let (addr, family) = addr_of(listener.address);
            for &proto in protocols(listener.protocol) {
                let key = ListenerKey {
                    addr,
                    port: listener.port.to_be(),
                    proto,
                    family,
                };
                let info = ListenerInfo {
                    listener_id: id,
                    group_id,
                    kind,
                    _pad: [0; 3],
                };
                dp.set_listener(&key, &info)?;
                let bit = if proto == PROTO_TCP {
                    port_bits::TCP
                } else {
                    port_bits::UDP
                };
                dp.add_port(listener.port, bit)?;
            }
            dp.set_vip(&VipKey {
                addr,
                family,
                _pad0: 0,
                _pad1: 0,
            })?;
            state.listeners.push(ListenerState {
                id,
                name: listener.name.clone(),
                group: group.to_owned(),
                address: SocketAddr::new(listener.address, listener.port),
                protocol: listener.protocol,
            });
        }
        Ok(state)
    }

    /// Registers a target in a group (without publishing the group's table).
    fn register(
        &mut self,
        dp: &mut Dataplane,
        group_name: &str,
        address: SocketAddr,
        weight: u32,
    ) -> Result<()> {
        if weight > MAX_WEIGHT {
            return Err(StateError::Weight(weight));
        }
        let group = self
            .groups
            .get(group_name)
            .ok_or_else(|| StateError::NoGroup(group_name.to_owned()))?;
        if group.targets.iter().any(|t| t.address == address) {
            return Err(StateError::Duplicate {
                group: group_name.to_owned(),
                target: address,
            });
        }
        if let Some(want) = group.family {
            let got = family_of(address.ip());
            if got != want {
                return Err(StateError::Family {
                    group: group_name.to_owned(),
                    target: address,
                    got,
                    want,
                });
            }
        }
        let backend_id = match self.backends.get_mut(&address) {
            Some((id, users)) => {
                *users += 1;
                *id
            }
            None => {
                let id = match self.free_backend_ids.pop() {
                    Some(id) => id,
                    None if self.next_backend_id < MAX_BACKENDS => {
                        self.next_backend_id += 1;
                        self.next_backend_id - 1
                    }
                    None => return Err(StateError::BackendsFull),
                };
                let (addr, family) = addr_of(address.ip());
                dp.set_backend(
                    id,
                    &Backend {
                        addr,
                        port: address.port().to_be(),
                        family,
                        _pad: 0,
                    },
                )?;
                self.backends.insert(address, (id, 1));
                id
            }
        };
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| StateError::NoGroup(group_name.to_owned()))?;
        group.targets.push(TargetEntry {
            address,
            weight,
            backend_id,
        });
        Ok(())
    }

    /// Builds the group's table into its idle slot, then flips the active slot.
    fn publish(&mut self, dp: &mut Dataplane, group_name: &str) -> Result<()> {
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| StateError::NoGroup(group_name.to_owned()))?;
        let size = dp.maglev_size();
        let table: Vec<u32> = if group.targets.iter().all(|t| t.weight == 0) {
            // No target may receive new flows: an empty table (0 = no backend) drops them.
            vec![0; size as usize]
        } else {
            let keys: Vec<String> = group
                .targets
                .iter()
                .map(|t| t.address.to_string())
                .collect();
            let targets: Vec<MaglevTarget<'_>> = keys
                .iter()
                .zip(&group.targets)
                .map(|(key, t)| MaglevTarget {
                    key: key.as_bytes(),
                    weight: t.weight,
                })
                .collect();
            let built = MaglevTable::build(&targets, size)?;
            built
                .slots()
                .iter()
                .map(|&i| group.targets[i as usize].backend_id)
                .collect()
        };
        let idle = 1 - group.active_slot;
        dp.write_maglev(group.id, idle, &table)?;
        dp.set_group(
            group.id,
            &GroupInfo {
                active_slot: idle,
                flags: group.flags,
            },
        )?;
        group.active_slot = idle;
        Ok(())
    }

    /// The port a target given without one gets: the group's default port.
    pub fn resolve_target(
        &self,
        group_name: &str,
        ip: IpAddr,
        port: Option<u16>,
    ) -> Result<SocketAddr> {
        let group = self
            .groups
            .get(group_name)
            .ok_or_else(|| StateError::NoGroup(group_name.to_owned()))?;
        let port = port
            .or(group.port)
            .ok_or_else(|| StateError::NoPort(ip, group_name.to_owned()))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// Registers a target live: new flows may reach it at once.
    pub fn add_target(
        &mut self,
        dp: &mut Dataplane,
        group: &str,
        address: SocketAddr,
        weight: u32,
    ) -> Result<()> {
        self.register(dp, group, address, weight)?;
        if let Err(e) = self.publish(dp, group) {
            // Nothing half-applied: forget the registration again.
            let _ = self.unregister(group, address);
            return Err(e);
        }
        Ok(())
    }

    /// Deregisters a target live: it gets no new flows; its established flows stay.
    pub fn remove_target(
        &mut self,
        dp: &mut Dataplane,
        group: &str,
        address: SocketAddr,
    ) -> Result<()> {
        let entry = self.unregister(group, address)?;
        if let Err(e) = self.publish(dp, group) {
            if let Some(g) = self.groups.get_mut(group) {
                g.targets.push(entry);
            }
            return Err(e);
        }
        Ok(())
    }

    fn unregister(&mut self, group_name: &str, address: SocketAddr) -> Result<TargetEntry> {
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| StateError::NoGroup(group_name.to_owned()))?;
        let index = group
            .targets
            .iter()
            .position(|t| t.address == address)
            .ok_or_else(|| StateError::NoTarget {
                group: group_name.to_owned(),
                target: address,
            })?;
        let entry = group.targets.remove(index);
        if let Some((id, users)) = self.backends.get_mut(&address) {
            *users -= 1;
            if *users == 0 {
                // The id may be reused: established flows carry their backend's address, so a
                // reuse only moves counters, never packets.
                self.free_backend_ids.push(*id);
                self.backends.remove(&address);
            }
        }
        Ok(entry)
    }

    /// Targets of one group, or of all.
    pub fn targets(&self, dp: &Dataplane, group: Option<&str>) -> Result<Vec<TargetView>> {
        if let Some(name) = group
            && !self.groups.contains_key(name)
        {
            return Err(StateError::NoGroup(name.to_owned()));
        }
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            if group.is_some_and(|want| want != name) {
                continue;
            }
            for t in &g.targets {
                out.push(TargetView {
                    group: name.clone(),
                    address: t.address,
                    weight: t.weight,
                    counters: dp.backend_counters(t.backend_id)?.into(),
                });
            }
        }
        Ok(out)
    }

    /// Counters of every listener and target, and the data plane's verdicts.
    pub fn stats(&self, dp: &Dataplane) -> Result<StatsView> {
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                Ok(ListenerView {
                    name: l.name.clone(),
                    address: l.address,
                    protocol: l.protocol.as_str().to_owned(),
                    target_group: l.group.clone(),
                    counters: dp.listener_counters(l.id)?.into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let verdicts = dp
            .verdicts()?
            .iter()
            .zip(lb_common::verdict::NAMES)
            .map(|(count, name)| (name.to_owned(), *count))
            .collect();
        Ok(StatsView {
            listeners,
            targets: self.targets(dp, None)?,
            verdicts,
            flows: dp.flows()?.len(),
        })
    }

    /// The group's backend ids in slot order of its active table (for tests).
    pub fn group_id(&self, name: &str) -> Option<u32> {
        self.groups.get(name).map(|g| g.id)
    }

    /// The backend id a target address has, if registered anywhere.
    pub fn backend_id(&self, address: SocketAddr) -> Option<u32> {
        self.backends.get(&address).map(|(id, _)| *id)
    }
}
