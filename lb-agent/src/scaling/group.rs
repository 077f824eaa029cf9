//! One auto scaling group's instances and the decisions that keep them at the desired
//! capacity: launches to fill it, replacement of instances that fail their health checks or
//! outlive `max_instance_lifetime`, and drain-aware scale-in (an instance leaves its target
//! groups first and stops only once nothing flows to it or the deregistration delay has
//! passed). Every change is an activity with EC2's cause.
//!
//! Pure, like the rest of `scaling`: the group engine observes the provider and the target
//! groups, hands what it saw to [`Group::step`] with the time, carries out the [`Action`]s it
//! returns and reports back ([`Group::launched`], [`Group::launch_failed`],
//! [`Group::stopped`]). Times are durations since the Unix epoch.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

pub use crate::config::ScalingProcess;

use jiff::Timestamp;

use super::{
    activity::{self, ActivityLog, ActivityStatus, OutOfService},
    capacity::{CapacityChange, Cause, GroupCapacity},
    lifecycle::{GroupLifecycle, LifecycleEvent, LifecycleHook, LifecycleTransition},
    maintenance::{self, InstanceMaintenancePolicy},
    refresh::{Refresh, RefreshError, RefreshStatus},
    termination::{self, Candidate, CurrentLaunch, LaunchSource, TerminationPolicy},
};
use crate::config::HealthCheckType;

/// What a group is set to do, from its config.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSettings {
    pub name: String,
    pub health_check_type: HealthCheckType,
    /// How long after its launch an instance's failed `ELB` checks are ignored.
    pub health_check_grace_period: Duration,
    /// How long a deregistered instance may keep flows before it is stopped anyway (the
    /// longest of its target groups' deregistration delays).
    pub deregistration_delay: Duration,
    pub termination_policies: Vec<TerminationPolicy>,
    pub new_instances_protected_from_scale_in: bool,
    pub max_instance_lifetime: Option<Duration>,
    /// How instances failing their health checks or outliving their lifetime are replaced
    /// (none: each terminated and replaced at once, AWS's default).
    pub maintenance_policy: Option<InstanceMaintenancePolicy>,
    /// What the group launches from now.
    pub current_launch: CurrentLaunch,
    /// Its lifecycle hooks: launching instances wait on those of `Launching` before they go
    /// into service, terminating ones (once drained) on those of `Terminating`.
    pub lifecycle_hooks: Vec<LifecycleHook>,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Launched, not yet seen running.
    Pending,
    /// Running, waiting on its launch lifecycle hooks (`Pending:Wait`).
    PendingWait,
    /// Running and registered in the group's target groups.
    InService,
    /// Drained, waiting on its terminate lifecycle hooks (`Terminating:Wait`).
    TerminatingWait,
    /// Deregistered, its flows finishing (since then).
    Draining { since: Duration },
    /// Asked to stop (SIGTERM, then the stop timeout); gone once the provider says so.
    Stopping,
}

/// One instance of the group.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub address: IpAddr,
    pub launched_from: LaunchSource,
    pub launched_at: Duration,
    pub phase: Phase,
    pub protected_from_scale_in: bool,
    /// When it went into service (its warmup counts from then).
    pub in_service_since: Option<Duration>,
    /// The activity that launches or terminates it, until that ends.
    activity: Option<u64>,
}

impl Instance {
    /// An instance a restarted agent takes over, as it was when the agent stopped.
    pub fn adopted(
        id: String,
        address: IpAddr,
        launched_from: LaunchSource,
        launched_at: Duration,
        phase: Phase,
        protected_from_scale_in: bool,
    ) -> Self {
        Self {
            id,
            address,
            launched_from,
            launched_at,
            // The agent cannot tell when an adopted instance went into service: from its
            // launch, so that a restart does not make every instance warm up again.
            in_service_since: (phase != Phase::Pending).then_some(launched_at),
            phase,
            protected_from_scale_in,
            activity: None,
        }
    }

    /// Its lifecycle state in EC2 Auto Scaling's words (`describe-auto-scaling-instances`).
    pub fn lifecycle_state(&self) -> &'static str {
        match self.phase {
            Phase::Pending => "Pending",
            Phase::PendingWait => "Pending:Wait",
            Phase::TerminatingWait => "Terminating:Wait",
            Phase::InService => "InService",
            Phase::Draining { .. } => "Terminating",
            Phase::Stopping => "Terminating:Proceed",
        }
    }
}

