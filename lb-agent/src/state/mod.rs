//! What the data plane should be doing, and the map writes that make it so.
//!
//! `State` owns the ids (listeners, target groups, backends) and each group's registered
//! targets with their health and lifecycle. Which targets receive new flows follows from
//! those: a change builds a new Maglev table into the group's idle slot, then flips the
//! group's active slot in one map write: new flows see the old table or the new one, never a
//! mix, and established flows keep their backend through the connection table.
//!
//! In service (in the table) are a group's targets that are not draining, have a weight above
//! 0 and pass its checks: healthy, or still `initial` when the agent started with them (a
//! target added later waits for `healthy_threshold` successes). With none in service, a
//! `fail_open` group (the default) puts every registered, non-draining target with a weight
//! in the table. A group without checks has every target in service.

mod reload;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{
    Addr, Backend, Counters, FAMILY_V4, FAMILY_V6, GroupInfo, ListenerInfo, ListenerKey,
    MAX_BACKENDS, PROTO_TCP, PROTO_UDP, Settings, VipKey, group_flags, listener_kind, port_bits,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{
        Config, GroupProtocol, HealthCheck, ListenerProtocol, Stickiness, TargetGroup,
        duration_text,
    },
    dataplane::{Dataplane, DataplaneError},
    health::{
        Health, TargetState, Thresholds, Transition,
        probe::{Probe, ProbeResult},
        reason,
    },
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
    /// A group's health check cannot be run as configured.
    #[error("target group `{group}`: health check: {message}")]
    HealthCheck { group: String, message: String },
    /// The change cannot be applied to the running data plane.
    #[error("needs a restart with `lb-agent detach` first: {0}")]
    NeedsRestart(String),
    /// No full-NAT source address for a family a listener uses.
    #[error(
        "no IPv{0} full-NAT source address: set agent.snat_addresses or give the interface one"
    )]
    NoSnatAddress(u8),
}

type Result<T> = std::result::Result<T, StateError>;

/// Heaviest weight a target may have.
pub const MAX_WEIGHT: u32 = 1000;

/// Weights are scaled by this in the Maglev table, so a slow-starting target can hold a
/// small fraction of its weight (scaling every weight alike changes no table).
const WEIGHT_SCALE: u32 = 100;

/// How often draining targets' live flows are counted (a walk of the connection table).
const DRAIN_SCAN_EVERY: Duration = Duration::from_secs(5);

/// Steps a slow start's ramp takes: each one rebuilds the group's table.
const SLOW_START_STEPS: u32 = 20;

/// A registered target of a group.
#[derive(Debug, Clone)]
struct TargetEntry {
    address: SocketAddr,
    weight: u32,
    /// This registration's id in the data plane (per group and target: health, draining and
    /// counters are per group).
    backend_id: u32,
    /// Tells this registration from an earlier one of the same address.
    registration: u64,
    health: Health,
    /// Deregistered: leaves for good at this instant.
    draining_until: Option<Instant>,
    /// Turned healthy at this instant and is ramping up its weight.
    slow_start_since: Option<Instant>,
}

/// A group's health check as the agent runs it.
#[derive(Debug, Clone)]
struct GroupCheck {
    probe: Arc<Probe>,
    interval: Duration,
    thresholds: Thresholds,
    /// Changes whenever the check is replaced, so running checks restart with the new one.
    generation: u64,
}

impl GroupCheck {
    /// The check `config` describes; an error naming what is wrong with it.
    fn new(config: &HealthCheck, generation: u64) -> std::result::Result<Self, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            let text: Vec<String> = problems
                .into_iter()
                .map(|(field, message)| format!("{field}: {message}"))
                .collect();
            return Err(text.join("; "));
        }
        Ok(Self {
            probe: Arc::new(Probe::new(config)?),
            interval: config.interval,
            thresholds: Thresholds {
                healthy: config.healthy_threshold,
                unhealthy: config.unhealthy_threshold,
            },
            generation,
        })
    }
}

#[derive(Debug, Clone)]
struct GroupState {
    id: u32,
    protocol: GroupProtocol,
    port: Option<u16>,
    flags: u32,
    /// Address family of the listeners that forward here; none: no listener does (unused).
    family: Option<u8>,
    targets: Vec<TargetEntry>,
    active_slot: u32,
    /// The check as configured (`enabled = false` included); none: the group's default.
    health_check: Option<HealthCheck>,
    /// The check that runs; none: targets are not checked.
    check: Option<GroupCheck>,
    deregistration_delay: Duration,
    terminate_on_unhealthy: bool,
    fail_open: bool,
    slow_start: Duration,
    /// What the active table was built from: (backend id, scaled weight); `None` before the
    /// first build.
    published: Option<Vec<(u32, u32)>>,
    /// The active table holds every target because none is in service.
    failing_open: bool,
    /// Tables published so far (each one a rebuild and a flip).
    table_version: u64,
}

impl GroupState {
    /// Whether the target passes this group's checks (ignoring weight and draining).
    fn passes(&self, t: &TargetEntry) -> bool {
        if self.check.is_none() || self.family.is_none() {
            // Not checked: checks disabled, or no listener uses the group.
            return true;
        }
        match t.health.state {
            TargetState::Healthy => true,
            TargetState::Initial => t.health.in_service_while_initial(),
            _ => false,
        }
    }

    /// Puts `check` in force, configured as `configured`. Targets of a group that was not
    /// checked were in service unchecked: they stay so (`initial`) until their first check.
    fn install_check(&mut self, check: Option<GroupCheck>, configured: Option<HealthCheck>) {
        if check.is_some() && self.check.is_none() {
            for t in &mut self.targets {
                t.health = Health::new(true);
            }
        }
        self.check = check;
        self.health_check = configured;
    }

