//! One group's scaling controller: instance samples become CloudWatch-like datapoints of the
//! group's alarms, alarms in ALARM invoke their simple and step policies, target tracking
//! policies follow their own two alarms, scheduled actions fire at their times, and the result
//! is the group's new capacity with its cause in AWS's words.
//!
//! Pure like the rest of `scaling`: the engine calls [`Controller::record`] with what it
//! measured and then [`Controller::decide`] with the group as it is, both with the time; it
//! applies the [`Decision`]s it gets (in order) and starts the activities they cause.
//!
//! Rules followed:
//! - CloudWatch User Guide, "Alarm actions": "Except for Auto Scaling actions, the actions
//!   happen only on state transitions": an alarm that stays in ALARM invokes its scaling
//!   policies again for every period it stays there (here once per ended period).
//! - EC2 Auto Scaling User Guide, "Dynamic scaling", "Multiple scaling policies": when several
//!   policies trigger at once, the one giving the largest capacity wins, for scale-out and
//!   scale-in; among target tracking policies, out if any, in only if all ([`combine`]).
//! - "Scaling cooldowns": after a scaling activity ends, simple policies wait for the cooldown:
//!   the simple policy's own if one of them caused the activity, else the group's default.
//! - "Suspend and resume processes": with `AlarmNotification` suspended, alarms are still
//!   evaluated but their policies are not executed (target tracking included, its alarms are
//!   alarms); with `ScheduledActions` suspended, actions due during the suspension are not run,
//!   and on resume only those whose time has not passed are considered.
//! - "Set the default instance warmup": an instance contributes to the aggregated metrics once
//!   its warmup since InService has passed. A target tracking or step policy's warmup is
//!   `EstimatedInstanceWarmup`, else the default instance warmup, else the default cooldown
//!   (`PutScalingPolicy`). A named alarm aggregates with the default instance warmup, else the
//!   longest warmup of the step policies it triggers, else none (simple scaling has no warmup).
//! - `UpdateAutoScalingGroup`, which a scheduled action performs: a new minimum above the
//!   desired capacity raises it to the minimum, a new maximum below it lowers it to the
//!   maximum, when the action sets no desired capacity.

mod alarms;
mod metrics;
mod scheduled;

#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, time::Duration};

use jiff::Timestamp;

pub use self::{
    alarms::AlarmView,
    metrics::{CounterBaselines, InstanceReading, InstanceSample, counter_increase},
};
use self::{
    alarms::{TrackedTarget, WatchedAlarm, tracked_target},
    scheduled::Schedule,
};
use super::{
    alarm::{AlarmSpecError, AlarmState},
    capacity::{CapacityChange, Cooldown, GroupCapacity},
    from_config,
    policy::{
        GroupView, PolicyError, SimpleScalingPolicy, StepAdjustment, StepScalingPolicy,
        TargetTrackingPolicy, Vote, combine, instance_warmup, is_warmed_up,
    },
    schedule::ScheduleError,
};
use crate::config::{self, PolicyKind, ScalingProcess};

/// The period of a target tracking policy's alarms: one datapoint a minute, as AWS's
/// target tracking alarms take (the metric at 1-minute granularity).
pub const TARGET_TRACKING_PERIOD: Duration = Duration::from_secs(60);

/// Why a group's scaling configuration cannot be run (the configuration's side; `lb-agent
/// check` reports the same problems through the config's validation).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControllerError {
    /// A simple or step policy names an alarm the group does not define.
    #[error("policy {policy}: the group has no alarm named {alarm:?}")]
    UnknownAlarm { policy: String, alarm: String },
    /// An alarm (a named one, or a target tracking policy's) breaks a CloudWatch rule.
    #[error("alarm {alarm}: {source}")]
    Alarm {
        alarm: String,
        #[source]
        source: AlarmSpecError,
    },
    /// A policy breaks an EC2 Auto Scaling rule.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A scheduled action's times do not read.
    #[error("scheduled action {action}: {field}: {message}")]
    ScheduledTime {
        action: String,
        field: &'static str,
        message: String,
    },
    /// A scheduled action breaks an EC2 Auto Scaling rule.
    #[error("scheduled action {action}: {source}")]
    ScheduledAction {
        action: String,
        #[source]
        source: ScheduleError,
    },
}

/// Where one of the group's instances is, as the controller needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstancePhase {
    /// Launching: asked for, starting, or waiting on a launch lifecycle hook (a launch the
    /// engine still owes counts as one too). Warming up, for the policies.
    Pending,
    /// InService since this time (its warmup counts from it).
    InService { since: Duration },
    /// On its way out: deregistering, draining, waiting on a terminate hook, stopping.
    Terminating,
}

