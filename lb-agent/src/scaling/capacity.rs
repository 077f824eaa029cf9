//! A group's capacity: its bounds (min, desired, max), the adjustments scaling policies apply to
//! it with AWS's rounding, the cooldown, and a change of desired capacity with its cause in
//! AWS's words.
//!
//! Rules followed (Amazon EC2 Auto Scaling User Guide):
//! - "Step and simple scaling policies", section "Scaling adjustment types": the three
//!   adjustment types, the rounding of `PercentChangeInCapacity` and `MinAdjustmentMagnitude`.
//! - "Dynamic scaling", section "How scaling policies work": a policy's result never goes below
//!   the minimum or above the maximum size (it is clamped, not refused).
//! - API reference `SetDesiredCapacity`: a manual desired capacity outside the bounds is refused
//!   (ValidationError), and the cooldown is honoured only when asked (`HonorCooldown`, default
//!   false); honoured and in effect, the request fails (ScalingActivityInProgress).
//! - "Scaling cooldowns": the group's default cooldown is 300 seconds.

use std::{fmt, time::Duration};

/// The group's default cooldown when none is set (AWS: `DefaultCooldown`, 300 seconds).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);

/// Errors in a group's capacity or in an adjustment (all are the caller's input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// The configuration's min/desired/max are out of order.
    #[error(
        "min_size {min} <= desired_capacity {desired} <= max_size {max} must hold \
         (AWS refuses a group otherwise)"
    )]
    Bounds { min: u32, desired: u32, max: u32 },
    /// A manual desired capacity above the maximum size (AWS's ValidationError wording).
    #[error(
        "New SetDesiredCapacity value {desired} is above max value {max} for the AutoScalingGroup."
    )]
    AboveMax { desired: u32, max: u32 },
    /// A manual desired capacity below the minimum size (AWS's ValidationError wording).
    #[error(
        "New SetDesiredCapacity value {desired} is below min value {min} for the AutoScalingGroup."
    )]
    BelowMin { desired: u32, min: u32 },
    /// A manual change asked to honour the cooldown while it is in effect.
    #[error(
        "Scaling activity in progress: the group's cooldown ends in {remaining:?} \
         (set-desired without honor_cooldown does not wait)"
    )]
    InCooldown { remaining: Duration },
    /// `ExactCapacity` with a negative value.
    #[error("ExactCapacity needs a value of 0 or more, not {value}")]
    NegativeExactCapacity { value: i32 },
    /// `MinAdjustmentMagnitude` given with an adjustment type other than percent.
    #[error("MinAdjustmentMagnitude is valid only with PercentChangeInCapacity, not {kind}")]
    MagnitudeWithoutPercent { kind: AdjustmentType },
}

/// A group's size bounds with its desired capacity, always `min <= desired <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCapacity {
    min: u32,
    desired: u32,
    max: u32,
}

impl GroupCapacity {
    /// The bounds, refused unless `min <= desired <= max`.
    pub fn new(min: u32, desired: u32, max: u32) -> Result<Self, CapacityError> {
        if min <= desired && desired <= max {
            Ok(Self { min, desired, max })
        } else {
            Err(CapacityError::Bounds { min, desired, max })
        }
    }

    /// The minimum size.
    pub fn min(&self) -> u32 {
        self.min
    }

    /// The desired capacity: what the group launches or terminates instances to reach.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// The maximum size.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// `capacity` kept within min and max: a policy's result is clamped, never refused.
    pub fn clamp(&self, capacity: i64) -> u32 {
        let clamped = capacity.clamp(i64::from(self.min), i64::from(self.max));
        // In range of u32: min and max are.
        u32::try_from(clamped).unwrap_or(self.max)
    }

    /// The same bounds with `change` made: its new desired capacity, kept within the bounds
    /// (they may have moved since the change was decided).
    pub fn apply(&self, change: &CapacityChange) -> Self {
        Self {
            desired: self.clamp(i64::from(change.to)),
            ..*self
        }
    }

    /// A manual `set-desired`: refused outside the bounds; with `honor_cooldown`, refused
    /// while `cooldown` is in effect (AWS's default is not to honour it).
    pub fn set_desired(
        &self,
        desired: u32,
        honor_cooldown: bool,
        cooldown: &Cooldown,
        now: Duration,
    ) -> Result<CapacityChange, CapacityError> {
        if desired > self.max {
            return Err(CapacityError::AboveMax {
                desired,
                max: self.max,
            });
        }
        if desired < self.min {
            return Err(CapacityError::BelowMin {
                desired,
                min: self.min,
            });
        }
        if honor_cooldown && let Some(remaining) = cooldown.remaining(now) {
            return Err(CapacityError::InCooldown { remaining });
        }
        Ok(CapacityChange {
            from: self.desired,
            to: desired,
            cause: Cause::UserRequest,
        })
    }
}

