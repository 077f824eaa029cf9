//! Simple scaling: one adjustment when its alarm fires, then no further change by a simple
//! policy until the scaling activity has ended and the cooldown (the policy's own, else the
//! group's default, 300 s) has passed.
//!
//! AWS: User Guide "Step and simple scaling policies", section "Differences between step
//! scaling policies and simple scaling policies" (the policy "must wait for the scaling
//! activity or health check replacement to complete and the cooldown period to expire before
//! responding to additional alarms"); "Scaling cooldowns" (a simple policy's `Cooldown`
//! overrides the group's `DefaultCooldown`).

use std::time::Duration;

use super::{GroupView, Hold, PolicyError, Vote};
use crate::scaling::capacity::{Adjustment, AdjustmentType, CapacityChange, Cause, Cooldown};

/// A simple scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct SimpleScalingPolicy {
    name: String,
    adjustment: Adjustment,
    cooldown: Option<Duration>,
}

impl SimpleScalingPolicy {
    /// A simple policy applying `scaling_adjustment` as `adjustment_type`; `cooldown` none
    /// means the group's default cooldown.
    pub fn new(
        name: impl Into<String>,
        adjustment_type: AdjustmentType,
        scaling_adjustment: i32,
        min_adjustment_magnitude: Option<u32>,
        cooldown: Option<Duration>,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        let adjustment = Adjustment::new(
            adjustment_type,
            scaling_adjustment,
            min_adjustment_magnitude,
        )
        .map_err(|source| PolicyError::Adjustment {
            policy: name.clone(),
            source,
        })?;
        Ok(Self {
            name,
            adjustment,
            cooldown,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cooldown to start once the activity this policy started has ended: its own, else
    /// the group's default.
    pub fn cooldown(&self, default_cooldown: Duration) -> Duration {
        self.cooldown.unwrap_or(default_cooldown)
    }

    /// The decision when `alarm` is in ALARM at `now`. Held while a scaling activity is in
    /// progress or the group's `cooldown` is in effect; otherwise the adjustment applies to
    /// the desired capacity (no activity in progress: it is the current capacity), clamped to
    /// the group's bounds.
    pub fn on_alarm(
        &self,
        alarm: &str,
        group: &GroupView,
        activity_in_progress: bool,
        cooldown: &Cooldown,
        now: Duration,
    ) -> Vote {
        if activity_in_progress {
            return Vote::Hold(Hold::ActivityInProgress);
        }
        if let Some(remaining) = cooldown.remaining(now) {
            return Vote::Hold(Hold::Cooldown { remaining });
        }
        let from = group.capacity.desired();
        let to = group.capacity.clamp(self.adjustment.target(from));
        Vote::from_change(CapacityChange {
            from,
            to,
            cause: Cause::Alarm {
                alarm: alarm.to_owned(),
                policy: self.name.clone(),
            },
        })
    }
}
