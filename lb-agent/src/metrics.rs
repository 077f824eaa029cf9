//! Prometheus metrics (`GET /metrics`): per listener, target group and target, the data
//! plane's verdicts, the connection table's fill, and the agent itself.
//!
//! `prometheus-client` writes the exposition in the Prometheus text format 0.0.4 (names with
//! their `_total` and unit suffixes, HELP and TYPE lines, label escaping); this module only
//! says which families there are and what they count. Every value is read from a snapshot
//! taken for the scrape, so the families are constant metrics of a [`Collector`], not live
//! counters. Names follow Prometheus conventions: `lb_` prefix, `_total` counters, base units.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric as _, MetricEncoder,
        prometheus_text,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    health::TargetState,
    protocol::{GroupView, ListenerView, StatsView, TargetView},
};

/// The text format's content type (0.0.4: what Prometheus and `prometheus_client.parser`
/// read; the OpenMetrics encoder's `# EOF` and counter names would not fit it).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every state a target can show, for the one-hot `lb_target_health_state`.
const STATES: [TargetState; 6] = [
    TargetState::Initial,
    TargetState::Healthy,
    TargetState::Unhealthy,
    TargetState::Unavailable,
    TargetState::Draining,
    TargetState::Unused,
];

/// Errors writing the metrics text.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The encoder could not write a family (a value it cannot represent).
    #[error("encoding the metrics: {0}")]
    Encode(#[from] fmt::Error),
}

/// What a scrape shows: the agent's state at one moment.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    pub stats: &'a StatsView,
    pub groups: &'a [GroupView],
    /// When the agent started.
    pub started: SystemTime,
    /// The agent's state version (it grows with every API write and reload).
    pub config_version: u64,
}

/// The metrics text, in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn render(input: &MetricsInput<'_>) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    // The registry keeps collectors for its lifetime, so it gets its own copy of the snapshot.
    registry.register_collector(Box::new(Snapshot {
        stats: input.stats.clone(),
        groups: input.groups.to_vec(),
        started: input.started,
        config_version: input.config_version,
    }));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// An owned [`MetricsInput`], encoded once per scrape.
#[derive(Debug)]
struct Snapshot {
    stats: StatsView,
    groups: Vec<GroupView>,
    started: SystemTime,
    config_version: u64,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_agent(&mut encoder)?;
        self.encode_listeners(&mut encoder)?;
        self.encode_group_sums(&mut encoder)?;
        self.encode_targets(&mut encoder)?;
        self.encode_groups(&mut encoder)?;
        self.encode_dataplane(&mut encoder)
    }
}

impl Snapshot {
    fn encode_agent(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        // An info metric: `lb_agent_build_info{version=".."} 1`.
        let build = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        build.encode(encoder.encode_descriptor(
            "lb_agent_build",
            "The agent's version.",
            None,
            build.metric_type(),
        )?)?;
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        ConstGauge::new(started).encode(encoder.encode_descriptor(
            "lb_agent_start_time",
            "When the agent started, in seconds since the epoch.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(self.config_version).encode(encoder.encode_descriptor(
            "lb_agent_config_version",
            "The agent's state version: it grows with every change (API write, reload).",
            None,
            MetricType::Gauge,
        )?)
    }

    fn encode_listeners(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let listeners = &self.stats.listeners;
        let mut f = encoder.encode_descriptor(
            "lb_listener_packets",
            "Packets a listener received from clients.",
            None,
            MetricType::Counter,
        )?;
        for l in listeners {
            counter(&mut f, &listener_labels(l), l.counters.packets)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_listener",
            "Bytes a listener received from clients.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for l in listeners {
            counter(&mut f, &listener_labels(l), l.counters.bytes)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_listener_new_flows",
            "Flows a listener sent to a target.",
            None,
            MetricType::Counter,
        )?;
        for l in listeners {
            counter(&mut f, &listener_labels(l), l.counters.new_flows)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_listener_active_flows",
            "A listener's entries in the connection table.",
            None,
            MetricType::Gauge,
        )?;
        for l in listeners {
            gauge(&mut f, &listener_labels(l), l.active_flows)?;
        }
        Ok(())
    }

    /// A group's sums over its targets (a target that leaves takes its share with it).
    fn encode_group_sums(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let sum = |group: &GroupView, pick: fn(&TargetView) -> u64| -> u64 {
            self.stats
                .targets
                .iter()
                .filter(|t| t.group == group.name)
                .map(pick)
                .sum()
        };
        let mut f = encoder.encode_descriptor(
            "lb_target_group_packets",
            "Packets sent to a group's targets.",
            None,
            MetricType::Counter,
        )?;
        for g in &self.groups {
            counter(&mut f, &group_labels(g), sum(g, |t| t.counters.packets))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_group",
            "Bytes sent to a group's targets.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for g in &self.groups {
            counter(&mut f, &group_labels(g), sum(g, |t| t.counters.bytes))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_group_new_flows",
            "Flows assigned to a group's targets.",
            None,
            MetricType::Counter,
        )?;
        for g in &self.groups {
            counter(&mut f, &group_labels(g), sum(g, |t| t.counters.new_flows))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_group_active_flows",
            "A group's entries in the connection table.",
            None,
            MetricType::Gauge,
        )?;
        for g in &self.groups {
            gauge(&mut f, &group_labels(g), sum(g, |t| t.active_flows))?;
        }
        Ok(())
    }

