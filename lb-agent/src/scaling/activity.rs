//! Scaling activities: every launch and termination of a group, with its cause in EC2 Auto
//! Scaling's words ("At 2026-12-01T10:00:00Z a monitor alarm busy in state ALARM triggered
//! policy steps changing the desired capacity from 2 to 3."), kept per group and listed by
//! `lb-agent asg activities`, newest first, like `describe-scaling-activities`.
//!
//! The wording follows the causes EC2 Auto Scaling writes in its activity history (see
//! "Verify a scaling activity for an Auto Scaling group" in its user guide): a cause is one
//! or more sentences, each starting "At <time>", the first saying why the desired capacity
//! changed (or why an instance left service), the next what was done about it.

use std::collections::VecDeque;

use jiff::Timestamp;

use super::capacity::CapacityChange;

/// Activities kept per group (EC2 keeps six weeks; this keeps a count, bounding memory).
pub const KEPT_PER_GROUP: usize = 1000;

/// Why an instance was taken out of service (a termination's first sentence).
#[derive(Debug, Clone, PartialEq)]
pub enum OutOfService {
    /// Scale-in: more instances than desired.
    Shrinking,
    /// The instance's process is gone (EC2's health check).
    Ec2HealthCheck,
    /// A target group reported it unhealthy (`ELB` health checks).
    ElbHealthCheck,
    /// It reached `max_instance_lifetime`.
    MaxInstanceLifetime,
    /// An instance refresh replaced it.
    InstanceRefresh,
    /// `terminate-instance` (with or without `--decrement`).
    UserRequest,
    /// A launch lifecycle hook ended with ABANDON.
    LifecycleAbandon,
}

/// An activity's state, as `describe-scaling-activities` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityStatus {
    /// Started, not finished (a launch waiting in a lifecycle hook is still this).
    InProgress,
    /// Waiting for a lifecycle action to be completed.
    WaitingForInstanceWarmup,
    Successful,
    Failed,
    Cancelled,
}

impl ActivityStatus {
    /// EC2's `StatusCode` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "InProgress",
            Self::WaitingForInstanceWarmup => "WaitingForInstanceWarmup",
            Self::Successful => "Successful",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }

    /// Whether the activity has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Successful | Self::Failed | Self::Cancelled)
    }

    /// The status `as_str` names.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::InProgress,
            Self::WaitingForInstanceWarmup,
            Self::Successful,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// One launch or termination.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    /// Unique in the agent's lifetime and across restarts (a counter kept with the group).
    pub id: u64,
    pub group: String,
    /// "Launching a new instance: i-..." or "Terminating instance: i-...".
    pub description: String,
    /// Why, in EC2's words.
    pub cause: String,
    pub status: ActivityStatus,
    /// Why it failed, when it did.
    pub status_message: Option<String>,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// 0-100, as EC2's `Progress`.
    pub progress: u8,
}

/// EC2's sentence for a change of the desired capacity (`CapacityChange` words it; the
/// history adds when).
pub fn capacity_cause(at: Timestamp, change: &CapacityChange) -> String {
    format!("At {} {change}.", time(at))
}

/// EC2's sentence for a launch that brings the capacity from `from` to `to`.
pub fn launch_cause(at: Timestamp, from: u32, to: u32) -> String {
    format!(
        "At {} an instance was started in response to a difference between desired and actual \
         capacity, increasing the capacity from {from} to {to}.",
        time(at)
    )
}

