//! The config the test bed programs, built in memory from the agent's typed model: the lab's
//! plan by default, a variant by a named option (never by editing TOML text).

use std::{net::IpAddr, time::Duration};

use lb_agent::config::{
    Action, AgentConfig, Config, Forward, GroupProtocol, Listener, ListenerProtocol, Mode, Target,
    TargetGroup,
};

/// The VIP of the lab's IPv4 listeners.
pub const VIP4: &str = "198.18.1.100";
/// The VIP of the lab's IPv6 listener.
pub const VIP6: &str = "fd00:198:18:1::100";

/// A config for the test bed, built by named options.
#[derive(Clone, Debug)]
pub struct BedConfig {
    config: Config,
}

impl BedConfig {
    /// The lab's plan. SNAT from 198.18.0.1 and fd00:198:18::1; groups
    /// - `web`: TCP to 198.18.0.21-23 port 8080, behind 198.18.1.100:80/tcp;
    /// - `dns`: UDP to 198.18.0.21-22 port 5353, behind 198.18.1.100:53/udp;
    /// - `web6`: TCP and UDP to fd00:198:18::21-23 port 8080, behind [fd00:198:18:1::100]:80;
    /// - `far`: TCP to 198.18.4.21 port 8080 (behind the bed's second NIC), behind
    ///   198.18.1.100:8443/tcp.
    pub fn lab() -> Self {
        let agent = AgentConfig {
            snat_addresses: vec![addr("198.18.0.1"), addr("fd00:198:18::1")],
            maglev_table_size: 65537,
            // Fixed, so that the bed's flows land (and collide on SNAT ports) the same way on
            // every run.
            flow_hash_seed: Some(0x9e37_79b9),
            ..AgentConfig::default()
        };
        Self {
            config: Config {
                agent,
                target_groups: vec![
                    group(
                        "web",
                        GroupProtocol::Tcp,
                        8080,
                        &["198.18.0.21", "198.18.0.22", "198.18.0.23"],
                    ),
                    group(
                        "dns",
                        GroupProtocol::Udp,
                        5353,
                        &["198.18.0.21", "198.18.0.22"],
                    ),
                    group(
                        "web6",
                        GroupProtocol::TcpUdp,
                        8080,
                        &["fd00:198:18::21", "fd00:198:18::22", "fd00:198:18::23"],
                    ),
                    group("far", GroupProtocol::Tcp, 8080, &["198.18.4.21"]),
                ],
                listeners: vec![
                    listener("far", VIP4, 8443, ListenerProtocol::Tcp),
                    listener("web", VIP4, 80, ListenerProtocol::Tcp),
                    listener("dns", VIP4, 53, ListenerProtocol::Udp),
                    listener("web6", VIP6, 80, ListenerProtocol::TcpUdp),
                ],
                ..Config::default()
            },
        }
    }

    /// Full-NAT source ports `first..=last` only.
    pub fn snat_port_range(mut self, first: u16, last: u16) -> Self {
        self.config.agent.snat_port_range = (first, last);
        self
    }

    /// A TCP flow that saw a FIN or RST is over once quiet this long.
    pub fn closed_timeout(mut self, timeout: Duration) -> Self {
        self.config.agent.closed_timeout = timeout;
        self
    }

    /// A TCP flow whose target never answered is over this long after its SYN.
    pub fn half_open_timeout(mut self, timeout: Duration) -> Self {
        self.config.agent.half_open_timeout = timeout;
        self
    }

    /// Flows the connection table holds.
    pub fn connection_table_size(mut self, flows: u32) -> Self {
        self.config.agent.connection_table_size = flows;
        self
    }

    /// New flows one listener may start per second on one CPU (0: unlimited).
    pub fn new_flow_rate_limit(mut self, per_second: u32) -> Self {
        self.config.agent.new_flow_rate_limit = per_second;
        self
    }

    /// Adds an `http` listener `app` on `VIP4`:`port` (beside the L4 ones on that VIP),
    /// forwarding to an `http` group `app` (198.18.0.21 port 8080).
    pub fn http_listener(mut self, port: u16) -> Self {
        self.config
            .target_groups
            .push(group("app", GroupProtocol::Http, 8080, &["198.18.0.21"]));
        self.config
            .listeners
            .push(listener("app", VIP4, port, ListenerProtocol::Http));
        self
    }

    /// The config, checked by the agent's own validation.
    pub fn build(self) -> Config {
        let problems = self.config.problems();
        assert!(problems.is_empty(), "test bed config: {problems:?}");
        self.config
    }
}

fn addr(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("lab address {text}: {e}"))
}

/// An L4 group with the file's defaults (as if only name, protocol, port and targets were
/// written).
fn group(name: &str, protocol: GroupProtocol, port: u16, targets: &[&str]) -> TargetGroup {
    TargetGroup {
        name: name.to_owned(),
        protocol,
        port: Some(port),
        deregistration_delay: Duration::from_secs(300),
        stickiness: None,
        targets: targets
            .iter()
            .map(|t| Target {
                address: addr(t),
                port: None,
                weight: 1,
            })
            .collect(),
        health_check: None,
        terminate_on_unhealthy: false,
        fail_open: true,
        slow_start: Duration::ZERO,
        protocol_version: None,
        load_balancing_algorithm: None,
        ca_file: None,
        tls_server_name: None,
        response_timeout: None,
    }
}

/// A full-NAT L4 listener forwarding to the group of the same name.
fn listener(name: &str, vip: &str, port: u16, protocol: ListenerProtocol) -> Listener {
    Listener {
        name: name.to_owned(),
        address: addr(vip),
        port,
        protocol,
        mode: Mode::Nat,
        default_action: Action {
            forward: Some(Forward::Group(name.to_owned())),
            redirect: None,
            fixed_response: None,
            group_stickiness: None,
        },
        certificates: Vec::new(),
        rules: Vec::new(),
        ssl_policy: None,
        idle_timeout: None,
        request_header_timeout: None,
        max_connections: None,
        max_header_bytes: None,
        http2_max_concurrent_streams: None,
        http2_max_reset_streams: None,
        request_id_header: None,
    }
}
