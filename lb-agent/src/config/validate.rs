//! The config as a whole, checked for sense after serde has typed it: ranges, names, references
//! between listeners and groups, what the data plane supports. Every problem is collected, as
//! (dotted field, message); `Config::parse` gives each its line and column.
//!
//! `Config::problems` is the one way in, for a file (`run`, `check`, reload) and for a config
//! changed in memory (the control API's changes, before they are saved), so that nothing the
//! file check refuses can be saved and then fail the next start-up.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use lb_common::{MAX_BACKENDS, MAX_GROUPS, MAX_LISTENERS};

use super::{
    Action, Config, Forward, HealthCheck, Listener, ListenerProtocol, MAX_WEIGHT, Mode,
    ProtocolVersion, Stickiness, snat_ports::clashing_source,
};
use crate::maglev::is_prime;

/// Collects semantic errors by dotted path; positions are looked up at the end.
#[derive(Default)]
pub(super) struct Problems {
    list: Vec<(String, String)>,
    seen: HashSet<(String, String)>,
}

impl Problems {
    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
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

    /// The problems found, as (field, message), in the order they were found.
    pub(super) fn into_list(self) -> Vec<(String, String)> {
        self.list
    }
}

pub(super) fn check_name(p: &mut Problems, field: String, name: &str) {
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

/// Refuses an address that is not one host's: the unspecified address (`0.0.0.0`, `::`),
/// multicast, and IPv4 broadcast; `who` needs a unicast address. An IPv4-mapped IPv6 address
/// (`::ffff:0.0.0.0`) is judged as the IPv4 address it carries.
fn check_unicast(p: &mut Problems, field: String, ip: IpAddr, who: &str) {
    let what = match ip.to_canonical() {
        canonical if canonical.is_unspecified() => "the unspecified address",
        canonical if canonical.is_multicast() => "a multicast address",
        IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address",
        _ => return,
    };
    p.add(
        field,
        format!("{ip} is {what}; {who} needs a unicast address"),
    );
}

/// A matcher is HTTP status codes (100..=599), or `grpc-status` codes (0..=99, AWS's range)
/// in gRPC groups.
fn check_matcher(p: &mut Problems, field: String, matcher: &str, version: ProtocolVersion) {
    let (codes, example) = match version {
        ProtocolVersion::Grpc => (0..=99, "gRPC codes 0-99 like \"12\", \"0-99\" or \"0,12\""),
        ProtocolVersion::Http1 | ProtocolVersion::Http2 => (
            100..=599,
            "codes 100-599 like \"200\", \"200-299\" or \"200,301\"",
        ),
    };
    let ok = matcher.split(',').all(|part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) => codes.contains(&a) && codes.contains(&b) && a <= b,
            _ => false,
        }
    });
    if !ok {
        p.add(
            field,
            format!("`{matcher}` is no status matcher: write {example}"),
        );
    }
}

/// Checks a health check's fields as it runs on a group whose targets speak `version`; `hat`
/// is its dotted path, like `target_group[0].health_check`.
pub(super) fn check_health_check(
    p: &mut Problems,
    hat: &str,
    hc: &HealthCheck,
    version: ProtocolVersion,
) {
    let hc = &hc.clone().for_version(version);
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
    check_matcher(p, format!("{hat}.matcher"), &hc.matcher, version);
}

pub(super) fn check_duration(
    p: &mut Problems,
    field: String,
    d: Duration,
    min: Duration,
    max: Duration,
) {
    if !(min..=max).contains(&d) {
        p.add(field, format!("{d:?} is out of range {min:?}..={max:?}"));
    }
}

/// `problems` (field, message) as one text, `field: message` each, joined by `separator`.
pub fn problem_text(problems: Vec<(String, String)>, separator: &str) -> String {
    problems
        .into_iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect::<Vec<_>>()
        .join(separator)
}

impl Config {
    /// What is wrong with a config built in memory (a file's with overrides applied), as
    /// (field, message); empty when it can run.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Problems::default();
        self.validate(&mut p);
        p.into_list()
    }

    fn validate(&self, p: &mut Problems) {
        self.validate_agent(p);
        self.validate_groups(p);
        self.validate_listeners(p);
        self.validate_access_log(p);
        self.validate_scaling(p);
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
            ("half_open_timeout", agent.half_open_timeout, 1, 600),
            ("api_header_timeout", agent.api_header_timeout, 1, 300),
            ("api_idle_timeout", agent.api_idle_timeout, 1, 3600),
        ] {
            check_duration(
                p,
                format!("agent.{field}"),
                d,
                Duration::from_secs(min),
                Duration::from_secs(max),
            );
        }
        let table = agent.connection_table_size;
        if !(1024..=16_777_216).contains(&table) {
            p.add(
                "agent.connection_table_size",
                format!(
                    "{table} is out of range 1024..=16777216 flows (the default, 1048576, \
                     takes up to about 300 MB when full)"
                ),
            );
        }
        if !(1..=16384).contains(&agent.api_max_connections) {
            p.add(
                "agent.api_max_connections",
                format!(
                    "{} is out of range 1..=16384 (each held connection is a descriptor)",
                    agent.api_max_connections
                ),
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
            check_unicast(p, at.clone(), *ip, "a SNAT source");
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
                if t.weight > MAX_WEIGHT {
                    p.add(
                        format!("{tat}.weight"),
                        format!("{} is out of range 0..={MAX_WEIGHT}", t.weight),
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
                check_health_check(
                    p,
                    &format!("{at}.health_check"),
                    hc,
                    g.l7().protocol_version,
                );
            }
            self.validate_l7_group(p, &at, g);
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
            check_unicast(p, format!("{at}.address"), l.address, "a listener");
            self.check_listener_outside_snat_ports(p, &at, l);
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
            }
            self.validate_l7_listener(p, &at, l);
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
        if let Some(duration) = action.group_stickiness {
            if action.forward.is_none() {
                p.add(
                    format!("{path}.group_stickiness"),
                    "group_stickiness keeps a client on the group a forward chose: it needs `forward`",
                );
            }
            check_duration(
                p,
                format!("{path}.group_stickiness"),
                duration,
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            );
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

    /// A listener on a full-NAT source address must not take a port the data plane may give
    /// a flow as its source: the targets' replies to that flow and the listener's clients
    /// would arrive at the same address and port, and one of them would go to the other.
    fn check_listener_outside_snat_ports(&self, p: &mut Problems, at: &str, l: &Listener) {
        let (lo, hi) = self.agent.snat_port_range;
        if let Some(si) = clashing_source(l, &self.agent.snat_addresses, (lo, hi)) {
            p.add(
                format!("{at}.port"),
                format!(
                    "port {} is inside agent.snat_port_range [{lo}, {hi}] and {} is a full-NAT \
                     source (agent.snat_addresses[{si}]): targets' replies to full-NAT flows \
                     would meet this listener's clients on that port; move the port out of \
                     the range, or the listener to another address",
                    l.port, l.address
                ),
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
