//! The config file: listeners, target groups and targets in TOML (see shared/DESIGN.md).
//!
//! Loading has two passes. Serde turns the text into the typed model (unknown fields and wrong
//! types fail there, with toml's own position). Then `validate` checks the model as a whole and
//! reports every problem at once; each error names the dotted path of the offending field, and
//! the path is looked up in a span-keeping parse of the same text to give its line and column.
//! Keeping spans out of the model means the rest of the agent sees plain types.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{MAX_BACKENDS, MAX_GROUPS, MAX_LISTENERS};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::maglev::is_prime;

/// The whole config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[agent]`: settings of the node itself.
    #[serde(default)]
    pub agent: AgentConfig,
    /// `[[target_group]]`: named sets of targets.
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<TargetGroup>,
    /// `[[listener]]`: what the node accepts traffic on, and where it sends it.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
}

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
    #[serde(deserialize_with = "duration")]
    pub tcp_idle_timeout: Duration,
    /// The same for UDP (10s..=3600s, default 120s as AWS NLB).
    #[serde(deserialize_with = "duration")]
    pub udp_idle_timeout: Duration,
    /// A TCP flow that saw a FIN or RST is over once quiet this long (1s..=600s, default 60s:
    /// the targets' TIME_WAIT, so a port is not reused while they remember it).
    #[serde(deserialize_with = "duration")]
    pub closed_timeout: Duration,
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
        }
    }
}

/// A target group's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// TCP flows (L4).
    Tcp,
    /// UDP flows (L4).
    Udp,
    /// Both TCP and UDP on the same port (L4).
    TcpUdp,
    /// HTTP requests (L7).
    Http,
    /// HTTPS requests (L7).
    Https,
}

impl GroupProtocol {
    /// Served by the XDP data plane (rather than an L7 proxy).
    pub fn is_l4(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp | Self::TcpUdp)
    }

    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::TcpUdp => "tcp_udp",
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A named set of targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    /// Unique among groups; 1-64 of `[A-Za-z0-9_-]`.
    pub name: String,
    /// What the targets speak.
    pub protocol: GroupProtocol,
    /// Port of targets that name none.
    pub port: Option<u16>,
    /// How long a deregistered target keeps its established flows (default 300 s, as AWS).
    #[serde(
        default = "default_deregistration_delay",
        deserialize_with = "duration"
    )]
    pub deregistration_delay: Duration,
    /// What keeps a client on one target; none: every flow is hashed on its own.
    pub stickiness: Option<Stickiness>,
    /// The targets the file registers; more come and go through `lb-agent targets`.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// How targets are checked; none: a TCP connect to the traffic port with AWS's defaults
    /// for TCP-speaking groups, no checks for `udp` groups (see `effective_health_check`).
    pub health_check: Option<HealthCheck>,
    /// Cut a target's established flows when it turns unhealthy (default: they are kept).
    #[serde(default)]
    pub terminate_on_unhealthy: bool,
    /// With no target in service, route new flows to every registered target (default true);
    /// false: drop them.
    #[serde(default = "yes")]
    pub fail_open: bool,
    /// A target that turns healthy ramps its weight over this long (default 0: at once).
    #[serde(default, deserialize_with = "duration")]
    pub slow_start: Duration,
}

fn default_deregistration_delay() -> Duration {
    Duration::from_secs(300)
}

fn yes() -> bool {
    true
}

impl TargetGroup {
    /// The check the agent runs on this group's targets, if any: the configured one unless
    /// disabled; without one, a TCP connect to the traffic port (AWS's defaults) for groups
    /// that speak TCP, none for `udp` groups (a UDP port cannot be checked by connecting).
    pub fn effective_health_check(&self) -> Option<HealthCheck> {
        match &self.health_check {
            Some(hc) if hc.enabled => Some(hc.clone()),
            Some(_) => None,
            None if self.protocol == GroupProtocol::Udp => None,
            None => Some(HealthCheck::default()),
        }
    }
}

/// Stickiness: what keeps a client on one target. TOML: `{ type = "source_ip" }`,
/// `{ type = "lb_cookie", duration = "1h" }`,
/// `{ type = "app_cookie", cookie_name = "SESSION", duration = "1h" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawStickiness")]
pub enum Stickiness {
    /// L4: every flow of a client address goes to one target.
    SourceIp,
    /// L7: a cookie the load balancer sets.
    LbCookie {
        /// How long the cookie holds.
        duration: Duration,
    },
    /// L7: the application's own cookie.
    AppCookie {
        /// The application's cookie.
        cookie_name: String,
        /// How long the load balancer's companion cookie holds.
        duration: Duration,
    },
}

/// `Stickiness` as written. Not `#[serde(tag = "type")]`: an internally tagged unit variant
/// ignores extra keys (`{ type = "source_ip", duration = "1h" }` would pass), and the
/// buffering it does loses toml's positions inside the table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStickiness {
    #[serde(rename = "type")]
    kind: StickinessKind,
    #[serde(default, deserialize_with = "optional_duration")]
    duration: Option<Duration>,
    cookie_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StickinessKind {
    SourceIp,
    LbCookie,
    AppCookie,
}

impl TryFrom<RawStickiness> for Stickiness {
    type Error = String;

    fn try_from(raw: RawStickiness) -> Result<Self, String> {
        match (raw.kind, raw.duration, raw.cookie_name) {
            (StickinessKind::SourceIp, None, None) => Ok(Self::SourceIp),
            (StickinessKind::SourceIp, ..) => {
                Err("source_ip stickiness takes no `duration` or `cookie_name`".into())
            }
            (StickinessKind::LbCookie, Some(duration), None) => Ok(Self::LbCookie { duration }),
            (StickinessKind::LbCookie, None, _) => {
                Err("lb_cookie stickiness needs a `duration`, e.g. \"1h\"".into())
            }
            (StickinessKind::LbCookie, Some(_), Some(_)) => {
                Err("lb_cookie stickiness takes no `cookie_name` (that is app_cookie's)".into())
            }
            (StickinessKind::AppCookie, Some(duration), Some(cookie_name)) => Ok(Self::AppCookie {
                cookie_name,
                duration,
            }),
            (StickinessKind::AppCookie, ..) => Err(
                "app_cookie stickiness needs `cookie_name` and `duration`, e.g. \
                 { type = \"app_cookie\", cookie_name = \"SESSION\", duration = \"1h\" }"
                    .into(),
            ),
        }
    }
}

impl Stickiness {
    /// The config's spelling of `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SourceIp => "source_ip",
            Self::LbCookie { .. } => "lb_cookie",
            Self::AppCookie { .. } => "app_cookie",
        }
    }
}

/// One target of a group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The target's address; the same family as the VIPs that forward to it.
    pub address: IpAddr,
    /// Its port; none: the group's.
    pub port: Option<u16>,
    /// Relative share of new flows, 0..=1000 (default 1; 0: none).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Target {
    /// The target's port, else its group's.
    pub fn port_in(&self, group: &TargetGroup) -> Option<u16> {
        self.port.or(group.port)
    }
}

/// Health-check protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthProtocol {
    /// A TCP connect (the default).
    #[default]
    Tcp,
    /// An HTTP GET of `path`, whose status must match `matcher`.
    Http,
    /// As `http`, over TLS.
    Https,
}

impl HealthProtocol {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A group's health check (checked for sense here; run by the health module). Defaults are
/// AWS NLB's. Serialized as it is written (durations as `"5s"`), so the control API takes and
/// shows the same fields as the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// False: no checks, every target is in service (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How to check (default `tcp`).
    #[serde(default)]
    pub protocol: HealthProtocol,
    /// Port to check; none: the traffic port.
    pub port: Option<u16>,
    /// HTTP(S) path to request (default `/`).
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP(S) method: `GET` (default) or `HEAD`.
    #[serde(default)]
    pub method: HealthMethod,
    /// HTTP(S) `Host` header; none: the target's address and port.
    pub host: Option<String>,
    /// HTTP(S) status codes that count as healthy, like `"200"`, `"200-299"`, `"200,301"`
    /// (default `200-399`).
    #[serde(default = "default_matcher")]
    pub matcher: String,
    /// Time between checks, 1s..=300s (default 30 s).
    #[serde(
        default = "default_interval",
        deserialize_with = "duration",
        serialize_with = "show_duration"
    )]
    pub interval: Duration,
    /// How long a check may take, 100ms..=120s and less than `interval` (default 10 s).
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration",
        serialize_with = "show_duration"
    )]
    pub timeout: Duration,
    /// Successes in a row before a target counts as healthy, 2..=10 (default 5).
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
    /// Failures in a row before a target counts as unhealthy, 2..=10 (default 2).
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// What is wrong with it, as (field, message); empty when it can be run.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Problems::default();
        check_health_check(&mut p, "health_check", self);
        p.list
    }
}