/// How a policy's `scaling_adjustment` is read (AWS's `AdjustmentType`): the config's.
pub use crate::config::AdjustmentType;

/// One adjustment: its type, its value and (percent only) the minimum magnitude of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjustment {
    kind: AdjustmentType,
    value: i32,
    min_adjustment_magnitude: Option<u32>,
}

impl Adjustment {
    /// An adjustment; `ExactCapacity` below 0 and `MinAdjustmentMagnitude` on a type other than
    /// `PercentChangeInCapacity` are refused, as AWS's PutScalingPolicy refuses them.
    pub fn new(
        kind: AdjustmentType,
        value: i32,
        min_adjustment_magnitude: Option<u32>,
    ) -> Result<Self, CapacityError> {
        if kind == AdjustmentType::ExactCapacity && value < 0 {
            return Err(CapacityError::NegativeExactCapacity { value });
        }
        if min_adjustment_magnitude.is_some() && kind != AdjustmentType::PercentChangeInCapacity {
            return Err(CapacityError::MagnitudeWithoutPercent { kind });
        }
        Ok(Self {
            kind,
            value,
            min_adjustment_magnitude,
        })
    }

    /// The adjustment type.
    pub fn kind(&self) -> AdjustmentType {
        self.kind
    }

    /// The value (`ScalingAdjustment`).
    pub fn value(&self) -> i32 {
        self.value
    }

    /// The capacity this adjustment asks for from `current`, before the group's bounds clamp
    /// it (so it may be negative or above the maximum).
    pub fn target(&self, current: u32) -> i64 {
        let current = i64::from(current);
        match self.kind {
            AdjustmentType::ChangeInCapacity => current + i64::from(self.value),
            AdjustmentType::ExactCapacity => i64::from(self.value),
            AdjustmentType::PercentChangeInCapacity => {
                let mut change = percent_change(current, self.value);
                if let Some(magnitude) = self.min_adjustment_magnitude {
                    // A change of 0 stays 0 (a "no change" step); any other change is at
                    // least the magnitude, in its own direction.
                    if change != 0 && change.abs() < i64::from(magnitude) {
                        change = change.signum() * i64::from(magnitude);
                    }
                }
                current + change
            }
        }
    }
}

/// `percent` % of `current` rounded as AWS rounds a `PercentChangeInCapacity` result: values
/// above 1 down, between 0 and 1 to 1, between -1 and 0 to -1, below -1 up (toward zero).
///
/// In integers so no float error can move a boundary: truncation toward zero is "down" above
/// 0 and "up" below it, and a non-zero result that truncates to 0 becomes 1 or -1.
pub fn percent_change(current: i64, percent: i32) -> i64 {
    let hundredths = current * i64::from(percent);
    let truncated = hundredths / 100;
    if truncated == 0 && hundredths != 0 {
        hundredths.signum()
    } else {
        truncated
    }
}

/// When the group's cooldown ends. It is started when a scaling activity ends (for a launch,
/// when the instance enters InService, AWS's "Lifecycle hooks: Cooldowns and simple scaling").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cooldown {
    ends_at: Option<Duration>,
}

impl Cooldown {
    /// No cooldown in effect.
    pub fn none() -> Self {
        Self::default()
    }

    /// A cooldown of `length` from `started_at`.
    pub fn started(started_at: Duration, length: Duration) -> Self {
        Self {
            ends_at: Some(started_at.saturating_add(length)),
        }
    }

    /// When it ends, if one was started.
    pub fn ends_at(&self) -> Option<Duration> {
        self.ends_at
    }

    /// Whether it is still in effect at `now`.
    pub fn in_effect(&self, now: Duration) -> bool {
        self.remaining(now).is_some()
    }

    /// The time left at `now`; `None` once it has ended.
    pub fn remaining(&self, now: Duration) -> Option<Duration> {
        self.ends_at
            .and_then(|end| end.checked_sub(now))
            .filter(|left| !left.is_zero())
    }
}

