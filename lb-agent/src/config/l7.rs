//! The L7 settings of listeners and target groups (`http`, `https` and `tls` listeners, `http`
//! and `https` groups) and the access log, with their defaults and whole-config checks.
//!
//! Listener and group fields are `Option`s in the model so that a check can tell a setting
//! written on an L4 listener or group (refused: the data plane would ignore it) from one left
//! out; the proxy reads them resolved, through `Listener::l7` and `TargetGroup::l7`.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{
    Config, Forward, GroupProtocol, Listener, ListenerProtocol, Mode, Stickiness, TargetGroup,
    validate::Problems,
};

/// The TLS security policy of https and tls listeners that name none (AWS's default for new
/// HTTPS listeners).
pub const DEFAULT_SSL_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";
/// Default idle timeout of client connections (AWS ALB's).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a client has to send a whole request head.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connections one listener holds at once.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default bound on a request head (request line and headers), in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 32 * 1024;
/// Default HTTP/2 streams a client may have open at once on one connection.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Default HTTP/2 streams a client may reset per connection in any 10 seconds.
pub const DEFAULT_HTTP2_MAX_RESET_STREAMS: u32 = 200;
/// Default request-id header.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-amzn-trace-id";
/// Default time a target has to send its response head.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// HTTP version spoken to a group's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolVersion {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 (cleartext h2c to `http` groups, ALPN h2 to `https` groups).
    Http2,
    /// gRPC: HTTP/2 with trailers passed through.
    Grpc,
}

impl ProtocolVersion {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
        }
    }
}

/// How a group picks a target for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// In turn, by weight (the default).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in progress.
    LeastOutstandingRequests,
}

impl Algorithm {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastOutstandingRequests => "least_outstanding_requests",
        }
    }
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// Space-separated fields in a fixed order (README, "Access log").
    Text,
}

/// `[agent.access_log]`: one line per L7 request (and per `tls` listener connection).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file to append to, or `"-"` for standard error.
    pub path: PathBuf,
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: AccessLogFormat,
}

impl AccessLogConfig {
    /// Whether the log goes to standard error.
    pub fn to_stderr(&self) -> bool {
        self.path.as_os_str() == "-"
    }
}

/// A listener's L7 settings with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerL7 {
    /// The TLS security policy's name (`DEFAULT_SSL_POLICY` when none is set).
    pub ssl_policy: String,
    pub idle_timeout: Duration,
    pub request_header_timeout: Duration,
    pub max_connections: u32,
    pub max_header_bytes: u32,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_reset_streams: u32,
    /// Lower case.
    pub request_id_header: String,
}

/// A group's L7 settings with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupL7 {
    pub protocol_version: ProtocolVersion,
    pub algorithm: Algorithm,
    pub ca_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub response_timeout: Duration,
}

impl Listener {
    /// Handled by the agent's proxy (http, https, tls).
    pub fn is_l7(&self) -> bool {
        !self.protocol.is_l4()
    }

    /// The L7 settings, defaults filled in.
    pub fn l7(&self) -> ListenerL7 {
        ListenerL7 {
            ssl_policy: self
                .ssl_policy
                .clone()
                .unwrap_or_else(|| DEFAULT_SSL_POLICY.to_owned()),
            idle_timeout: self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            request_header_timeout: self
                .request_header_timeout
                .unwrap_or(DEFAULT_REQUEST_HEADER_TIMEOUT),
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_header_bytes: self.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            http2_max_concurrent_streams: self
                .http2_max_concurrent_streams
                .unwrap_or(DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS),
            http2_max_reset_streams: self
                .http2_max_reset_streams
                .unwrap_or(DEFAULT_HTTP2_MAX_RESET_STREAMS),
            request_id_header: self
                .request_id_header
                .as_deref()
                .unwrap_or(DEFAULT_REQUEST_ID_HEADER)
                .to_ascii_lowercase(),
        }
    }

