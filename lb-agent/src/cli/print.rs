//! How the CLI shows the agent's typed answers to people.

use crate::cli::duration;
use lb_agent::{
    config::{
        Action, Conditions, Forward, HealthCheck, HealthProtocol, RedirectProtocol, duration_text,
    },
    overrides::{Overrides, RuleOverride, TargetOverride},
    protocol::{
        FlowView, GroupView, ListenerView, RuleSource, RulesView, StatsView, StatusView, TargetView,
    },
};

/// A health check in one line.
/// A health check in one line; `version` is its group's (`grpc`: a gRPC call, always a POST,
/// whatever `method` says), when known.
pub fn describe_check(check: Option<&HealthCheck>, version: Option<&str>) -> String {
    let Some(c) = check else {
        return "not checked".into();
    };
    if !c.enabled {
        return "checks disabled".into();
    }
    let port = c.port.map_or("traffic port".to_owned(), |p| p.to_string());
    let what = match c.protocol {
        HealthProtocol::Tcp => format!("tcp connect to {port}"),
        _ if version == Some("grpc") => format!(
            "grpc POST {}:{port}{} expecting grpc-status {}",
            c.host.as_deref().unwrap_or("(target)"),
            c.path,
            c.matcher
        ),
        _ => format!(
            "{} {} {}:{port}{} expecting {}",
            c.protocol.as_str(),
            c.method.as_str(),
            c.host.as_deref().unwrap_or("(target)"),
            c.path,
            c.matcher
        ),
    };
    format!(
        "{what}, every {}, timeout {}, healthy after {}, unhealthy after {}",
        duration_text(c.interval),
        duration_text(c.timeout),
        c.healthy_threshold,
        c.unhealthy_threshold
    )
}

pub fn groups(list: &[GroupView]) {
    for g in list {
        println!(
            "{}  {}{}  {}/{} targets in service{}{}",
            g.name,
            g.protocol,
            g.port.map_or(String::new(), |p| format!(":{p}")),
            g.in_service,
            g.targets,
            if g.failing_open { "  FAILING OPEN" } else { "" },
            if g.in_use { "" } else { "  (no listener)" },
        );
        println!(
            "    health check: {}",
            describe_check(g.health_check.as_ref(), Some(&g.protocol_version))
        );
        println!(
            "    deregistration delay {}, slow start {}, terminate on unhealthy {}, fail open {}",
            g.deregistration_delay,
            if g.slow_start == "0s" {
                "off"
            } else {
                &g.slow_start
            },
            g.terminate_on_unhealthy,
            g.fail_open
        );
    }
}

pub fn targets(list: &[TargetView]) {
    println!(
        "{:<12} {:<28} {:<11} {:<32} {:>6} {:>6} {:>8} {:>7} {:>10} {:>10}",
        "GROUP",
        "TARGET",
        "STATE",
        "REASON",
        "WEIGHT",
        "NOW",
        "CHECK",
        "FLOWS",
        "PACKETS",
        "NEW FLOWS"
    );
    for t in list {
        println!(
            "{:<12} {:<28} {:<11} {:<32} {:>6} {:>6} {:>8} {:>7} {:>10} {:>10}",
            t.group,
            t.address.to_string(),
            t.state.as_str(),
            t.reason.as_deref().unwrap_or("-"),
            t.weight,
            format!("{:.2}", t.effective_weight),
            t.last_check_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms")),
            t.active_flows,
            t.counters.packets,
            t.counters.new_flows
        );
        if let Some(description) = &t.description {
            println!("{:<12} {:<28} ↳ {description}", "", "");
        }
    }
}

/// The connection table.
pub fn flows(list: &[FlowView]) {
    println!(
        "{:<5} {:<46} {:<46} {:<46} {:<46} {:<12} {:>6} STATE",
        "PROTO", "CLIENT", "LISTENER", "TARGET", "SNAT", "GROUP", "IDLE"
    );
    for f in list {
        let state = match (f.active, f.closing) {
            (true, false) => "open",
            (true, true) => "closing",
            (false, _) => "over",
        };
        println!(
            "{:<5} {:<46} {:<46} {:<46} {:<46} {:<12} {:>5}s {state}",
            f.protocol,
            f.client.to_string(),
            f.listener.to_string(),
            f.backend.to_string(),
            f.snat.to_string(),
            f.target_group.as_deref().unwrap_or("-"),
            f.idle_seconds
        );
    }
    let active = list.iter().filter(|f| f.active).count();
    println!("{} flows, {active} active", list.len());
}

