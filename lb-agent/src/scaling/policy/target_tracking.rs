//! Target tracking: keep a metric at a target by sizing the group in proportion to it,
//! scaling out fast and in slowly.
//!
//! AWS creates two alarms for each target tracking policy and we evaluate the same two:
//! - `AlarmHigh`: the metric above the target for 3 datapoints out of 3 (one a minute): scale
//!   out.
//! - `AlarmLow`: the metric below 90% of the target for 15 datapoints out of 15: scale in. So
//!   there is no scale-in within 10% of the target, and a scale-in needs a quarter hour of low
//!   load.
//!
//! These thresholds and datapoint counts are those of the alarms AWS creates for a target
//! tracking policy, named `TargetTracking-<group>-AlarmHigh-<id>` and `...-AlarmLow-<id>`, as
//! CloudWatch shows them (the user guide only says scale-in is "more gradual"; the 3 and 15
//! datapoints are also reported in aws-samples/amazon-aurora-labs-for-mysql issue 3, and the
//! 10% margin is the issue's own rule). The datapoint counts are settable for tests and short
//! periods; the alarm names here carry the policy's name where AWS puts a random id.
//!
//! The new capacity is `ceil(current * metric / target)`: rounded up, so a scale-out adds
//! enough and a scale-in removes no more than needed (User Guide "Target tracking scaling
//! policies", section "Considerations": "we round up and add two instances ... we remove just
//! one instance"). Scaling out, the current capacity is the warmed-up instances; scaling in,
//! the warmed-up and terminating ones, and not while any instance warms up (see
//! `super`'s doc). `disable_scale_in` makes the policy scale out only.

use super::{GroupView, Hold, PolicyError, Vote};
use crate::scaling::capacity::{CapacityChange, Cause};

/// The scale-in alarm's threshold as a share of the target (AWS's `AlarmLow`).
pub const SCALE_IN_THRESHOLD_RATIO: f64 = 0.9;
/// Datapoints above the target that put `AlarmHigh` in ALARM (AWS: 3 out of 3).
pub const SCALE_OUT_DATAPOINTS: usize = 3;
/// Datapoints below the scale-in threshold that put `AlarmLow` in ALARM (AWS: 15 out of 15).
pub const SCALE_IN_DATAPOINTS: usize = 15;

/// A target tracking policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetTrackingPolicy {
    group: String,
    name: String,
    target: f64,
    disable_scale_in: bool,
    scale_out_datapoints: usize,
    scale_in_datapoints: usize,
}

impl TargetTrackingPolicy {
    /// A policy of group `group` keeping its metric at `target` (a positive number), with
    /// AWS's datapoint counts and scale-in enabled.
    pub fn new(
        group: impl Into<String>,
        name: impl Into<String>,
        target: f64,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        if !(target.is_finite() && target > 0.0) {
            return Err(PolicyError::InvalidTarget {
                policy: name,
                target,
            });
        }
        Ok(Self {
            group: group.into(),
            name,
            target,
            disable_scale_in: false,
            scale_out_datapoints: SCALE_OUT_DATAPOINTS,
            scale_in_datapoints: SCALE_IN_DATAPOINTS,
        })
    }

    /// The same policy with scale-in disabled (`DisableScaleIn`) or enabled.
    pub fn with_disable_scale_in(mut self, disable_scale_in: bool) -> Self {
        self.disable_scale_in = disable_scale_in;
        self
    }