/// EC2's sentences for an instance taken out of service; `from` and `to` are the capacities
/// before and after (for a shrink).
pub fn termination_cause(
    at: Timestamp,
    instance: &str,
    why: &OutOfService,
    from: u32,
    to: u32,
) -> String {
    let at = time(at);
    let first = match why {
        OutOfService::Shrinking => format!(
            "At {at} an instance was taken out of service in response to a difference between \
             desired and actual capacity, shrinking the capacity from {from} to {to}."
        ),
        OutOfService::Ec2HealthCheck => format!(
            "At {at} an instance was taken out of service in response to an EC2 health check \
             indicating it has been terminated or stopped."
        ),
        OutOfService::ElbHealthCheck => format!(
            "At {at} an instance was taken out of service in response to an ELB system health \
             check failure."
        ),
        OutOfService::MaxInstanceLifetime => format!(
            "At {at} an instance was taken out of service in response to a maximum instance \
             lifetime policy."
        ),
        OutOfService::InstanceRefresh => format!(
            "At {at} an instance was taken out of service in response to an instance refresh."
        ),
        OutOfService::UserRequest => format!(
            "At {at} instance {instance} was taken out of service in response to a user request."
        ),
        OutOfService::LifecycleAbandon => format!(
            "At {at} an instance was taken out of service in response to a launch lifecycle \
             action that ended with ABANDON."
        ),
    };
    match why {
        OutOfService::Shrinking => {
            format!("{first}  At {at} instance {instance} was selected for termination.")
        }
        _ => first,
    }
}

/// `Launching a new instance: <id>` (EC2 says "EC2 instance").
pub fn launch_description(instance: &str) -> String {
    format!("Launching a new instance: {instance}")
}

/// `Terminating instance: <id>`.
pub fn termination_description(instance: &str) -> String {
    format!("Terminating instance: {instance}")
}

/// Times as EC2 writes them in causes: RFC 3339 in UTC, to the second.
fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A group's activities, oldest first, at most `KEPT_PER_GROUP`.
#[derive(Debug, Clone, Default)]
pub struct ActivityLog {
    activities: VecDeque<Activity>,
    next_id: u64,
}

impl ActivityLog {
    /// A log whose next activity is numbered `next_id` (restored with the group's state).
    pub fn starting_at(next_id: u64) -> Self {
        Self {
            activities: VecDeque::new(),
            next_id,
        }
    }

    /// A log kept across a restart: these activities (oldest first; the newest
    /// `KEPT_PER_GROUP` are kept), the next one numbered `next_id`.
    pub fn restored(activities: impl IntoIterator<Item = Activity>, next_id: u64) -> Self {
        let mut activities: VecDeque<Activity> = activities.into_iter().collect();
        while activities.len() > KEPT_PER_GROUP {
            activities.pop_front();
        }
        let next_id = activities
            .iter()
            .map(|a| a.id + 1)
            .max()
            .unwrap_or(0)
            .max(next_id);
        Self {
            activities,
            next_id,
        }
    }

    /// Records a new activity, in progress from `start`; gives its id.
    pub fn start(
        &mut self,
        group: &str,
        description: String,
        cause: String,
        start: Timestamp,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if self.activities.len() == KEPT_PER_GROUP {
            self.activities.pop_front();
        }
        self.activities.push_back(Activity {
            id,
            group: group.to_owned(),
            description,
            cause,
            status: ActivityStatus::InProgress,
            status_message: None,
            start,
            end: None,
            progress: 0,
        });
        id
    }

    /// Moves activity `id` on; a final status ends it at `at` (progress 100). False if there is
    /// no such activity, or it has ended already (an ended activity is not reopened).
    pub fn update(
        &mut self,
        id: u64,
        status: ActivityStatus,
        message: Option<String>,
        at: Timestamp,
    ) -> bool {
        let Some(activity) = self.activities.iter_mut().find(|a| a.id == id) else {
            return false;
        };
        if activity.status.is_final() {
            return false;
        }
        activity.status = status;
        if message.is_some() {
            activity.status_message = message;
        }
        if status.is_final() {
            activity.end = Some(at);
            activity.progress = 100;
        } else {
            activity.progress = activity.progress.max(50);
        }
        true
    }

    /// The newest activity in progress described as `description`.
    pub fn in_progress(&self, description: &str) -> Option<u64> {
        self.activities
            .iter()
            .rev()
            .find(|a| !a.status.is_final() && a.description == description)
            .map(|a| a.id)
    }

    /// Ends every activity in progress but those of `kept` as `status`, with `message`.
    pub fn end_all_but(
        &mut self,
        kept: &[u64],
        status: ActivityStatus,
        message: &str,
        at: Timestamp,
    ) {
        let open: Vec<u64> = self
            .activities
            .iter()
            .filter(|a| !a.status.is_final() && !kept.contains(&a.id))
            .map(|a| a.id)
            .collect();
        for id in open {
            self.update(id, status, Some(message.to_owned()), at);
        }
    }

