//! `[[listener]]`: what the node accepts traffic on, and its actions and rules.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

use super::{GroupProtocol, duration};

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
    /// TLS terminated by the agent's proxy, bytes forwarded to a tcp group.
    Tls,
    /// HTTP (L7, the agent's proxy).
    Http,
    /// HTTPS (L7, TLS terminated by the agent's proxy).
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
    pub(super) fn transports(self) -> (bool, bool) {
        match self {
            Self::Udp => (false, true),
            Self::TcpUdp => (true, true),
            _ => (true, false),
        }
    }

    /// Whether an L4 listener of this protocol can forward to a group of `group`'s.
    pub(super) fn serves(self, group: GroupProtocol) -> bool {
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// What a listener or rule does with a request: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Send it to target groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    /// Answer with an HTTP redirect (L7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer with a fixed HTTP response (L7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_response: Option<FixedResponse>,
    /// A weighted forward keeps a client on the group chosen for it this long (a cookie;
    /// AWS's target-group stickiness). L7, forward only.
    #[serde(
        default,
        deserialize_with = "duration::deserialize_optional",
        serialize_with = "duration::serialize_optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_stickiness: Option<Duration>,
}

/// `forward = "group"` or `forward = [{ target_group = "a", weight = 90 }, ...]`.
// Written back in the same two shapes (the API shows rules as the file writes them); read by
// hand below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroup {
    /// The group's name.
    pub target_group: String,
    /// Relative share of requests, 0..=999 as AWS (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A redirect's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectProtocol {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

/// `redirect = { protocol = "https", port = 443, status_code = 301 }`: parts left out keep the
/// request's own (AWS's `#{host}`, `#{path}`... placeholders are allowed in the strings).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Scheme of the new URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<RedirectProtocol>,
    /// Host of the new URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port of the new URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path of the new URL; starts with `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query of the new URL, without the `?`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// 301, 302, 303, 307 or 308 (default 301).
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    301
}

/// `fixed_response = { status_code = 503, content_type = "text/plain", message_body = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    /// HTTP status, 200..=599.
    pub status_code: u16,
    /// `Content-Type` of the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_body: Option<String>,
}

impl Action {
    /// The groups this action forwards to, with the dotted path of each name.
    pub(super) fn forwards(&self, path: &str) -> Vec<(&str, String)> {
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conditions {
    /// Host header patterns (`*` and `?` wildcards); any may match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<String>,
    /// Path patterns (`*` and `?` wildcards); any may match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    /// Request methods; any may match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_request_method: Vec<String>,
    /// Client address blocks in CIDR notation; any may match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ip: Vec<String>,
    /// Header name → value patterns; for each header, any value may match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub http_header: BTreeMap<String, Vec<String>>,
    /// Query key → value pattern.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query_string: BTreeMap<String, String>,
}

impl Conditions {
    pub(super) fn is_empty(&self) -> bool {
        self.host.is_empty()
            && self.path.is_empty()
            && self.http_request_method.is_empty()
            && self.source_ip.is_empty()
            && self.http_header.is_empty()
            && self.query_string.is_empty()
    }
}

/// A listener rule (L7): `[[listener.rule]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// TLS security policy (https and tls listeners; default
    /// `ELBSecurityPolicy-TLS13-1-2-2021-06`).
    pub ssl_policy: Option<String>,
    /// A client connection with no request in progress is closed after this long (L7;
    /// 1s..=4000s, default 60s).
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub idle_timeout: Option<Duration>,
    /// A client must send a whole request head within this (L7; 100ms..=300s, default 10s).
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub request_header_timeout: Option<Duration>,
    /// Client connections held at once; more are closed on accept (L7; default 10000).
    pub max_connections: Option<u32>,
    /// Largest request head, in bytes; a larger one gets 431 (L7; 8192..=1048576, default 32768).
    pub max_header_bytes: Option<u32>,
    /// HTTP/2 streams a client may have open on one connection (default 128).
    pub http2_max_concurrent_streams: Option<u32>,
    /// HTTP/2 streams a client may reset on one connection in any 10 s before the connection
    /// is closed (rapid-reset floods; default 200).
    pub http2_max_reset_streams: Option<u32>,
    /// The request-id header added to requests that lack one (default `X-Amzn-Trace-Id`).
    pub request_id_header: Option<String>,
}

impl Listener {
    /// Every group its actions forward to (default action and rules), in order, repeats
    /// included.
    pub fn forwarded_groups(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.default_action)
            .chain(self.rules.iter().map(|r| &r.action))
            .flat_map(|a| match &a.forward {
                Some(Forward::Group(g)) => vec![g.as_str()],
                Some(Forward::Weighted(list)) => {
                    list.iter().map(|w| w.target_group.as_str()).collect()
                }
                None => Vec::new(),
            })
    }

    /// The one group the default action forwards to, if it forwards to exactly one.
    pub fn forward_group(&self) -> Option<&str> {
        match &self.default_action.forward {
            Some(Forward::Group(g)) => Some(g),
            Some(Forward::Weighted(list)) if list.len() == 1 => Some(&list[0].target_group),
            _ => None,
        }
    }
}
