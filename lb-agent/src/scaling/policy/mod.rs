//! Dynamic scaling policies: simple, step and target tracking, each a pure decision over what
//! the group looks like now ([`GroupView`]), giving a [`Vote`]; several target tracking
//! policies on one group are combined with [`combine`].
//!
//! Rules followed (Amazon EC2 Auto Scaling User Guide):
//! - "Dynamic scaling", section "Multiple scaling policies": with several policies, the one
//!   giving the largest capacity wins, for scale-out and for scale-in alike.
//! - "Target tracking scaling policies", section "Considerations": scale out if any target
//!   tracking policy is ready to, scale in only if all of them (those with scale-in enabled)
//!   are ready to.
//! - "Set the default instance warmup", section "Understand how the default instance warmup
//!   affects scaling", and the warm-up sections of the step and target tracking pages: an
//!   instance warming up is not counted in the current capacity when scaling out nor in the
//!   metric; terminating instances are counted when scaling in; scale-in by step and target
//!   tracking policies is blocked until instances finish warming up.
//! - API reference `PutScalingPolicy`, `EstimatedInstanceWarmup`: the policy's warmup, else the
//!   group's default instance warmup, else the group's default cooldown.

pub mod simple;
pub mod step;
pub mod target_tracking;

use std::time::Duration;

use crate::scaling::capacity::{CapacityChange, CapacityError, GroupCapacity};

pub use simple::SimpleScalingPolicy;
pub use step::{StepAdjustment, StepScalingPolicy};
pub use target_tracking::{InstanceMetric, TargetTrackingPolicy};

/// Errors in a policy's definition (the configuration's side).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The policy's adjustment (or one step's) is invalid.
    #[error("policy {policy}: {source}")]
    Adjustment {
        policy: String,
        #[source]
        source: CapacityError,
    },
    /// A step scaling policy without steps.
    #[error("policy {policy}: a step scaling policy needs at least one step adjustment")]
    NoSteps { policy: String },
    /// A bound that is not a number (NaN or infinite; a missing bound is written as none).
    #[error("policy {policy}: step {step} has a bound that is not a finite number")]
    BoundNotFinite { policy: String, step: usize },
    /// A step with neither a lower nor an upper bound.
    #[error(
        "policy {policy}: step {step}: the upper and lower bound can't be null in the same step adjustment"
    )]
    BothBoundsNull { policy: String, step: usize },
    /// A step whose lower bound is not below its upper bound.
    #[error("policy {policy}: step {step}: lower bound {lower} must be below upper bound {upper}")]
    EmptyStep {
        policy: String,
        step: usize,
        lower: f64,
        upper: f64,
    },
    /// More than one step without a lower bound.
    #[error("policy {policy}: only one step adjustment can have a null lower bound")]
    SeveralNullLowerBounds { policy: String },
    /// More than one step without an upper bound.
    #[error("policy {policy}: only one step adjustment can have a null upper bound")]
    SeveralNullUpperBounds { policy: String },
    /// A negative lower bound but no step reaching down to negative infinity.
    #[error(
        "policy {policy}: step {step} has a negative lower bound, so a step with a null \
         lower bound is needed"
    )]
    MissingNullLowerBound { policy: String, step: usize },
    /// A positive upper bound but no step reaching up to positive infinity.
    #[error(
        "policy {policy}: step {step} has a positive upper bound, so a step with a null \
         upper bound is needed"
    )]
    MissingNullUpperBound { policy: String, step: usize },
    /// Two steps leave a range uncovered.
    #[error("policy {policy}: the step ranges have a gap between {from} and {to}")]
    Gap { policy: String, from: f64, to: f64 },
    /// Two steps cover the same range.
    #[error("policy {policy}: the step ranges overlap around {at}")]
    Overlap { policy: String, at: f64 },
    /// A target tracking target that is not a positive number.
    #[error("policy {policy}: the target value must be a positive number, not {target}")]
    InvalidTarget { policy: String, target: f64 },
}

/// What a policy sees of its group when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupView {
    /// Bounds and desired capacity.
    pub capacity: GroupCapacity,
    /// Instances InService whose warmup has ended: the current capacity when scaling out, and
    /// the only instances the metric is taken over.
    pub warmed_up: u32,
    /// Instances launched and not yet warmed up (Pending, or InService within their warmup):
    /// not counted when scaling out; while there are any, step and target tracking policies
    /// do not scale in.
    pub warming_up: u32,
    /// Instances on their way out (Terminating and its wait states): still counted when
    /// scaling in, so a second alarm does not remove them twice.
    pub terminating: u32,
}