impl Default for HealthCheck {
    /// AWS NLB's TCP check: every 30 s, 10 s timeout, healthy after 5, unhealthy after 2.
    fn default() -> Self {
        Self {
            enabled: true,
            protocol: HealthProtocol::Tcp,
            port: None,
            path: default_path(),
            method: HealthMethod::Get,
            host: None,
            matcher: default_matcher(),
            interval: default_interval(),
            timeout: default_timeout(),
            healthy_threshold: default_healthy(),
            unhealthy_threshold: default_unhealthy(),
        }
    }
}

/// An HTTP(S) health check's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HealthMethod {
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "HEAD")]
    Head,
}

impl HealthMethod {
    /// As on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
        }
    }
}

// AWS NLB's defaults.
fn default_path() -> String {
    "/".to_owned()
}
fn default_matcher() -> String {
    "200-399".to_owned()
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_healthy() -> u32 {
    5
}
fn default_unhealthy() -> u32 {
    2
}

/// A listener's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// TCP (L4, in XDP).
    Tcp,
    /// UDP (L4, in XDP).
    Udp,
    /// TCP and UDP on one port (L4, in XDP).
    TcpUdp,
    /// TLS terminated by the load balancer (not supported yet).
    Tls,
    /// HTTP (L7, not supported yet).
    Http,
    /// HTTPS (L7, not supported yet).
    Https,
}

impl ListenerProtocol {
    /// Handled in XDP.
    pub fn is_l4(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp | Self::TcpUdp)
    }

    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::TcpUdp => "tcp_udp",
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// Whether it carries TCP / UDP.
    fn transports(self) -> (bool, bool) {
        match self {
            Self::Udp => (false, true),
            Self::TcpUdp => (true, true),
            _ => (true, false),
        }
    }

    /// Whether an L4 listener of this protocol can forward to a group of `group`'s.
    fn serves(self, group: GroupProtocol) -> bool {
        match self {
            Self::Tcp => matches!(group, GroupProtocol::Tcp | GroupProtocol::TcpUdp),
            Self::Udp => matches!(group, GroupProtocol::Udp | GroupProtocol::TcpUdp),
            Self::TcpUdp => group == GroupProtocol::TcpUdp,
            Self::Tls => group == GroupProtocol::Tcp,
            Self::Http | Self::Https => {
                matches!(group, GroupProtocol::Http | GroupProtocol::Https)
            }
        }
    }
}

/// L4 forwarding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Full NAT: targets see a SNAT address and answer through the load balancer (default).
    #[default]
    Nat,
    /// Direct server return (not supported yet).
    Dsr,
}

/// A certificate and its key (TLS and HTTPS listeners).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// What a listener or rule does with a request: exactly one of the three.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Send it to target groups.
    pub forward: Option<Forward>,
    /// Answer with an HTTP redirect (L7).
    pub redirect: Option<Redirect>,
    /// Answer with a fixed HTTP response (L7).
    pub fixed_response: Option<FixedResponse>,
}

/// `forward = "group"` or `forward = [{ target_group = "a", weight = 90 }, ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// All to one group.
    Group(String),
    /// Split between groups by weight (L7).
    Weighted(Vec<WeightedGroup>),
}

impl<'de> Deserialize<'de> for Forward {
    // By hand rather than `#[serde(untagged)]`: untagged enums lose the inner error (an
    // unknown field in a weighted entry would read "did not match any variant").
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Forward;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a target group name, or a list like \
                     [{ target_group = \"a\", weight = 90 }, { target_group = \"b\", weight = 10 }]",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Forward, E> {
                Ok(Forward::Group(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Forward, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Forward::Weighted)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One group of a weighted forward.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroup {
    /// The group's name.
    pub target_group: String,
    /// Relative share of requests, 0..=999 as AWS (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

/// A redirect's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectProtocol {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

/// `redirect = { protocol = "https", port = 443, status_code = 301 }`: parts left out keep the
/// request's own (AWS's `#{host}`, `#{path}`... placeholders are allowed in the strings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Scheme of the new URL.
    pub protocol: Option<RedirectProtocol>,
    /// Host of the new URL.
    pub host: Option<String>,
    /// Port of the new URL.
    pub port: Option<u16>,
    /// Path of the new URL; starts with `/`.
    pub path: Option<String>,
    /// Query of the new URL, without the `?`.
    pub query: Option<String>,
    /// 301, 302, 303, 307 or 308 (default 301).
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    301
}

/// `fixed_response = { status_code = 503, content_type = "text/plain", message_body = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    /// HTTP status, 200..=599.
    pub status_code: u16,
    /// `Content-Type` of the body.
    pub content_type: Option<String>,
    /// The body.
    pub message_body: Option<String>,
}

impl Action {
    /// The groups this action forwards to, with the dotted path of each name.
    fn forwards(&self, path: &str) -> Vec<(&str, String)> {
        match &self.forward {
            Some(Forward::Group(g)) => vec![(g.as_str(), format!("{path}.forward"))],
            Some(Forward::Weighted(list)) => list
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    (
                        w.target_group.as_str(),
                        format!("{path}.forward[{i}].target_group"),
                    )
                })
                .collect(),
            None => Vec::new(),
        }
    }
}

/// What a rule matches on (L7); a rule matches when every condition given matches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conditions {
    /// Host header patterns (`*` and `?` wildcards); any may match.
    pub host: Vec<String>,
    /// Path patterns (`*` and `?` wildcards); any may match.
    pub path: Vec<String>,
    /// Request methods; any may match.
    pub http_request_method: Vec<String>,
    /// Client address blocks in CIDR notation; any may match.
    pub source_ip: Vec<String>,
    /// Header name → value patterns; for each header, any value may match.
    pub http_header: BTreeMap<String, Vec<String>>,
    /// Query key → value pattern.
    pub query_string: BTreeMap<String, String>,
}

impl Conditions {
    fn is_empty(&self) -> bool {
        self.host.is_empty()
            && self.path.is_empty()
            && self.http_request_method.is_empty()
            && self.source_ip.is_empty()
            && self.http_header.is_empty()
            && self.query_string.is_empty()
    }
}

/// A listener rule (L7): `[[listener.rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Lower is tried first; 1..=50000, unique in its listener.
    pub priority: u32,
    /// What the rule matches.
    #[serde(default)]
    pub conditions: Conditions,
    /// What it does with a match.
    pub action: Action,
}

/// An address, port and protocol the load balancer accepts traffic on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique among listeners; 1-64 of `[A-Za-z0-9_-]`.
    pub name: String,
    /// The VIP.
    pub address: IpAddr,
    /// The VIP's port.
    pub port: u16,
    /// What it accepts.
    pub protocol: ListenerProtocol,
    /// How L4 flows reach targets (default `nat`).
    #[serde(default)]
    pub mode: Mode,
    /// What it does with traffic no rule takes (L4: all of it).
    pub default_action: Action,
    /// Certificates (tls and https listeners).
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// `[[listener.rule]]`s (http and https listeners).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

impl Listener {
    /// The one group the default action forwards to, if it forwards to exactly one.
    pub fn forward_group(&self) -> Option<&str> {
        match &self.default_action.forward {
            Some(Forward::Group(g)) => Some(g),
            Some(Forward::Weighted(list)) if list.len() == 1 => Some(&list[0].target_group),
            _ => None,
        }
    }
}

