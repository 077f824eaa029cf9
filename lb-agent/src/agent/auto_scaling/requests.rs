//! The API's `asg` requests: reads answered from the published views, changes (set-desired,
//! terminate-instance, set-protection) handed to the engine and answered once made.

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Engine, Views, now,
    views::{process_names, refresh_view},
};
use crate::{
    protocol::{
        Answer, ApiError, Request,
        scaling::{
            DesiredCapacitySet, InstanceTerminating, LifecycleActionView, ProcessesSet,
            ProtectionSet,
        },
    },
    scaling::{
        capacity::Cooldown,
        group::ScalingProcess,
        lifecycle::{LifecycleActionResult, LifecycleError},
        refresh::{DEFAULT_MAX_HEALTHY_PERCENTAGE, DEFAULT_MIN_HEALTHY_PERCENTAGE, RefreshError},
    },
};
use std::sync::Arc;

/// The API's side of the groups: cheap to clone.
#[derive(Clone)]
pub struct ScalingHandle {
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) views: watch::Receiver<Arc<Views>>,
}

impl ScalingHandle {
    /// The groups as the last step left them.
    pub fn views(&self) -> Arc<Views> {
        self.views.borrow().clone()
    }

    /// Answers an `asg` request: reads from the last views, changes through the engine.
    pub async fn call(&self, request: Request) -> Result<Answer, ApiError> {
        let views = self.views.borrow().clone();
        match request {
            Request::AsgList => return Ok(Answer::AutoScalingGroups(views.groups.clone())),
            Request::AsgDescribe { group } => {
                return views
                    .groups
                    .iter()
                    .find(|g| g.name == group)
                    .map(|g| Answer::AutoScalingGroup(Box::new(g.clone())))
                    .ok_or_else(|| no_group(&group));
            }
            Request::AsgActivities { group } => {
                return views
                    .activities
                    .get(&group)
                    .map(|a| Answer::Activities(a.clone()))
                    .ok_or_else(|| no_group(&group));
            }
            _ => {}
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request { request, reply })
            .map_err(|_| stopping())?;
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }
}

fn no_group(name: &str) -> ApiError {
    ApiError::new(404, format!("no auto scaling group `{name}`"))
}

fn stopping() -> ApiError {
    ApiError::new(503, "the agent is stopping")
}

/// A change asked through the API, answered once done.
pub enum Command {
    Request {
        request: Request,
        reply: oneshot::Sender<Result<Answer, ApiError>>,
    },
}

