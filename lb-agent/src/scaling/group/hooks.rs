//! A group's lifecycle hooks at work (`scaling::lifecycle` keeps each instance's waits): what
//! a settled wait does to the instance, and the `complete-lifecycle-action` and
//! `record-lifecycle-action-heartbeat` verbs.

use std::time::Duration;

use super::{Action, Group, OutOfService, Phase, ScalingProcess, time};
use crate::scaling::{
    activity::ActivityStatus,
    lifecycle::{LifecycleActionResult, LifecycleError, LifecycleEvent},
};

impl Group {
    /// `complete-lifecycle-action`: `instance`'s wait on `hook` ends with `result`; what
    /// the group does about it.
    pub fn complete_lifecycle_action(
        &mut self,
        instance: &str,
        hook: &str,
        result: LifecycleActionResult,
        now: Duration,
    ) -> Result<Vec<Action>, LifecycleError> {
        let mut actions = Vec::new();
        let mut out_of_service = Vec::new();
        if let Some(event) = self.lifecycle.complete(instance, hook, result)? {
            self.lifecycle_event(instance, event, now, &mut actions, &mut out_of_service);
        }
        for (id, why) in out_of_service {
            self.take_out_of_service(&id, &why, now, &mut actions);
        }
        Ok(actions)
    }

    /// `record-lifecycle-action-heartbeat`: `instance`'s wait on `hook` restarts its timeout;
    /// the new deadline.
    pub fn record_heartbeat(
        &mut self,
        instance: &str,
        hook: &str,
        now: Duration,
    ) -> Result<Duration, LifecycleError> {
        self.lifecycle.record_heartbeat(instance, hook, now)
    }

    /// The hooks of an instance settled: into service (and registered), out of service
    /// (an abandoned launch, `out_of_service` collects it), or on to stop.
    pub(super) fn lifecycle_event(
        &mut self,
        id: &str,
        event: LifecycleEvent,
        now: Duration,
        actions: &mut Vec<Action>,
        out_of_service: &mut Vec<(String, OutOfService)>,
    ) {
        let registers = !self.suspended.contains(&ScalingProcess::AddToLoadBalancer);
        let Some(instance) = self.instances.iter_mut().find(|i| i.id == id) else {
            return;
        };
        match event {
            LifecycleEvent::LaunchProceeds if instance.phase == Phase::PendingWait => {
                instance.phase = Phase::InService;
                instance.in_service_since = Some(now);
                let _ = self.lifecycle.mark_in_service(id);
                // Suspended AddToLoadBalancer: in service, not registered (EC2's rule:
                // register it by hand after resuming).
                if registers {
                    actions.push(Action::Register {
                        instance: id.to_owned(),
                    });
                }
                if let Some(activity) = instance.activity.take() {
                    self.activities
                        .update(activity, ActivityStatus::Successful, None, time(now));
                }
            }
            LifecycleEvent::LaunchAbandoned { .. } => {
                out_of_service.push((id.to_owned(), OutOfService::LifecycleAbandon));
            }
            LifecycleEvent::TerminationProceeds if instance.phase == Phase::TerminatingWait => {
                instance.phase = Phase::Stopping;
                let _ = self.lifecycle.mark_terminated(id);
                actions.push(Action::Stop {
                    instance: id.to_owned(),
                });
            }
            _ => {}
        }
    }
}