/// Parses "500ms", "30s", "5m", "1h", "1h30m"; a bare number is refused (no unit to guess).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const SHAPE: &str = "a duration like \"30s\", \"500ms\", \"5m\" or \"1h30m\"";
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("empty: write {SHAPE}"));
    }
    let too_long = || format!("`{text}` is too long a duration");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{text}` is not {SHAPE}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
        let part = match &rest[..unit] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            "" => return Err(format!("`{text}` has no unit: write e.g. \"{n}s\"")),
            u => return Err(format!("`{text}`: unknown unit `{u}` (ms, s, m, h)")),
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(too_long)?;
        rest = &rest[unit..];
    }
    Ok(total)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"30s\", \"500ms\", \"5m\" or \"1h30m\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            let example = if v < 0 {
                "30s".to_owned()
            } else {
                format!("{v}s")
            };
            Err(E::custom(format!(
                "a bare number ({v}) has no unit: write a string such as \"{example}\""
            )))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a bare number ({v}) has no unit: write a string such as \"{v}s\""
            )))
        }
    }
    d.deserialize_any(Visitor)
}

/// A duration as the config writes it: `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (h, m, sec, rest) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (sec, "s"), (rest, "ms")] {
        if n > 0 {
            out += &format!("{n}{unit}");
        }
    }
    out
}

fn show_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based; 0 when the problem has no place in the text (an unreadable file).
    pub line: usize,
    /// 1-based, in characters; 0 with `line`.
    pub column: usize,
    /// Dotted path, e.g. `target_group[1].targets[0].weight`.
    pub field: String,
    /// What is wrong, and what would be accepted.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}: {}", self.file, self.field, self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Every problem found in a config file, in file order; `Display` puts one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Byte offset → 1-based (line, column in characters). Never slices, so an offset inside a
/// character cannot panic.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((n, r)) = rest.split_once(']') {
            if let Ok(i) = n.parse() {
                out.push(Segment::Index(i));
            }
            rest = r.trim_start_matches('[');
        }
    }
    out
}

/// The field and message of a serde error, the field named as the user wrote it.
fn serde_problem(doc: &toml_edit::ImDocument<&str>, e: &toml::de::Error) -> (String, String) {
    let message = e.message().trim().to_owned();
    let mut field = e.span().map(|s| path_at(doc, s.start)).unwrap_or_default();
    // toml points at the offending key (unknown) or the table (missing); either way the path
    // ends at the table, so name the field itself.
    let named = message.starts_with("unknown field") || message.starts_with("missing field");
    if let Some(name) = quoted_name(&message).filter(|_| named)
        && !field.ends_with(&format!(".{name}"))
        && field != name
    {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    if field.is_empty() {
        field = "(top level)".into();
    }
    (field, message)
}

/// The top-level entry a dotted path lies in: `target_group[1]` of
/// `target_group[1].targets[0].weight`, `agent` of `agent.colour`.
fn entry_of(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// Whether one dotted path is the other or lies within it.
fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    within(a, b) || within(b, a)
}

/// The span of the key (not the value) at a dotted path.
fn key_span_of(doc: &toml_edit::ImDocument<&str>, path: &str) -> Option<Range<usize>> {
    let segments = segments(path);
    let (Segment::Key(last), parents) = segments.split_last()? else {
        return None;
    };
    let mut item = doc.as_item();
    for segment in parents {
        item = match segment {
            Segment::Key(k) => item.get(*k)?,
            Segment::Index(i) => item.get(*i)?,
        };
    }
    let key = match item {
        toml_edit::Item::Table(t) => t.get_key_value(last)?.0,
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.get_key_value(last)?.0,
        _ => return None,
    };
    key.span()
}

/// Takes the key at a dotted path out of a document; whether there was one.
fn remove_at(doc: &mut toml_edit::DocumentMut, path: &str) -> bool {
    let segments = segments(path);
    let Some((Segment::Key(last), parents)) = segments.split_last() else {
        return false;
    };
    let mut item = doc.as_item_mut();
    for segment in parents {
        let next = match segment {
            Segment::Key(k) => item.get_mut(*k),
            Segment::Index(i) => item.get_mut(*i),
        };
        match next {
            Some(next) => item = next,
            None => return false,
        }
    }
    match item {
        toml_edit::Item::Table(t) => t.remove(last).is_some(),
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.remove(last).is_some(),
        _ => false,
    }
}

/// The span of the deepest item on `path` that the document has (a defaulted field has no
/// span, so the error points at the table it is missing from).
fn span_of(doc: &toml_edit::ImDocument<&str>, path: &str) -> Option<Range<usize>> {
    let mut item = doc.as_item();
    let mut span = None;
    for segment in segments(path) {
        let next = match segment {
            Segment::Key(k) => item.get(k),
            Segment::Index(i) => item.get(i),
        };
        match next {
            Some(next) => {
                item = next;
                if let Some(s) = item.span() {
                    span = Some(s);
                }
            }
            None => break,
        }
    }
    span
}

/// The dotted path of the innermost item at `offset`.
///
/// A `[table]` section's keys follow its header, and a section can come anywhere after its
/// parent's (`[[target_group]]` ... `[target_group.health_check]`), so the section holding
/// `offset` is the one whose header starts last before it, at any depth. Inside it, values
/// (inline tables, arrays) carry spans, so the rest of the way is by containment.
fn path_at(doc: &toml_edit::ImDocument<&str>, offset: usize) -> String {
    fn sections<'a>(
        table: &'a toml_edit::Table,
        path: &str,
        out: &mut Vec<(usize, String, &'a toml_edit::Table)>,
    ) {
        for (key, item) in table.iter() {
            let at = if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            };
            match item {
                toml_edit::Item::Table(t) => {
                    if let Some(span) = t.span() {
                        out.push((span.start, at.clone(), t));
                    }
                    sections(t, &at, out);
                }
                toml_edit::Item::ArrayOfTables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        let at = format!("{at}[{i}]");
                        if let Some(span) = t.span() {
                            out.push((span.start, at.clone(), t));
                        }
                        sections(t, &at, out);
                    }
                }
                _ => {}
            }
        }
    }
    fn within_value(value: &toml_edit::Value, offset: usize, path: &mut String) {
        match value {
            toml_edit::Value::InlineTable(t) => {
                for (key, v) in t.iter() {
                    if v.span().is_some_and(|s| s.contains(&offset)) {
                        path.push('.');
                        path.push_str(key);
                        return within_value(v, offset, path);
                    }
                }
            }
            toml_edit::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    if v.span().is_some_and(|s| s.contains(&offset)) {
                        path.push_str(&format!("[{i}]"));
                        return within_value(v, offset, path);
                    }
                }
            }
            _ => {}
        }
    }
    fn within_table(table: &toml_edit::Table, offset: usize, path: &mut String) {
        for (key, item) in table.iter() {
            match item {
                toml_edit::Item::Value(v) if v.span().is_some_and(|s| s.contains(&offset)) => {
                    path.push('.');
                    path.push_str(key);
                    return within_value(v, offset, path);
                }
                // `a.b = 1` makes a dotted table with no header: its values are in this section.
                toml_edit::Item::Table(t) if t.is_dotted() => {
                    let before = path.len();
                    path.push('.');
                    path.push_str(key);
                    let marked = path.len();
                    within_table(t, offset, path);
                    if path.len() > marked {
                        return;
                    }
                    path.truncate(before);
                }
                _ => {}
            }
        }
    }
    let root = doc.as_table();
    let mut all = Vec::new();
    sections(root, "", &mut all);
    let (mut path, table) = all
        .into_iter()
        .filter(|(start, ..)| *start <= offset)
        .max_by_key(|(start, ..)| *start)
        .map_or((String::new(), root), |(_, path, table)| (path, table));
    within_table(table, offset, &mut path);
    path.trim_start_matches('.').to_owned()
}

/// The name inside the first pair of backticks of a serde message (`unknown field `x`, ...`).
fn quoted_name(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    Some(name)
}

