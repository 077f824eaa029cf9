//! The groups as the API shows them: published after each change for `asg list`,
//! `asg describe` and `asg activities` (read without waiting for the engine).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use jiff::Timestamp;

use super::{Engine, Running, Views};
use crate::{
    config::{ProviderKind, TemplateVersion},
    protocol::scaling::{
        ActivityView, AlarmView, AsgInstanceView, AsgView, MaintenancePolicyView, RefreshView,
    },
    scaling::{
        group::{Phase, ScalingProcess},
        refresh::Refresh,
        termination::LaunchSource,
    },
};

impl Engine {
    /// Publishes the groups as the API shows them.
    pub(super) fn publish(&self) {
        let mut views = Views::default();
        for (name, running) in &self.groups {
            views.groups.push(self.view(running));
            views.activities.insert(
                name.clone(),
                running
                    .group
                    .activities()
                    .newest_first()
                    .map(activity_view)
                    .collect(),
            );
        }
        self.views.send_replace(Arc::new(views));
    }

    fn view(&self, running: &Running) -> AsgView {
        let config = &running.config;
        let capacity = running.group.capacity();
        AsgView {
            name: config.name.clone(),
            min_size: capacity.min(),
            desired_capacity: capacity.desired(),
            max_size: capacity.max(),
            launch_template: config.launch_template.as_ref().map(|t| {
                let version = match t.version {
                    TemplateVersion::Default => "$Default".to_owned(),
                    TemplateVersion::Latest => "$Latest".to_owned(),
                    TemplateVersion::Number(n) => n.to_string(),
                };
                format!("{} {version}", t.name)
            }),
            launch_configuration: config.launch_configuration.clone(),
            provider: match config.provider {
                ProviderKind::Local => "local",
                ProviderKind::Exec => "exec",
            }
            .to_owned(),
            target_groups: config.target_groups.clone(),
            health_check_type: format!("{:?}", config.health_check_type).to_uppercase(),
            health_check_grace_period_seconds: config.health_check_grace_period.as_secs(),
            default_cooldown_seconds: config.default_cooldown.as_secs(),
            termination_policies: config
                .termination_policies
                .iter()
                .map(|p| format!("{p:?}"))
                .collect(),
            new_instances_protected_from_scale_in: config.new_instances_protected_from_scale_in,
            suspended_processes: process_names(running.group.suspended()),
            instance_maintenance_policy: running.group.settings().maintenance_policy.map(|m| {
                MaintenancePolicyView {
                    min_healthy_percentage: m.min_healthy_percentage(),
                    max_healthy_percentage: m.max_healthy_percentage(),
                }
            }),
            launches_wait_until: running.group.launches_wait_until().map(rfc3339),
            instance_refresh: running
                .group
                .refresh()
                .map(|r| refresh_view(&config.name, r)),
            instances: running
                .group
                .instances()
                .iter()
                .map(|i| {
                    let status = self.statuses.get(&i.id);
                    let (template, version, configuration) = match &i.launched_from {
                        LaunchSource::LaunchTemplate { name, version } => {
                            (Some(name.clone()), Some(*version), None)
                        }
                        LaunchSource::LaunchConfiguration { name } => {
                            (None, None, Some(name.clone()))
                        }
                    };
                    AsgInstanceView {
                        instance_id: i.id.clone(),
                        address: i.address,
                        lifecycle_state: i.lifecycle_state().to_owned(),
                        health_status: if running.unhealthy.contains(&i.id)
                            || (i.phase != Phase::Pending && status.is_some_and(|s| !s.running))
                        {
                            "Unhealthy"
                        } else {
                            "Healthy"
                        }
                        .to_owned(),
                        launch_template: template,
                        launch_template_version: version,
                        launch_configuration: configuration,
                        protected_from_scale_in: i.protected_from_scale_in,
                        launched_at: rfc3339(i.launched_at),
                        cpu_utilization: status.and_then(|s| s.cpu_utilization),
                        pid: status.and_then(|s| s.pid),
                    }
                })
                .collect(),
            alarms: running
                .controller
                .as_ref()
                .map(|c| {
                    c.alarms()
                        .into_iter()
                        .map(|a| AlarmView {
                            name: a.name,
                            metric: a.metric.as_str().to_owned(),
                            state: a.state.to_string(),
                            reason: a.reason,
                            last_value: a.last_value,
                            threshold: a.threshold,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            deleting: running.deleting,
        }
    }
}

fn activity_view(a: &crate::scaling::activity::Activity) -> ActivityView {
    ActivityView {
        activity_id: a.id,
        group: a.group.clone(),
        description: a.description.clone(),
        cause: a.cause.clone(),
        status: a.status.as_str().to_owned(),
        status_message: a.status_message.clone(),
        start_time: a.start.to_string(),
        end_time: a.end.map(|e| e.to_string()),
        progress: a.progress,
    }
}

/// A refresh as the API shows it.
pub(super) fn refresh_view(group: &str, r: &Refresh) -> RefreshView {
    RefreshView {
        group: group.to_owned(),
        instance_refresh_id: r.id,
        status: r.status.as_str().to_owned(),
        percentage_complete: r.percentage_complete(),
        instances_to_update: r.to_replace.saturating_sub(r.replaced)
            + u32::try_from(r.batch.len()).unwrap_or(0),
        min_healthy_percentage: r.min_healthy_percentage,
        max_healthy_percentage: r.max_healthy_percentage,
        instance_warmup_seconds: r.instance_warmup.as_secs(),
        start_time: rfc3339(r.started_at),
        end_time: r.ended_at.map(rfc3339),
    }
}

/// Processes by EC2's names (`AZRebalance` as EC2 spells it).
pub(super) fn process_names(processes: &BTreeSet<ScalingProcess>) -> Vec<String> {
    processes
        .iter()
        .map(|p| match p {
            ScalingProcess::AzRebalance => "AZRebalance".to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

pub(super) fn rfc3339(since_epoch: Duration) -> String {
    Timestamp::from_second(i64::try_from(since_epoch.as_secs()).unwrap_or(0))
        .map(|t| t.to_string())
        .unwrap_or_default()
}
