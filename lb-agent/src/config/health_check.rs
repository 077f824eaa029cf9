//! A target group's health check: how targets are checked, with AWS NLB's defaults (and
//! AWS ALB's gRPC ones for gRPC groups).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    GroupProtocol, ProtocolVersion, duration,
    validate::{Problems, check_health_check},
};

/// The path a gRPC group's check requests where the check names none (AWS ALB's).
pub const GRPC_DEFAULT_PATH: &str = "/AWS.ALB/healthcheck";
/// The `grpc-status` codes a gRPC group's check accepts where the check names none (AWS ALB's):
/// 12, UNIMPLEMENTED, which any gRPC server answers for a method it lacks, so a target that
/// speaks gRPC at all is alive.
pub const GRPC_DEFAULT_MATCHER: &str = "12";

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
    /// HTTP(S) method: `GET` (default) or `HEAD`; gRPC groups' checks always `POST`.
    #[serde(default)]
    pub method: HealthMethod,
    /// HTTP(S) `Host` header; none: the target's address and port.
    pub host: Option<String>,
    /// HTTP(S) status codes that count as healthy, like `"200"`, `"200-299"`, `"200,301"`
    /// (default `200-399`); in gRPC groups, `grpc-status` codes 0..=99 (default `12`).
    #[serde(default = "default_matcher")]
    pub matcher: String,
    /// Time between checks, 1s..=300s (default 30 s).
    #[serde(
        default = "default_interval",
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub interval: Duration,
    /// How long a check may take, 100ms..=120s and less than `interval` (default 10 s).
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
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
    /// What is wrong with it on a group whose targets speak `version`, as (field, message);
    /// empty when it can be run.
    pub fn problems(&self, version: ProtocolVersion) -> Vec<(String, String)> {
        let mut p = Problems::default();
        check_health_check(&mut p, "health_check", self, version);
        p.into_list()
    }

    /// The check as it runs on a group whose targets speak `version`. On gRPC groups a path
    /// and matcher at their defaults become AWS's gRPC ones. serde fills the defaults in, so a
    /// field left out and one written as `/` or `200-399` are the same here: both mean "unset"
    /// (neither is of use to a gRPC target: `/` is no gRPC method, 200-399 no gRPC codes).
    pub fn for_version(mut self, version: ProtocolVersion) -> Self {
        if version == ProtocolVersion::Grpc {
            if self.path == default_path() {
                self.path = GRPC_DEFAULT_PATH.to_owned();
            }
            if self.matcher == default_matcher() {
                self.matcher = GRPC_DEFAULT_MATCHER.to_owned();
            }
        }
        self
    }

    /// The check a group runs when its config names none: AWS ALB's request of `/` in the
    /// group's own protocol for http and https groups (with the gRPC path and matcher for gRPC
    /// groups), NLB's TCP connect for other TCP groups, and none for `udp` groups (a UDP port
    /// cannot be checked by connecting).
    pub fn default_for(protocol: GroupProtocol, version: ProtocolVersion) -> Option<Self> {
        let protocol = match protocol {
            GroupProtocol::Udp => return None,
            GroupProtocol::Http => HealthProtocol::Http,
            GroupProtocol::Https => HealthProtocol::Https,
            GroupProtocol::Tcp | GroupProtocol::TcpUdp => HealthProtocol::Tcp,
        };
        Some(
            Self {
                protocol,
                ..Self::default()
            }
            .for_version(version),
        )
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

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{GroupProtocol, HealthCheck, HealthMethod, HealthProtocol, ProtocolVersion};

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
            hc.problems(ProtocolVersion::Http1).len() == 1,
            "timeout 10s >= interval: {:?}",
            hc.problems(ProtocolVersion::Http1)
        );
        let bad = HealthCheck {
            path: "/a b\r\nX: y".into(),
            healthy_threshold: 1,
            ..HealthCheck::default()
        };
        let fields: Vec<String> = bad
            .problems(ProtocolVersion::Http1)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            ["health_check.healthy_threshold", "health_check.path"]
        );
        assert!(
            HealthCheck::default()
                .problems(ProtocolVersion::Http1)
                .is_empty()
        );
    }

    #[test]
    fn a_grpc_group_checks_aws_grpc_path_and_code_unless_the_check_names_its_own() {
        let default = HealthCheck::default_for(GroupProtocol::Http, ProtocolVersion::Grpc).unwrap();
        assert_eq!(default.protocol, HealthProtocol::Http);
        assert_eq!(default.path, "/AWS.ALB/healthcheck");
        assert_eq!(default.matcher, "12");
        assert!(default.problems(ProtocolVersion::Grpc).is_empty());
        let own = HealthCheck {
            path: "/pkg.Health/Check".into(),
            matcher: "0".into(),
            ..HealthCheck::default()
        }
        .for_version(ProtocolVersion::Grpc);
        assert_eq!(
            (own.path.as_str(), own.matcher.as_str()),
            ("/pkg.Health/Check", "0")
        );
        // gRPC codes are 0..=99; HTTP ones 100..=599.
        assert!(own.problems(ProtocolVersion::Grpc).is_empty());
        assert_eq!(own.problems(ProtocolVersion::Http1).len(), 1);
        let http = HealthCheck::default_for(GroupProtocol::Https, ProtocolVersion::Http2).unwrap();
        assert_eq!(
            (http.path.as_str(), http.matcher.as_str()),
            ("/", "200-399")
        );
        assert_eq!(http.protocol, HealthProtocol::Https);
        assert_eq!(
            HealthCheck::default_for(GroupProtocol::Udp, ProtocolVersion::Http1),
            None
        );
    }
}