/// Collects semantic errors by dotted path; positions are looked up at the end.
#[derive(Default)]
struct Problems {
    list: Vec<(String, String)>,
    seen: HashSet<(String, String)>,
}

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let entry = (field.into(), message.into());
        // A listener that reaches one group from several actions would otherwise report each
        // of its targets once per action.
        if self.seen.insert(entry.clone()) {
            self.list.push(entry);
        }
    }

    fn port(&mut self, field: String, port: Option<u16>) {
        if port == Some(0) {
            self.add(field, "port 0 is not a port: 1..=65535");
        }
    }
}

fn check_name(p: &mut Problems, field: String, name: &str) {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        p.add(
            field,
            format!("`{name}`: a name is 1-64 characters of A-Z, a-z, 0-9, `_` and `-`"),
        );
    }
}

fn check_unicast(p: &mut Problems, field: String, ip: IpAddr, what: &str) {
    if ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
    {
        p.add(
            field,
            format!("{ip} cannot be {what}: it must be a unicast address"),
        );
    }
}

fn check_matcher(p: &mut Problems, field: String, matcher: &str) {
    let ok = matcher.split(',').all(|part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) => (100..=599).contains(&a) && (100..=599).contains(&b) && a <= b,
            _ => false,
        }
    });
    if !ok {
        p.add(
            field,
            format!(
                "`{matcher}` is no status matcher: write codes 100-599 like \"200\", \"200-299\" or \"200,301\""
            ),
        );
    }
}

/// Checks a health check's fields; `hat` is its dotted path, like `target_group[0].health_check`.
fn check_health_check(p: &mut Problems, hat: &str, hc: &HealthCheck) {
    p.port(format!("{hat}.port"), hc.port);
    for (field, v) in [
        ("healthy_threshold", hc.healthy_threshold),
        ("unhealthy_threshold", hc.unhealthy_threshold),
    ] {
        if !(2..=10).contains(&v) {
            p.add(
                format!("{hat}.{field}"),
                format!("{v} is out of range 2..=10"),
            );
        }
    }
    check_duration(
        p,
        format!("{hat}.interval"),
        hc.interval,
        Duration::from_secs(1),
        Duration::from_secs(300),
    );
    check_duration(
        p,
        format!("{hat}.timeout"),
        hc.timeout,
        Duration::from_millis(100),
        Duration::from_secs(120),
    );
    if let Some(host) = &hc.host
        && (host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()))
    {
        p.add(
            format!("{hat}.host"),
            format!("`{host}` is no Host header value (printable ASCII, no spaces)"),
        );
    }
    if hc.timeout >= hc.interval {
        p.add(
            format!("{hat}.timeout"),
            format!(
                "{:?} must be shorter than the interval ({:?})",
                hc.timeout, hc.interval
            ),
        );
    }
    if !hc.path.starts_with('/')
        || hc.path.len() > 1024
        || !hc.path.bytes().all(|b| b.is_ascii_graphic())
    {
        p.add(
                format!("{hat}.path"),
                format!(
                    "{:?} is no request path: it starts with / and is at most 1024 printable ASCII characters, no spaces",
                    hc.path
                ),
            );
    }
    check_matcher(p, format!("{hat}.matcher"), &hc.matcher);
}