/// What the controller sees of its group when it decides.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    /// Bounds and desired capacity now.
    pub capacity: GroupCapacity,
    /// Every instance of the group not yet gone, and every launch not yet an instance.
    pub instances: Vec<InstancePhase>,
    /// A launch or termination of a scaling activity has not ended yet (simple policies wait).
    pub scaling_activity_in_progress: bool,
    /// When the latest scaling activity ended: the cooldown runs from it.
    pub last_scaling_activity_end: Option<Duration>,
    /// The group's suspended processes (from the config's `suspended_processes`, then
    /// `suspend` and `resume`).
    pub suspended: BTreeSet<ScalingProcess>,
}

impl GroupState {
    /// The group as a policy with `warmup` sees it at `now`, with `capacity`.
    fn view(&self, capacity: GroupCapacity, warmup: Duration, now: Duration) -> GroupView {
        let mut view = GroupView {
            capacity,
            warmed_up: 0,
            warming_up: 0,
            terminating: 0,
        };
        for phase in &self.instances {
            match phase {
                InstancePhase::InService { since } if is_warmed_up(*since, warmup, now) => {
                    view.warmed_up += 1;
                }
                InstancePhase::InService { .. } | InstancePhase::Pending => view.warming_up += 1,
                InstancePhase::Terminating => view.terminating += 1,
            }
        }
        view
    }
}

/// A change the engine is to make: the group's new bounds and desired capacity, and why, in
/// AWS's words (`change`'s `Display`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The group's capacity after the change.
    pub capacity: GroupCapacity,
    /// The desired capacity before and after, and the cause.
    pub change: CapacityChange,
}

impl Decision {
    /// Whether the desired capacity changes (a scaling activity follows); a scheduled action
    /// may change only the bounds.
    pub fn changes_desired(&self) -> bool {
        self.change.from != self.change.to
    }
}

/// A simple or step policy and the alarm (an index into the controller's) invoking it.
#[derive(Debug, Clone)]
enum AlarmPolicy {
    Simple {
        alarm: usize,
        policy: SimpleScalingPolicy,
    },
    Step {
        alarm: usize,
        policy: StepScalingPolicy,
        warmup: Duration,
    },
}

/// One group's scaling controller.
#[derive(Debug, Clone)]
pub struct Controller {
    group: String,
    default_cooldown: Duration,
    baselines: CounterBaselines,
    alarms: Vec<WatchedAlarm>,
    alarm_policies: Vec<AlarmPolicy>,
    targets: Vec<TrackedTarget>,
    schedule: Schedule,
    /// The cooldown the latest change decided here starts once its activity ends.
    cooldown_after_last_change: Duration,
}

impl Controller {
    /// The controller of `group`, its target tracking alarms one datapoint a minute.
    pub fn new(group: &config::AutoScalingGroup) -> Result<Self, ControllerError> {
        Self::with_target_tracking_period(group, TARGET_TRACKING_PERIOD)
    }

