//! The config file: listeners, target groups and targets in TOML (see shared/DESIGN.md).
//!
//! Loading has two passes. Serde turns the text into the typed model (unknown fields and wrong
//! types fail there, with toml's own position). Then `validate` checks the model as a whole and
//! reports every problem at once; each error names the dotted path of the offending field, and
//! the path is looked up in a span-keeping parse of the same text to give its line and column.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::maglev::is_prime;

/// The whole config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<TargetGroup>,
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
    /// The control socket.
    pub control_socket: PathBuf,
    /// Entries per Maglev table: prime, 251..=1000003. About 100 × the largest group keeps
    /// each target's share within 1%.
    pub maglev_table_size: u32,
    /// Source ports for full NAT, inclusive. Keep it below the kernel's ephemeral range
    /// (32768-60999 by default) so the node's own connections never meet a NAT flow's port.
    pub snat_port_range: (u16, u16),
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interface: None,
            snat_addresses: Vec::new(),
            control_socket: PathBuf::from("/run/lb-agent.sock"),
            maglev_table_size: lb_common::DEFAULT_MAGLEV_SIZE,
            snat_port_range: (1024, 32767),
        }
    }
}

/// A target group's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    Tcp,
    Udp,
    TcpUdp,
    Http,
    Https,
}

/// A named set of targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    pub name: String,
    pub protocol: GroupProtocol,
    /// Port of targets that name none.
    pub port: Option<u16>,
    /// How long a deregistered target keeps its established flows (default 300 s, as AWS).
    #[serde(
        default = "default_deregistration_delay",
        deserialize_with = "duration"
    )]
    pub deregistration_delay: Duration,
    pub stickiness: Option<Stickiness>,
    #[serde(default)]
    pub targets: Vec<Target>,
    pub health_check: Option<HealthCheck>,
}

fn default_deregistration_delay() -> Duration {
    Duration::from_secs(300)
}

/// Stickiness: what keeps a client on one target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stickiness {
    /// L4: every flow of a client address goes to one target.
    SourceIp,
    /// L7: a cookie the load balancer sets.
    LbCookie {
        #[serde(deserialize_with = "duration")]
        duration: Duration,
    },
    /// L7: the application's own cookie.
    AppCookie {
        cookie_name: String,
        #[serde(deserialize_with = "duration")]
        duration: Duration,
    },
}

/// One target of a group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub address: IpAddr,
    pub port: Option<u16>,
    /// Relative share of new flows, 0..=1000 (0: none).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthProtocol {
    #[default]
    Tcp,
    Http,
    Https,
}

/// A group's health check (checked for sense here; run by the health module).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub protocol: HealthProtocol,
    /// Default: the traffic port.
    pub port: Option<u16>,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_matcher")]
    pub matcher: String,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
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
    Tcp,
    Udp,
    TcpUdp,
    Tls,
    Http,
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
}

/// L4 forwarding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Full NAT.
    #[default]
    Nat,
    /// Direct server return.
    Dsr,
}

/// A certificate and its key (TLS and HTTPS listeners).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a listener or rule does with a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub forward: Option<Forward>,
    pub redirect: Option<toml::Table>,
    pub fixed_response: Option<toml::Table>,
}

/// `forward = "group"` or `forward = [{ target_group = "a", weight = 90 }, ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Forward {
    Group(String),
    Weighted(Vec<WeightedGroup>),
}

/// One group of a weighted forward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroup {
    pub target_group: String,
    #[serde(default = "one")]
    pub weight: u32,
}

impl Action {
    /// The groups this action forwards to, with the path of each name.
    fn forwards(&self, path: &str) -> Vec<(String, String)> {
        match &self.forward {
            Some(Forward::Group(g)) => vec![(g.clone(), format!("{path}.forward"))],
            Some(Forward::Weighted(list)) => list
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    (
                        w.target_group.clone(),
                        format!("{path}.forward[{i}].target_group"),
                    )
                })
                .collect(),
            None => Vec::new(),
        }
    }
}