impl GroupView {
    /// The current capacity a scale-out is computed from: warmed-up instances only.
    pub fn scale_out_base(&self) -> u32 {
        self.warmed_up
    }

    /// The current capacity a scale-in is computed from: warmed-up and terminating instances.
    pub fn scale_in_base(&self) -> u32 {
        self.warmed_up.saturating_add(self.terminating)
    }
}

/// Why a policy holds the desired capacity where it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// The policy's result is the current desired capacity (at a bound, or already there).
    NoChange,
    /// The alarm has not yet seen enough breaching datapoints.
    Evaluating,
    /// The metric is below the target, but not below the scale-in threshold.
    WithinScaleInMargin,
    /// No metric: nothing to scale on (AWS does not scale in on insufficient data).
    InsufficientData,
    /// A scale-in waits for these instances to finish warming up.
    WarmingUp { instances: u32 },
    /// The policy's scale-in is disabled: it abstains from scale-in decisions.
    ScaleInDisabled,
    /// A simple scaling policy waits for the cooldown to end.
    Cooldown { remaining: Duration },
    /// A simple scaling policy waits for the scaling activity in progress to end.
    ActivityInProgress,
    /// No step covers this breach (AWS: "No step adjustment found for metric value").
    NoStepFound { breach: f64 },
}

/// A policy's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Vote {
    /// Raise the desired capacity.
    ScaleOut(CapacityChange),
    /// Lower the desired capacity.
    ScaleIn(CapacityChange),
    /// Leave it.
    Hold(Hold),
}

impl Vote {
    /// The change, if the vote is for one.
    pub fn change(&self) -> Option<&CapacityChange> {
        match self {
            Self::ScaleOut(change) | Self::ScaleIn(change) => Some(change),
            Self::Hold(_) => None,
        }
    }

    /// A vote from a change: out, in, or a hold when it changes nothing.
    fn from_change(change: CapacityChange) -> Self {
        match change.to.cmp(&change.from) {
            std::cmp::Ordering::Greater => Self::ScaleOut(change),
            std::cmp::Ordering::Less => Self::ScaleIn(change),
            std::cmp::Ordering::Equal => Self::Hold(Hold::NoChange),
        }
    }
}

/// Several target tracking policies' votes as one decision: scale out if any votes to (the
/// largest result), scale in only if every policy with scale-in enabled votes to (the largest
/// result, i.e. the smallest reduction); otherwise no change.
pub fn combine(votes: &[Vote]) -> Option<CapacityChange> {
    let largest_out = votes
        .iter()
        .filter_map(|vote| match vote {
            Vote::ScaleOut(change) => Some(change),
            _ => None,
        })
        .max_by_key(|change| change.to);
    if let Some(change) = largest_out {
        return Some(change.clone());
    }
    let mut voters = votes
        .iter()
        .filter(|vote| !matches!(vote, Vote::Hold(Hold::ScaleInDisabled)))
        .peekable();
    voters.peek()?;
    let mut largest_in: Option<&CapacityChange> = None;
    for vote in voters {
        match vote {
            Vote::ScaleIn(change) if largest_in.is_none_or(|best| change.to > best.to) => {
                largest_in = Some(change);
            }
            Vote::ScaleIn(_) => {}
            // One policy not ready to scale in keeps the capacity.
            _ => return None,
        }
    }
    largest_in.cloned()
}

/// The warmup an instance launched by a policy gets: the policy's estimated instance warmup,
/// else the group's default instance warmup, else the group's default cooldown (AWS's
/// fallback order for `EstimatedInstanceWarmup`).
pub fn instance_warmup(
    estimated_instance_warmup: Option<Duration>,
    default_instance_warmup: Option<Duration>,
    default_cooldown: Duration,
) -> Duration {
    estimated_instance_warmup
        .or(default_instance_warmup)
        .unwrap_or(default_cooldown)
}

/// Whether an instance InService since `in_service_since` has finished its `warmup` at `now`
/// (the warmup starts when the instance enters InService).
pub fn is_warmed_up(in_service_since: Duration, warmup: Duration, now: Duration) -> bool {
    now >= in_service_since.saturating_add(warmup)
}

#[cfg(test)]
mod tests;