fn check_duration(p: &mut Problems, field: String, d: Duration, min: Duration, max: Duration) {
    if !(min..=max).contains(&d) {
        p.add(field, format!("{d:?} is out of range {min:?}..={max:?}"));
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                field: "(file)".into(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let error_at = |span: Option<Range<usize>>, field: String, message: String| {
            let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                field,
                message,
            }
        };
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                return Err(ConfigErrors(vec![error_at(
                    e.span(),
                    "(syntax)".into(),
                    e.message().trim().to_owned(),
                )]));
            }
        };
        // Every error at once: a key serde refuses (unknown, or of the wrong type) is
        // reported and taken out of a copy of the document, and the copy is read again. What
        // cannot be taken out (a missing field, an array element) ends the round.
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let mut current = text.to_owned();
        let config = loop {
            let e = match toml::from_str::<Config>(&current) {
                Ok(config) => break Some(config),
                Err(e) => e,
            };
            let Ok(now) = toml_edit::ImDocument::parse(current.as_str()) else {
                break None;
            };
            let (field, message) = serde_problem(&now, &e);
            if removed.iter().any(|r| related(r, &field)) {
                // Only says again that a key taken out is needed where it was.
                break None;
            }
            let span = if message.starts_with("unknown field") {
                key_span_of(&doc, &field)
            } else {
                span_of(&doc, &field)
            }
            .or_else(|| e.span().filter(|_| removed.is_empty()));
            let missing = message.starts_with("missing field");
            errors.push(error_at(span, field.clone(), message));
            if missing || field.ends_with(']') || errors.len() >= 100 {
                break None;
            }
            let Ok(mut copy) = current.parse::<toml_edit::DocumentMut>() else {
                break None;
            };
            if !remove_at(&mut copy, &field) {
                break None;
            }
            removed.push(field);
            current = copy.to_string();
        };
        let Some(config) = config else {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(errors));
        };
        let mut problems = Problems::default();
        config.validate(&mut problems);
        if problems.list.is_empty() && errors.is_empty() {
            return Ok(config);
        }
        errors.extend(
            problems
                .list
                .into_iter()
                // An entry with a key taken out above may look wrong in other ways that
                // follow from it (a port of the wrong type looks missing): its own checks
                // wait until that key is fixed.
                .filter(|(field, _)| !removed.iter().any(|r| related(entry_of(r), field)))
                .map(|(field, message)| error_at(span_of(&doc, &field), field, message)),
        );
        // Stable: problems at one place keep the order validation found them in.
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }

    /// Every target's address, of every group (with repeats).
    pub fn target_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.target_groups
            .iter()
            .flat_map(|g| g.targets.iter().map(|t| t.address))
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|g| g.name == name)
    }

    /// What is wrong with a config built in memory (a file's with overrides applied), as
    /// (field, message); empty when it can run.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Problems::default();
        self.validate(&mut p);
        p.list
    }

    fn validate(&self, p: &mut Problems) {
        self.validate_agent(p);
        self.validate_groups(p);
        self.validate_listeners(p);
    }

    fn validate_agent(&self, p: &mut Problems) {
        let agent = &self.agent;
        if let Some(iface) = &agent.interface {
            // IFNAMSIZ is 16 with the NUL; the kernel refuses '/' and whitespace.
            if iface.is_empty()
                || iface.len() > 15
                || iface.contains(|c: char| c == '/' || c.is_whitespace())
            {
                p.add(
                    "agent.interface",
                    format!("`{iface}` is no interface name: 1-15 bytes without `/` or spaces"),
                );
            }
        }
        // sun_path holds 108 bytes including the NUL.
        let socket_len = agent.control_socket.as_os_str().len();
        if socket_len == 0 || socket_len > 107 {
            p.add(
                "agent.control_socket",
                format!("a socket path is 1-107 bytes; this one is {socket_len}"),
            );
        }
        let size = agent.maglev_table_size;
        if !(251..=1_000_003).contains(&size) {
            p.add(
                "agent.maglev_table_size",
                format!(
                    "{size} is out of range 251..=1000003: smaller spreads flows unevenly, larger \
                     costs memory and rebuild time for nothing (65537 suits groups of up to ~650)"
                ),
            );
        } else if !is_prime(size) {
            p.add(
                "agent.maglev_table_size",
                format!(
                    "{size} is not prime: Maglev needs a prime size so every target's \
                     permutation reaches every slot (try 65537, 131071 or 262139)"
                ),
            );
        }
        for (field, d, min, max) in [
            ("tcp_idle_timeout", agent.tcp_idle_timeout, 60, 6000),
            ("udp_idle_timeout", agent.udp_idle_timeout, 10, 3600),
            ("closed_timeout", agent.closed_timeout, 1, 600),
        ] {
            check_duration(
                p,
                format!("agent.{field}"),
                d,
                Duration::from_secs(min),
                Duration::from_secs(max),
            );
        }
        let (lo, hi) = agent.snat_port_range;
        if lo < 1024 || lo >= hi {
            p.add(
                "agent.snat_port_range",
                format!(
                    "[{lo}, {hi}] must be [min, max] with 1024 <= min < max (ports below 1024 \
                     are the node's own services'); the default is [1024, 32767]"
                ),
            );
        }
        let mut families = HashSet::new();
        for (i, ip) in agent.snat_addresses.iter().enumerate() {
            let at = format!("agent.snat_addresses[{i}]");
            check_unicast(p, at.clone(), *ip, "a SNAT address");
            if !families.insert(ip.is_ipv4()) {
                p.add(
                    at,
                    format!(
                        "a second IPv{} address: at most one IPv4 and one IPv6 SNAT address",
                        if ip.is_ipv4() { 4 } else { 6 }
                    ),
                );
            }
        }
    }

    fn validate_groups(&self, p: &mut Problems) {
        if self.target_groups.len() > MAX_GROUPS as usize {
            p.add(
                format!("target_group[{MAX_GROUPS}]"),
                format!("at most {MAX_GROUPS} target groups"),
            );
        }
        let total: usize = self.target_groups.iter().map(|g| g.targets.len()).sum();
        // Backend id 0 means "none" in the data plane, so ids run 1..MAX_BACKENDS.
        if total >= MAX_BACKENDS as usize {
            p.add(
                "target_group",
                format!(
                    "{total} targets in all: at most {} fit the data plane",
                    MAX_BACKENDS - 1
                ),
            );
        }
        let mut names = HashMap::new();
        for (gi, g) in self.target_groups.iter().enumerate() {
            let at = format!("target_group[{gi}]");
            check_name(p, format!("{at}.name"), &g.name);
            if let Some(first) = names.insert(g.name.as_str(), gi) {
                names.insert(g.name.as_str(), first);
                p.add(
                    format!("{at}.name"),
                    format!("target_group[{first}] is already named `{}`", g.name),
                );
            }
            p.port(format!("{at}.port"), g.port);
            if !g.slow_start.is_zero() {
                check_duration(
                    p,
                    format!("{at}.slow_start"),
                    g.slow_start,
                    Duration::from_secs(1),
                    Duration::from_secs(900),
                );
            }
            check_duration(
                p,
                format!("{at}.deregistration_delay"),
                g.deregistration_delay,
                Duration::ZERO,
                Duration::from_secs(3600),
            );
            match &g.stickiness {
                Some(s @ (Stickiness::LbCookie { .. } | Stickiness::AppCookie { .. }))
                    if g.protocol.is_l4() =>
                {
                    p.add(
                        format!("{at}.stickiness"),
                        format!(
                            "`{}` stickiness on a {} group is not supported yet: cookies need \
                             HTTP; L4 groups take {{ type = \"source_ip\" }}",
                            s.kind(),
                            g.protocol.as_str()
                        ),
                    );
                }
                _ => {}
            }
            let mut seen = HashMap::new();
            for (ti, t) in g.targets.iter().enumerate() {
                let tat = format!("{at}.targets[{ti}]");
                check_unicast(p, format!("{tat}.address"), t.address, "a target");
                if t.weight > 1000 {
                    p.add(
                        format!("{tat}.weight"),
                        format!("{} is out of range 0..=1000", t.weight),
                    );
                }
                p.port(format!("{tat}.port"), t.port);
                // Every group, used or not: the agent registers all targets at start-up and
                // needs a port for each.
                if t.port_in(g).is_none() {
                    p.add(
                        format!("{tat}.address"),
                        format!(
                            "{} has no port and group `{}` has none: set `port` on one of them",
                            t.address, g.name
                        ),
                    );
                }
                if let Some(first) = seen.insert((t.address, t.port_in(g)), ti) {
                    seen.insert((t.address, t.port_in(g)), first);
                    p.add(
                        format!("{tat}.address"),
                        format!("the same target as targets[{first}] of `{}`", g.name),
                    );
                }
            }
            if let Some(hc) = &g.health_check {
                check_health_check(p, &format!("{at}.health_check"), hc);
            }
        }
    }

    fn validate_listeners(&self, p: &mut Problems) {
        if self.listeners.len() > MAX_LISTENERS as usize {
            p.add(
                format!("listener[{MAX_LISTENERS}]"),
                format!("at most {MAX_LISTENERS} listeners"),
            );
        }
        let mut names = HashMap::new();
        let mut by_socket: HashMap<(IpAddr, u16), Vec<usize>> = HashMap::new();
        for (li, l) in self.listeners.iter().enumerate() {
            let at = format!("listener[{li}]");
            check_name(p, format!("{at}.name"), &l.name);
            if let Some(first) = names.insert(l.name.as_str(), li) {
                names.insert(l.name.as_str(), first);
                p.add(
                    format!("{at}.name"),
                    format!("listener[{first}] is already named `{}`", l.name),
                );
            }
            check_unicast(p, format!("{at}.address"), l.address, "a listener address");
            if l.port == 0 {
                p.add(format!("{at}.port"), "port 0 is not a port: 1..=65535");
            }
            // Keyed by VIP and port so a long list is not compared pairwise.
            let earlier = by_socket.entry((l.address, l.port)).or_default();
            for &oi in earlier.iter() {
                let other: &Listener = &self.listeners[oi];
                let (t1, u1) = l.protocol.transports();
                let (t2, u2) = other.protocol.transports();
                let shared = match (t1 && t2, u1 && u2) {
                    (true, true) => "TCP and UDP",
                    (true, false) => "TCP",
                    (false, true) => "UDP",
                    (false, false) => continue,
                };
                p.add(
                    format!("{at}.port"),
                    format!(
                        "listener `{}` overlaps listener `{}` (listener[{oi}]): both take {shared} on {}",
                        l.name,
                        other.name,
                        std::net::SocketAddr::new(l.address, l.port)
                    ),
                );
            }
            earlier.push(li);
            let mut actions = vec![(format!("{at}.default_action"), &l.default_action)];
            actions.extend(
                l.rules
                    .iter()
                    .enumerate()
                    .map(|(ri, r)| (format!("{at}.rule[{ri}].action"), &r.action)),
            );
            for (path, action) in &actions {
                self.validate_action(p, path, action);
            }
            let mut priorities = HashMap::new();
            for (ri, r) in l.rules.iter().enumerate() {
                let rat = format!("{at}.rule[{ri}]");
                if !(1..=50_000).contains(&r.priority) {
                    p.add(
                        format!("{rat}.priority"),
                        format!("{} is out of range 1..=50000", r.priority),
                    );
                } else if let Some(first) = priorities.insert(r.priority, ri) {
                    priorities.insert(r.priority, first);
                    p.add(
                        format!("{rat}.priority"),
                        format!("rule[{first}] has priority {} too", r.priority),
                    );
                }
                if r.conditions.is_empty() {
                    p.add(
                        format!("{rat}.conditions"),
                        "a rule needs a condition (host, path, http_request_method, source_ip, \
                         http_header or query_string); the default action takes the rest",
                    );
                }
            }
            if !l.certificates.is_empty()
                && !matches!(l.protocol, ListenerProtocol::Tls | ListenerProtocol::Https)
            {
                p.add(
                    format!("{at}.certificates"),
                    format!(
                        "a {} listener has no use for certificates (tls and https do)",
                        l.protocol.as_str()
                    ),
                );
            }
            if l.protocol.is_l4() {
                self.validate_l4_listener(p, &at, l);
            } else {
                p.add(
                    format!("{at}.protocol"),
                    format!(
                        "`{}` listeners are not supported yet (L4 only: tcp, udp, tcp_udp)",
                        l.protocol.as_str()
                    ),
                );
            }
            // Families, whatever the protocol: NAT between IPv4 and IPv6 is never done.
            for (group, _) in actions.iter().flat_map(|(path, a)| a.forwards(path)) {
                let Some(gi) = self.target_groups.iter().position(|g| g.name == group) else {
                    continue;
                };
                for (ti, t) in self.target_groups[gi].targets.iter().enumerate() {
                    if t.address.is_ipv4() != l.address.is_ipv4() {
                        p.add(
                            format!("target_group[{gi}].targets[{ti}].address"),
                            format!(
                                "{} and {}, the VIP of listener `{}`, differ in family (no NAT \
                                 between IPv4 and IPv6)",
                                t.address, l.address, l.name
                            ),
                        );
                    }
                }
            }
        }
    }

    fn validate_action(&self, p: &mut Problems, path: &str, action: &Action) {
        let set = [
            action.forward.is_some(),
            action.redirect.is_some(),
            action.fixed_response.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            p.add(
                path,
                "an action is exactly one of forward, redirect, fixed_response",
            );
        }
        for (group, gpath) in action.forwards(path) {
            if self.group(group).is_none() {
                let known: Vec<&str> = self.target_groups.iter().map(|g| g.name.as_str()).collect();
                p.add(
                    gpath,
                    format!(
                        "no target group named `{group}` (groups: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
        if let Some(Forward::Weighted(list)) = &action.forward {
            if list.is_empty() {
                p.add(format!("{path}.forward"), "an empty list forwards nowhere");
            }
            for (i, w) in list.iter().enumerate() {
                if w.weight > 999 {
                    p.add(
                        format!("{path}.forward[{i}].weight"),
                        format!("{} is out of range 0..=999", w.weight),
                    );
                }
            }
        }
        if let Some(r) = &action.redirect {
            if ![301, 302, 303, 307, 308].contains(&r.status_code) {
                p.add(
                    format!("{path}.redirect.status_code"),
                    format!(
                        "{} is no redirect status: 301, 302, 303, 307 or 308",
                        r.status_code
                    ),
                );
            }
            p.port(format!("{path}.redirect.port"), r.port);
            if r.path.as_deref().is_some_and(|s| !s.starts_with('/')) {
                p.add(format!("{path}.redirect.path"), "must start with /");
            }
        }
        if let Some(r) = &action.fixed_response
            && !(200..=599).contains(&r.status_code)
        {
            p.add(
                format!("{path}.fixed_response.status_code"),
                format!("{} is out of range 200..=599", r.status_code),
            );
        }
    }

    fn validate_l4_listener(&self, p: &mut Problems, at: &str, l: &Listener) {
        if l.mode == Mode::Dsr {
            p.add(
                format!("{at}.mode"),
                "mode `dsr` is not supported yet; use `nat` (the default)",
            );
        }
        if !l.rules.is_empty() {
            p.add(
                format!("{at}.rule"),
                "rules are for http/https listeners; an L4 listener has only a default action",
            );
        }
        let action = &l.default_action;
        let group = match &action.forward {
            Some(Forward::Group(g)) => g,
            Some(Forward::Weighted(list)) if list.len() == 1 => &list[0].target_group,
            Some(Forward::Weighted(_)) => {
                p.add(
                    format!("{at}.default_action.forward"),
                    "an L4 listener forwards to exactly one target group (weighted forwards \
                     are L7); write forward = \"group\"",
                );
                return;
            }
            None => {
                if action.redirect.is_some() || action.fixed_response.is_some() {
                    p.add(
                        format!("{at}.default_action"),
                        "redirect and fixed_response are HTTP answers; an L4 listener must \
                         forward to a target group",
                    );
                }
                return;
            }
        };
        let Some(g) = self.group(group) else { return };
        if !l.protocol.serves(g.protocol) {
            let fits = match l.protocol {
                ListenerProtocol::Tcp => "tcp or tcp_udp",
                ListenerProtocol::Udp => "udp or tcp_udp",
                _ => "tcp_udp",
            };
            p.add(
                format!("{at}.default_action.forward"),
                format!(
                    "a {} listener cannot forward to `{}`, a {} group (it needs a {fits} group)",
                    l.protocol.as_str(),
                    g.name,
                    g.protocol.as_str()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        match Config::parse(text, "t.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0,
        }
    }

    fn fields(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    // Line numbers below count from the `[agent]` line, which is line 2.
    const GOOD: &str = r#"
[agent]
snat_addresses = ["198.18.0.1"]

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22", weight = 2 }]

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "web" }
"#;

    #[test]
    fn unknown_fields_wrong_types_and_semantic_errors_are_reported_together() {
        let text = with_listener("api", 81, "tcp", "\"nope\"")
            .replace("snat_addresses", "colour = \"blue\"\nsnat_addresses")
            .replace("port = 8080", "port = \"8080\"")
            .replace(
                "protocol = \"tcp\"\ndefault_action = { forward = \"web\" }",
                "protocl = \"tcp\"\nprotocol = \"tcp\"\ndefault_action = { forward = \"web\" }",
            );
        let e = errors(&text);
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "agent.colour"),
                (9, "target_group[0].port"),
                (16, "listener[0].protocl"),
                (25, "listener[1].default_action.forward"),
            ],
            "{}",
            ConfigErrors(e.clone())
        );
        assert!(e[0].message.contains("unknown field"), "{}", e[0]);
        assert!(e[1].message.contains("expected u16"), "{}", e[1]);
        assert!(
            e[3].message.contains("no target group named `nope`"),
            "{}",
            e[3]
        );
    }

    /// GOOD plus a second listener; its lines are 17-23.
    fn with_listener(name: &str, port: u16, protocol: &str, forward: &str) -> String {
        format!(
            "{GOOD}\n[[listener]]\nname = \"{name}\"\naddress = \"198.18.1.100\"\nport = {port}\n\
             protocol = \"{protocol}\"\ndefault_action = {{ forward = {forward} }}\n"
        )
    }

    #[test]
    fn every_example_file_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n > 0, "no examples");
    }

    #[test]
    fn defaults_apply() {
        let text = GOOD.replace(
            "port = 8080\n",
            "port = 8080\nhealth_check = { protocol = \"http\" }\n",
        );
        let c = Config::parse(&text, "t.toml").expect("valid");
        assert_eq!(c.agent.interface, None);
        assert_eq!(c.agent.control_socket, Path::new("/run/lb-agent.sock"));
        assert_eq!(c.agent.maglev_table_size, 65537);
        assert_eq!(c.agent.snat_port_range, (1024, 32767));
        let g = &c.target_groups[0];
        assert_eq!(g.deregistration_delay, Duration::from_secs(300));
        assert_eq!(g.stickiness, None);
        assert_eq!(g.targets[0].weight, 1);
        assert_eq!(g.targets[0].port_in(g), Some(8080));
        let hc = g.health_check.as_ref().expect("health_check");
        assert_eq!(
            (
                hc.interval,
                hc.timeout,
                hc.healthy_threshold,
                hc.unhealthy_threshold
            ),
            (Duration::from_secs(30), Duration::from_secs(10), 5, 2)
        );
        assert_eq!((hc.path.as_str(), hc.matcher.as_str()), ("/", "200-399"));
        assert_eq!(hc.port, None);
        let l = &c.listeners[0];
        assert_eq!(l.mode, Mode::Nat);
        assert_eq!(l.forward_group(), Some("web"));
        assert!(l.rules.is_empty() && l.certificates.is_empty());
        assert_eq!(c.group("web").map(|g| g.port), Some(Some(8080)));
        assert!(c.group("nope").is_none());
    }

    #[test]
    fn design_contract_example_parses() {
        // The file from DESIGN.md's "user's contract", with an `api` and `canary` group added
        // so its forwards resolve: it must parse, and only the L7 parts be refused.
        let text = r#"
[agent]
interface = "eth0"
snat_addresses = ["198.18.0.1"]
control_socket = "/run/lb-agent.sock"

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
deregistration_delay = "30s"
stickiness = { type = "source_ip" }
targets = [{ address = "198.18.2.2" }, { address = "198.18.2.3", port = 8081, weight = 2 }]
[target_group.health_check]
protocol = "http"
path = "/health"
matcher = "200-299"
interval = "5s"
timeout = "2s"
healthy_threshold = 3
unhealthy_threshold = 2

[[target_group]]
name = "api"
protocol = "http"
port = 8080
stickiness = { type = "app_cookie", cookie_name = "SESSION", duration = "1h" }

[[target_group]]
name = "canary"
protocol = "http"
port = 8080
stickiness = { type = "lb_cookie", duration = "1h30m" }

[[listener]]
name = "web-l4"
address = "198.18.1.100"
port = 80
protocol = "tcp"
mode = "nat"
default_action = { forward = "web" }

[[listener]]
name = "web-https"
address = "198.18.1.100"
port = 443
protocol = "https"
certificates = [{ cert = "certs/a.pem", key = "certs/a.key" }]
default_action = { forward = "web" }
[[listener.rule]]
priority = 10
conditions = { host = ["api.example.com"], path = ["/v1/*"] }
action = { forward = [{ target_group = "api", weight = 90 }, { target_group = "canary", weight = 10 }] }
[[listener.rule]]
priority = 20
conditions = { path = ["/old/*"] }
action = { redirect = { protocol = "https", path = "/new/#{path}", status_code = 302 } }
[[listener.rule]]
priority = 30
conditions = { http_request_method = ["DELETE"] }
action = { fixed_response = { status_code = 403, content_type = "text/plain", message_body = "no" } }
"#;
        let e = errors(text);
        assert_eq!(fields(&e), ["listener[1].protocol"], "{e:?}");
        assert!(e[0].message.contains("not supported yet"), "{}", e[0]);
        assert_eq!(e[0].line, 47, "{}", e[0]);
    }

    #[test]
    fn unknown_field_names_file_line_column_and_field() {
        let text = GOOD.replace("port = 8080\n", "port = 8080\nprot = 1\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        let e = &e[0];
        assert_eq!(
            (e.file.as_str(), e.line, e.column, e.field.as_str()),
            ("t.toml", 9, 1, "target_group[0].prot"),
            "{e}"
        );
        assert!(e.message.contains("unknown field `prot`"), "{e}");
        assert!(e.message.contains("`port`"), "lists accepted fields: {e}");
        assert!(
            e.to_string()
                .starts_with("t.toml:9:1: target_group[0].prot: ")
        );

        // Inside an inline table: the column of the key.
        let text = GOOD.replace("weight = 2", "wieght = 2");
        let e = &errors(&text)[0];
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (9, 68, "target_group[0].targets[1].wieght"),
            "{e}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let text = GOOD.replace("port = 80\n", "");
        let e = &errors(&text)[0];
        assert_eq!(e.field, "listener[0].port", "{e}");
        assert!(e.message.contains("missing field `port`"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = GOOD.replace("port = 80\n", "port = \"eighty\"\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        let e = &e[0];
        assert_eq!((e.line, e.column), (14, 8), "{e}");
        assert_eq!(e.field, "listener[0].port", "{e}");
        assert!(e.message.contains("expected u16"), "{e}");

        let text = GOOD.replace(
            "protocol = \"tcp\"\ndefault",
            "protocol = \"sctp\"\ndefault",
        );
        let e = &errors(&text)[0];
        assert_eq!(e.field, "listener[0].protocol", "{e}");
        assert!(
            e.message.contains("`tcp_udp`"),
            "lists accepted values: {e}"
        );

        let text = GOOD.replace("{ forward = \"web\" }", "{ forward = 3 }");
        let e = &errors(&text)[0];
        assert_eq!(e.field, "listener[0].default_action.forward", "{e}");
        assert!(e.message.contains("target group name"), "{e}");
    }

    #[test]
    fn syntax_error_is_located() {
        let text = GOOD.replace("[agent]", "[agent");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].line, e[0].field.as_str()),
            (2, "(syntax)"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn forward_to_a_missing_group_points_at_the_forward() {
        let text = GOOD.replace("{ forward = \"web\" }", "{ forward = \"nope\" }");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        let e = &e[0];
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (16, 30, "listener[0].default_action.forward"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "t.toml:16:30: listener[0].default_action.forward: \
             no target group named `nope` (groups: web)"
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let text = format!(
            "{}\n[[target_group]]\nname = \"web\"\nprotocol = \"udp\"\n",
            with_listener("web", 81, "tcp", "\"web\"")
        );
        let e = errors(&text);
        assert_eq!(
            fields(&e),
            ["listener[1].name", "target_group[1].name"],
            "{e:?}"
        );
        assert!(e[0].message.contains("listener[0]"), "{}", e[0]);
        assert_eq!(e[0].line, 19, "{}", e[0]);
        assert!(e[1].message.contains("target_group[0]"), "{}", e[1]);

        let text = GOOD.replace(
            "[[listener]]\nname = \"web\"",
            "[[listener]]\nname = \"a b\"",
        );
        assert_eq!(fields(&errors(&text)), ["listener[0].name"]);
    }

    #[test]
    fn overlapping_listeners_name_both() {
        // tcp_udp on the same VIP and port overlaps the tcp listener.
        let e = errors(&with_listener("web-both", 80, "tcp_udp", "\"web\""));
        let overlap: Vec<_> = e
            .iter()
            .filter(|e| e.message.contains("overlaps"))
            .collect();
        assert_eq!(overlap.len(), 1, "{e:?}");
        let o = overlap[0];
        assert_eq!((o.field.as_str(), o.line), ("listener[1].port", 21), "{o}");
        assert!(
            o.message.contains("`web-both`") && o.message.contains("`web`"),
            "{o}"
        );
        assert!(o.message.contains("198.18.1.100:80"), "{o}");

        // udp and tcp on one port share nothing.
        let text = format!(
            "{}\n[[target_group]]\nname = \"dns\"\nprotocol = \"udp\"\nport = 53\n",
            with_listener("dns", 80, "udp", "\"dns\"")
        );
        Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn maglev_size_must_be_a_prime_in_range() {
        for (size, why) in [
            (65536, "not prime"),
            (7, "out of range"),
            (1_000_033, "out of range"),
        ] {
            let text = GOOD.replace(
                "[agent]\n",
                &format!("[agent]\nmaglev_table_size = {size}\n"),
            );
            let e = errors(&text);
            assert_eq!(fields(&e), ["agent.maglev_table_size"], "{e:?}");
            assert!(e[0].message.contains(why), "{}", e[0]);
            assert_eq!((e[0].line, e[0].column), (3, 21), "{}", e[0]);
        }
        for size in [251, 65537, 1_000_003] {
            let text = GOOD.replace(
                "[agent]\n",
                &format!("[agent]\nmaglev_table_size = {size}\n"),
            );
            Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{size}: {e}"));
        }
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = with_listener("web", 80, "tcp_udp", "\"web\"")
            .replace("weight = 2", "weight = 2000")
            .replace(
                "[agent]\n",
                "[agent]\nmaglev_table_size = 65536\nsnat_port_range = [40000, 2000]\n",
            );
        let e = errors(&text);
        let got = fields(&e);
        assert_eq!(
            got,
            [
                "agent.maglev_table_size",
                "agent.snat_port_range",
                "target_group[0].targets[1].weight",
                "listener[1].name",
                "listener[1].port",
                "listener[1].default_action.forward",
            ],
            "{e:?}"
        );
        // In file order, one per line.
        assert!(e.windows(2).all(|w| w[0].line <= w[1].line), "{e:?}");
        let shown = ConfigErrors(e).to_string();
        assert_eq!(shown.lines().count(), 6, "{shown}");
        assert!(shown.contains("overlaps"), "{shown}");
        assert!(shown.contains("needs a tcp_udp group"), "{shown}");
    }

    #[test]
    fn a_health_check_round_trips_through_json_and_reports_its_problems() {
        let hc = HealthCheck {
            protocol: HealthProtocol::Https,
            port: Some(8443),
            path: "/ready".into(),
            method: HealthMethod::Head,
            interval: Duration::from_millis(1500),
            ..HealthCheck::default()
        };
        let json = serde_json::to_value(&hc).unwrap();
        assert_eq!(json["interval"], "1s500ms");
        assert_eq!(json["protocol"], "https");
        assert_eq!(json["method"], "HEAD");
        let back: HealthCheck = serde_json::from_value(json).unwrap();
        assert_eq!(back, hc);
        assert!(
            hc.problems().len() == 1,
            "timeout 10s >= interval: {:?}",
            hc.problems()
        );
        let bad = HealthCheck {
            path: "/a b\r\nX: y".into(),
            healthy_threshold: 1,
            ..HealthCheck::default()
        };
        let fields: Vec<String> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["health_check.healthy_threshold", "health_check.path"]
        );
        assert!(HealthCheck::default().problems().is_empty());
    }

    #[test]
    fn durations_parse() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m500ms", Duration::from_millis(60_500)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(duration_text(want), text, "written back");
        }
        for bad in [
            "",
            "30",
            "3x",
            "s",
            "-5s",
            "1.5s",
            "1h 30m",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Overflow is an error, not a panic.
        assert!(parse_duration("9999999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615s18446744073709551615s").is_err());

        let text = GOOD.replace("port = 8080\n", "port = 8080\nderegistration_delay = 30\n");
        let e = errors(&text);
        assert_eq!(
            e[0].field, "target_group[0].deregistration_delay",
            "{}",
            e[0]
        );
        assert!(e[0].message.contains("\"30s\""), "{}", e[0]);

        let text = GOOD.replace(
            "port = 8080\n",
            "port = 8080\nderegistration_delay = \"2m\"\n",
        );
        let c = Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.target_groups[0].deregistration_delay,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn unsupported_features_are_refused_clearly() {
        for protocol in ["tls", "http", "https"] {
            let text = GOOD.replace(
                "protocol = \"tcp\"\ndefault_action",
                &format!("protocol = \"{protocol}\"\ndefault_action"),
            );
            let e = errors(&text);
            assert!(
                e.iter().any(|e| e.field == "listener[0].protocol"
                    && e.message.contains("not supported yet")),
                "{e:?}"
            );
        }
        let text = GOOD.replace(
            "default_action = { forward = \"web\" }",
            "mode = \"dsr\"\ndefault_action = { forward = \"web\" }",
        );
        let e = errors(&text);
        assert_eq!(fields(&e), ["listener[0].mode"], "{e:?}");
        assert!(e[0].message.contains("not supported yet"), "{}", e[0]);

        let text = GOOD.replace(
            "port = 8080\n",
            "port = 8080\nstickiness = { type = \"lb_cookie\", duration = \"1h\" }\n",
        );
        let e = errors(&text);
        assert_eq!(fields(&e), ["target_group[0].stickiness"], "{e:?}");
        assert!(e[0].message.contains("not supported yet"), "{}", e[0]);
    }

    #[test]
    fn l4_listeners_forward_to_one_compatible_group() {
        let text = GOOD
            .replace("[[listener]]", "[[target_group]]\nname = \"dns\"\nprotocol = \"udp\"\nport = 53\n\n[[listener]]")
            .replace(
                "{ forward = \"web\" }",
                "{ forward = [{ target_group = \"web\", weight = 50 }, { target_group = \"dns\", weight = 50 }] }",
            );
        let e = errors(&text);
        assert_eq!(fields(&e), ["listener[0].default_action.forward"], "{e:?}");
        assert!(e[0].message.contains("exactly one"), "{}", e[0]);

        let e = errors(&GOOD.replace("protocol = \"tcp\"\ndefault", "protocol = \"udp\"\ndefault"));
        assert_eq!(fields(&e), ["listener[0].default_action.forward"], "{e:?}");
        assert!(e[0].message.contains("udp or tcp_udp"), "{}", e[0]);

        let text = GOOD.replace(
            "default_action = { forward = \"web\" }",
            "default_action = { fixed_response = { status_code = 503 } }",
        );
        assert_eq!(fields(&errors(&text)), ["listener[0].default_action"]);
    }

    #[test]
    fn targets_need_a_port_and_are_unique() {
        let text = GOOD.replace("port = 8080\n", "").replace(
            "{ address = \"198.18.0.22\", weight = 2 }",
            "{ address = \"198.18.0.21\", port = 1 }, { address = \"198.18.0.21\", port = 1 }",
        );
        let e = errors(&text);
        assert_eq!(
            fields(&e),
            [
                "target_group[0].targets[0].address",
                "target_group[0].targets[2].address"
            ],
            "{e:?}"
        );
        assert!(e[0].message.contains("no port"), "{}", e[0]);
        assert!(e[1].message.contains("targets[1]"), "{}", e[1]);
    }

    #[test]
    fn mixed_families_are_refused() {
        let text = GOOD.replace("198.18.0.21", "fd00:198:18::21");
        let e = errors(&text);
        assert_eq!(fields(&e), ["target_group[0].targets[0].address"], "{e:?}");
        assert!(e[0].message.contains("family"), "{}", e[0]);
    }

    #[test]
    fn addresses_must_be_unicast_and_snat_one_per_family() {
        let text = GOOD
            .replace(
                "snat_addresses = [\"198.18.0.1\"]",
                "snat_addresses = [\"198.18.0.1\", \"198.18.0.2\", \"ff02::1\"]",
            )
            .replace("address = \"198.18.1.100\"", "address = \"0.0.0.0\"");
        let e = errors(&text);
        assert_eq!(
            fields(&e),
            [
                "agent.snat_addresses[1]",
                "agent.snat_addresses[2]",
                "listener[0].address"
            ],
            "{e:?}"
        );
    }

    #[test]
    fn health_checks_are_range_checked() {
        let text = GOOD.replace(
            "weight = 2 }]\n",
            "weight = 2 }]\n[target_group.health_check]\nprotocol = \"http\"\npath = \"health\"\n\
             matcher = \"200,99\"\ninterval = \"5s\"\ntimeout = \"6s\"\nhealthy_threshold = 1\n\
             unhealthy_threshold = 11\nport = 0\n",
        );
        let e = errors(&text);
        assert_eq!(
            fields(&e),
            [
                "target_group[0].health_check.path",
                "target_group[0].health_check.matcher",
                "target_group[0].health_check.timeout",
                "target_group[0].health_check.healthy_threshold",
                "target_group[0].health_check.unhealthy_threshold",
                "target_group[0].health_check.port",
            ],
            "{e:?}"
        );
        assert_eq!(e[0].line, 12, "{}", e[0]);
        assert!(
            e[2].message.contains("shorter than the interval"),
            "{}",
            e[2]
        );
    }

    #[test]
    fn stickiness_takes_only_its_own_fields() {
        let sticky =
            |s: &str| GOOD.replace("port = 8080\n", &format!("port = 8080\nstickiness = {s}\n"));
        let c = Config::parse(&sticky("{ type = \"source_ip\" }"), "t.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.target_groups[0].stickiness, Some(Stickiness::SourceIp));
        for (bad, says) in [
            (
                "{ type = \"source_ip\", duration = \"1h\" }",
                "takes no `duration`",
            ),
            ("{ type = \"lb_cookie\" }", "needs a `duration`"),
            (
                "{ type = \"app_cookie\", duration = \"1h\" }",
                "needs `cookie_name`",
            ),
            (
                "{ type = \"magic\" }",
                "`source_ip`, `lb_cookie`, `app_cookie`",
            ),
            ("{ type = \"lb_cookie\", duration = 60 }", "\"60s\""),
        ] {
            let e = errors(&sticky(bad));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(
                e[0].field.starts_with("target_group[0].stickiness"),
                "{}",
                e[0]
            );
            assert!(e[0].message.contains(says), "{bad}: {}", e[0]);
            assert_eq!(e[0].line, 9, "{}", e[0]);
        }
    }

    #[test]
    fn sub_table_errors_name_the_entry() {
        // `[target_group.health_check]` belongs to the last `[[target_group]]` above it.
        let text = GOOD.replace(
            "weight = 2 }]\n",
            "weight = 2 }]\n[target_group.health_check]\nintervl = \"5s\"\n",
        );
        let e = errors(&text);
        assert_eq!(
            (e[0].field.as_str(), e[0].line, e[0].column),
            ("target_group[0].health_check.intervl", 11, 1),
            "{}",
            e[0]
        );
    }

    #[test]
    fn unreadable_file_has_no_position() {
        let e = Config::load(Path::new("/nonexistent/lb.toml")).expect_err("no such file");
        assert_eq!(e.0.len(), 1);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/lb.toml: (file): cannot read"),
            "{e}"
        );
    }
}