/// A listener rule (L7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub priority: u32,
    #[serde(default)]
    pub conditions: BTreeMap<String, toml::Value>,
    pub action: Action,
}

/// An address, port and protocol the load balancer accepts traffic on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: ListenerProtocol,
    #[serde(default)]
    pub mode: Mode,
    pub default_action: Action,
    #[serde(default)]
    pub certificates: Vec<Certificate>,
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

/// Parses "500ms", "30s", "5m", "1h", "1h30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration like \"30s\", \"500ms\", \"5m\" or \"1h30m\""
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "" => return Err(format!("`{text}` has no unit: write e.g. \"{n}s\"")),
            u => return Err(format!("`{text}`: unknown unit `{u}` (ms, s, m, h)")),
        };
        total += part;
        rest = &rest[unit..];
    }
    Ok(total)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"30s\", \"500ms\", \"5m\" or \"1h\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a bare number ({v}) has no unit: write e.g. \"{v}s\""
            )))
        }
    }
    d.deserialize_any(Visitor)
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// Dotted path, e.g. `target_group[1].targets[0].weight`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Every problem found in a config file.
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

/// Byte offset → 1-based (line, column).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
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

/// The span of the deepest item on `path` that the document has.
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

/// The dotted path of the innermost item whose span holds `offset`.
fn path_at(doc: &toml_edit::ImDocument<&str>, offset: usize) -> String {
    fn walk(item: &toml_edit::Item, offset: usize, path: &mut String) {
        let children: Vec<(String, &toml_edit::Item)> = match item {
            toml_edit::Item::Table(t) => t.iter().map(|(k, v)| (format!(".{k}"), v)).collect(),
            toml_edit::Item::ArrayOfTables(a) => a
                .iter()
                .enumerate()
                .map(|(i, _)| (format!("[{i}]"), item.get(i).unwrap_or(item)))
                .collect(),
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t
                .iter()
                .map(|(k, _)| (format!(".{k}"), item.get(k).unwrap_or(item)))
                .collect(),
            toml_edit::Item::Value(toml_edit::Value::Array(a)) => (0..a.len())
                .map(|i| (format!("[{i}]"), item.get(i).unwrap_or(item)))
                .collect(),
            _ => Vec::new(),
        };
        for (name, child) in children {
            let inside = match (child, child.span()) {
                (_, Some(s)) => s.contains(&offset),
                // Tables of an array of tables carry no span of their own here: descend.
                (toml_edit::Item::Table(_), None) => true,
                _ => false,
            };
            if inside && !std::ptr::eq(child, item) {
                path.push_str(&name);
                walk(child, offset, path);
                return;
            }
        }
    }
    let mut path = String::new();
    walk(doc.as_item(), offset, &mut path);
    path.trim_start_matches('.').to_owned()
}

