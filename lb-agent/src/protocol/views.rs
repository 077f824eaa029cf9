//! What the agent shows: targets, groups, listeners, counters, flows, its own status. These
//! are the API's answer bodies (JSON) and what the CLI prints.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::Counters;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Action, HealthCheck, Listener, ListenerProtocol},
    health::TargetState,
};

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
    /// HTTP version to the targets of http/https groups (`http1`, `http2`, `grpc`); the
    /// health check speaks it too.
    #[serde(default)]
    pub protocol_version: String,
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

/// A listener as `listeners list` and `stats` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: String,
    /// The one group its default action forwards to; empty when it forwards to several (or
    /// redirects, or answers itself): see `default_action`.
    pub target_group: String,
    /// Its entries in the connection table.
    pub active_flows: u64,
    pub counters: CountersView,
    #[serde(flatten)]
    pub settings: ListenerSettings,
}

/// What a listener does, from the config in force (the same for L4 and L7 listeners).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenerSettings {
    /// What traffic no rule takes gets, in the config's vocabulary (`{"forward": "web"}`).
    #[serde(default)]
    pub default_action: Option<Action>,
    /// Rules (http and https listeners).
    #[serde(default)]
    pub rules: usize,
    /// Certificates (https and tls listeners; the first is the default).
    #[serde(default)]
    pub certificates: usize,
    /// The TLS security policy (https and tls listeners; the default's name when none is set).
    #[serde(default)]
    pub ssl_policy: Option<String>,
}

impl ListenerSettings {
    /// `listener`'s.
    pub fn of(listener: &Listener) -> Self {
        let tls = matches!(
            listener.protocol,
            ListenerProtocol::Https | ListenerProtocol::Tls
        );
        Self {
            default_action: Some(listener.default_action.clone()),
            rules: listener.rules.len(),
            certificates: listener.certificates.len(),
            ssl_policy: tls.then(|| listener.l7().ssl_policy),
        }
    }

    /// Fills the settings of `views` from the listeners of the same name in `config`.
    pub fn fill(views: &mut [ListenerView], config: &crate::config::Config) {
        for view in views {
            if let Some(l) = config.listeners.iter().find(|l| l.name == view.name) {
                view.settings = Self::of(l);
            }
        }
    }
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
    /// Flows the connection table holds (`agent.connection_table_size`, on any CPU count).
    #[serde(default)]
    pub flow_capacity: u64,
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

/// Where the program is attached, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceView {
    pub name: String,
    /// `native` or `generic`.
    pub mode: String,
}

/// What `lb-agent status` shows: what runs, where, and how healthy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// The agent's version.
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    /// The config file it runs.
    pub config: Option<String>,
    /// Where the API's changes are kept.
    pub state_file: Option<String>,
    /// How many API changes are kept on top of the file.
    pub overrides: usize,
    pub pin_dir: Option<String>,
    /// Whether the data plane was adopted from an earlier agent.
    pub adopted: bool,
    pub interfaces: Vec<InterfaceView>,
    pub listeners: Vec<ListenerView>,
    pub groups: Vec<GroupView>,
    /// Entries in the connection table.
    pub flows: usize,
    /// Those of live flows.
    pub active_flows: usize,
    pub health_transitions: BTreeMap<String, u64>,
    /// Symptoms the agent noticed, each with its likely causes (e.g. packets forwarded to
    /// targets and never answered); empty when all is well.
    #[serde(default)]
    pub warnings: Vec<String>,
}