/// Why a user's request on a group was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("instance {instance} is not in auto scaling group {group}")]
    NoInstance { group: String, instance: String },
    #[error("instance {instance} is already terminating")]
    Terminating { instance: String },
    /// EC2's ValidationError for `terminate-instance-in-auto-scaling-group
    /// --should-decrement-desired-capacity` at the minimum size.
    #[error(
        "currently, desired capacity equals min size ({min}): terminating instance {instance} \
         without replacement would violate the group's min size constraint"
    )]
    BelowMin { instance: String, min: u32 },
}

/// What the engine is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Launch this many new instances (from the group's current launch template version).
    Launch { count: u32 },
    /// Register the instance in every target group of the group.
    Register { instance: String },
    /// Deregister the instance from every target group (its flows drain).
    Deregister { instance: String },
    /// Stop the instance (the provider's terminate).
    Stop { instance: String },
    /// The instance waits on the lifecycle hooks of `transition` (their commands run).
    HookWaiting {
        instance: String,
        transition: LifecycleTransition,
    },
}

/// What the engine saw since the last step.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// When the provider was asked: an instance launched after it is not judged by it.
    pub taken_at: Duration,
    /// Instances whose process runs (the provider's `describe`): EC2's health check.
    pub running: BTreeSet<String>,
    /// Instances a target group of the group reports unhealthy: ELB's health check.
    pub unhealthy_in_target_groups: BTreeSet<String>,
    /// Draining instances with no flow or request left.
    pub drained: BTreeSet<String>,
    /// Instances in service that a target group of the group has not yet found healthy
    /// (registered, checks undecided or failing): not yet ready to take the place of an
    /// instance being replaced.
    pub not_ready: BTreeSet<String>,
}

/// An auto scaling group's instances, capacity and activities.
#[derive(Debug, Clone)]
pub struct Group {
    settings: GroupSettings,
    capacity: GroupCapacity,
    instances: Vec<Instance>,
    /// Launches asked for and not yet reported (counted toward the capacity).
    launching: u32,
    /// The capacity before and after the launches under way, as their causes say it (EC2
    /// words a batch of launches "increasing the capacity from 0 to 2" in each).
    launch_batch: (u32, u32),
    /// The same for the instances a scale-in takes out together.
    shrink_batch: Option<(u32, u32)>,
    /// Processes suspended (`suspend`): each stops its part of `step`.
    suspended: BTreeSet<ScalingProcess>,
    /// The latest instance refresh, if any.
    refresh: Option<Refresh>,
    /// Where each instance is in its lifecycle hooks.
    lifecycle: GroupLifecycle,
    /// Instances in service marked for replacement, and why, in the order marked: they stay
    /// until the instance maintenance policy (or the refresh under way) lets them go.
    marked: Vec<(String, OutOfService)>,
    /// Failed launches in a row (a launch that failed, an instance that stopped right after
    /// its launch), the last one's time, and when the next launch may be asked for.
    launch_failures: u32,
    last_launch_failure: Duration,
    next_launch_at: Duration,
    activities: ActivityLog,
    /// Why the desired capacity last changed (EC2's sentence), until the group reaches it:
    /// the launches and terminations it causes start their cause with it, as EC2's do.
    capacity_cause: Option<String>,
}

impl Group {
    pub fn new(settings: GroupSettings, capacity: GroupCapacity) -> Self {
        // The config's checks refuse two hooks of one name first.
        let lifecycle = GroupLifecycle::new(settings.lifecycle_hooks.clone()).unwrap_or_default();
        Self {
            settings,
            capacity,
            instances: Vec::new(),
            launching: 0,
            launch_batch: (0, 0),
            shrink_batch: None,
            suspended: BTreeSet::new(),
            refresh: None,
            lifecycle,
            marked: Vec::new(),
            launch_failures: 0,
            last_launch_failure: Duration::ZERO,
            next_launch_at: Duration::ZERO,
            activities: ActivityLog::default(),
            capacity_cause: None,
        }
    }

