//! What the groups' scaling controllers (`scaling::controller`) are fed: each instance's
//! reading (CPU from its provider, requests from the L7 proxy's counters, flows and bytes
//! from the data plane's) and where each instance is, once a second.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use crate::{
    config::{AutoScalingGroup, PolicyKind, ScalingMetric},
    protocol::TargetView,
    proxy::metrics::ProxyMetrics,
    scaling::{
        controller::{GroupState, InstancePhase, InstanceSample},
        group::{Group, Phase},
        provider::InstanceStatus,
    },
};

/// Whether any policy or alarm of `group` reads the data plane's counters (a walk of the
/// connection table for active flows: done only for groups that need it).
pub fn reads_data_plane(group: &AutoScalingGroup) -> bool {
    let from_data_plane = |m: ScalingMetric| {
        matches!(
            m,
            ScalingMetric::ActiveFlowsPerTarget
                | ScalingMetric::NewFlowsPerTarget
                | ScalingMetric::BytesPerTarget
        )
    };
    group.alarms.iter().any(|a| from_data_plane(a.metric))
        || group.policies.iter().any(|p| match &p.kind {
            PolicyKind::TargetTracking { metric, .. } => from_data_plane(*metric),
            _ => false,
        })
}

/// The readings of `group`'s instances in service: `registrations` gives each instance's
/// (target group, target) pairs; `targets` the data plane's view of each target (absent when
/// not read); counters are summed over an instance's registrations.
pub fn samples(
    group: &Group,
    statuses: &HashMap<String, InstanceStatus>,
    registrations: impl Fn(&crate::scaling::group::Instance) -> Vec<(String, SocketAddr)>,
    proxy: Option<&ProxyMetrics>,
    targets: &HashMap<(String, SocketAddr), TargetView>,
) -> Vec<InstanceSample> {
    group
        .instances()
        .iter()
        .filter(|i| i.phase == Phase::InService)
        .map(|i| {
            let mut sample = InstanceSample {
                instance: i.id.clone(),
                in_service_since: i.in_service_since,
                cpu_utilization: statuses.get(&i.id).and_then(|s| s.cpu_utilization),
                requests: 0,
                new_flows: 0,
                bytes: 0,
                active_flows: 0,
            };
            for (tg, target) in registrations(i) {
                if let Some(proxy) = proxy {
                    sample.requests += proxy.target_requests(&tg, target);
                }
                if let Some(view) = targets.get(&(tg, target)) {
                    sample.new_flows += view.counters.new_flows;
                    sample.bytes += view.counters.bytes;
                    sample.active_flows += view.active_flows;
                }
            }
            sample
        })
        .collect()
}

/// `group` as its controller sees it: sizes, where each instance is (launches under way
/// pending), whether an activity runs and when the last one ended.
pub fn group_state(group: &Group) -> GroupState {
    let mut instances: Vec<InstancePhase> = group
        .instances()
        .iter()
        .map(|i| match i.phase {
            Phase::Pending | Phase::PendingWait => InstancePhase::Pending,
            Phase::InService => InstancePhase::InService {
                since: i.in_service_since.unwrap_or(i.launched_at),
            },
            Phase::Draining { .. } | Phase::TerminatingWait | Phase::Stopping => {
                InstancePhase::Terminating
            }
        })
        .collect();
    instances.extend((0..group.launches_under_way()).map(|_| InstancePhase::Pending));
    let activities: Vec<_> = group.activities().newest_first().collect();
    GroupState {
        capacity: group.capacity(),
        instances,
        scaling_activity_in_progress: activities.iter().any(|a| !a.status.is_final()),
        last_scaling_activity_end: activities
            .iter()
            .filter_map(|a| a.end)
            .max()
            .map(|end| Duration::from_secs(u64::try_from(end.as_second()).unwrap_or(0))),
        suspended: group.suspended().clone(),
    }
}
