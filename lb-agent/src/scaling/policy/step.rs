//! Step scaling: steps with bounds relative to the alarm's threshold, each with its own
//! adjustment; the step covering the breach applies, and the policy keeps answering alarms
//! while activities are in progress (no cooldown), counting instances the way AWS does.
//!
//! AWS: User Guide "Step and simple scaling policies", sections "Step adjustments for step
//! scaling" (the bound rules: no overlap, no gap, at most one null lower and one null upper
//! bound, a negative lower bound needs a null lower bound, a positive upper bound needs a null
//! upper bound, not both null in one step; above the threshold the lower bound is inclusive and
//! the upper exclusive, below it the reverse) and "Instance warm-up" (warming-up instances are
//! not part of the current capacity when scaling out, so breaches in the same step make one
//! activity; terminating instances are part of it when scaling in).

use std::cmp::Ordering;

use super::{GroupView, Hold, PolicyError, Vote};
use crate::scaling::capacity::{Adjustment, AdjustmentType, CapacityChange, Cause};

/// One step: the breach range it covers (metric minus threshold; `None` is infinite) and its
/// adjustment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepAdjustment {
    /// `MetricIntervalLowerBound`; `None` is negative infinity.
    pub lower: Option<f64>,
    /// `MetricIntervalUpperBound`; `None` is positive infinity.
    pub upper: Option<f64>,
    /// `ScalingAdjustment`, read by the policy's adjustment type.
    pub adjustment: i32,
}

impl StepAdjustment {
    /// Whether the step covers `breach` on the side of the threshold the breach is on: above
    /// (or at) it the lower bound is inclusive and the upper exclusive; below it the lower
    /// bound is exclusive and the upper inclusive.
    fn covers(&self, breach: f64, above: bool) -> bool {
        let lower_ok = self
            .lower
            .is_none_or(|l| if above { breach >= l } else { breach > l });
        let upper_ok = self
            .upper
            .is_none_or(|u| if above { breach < u } else { breach <= u });
        lower_ok && upper_ok
    }
}

/// A step scaling policy, its steps validated by AWS's rules and kept in ascending order.
#[derive(Debug, Clone, PartialEq)]
pub struct StepScalingPolicy {
    name: String,
    adjustment_type: AdjustmentType,
    min_adjustment_magnitude: Option<u32>,
    steps: Vec<StepAdjustment>,
}