    /// The group with a restored history (after an agent restart).
    #[must_use]
    pub fn with_activities(mut self, activities: ActivityLog) -> Self {
        self.activities = activities;
        self
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// New settings (a reload); instances keep their phases.
    pub fn set_settings(&mut self, settings: GroupSettings) {
        if settings.lifecycle_hooks != self.settings.lifecycle_hooks {
            // New hooks: waits under way start again on them.
            self.lifecycle =
                GroupLifecycle::new(settings.lifecycle_hooks.clone()).unwrap_or_default();
            for instance in &mut self.instances {
                match instance.phase {
                    Phase::InService => self.lifecycle.adopt_in_service(&instance.id),
                    Phase::PendingWait => instance.phase = Phase::Pending,
                    Phase::TerminatingWait => {
                        instance.phase = Phase::Draining {
                            since: Duration::ZERO,
                        }
                    }
                    _ => {}
                }
            }
        }
        self.settings = settings;
    }

    /// Takes over an instance launched before an agent restart, and the activity that was
    /// launching or terminating it.
    pub fn adopt(&mut self, mut instance: Instance) {
        if instance.phase == Phase::InService {
            self.lifecycle.adopt_in_service(&instance.id);
        }
        let description = match instance.phase {
            Phase::Pending | Phase::PendingWait => Some(activity::launch_description(&instance.id)),
            Phase::InService => None,
            Phase::Draining { .. } | Phase::TerminatingWait | Phase::Stopping => {
                Some(activity::termination_description(&instance.id))
            }
        };
        instance.activity = description.and_then(|d| self.activities.in_progress(&d));
        if !self.instances.iter().any(|i| i.id == instance.id) {
            self.instances.push(instance);
        }
    }

    /// After the adoptions of a restart: activities still in progress that no adopted
    /// instance carries on (a launch that never returned, an instance gone meanwhile) end,
    /// cancelled.
    pub fn end_orphaned_activities(&mut self, now: Duration) {
        let kept: Vec<u64> = self.instances.iter().filter_map(|i| i.activity).collect();
        self.activities.end_all_but(
            &kept,
            ActivityStatus::Cancelled,
            "the agent restarted before it ended",
            time(now),
        );
    }

    /// A change of the desired capacity (a policy, a scheduled action, `set-desired`, a
    /// config change): the next steps launch or terminate to reach it, their activities'
    /// causes starting with the change's.
    pub fn change_capacity(
        &mut self,
        capacity: GroupCapacity,
        change: &CapacityChange,
        now: Duration,
    ) {
        self.capacity = capacity;
        if change.from != change.to {
            self.capacity_cause = Some(activity::capacity_cause(time(now), change));
        }
    }

    /// `terminate-instance-in-auto-scaling-group`: `id` drains and stops; with `decrement`
    /// the desired capacity drops by one (refused at the minimum size), without it a
    /// replacement is launched.
    pub fn terminate_instance(
        &mut self,
        id: &str,
        decrement: bool,
        now: Duration,
    ) -> Result<Vec<Action>, GroupError> {
        let Some(instance) = self.instances.iter().find(|i| i.id == id) else {
            return Err(GroupError::NoInstance {
                group: self.settings.name.clone(),
                instance: id.to_owned(),
            });
        };
        if !matches!(instance.phase, Phase::Pending | Phase::InService) {
            return Err(GroupError::Terminating {
                instance: id.to_owned(),
            });
        }
        if decrement {
            let desired = self.capacity.desired();
            if desired <= self.capacity.min() {
                return Err(GroupError::BelowMin {
                    instance: id.to_owned(),
                    min: self.capacity.min(),
                });
            }
            let change = CapacityChange {
                from: desired,
                to: desired - 1,
                cause: Cause::UserTerminateWithDecrement {
                    instance: id.to_owned(),
                },
            };
            self.capacity = self.capacity.apply(&change);
        }
        let mut actions = Vec::new();
        self.take_out_of_service(id, &OutOfService::UserRequest, now, &mut actions);
        Ok(actions)
    }

    /// `set-instance-protection`: protects (or not) these instances from scale-in.
    pub fn set_protection(&mut self, ids: &[String], protected: bool) -> Result<(), GroupError> {
        if let Some(missing) = ids
            .iter()
            .find(|id| !self.instances.iter().any(|i| &i.id == *id))
        {
            return Err(GroupError::NoInstance {
                group: self.settings.name.clone(),
                instance: missing.clone(),
            });
        }
        for instance in &mut self.instances {
            if ids.contains(&instance.id) {
                instance.protected_from_scale_in = protected;
            }
        }
        Ok(())
    }

    pub fn capacity(&self) -> GroupCapacity {
        self.capacity
    }

    /// A new capacity (a policy, a scheduled action, `set-desired`); the next step acts on it.
    pub fn set_capacity(&mut self, capacity: GroupCapacity) {
        self.capacity = capacity;
    }

    /// The processes suspended.
    pub fn suspended(&self) -> &BTreeSet<ScalingProcess> {
        &self.suspended
    }

    /// Suspends (or, `false`, resumes) `processes` (EC2's `suspend-processes` and
    /// `resume-processes`).
    pub fn set_suspended(&mut self, processes: &[ScalingProcess], suspended: bool) {
        for p in processes {
            if suspended {
                self.suspended.insert(*p);
            } else {
                self.suspended.remove(p);
            }
        }
    }

    /// The latest instance refresh, in progress or ended.
    pub fn refresh(&self) -> Option<&Refresh> {
        self.refresh.as_ref()
    }

    /// `start-instance-refresh`: replaces every instance running now, in batches that keep
    /// the minimum healthy percentage of the desired capacity in service and launch ahead up
    /// to the maximum, `instance_warmup` apart.
    pub fn start_refresh(
        &mut self,
        healthy_percentages: (u32, u32),
        instance_warmup: Duration,
        now: Duration,
    ) -> Result<&Refresh, RefreshError> {
        if self.refresh.as_ref().is_some_and(Refresh::is_in_progress) {
            return Err(RefreshError::InProgress {
                group: self.settings.name.clone(),
            });
        }
        let to_replace = self
            .instances
            .iter()
            .filter(|i| matches!(i.phase, Phase::Pending | Phase::InService))
            .count();
        let id = self.refresh.as_ref().map_or(1, |r| r.id + 1);
        let refresh = Refresh::new(
            id,
            healthy_percentages,
            instance_warmup,
            u32::try_from(to_replace).unwrap_or(u32::MAX),
            now,
        )?;
        Ok(self.refresh.insert(refresh))
    }

    /// A refresh in progress when the agent stopped, taken up again.
    pub fn resume_refresh(&mut self, refresh: Refresh) {
        self.refresh = Some(refresh);
    }

    /// `cancel-instance-refresh`: the batch under way finishes, no other starts.
    pub fn cancel_refresh(&mut self, now: Duration) -> Result<&Refresh, RefreshError> {
        match self.refresh.as_mut() {
            Some(r) if r.is_in_progress() => {
                r.status = RefreshStatus::Cancelled;
                r.ended_at = Some(now);
                Ok(r)
            }
            _ => Err(RefreshError::NoneInProgress {
                group: self.settings.name.clone(),
            }),
        }
    }

    /// Launches asked for and not yet reported.
    pub fn launches_under_way(&self) -> u32 {
        self.launching
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    pub fn activities(&self) -> &ActivityLog {
        &self.activities
    }

    /// Instances that count toward the capacity: pending and in service, and launches under
    /// way.
    pub fn current_capacity(&self) -> u32 {
        let counted = self
            .instances
            .iter()
            .filter(|i| {
                matches!(
                    i.phase,
                    Phase::Pending | Phase::PendingWait | Phase::InService
                )
            })
            .count();
        u32::try_from(counted)
            .unwrap_or(u32::MAX)
            .saturating_add(self.launching)
    }

    /// The engine has begun launching `id` (one of the launches asked for): its activity is
    /// in progress from now.
    pub fn launch_begun(&mut self, id: &str, now: Duration) {
        let cause = self.launch_batch_cause(now);
        self.activities.start(
            &self.settings.name,
            activity::launch_description(id),
            cause,
            time(now),
        );
    }

    /// One launch the engine was asked for has started: the instance is pending.
    pub fn launched(
        &mut self,
        id: &str,
        address: IpAddr,
        launched_from: LaunchSource,
        now: Duration,
    ) {
        self.launching = self.launching.saturating_sub(1);
        let description = activity::launch_description(id);
        let activity = match self.activities.in_progress(&description) {
            Some(begun) => begun,
            None => {
                let cause = self.launch_batch_cause(now);
                self.activities
                    .start(&self.settings.name, description, cause, time(now))
            }
        };
        self.instances.push(Instance {
            id: id.to_owned(),
            address,
            launched_from,
            launched_at: now,
            phase: Phase::Pending,
            protected_from_scale_in: self.settings.new_instances_protected_from_scale_in,
            in_service_since: None,
            activity: Some(activity),
        });
    }

    /// One launch the engine was asked for failed (of instance `id`, when it had begun); a
    /// later step asks again.
    pub fn launch_failed(&mut self, id: Option<&str>, why: &str, now: Duration) {
        self.launching = self.launching.saturating_sub(1);
        let wait = self.launch_back_off(now);
        let why = if wait.is_zero() {
            format!("{why} (tried again at once)")
        } else {
            format!("{why} (the next launch in {} s)", wait.as_secs())
        };
        let begun = id.and_then(|id| {
            self.activities
                .in_progress(&activity::launch_description(id))
        });
        let activity = match begun {
            Some(begun) => begun,
            None => {
                let cause = self.launch_batch_cause(now);
                self.activities.start(
                    &self.settings.name,
                    "Launching a new instance.  Status Reason: the launch failed".to_owned(),
                    cause,
                    time(now),
                )
            }
        };
        self.activities
            .update(activity, ActivityStatus::Failed, Some(why), time(now));
    }

    /// The provider has stopped `id`: it leaves the group, its activity done.
    pub fn stopped(&mut self, id: &str, now: Duration) {
        self.lifecycle.forget(id);
        if let Some(at) = self.instances.iter().position(|i| i.id == id) {
            let instance = self.instances.remove(at);
            if let Some(activity) = instance.activity {
                self.activities
                    .update(activity, ActivityStatus::Successful, None, time(now));
            }
        }
    }

    /// Moves every instance on by what `seen` says, and says what to do: pending instances
    /// that run go into service; instances that fail their health check or outlive their
    /// lifetime, and those above the desired capacity, drain and stop; launches fill the
    /// desired capacity.
    pub fn step(&mut self, now: Duration, seen: &Observation) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut out_of_service: Vec<(String, OutOfService)> = Vec::new();
        let mut events: Vec<(String, LifecycleEvent)> = Vec::new();
        // Instances gone right after their launch, and whether one launched since the last
        // failure has run long enough to end the back-off.
        let mut exited_early = 0;
        let mut started = false;
        for instance in &mut self.instances {
            let running = seen.running.contains(&instance.id);
            let past_early_exit = seen.taken_at >= instance.launched_at + maintenance::EARLY_EXIT;
            if running && past_early_exit && instance.launched_at >= self.last_launch_failure {
                started = true;
            }
            match instance.phase {
                Phase::Pending if running => {
                    // Pending:Wait on the launch hooks; none: on into service at once.
                    instance.phase = Phase::PendingWait;
                    match self.lifecycle.launch(&instance.id, now) {
                        Some(event) => events.push((instance.id.clone(), event)),
                        None => actions.push(Action::HookWaiting {
                            instance: instance.id.clone(),
                            transition: LifecycleTransition::Launching,
                        }),
                    }
                }
                Phase::Pending | Phase::PendingWait | Phase::InService
                    if !running && instance.launched_at < seen.taken_at =>
                {
                    // The process is gone: EC2's check, no grace period (AWS applies the
                    // grace period to ELB checks of a running instance).
                    out_of_service.push((instance.id.clone(), OutOfService::Ec2HealthCheck));
                    if !past_early_exit {
                        exited_early += 1;
                    }
                }
                Phase::InService => {
                    let past_grace =
                        now >= instance.launched_at + self.settings.health_check_grace_period;
                    let lifetime_over = self
                        .settings
                        .max_instance_lifetime
                        .is_some_and(|l| now >= instance.launched_at + l);
                    if self.settings.health_check_type == HealthCheckType::Elb
                        && past_grace
                        && seen.unhealthy_in_target_groups.contains(&instance.id)
                    {
                        out_of_service.push((instance.id.clone(), OutOfService::ElbHealthCheck));
                    } else if lifetime_over {
                        out_of_service
                            .push((instance.id.clone(), OutOfService::MaxInstanceLifetime));
                    }
                }
                Phase::Draining { since } => {
                    if seen.drained.contains(&instance.id)
                        || now >= since + self.settings.deregistration_delay
                    {
                        // Drained: Terminating:Wait on the terminate hooks (AWS runs them
                        // after connection draining), or on to stop.
                        instance.phase = Phase::TerminatingWait;
                        match self.lifecycle.begin_termination(&instance.id, now) {
                            Ok(None) => actions.push(Action::HookWaiting {
                                instance: instance.id.clone(),
                                transition: LifecycleTransition::Terminating,
                            }),
                            Ok(Some(event)) => events.push((instance.id.clone(), event)),
                            // Not tracked (launched before a hook existed): no hook to wait on.
                            Err(_) => events
                                .push((instance.id.clone(), LifecycleEvent::TerminationProceeds)),
                        }
                    }
                }
                Phase::Pending | Phase::PendingWait | Phase::TerminatingWait | Phase::Stopping => {}
            }
        }
        if started {
            self.launch_failures = 0;
            self.next_launch_at = Duration::ZERO;
        }
        for _ in 0..exited_early {
            self.launch_back_off(now);
        }
        events.extend(self.lifecycle.expire(now));
        for (id, event) in events {
            self.lifecycle_event(&id, event, now, &mut actions, &mut out_of_service);
        }
        // Suspended HealthCheck or ReplaceUnhealthy: nothing is replaced for its health;
        // suspended Terminate: nothing is terminated at all.
        let replaces = !self.suspended.contains(&ScalingProcess::HealthCheck)
            && !self.suspended.contains(&ScalingProcess::ReplaceUnhealthy)
            && !self.suspended.contains(&ScalingProcess::Terminate);
        if replaces {
            for (id, why) in out_of_service {
                if matches!(
                    why,
                    OutOfService::ElbHealthCheck | OutOfService::MaxInstanceLifetime
                ) {
                    self.mark_for_replacement(&id, why);
                } else {
                    self.take_out_of_service(&id, &why, now, &mut actions);
                }
            }
        }
        self.refresh_step(now);
        let fill_to = self.replace_marked(now, seen, replaces, &mut actions);
        let desired = self.capacity.desired();
        let current = self.current_capacity();
        let terminates = !self.suspended.contains(&ScalingProcess::Terminate);
        let launches = !self.suspended.contains(&ScalingProcess::Launch);
        if current > fill_to && self.launching == 0 && terminates {
            // Instances marked for replacement go first.
            let excess = (current - fill_to) as usize;
            let mut chosen: Vec<String> = self
                .replaceable(replaces)
                .into_iter()
                .map(|(id, _)| id)
                .take(excess)
                .collect();
            let candidates: Vec<Candidate> = self
                .instances
                .iter()
                .filter(|i| {
                    i.phase == Phase::InService && !self.marked.iter().any(|(m, _)| *m == i.id)
                })
                .map(|i| Candidate {
                    instance_id: i.id.clone(),
                    launched_at: i.launched_at,
                    launched_from: i.launched_from.clone(),
                    protected_from_scale_in: i.protected_from_scale_in,
                })
                .collect();
            chosen.extend(termination::choose(
                excess - chosen.len(),
                &candidates,
                &self.settings.termination_policies,
                &self.settings.current_launch,
            ));
            self.shrink_batch = Some((current, fill_to));
            for id in chosen {
                self.take_out_of_service(&id, &OutOfService::Shrinking, now, &mut actions);
            }
            self.shrink_batch = None;
        } else if current < fill_to && launches && now >= self.next_launch_at {
            let count = fill_to - current;
            self.launch_batch = (current, desired.max(current + count));
            self.launching += count;
            actions.push(Action::Launch { count });
        } else if self.launching == 0 {
            self.capacity_cause = None;
        }
        actions
    }

    /// Moves an instance refresh on: once the batch under way is gone and its replacements
    /// are in service and warmed up, the next batch of instances launched before the refresh
    /// is marked for replacement (protected ones are left, as AWS's default
    /// `ScaleInProtectedInstances` `Ignore`), replaced within the refresh's minimum healthy
    /// percentage and the maintenance policy's maximum; none left: the refresh has succeeded.
    fn refresh_step(&mut self, now: Duration) {
        if self.suspended.contains(&ScalingProcess::InstanceRefresh)
            || self.suspended.contains(&ScalingProcess::Terminate)
        {
            return;
        }
        let current = self.current_capacity();
        let Some(refresh) = self.refresh.as_mut() else {
            return;
        };
        let instances = &self.instances;
        refresh
            .batch
            .retain(|id| instances.iter().any(|i| &i.id == id));
        if !refresh.batch.is_empty() {
            // The batch under way stays marked (again after an agent restart, which keeps
            // the batch but not the marks).
            let batch = refresh.batch.clone();
            for id in batch {
                if phase_of(&self.instances, &id) == Some(Phase::InService) {
                    self.mark_for_replacement(&id, OutOfService::InstanceRefresh);
                }
            }
            return;
        }
        if refresh.status != RefreshStatus::InProgress {
            return;
        }
        let settled = self.launching == 0
            && self.instances.iter().all(|i| i.phase == Phase::InService)
            && current >= self.capacity.desired()
            && self.instances.iter().all(|i| {
                i.launched_at < refresh.started_at
                    || i.in_service_since
                        .is_some_and(|since| now >= since + refresh.instance_warmup)
            });
        if !settled {
            return;
        }
        let mut old: Vec<(Duration, String)> = self
            .instances
            .iter()
            .filter(|i| i.launched_at < refresh.started_at && !i.protected_from_scale_in)
            .map(|i| (i.launched_at, i.id.clone()))
            .collect();
        if old.is_empty() {
            refresh.status = RefreshStatus::Successful;
            refresh.ended_at = Some(now);
            return;
        }
        old.sort();
        let size = refresh.batch_size(self.capacity.desired()) as usize;
        let batch: Vec<String> = old.into_iter().take(size).map(|(_, id)| id).collect();
        refresh.replaced += u32::try_from(batch.len()).unwrap_or(0);
        refresh.batch.clone_from(&batch);
        for id in batch {
            self.mark_for_replacement(&id, OutOfService::InstanceRefresh);
        }
    }

    /// The cause of a launch of the batch under way, in EC2's words.
    fn launch_batch_cause(&self, now: Duration) -> String {
        let (from, to) = self.launch_batch;
        self.with_capacity_cause(activity::launch_cause(time(now), from, to))
    }

    /// `cause`, after the capacity change that led to it if there is one.
    fn with_capacity_cause(&self, cause: String) -> String {
        match &self.capacity_cause {
            Some(first) => format!("{first}  {cause}"),
            None => cause,
        }
    }

    /// Starts `id`'s termination: it drains if it was registered, else stops at once. It is
    /// no longer marked for replacement (only instances in service are).
    fn take_out_of_service(
        &mut self,
        id: &str,
        why: &OutOfService,
        now: Duration,
        actions: &mut Vec<Action>,
    ) {
        self.marked.retain(|(m, _)| m != id);
        let before = self.current_capacity();
        let Some(instance) = self.instances.iter_mut().find(|i| i.id == id) else {
            return;
        };
        let was = instance.phase;
        if !matches!(was, Phase::Pending | Phase::PendingWait | Phase::InService) {
            return;
        }
        if let Some(launch) = instance.activity.take() {
            self.activities.update(
                launch,
                ActivityStatus::Failed,
                Some("the instance stopped before it went into service".to_owned()),
                time(now),
            );
        }
        let (before, after) = self
            .shrink_batch
            .unwrap_or((before, before.saturating_sub(1)));
        let mut cause = activity::termination_cause(time(now), id, why, before, after);
        if *why == OutOfService::Shrinking
            && let Some(first) = &self.capacity_cause
        {
            cause = format!("{first}  {cause}");
        }
        instance.activity = Some(self.activities.start(
            &self.settings.name,
            activity::termination_description(id),
            cause,
            time(now),
        ));
        if was == Phase::InService {
            instance.phase = Phase::Draining { since: now };
            actions.push(Action::Deregister {
                instance: id.to_owned(),
            });
            return;
        }
        // Never registered: nothing to drain; the terminate hooks, or a stop.
        instance.phase = Phase::TerminatingWait;
        match self.lifecycle.begin_termination(id, now) {
            Ok(None) => actions.push(Action::HookWaiting {
                instance: id.to_owned(),
                transition: LifecycleTransition::Terminating,
            }),
            Ok(Some(_)) | Err(_) => {
                let mut ignored = Vec::new();
                self.lifecycle_event(
                    id,
                    LifecycleEvent::TerminationProceeds,
                    now,
                    actions,
                    &mut ignored,
                );
            }
        }
    }
}

/// The phase of instance `id`, if it is one of `instances`.
fn phase_of(instances: &[Instance], id: &str) -> Option<Phase> {
    instances.iter().find(|i| i.id == id).map(|i| i.phase)
}

/// `now` as an instant for the activity history.
fn time(now: Duration) -> Timestamp {
    let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let nanos = i32::try_from(now.subsec_nanos()).unwrap_or(0);
    Timestamp::new(seconds, nanos).unwrap_or(Timestamp::MAX)
}

mod hooks;
mod replacement;
#[cfg(test)]
mod tests;