    /// Whether a target can take new flows at all: registered (not draining), with a weight.
    fn eligible(t: &TargetEntry) -> bool {
        t.draining_until.is_none() && t.weight > 0
    }

    /// The weight a target in service has now (scaled), with its slow start's ramp.
    fn scaled_weight(&self, t: &TargetEntry, now: Instant) -> u32 {
        let full = t.weight * WEIGHT_SCALE;
        match t.slow_start_since {
            Some(since) if !self.slow_start.is_zero() => {
                let done = now.saturating_duration_since(since).as_secs_f64()
                    / self.slow_start.as_secs_f64();
                // In steps, so a ramp rebuilds the table SLOW_START_STEPS times, not per tick.
                let step =
                    (done * f64::from(SLOW_START_STEPS)).floor() / f64::from(SLOW_START_STEPS);
                if step >= 1.0 {
                    full
                } else {
                    ((f64::from(full) * step) as u32).max(1)
                }
            }
            _ => full,
        }
    }

    /// Each target's scaled weight in the table now, in target order, and whether the group
    /// fails open (no target in service, so every eligible one is in the table).
    fn plan(&self, now: Instant) -> (Vec<(u32, u32)>, bool) {
        let serving: Vec<(u32, u32)> = self
            .targets
            .iter()
            .map(|t| {
                let weight = if Self::eligible(t) && self.passes(t) {
                    self.scaled_weight(t, now)
                } else {
                    0
                };
                (t.backend_id, weight)
            })
            .collect();
        if serving.iter().any(|&(_, w)| w > 0) || !self.fail_open {
            return (serving, false);
        }
        let all: Vec<(u32, u32)> = self
            .targets
            .iter()
            .map(|t| {
                let weight = if Self::eligible(t) {
                    t.weight * WEIGHT_SCALE
                } else {
                    0
                };
                (t.backend_id, weight)
            })
            .collect();
        let failing_open = all.iter().any(|&(_, w)| w > 0);
        (all, failing_open)
    }

    /// The weight a target has in the active table (scaled), 0 if none.
    fn published_weight(&self, backend_id: u32) -> u32 {
        self.published
            .iter()
            .flatten()
            .find(|&&(id, _)| id == backend_id)
            .map_or(0, |&(_, w)| w)
    }

    /// The state `targets list` shows.
    fn shown_state(&self, t: &TargetEntry) -> (TargetState, Option<&'static str>) {
        if t.draining_until.is_some() {
            (
                TargetState::Draining,
                Some(reason::DEREGISTRATION_IN_PROGRESS),
            )
        } else if self.family.is_none() {
            (TargetState::Unused, Some(reason::NOT_IN_USE))
        } else if self.check.is_none() {
            (
                TargetState::Unavailable,
                Some(reason::HEALTH_CHECK_DISABLED),
            )
        } else {
            (t.health.state, t.health.reason)
        }
    }
}

/// One health check the monitor should be running.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub group: String,
    pub target: SocketAddr,
    pub registration: u64,
    pub probe: Arc<Probe>,
    /// The group check's generation: a result of a replaced check is ignored.
    pub generation: u64,
    pub interval: Duration,
    /// The first check comes at a random time within this (spreads start-up's checks).
    pub first_within: Duration,
}

#[derive(Debug, Clone)]
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
    /// The registered weight.
    pub weight: u32,
    /// The weight new flows see now: 0 when out of service, less than `weight` while slow
    /// starting.
    pub effective_weight: f64,
    pub state: TargetState,
    /// AWS's reason code for the state (none when healthy).
    pub reason: Option<String>,
    /// The reason in words.
    pub description: Option<String>,
    /// Whether new flows may reach it now.
    pub in_service: bool,
    /// How long its last health check took, in milliseconds.
    pub last_check_ms: Option<f64>,
    /// Health checks run since it was registered.
    pub checks: u64,
    /// Its entries in the connection table.
    pub active_flows: u64,
    pub counters: CountersView,
}

/// A target group as `groups list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub protocol: String,
    pub port: Option<u16>,
    /// Whether a listener forwards to it.
    pub in_use: bool,
    /// The health check as configured or defaulted (none: a `udp` group without one).
    pub health_check: Option<HealthCheck>,
    /// Whether its targets are being checked.
    pub checked: bool,
    pub deregistration_delay: String,
    pub slow_start: String,
    pub terminate_on_unhealthy: bool,
    pub fail_open: bool,
    /// No target is in service and new flows go to every registered one.
    pub failing_open: bool,
    /// Registered targets, draining ones included.
    pub targets: usize,
    /// Targets in the active table.
    pub in_service: usize,
    /// Targets its checks found unhealthy.
    pub unhealthy: usize,
    /// Maglev tables published so far: it grows only when the group's table is rebuilt.
    pub table_version: u64,
}

/// A listener as `stats` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: String,
    pub target_group: String,
    /// Its entries in the connection table.
    pub active_flows: u64,
    pub counters: CountersView,
}

/// Everything `stats` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsView {
    pub listeners: Vec<ListenerView>,
    pub targets: Vec<TargetView>,
    /// Packets per data-plane verdict (`lb_common::verdict::NAMES`).
    pub verdicts: BTreeMap<String, u64>,
    /// Entries in the connection table.
    pub flows: usize,
    /// Those of live flows (the rest are over and give their SNAT ports to new flows).
    pub active_flows: usize,
    /// Target state changes since the agent started, as `"initial->healthy": 3`.
    pub health_transitions: BTreeMap<String, u64>,
}

