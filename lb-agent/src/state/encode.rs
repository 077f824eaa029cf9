//! The config in the data plane's terms: settings, listener entries, VIPs and ports, backend
//! entries, group flags, addresses as bytes. `write_listeners` writes only what the maps do not
//! hold already.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    Addr, Backend, FAMILY_V4, FAMILY_V6, ListenerInfo, ListenerKey, PROTO_TCP, PROTO_UDP, Settings,
    VipKey, group_flags, listener_kind, port_bits,
};

use super::{ListenerState, Result, State, StateError};
use crate::{
    config::{Config, ListenerProtocol, Stickiness, TargetGroup},
    dataplane::Maps,
};

/// The data-plane settings `config` asks for, with the flow hash's `hash_seed`; an error if a
/// listener's family has no full-NAT source address.
pub(super) fn settings_for(
    config: &Config,
    snat: &[IpAddr],
    maglev_size: u32,
    hash_seed: u32,
) -> Result<Settings> {
    let mut settings = Settings {
        maglev_size,
        hash_seed,
        snat_port_min: config.agent.snat_port_range.0,
        snat_port_max: config.agent.snat_port_range.1,
        tcp_idle_s: config.agent.tcp_idle_timeout.as_secs() as u32,
        udp_idle_s: config.agent.udp_idle_timeout.as_secs() as u32,
        closed_s: config.agent.closed_timeout.as_secs() as u32,
        half_open_s: config.agent.half_open_timeout.as_secs() as u32,
        new_flows_per_s: config.agent.new_flow_rate_limit,
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
    Ok(settings)
}

/// The flow hash's seed at start: the config's; else the one an adopted data plane uses (its
/// flows and their SNAT ports were placed with it); else a random one, for this node alone.
pub(super) fn hash_seed_for(config: &Config, dp: &impl Maps) -> u32 {
    if let Some(seed) = config.agent.flow_hash_seed {
        return seed;
    }
    if dp.adopted()
        && let Ok(settings) = dp.settings()
    {
        return settings.hash_seed;
    }
    tracing::warn!(
        "[agent] flow_hash_seed is not set: this node hashes flows with a random seed; give every node of a cluster the same one"
    );
    random_seed()
}

/// 32 bits from the standard library's per-process random hasher keys (the OS's randomness).
fn random_seed() -> u32 {
    use std::hash::BuildHasher as _;
    let now = std::time::SystemTime::now();
    std::collections::hash_map::RandomState::new().hash_one(now) as u32
}

/// The address family of the listeners that forward to `group`; none: no listener does.
pub(super) fn group_family(config: &Config, group: &str) -> Option<u8> {
    config
        .listeners
        .iter()
        .find(|l| l.forwarded_groups().any(|g| g == group))
        .map(|l| family_of(l.address))
}

/// A group's data-plane flags.
pub(super) fn flags_of(group: &TargetGroup) -> u32 {
    match group.stickiness {
        Some(Stickiness::SourceIp) => group_flags::STICKY_SOURCE_IP,
        _ => 0,
    }
}

/// The targets a group's config registers, with their ports and weights.
pub(super) fn desired_targets(group: &TargetGroup) -> Result<Vec<(SocketAddr, u32)>> {
    group
        .targets
        .iter()
        .map(|t| {
            let port = t
                .port
                .or(group.port)
                .ok_or(StateError::NoPort(t.address, group.name.clone()))?;
            Ok((SocketAddr::new(t.address, port), t.weight))
        })
        .collect()
}

/// The data plane's bytes for an address.
pub fn addr_of(ip: IpAddr) -> (Addr, u8) {
    match ip {
        IpAddr::V4(v4) => (Addr::v4(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (Addr(v6.octets()), FAMILY_V6),
    }
}

pub(super) fn family_of(ip: IpAddr) -> u8 {
    addr_of(ip).1
}

pub(super) fn protocols(protocol: ListenerProtocol) -> &'static [u8] {
    match protocol {
        ListenerProtocol::Tcp => &[PROTO_TCP],
        ListenerProtocol::Udp => &[PROTO_UDP],
        ListenerProtocol::TcpUdp => &[PROTO_TCP, PROTO_UDP],
        // TLS and L7 listeners are TCP, served by the kernel stack (the agent's proxy).
        _ => &[PROTO_TCP],
    }
}

/// The backend entry of a target.
pub(super) fn backend_of(address: SocketAddr) -> Backend {
    let (addr, family) = addr_of(address.ip());
    Backend {
        addr,
        port: address.port().to_be(),
        family,
        _pad: 0,
    }
}

/// An address from the data plane's bytes.
pub(super) fn ip_of(addr: &Addr, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        let b = addr.0;
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(addr.0)
    }
}

impl State {
    /// The listeners of `config` that forward to a group, keeping the ids `previous` gave
    /// their names (new ones take the smallest free ids).
    pub(super) fn listener_states(
        &self,
        config: &Config,
        previous: &BTreeMap<String, u32>,
    ) -> Vec<ListenerState> {
        let mut taken: Vec<u32> = Vec::new();
        let mut out: Vec<ListenerState> = Vec::new();
        let mut fresh = Vec::new();
        for listener in &config.listeners {
            let group = listener.forward_group();
            // An L4 listener without a group forwards nowhere (it is refused by validation);
            // an L7 one still needs its entry, so that its traffic is counted as passed up.
            if group.is_none() && listener.protocol.is_l4() {
                continue;
            }
            let id = previous.get(&listener.name).copied();
            if let Some(id) = id {
                taken.push(id);
            } else {
                fresh.push(out.len());
            }
            out.push(ListenerState {
                id: id.unwrap_or(u32::MAX),
                name: listener.name.clone(),
                group: group.map(str::to_owned),
                address: SocketAddr::new(listener.address, listener.port),
                protocol: listener.protocol,
            });
        }
        let mut free = (0u32..).filter(|id| !taken.contains(id));
        for i in fresh {
            out[i].id = free.next().unwrap_or(u32::MAX);
        }
        out
    }

    /// Writes `listeners` with their ports and VIPs, skipping entries the maps hold already;
    /// with `prune`, then removes the entries none of them has. New entries are written
    /// first: a listener that stays is never missing.
    pub(super) fn write_listeners(
        &mut self,
        dp: &mut impl Maps,
        listeners: Vec<ListenerState>,
        prune: bool,
    ) -> Result<()> {
        let mut entries: Vec<(ListenerKey, ListenerInfo)> = Vec::new();
        let mut ports: BTreeMap<u16, u32> = BTreeMap::new();
        let mut vips = Vec::new();
        for listener in &listeners {
            let group_id = match &listener.group {
                Some(group) => self.group(group)?.id,
                // The data plane reads no group for traffic it passes up.
                None => 0,
            };
            let kind = if listener.protocol.is_l4() {
                listener_kind::L4_NAT
            } else {
                listener_kind::PASS_TO_STACK
            };
            let (addr, family) = addr_of(listener.address.ip());
            let port = listener.address.port();
            for &proto in protocols(listener.protocol) {
                let key = ListenerKey {
                    addr,
                    port: port.to_be(),
                    proto,
                    family,
                };
                let info = ListenerInfo {
                    listener_id: listener.id,
                    group_id,
                    kind,
                    _pad: [0; 3],
                };
                entries.push((key, info));
                let bit = if proto == PROTO_TCP {
                    port_bits::TCP
                } else {
                    port_bits::UDP
                };
                *ports.entry(port).or_insert(0) |= bit;
            }
            let vip = VipKey {
                addr,
                family,
                _pad0: 0,
                _pad1: 0,
            };
            if !vips.contains(&vip) {
                vips.push(vip);
            }
        }
        let held = dp.listeners()?;
        for (key, info) in &entries {
            if !held.contains(&(*key, *info)) {
                dp.set_listener(key, info)?;
            }
        }
        let held_vips = dp.vips()?;
        for vip in &vips {
            if !held_vips.contains(vip) {
                dp.set_vip(vip)?;
            }
        }
        let held_ports = dp.ports()?;
        for (&port, &bits) in &ports {
            if !held_ports.contains(&(port, bits)) {
                dp.set_port(port, bits)?;
            }
        }
        self.listeners = listeners;
        if prune {
            for (port, _) in held_ports {
                if !ports.contains_key(&port) {
                    dp.set_port(port, 0)?;
                }
            }
            for (key, _) in held {
                if !entries.iter().any(|(k, _)| *k == key) {
                    dp.remove_listener(&key)?;
                }
            }
            for vip in held_vips {
                if !vips.contains(&vip) {
                    dp.remove_vip(&vip)?;
                }
            }
        }
        Ok(())
    }
}
