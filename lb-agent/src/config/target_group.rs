//! `[[target_group]]`: named sets of targets, with their protocol, stickiness and health check.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{Algorithm, HealthCheck, ProtocolVersion, duration};

/// A target group's protocol.
/// Heaviest weight a target may have.
pub const MAX_WEIGHT: u32 = 1000;

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
        deserialize_with = "duration::deserialize"
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
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub slow_start: Duration,
    /// HTTP version to targets: `http1` (default), `http2`, `grpc` (http and https groups).
    pub protocol_version: Option<ProtocolVersion>,
    /// `round_robin` (default) or `least_outstanding_requests` (http and https groups).
    pub load_balancing_algorithm: Option<Algorithm>,
    /// https groups: verify targets' certificates against these CA certificates (PEM); none:
    /// not verified (as AWS ALB).
    pub ca_file: Option<PathBuf>,
    /// https groups: the name sent as SNI and verified; none: the target's address.
    pub tls_server_name: Option<String>,
    /// A target must send its response head within this, else the client gets 504
    /// (http and https groups; 1s..=4000s, default 60s).
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub response_timeout: Option<Duration>,
}

fn default_deregistration_delay() -> Duration {
    Duration::from_secs(300)
}

fn yes() -> bool {
    true
}

impl TargetGroup {
    /// The check the agent runs on this group's targets, if any: the configured one unless
    /// disabled, else the group's default (`HealthCheck::default_for`), either as it runs in
    /// the group's protocol version (gRPC groups: AWS's gRPC path and matcher where unset).
    pub fn effective_health_check(&self) -> Option<HealthCheck> {
        let version = self.l7().protocol_version;
        match &self.health_check {
            Some(hc) if hc.enabled => Some(hc.clone().for_version(version)),
            Some(_) => None,
            None => HealthCheck::default_for(self.protocol, version),
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
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
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
    /// Relative share of new flows, 0..=`MAX_WEIGHT` (default 1; 0: none).
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
