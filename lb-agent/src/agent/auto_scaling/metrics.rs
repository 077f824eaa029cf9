//! The auto scaling groups in `/metrics`: each group's sizes, its instances by lifecycle
//! state, its alarms' states, and its activities so far (a counter).

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, prometheus_text},
    metrics::MetricType,
    registry::Registry,
};

use super::Views;
use crate::metrics::{MetricsError, counter, gauge};

/// Appends the groups' families to `out` (Prometheus text format).
pub fn render(views: Arc<Views>, out: &mut String) -> Result<(), MetricsError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(views)));
    prometheus_text::encode(out, &registry)?;
    Ok(())
}

#[derive(Debug)]
struct Scrape(Arc<Views>);

/// Every lifecycle state a group shows, so each has a sample (0 included).
const STATES: [&str; 6] = [
    "Pending",
    "Pending:Wait",
    "InService",
    "Terminating",
    "Terminating:Wait",
    "Terminating:Proceed",
];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let groups = &self.0.groups;
        for (name, help, value) in [
            (
                "lb_asg_min_size",
                "An auto scaling group's minimum size.",
                (|g: &crate::protocol::scaling::AsgView| g.min_size) as fn(&_) -> u32,
            ),
            (
                "lb_asg_desired_capacity",
                "An auto scaling group's desired capacity.",
                |g| g.desired_capacity,
            ),
            (
                "lb_asg_max_size",
                "An auto scaling group's maximum size.",
                |g| g.max_size,
            ),
        ] {
            let mut f = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for g in groups {
                gauge(&mut f, &[("group", g.name.as_str())], i64::from(value(g)))?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "lb_asg_instances",
            "An auto scaling group's instances by lifecycle state.",
            None,
            MetricType::Gauge,
        )?;
        for g in groups {
            for state in STATES {
                let n = g
                    .instances
                    .iter()
                    .filter(|i| i.lifecycle_state == state)
                    .count();
                gauge(
                    &mut f,
                    &[("group", g.name.as_str()), ("lifecycle_state", state)],
                    i64::try_from(n).unwrap_or(i64::MAX),
                )?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "lb_asg_alarm_state",
            "1 for the state an auto scaling group's alarm is in (OK, ALARM, INSUFFICIENT_DATA).",
            None,
            MetricType::Gauge,
        )?;
        for g in groups {
            for a in &g.alarms {
                for state in ["OK", "ALARM", "INSUFFICIENT_DATA"] {
                    gauge(
                        &mut f,
                        &[
                            ("group", g.name.as_str()),
                            ("alarm", a.name.as_str()),
                            ("state", state),
                        ],
                        i64::from(a.state == state),
                    )?;
                }
            }
        }
        let mut f = encoder.encode_descriptor(
            "lb_asg_activities",
            "Scaling activities (launches and terminations) a group has started.",
            None,
            MetricType::Counter,
        )?;
        for g in groups {
            let started = self
                .0
                .activities
                .get(&g.name)
                .and_then(|a| a.first())
                .map_or(0, |newest| newest.activity_id + 1);
            counter(&mut f, &[("group", g.name.as_str())], started)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::scaling::{ActivityView, AlarmView, AsgInstanceView, AsgView};

    fn group() -> AsgView {
        AsgView {
            name: "web-asg".into(),
            min_size: 1,
            desired_capacity: 3,
            max_size: 4,
            launch_template: Some("web $Default".into()),
            launch_configuration: None,
            provider: "local".into(),
            target_groups: vec!["web".into()],
            health_check_type: "ELB".into(),
            health_check_grace_period_seconds: 300,
            default_cooldown_seconds: 300,
            termination_policies: vec!["Default".into()],
            new_instances_protected_from_scale_in: false,
            suspended_processes: vec![],
            instances: ["InService", "InService", "Pending"]
                .iter()
                .enumerate()
                .map(|(n, state)| AsgInstanceView {
                    instance_id: format!("i-{n:017x}"),
                    address: "198.18.8.2".parse().unwrap(),
                    lifecycle_state: (*state).into(),
                    health_status: "Healthy".into(),
                    launch_template: Some("web".into()),
                    launch_template_version: Some(1),
                    launch_configuration: None,
                    protected_from_scale_in: false,
                    launched_at: "2026-12-01T00:00:00Z".into(),
                    cpu_utilization: None,
                    pid: None,
                })
                .collect(),
            alarms: vec![AlarmView {
                name: "busy".into(),
                metric: "cpu_utilization".into(),
                state: "ALARM".into(),
                reason: String::new(),
                last_value: Some(90.0),
                threshold: 70.0,
            }],
            instance_refresh: None,
            instance_maintenance_policy: None,
            launches_wait_until: None,
            deleting: false,
        }
    }

    #[test]
    fn sizes_instances_by_state_alarm_states_and_activities_are_exposed() {
        let mut views = Views::default();
        views.groups.push(group());
        views.activities.insert(
            "web-asg".into(),
            vec![ActivityView {
                activity_id: 6,
                group: "web-asg".into(),
                description: String::new(),
                cause: String::new(),
                status: "Successful".into(),
                status_message: None,
                start_time: String::new(),
                end_time: None,
                progress: 100,
            }],
        );
        let mut text = String::new();
        render(Arc::new(views), &mut text).unwrap();
        for line in [
            "lb_asg_desired_capacity{group=\"web-asg\"} 3",
            "lb_asg_max_size{group=\"web-asg\"} 4",
            "lb_asg_instances{group=\"web-asg\",lifecycle_state=\"InService\"} 2",
            "lb_asg_instances{group=\"web-asg\",lifecycle_state=\"Pending\"} 1",
            "lb_asg_instances{group=\"web-asg\",lifecycle_state=\"Terminating\"} 0",
            "lb_asg_alarm_state{group=\"web-asg\",alarm=\"busy\",state=\"ALARM\"} 1",
            "lb_asg_alarm_state{group=\"web-asg\",alarm=\"busy\",state=\"OK\"} 0",
            "lb_asg_activities_total{group=\"web-asg\"} 7",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