/// Counters of listeners and targets, state changes and verdicts.
pub fn stats(s: &StatsView) {
    println!(
        "{:<16} {:<40} {:<8} {:<16} {:>12} {:>14} {:>10}",
        "LISTENER", "ADDRESS", "PROTO", "GROUP", "PACKETS", "BYTES", "NEW FLOWS"
    );
    for l in &s.listeners {
        println!(
            "{:<16} {:<40} {:<8} {:<16} {:>12} {:>14} {:>10}",
            l.name,
            l.address,
            l.protocol,
            l.target_group,
            l.counters.packets,
            l.counters.bytes,
            l.counters.new_flows
        );
    }
    println!();
    targets(&s.targets);
    println!(
        "\nconnection table: {} flows, {} active",
        s.flows, s.active_flows
    );
    if !s.health_transitions.is_empty() {
        println!("target state changes:");
        for (change, count) in &s.health_transitions {
            println!("  {change:<24} {count}");
        }
    }
    println!("verdicts:");
    for (name, count) in s.verdicts.iter().filter(|(_, c)| **c > 0) {
        println!("  {name:<24} {count}");
    }
}

/// One screen: what runs, where, and how healthy.
pub fn status(r: &StatusView) {
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    println!(
        "lb-agent {} (pid {}), up {}",
        r.version,
        r.pid,
        duration(r.uptime_seconds)
    );
    println!(
        "config      {}  (+ {} API changes kept in {})",
        text(&r.config),
        r.overrides,
        text(&r.state_file)
    );
    let ifaces: Vec<String> = r
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
        .collect();
    println!(
        "data plane  XDP on {}; pinned in {}{}",
        if ifaces.is_empty() {
            "nothing".to_owned()
        } else {
            ifaces.join(", ")
        },
        text(&r.pin_dir),
        if r.adopted {
            " (adopted from an earlier agent)"
        } else {
            ""
        }
    );
    println!(
        "flows       {} active, {} in the connection table",
        r.active_flows, r.flows
    );
    println!("listeners");
    for l in &r.listeners {
        println!(
            "  {:<16} {:<40} {:<8} -> {}",
            l.name,
            l.address.to_string(),
            l.protocol,
            l.settings
                .default_action
                .as_ref()
                .map_or_else(|| l.target_group.clone(), describe_action)
        );
    }
    println!("target groups");
    let mut problems = 0;
    for g in &r.groups {
        let (up, all) = (g.in_service, g.targets);
        let verdict = if g.failing_open {
            "FAILING OPEN: no target healthy".to_owned()
        } else if all > 0 && up == 0 {
            "DOWN: no target in service".to_owned()
        } else if g.unhealthy > 0 {
            format!("degraded: {} unhealthy", g.unhealthy)
        } else {
            "ok".to_owned()
        };
        if verdict != "ok" {
            problems += 1;
        }
        println!("  {:<16} {up}/{all} targets in service  {verdict}", g.name);
    }
    println!(
        "{}",
        if problems == 0 {
            "all target groups healthy".to_owned()
        } else {
            format!("{problems} target groups need attention: `lb-agent targets list`")
        }
    );
    for warning in &r.warnings {
        println!("WARNING     {warning}");
    }
}

/// The API's changes on top of the config file.
pub fn overrides(o: &Overrides) {
    if o.is_empty() {
        println!("no API changes: the config file rules");
    }
    for (group, targets) in &o.targets {
        for (address, change) in targets {
            match change {
                TargetOverride::Registered { weight } => {
                    println!("{group:<16} {address:<28} registered, weight {weight}")
                }
                TargetOverride::Deregistered => {
                    println!("{group:<16} {address:<28} deregistered")
                }
            }
        }
    }
    for (group, check) in &o.health_checks {
        println!(
            "{group:<16} health check: {}",
            describe_check(Some(check), None)
        );
    }
    for (listener, rules) in &o.rules {
        for (priority, change) in rules {
            match change {
                RuleOverride::Set { rule } => println!(
                    "{listener:<16} rule {priority:<22} set: {} -> {}",
                    describe_conditions(&rule.conditions),
                    describe_action(&rule.action)
                ),
                RuleOverride::Removed => {
                    println!("{listener:<16} rule {priority:<22} removed")
                }
            }
        }
    }
}