    /// The L7 fields written on this listener, by name (for refusing them on L4 ones).
    fn l7_fields_set(&self) -> Vec<&'static str> {
        [
            ("ssl_policy", self.ssl_policy.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            (
                "request_header_timeout",
                self.request_header_timeout.is_some(),
            ),
            ("max_connections", self.max_connections.is_some()),
            ("max_header_bytes", self.max_header_bytes.is_some()),
            (
                "http2_max_concurrent_streams",
                self.http2_max_concurrent_streams.is_some(),
            ),
            (
                "http2_max_reset_streams",
                self.http2_max_reset_streams.is_some(),
            ),
            ("request_id_header", self.request_id_header.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

impl TargetGroup {
    /// The L7 settings, defaults filled in.
    pub fn l7(&self) -> GroupL7 {
        GroupL7 {
            protocol_version: self.protocol_version.unwrap_or_default(),
            algorithm: self.load_balancing_algorithm.unwrap_or_default(),
            ca_file: self.ca_file.clone(),
            tls_server_name: self.tls_server_name.clone(),
            response_timeout: self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
        }
    }

    fn l7_fields_set(&self) -> Vec<&'static str> {
        [
            ("protocol_version", self.protocol_version.is_some()),
            (
                "load_balancing_algorithm",
                self.load_balancing_algorithm.is_some(),
            ),
            ("ca_file", self.ca_file.is_some()),
            ("tls_server_name", self.tls_server_name.is_some()),
            ("response_timeout", self.response_timeout.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

fn check_range(p: &mut Problems, field: String, value: Option<u32>, lo: u32, hi: u32) {
    if let Some(v) = value
        && !(lo..=hi).contains(&v)
    {
        p.add(field, format!("{v} is out of range {lo}..={hi}"));
    }
}

fn check_duration(
    p: &mut Problems,
    field: String,
    value: Option<Duration>,
    lo: Duration,
    hi: Duration,
) {
    if let Some(v) = value {
        super::validate::check_duration(p, field, v, lo, hi);
    }
}

impl Config {
    /// The L7 checks of one listener (`at` is its dotted path).
    pub(super) fn validate_l7_listener(&self, p: &mut Problems, at: &str, l: &Listener) {
        if l.protocol.is_l4() {
            if l.default_action.group_stickiness.is_some() {
                p.add(
                    format!("{at}.default_action.group_stickiness"),
                    "group_stickiness is for weighted forwards of http and https listeners",
                );
            }
            for field in l.l7_fields_set() {
                p.add(
                    format!("{at}.{field}"),
                    format!(
                        "`{field}` is for http, https and tls listeners; a {} listener has no use for it",
                        l.protocol.as_str()
                    ),
                );
            }
            return;
        }
        if l.mode == Mode::Dsr {
            p.add(
                format!("{at}.mode"),
                "a proxied listener (http, https, tls) opens its own connections to targets: \
                 `mode` is for L4 listeners",
            );
        }
        let tls = matches!(l.protocol, ListenerProtocol::Https | ListenerProtocol::Tls);
        if tls && l.certificates.is_empty() {
            p.add(
                format!("{at}.certificates"),
                format!(
                    "a {} listener needs at least one certificate: certificates = [{{ cert = \"a.pem\", key = \"a.key\" }}] (the first is the default)",
                    l.protocol.as_str()
                ),
            );
        }
        if !tls && l.ssl_policy.is_some() {
            p.add(
                format!("{at}.ssl_policy"),
                "an http listener has no TLS: ssl_policy is for https and tls listeners",
            );
        }
        check_duration(
            p,
            format!("{at}.idle_timeout"),
            l.idle_timeout,
            Duration::from_secs(1),
            Duration::from_secs(4000),
        );
        check_duration(
            p,
            format!("{at}.request_header_timeout"),
            l.request_header_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        check_range(
            p,
            format!("{at}.max_connections"),
            l.max_connections,
            1,
            1_000_000,
        );
        check_range(
            p,
            format!("{at}.max_header_bytes"),
            l.max_header_bytes,
            8192,
            1 << 20,
        );
        check_range(
            p,
            format!("{at}.http2_max_concurrent_streams"),
            l.http2_max_concurrent_streams,
            1,
            10_000,
        );
        check_range(
            p,
            format!("{at}.http2_max_reset_streams"),
            l.http2_max_reset_streams,
            1,
            100_000,
        );
        if let Some(name) = &l.request_id_header
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)))
        {
            p.add(
                format!("{at}.request_id_header"),
                format!("`{name}` is no header name"),
            );
        }
        let mut actions = vec![(format!("{at}.default_action"), &l.default_action)];
        actions.extend(
            l.rules
                .iter()
                .enumerate()
                .map(|(ri, r)| (format!("{at}.rule[{ri}].action"), &r.action)),
        );
        if l.protocol == ListenerProtocol::Tls {
            self.validate_tls_listener(p, at, l);
            return;
        }
        for (path, action) in &actions {
            for (group, gpath) in action.forwards(path) {
                let Some(g) = self.group(group) else { continue };
                if !l.protocol.serves(g.protocol) {
                    p.add(
                        gpath,
                        format!(
                            "a {} listener forwards HTTP requests: `{}` is a {} group (it needs an http or https group)",
                            l.protocol.as_str(),
                            g.name,
                            g.protocol.as_str()
                        ),
                    );
                }
            }
        }
    }

    /// A `tls` listener: TLS ends here and the bytes go on to one TCP group.
    fn validate_tls_listener(&self, p: &mut Problems, at: &str, l: &Listener) {
        if !l.rules.is_empty() {
            p.add(
                format!("{at}.rule"),
                "a tls listener forwards bytes, not requests: rules are for http and https listeners",
            );
        }
        let action = &l.default_action;
        if action.redirect.is_some() || action.fixed_response.is_some() {
            p.add(
                format!("{at}.default_action"),
                "redirect and fixed_response are HTTP answers; a tls listener forwards to a tcp group",
            );
        }
        let group = match &action.forward {
            Some(Forward::Group(g)) => g,
            Some(Forward::Weighted(list)) if list.len() == 1 => &list[0].target_group,
            Some(Forward::Weighted(_)) => {
                p.add(
                    format!("{at}.default_action.forward"),
                    "a tls listener forwards to exactly one target group: write forward = \"group\"",
                );
                return;
            }
            None => return,
        };
        if let Some(g) = self.group(group)
            && g.protocol != GroupProtocol::Tcp
        {
            p.add(
                format!("{at}.default_action.forward"),
                format!(
                    "a tls listener sends the decrypted bytes to a tcp group; `{}` is a {} group",
                    g.name,
                    g.protocol.as_str()
                ),
            );
        }
    }

    /// The L7 checks of one group (`at` is its dotted path).
    pub(super) fn validate_l7_group(&self, p: &mut Problems, at: &str, g: &TargetGroup) {
        if g.protocol.is_l4() {
            for field in g.l7_fields_set() {
                p.add(
                    format!("{at}.{field}"),
                    format!(
                        "`{field}` is for http and https groups; a {} group has no use for it",
                        g.protocol.as_str()
                    ),
                );
            }
            return;
        }
        if g.protocol == GroupProtocol::Http {
            for (field, set) in [
                ("ca_file", g.ca_file.is_some()),
                ("tls_server_name", g.tls_server_name.is_some()),
            ] {
                if set {
                    p.add(
                        format!("{at}.{field}"),
                        "an http group speaks plain HTTP to its targets: this is for https groups",
                    );
                }
            }
        }
        if g.stickiness == Some(Stickiness::SourceIp) {
            p.add(
                format!("{at}.stickiness"),
                "source_ip stickiness is for L4 groups; an http or https group takes \
                 { type = \"lb_cookie\", duration = \"1h\" } or { type = \"app_cookie\", ... }",
            );
        }
        if let Some(Stickiness::LbCookie { duration } | Stickiness::AppCookie { duration, .. }) =
            &g.stickiness
        {
            super::validate::check_duration(
                p,
                format!("{at}.stickiness.duration"),
                *duration,
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            );
        }
        if let Some(Stickiness::AppCookie { cookie_name, .. }) = &g.stickiness
            && (cookie_name.is_empty()
                || !cookie_name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)))
        {
            p.add(
                format!("{at}.stickiness.cookie_name"),
                format!("`{cookie_name}` is no cookie name"),
            );
        }
        check_duration(
            p,
            format!("{at}.response_timeout"),
            g.response_timeout,
            Duration::from_secs(1),
            Duration::from_secs(4000),
        );
    }

    /// The access log's checks.
    pub(super) fn validate_access_log(&self, p: &mut Problems) {
        if let Some(log) = &self.agent.access_log
            && log.path.as_os_str().is_empty()
        {
            p.add(
                "agent.access_log.path",
                "empty: give a file, or \"-\" for standard error",
            );
        }
    }
}
