//! `[agent]`: settings of the node itself (interface, SNAT, control socket, pinning, timeouts).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use super::{AccessLogConfig, duration};

/// `[agent]`: the node itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// NIC the XDP program attaches to; `lb-agent run --iface` overrides it.
    pub interface: Option<String>,
    /// Full-NAT source addresses, at most one per family; empty: the interface's own.
    pub snat_addresses: Vec<IpAddr>,
    /// The control socket (default `/run/lb-agent.sock`).
    pub control_socket: PathBuf,
    /// Where the data plane is pinned on a BPF filesystem, so that it keeps forwarding while
    /// the agent is stopped or restarted (default `/sys/fs/bpf/lb-agent`); `lb-agent run
    /// --pin-dir` overrides it.
    pub pin_dir: PathBuf,
    /// A TCP address for the control API as well (default: the unix socket only). Every
    /// request must carry `Authorization: Bearer TOKEN`, the token read from
    /// `api_token_file` or the environment variable `LB_AGENT_API_TOKEN`.
    pub api_listen: Option<SocketAddr>,
    /// A file holding the API token (at least 16 characters; keep it mode 0600).
    pub api_token_file: Option<PathBuf>,
    /// A TCP address that serves `GET /metrics` only, without a token (for Prometheus).
    pub metrics_listen: Option<SocketAddr>,
    /// Entries per Maglev table: prime, 251..=1000003 (default 65537). About 100 × the
    /// largest group keeps each target's share within 1%.
    pub maglev_table_size: u32,
    /// Source ports for full NAT, inclusive; `snat_port_range = [1024, 32767]` by default.
    ///
    /// Keep it below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999
    /// by default): the node's own outgoing connections (health checks, SSH, package updates)
    /// take their source ports from there, and if a NAT flow used the same address and port, the
    /// XDP program would take the node's own replies for that flow's and send them to a client.
    pub snat_port_range: (u16, u16),
    /// A TCP flow with no packet for this long is over: its SNAT port may serve a new flow
    /// (60s..=6000s, default 350s as AWS NLB).
    #[serde(deserialize_with = "duration::deserialize")]
    pub tcp_idle_timeout: Duration,
    /// The same for UDP (10s..=3600s, default 120s as AWS NLB).
    #[serde(deserialize_with = "duration::deserialize")]
    pub udp_idle_timeout: Duration,
    /// A TCP flow that saw a FIN or RST is over once quiet this long (1s..=600s, default 60s:
    /// the targets' TIME_WAIT, so a port is not reused while they remember it).
    #[serde(deserialize_with = "duration::deserialize")]
    pub closed_timeout: Duration,
    /// A TCP flow whose target never answered its SYN (half-open) is over this long after the
    /// SYN (1s..=600s, default 10s: a target answers a SYN within milliseconds, and SYN
    /// retries come at 1 s, 3 s, 7 s; a SYN flood's entries and ports are back quickly).
    #[serde(deserialize_with = "duration::deserialize")]
    pub half_open_timeout: Duration,
    /// New flows one listener may start per second on one CPU (RX queue) of the node; those
    /// above it are dropped (`drop_flood`) and take no table space. 0: unlimited. Default
    /// 20000: more than a busy node's legitimate rate per queue, while a SYN flood on one
    /// queue fills at most 20000 × `half_open_timeout` (200,000) entries.
    pub new_flow_rate_limit: u32,
    /// Flows the connection table holds (1024..=16777216, default 1048576), on any number of
    /// CPUs; a full table drops new flows (`drop_map_full`), never an established one.
    pub connection_table_size: u32,
    /// The control API's and the metrics address's servers: a connection must send a whole
    /// request head within this of connecting or of its previous answer (1s..=300s, default
    /// 10s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub api_header_timeout: Duration,
    /// The same servers close a connection that moves no byte for this long while none of its
    /// requests is being answered, and refuse a request body that takes longer (1s..=3600s,
    /// default 60s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub api_idle_timeout: Duration,
    /// Connections each of those servers holds at once (control socket, `api_listen`,
    /// `metrics_listen`); one more is closed as soon as it is accepted (1..=16384, default 256).
    pub api_max_connections: usize,
    /// Let the kernel route packets that arrive on the agent's NICs and are not the load
    /// balancer's (default false: an nftables table of the agent's drops them in the forward
    /// hook; the forwarding `bpf_fib_lookup` needs must not make the node a router). Read at
    /// start.
    pub kernel_forwarding: bool,
    /// Seed of the flow hash that picks targets and SNAT ports. Give every node of a cluster
    /// the same one (a flow that moves between nodes keeps its target) and keep it from
    /// clients (who could otherwise aim flows at one target). Absent: the seed an adopted
    /// data plane already uses, else a random one for this node alone.
    pub flow_hash_seed: Option<u32>,
    /// `[agent.access_log]`: a line per request of the L7 listeners; none: no access log.
    pub access_log: Option<AccessLogConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interface: None,
            snat_addresses: Vec::new(),
            control_socket: PathBuf::from("/run/lb-agent.sock"),
            pin_dir: PathBuf::from(crate::pinning::DEFAULT_PIN_DIR),
            api_listen: None,
            api_token_file: None,
            metrics_listen: None,
            maglev_table_size: lb_common::DEFAULT_MAGLEV_SIZE,
            snat_port_range: (1024, 32767),
            tcp_idle_timeout: Duration::from_secs(350),
            udp_idle_timeout: Duration::from_secs(120),
            closed_timeout: Duration::from_secs(60),
            half_open_timeout: Duration::from_secs(10),
            new_flow_rate_limit: 20_000,
            connection_table_size: lb_common::CONNTRACK_SIZE,
            api_header_timeout: Duration::from_secs(10),
            api_idle_timeout: Duration::from_secs(60),
            api_max_connections: 256,
            kernel_forwarding: false,
            flow_hash_seed: None,
            access_log: None,
        }
    }
}