    /// The same with another period for the target tracking alarms (10, 20, 30 s or a
    /// multiple of 60 s: CloudWatch's high-resolution alarm periods), for short lab runs.
    pub fn with_target_tracking_period(
        group: &config::AutoScalingGroup,
        period: Duration,
    ) -> Result<Self, ControllerError> {
        let default_cooldown = group.default_cooldown;
        let warmup_of = |estimated: Option<Duration>| {
            instance_warmup(estimated, group.default_instance_warmup, default_cooldown)
        };
        let alarm_index = |policy: &str, alarm: &str| {
            group
                .alarms
                .iter()
                .position(|a| a.name == alarm)
                .ok_or_else(|| ControllerError::UnknownAlarm {
                    policy: policy.to_owned(),
                    alarm: alarm.to_owned(),
                })
        };

        let mut alarm_policies = Vec::new();
        let mut targets = Vec::new();
        for policy in &group.policies {
            let name = policy.name.clone();
            match &policy.kind {
                PolicyKind::Simple {
                    alarm,
                    adjustment_type,
                    adjustment,
                    min_adjustment_magnitude,
                    cooldown,
                } => alarm_policies.push(AlarmPolicy::Simple {
                    alarm: alarm_index(&name, alarm)?,
                    policy: SimpleScalingPolicy::new(
                        name,
                        *adjustment_type,
                        *adjustment,
                        *min_adjustment_magnitude,
                        *cooldown,
                    )?,
                }),
                PolicyKind::Step {
                    alarm,
                    adjustment_type,
                    steps,
                    min_adjustment_magnitude,
                    estimated_instance_warmup,
                } => {
                    let steps = steps
                        .iter()
                        .map(|s| StepAdjustment {
                            lower: s.lower,
                            upper: s.upper,
                            adjustment: s.adjustment,
                        })
                        .collect();
                    alarm_policies.push(AlarmPolicy::Step {
                        alarm: alarm_index(&name, alarm)?,
                        policy: StepScalingPolicy::new(
                            name,
                            *adjustment_type,
                            steps,
                            *min_adjustment_magnitude,
                        )?,
                        warmup: warmup_of(*estimated_instance_warmup),
                    });
                }
                PolicyKind::TargetTracking {
                    metric,
                    target,
                    disable_scale_in,
                    estimated_instance_warmup,
                    period: own_period,
                } => {
                    let policy = TargetTrackingPolicy::new(&group.name, name, *target)?
                        .with_disable_scale_in(*disable_scale_in);
                    targets.push(tracked_target(
                        policy,
                        *disable_scale_in,
                        *metric,
                        own_period.unwrap_or(period),
                        warmup_of(*estimated_instance_warmup),
                    )?);
                }
            }
        }

        let mut alarms = Vec::with_capacity(group.alarms.len());
        for (index, alarm) in group.alarms.iter().enumerate() {
            let step_warmup = alarm_policies
                .iter()
                .filter_map(|p| match p {
                    AlarmPolicy::Step { alarm, warmup, .. } if *alarm == index => Some(*warmup),
                    _ => None,
                })
                .max();
            let warmup = group
                .default_instance_warmup
                .or(step_warmup)
                .unwrap_or(Duration::ZERO);
            alarms.push(WatchedAlarm::new(
                alarm.name.clone(),
                alarm.metric,
                from_config::alarm_spec(alarm),
                warmup,
            )?);
        }

        let mut scheduled = Vec::with_capacity(group.scheduled_actions.len());
        for action in &group.scheduled_actions {
            let read = from_config::scheduled_action(action).map_err(|(field, message)| {
                ControllerError::ScheduledTime {
                    action: action.name.clone(),
                    field,
                    message,
                }
            })?;
            if let Some(source) = read.errors().into_iter().next() {
                return Err(ControllerError::ScheduledAction {
                    action: action.name.clone(),
                    source,
                });
            }
            scheduled.push(read);
        }

        Ok(Self {
            group: group.name.clone(),
            default_cooldown,
            baselines: CounterBaselines::default(),
            alarms,
            alarm_policies,
            targets,
            schedule: Schedule::new(scheduled),
            cooldown_after_last_change: default_cooldown,
        })
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Takes the instances' readings at `now` (since the Unix epoch) as samples of every
    /// alarm whose warmup each instance has passed.
    pub fn record(&mut self, now: Duration, samples: &[InstanceSample]) {
        let readings = self.baselines.read(now, samples);
        let Some(at) = timestamp(now) else {
            return;
        };
        for alarm in self.all_alarms_mut() {
            alarm.record(at, now, &readings);
        }
    }

    /// The changes to make at `now`, in order: scheduled actions due (each occurrence once),
    /// then at most one change by the dynamic policies, computed on the capacity the
    /// scheduled ones left.
    pub fn decide(&mut self, now: Duration, group: &GroupState) -> Vec<Decision> {
        let Some(at) = timestamp(now) else {
            return Vec::new();
        };
        let mut decisions = self.schedule.due(&self.group, at, group);
        if decisions.iter().any(Decision::changes_desired) {
            // Its activity starts the group's default cooldown for simple policies.
            self.cooldown_after_last_change = self.default_cooldown;
        }
        let capacity = decisions.last().map_or(group.capacity, |d| d.capacity);
        if let Some(decision) = self.dynamic_decision(now, at, group, capacity) {
            decisions.push(decision);
        }
        decisions
    }

    /// Every alarm: the group's named ones in config order, then each target tracking
    /// policy's high and low alarms.
    pub fn alarms(&self) -> Vec<AlarmView> {
        self.alarms
            .iter()
            .chain(
                self.targets
                    .iter()
                    .flat_map(|t| std::iter::once(&t.high).chain(t.low.as_ref())),
            )
            .map(WatchedAlarm::view)
            .collect()
    }

    fn all_alarms_mut(&mut self) -> impl Iterator<Item = &mut WatchedAlarm> {
        self.alarms
            .iter_mut()
            .chain(self.targets.iter_mut().flat_map(TrackedTarget::alarms_mut))
    }

    /// The dynamic policies' change at `now`, if any: every alarm is evaluated, and those
    /// with a new period invoke their policies (unless AlarmNotification is suspended).
    fn dynamic_decision(
        &mut self,
        now: Duration,
        at: Timestamp,
        group: &GroupState,
        capacity: GroupCapacity,
    ) -> Option<Decision> {
        let notify = !group.suspended.contains(&ScalingProcess::AlarmNotification);
        let cooldown = group
            .last_scaling_activity_end
            .map_or(Cooldown::none(), |end| {
                Cooldown::started(end, self.cooldown_after_last_change)
            });
        // Each vote with the cooldown its change starts.
        let mut votes: Vec<(Vote, Duration)> = Vec::new();

        let mut invoked = Vec::with_capacity(self.alarms.len());
        for alarm in &mut self.alarms {
            alarm.evaluate(at);
            let new_period = alarm.take_new_period(at);
            invoked.push(notify && new_period && alarm.alarm.state() == AlarmState::Alarm);
        }
        for policy in &self.alarm_policies {
            match policy {
                AlarmPolicy::Simple { alarm, policy } if invoked[*alarm] => {
                    let view = group.view(capacity, Duration::ZERO, now);
                    let vote = policy.on_alarm(
                        &self.alarms[*alarm].name,
                        &view,
                        group.scaling_activity_in_progress,
                        &cooldown,
                        now,
                    );
                    votes.push((vote, policy.cooldown(self.default_cooldown)));
                }
                AlarmPolicy::Step {
                    alarm,
                    policy,
                    warmup,
                } if invoked[*alarm] => {
                    let watched = &self.alarms[*alarm];
                    // The breach is read from the newest datapoint the alarm holds (the period
                    // that just ended, unless it had no data); an alarm in ALARM without any
                    // (missing data read as breaching) gives no breach to pick a step with.
                    let Some(metric) = watched.last_value else {
                        continue;
                    };
                    let view = group.view(capacity, *warmup, now);
                    let vote = policy.on_alarm(
                        &watched.name,
                        watched.alarm.spec().threshold,
                        metric,
                        &view,
                    );
                    votes.push((vote, self.default_cooldown));
                }
                _ => {}
            }
        }

        let mut tracking_votes = Vec::new();
        for target in &mut self.targets {
            let mut new_period = false;
            for alarm in target.alarms_mut() {
                alarm.evaluate(at);
                new_period |= alarm.take_new_period(at);
            }
            if notify && new_period {
                let view = group.view(capacity, target.warmup, now);
                tracking_votes.push(target.policy.evaluate(&target.datapoints(at), &view));
            }
        }
        if let Some(change) = combine(&tracking_votes) {
            let vote = if change.to > change.from {
                Vote::ScaleOut(change)
            } else {
                Vote::ScaleIn(change)
            };
            votes.push((vote, self.default_cooldown));
        }

        let (change, cooldown) = largest(&votes, true).or_else(|| largest(&votes, false))?;
        self.cooldown_after_last_change = cooldown;
        Some(Decision {
            capacity: capacity.apply(&change),
            change,
        })
    }
}

/// The vote for the largest capacity among scale-outs (`out`) or scale-ins, the first on a
/// tie (AWS: the policy giving the largest capacity wins, either way).
fn largest(votes: &[(Vote, Duration)], out: bool) -> Option<(CapacityChange, Duration)> {
    votes
        .iter()
        .filter_map(|(vote, cooldown)| match vote {
            Vote::ScaleOut(change) if out => Some((change, *cooldown)),
            Vote::ScaleIn(change) if !out => Some((change, *cooldown)),
            _ => None,
        })
        .fold(
            None,
            |best: Option<(&CapacityChange, Duration)>, next| match best {
                Some(b) if b.0.to >= next.0.to => Some(b),
                _ => Some(next),
            },
        )
        .map(|(change, cooldown)| (change.clone(), cooldown))
}

/// `now` (since the Unix epoch) as a timestamp; `None` past the year 9999.
fn timestamp(now: Duration) -> Option<Timestamp> {
    let seconds = i64::try_from(now.as_secs()).ok()?;
    // Below 10^9: fits.
    let nanos = now.subsec_nanos() as i32;
    Timestamp::new(seconds, nanos).ok()
}