    /// The same policy with other datapoint counts for its two alarms (each at least 1).
    pub fn with_datapoints(mut self, scale_out: usize, scale_in: usize) -> Self {
        self.scale_out_datapoints = scale_out.max(1);
        self.scale_in_datapoints = scale_in.max(1);
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The target value.
    pub fn target(&self) -> f64 {
        self.target
    }

    /// The name of its scale-out alarm, AWS's pattern with the policy's name for the id.
    pub fn alarm_high(&self) -> String {
        format!("TargetTracking-{}-AlarmHigh-{}", self.group, self.name)
    }

    /// The name of its scale-in alarm.
    pub fn alarm_low(&self) -> String {
        format!("TargetTracking-{}-AlarmLow-{}", self.group, self.name)
    }

    /// The decision from `datapoints`, the metric's values one a period, oldest first, each
    /// over the warmed-up instances in service (see [`group_average`]).
    pub fn evaluate(&self, datapoints: &[f64], group: &GroupView) -> Vote {
        let Some(&latest) = datapoints.last() else {
            return Vote::Hold(Hold::InsufficientData);
        };
        let last = |n: usize| &datapoints[datapoints.len().saturating_sub(n)..];
        let desired = group.capacity.desired();
        let change = |to: u32, alarm: String| CapacityChange {
            from: desired,
            to,
            cause: Cause::Alarm {
                alarm,
                policy: self.name.clone(),
            },
        };

        if latest > self.target {
            let high = last(self.scale_out_datapoints);
            if high.len() < self.scale_out_datapoints || high.iter().any(|&v| v <= self.target) {
                return self.hold_for_scale_in(Hold::Evaluating);
            }
            let to = group
                .capacity
                .clamp(self.proportional(group.scale_out_base(), latest));
            return if to > desired {
                Vote::ScaleOut(change(to, self.alarm_high()))
            } else {
                self.hold_for_scale_in(Hold::NoChange)
            };
        }

        if self.disable_scale_in {
            return Vote::Hold(Hold::ScaleInDisabled);
        }
        let threshold = self.target * SCALE_IN_THRESHOLD_RATIO;
        if latest >= threshold {
            return Vote::Hold(Hold::WithinScaleInMargin);
        }
        let low = last(self.scale_in_datapoints);
        if low.len() < self.scale_in_datapoints || low.iter().any(|&v| v >= threshold) {
            return Vote::Hold(Hold::Evaluating);
        }
        if group.warming_up > 0 {
            return Vote::Hold(Hold::WarmingUp {
                instances: group.warming_up,
            });
        }
        let to = group
            .capacity
            .clamp(self.proportional(group.scale_in_base(), latest));
        if to < desired {
            Vote::ScaleIn(change(to, self.alarm_low()))
        } else {
            Vote::Hold(Hold::NoChange)
        }
    }

    /// A hold; with scale-in disabled, the policy abstains from scale-in instead, so that
    /// [`super::combine`] does not count it as keeping the capacity.
    fn hold_for_scale_in(&self, hold: Hold) -> Vote {
        if self.disable_scale_in {
            Vote::Hold(Hold::ScaleInDisabled)
        } else {
            Vote::Hold(hold)
        }
    }

    /// `ceil(current * metric / target)`, the capacity that brings the metric to the target if
    /// the load spreads evenly. The quotient is taken a hair low before rounding up so that
    /// float error (10 * 55 / 50 as 11.000000000000002) does not add an instance.
    fn proportional(&self, current: u32, metric: f64) -> i64 {
        let exact = f64::from(current) * metric / self.target;
        let rounded = (exact - 1e-9).ceil();
        if rounded.is_finite() {
            // Saturating: a metric absurdly above the target only asks for the maximum.
            rounded as i64
        } else {
            i64::MAX
        }
    }
}

/// One instance's metric value and whether it counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceMetric {
    /// The value (CPU %, flows, requests ... per instance).
    pub value: f64,
    /// Whether the instance is InService.
    pub in_service: bool,
    /// Whether its warmup has ended.
    pub warmed_up: bool,
}

/// The group's metric: the average over instances in service whose warmup has ended (AWS:
/// "Until its specified warm-up time has expired, an instance is not counted toward the
/// aggregated metrics"); `None` when no instance counts.
pub fn group_average(instances: &[InstanceMetric]) -> Option<f64> {
    let counted: Vec<f64> = instances
        .iter()
        .filter(|i| i.in_service && i.warmed_up && i.value.is_finite())
        .map(|i| i.value)
        .collect();
    if counted.is_empty() {
        None
    } else {
        Some(counted.iter().sum::<f64>() / counted.len() as f64)
    }
}