impl StepScalingPolicy {
    /// A step policy; its steps are checked against AWS's bound rules, every broken one a
    /// typed error (the first found).
    pub fn new(
        name: impl Into<String>,
        adjustment_type: AdjustmentType,
        steps: Vec<StepAdjustment>,
        min_adjustment_magnitude: Option<u32>,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        for step in &steps {
            Adjustment::new(adjustment_type, step.adjustment, min_adjustment_magnitude).map_err(
                |source| PolicyError::Adjustment {
                    policy: name.clone(),
                    source,
                },
            )?;
        }
        let steps = validate_steps(&name, steps)?;
        Ok(Self {
            name,
            adjustment_type,
            min_adjustment_magnitude,
            steps,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The steps, in ascending order of their ranges.
    pub fn steps(&self) -> &[StepAdjustment] {
        &self.steps
    }

    /// The step covering `breach` (metric minus threshold). Exactly at the threshold a step
    /// reaching up from it is preferred; a scale-in policy's step reaching down to it (upper
    /// bound 0, inclusive below the threshold) also covers it.
    pub fn step_for(&self, breach: f64) -> Option<&StepAdjustment> {
        let find = |above: bool| self.steps.iter().find(|s| s.covers(breach, above));
        match breach.partial_cmp(&0.0) {
            Some(Ordering::Greater) => find(true),
            Some(Ordering::Less) => find(false),
            Some(Ordering::Equal) => find(true).or_else(|| find(false)),
            None => None,
        }
    }

    /// The decision when `alarm` (threshold `threshold`) is in ALARM with `metric`, the
    /// aggregated metric value.
    ///
    /// Scaling out, the adjustment applies to the warmed-up instances and only raises the
    /// desired capacity (an alarm in the same step while the first step's instances warm up
    /// adds nothing more). Scaling in, it applies to the warmed-up and terminating instances and
    /// only lowers the desired capacity, and waits while any instance warms up.
    pub fn on_alarm(&self, alarm: &str, threshold: f64, metric: f64, group: &GroupView) -> Vote {
        let breach = metric - threshold;
        let Some(step) = self.step_for(breach) else {
            return Vote::Hold(Hold::NoStepFound { breach });
        };
        let Ok(adjustment) = Adjustment::new(
            self.adjustment_type,
            step.adjustment,
            self.min_adjustment_magnitude,
        ) else {
            // Checked in `new`; an impossible step changes nothing.
            return Vote::Hold(Hold::NoChange);
        };
        let desired = group.capacity.desired();
        let change = |to: u32| CapacityChange {
            from: desired,
            to,
            cause: Cause::Alarm {
                alarm: alarm.to_owned(),
                policy: self.name.clone(),
            },
        };

        let out_base = group.scale_out_base();
        let out_target = adjustment.target(out_base);
        if out_target > i64::from(out_base) {
            let to = group.capacity.clamp(out_target);
            return if to > desired {
                Vote::ScaleOut(change(to))
            } else {
                Vote::Hold(Hold::NoChange)
            };
        }

        let in_base = group.scale_in_base();
        let in_target = adjustment.target(in_base);
        if in_target < i64::from(in_base) {
            let to = group.capacity.clamp(in_target);
            if to >= desired {
                return Vote::Hold(Hold::NoChange);
            }
            if group.warming_up > 0 {
                return Vote::Hold(Hold::WarmingUp {
                    instances: group.warming_up,
                });
            }
            return Vote::ScaleIn(change(to));
        }
        Vote::Hold(Hold::NoChange)
    }
}

/// The steps sorted by range, or the first AWS rule they break.
fn validate_steps(
    policy: &str,
    mut steps: Vec<StepAdjustment>,
) -> Result<Vec<StepAdjustment>, PolicyError> {
    let policy = policy.to_owned();
    if steps.is_empty() {
        return Err(PolicyError::NoSteps { policy });
    }
    for (step, s) in steps.iter().enumerate() {
        if s.lower.is_some_and(|l| !l.is_finite()) || s.upper.is_some_and(|u| !u.is_finite()) {
            return Err(PolicyError::BoundNotFinite { policy, step });
        }
        match (s.lower, s.upper) {
            (None, None) => return Err(PolicyError::BothBoundsNull { policy, step }),
            (Some(lower), Some(upper)) if lower >= upper => {
                return Err(PolicyError::EmptyStep {
                    policy,
                    step,
                    lower,
                    upper,
                });
            }
            _ => {}
        }
    }
    if steps.iter().filter(|s| s.lower.is_none()).count() > 1 {
        return Err(PolicyError::SeveralNullLowerBounds { policy });
    }
    if steps.iter().filter(|s| s.upper.is_none()).count() > 1 {
        return Err(PolicyError::SeveralNullUpperBounds { policy });
    }
    let has_null_lower = steps.iter().any(|s| s.lower.is_none());
    let has_null_upper = steps.iter().any(|s| s.upper.is_none());
    if let Some(step) = steps
        .iter()
        .position(|s| s.lower.is_some_and(|l| l < 0.0))
        .filter(|_| !has_null_lower)
    {
        return Err(PolicyError::MissingNullLowerBound { policy, step });
    }
    if let Some(step) = steps
        .iter()
        .position(|s| s.upper.is_some_and(|u| u > 0.0))
        .filter(|_| !has_null_upper)
    {
        return Err(PolicyError::MissingNullUpperBound { policy, step });
    }
    // Sorted by lower bound (none first), each step must start where the previous one ends.
    steps.sort_by(|a, b| {
        let key = |s: &StepAdjustment| s.lower.unwrap_or(f64::NEG_INFINITY);
        key(a).total_cmp(&key(b))
    });
    for pair in steps.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        // A step open upward followed by another, or one open downward after another,
        // covers the other's range.
        let (Some(end), Some(start)) = (before.upper, after.lower) else {
            let at = after.lower.or(before.upper).unwrap_or(0.0);
            return Err(PolicyError::Overlap { policy, at });
        };
        match end.total_cmp(&start) {
            Ordering::Less => {
                return Err(PolicyError::Gap {
                    policy,
                    from: end,
                    to: start,
                });
            }
            Ordering::Greater => return Err(PolicyError::Overlap { policy, at: start }),
            Ordering::Equal => {}
        }
    }
    Ok(steps)
}
