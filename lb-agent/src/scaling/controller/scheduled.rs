//! A group's scheduled actions as the controller runs them: each occurrence once, at its time
//! or at the first decision after it when the engine was late, none while `ScheduledActions`
//! is suspended (AWS: "Suspend and resume processes": actions due during a suspension are not
//! run, and on resume only those whose time has not passed are considered).

use jiff::Timestamp;

use super::{Decision, GroupState};
use crate::config::ScalingProcess;
use crate::scaling::{
    capacity::{CapacityChange, CapacityError, Cause, GroupCapacity},
    schedule::ScheduledAction,
};

/// At most this many past occurrences of one scheduled action are walked through when the
/// engine was late; the loop's bound (a minutely action missed for about a week).
const MAX_MISSED_OCCURRENCES: usize = 10_000;

/// The scheduled actions and how far their occurrences were handled.
#[derive(Debug, Clone)]
pub(super) struct Schedule {
    actions: Vec<ScheduledAction>,
    /// Occurrences at or before this were handled (set by the first call of `due`).
    checked_until: Option<Timestamp>,
}

impl Schedule {
    pub(super) fn new(actions: Vec<ScheduledAction>) -> Self {
        Self {
            actions,
            checked_until: None,
        }
    }

    /// The scheduled actions due in (last check, `at`], oldest first, each on the capacity
    /// the one before left. The first call only starts the clock: what was due before the
    /// controller ran is not run (AWS runs an action at its time, not after the fact).
    pub(super) fn due(
        &mut self,
        group_name: &str,
        at: Timestamp,
        group: &GroupState,
    ) -> Vec<Decision> {
        let Some(since) = self.checked_until.replace(at) else {
            return Vec::new();
        };
        if since >= at || group.suspended.contains(&ScalingProcess::ScheduledActions) {
            return Vec::new();
        }
        let mut due: Vec<(Timestamp, usize)> = self
            .actions
            .iter()
            .enumerate()
            .filter_map(|(i, action)| latest_occurrence(action, since, at).map(|t| (t, i)))
            .collect();
        due.sort();
        let mut capacity = group.capacity;
        let mut decisions = Vec::new();
        for (_, index) in due {
            let action = &self.actions[index];
            match scheduled_capacity(action, capacity) {
                Ok(next) if next != capacity => {
                    decisions.push(Decision {
                        capacity: next,
                        change: CapacityChange {
                            from: capacity.desired(),
                            to: next.desired(),
                            cause: Cause::Scheduled {
                                min: next.min(),
                                max: next.max(),
                                desired: next.desired(),
                            },
                        },
                    });
                    capacity = next;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    group = %group_name,
                    action = %action.name,
                    %error,
                    "scheduled action not run: the sizes it sets do not fit the group's"
                ),
            }
        }
        decisions
    }
}

/// The newest occurrence of `action` in (`after`, `until`]: when the engine was late past
/// several, only the newest runs (the sizes are absolute: it is what the schedule says now).
fn latest_occurrence(
    action: &ScheduledAction,
    after: Timestamp,
    until: Timestamp,
) -> Option<Timestamp> {
    let mut latest = None;
    let mut cursor = after;
    for _ in 0..MAX_MISSED_OCCURRENCES {
        match action.next_after(cursor) {
            Some(next) if next <= until => {
                latest = Some(next);
                cursor = next;
            }
            _ => break,
        }
    }
    latest
}

/// The group's capacity after `action`, as `UpdateAutoScalingGroup` sets it; refused when the
/// result breaks min <= desired <= max.
fn scheduled_capacity(
    action: &ScheduledAction,
    current: GroupCapacity,
) -> Result<GroupCapacity, CapacityError> {
    let min = action.min_size.unwrap_or(current.min());
    let max = action.max_size.unwrap_or(current.max());
    // Without a desired capacity, the current one is pulled inside the new bounds (written
    // without `clamp`, which panics when min > max; `new` refuses that case).
    let desired = action
        .desired_capacity
        .unwrap_or_else(|| current.desired().max(min).min(max));
    GroupCapacity::new(min, desired, max)
}