impl Engine {
    /// An `asg` change.
    pub(super) async fn request(&mut self, request: Request) -> Result<Answer, ApiError> {
        let now = now();
        let suspend = matches!(request, Request::AsgSuspend { .. });
        match request {
            Request::AsgSetDesired {
                group,
                desired_capacity,
                honor_cooldown,
            } => {
                let running = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| no_group(&group))?;
                let capacity = running.group.capacity();
                let change = capacity
                    .set_desired(desired_capacity, honor_cooldown, &running.cooldown, now)
                    .map_err(|e| ApiError::new(422, format!("group {group}: {e}")))?;
                let previous = capacity.desired();
                running
                    .group
                    .change_capacity(capacity.apply(&change), &change, now);
                running.cooldown = Cooldown::started(now, running.config.default_cooldown);
                tracing::info!(
                    group,
                    from = previous,
                    to = desired_capacity,
                    "desired capacity set"
                );
                Ok(Answer::DesiredCapacitySet(DesiredCapacitySet {
                    group,
                    previous_desired_capacity: previous,
                    desired_capacity,
                }))
            }
            Request::AsgTerminateInstance {
                instance,
                decrement,
            } => {
                let (name, running) = self
                    .groups
                    .iter_mut()
                    .find(|(_, r)| r.group.instances().iter().any(|i| i.id == instance))
                    .ok_or_else(|| {
                        ApiError::new(
                            404,
                            format!("no instance {instance} in any auto scaling group"),
                        )
                    })?;
                let name = name.clone();
                let actions = running
                    .group
                    .terminate_instance(&instance, decrement, now)
                    .map_err(|e| ApiError::new(422, e.to_string()))?;
                let desired_capacity = running.group.capacity().desired();
                for action in actions {
                    self.act(&name, action).await;
                }
                Ok(Answer::InstanceTerminating(InstanceTerminating {
                    group: name,
                    instance_id: instance,
                    decremented: decrement,
                    desired_capacity,
                }))
            }
            Request::AsgStartRefresh {
                group,
                min_healthy_percentage,
                max_healthy_percentage,
                instance_warmup_seconds,
            } => {
                let running = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| no_group(&group))?;
                // AWS's defaults: the instance maintenance policy's percentages, else 90% and
                // 100%; the group's default instance warmup, else its health check grace
                // period.
                let policy = running.config.instance_maintenance_policy;
                let warmup = instance_warmup_seconds.map_or(
                    running
                        .config
                        .default_instance_warmup
                        .unwrap_or(running.config.health_check_grace_period),
                    std::time::Duration::from_secs,
                );
                let refresh = running
                    .group
                    .start_refresh(
                        (
                            min_healthy_percentage
                                .or(policy.map(|m| m.min_healthy_percentage))
                                .unwrap_or(DEFAULT_MIN_HEALTHY_PERCENTAGE),
                            max_healthy_percentage
                                .or(policy.map(|m| m.max_healthy_percentage))
                                .unwrap_or(DEFAULT_MAX_HEALTHY_PERCENTAGE),
                        ),
                        warmup,
                        now,
                    )
                    .map_err(|e| match e {
                        RefreshError::InProgress { .. } => ApiError::new(409, e.to_string()),
                        e => ApiError::new(422, e.to_string()),
                    })?;
                tracing::info!(
                    group,
                    id = refresh.id,
                    to_replace = refresh.to_replace,
                    "instance refresh started"
                );
                Ok(Answer::InstanceRefresh(refresh_view(&group, refresh)))
            }
            Request::AsgCancelRefresh { group } => {
                let running = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| no_group(&group))?;
                let refresh = running
                    .group
                    .cancel_refresh(now)
                    .map_err(|e| ApiError::new(404, e.to_string()))?;
                Ok(Answer::InstanceRefresh(refresh_view(&group, refresh)))
            }
            Request::AsgSuspend { group, processes } | Request::AsgResume { group, processes } => {
                let running = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| no_group(&group))?;
                let processes = parse_processes(&processes)?;
                running.group.set_suspended(&processes, suspend);
                Ok(Answer::ProcessesSet(ProcessesSet {
                    suspended_processes: process_names(running.group.suspended()),
                    group,
                }))
            }
            Request::AsgCompleteLifecycleAction {
                group,
                hook,
                instance,
                result,
            } => {
                let parsed: LifecycleActionResult = result
                    .parse()
                    .map_err(|e: LifecycleError| ApiError::bad(e.to_string()))?;
                let running = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| no_group(&group))?;
                let actions = running
                    .group
                    .complete_lifecycle_action(&instance, &hook, parsed, now)
                    .map_err(lifecycle_refusal)?;
                tracing::info!(group, hook, instance, result, "lifecycle action completed");
                for action in actions {
                    self.act(&group, action).await;
                }
                Ok(Answer::LifecycleAction(LifecycleActionView {
                    group,
                    hook,
                    instance_id: instance,
                    result: Some(result),
                    timeout_at: None,
                }))
            }
            Request::AsgRecordHeartbeat {
                group,
                hook,
                instance,
            } => {
                let running = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| no_group(&group))?;
                let deadline = running
                    .group
                    .record_heartbeat(&instance, &hook, now)
                    .map_err(lifecycle_refusal)?;
                Ok(Answer::LifecycleAction(LifecycleActionView {
                    group,
                    hook,
                    instance_id: instance,
                    result: None,
                    timeout_at: Some(super::views::rfc3339(deadline)),
                }))
            }
            Request::AsgSetProtection {
                group,
                instances,
                protected,
            } => {
                let running = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| no_group(&group))?;
                running
                    .group
                    .set_protection(&instances, protected)
                    .map_err(|e| ApiError::new(404, e.to_string()))?;
                Ok(Answer::ProtectionSet(ProtectionSet {
                    group,
                    instances,
                    protected_from_scale_in: protected,
                }))
            }
            other => Err(ApiError::new(
                500,
                format!("not an auto scaling change: {other:?}"),
            )),
        }
    }
}

/// EC2's process names (`Launch`, `AZRebalance`...); none named: every process.
fn parse_processes(names: &[String]) -> Result<Vec<ScalingProcess>, ApiError> {
    const ALL: [&str; 9] = [
        "Launch",
        "Terminate",
        "HealthCheck",
        "ReplaceUnhealthy",
        "AlarmNotification",
        "ScheduledActions",
        "AddToLoadBalancer",
        "InstanceRefresh",
        "AZRebalance",
    ];
    let names: Vec<&str> = if names.is_empty() {
        ALL.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    names
        .into_iter()
        .map(|name| {
            serde_json::from_value(serde_json::Value::String(name.to_owned()))
                .map_err(|_| ApiError::bad(format!("`{name}` is no process: {}", ALL.join(", "))))
        })
        .collect()
}

/// A refused lifecycle request: 404 for an unknown hook or instance, 422 for one not waiting.
fn lifecycle_refusal(e: LifecycleError) -> ApiError {
    let status = match e {
        LifecycleError::UnknownHook { .. } | LifecycleError::UnknownInstance { .. } => 404,
        _ => 422,
    };
    ApiError::new(status, e.to_string())
}