/// Why the desired capacity changed, in the words AWS writes in a scaling activity's cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// An alarm (a named one, or a target tracking policy's own) triggered a policy.
    Alarm { alarm: String, policy: String },
    /// A user's `set-desired`.
    UserRequest,
    /// A config change or an API update of the group's sizes.
    UserUpdate { min: u32, max: u32, desired: u32 },
    /// A scheduled action.
    Scheduled { min: u32, max: u32, desired: u32 },
    /// `terminate-instance --decrement`.
    UserTerminateWithDecrement { instance: String },
}

/// A change of the desired capacity and its cause; `Display` writes AWS's sentence, e.g. "a
/// monitor alarm X in state ALARM triggered policy Y changing the desired capacity from 2 to
/// 3" (AWS's describe-scaling-activities `Cause`, without its leading "At <time>", which the
/// activity history adds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityChange {
    /// The desired capacity before.
    pub from: u32,
    /// The desired capacity after.
    pub to: u32,
    /// Why.
    pub cause: Cause,
}

impl fmt::Display for CapacityChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Alarm { alarm, policy } => write!(
                f,
                "a monitor alarm {alarm} in state ALARM triggered policy {policy} \
                 changing the desired capacity from {} to {}",
                self.from, self.to
            ),
            Cause::UserRequest => write!(
                f,
                "a user request explicitly set group desired capacity \
                 changing the desired capacity from {} to {}",
                self.from, self.to
            ),
            Cause::UserUpdate { min, max, desired } => write!(
                f,
                "a user request update of AutoScalingGroup constraints to min: {min}, max: \
                 {max}, desired: {desired} changing the desired capacity from {} to {}",
                self.from, self.to
            ),
            Cause::Scheduled { min, max, desired } => write!(
                f,
                "a scheduled action update of AutoScalingGroup constraints to min: {min}, \
                 max: {max}, desired: {desired} changing the desired capacity from {} to {}",
                self.from, self.to
            ),
            Cause::UserTerminateWithDecrement { instance } => write!(
                f,
                "instance {instance} was taken out of service in response to a user request, \
                 shrinking the capacity from {} to {}",
                self.from, self.to
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percent(value: i32, magnitude: Option<u32>) -> Adjustment {
        Adjustment::new(AdjustmentType::PercentChangeInCapacity, value, magnitude).unwrap()
    }

    #[test]
    fn bounds_out_of_order_are_refused() {
        assert!(GroupCapacity::new(1, 2, 6).is_ok());
        assert!(GroupCapacity::new(2, 2, 2).is_ok());
        assert_eq!(
            GroupCapacity::new(3, 2, 6),
            Err(CapacityError::Bounds {
                min: 3,
                desired: 2,
                max: 6
            })
        );
        assert!(GroupCapacity::new(1, 7, 6).is_err());
        assert!(GroupCapacity::new(5, 5, 4).is_err());
    }

    /// AWS's examples of the rounding, from "Scaling adjustment types": 12.7 -> 12,
    /// .67 -> 1, -.58 -> -1, -6.67 -> -6 (here as a percentage of a capacity giving each).
    #[test]
    fn percent_change_rounds_as_aws_documents() {
        // 127% of 10 = 12.7 -> 12 (above 1: down).
        assert_eq!(percent_change(10, 127), 12);
        // 67% of 1 = .67 -> 1 (between 0 and 1: 1).
        assert_eq!(percent_change(1, 67), 1);
        // -58% of 1 = -.58 -> -1 (between -1 and 0: -1).
        assert_eq!(percent_change(1, -58), -1);
        // -667% of 1 = -6.67 -> -6 (below -1: up, toward zero).
        assert_eq!(percent_change(1, -667), -6);
        // Whole results and zero stay as they are.
        assert_eq!(percent_change(10, 10), 1);
        assert_eq!(percent_change(10, -30), -3);
        assert_eq!(percent_change(10, 0), 0);
        assert_eq!(percent_change(0, 50), 0);
        // The user guide's step example: 30% of 11 = 3.3 -> 3; -30% of 13 = -3.9 -> -3.
        assert_eq!(percent_change(11, 30), 3);
        assert_eq!(percent_change(13, -30), -3);
        assert_eq!(percent_change(14, -10), -1);
    }

    #[test]
    fn min_adjustment_magnitude_raises_a_small_percent_change() {
        // AWS's example: add 25% with a minimum of 2 to a group of 4: 25% of 4 is 1, 2 added.
        assert_eq!(percent(25, Some(2)).target(4), 6);
        assert_eq!(percent(25, None).target(4), 5);
        // The magnitude holds when scaling in too, and never turns "no change" into a change.
        assert_eq!(percent(-10, Some(2)).target(4), 2);
        assert_eq!(percent(0, Some(2)).target(4), 4);
        // A change already above the magnitude is kept.
        assert_eq!(percent(50, Some(2)).target(10), 15);
    }

    #[test]
    fn adjustment_types_read_the_value_as_aws_does() {
        let change = Adjustment::new(AdjustmentType::ChangeInCapacity, 5, None).unwrap();
        let exact = Adjustment::new(AdjustmentType::ExactCapacity, 5, None).unwrap();
        // AWS's examples: current 3, adjustment 5: 8 and 5; current 10, 10%: 11.
        assert_eq!(change.target(3), 8);
        assert_eq!(exact.target(3), 5);
        assert_eq!(percent(10, None).target(10), 11);
    }

    #[test]
    fn invalid_adjustments_are_refused() {
        assert_eq!(
            Adjustment::new(AdjustmentType::ExactCapacity, -1, None),
            Err(CapacityError::NegativeExactCapacity { value: -1 })
        );
        assert!(matches!(
            Adjustment::new(AdjustmentType::ChangeInCapacity, 1, Some(2)),
            Err(CapacityError::MagnitudeWithoutPercent { .. })
        ));
    }

    #[test]
    fn a_policy_result_is_clamped_to_the_bounds() {
        // AWS's examples: max 3, current 2, add 3: only 1 added; min 2, current 3, remove 2:
        // only 1 removed.
        let group = GroupCapacity::new(1, 2, 3).unwrap();
        let add3 = Adjustment::new(AdjustmentType::ChangeInCapacity, 3, None).unwrap();
        assert_eq!(group.clamp(add3.target(2)), 3);
        let group = GroupCapacity::new(2, 3, 6).unwrap();
        let remove2 = Adjustment::new(AdjustmentType::ChangeInCapacity, -2, None).unwrap();
        assert_eq!(group.clamp(remove2.target(3)), 2);
        assert_eq!(group.clamp(-40), 2);
    }

    #[test]
    fn applying_a_change_sets_desired_within_the_bounds() {
        let group = GroupCapacity::new(1, 2, 6).unwrap();
        let change = group
            .set_desired(5, false, &Cooldown::none(), Duration::ZERO)
            .unwrap();
        assert_eq!(group.apply(&change).desired(), 5);
        // Bounds lowered since the change was decided: it is clamped.
        let lowered = GroupCapacity::new(1, 2, 4).unwrap();
        assert_eq!(lowered.apply(&change), GroupCapacity::new(1, 4, 4).unwrap());
    }

    #[test]
    fn set_desired_outside_the_bounds_is_refused_in_aws_words() {
        let group = GroupCapacity::new(1, 2, 6).unwrap();
        let err = group
            .set_desired(10, false, &Cooldown::none(), Duration::ZERO)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "New SetDesiredCapacity value 10 is above max value 6 for the AutoScalingGroup."
        );
        assert!(matches!(
            group.set_desired(0, false, &Cooldown::none(), Duration::ZERO),
            Err(CapacityError::BelowMin { desired: 0, min: 1 })
        ));
    }

    #[test]
    fn set_desired_waits_for_the_cooldown_only_when_asked() {
        let group = GroupCapacity::new(1, 2, 6).unwrap();
        let cooldown = Cooldown::started(Duration::from_secs(100), DEFAULT_COOLDOWN);
        let during = Duration::from_secs(399);
        // AWS's default: the cooldown does not hold back a manual change.
        let change = group.set_desired(3, false, &cooldown, during).unwrap();
        assert_eq!(
            change.to_string(),
            "a user request explicitly set group desired capacity changing the desired \
             capacity from 2 to 3"
        );
        assert_eq!(
            group.set_desired(3, true, &cooldown, during),
            Err(CapacityError::InCooldown {
                remaining: Duration::from_secs(1)
            })
        );
        // At its end it no longer holds.
        assert!(
            group
                .set_desired(3, true, &cooldown, Duration::from_secs(400))
                .is_ok()
        );
    }

    #[test]
    fn an_alarm_cause_reads_as_aws_activity_history() {
        let change = CapacityChange {
            from: 2,
            to: 3,
            cause: Cause::Alarm {
                alarm: "cpu-high".into(),
                policy: "add-one".into(),
            },
        };
        assert_eq!(
            change.to_string(),
            "a monitor alarm cpu-high in state ALARM triggered policy add-one changing the \
             desired capacity from 2 to 3"
        );
    }
}
