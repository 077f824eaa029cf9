//! Prometheus metrics (`GET /metrics`, text format 0.0.4): per listener, target group and
//! target, the data plane's verdicts, the connection table's fill, and the agent itself.
//! Names follow Prometheus conventions: `lb_` prefix, `_total` counters, base units.

use std::{fmt::Write as _, time::SystemTime};

use crate::{
    health::TargetState,
    protocol::{GroupView, StatsView},
};

/// What the metrics are made of.
pub struct MetricsInput<'a> {
    pub stats: &'a StatsView,
    pub groups: &'a [GroupView],
    pub started: SystemTime,
    pub config_version: u64,
}

/// The text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state a target can show, for the one-hot `lb_target_health_state`.
const STATES: [TargetState; 6] = [
    TargetState::Initial,
    TargetState::Healthy,
    TargetState::Unhealthy,
    TargetState::Unavailable,
    TargetState::Draining,
    TargetState::Unused,
];

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text.
pub fn render(input: &MetricsInput<'_>) -> String {
    let (stats, groups) = (input.stats, input.groups);
    let mut out = String::new();

    let mut f = Family::new(
        &mut out,
        "lb_agent_build_info",
        "gauge",
        "The agent's version.",
    );
    f.sample(
        "lb_agent_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let started = input
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut f = Family::new(
        &mut out,
        "lb_agent_start_time_seconds",
        "gauge",
        "When the agent started, in seconds since the epoch.",
    );
    f.sample("lb_agent_start_time_seconds", &[], started);
    let mut f = Family::new(
        &mut out,
        "lb_agent_config_version",
        "gauge",
        "The agent's state version: it grows with every change (API write, reload).",
    );
    f.sample("lb_agent_config_version", &[], input.config_version as f64);

    for (name, help, pick) in [
        (
            "lb_listener_packets_total",
            "Packets a listener received from clients.",
            0,
        ),
        (
            "lb_listener_bytes_total",
            "Bytes a listener received from clients.",
            1,
        ),
        (
            "lb_listener_new_flows_total",
            "Flows a listener sent to a target.",
            2,
        ),
    ] {
        let mut f = Family::new(&mut out, name, "counter", help);
        for l in &stats.listeners {
            let c = &l.counters;
            let value = [c.packets, c.bytes, c.new_flows][pick];
            let address = l.address.to_string();
            f.sample(
                name,
                &[
                    ("listener", &l.name),
                    ("address", &address),
                    ("protocol", &l.protocol),
                    ("target_group", &l.target_group),
                ],
                value as f64,
            );
        }
    }

    let mut f = Family::new(
        &mut out,
        "lb_listener_active_flows",
        "gauge",
        "A listener's entries in the connection table.",
    );
    for l in &stats.listeners {
        let address = l.address.to_string();
        f.sample(
            "lb_listener_active_flows",
            &[
                ("listener", &l.name),
                ("address", &address),
                ("protocol", &l.protocol),
                ("target_group", &l.target_group),
            ],
            l.active_flows as f64,
        );
    }

    // A group's sums over its targets (a target that leaves takes its share with it).
    for (name, kind, help, pick) in [
        (
            "lb_target_group_packets_total",
            "counter",
            "Packets sent to a group's targets.",
            0,
        ),
        (
            "lb_target_group_bytes_total",
            "counter",
            "Bytes sent to a group's targets.",
            1,
        ),
        (
            "lb_target_group_new_flows_total",
            "counter",
            "Flows assigned to a group's targets.",
            2,
        ),
        (
            "lb_target_group_active_flows",
            "gauge",
            "A group's entries in the connection table.",
            3,
        ),
    ] {
        let mut f = Family::new(&mut out, name, kind, help);
        for g in groups {
            let sum: u64 = stats
                .targets
                .iter()
                .filter(|t| t.group == g.name)
                .map(|t| {
                    let c = &t.counters;
                    [c.packets, c.bytes, c.new_flows, t.active_flows][pick]
                })
                .sum();
            f.sample(name, &[("target_group", &g.name)], sum as f64);
        }
    }

    for (name, help, pick) in [
        (
            "lb_target_packets_total",
            "Packets sent to a target (client to target).",
            0,
        ),
        (
            "lb_target_bytes_total",
            "Bytes sent to a target (client to target).",
            1,
        ),
        (
            "lb_target_new_flows_total",
            "Flows assigned to a target.",
            2,
        ),
    ] {
        let mut f = Family::new(&mut out, name, "counter", help);
        for t in &stats.targets {
            let c = &t.counters;
            let value = [c.packets, c.bytes, c.new_flows][pick];
            let address = t.address.to_string();
            f.sample(
                name,
                &[("target_group", &t.group), ("target", &address)],
                value as f64,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "lb_target_active_flows",
        "gauge",
        "A target's entries in the connection table.",
    );
    for t in &stats.targets {
        let address = t.address.to_string();
        f.sample(
            "lb_target_active_flows",
            &[("target_group", &t.group), ("target", &address)],
            t.active_flows as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lb_target_health_state",
        "gauge",
        "1 for a target's current health state, 0 for the others.",
    );
    for t in &stats.targets {
        let address = t.address.to_string();
        for state in STATES {
            f.sample(
                "lb_target_health_state",
                &[
                    ("target_group", &t.group),
                    ("target", &address),
                    ("state", state.as_str()),
                ],
                if t.state == state { 1.0 } else { 0.0 },
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "lb_target_health_check_duration_seconds",
        "gauge",
        "How long a target's last health check took.",
    );
    for t in &stats.targets {
        if let Some(ms) = t.last_check_ms {
            let address = t.address.to_string();
            f.sample(
                "lb_target_health_check_duration_seconds",
                &[("target_group", &t.group), ("target", &address)],
                ms / 1000.0,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "lb_target_in_service",
        "gauge",
        "1 if a target receives new flows.",
    );
    for t in &stats.targets {
        let address = t.address.to_string();
        f.sample(
            "lb_target_in_service",
            &[("target_group", &t.group), ("target", &address)],
            if t.in_service { 1.0 } else { 0.0 },
        );
    }
    let mut f = Family::new(
        &mut out,
        "lb_target_weight",
        "gauge",
        "The weight new flows see (0 out of service, less than registered while slow starting).",
    );
    for t in &stats.targets {
        let address = t.address.to_string();
        f.sample(
            "lb_target_weight",
            &[("target_group", &t.group), ("target", &address)],
            t.effective_weight,
        );
    }

    let mut f = Family::new(
        &mut out,
        "lb_target_group_targets",
        "gauge",
        "Targets registered in a group, draining ones included.",
    );
    for g in groups {
        f.sample(
            "lb_target_group_targets",
            &[("target_group", &g.name)],
            g.targets as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lb_target_group_targets_in_service",
        "gauge",
        "Targets of a group that receive new flows.",
    );
    for g in groups {
        f.sample(
            "lb_target_group_targets_in_service",
            &[("target_group", &g.name)],
            g.in_service as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lb_target_group_failing_open",
        "gauge",
        "1 if no target of the group is healthy and new flows go to all of them.",
    );
    for g in groups {
        f.sample(
            "lb_target_group_failing_open",
            &[("target_group", &g.name)],
            if g.failing_open { 1.0 } else { 0.0 },
        );
    }

    let mut f = Family::new(
        &mut out,
        "lb_dataplane_packets_total",
        "counter",
        "Packets the XDP program handled, by verdict: forwards, passes to the kernel and drops, with their reasons.",
    );
    for (verdict, n) in &stats.verdicts {
        f.sample(
            "lb_dataplane_packets_total",
            &[("verdict", verdict)],
            *n as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lb_conntrack_entries",
        "gauge",
        "Flows in the connection table.",
    );
    f.sample("lb_conntrack_entries", &[], stats.flows as f64);
    let mut f = Family::new(
        &mut out,
        "lb_conntrack_active_flows",
        "gauge",
        "Entries of live flows; the others are over and give their SNAT ports to new flows.",
    );
    f.sample("lb_conntrack_active_flows", &[], stats.active_flows as f64);
    let mut f = Family::new(
        &mut out,
        "lb_conntrack_capacity",
        "gauge",
        "Entries the connection table holds before its LRU evicts the oldest.",
    );
    f.sample(
        "lb_conntrack_capacity",
        &[],
        f64::from(lb_common::CONNTRACK_SIZE),
    );
    let mut f = Family::new(
        &mut out,
        "lb_health_transitions_total",
        "counter",
        "Target state changes since the agent started.",
    );
    for (change, n) in &stats.health_transitions {
        let (from, to) = change.split_once("->").unwrap_or((change, ""));
        f.sample(
            "lb_health_transitions_total",
            &[("from", from), ("to", to)],
            *n as f64,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("two\nlines"), "two\\nlines");
        let mut out = String::new();
        let mut f = Family::new(&mut out, "x_total", "counter", "An x.");
        f.sample("x_total", &[("k", "v\"")], 3.0);
        assert_eq!(
            out,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{k=\"v\\\"\"} 3\n"
        );
    }
}