    /// Newest first, as `describe-scaling-activities` lists them.
    pub fn newest_first(&self) -> impl Iterator<Item = &Activity> {
        self.activities.iter().rev()
    }

    /// The id the next activity gets (kept with the group's state across restarts).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::capacity::Cause;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a time")
    }

    #[test]
    fn causes_read_as_ec2_auto_scaling_writes_them() {
        let t = at("2026-12-01T10:00:00.700Z");
        let change = |from, to, cause| CapacityChange { from, to, cause };
        assert_eq!(
            capacity_cause(
                t,
                &change(
                    2,
                    3,
                    Cause::Alarm {
                        alarm: "busy".into(),
                        policy: "steps".into()
                    }
                )
            ),
            "At 2026-12-01T10:00:00Z a monitor alarm busy in state ALARM triggered policy steps \
             changing the desired capacity from 2 to 3."
        );
        assert_eq!(
            capacity_cause(t, &change(1, 4, Cause::UserRequest)),
            "At 2026-12-01T10:00:00Z a user request explicitly set group desired capacity \
             changing the desired capacity from 1 to 4."
        );
        assert_eq!(
            capacity_cause(
                t,
                &change(
                    2,
                    4,
                    Cause::Scheduled {
                        min: 2,
                        max: 6,
                        desired: 4
                    }
                )
            ),
            "At 2026-12-01T10:00:00Z a scheduled action update of AutoScalingGroup constraints \
             to min: 2, max: 6, desired: 4 changing the desired capacity from 2 to 4."
        );
        assert_eq!(
            capacity_cause(
                t,
                &change(
                    14,
                    13,
                    Cause::UserUpdate {
                        min: 12,
                        max: 20,
                        desired: 13
                    }
                )
            ),
            "At 2026-12-01T10:00:00Z a user request update of AutoScalingGroup constraints to \
             min: 12, max: 20, desired: 13 changing the desired capacity from 14 to 13."
        );
        assert_eq!(
            launch_cause(t, 2, 3),
            "At 2026-12-01T10:00:00Z an instance was started in response to a difference \
             between desired and actual capacity, increasing the capacity from 2 to 3."
        );
        assert_eq!(
            termination_cause(t, "i-0003", &OutOfService::Shrinking, 3, 2),
            "At 2026-12-01T10:00:00Z an instance was taken out of service in response to a \
             difference between desired and actual capacity, shrinking the capacity from 3 to \
             2.  At 2026-12-01T10:00:00Z instance i-0003 was selected for termination."
        );
        assert!(
            termination_cause(t, "i-1", &OutOfService::ElbHealthCheck, 2, 2)
                .ends_with("in response to an ELB system health check failure.")
        );
    }

    #[test]
    fn the_log_lists_newest_first_keeps_a_bounded_history_and_never_reopens_an_ended_activity() {
        let mut log = ActivityLog::starting_at(7);
        let t = at("2026-12-01T10:00:00Z");
        let a = log.start("asg", launch_description("i-1"), "c".into(), t);
        let b = log.start("asg", termination_description("i-0"), "c".into(), t);
        assert_eq!((a, b), (7, 8));
        assert!(log.update(
            a,
            ActivityStatus::Successful,
            None,
            at("2026-12-01T10:00:30Z")
        ));
        assert!(!log.update(a, ActivityStatus::Failed, Some("late".into()), t));
        assert!(!log.update(99, ActivityStatus::Successful, None, t));
        let listed: Vec<(u64, ActivityStatus, u8)> = log
            .newest_first()
            .map(|x| (x.id, x.status, x.progress))
            .collect();
        assert_eq!(
            listed,
            [
                (8, ActivityStatus::InProgress, 0),
                (7, ActivityStatus::Successful, 100)
            ]
        );
        for _ in 0..KEPT_PER_GROUP + 5 {
            log.start("asg", "d".into(), "c".into(), t);
        }
        assert_eq!(log.newest_first().count(), KEPT_PER_GROUP);
        assert_eq!(log.next_id(), 9 + KEPT_PER_GROUP as u64 + 5);
    }
}