    fn encode_targets(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let targets = &self.stats.targets;
        let mut f = encoder.encode_descriptor(
            "lb_target_packets",
            "Packets sent to a target (client to target).",
            None,
            MetricType::Counter,
        )?;
        for t in targets {
            counter(&mut f, &target_labels(t), t.counters.packets)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target",
            "Bytes sent to a target (client to target).",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for t in targets {
            counter(&mut f, &target_labels(t), t.counters.bytes)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_new_flows",
            "Flows assigned to a target.",
            None,
            MetricType::Counter,
        )?;
        for t in targets {
            counter(&mut f, &target_labels(t), t.counters.new_flows)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_active_flows",
            "A target's entries in the connection table.",
            None,
            MetricType::Gauge,
        )?;
        for t in targets {
            gauge(&mut f, &target_labels(t), t.active_flows)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_health_state",
            "1 for a target's current health state, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for t in targets {
            let [group, target] = target_labels(t);
            for state in STATES {
                let labels = [
                    group.clone(),
                    target.clone(),
                    ("state", state.as_str().into()),
                ];
                gauge(&mut f, &labels, u32::from(t.state == state))?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_health_check_duration",
            "How long a target's last health check took.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for t in targets {
            if let Some(ms) = t.last_check_ms {
                gauge(&mut f, &target_labels(t), ms / 1000.0)?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_in_service",
            "1 if a target receives new flows.",
            None,
            MetricType::Gauge,
        )?;
        for t in targets {
            gauge(&mut f, &target_labels(t), u32::from(t.in_service))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_weight",
            "The weight new flows see (0 out of service, less than registered while slow starting).",
            None,
            MetricType::Gauge,
        )?;
        for t in targets {
            gauge(&mut f, &target_labels(t), t.effective_weight)?;
        }
        Ok(())
    }

    fn encode_groups(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut f = encoder.encode_descriptor(
            "lb_target_group_targets",
            "Targets registered in a group, draining ones included.",
            None,
            MetricType::Gauge,
        )?;
        for g in &self.groups {
            gauge(&mut f, &group_labels(g), g.targets)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_group_targets_in_service",
            "Targets of a group that receive new flows.",
            None,
            MetricType::Gauge,
        )?;
        for g in &self.groups {
            gauge(&mut f, &group_labels(g), g.in_service)?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_target_group_failing_open",
            "1 if no target of the group is healthy and new flows go to all of them.",
            None,
            MetricType::Gauge,
        )?;
        for g in &self.groups {
            gauge(&mut f, &group_labels(g), u32::from(g.failing_open))?;
        }
        Ok(())
    }

    fn encode_dataplane(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let stats = &self.stats;
        let mut f = encoder.encode_descriptor(
            "lb_dataplane_packets",
            "Packets the XDP program handled, by verdict: forwards, passes to the kernel and drops, with their reasons.",
            None,
            MetricType::Counter,
        )?;
        for (verdict, n) in &stats.verdicts {
            counter(&mut f, &[("verdict", verdict.as_str())], *n)?;
        }
        ConstGauge::new(stats.flows).encode(encoder.encode_descriptor(
            "lb_conntrack_entries",
            "Flows in the connection table.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(stats.active_flows).encode(encoder.encode_descriptor(
            "lb_conntrack_active_flows",
            "Entries of live flows; the others are over and give their SNAT ports to new flows.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(stats.flow_capacity).encode(encoder.encode_descriptor(
            "lb_conntrack_capacity",
            "Flows the connection table holds; when full, new flows are dropped (established ones are never evicted).",
            None,
            MetricType::Gauge,
        )?)?;
        let mut f = encoder.encode_descriptor(
            "lb_health_transitions",
            "Target state changes since the agent started.",
            None,
            MetricType::Counter,
        )?;
        for (change, n) in &stats.health_transitions {
            let (from, to) = change.split_once("->").unwrap_or((change, ""));
            counter(&mut f, &[("from", from), ("to", to)], *n)?;
        }
        Ok(())
    }
}

/// One counter sample of the family `family` (the proxy's metrics use it too).
pub(crate) fn counter(
    family: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> fmt::Result {
    ConstCounter::new(value).encode(family.encode_family(labels)?)
}

/// One gauge sample of the family `family` (the proxy's metrics use it too).
pub(crate) fn gauge(
    family: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    ConstGauge::new(value).encode(family.encode_family(labels)?)
}

/// A label whose value is built for the sample.
type Label = (&'static str, String);

fn listener_labels(l: &ListenerView) -> [Label; 4] {
    [
        ("listener", l.name.clone()),
        ("address", l.address.to_string()),
        ("protocol", l.protocol.clone()),
        ("target_group", l.target_group.clone()),
    ]
}

fn group_labels(g: &GroupView) -> [Label; 1] {
    [("target_group", g.name.clone())]
}

fn target_labels(t: &TargetView) -> [Label; 2] {
    [
        ("target_group", t.group.clone()),
        ("target", t.address.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::protocol::CountersView;

    fn target(group: &str, address: &str, state: TargetState, new_flows: u64) -> TargetView {
        TargetView {
            group: group.to_owned(),
            address: address.parse().expect("address"),
            weight: 2,
            effective_weight: 1.5,
            state,
            reason: None,
            description: None,
            in_service: state == TargetState::Healthy,
            last_check_ms: Some(2.5),
            checks: 4,
            active_flows: new_flows / 2,
            counters: CountersView {
                packets: new_flows * 10,
                bytes: new_flows * 1000,
                new_flows,
            },
        }
    }

    fn group(name: &str, targets: usize) -> GroupView {
        GroupView {
            name: name.to_owned(),
            protocol: "tcp".to_owned(),
            protocol_version: "http1".to_owned(),
            port: Some(8080),
            in_use: true,
            health_check: None,
            checked: true,
            deregistration_delay: "300s".to_owned(),
            slow_start: "0s".to_owned(),
            terminate_on_unhealthy: false,
            fail_open: true,
            failing_open: false,
            targets,
            in_service: 1,
            unhealthy: 1,
            table_version: 3,
        }
    }

    fn stats(targets: Vec<TargetView>) -> StatsView {
        StatsView {
            listeners: vec![ListenerView {
                name: "echo".to_owned(),
                address: "198.18.1.100:80".parse().expect("address"),
                protocol: "tcp".to_owned(),
                target_group: "echo".to_owned(),
                active_flows: 60,
                counters: CountersView {
                    packets: 600,
                    bytes: 60_000,
                    new_flows: 60,
                },
                settings: Default::default(),
            }],
            targets,
            verdicts: BTreeMap::from([
                ("fwd_to_backend".to_owned(), 590),
                ("drop_no_backend".to_owned(), 0),
            ]),
            flows: 70,
            active_flows: 60,
            flow_capacity: 4096,
            health_transitions: BTreeMap::from([("initial->healthy".to_owned(), 1)]),
        }
    }

    fn text(stats: &StatsView, groups: &[GroupView]) -> String {
        render(&MetricsInput {
            stats,
            groups,
            started: UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
            config_version: 7,
        })
        .expect("render")
    }

    /// The sample lines of `text`, without HELP and TYPE.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_family_keeps_its_name_and_type_in_the_text_format() {
        let stats = stats(vec![target(
            "echo",
            "198.18.0.21:8080",
            TargetState::Healthy,
            40,
        )]);
        let text = text(&stats, &[group("echo", 1)]);
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "lb_agent_build_info gauge",
                "lb_agent_start_time_seconds gauge",
                "lb_agent_config_version gauge",
                "lb_listener_packets_total counter",
                "lb_listener_bytes_total counter",
                "lb_listener_new_flows_total counter",
                "lb_listener_active_flows gauge",
                "lb_target_group_packets_total counter",
                "lb_target_group_bytes_total counter",
                "lb_target_group_new_flows_total counter",
                "lb_target_group_active_flows gauge",
                "lb_target_packets_total counter",
                "lb_target_bytes_total counter",
                "lb_target_new_flows_total counter",
                "lb_target_active_flows gauge",
                "lb_target_health_state gauge",
                "lb_target_health_check_duration_seconds gauge",
                "lb_target_in_service gauge",
                "lb_target_weight gauge",
                "lb_target_group_targets gauge",
                "lb_target_group_targets_in_service gauge",
                "lb_target_group_failing_open gauge",
                "lb_dataplane_packets_total counter",
                "lb_conntrack_entries gauge",
                "lb_conntrack_active_flows gauge",
                "lb_conntrack_capacity gauge",
                "lb_health_transitions_total counter",
            ]
        );
        // HELP as written here, once per family, right before its TYPE.
        assert!(text.contains(
            "# HELP lb_listener_bytes_total Bytes a listener received from clients.\n\
             # TYPE lb_listener_bytes_total counter\n"
        ));
        assert_eq!(text.matches("# HELP ").count(), types.len());
        // The text format 0.0.4 has no OpenMetrics end marker.
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn samples_carry_their_labels_and_values() {
        let stats = stats(vec![
            target("echo", "198.18.0.21:8080", TargetState::Healthy, 40),
            target("echo", "198.18.0.22:8080", TargetState::Unhealthy, 20),
            target("other", "198.18.0.23:8080", TargetState::Initial, 5),
        ]);
        let text = text(&stats, &[group("echo", 2), group("other", 1)]);
        let samples = samples(&text);
        let listener =
            r#"listener="echo",address="198.18.1.100:80",protocol="tcp",target_group="echo""#;
        let b1 = r#"target_group="echo",target="198.18.0.21:8080""#;
        let b2 = r#"target_group="echo",target="198.18.0.22:8080""#;
        for line in [
            format!(
                r#"lb_agent_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
            "lb_agent_start_time_seconds 1700000000.5".to_owned(),
            "lb_agent_config_version 7".to_owned(),
            format!("lb_listener_packets_total{{{listener}}} 600"),
            format!("lb_listener_bytes_total{{{listener}}} 60000"),
            format!("lb_listener_new_flows_total{{{listener}}} 60"),
            format!("lb_listener_active_flows{{{listener}}} 60"),
            // A group's sums are over its own targets only.
            r#"lb_target_group_packets_total{target_group="echo"} 600"#.to_owned(),
            r#"lb_target_group_bytes_total{target_group="echo"} 60000"#.to_owned(),
            r#"lb_target_group_new_flows_total{target_group="echo"} 60"#.to_owned(),
            r#"lb_target_group_active_flows{target_group="echo"} 30"#.to_owned(),
            r#"lb_target_group_new_flows_total{target_group="other"} 5"#.to_owned(),
            format!("lb_target_packets_total{{{b1}}} 400"),
            format!("lb_target_bytes_total{{{b1}}} 40000"),
            format!("lb_target_new_flows_total{{{b2}}} 20"),
            format!("lb_target_active_flows{{{b2}}} 10"),
            format!(r#"lb_target_health_state{{{b1},state="healthy"}} 1"#),
            format!(r#"lb_target_health_state{{{b1},state="unhealthy"}} 0"#),
            format!(r#"lb_target_health_state{{{b2},state="unhealthy"}} 1"#),
            format!("lb_target_health_check_duration_seconds{{{b1}}} 0.0025"),
            format!("lb_target_in_service{{{b1}}} 1"),
            format!("lb_target_in_service{{{b2}}} 0"),
            format!("lb_target_weight{{{b1}}} 1.5"),
            r#"lb_target_group_targets{target_group="echo"} 2"#.to_owned(),
            r#"lb_target_group_targets_in_service{target_group="echo"} 1"#.to_owned(),
            r#"lb_target_group_failing_open{target_group="echo"} 0"#.to_owned(),
            r#"lb_dataplane_packets_total{verdict="fwd_to_backend"} 590"#.to_owned(),
            r#"lb_dataplane_packets_total{verdict="drop_no_backend"} 0"#.to_owned(),
            "lb_conntrack_entries 70".to_owned(),
            "lb_conntrack_active_flows 60".to_owned(),
            "lb_conntrack_capacity 4096".to_owned(),
            r#"lb_health_transitions_total{from="initial",to="healthy"} 1"#.to_owned(),
        ] {
            assert!(samples.contains(&line.as_str()), "no `{line}` in:\n{text}");
        }
        // One health state at a time, six states per target.
        let states: Vec<&&str> = samples
            .iter()
            .filter(|l| l.starts_with("lb_target_health_state{"))
            .collect();
        assert_eq!(states.len(), 3 * STATES.len());
        assert_eq!(states.iter().filter(|l| l.ends_with(" 1")).count(), 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let name = "a\"b\\c\nd";
        let stats = stats(vec![target(
            name,
            "198.18.0.21:8080",
            TargetState::Healthy,
            1,
        )]);
        let text = text(&stats, &[group(name, 1)]);
        assert!(
            samples(&text).contains(&r#"lb_target_group_targets{target_group="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        // Every sample stays on one line.
        assert!(
            samples(&text).iter().all(|l| l.starts_with("lb_")),
            "{text}"
        );
    }

    #[test]
    fn an_agent_without_targets_still_describes_every_family() {
        let stats = StatsView {
            listeners: Vec::new(),
            targets: Vec::new(),
            verdicts: BTreeMap::new(),
            flows: 0,
            active_flows: 0,
            flow_capacity: 0,
            health_transitions: BTreeMap::new(),
        };
        let text = text(&stats, &[]);
        assert_eq!(text.matches("# TYPE ").count(), 27, "{text}");
        assert!(text.contains("# TYPE lb_target_new_flows_total counter\n"));
    }
}