/// A connection-table entry as `flows` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowView {
    pub protocol: String,
    pub client: SocketAddr,
    /// The listener's address (the VIP and port the client reached).
    pub listener: SocketAddr,
    pub backend: SocketAddr,
    /// The source the backend sees (full NAT).
    pub snat: SocketAddr,
    pub target_group: Option<String>,
    /// Seconds since the client's last packet (to a second).
    pub idle_seconds: u64,
    /// A FIN or RST went by from the client.
    pub closing: bool,
    /// Not over yet: its SNAT port stays its own (see `agent.*_timeout`).
    pub active: bool,
}

/// The agent's view of what runs.
#[derive(Debug, Clone, Default)]
pub struct State {
    groups: BTreeMap<String, GroupState>,
    listeners: Vec<ListenerState>,
    free_backend_ids: Vec<u32>,
    next_backend_id: u32,
    next_registration: u64,
    /// The last `GroupCheck::generation` handed out.
    check_generation: u64,
    /// The data-plane settings written.
    settings: Settings,
    /// When draining targets' flows are looked at next.
    next_drain_scan: Option<Instant>,
    transitions: BTreeMap<String, u64>,
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

/// The data-plane settings `config` asks for; an error if a listener's family has no
/// full-NAT source address.
fn settings_for(config: &Config, snat: &[IpAddr], maglev_size: u32) -> Result<Settings> {
    let mut settings = Settings {
        maglev_size,
        snat_port_min: config.agent.snat_port_range.0,
        snat_port_max: config.agent.snat_port_range.1,
        tcp_idle_s: config.agent.tcp_idle_timeout.as_secs() as u32,
        udp_idle_s: config.agent.udp_idle_timeout.as_secs() as u32,
        closed_s: config.agent.closed_timeout.as_secs() as u32,
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

/// The address family of the listeners that forward to `group`; none: no listener does.
fn group_family(config: &Config, group: &str) -> Option<u8> {
    config
        .listeners
        .iter()
        .find(|l| l.forward_group() == Some(group))
        .map(|l| family_of(l.address))
}

/// A group's data-plane flags.
fn flags_of(group: &TargetGroup) -> u32 {
    match group.stickiness {
        Some(Stickiness::SourceIp) => group_flags::STICKY_SOURCE_IP,
        _ => 0,
    }
}

/// The targets a group's config registers, with their ports and weights.
fn desired_targets(group: &TargetGroup) -> Result<Vec<(SocketAddr, u32)>> {
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
        let settings = settings_for(config, snat, dp.maglev_size())?;
        let mut state = State {
            next_backend_id: 1,
            settings,
            ..State::default()
        };
        for (id, group) in (0u32..).zip(&config.target_groups) {
            // Adopted maps: the table in force stays until the first publish flips.
            let active_slot = dp.group(id).map_or(0, |g| g.active_slot);
            let g = state.new_group(id, group, group_family(config, &group.name), active_slot)?;
            state.groups.insert(group.name.clone(), g);
        }
        dp.set_settings(&settings)?;
        for group in &config.target_groups {
            for (address, weight) in desired_targets(group)? {
                // Started with: in service while its first checks run.
                state.register(dp, &group.name, address, weight, true)?;
            }
            state.publish(dp, &group.name, Instant::now())?;
        }
        let listeners = state.listener_states(config);
        state.write_listeners(dp, listeners, dp.adopted())?;
        Ok(state)
    }

    /// A group's state as `group` configures it, without targets.
    fn new_group(
        &mut self,
        id: u32,
        group: &TargetGroup,
        family: Option<u8>,
        active_slot: u32,
    ) -> Result<GroupState> {
        let check = self.check_for(&group.name, group.effective_health_check())?;
        Ok(GroupState {
            id,
            protocol: group.protocol,
            port: group.port,
            flags: flags_of(group),
            family,
            targets: Vec::new(),
            active_slot,
            health_check: group.health_check.clone(),
            check,
            deregistration_delay: group.deregistration_delay,
            terminate_on_unhealthy: group.terminate_on_unhealthy,
            fail_open: group.fail_open,
            slow_start: group.slow_start,
            published: None,
            failing_open: false,
            table_version: 0,
        })
    }

    /// The running check for `effective` (a new generation), or none.
    fn check_for(
        &mut self,
        group: &str,
        effective: Option<HealthCheck>,
    ) -> Result<Option<GroupCheck>> {
        effective
            .map(|hc| GroupCheck::new(&hc, self.check_generation + 1))
            .transpose()
            .map_err(|message| StateError::HealthCheck {
                group: group.to_owned(),
                message,
            })
            .inspect(|check| {
                if check.is_some() {
                    self.check_generation += 1;
                }
            })
    }

    /// The listeners of `config` that forward to a group, keeping the ids of those that keep
    /// their name (new ones take the smallest free ids).
    fn listener_states(&self, config: &Config) -> Vec<ListenerState> {
        let mut taken: Vec<u32> = Vec::new();
        let mut out: Vec<ListenerState> = Vec::new();
        let mut fresh = Vec::new();
        for listener in &config.listeners {
            let Some(group) = listener.forward_group() else {
                continue;
            };
            let id = self
                .listeners
                .iter()
                .find(|l| l.name == listener.name)
                .map(|l| l.id);
            if let Some(id) = id {
                taken.push(id);
            } else {
                fresh.push(out.len());
            }
            out.push(ListenerState {
                id: id.unwrap_or(u32::MAX),
                name: listener.name.clone(),
                group: group.to_owned(),
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
    fn write_listeners(
        &mut self,
        dp: &mut Dataplane,
        listeners: Vec<ListenerState>,
        prune: bool,
    ) -> Result<()> {
        let mut entries: Vec<(ListenerKey, ListenerInfo)> = Vec::new();
        let mut ports: BTreeMap<u16, u32> = BTreeMap::new();
        let mut vips = Vec::new();
        for listener in &listeners {
            let group_id = self.group(&listener.group)?.id;
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

    /// Registers a target in a group (without publishing the group's table).
    fn register(
        &mut self,
        dp: &mut Dataplane,
        group_name: &str,
        address: SocketAddr,
        weight: u32,
        started_with: bool,
    ) -> Result<()> {
        if weight > MAX_WEIGHT {
            return Err(StateError::Weight(weight));
        }
        let group = self.group(group_name)?;
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
        let backend_id = match self.free_backend_ids.pop() {
            Some(id) => id,
            None if self.next_backend_id < MAX_BACKENDS => {
                self.next_backend_id += 1;
                self.next_backend_id - 1
            }
            None => return Err(StateError::BackendsFull),
        };
        let (addr, family) = addr_of(address.ip());
        let written = dp.set_backend(
            backend_id,
            &Backend {
                addr,
                port: address.port().to_be(),
                family,
                _pad: 0,
            },
        );
        if let Err(e) = written {
            self.free_backend_ids.push(backend_id);
            return Err(e.into());
        }
        self.next_registration += 1;
        let registration = self.next_registration;
        let group = self.group_mut(group_name)?;
        group.targets.push(TargetEntry {
            address,
            weight,
            backend_id,
            registration,
            health: Health::new(started_with),
            draining_until: None,
            slow_start_since: None,
        });
        Ok(())
    }

    fn group(&self, name: &str) -> Result<&GroupState> {
        self.groups
            .get(name)
            .ok_or_else(|| StateError::NoGroup(name.to_owned()))
    }

    fn group_mut(&mut self, name: &str) -> Result<&mut GroupState> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| StateError::NoGroup(name.to_owned()))
    }

    /// Builds the group's table into its idle slot and flips the active slot, unless the
    /// table would be the one already active.
    fn publish(&mut self, dp: &mut Dataplane, group_name: &str, now: Instant) -> Result<()> {
        let group = self.group_mut(group_name)?;
        let (plan, failing_open) = group.plan(now);
        if group.published.as_ref() == Some(&plan) {
            group.failing_open = failing_open;
            return Ok(());
        }
        let size = dp.maglev_size();
        let table: Vec<u32> = if plan.iter().all(|&(_, w)| w == 0) {
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
                .zip(&plan)
                .map(|(key, &(_, weight))| MaglevTarget {
                    key: key.as_bytes(),
                    weight,
                })
                .collect();
            let built = MaglevTable::build(&targets, size)?;
            built.slots().iter().map(|&i| plan[i as usize].0).collect()
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
        group.table_version += 1;
        if failing_open != group.failing_open {
            if failing_open {
                tracing::warn!(
                    group = group_name,
                    "no target in service: failing open to every registered target"
                );
            } else {
                tracing::info!(
                    group = group_name,
                    "targets in service again: no longer failing open"
                );
            }
        }
        group.failing_open = failing_open;
        group.published = Some(plan);
        Ok(())
    }

    /// The port a target given without one gets: the group's default port.
    pub fn resolve_target(
        &self,
        group_name: &str,
        ip: IpAddr,
        port: Option<u16>,
    ) -> Result<SocketAddr> {
        let group = self.group(group_name)?;
        let port = port
            .or(group.port)
            .ok_or_else(|| StateError::NoPort(ip, group_name.to_owned()))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// Registers a target live. A new target gets new flows once it passes its group's
    /// checks (at once in a group without checks); a draining one returns to service with its
    /// health as checked meanwhile, and the weight given.
    pub fn add_target(
        &mut self,
        dp: &mut Dataplane,
        group: &str,
        address: SocketAddr,
        weight: u32,
    ) -> Result<()> {
        if weight > MAX_WEIGHT {
            return Err(StateError::Weight(weight));
        }
        let g = self.group_mut(group)?;
        if let Some(t) = g
            .targets
            .iter_mut()
            .find(|t| t.address == address && t.draining_until.is_some())
        {
            let before = (t.weight, t.draining_until);
            t.weight = weight;
            t.draining_until = None;
            if let Err(e) = self.publish(dp, group, Instant::now()) {
                let g = self.group_mut(group)?;
                if let Some(t) = g.targets.iter_mut().find(|t| t.address == address) {
                    (t.weight, t.draining_until) = before;
                }
                return Err(e);
            }
            let to = self.checked_state(group, address)?;
            self.count(
                group,
                address,
                TargetState::Draining,
                to,
                "re-registered: draining stopped",
            );
            return Ok(());
        }
        self.register(dp, group, address, weight, false)?;
        if let Err(e) = self.publish(dp, group, Instant::now()) {
            // Nothing half-applied: forget the registration again.
            if let Ok(entry) = self.take(group, address) {
                self.free_backend_ids.push(entry.backend_id);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Changes a registered target's weight live (0: no new flows; established ones stay).
    pub fn set_weight(
        &mut self,
        dp: &mut Dataplane,
        group: &str,
        address: SocketAddr,
        weight: u32,
    ) -> Result<u32> {
        if weight > MAX_WEIGHT {
            return Err(StateError::Weight(weight));
        }
        let g = self.group_mut(group)?;
        let t = g
            .targets
            .iter_mut()
            .find(|t| t.address == address && t.draining_until.is_none())
            .ok_or_else(|| StateError::NoTarget {
                group: group.to_owned(),
                target: address,
            })?;
        let before = std::mem::replace(&mut t.weight, weight);
        if let Err(e) = self.publish(dp, group, Instant::now()) {
            let g = self.group_mut(group)?;
            if let Some(t) = g.targets.iter_mut().find(|t| t.address == address) {
                t.weight = before;
            }
            return Err(e);
        }
        tracing::info!(group, target = %address, from = before, to = weight, "target weight changed");
        Ok(before)
    }

    /// Deregisters a target live: it gets no new flows at once; its established flows stay
    /// for the group's deregistration delay (draining), then are cut and the target is gone.
    /// Returns how long it drains.
    pub fn remove_target(
        &mut self,
        dp: &mut Dataplane,
        group: &str,
        address: SocketAddr,
    ) -> Result<Duration> {
        let now = Instant::now();
        let g = self.group_mut(group)?;
        let delay = g.deregistration_delay;
        let t = g
            .targets
            .iter_mut()
            .find(|t| t.address == address && t.draining_until.is_none())
            .ok_or_else(|| StateError::NoTarget {
                group: group.to_owned(),
                target: address,
            })?;
        t.draining_until = Some(now + delay);
        t.slow_start_since = None;
        if let Err(e) = self.publish(dp, group, now) {
            let g = self.group_mut(group)?;
            if let Some(t) = g.targets.iter_mut().find(|t| t.address == address) {
                t.draining_until = None;
            }
            return Err(e);
        }
        let from = self.checked_state(group, address)?;
        self.count(
            group,
            address,
            from,
            TargetState::Draining,
            "deregistered: draining",
        );
        if delay.is_zero() {
            self.finish_draining(dp, group, address, "no deregistration delay")?;
        }
        Ok(delay)
    }

    /// A registered target's checked state (`initial`, `healthy` or `unhealthy`).
    fn checked_state(&self, group: &str, address: SocketAddr) -> Result<TargetState> {
        Ok(self
            .group(group)?
            .targets
            .iter()
            .find(|t| t.address == address)
            .map_or(TargetState::Initial, |t| t.health.state))
    }

    /// Ends a draining target: cuts its remaining flows and forgets it.
    fn finish_draining(
        &mut self,
        dp: &mut Dataplane,
        group: &str,
        address: SocketAddr,
        why: &str,
    ) -> Result<()> {
        let backend_id = self
            .group(group)?
            .targets
            .iter()
            .find(|t| t.address == address)
            .map(|t| t.backend_id)
            .ok_or_else(|| StateError::NoTarget {
                group: group.to_owned(),
                target: address,
            })?;
        // Out of the table already: purge, then free the id (a reuse must find no flows).
        let purged = dp.purge_backend(backend_id)?;
        self.take(group, address)?;
        self.free_backend_ids.push(backend_id);
        self.tally("draining", "removed");
        tracing::info!(group, target = %address, purged_flows = purged, from = "draining", to = "removed", "target deregistered: {why}");
        Ok(())
    }

    /// Takes a registration out of its group (the backend id stays the caller's to free).
    fn take(&mut self, group_name: &str, address: SocketAddr) -> Result<TargetEntry> {
        let group = self.group_mut(group_name)?;
        let index = group
            .targets
            .iter()
            .position(|t| t.address == address)
            .ok_or_else(|| StateError::NoTarget {
                group: group_name.to_owned(),
                target: address,
            })?;
        let entry = group.targets.remove(index);
        // The table was built from target order; the next publish rebuilds it.
        group.published = None;
        Ok(entry)
    }

    /// Counts and logs a state change.
    fn count(
        &mut self,
        group: &str,
        target: SocketAddr,
        from: TargetState,
        to: TargetState,
        why: &str,
    ) {
        self.tally(from.as_str(), to.as_str());
        tracing::info!(group, target = %target, from = from.as_str(), to = to.as_str(), "{why}");
    }

    /// Counts a state change (`stats`: `health_transitions`).
    fn tally(&mut self, from: &str, to: &str) {
        *self.transitions.entry(format!("{from}->{to}")).or_insert(0) += 1;
    }

    /// The health checks to run now: one per registration in a group that has a check and
    /// a listener (draining targets too: re-registered, they return with a current health).
    pub fn checks(&self) -> Vec<CheckSpec> {
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            let (Some(check), Some(_)) = (&g.check, g.family) else {
                continue;
            };
            for t in &g.targets {
                out.push(CheckSpec {
                    group: name.clone(),
                    target: t.address,
                    registration: t.registration,
                    probe: check.probe.clone(),
                    generation: check.generation,
                    interval: check.interval,
                    // A target added live is checked soon; those of start-up spread out.
                    first_within: if t.health.in_service_while_initial() {
                        check.interval
                    } else {
                        check.interval.min(Duration::from_secs(1))
                    },
                });
            }
        }
        out
    }

    /// Feeds a health check's result; moves the target's state and the group's table, and
    /// cuts the target's flows when it turns unhealthy in a `terminate_on_unhealthy` group.
    /// A result for a registration that is gone is ignored.
    pub fn record_check(
        &mut self,
        dp: &mut Dataplane,
        spec: &CheckSpec,
        result: &ProbeResult,
    ) -> Result<()> {
        let now = Instant::now();
        let Some(g) = self.groups.get_mut(&spec.group) else {
            return Ok(());
        };
        let Some(thresholds) = g
            .check
            .as_ref()
            .filter(|c| c.generation == spec.generation)
            .map(|c| c.thresholds)
        else {
            return Ok(());
        };
        let others_serving = g
            .targets
            .iter()
            .any(|t| t.registration != spec.registration && GroupState::eligible(t) && g.passes(t));
        let slow_start = g.slow_start;
        let Some(t) = g
            .targets
            .iter_mut()
            .find(|t| t.registration == spec.registration)
        else {
            return Ok(());
        };
        let quick = t.health.in_service_while_initial();
        let Some(Transition { from, to }) = t.health.observe(result, thresholds) else {
            return Ok(());
        };
        // AWS's rule: slow start only for a target that was out of service and joins others.
        if to == TargetState::Healthy
            && !slow_start.is_zero()
            && others_serving
            && !(from == TargetState::Initial && quick)
        {
            t.slow_start_since = Some(now);
        }
        if to == TargetState::Unhealthy {
            t.slow_start_since = None;
        }
        let (backend_id, description) = (t.backend_id, t.health.description.clone());
        let reason = t.health.reason;
        self.tally(from.as_str(), to.as_str());
        tracing::info!(
            group = spec.group,
            target = %spec.target,
            from = from.as_str(),
            to = to.as_str(),
            reason = reason.unwrap_or(""),
            description = description.as_deref().unwrap_or(""),
            "target health changed"
        );
        self.publish(dp, &spec.group, now)?;
        let g = self.group(&spec.group)?;
        if to == TargetState::Unhealthy
            && g.terminate_on_unhealthy
            && g.published_weight(backend_id) == 0
        {
            let purged = dp.purge_backend(backend_id)?;
            tracing::info!(group = spec.group, target = %spec.target, purged_flows = purged, "terminate_on_unhealthy: established flows cut");
        }
        Ok(())
    }

    /// Time-driven lifecycle: ends draining whose delay is over, moves slow starts along.
    pub fn tick(&mut self, dp: &mut Dataplane) -> Result<()> {
        let now = Instant::now();
        self.end_idle_draining(dp, now)?;
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = self.group(&name)?;
            let done: Vec<SocketAddr> = g
                .targets
                .iter()
                .filter(|t| t.draining_until.is_some_and(|until| until <= now))
                .map(|t| t.address)
                .collect();
            let ramping = g.targets.iter().any(|t| t.slow_start_since.is_some());
            for address in done {
                self.finish_draining(dp, &name, address, "deregistration delay over")?;
            }
            if ramping {
                let slow_start = self.group(&name)?.slow_start;
                let g = self.group_mut(&name)?;
                for t in &mut g.targets {
                    if t.slow_start_since
                        .is_some_and(|since| now.saturating_duration_since(since) >= slow_start)
                    {
                        t.slow_start_since = None;
                        tracing::info!(group = name, target = %t.address, "slow start over: full weight");
                    }
                }
            }
            self.publish(dp, &name, now)?;
        }
        Ok(())
    }

    /// Ends the draining of targets with no live flow left (as AWS does), looking at the
    /// connection table at most every `DRAIN_SCAN_EVERY` while some target drains.
    fn end_idle_draining(&mut self, dp: &mut Dataplane, now: Instant) -> Result<()> {
        let draining: Vec<(String, SocketAddr, u32)> = self
            .groups
            .iter()
            .flat_map(|(name, g)| {
                g.targets
                    .iter()
                    .filter(|t| t.draining_until.is_some_and(|until| until > now))
                    .map(|t| (name.clone(), t.address, t.backend_id))
            })
            .collect();
        if draining.is_empty() || self.next_drain_scan.is_some_and(|at| at > now) {
            return Ok(());
        }
        self.next_drain_scan = Some(now + DRAIN_SCAN_EVERY);
        let clock = monotonic_coarse_ns();
        let live: std::collections::HashSet<u32> = dp
            .flows()?
            .iter()
            .filter(|(key, flow)| self.active(key, flow, clock))
            .map(|(_, flow)| flow.backend_id)
            .collect();
        for (group, address, backend_id) in draining {
            if !live.contains(&backend_id) {
                self.finish_draining(dp, &group, address, "no live flow left")?;
            }
        }
        Ok(())
    }

    /// Replaces a group's health check (`enabled = false`: stops checking). Checks restart
    /// with the new settings; states are kept, except that targets of a group that was not
    /// checked start `initial` and in service until their first check. Nothing changes if
    /// the check is invalid or the table cannot be rebuilt.
    pub fn set_health_check(
        &mut self,
        dp: &mut Dataplane,
        group: &str,
        health_check: HealthCheck,
    ) -> Result<()> {
        let check = self.check_for(group, health_check.enabled.then(|| health_check.clone()))?;
        let before = self.group(group)?.clone();
        self.group_mut(group)?
            .install_check(check, Some(health_check.clone()));
        if let Err(e) = self.publish(dp, group, Instant::now()) {
            *self.group_mut(group)? = before;
            return Err(e);
        }
        tracing::info!(
            group,
            enabled = health_check.enabled,
            protocol = health_check.protocol.as_str(),
            port = health_check.port,
            interval = %duration_text(health_check.interval),
            "health check replaced"
        );
        Ok(())
    }

    /// Every target group's settings and how many of its targets serve.
    pub fn groups(&self) -> Vec<GroupView> {
        self.groups
            .iter()
            .map(|(name, g)| GroupView {
                name: name.clone(),
                protocol: g.protocol.as_str().to_owned(),
                port: g.port,
                in_use: g.family.is_some(),
                health_check: g
                    .health_check
                    .clone()
                    .or_else(|| (g.protocol != GroupProtocol::Udp).then(HealthCheck::default)),
                checked: g.check.is_some(),
                deregistration_delay: duration_text(g.deregistration_delay),
                slow_start: duration_text(g.slow_start),
                terminate_on_unhealthy: g.terminate_on_unhealthy,
                fail_open: g.fail_open,
                failing_open: g.failing_open,
                targets: g.targets.len(),
                in_service: g
                    .targets
                    .iter()
                    .filter(|t| g.published_weight(t.backend_id) > 0)
                    .count(),
                unhealthy: g
                    .targets
                    .iter()
                    .filter(|t| g.shown_state(t).0 == TargetState::Unhealthy)
                    .count(),
                table_version: g.table_version,
            })
            .collect()
    }

    /// Targets of one group, or of all.
    pub fn targets(&self, dp: &Dataplane, group: Option<&str>) -> Result<Vec<TargetView>> {
        self.targets_with(dp, group, &dp.flows()?)
    }

    /// As `targets`, counting active flows in `flows` (the connection table, read once).
    fn targets_with(
        &self,
        dp: &Dataplane,
        group: Option<&str>,
        flows: &[(lb_common::FlowKey, lb_common::Flow)],
    ) -> Result<Vec<TargetView>> {
        if let Some(name) = group {
            self.group(name)?;
        }
        let now = monotonic_coarse_ns();
        let mut active = std::collections::HashMap::<u32, u64>::new();
        for (key, flow) in flows {
            if !self.active(key, flow, now) {
                continue;
            }
            *active.entry(flow.backend_id).or_insert(0) += 1;
        }
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            if group.is_some_and(|want| want != name) {
                continue;
            }
            let total: u64 = g
                .published
                .iter()
                .flatten()
                .map(|&(_, w)| u64::from(w))
                .sum();
            for t in &g.targets {
                let (state, reason) = g.shown_state(t);
                let scaled = g.published_weight(t.backend_id);
                let description = match state {
                    TargetState::Draining => t.draining_until.map(|until| {
                        format!(
                            "draining: leaves in {:.1}s",
                            until
                                .saturating_duration_since(Instant::now())
                                .as_secs_f64()
                        )
                    }),
                    TargetState::Unused => {
                        Some("no listener forwards to this target group".to_owned())
                    }
                    TargetState::Unavailable => {
                        Some("health checks are disabled for this target group".to_owned())
                    }
                    _ if g.failing_open && total > 0 => {
                        Some("no target in service: failing open to all".to_owned())
                    }
                    _ => t.health.description.clone(),
                };
                out.push(TargetView {
                    group: name.clone(),
                    address: t.address,
                    weight: t.weight,
                    effective_weight: f64::from(scaled) / f64::from(WEIGHT_SCALE),
                    state,
                    reason: reason.map(str::to_owned),
                    description,
                    in_service: scaled > 0,
                    last_check_ms: t.health.last_latency.map(|l| l.as_secs_f64() * 1000.0),
                    checks: t.health.checks,
                    active_flows: active.get(&t.backend_id).copied().unwrap_or(0),
                    counters: dp.backend_counters(t.backend_id)?.into(),
                });
            }
        }
        Ok(out)
    }

    /// Counters of every listener and target, and the data plane's verdicts.
    pub fn stats(&self, dp: &Dataplane) -> Result<StatsView> {
        let flows = dp.flows()?;
        let now = monotonic_coarse_ns();
        let mut per_listener = std::collections::HashMap::<u32, u64>::new();
        let mut active_flows = 0;
        for (key, flow) in &flows {
            if self.active(key, flow, now) {
                *per_listener.entry(flow.listener_id).or_insert(0) += 1;
                active_flows += 1;
            }
        }
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                Ok(ListenerView {
                    name: l.name.clone(),
                    address: l.address,
                    protocol: l.protocol.as_str().to_owned(),
                    target_group: l.group.clone(),
                    active_flows: per_listener.get(&l.id).copied().unwrap_or(0),
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
            targets: self.targets_with(dp, None, &flows)?,
            verdicts,
            flows: flows.len(),
            active_flows,
            health_transitions: self.transitions.clone(),
        })
    }

    /// The connection table, of every listener.
    pub fn flows(&self, dp: &Dataplane) -> Result<Vec<FlowView>> {
        let now = monotonic_coarse_ns();
        let mut out = Vec::new();
        for (key, flow) in dp.flows()? {
            let listener = self.listeners.iter().find(|l| l.id == flow.listener_id);
            let family = key.family;
            out.push(FlowView {
                protocol: if key.proto == PROTO_TCP { "tcp" } else { "udp" }.to_owned(),
                client: SocketAddr::new(ip_of(&key.src, family), u16::from_be(key.sport)),
                listener: SocketAddr::new(ip_of(&key.dst, family), u16::from_be(key.dport)),
                backend: SocketAddr::new(
                    ip_of(&flow.backend, family),
                    u16::from_be(flow.backend_port),
                ),
                snat: SocketAddr::new(ip_of(&flow.snat_addr, family), u16::from_be(flow.snat_port)),
                target_group: listener.map(|l| l.group.clone()),
                idle_seconds: now.saturating_sub(flow.last_seen) / 1_000_000_000,
                closing: flow.closing != 0,
                active: self.active(&key, &flow, now),
            });
        }
        Ok(out)
    }

    /// Whether a connection-table entry is a live flow (not over by the data plane's rules).
    fn active(&self, key: &lb_common::FlowKey, flow: &lb_common::Flow, now: u64) -> bool {
        !lb_common::conntrack::expired(
            &self.settings,
            key.proto,
            flow.closing != 0,
            flow.last_seen,
            now,
        )
    }

    /// A group's id in the data plane (for tests).
    pub fn group_id(&self, name: &str) -> Option<u32> {
        self.groups.get(name).map(|g| g.id)
    }

    /// The backend id of a target's registration in a group (for tests).
    pub fn backend_id(&self, group: &str, address: SocketAddr) -> Option<u32> {
        self.groups
            .get(group)?
            .targets
            .iter()
            .find(|t| t.address == address)
            .map(|t| t.backend_id)
    }
}

/// An address from the data plane's bytes.
fn ip_of(addr: &Addr, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        let b = addr.0;
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(addr.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::probe::{Failure, ProbeResult};

    /// `HealthCheck::default()`'s.
    const T: Thresholds = Thresholds {
        healthy: 5,
        unhealthy: 2,
    };

    fn group(fail_open: bool, slow_start: Duration) -> GroupState {
        GroupState {
            id: 0,
            protocol: GroupProtocol::Tcp,
            port: Some(80),
            flags: 0,
            family: Some(4),
            targets: Vec::new(),
            active_slot: 0,
            health_check: None,
            check: Some(GroupCheck::new(&HealthCheck::default(), 1).unwrap()),
            deregistration_delay: Duration::from_secs(300),
            terminate_on_unhealthy: false,
            fail_open,
            slow_start,
            published: None,
            failing_open: false,
            table_version: 0,
        }
    }

    fn target(id: u32, weight: u32, state: TargetState) -> TargetEntry {
        let mut health = Health::new(false);
        let result = |ok: bool| ProbeResult {
            outcome: if ok { Ok(()) } else { Err(Failure::Refused) },
            latency: Duration::ZERO,
        };
        for _ in 0..5 {
            match state {
                TargetState::Healthy => health.observe(&result(true), T),
                TargetState::Unhealthy => health.observe(&result(false), T),
                _ => None,
            };
        }
        assert_eq!(health.state, state);
        TargetEntry {
            address: SocketAddr::from(([198, 18, 0, 20 + id as u8], 8080)),
            weight,
            backend_id: id,
            registration: u64::from(id),
            health,
            draining_until: None,
            slow_start_since: None,
        }
    }

    #[test]
    fn only_healthy_weighted_registered_targets_are_in_the_table() {
        let mut g = group(true, Duration::ZERO);
        let mut draining = target(4, 1, TargetState::Healthy);
        draining.draining_until = Some(Instant::now() + Duration::from_secs(10));
        g.targets = vec![
            target(1, 2, TargetState::Healthy),
            target(2, 1, TargetState::Unhealthy),
            target(3, 0, TargetState::Healthy),
            draining,
            target(5, 1, TargetState::Initial),
        ];
        let (plan, failing_open) = g.plan(Instant::now());
        assert_eq!(plan, [(1, 200), (2, 0), (3, 0), (4, 0), (5, 0)]);
        assert!(!failing_open);
        // A target the agent started with serves while its first checks run.
        g.targets[4].health = Health::new(true);
        assert_eq!(g.plan(Instant::now()).0[4], (5, 100));
    }

    #[test]
    fn with_no_target_in_service_the_group_fails_open_to_every_registered_one() {
        let mut g = group(true, Duration::ZERO);
        let mut draining = target(3, 1, TargetState::Healthy);
        draining.draining_until = Some(Instant::now() + Duration::from_secs(10));
        g.targets = vec![
            target(1, 1, TargetState::Unhealthy),
            target(2, 3, TargetState::Unhealthy),
            draining,
            target(4, 0, TargetState::Unhealthy),
        ];
        let (plan, failing_open) = g.plan(Instant::now());
        assert_eq!(plan, [(1, 100), (2, 300), (3, 0), (4, 0)]);
        assert!(failing_open);
        g.fail_open = false;
        let (plan, failing_open) = g.plan(Instant::now());
        assert!(plan.iter().all(|&(_, w)| w == 0), "{plan:?}");
        assert!(!failing_open);
    }

    #[test]
    fn slow_start_ramps_the_weight_in_steps_up_to_the_full_weight() {
        let slow = Duration::from_secs(100);
        let mut g = group(true, slow);
        let now = Instant::now() + Duration::from_secs(1000);
        let mut t = target(1, 2, TargetState::Healthy);
        let at = |t: &mut TargetEntry, done: f64| {
            t.slow_start_since = Some(now - slow.mul_f64(done));
        };
        at(&mut t, 0.0);
        assert_eq!(
            g.scaled_weight(&t, now),
            1,
            "a ramp starts at the least weight"
        );
        at(&mut t, 0.26);
        assert_eq!(
            g.scaled_weight(&t, now),
            50,
            "a quarter of 200, in 5% steps"
        );
        at(&mut t, 0.999);
        assert_eq!(g.scaled_weight(&t, now), 190);
        at(&mut t, 1.5);
        assert_eq!(g.scaled_weight(&t, now), 200);
        g.slow_start = Duration::ZERO;
        at(&mut t, 0.0);
        assert_eq!(g.scaled_weight(&t, now), 200, "no ramp without slow_start");
    }

    #[test]
    fn shown_state_says_why_a_target_is_out() {
        let mut g = group(true, Duration::ZERO);
        let mut t = target(1, 1, TargetState::Unhealthy);
        assert_eq!(
            g.shown_state(&t),
            (TargetState::Unhealthy, Some("Target.FailedHealthChecks"))
        );
        t.draining_until = Some(Instant::now());
        assert_eq!(
            g.shown_state(&t),
            (
                TargetState::Draining,
                Some("Target.DeregistrationInProgress")
            )
        );
        t.draining_until = None;
        g.check = None;
        assert_eq!(
            g.shown_state(&t),
            (TargetState::Unavailable, Some("Target.HealthCheckDisabled"))
        );
        g.family = None;
        assert_eq!(
            g.shown_state(&t),
            (TargetState::Unused, Some("Target.NotInUse"))
        );
    }
}