/// Collects semantic errors by path.
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push((field.into(), message.into()));
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
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
        p.add(field, format!("`{matcher}` is no status matcher: write codes 100-599 like \"200\", \"200-299\" or \"200,301\""));
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
        let config: Config = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| path_at(&doc, s.start))
                .filter(|p| !p.is_empty());
            ConfigErrors(vec![error_at(
                e.span(),
                field.unwrap_or_else(|| "(top level)".into()),
                e.message().trim().to_owned(),
            )])
        })?;
        let mut problems = Problems(Vec::new());
        config.validate(&mut problems);
        if problems.0.is_empty() {
            return Ok(config);
        }
        Err(ConfigErrors(
            problems
                .0
                .into_iter()
                .map(|(field, message)| error_at(span_of(&doc, &field), field, message))
                .collect(),
        ))
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|g| g.name == name)
    }

    fn validate(&self, p: &mut Problems) {
        let agent = &self.agent;
        if !is_prime(agent.maglev_table_size)
            || !(251..=1_000_003).contains(&agent.maglev_table_size)
        {
            p.add(
                "agent.maglev_table_size",
                format!(
                    "{} must be a prime in 251..=1000003 (e.g. 65537)",
                    agent.maglev_table_size
                ),
            );
        }
        let (lo, hi) = agent.snat_port_range;
        if lo < 1024 || lo >= hi {
            p.add(
                "agent.snat_port_range",
                format!("[{lo}, {hi}] must be [min, max] with 1024 <= min < max"),
            );
        }
        let mut families = HashSet::new();
        for (i, ip) in agent.snat_addresses.iter().enumerate() {
            check_unicast(
                p,
                format!("agent.snat_addresses[{i}]"),
                *ip,
                "a SNAT address",
            );
            if !families.insert(ip.is_ipv4()) {
                p.add(
                    format!("agent.snat_addresses[{i}]"),
                    "at most one IPv4 and one IPv6 SNAT address",
                );
            }
        }

        let mut names = HashSet::new();
        for (gi, g) in self.target_groups.iter().enumerate() {
            let at = format!("target_group[{gi}]");
            if !valid_name(&g.name) {
                p.add(
                    format!("{at}.name"),
                    format!("`{}`: names are 1-64 of [A-Za-z0-9_-]", g.name),
                );
            }
            if !names.insert(g.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("a target group named `{}` already exists", g.name),
                );
            }
            if g.port == Some(0) {
                p.add(format!("{at}.port"), "port 0 is not a port");
            }
            let mut seen = HashSet::new();
            for (ti, t) in g.targets.iter().enumerate() {
                let tat = format!("{at}.targets[{ti}]");
                check_unicast(p, format!("{tat}.address"), t.address, "a target");
                if t.weight > 1000 {
                    p.add(
                        format!("{tat}.weight"),
                        format!("{} is out of range 0..=1000", t.weight),
                    );
                }
                if t.port == Some(0) {
                    p.add(format!("{tat}.port"), "port 0 is not a port");
                }
                if !seen.insert((t.address, t.port_in(g))) {
                    p.add(
                        format!("{tat}.address"),
                        format!("{} is listed twice in `{}`", t.address, g.name),
                    );
                }
            }
            if let Some(hc) = &g.health_check {
                let hat = format!("{at}.health_check");
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
                if !(Duration::from_secs(5)..=Duration::from_secs(300)).contains(&hc.interval) {
                    p.add(
                        format!("{hat}.interval"),
                        format!("{:?} is out of range 5s..=300s", hc.interval),
                    );
                }
                if !(Duration::from_secs(2)..=Duration::from_secs(120)).contains(&hc.timeout) {
                    p.add(
                        format!("{hat}.timeout"),
                        format!("{:?} is out of range 2s..=120s", hc.timeout),
                    );
                } else if hc.timeout >= hc.interval {
                    p.add(
                        format!("{hat}.timeout"),
                        "must be shorter than the interval",
                    );
                }
                if !hc.path.starts_with('/') {
                    p.add(
                        format!("{hat}.path"),
                        format!("`{}` must start with /", hc.path),
                    );
                }
                check_matcher(p, format!("{hat}.matcher"), &hc.matcher);
            }
        }

        let mut listener_names = HashSet::new();
        for (li, l) in self.listeners.iter().enumerate() {
            let at = format!("listener[{li}]");
            if !valid_name(&l.name) {
                p.add(
                    format!("{at}.name"),
                    format!("`{}`: names are 1-64 of [A-Za-z0-9_-]", l.name),
                );
            }
            if !listener_names.insert(l.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("a listener named `{}` already exists", l.name),
                );
            }
            check_unicast(p, format!("{at}.address"), l.address, "a listener address");
            if l.port == 0 {
                p.add(format!("{at}.port"), "port 0 is not a port");
            }
            for (other_i, other) in self.listeners.iter().enumerate().take(li) {
                let (t1, u1) = l.protocol.transports();
                let (t2, u2) = other.protocol.transports();
                if other.address == l.address && other.port == l.port && ((t1 && t2) || (u1 && u2))
                {
                    p.add(
                        format!("{at}.port"),
                        format!(
                            "overlaps listener `{}` (listener[{other_i}]) on {}:{}",
                            other.name, l.address, l.port
                        ),
                    );
                }
            }
            let mut actions = vec![(format!("{at}.default_action"), &l.default_action)];
            actions.extend(
                l.rules
                    .iter()
                    .enumerate()
                    .map(|(ri, r)| (format!("{at}.rule[{ri}].action"), &r.action)),
            );
            for (path, action) in &actions {
                let set = [
                    action.forward.is_some(),
                    action.redirect.is_some(),
                    action.fixed_response.is_some(),
                ];
                if set.iter().filter(|s| **s).count() != 1 {
                    p.add(
                        path.clone(),
                        "an action is exactly one of forward, redirect, fixed_response",
                    );
                }
                for (group, gpath) in action.forwards(path) {
                    if self.group(&group).is_none() {
                        p.add(gpath, format!("no target group named `{group}`"));
                    }
                }
            }
            if l.protocol.is_l4() {
                self.validate_l4_listener(p, &at, l);
            } else {
                p.add(
                    format!("{at}.protocol"),
                    format!(
                        "`{}` listeners are not supported yet (L4: tcp, udp, tcp_udp)",
                        l.protocol.as_str()
                    ),
                );
            }
        }
    }

    fn validate_l4_listener(&self, p: &mut Problems, at: &str, l: &Listener) {
        if l.mode == Mode::Dsr {
            p.add(
                format!("{at}.mode"),
                "mode `dsr` is not supported yet; use `nat`",
            );
        }
        if !l.rules.is_empty() {
            p.add(
                format!("{at}.rule"),
                "rules are for http/https listeners; an L4 listener has only a default action",
            );
        }
        let group = match &l.default_action.forward {
            Some(Forward::Group(g)) => g,
            Some(Forward::Weighted(list)) if list.len() == 1 => &list[0].target_group,
            Some(Forward::Weighted(_)) => {
                p.add(
                    format!("{at}.default_action.forward"),
                    "an L4 listener forwards to exactly one target group",
                );
                return;
            }
            None => {
                p.add(
                    format!("{at}.default_action"),
                    "an L4 listener must forward to a target group",
                );
                return;
            }
        };
        let Some(g) = self.group(group) else { return };
        let compatible = match l.protocol {
            ListenerProtocol::Tcp => {
                matches!(g.protocol, GroupProtocol::Tcp | GroupProtocol::TcpUdp)
            }
            ListenerProtocol::Udp => {
                matches!(g.protocol, GroupProtocol::Udp | GroupProtocol::TcpUdp)
            }
            _ => g.protocol == GroupProtocol::TcpUdp,
        };
        if !compatible {
            p.add(
                format!("{at}.default_action.forward"),
                format!(
                    "a {} listener cannot forward to `{}`, a {:?} group",
                    l.protocol.as_str(),
                    g.name,
                    g.protocol
                ),
            );
        }
        let gi = self
            .target_groups
            .iter()
            .position(|x| x.name == g.name)
            .unwrap_or(0);
        if matches!(
            g.stickiness,
            Some(Stickiness::LbCookie { .. } | Stickiness::AppCookie { .. })
        ) {
            p.add(
                format!("target_group[{gi}].stickiness"),
                "cookie stickiness is for http/https; L4 groups use { type = \"source_ip\" }",
            );
        }
        for (ti, t) in g.targets.iter().enumerate() {
            if t.port_in(g).is_none() {
                p.add(
                    format!("target_group[{gi}].targets[{ti}]"),
                    format!("{} has no port and group `{}` has none", t.address, g.name),
                );
            }
            if t.address.is_ipv4() != l.address.is_ipv4() {
                p.add(
                    format!("target_group[{gi}].targets[{ti}].address"),
                    format!(
                        "{} and listener `{}`'s {} differ in family (no NAT between IPv4 and IPv6)",
                        t.address, l.name, l.address
                    ),
                );
            }
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
        let c = Config::parse(GOOD, "t.toml").expect("valid");
        assert_eq!(c.agent.maglev_table_size, 65537);
        assert_eq!(c.agent.snat_port_range, (1024, 32767));
        assert_eq!(
            c.target_groups[0].deregistration_delay,
            Duration::from_secs(300)
        );
        assert_eq!(c.target_groups[0].targets[0].weight, 1);
        assert_eq!(c.listeners[0].mode, Mode::Nat);
        assert_eq!(c.listeners[0].forward_group(), Some("web"));
    }

    #[test]
    fn unknown_field_names_file_line_column_and_field() {
        let text = GOOD.replace("port = 8080\n", "port = 8080\nprot = 1\n");
        let e = &errors(&text)[0];
        assert_eq!((e.file.as_str(), e.line), ("t.toml", 9), "{e}");
        assert!(e.message.contains("prot"), "{e}");
        assert!(e.field.starts_with("target_group[0]"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = GOOD.replace("port = 80\n", "port = \"eighty\"\n");
        let e = &errors(&text)[0];
        assert_eq!(e.line, 14, "{e}");
        assert_eq!(e.field, "listener[0].port", "{e}");
    }

    #[test]
    fn forward_to_a_missing_group_points_at_the_forward() {
        let text = GOOD.replace("{ forward = \"web\" }", "{ forward = \"nope\" }");
        let e = &errors(&text)[0];
        assert_eq!(
            (e.line, e.field.as_str()),
            (16, "listener[0].default_action.forward"),
            "{e}"
        );
        assert!(e.message.contains("nope"));
        assert_eq!(
            e.to_string(),
            format!(
                "t.toml:16:{}: listener[0].default_action.forward: no target group named `nope`",
                e.column
            )
        );
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = format!(
            "{GOOD}\n[[listener]]\nname = \"web\"\naddress = \"198.18.1.100\"\nport = 80\nprotocol = \"tcp_udp\"\ndefault_action = {{ forward = \"web\" }}\n"
        )
        .replace("maglev", "")
        .replace("weight = 2", "weight = 2000")
        .replace("[agent]\n", "[agent]\nmaglev_table_size = 65536\n");
        let e = errors(&text);
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "agent.maglev_table_size",
            "target_group[0].targets[1].weight",
            "listener[1].name",
            "listener[1].port",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        assert!(e.iter().any(|e| e.message.contains("overlaps")), "{e:?}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3x").is_err());
        let text = GOOD.replace("port = 8080\n", "port = 8080\nderegistration_delay = 30\n");
        assert!(errors(&text)[0].message.contains("\"30s\""));
    }

    #[test]
    fn unsupported_features_are_refused_clearly() {
        let text = GOOD.replace(
            "protocol = \"tcp\"\ndefault_action",
            "protocol = \"https\"\ndefault_action",
        );
        assert!(
            errors(&text)
                .iter()
                .any(|e| e.message.contains("not supported yet"))
        );
        let text = GOOD.replace(
            "default_action = { forward = \"web\" }",
            "mode = \"dsr\"\ndefault_action = { forward = \"web\" }",
        );
        assert!(errors(&text).iter().any(|e| e.field == "listener[0].mode"));
    }

    #[test]
    fn mixed_families_are_refused() {
        let text = GOOD.replace("198.18.0.21", "fd00:198:18::21");
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|e| e.field == "target_group[0].targets[0].address"
                    && e.message.contains("family")),
            "{e:?}"
        );
    }
}