/// An action in one line: `forward web`, `forward api 90, canary 10`,
/// `redirect 301 to https://#{host}:443/#{path}?#{query}`, `fixed 404 text/plain (8 bytes)`.
pub fn describe_action(action: &Action) -> String {
    if let Some(forward) = &action.forward {
        return match forward {
            Forward::Group(g) => format!("forward {g}"),
            Forward::Weighted(list) => {
                let parts: Vec<String> = list
                    .iter()
                    .map(|w| format!("{} {}", w.target_group, w.weight))
                    .collect();
                format!("forward {}", parts.join(", "))
            }
        };
    }
    if let Some(r) = &action.redirect {
        // The parts left out keep the request's: AWS's placeholders say so.
        let protocol = r.protocol.map_or("#{protocol}", |p| match p {
            RedirectProtocol::Http => "http",
            RedirectProtocol::Https => "https",
        });
        let port = r.port.map_or("#{port}".to_owned(), |p| p.to_string());
        return format!(
            "redirect {} to {protocol}://{}:{port}{}?{}",
            r.status_code,
            r.host.as_deref().unwrap_or("#{host}"),
            r.path.as_deref().unwrap_or("/#{path}"),
            r.query.as_deref().unwrap_or("#{query}")
        );
    }
    if let Some(f) = &action.fixed_response {
        return format!(
            "fixed {}{} ({} bytes)",
            f.status_code,
            f.content_type
                .as_deref()
                .map_or(String::new(), |t| format!(" {t}")),
            f.message_body.as_deref().map_or(0, str::len)
        );
    }
    "nothing".to_owned()
}

/// A rule's conditions in one line, like `host=a.example.com,b.example.com path=/v1/*`.
pub fn describe_conditions(c: &Conditions) -> String {
    let mut parts = Vec::new();
    for (name, values) in [
        ("host", &c.host),
        ("path", &c.path),
        ("method", &c.http_request_method),
        ("source_ip", &c.source_ip),
    ] {
        if !values.is_empty() {
            parts.push(format!("{name}={}", values.join(",")));
        }
    }
    for (name, values) in &c.http_header {
        parts.push(format!("header:{name}={}", values.join(",")));
    }
    for (key, value) in &c.query_string {
        parts.push(format!("query:{key}={value}"));
    }
    if parts.is_empty() {
        "(any request)".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Listeners of every kind: what each does, its TLS, its traffic.
pub fn listeners(list: &[ListenerView]) {
    println!(
        "{:<16} {:<28} {:<8} {:<32} {:>5} {:<44} {:>8} {:>12}",
        "LISTENER", "ADDRESS", "PROTO", "DEFAULT ACTION", "RULES", "TLS", "FLOWS", "PACKETS"
    );
    for l in list {
        let s = &l.settings;
        let tls = match &s.ssl_policy {
            Some(policy) => format!("{} certs, {policy}", s.certificates),
            None => "-".to_owned(),
        };
        println!(
            "{:<16} {:<28} {:<8} {:<32} {:>5} {:<44} {:>8} {:>12}",
            l.name,
            l.address.to_string(),
            l.protocol,
            s.default_action
                .as_ref()
                .map_or_else(|| l.target_group.clone(), describe_action),
            s.rules,
            tls,
            l.active_flows,
            l.counters.packets
        );
    }
}

/// A listener's rules in the order they are tried, then its default action.
pub fn rules(view: &RulesView) {
    println!("{} ({})", view.listener, view.protocol);
    println!(
        "{:>8} {:<6} {:<48} ACTION",
        "PRIORITY", "FROM", "CONDITIONS"
    );
    for r in &view.rules {
        println!(
            "{:>8} {:<6} {:<48} {}",
            r.priority,
            match r.source {
                RuleSource::File => "file",
                RuleSource::Api => "api",
            },
            describe_conditions(&r.conditions),
            describe_action(&r.action)
        );
    }
    println!(
        "{:>8} {:<6} {:<48} {}",
        "default",
        "file",
        "(the rest)",
        describe_action(&view.default_action)
    );
}

/// What a reload changed, a line each, after `title`.
pub fn changes(title: &str, changes: &[String]) {
    println!("{title}: {} changes", changes.len());
    for change in changes {
        println!("  {change}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_agent::config::{GroupProtocol, ProtocolVersion};

    #[test]
    fn a_grpc_groups_check_reads_as_the_grpc_call_it_is() {
        let grpc = HealthCheck::default_for(GroupProtocol::Http, ProtocolVersion::Grpc);
        let line = describe_check(grpc.as_ref(), Some("grpc"));
        assert!(
            line.starts_with(
                "grpc POST (target):traffic port/AWS.ALB/healthcheck expecting grpc-status 12,"
            ),
            "{line}"
        );
        let http = HealthCheck::default_for(GroupProtocol::Http, ProtocolVersion::Http1);
        let line = describe_check(http.as_ref(), Some("http1"));
        assert!(
            line.starts_with("http GET (target):traffic port/ expecting 200-399,"),
            "{line}"
        );
    }
}
