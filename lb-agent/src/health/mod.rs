//! Target health: the states a target goes through, and how check results move it.
//!
//! `Health` is a pure state machine (host-testable); `probe` runs one check (the agent's
//! `monitor` schedules them).
//! States and reason codes are AWS's, so an operator reads them as on an ELB target group.

pub mod probe;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use probe::{Failure, ProbeResult};

/// A target's state in one target group, as `targets list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Registered, not yet decided by checks.
    Initial,
    /// Passed `healthy_threshold` checks in a row.
    Healthy,
    /// Failed `unhealthy_threshold` checks in a row.
    Unhealthy,
    /// Not checked (checks disabled, or a `udp` group without a check): always in service.
    Unavailable,
    /// Deregistered: no new flows, established ones kept until the deregistration delay ends.
    Draining,
    /// No listener forwards to the target's group.
    Unused,
}

impl TargetState {
    /// As in logs and `health_transitions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Unavailable => "unavailable",
            Self::Draining => "draining",
            Self::Unused => "unused",
        }
    }
}

/// AWS's reason codes.
pub mod reason {
    pub const INITIAL_HEALTH_CHECKING: &str = "Elb.InitialHealthChecking";
    pub const DEREGISTRATION_IN_PROGRESS: &str = "Target.DeregistrationInProgress";
    pub const HEALTH_CHECK_DISABLED: &str = "Target.HealthCheckDisabled";
    pub const NOT_IN_USE: &str = "Target.NotInUse";
    pub const FAILED_HEALTH_CHECKS: &str = "Target.FailedHealthChecks";
}

/// The thresholds of a group's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Successes in a row that make a target healthy.
    pub healthy: u32,
    /// Failures in a row that make a target unhealthy.
    pub unhealthy: u32,
}

/// A target's checked health in one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `Initial`, `Healthy` or `Unhealthy` (the checked states).
    pub state: TargetState,
    /// Why it is in that state (`None` when healthy).
    pub reason: Option<&'static str>,
    /// The last failure, in words.
    pub description: Option<String>,
    /// Results in a row that agree with each other, of the latest kind.
    successes: u32,
    failures: u32,
    /// One success is enough to leave `Initial` (targets the agent started with: they were
    /// presumably serving, and they are in service while initial).
    quick_start: bool,
    /// How long the last check took.
    pub last_latency: Option<Duration>,
    /// Checks run so far.
    pub checks: u64,
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: TargetState,
    pub to: TargetState,
}

impl Health {
    /// A new registration: `Initial`. `quick_start`: one success makes it healthy.
    pub fn new(quick_start: bool) -> Self {
        Self {
            state: TargetState::Initial,
            reason: Some(reason::INITIAL_HEALTH_CHECKING),
            description: None,
            successes: 0,
            failures: 0,
            quick_start,
            last_latency: None,
            checks: 0,
        }
    }

    /// Whether an `Initial` target receives new flows: only one the agent started with.
    pub fn in_service_while_initial(&self) -> bool {
        self.quick_start
    }

    /// Feeds one check result; returns the state change it causes, if any. Results that
    /// alternate faster than the thresholds never change the state.
    pub fn observe(&mut self, result: &ProbeResult, thresholds: Thresholds) -> Option<Transition> {
        self.checks += 1;
        self.last_latency = Some(result.latency);
        let from = self.state;
        match &result.outcome {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                let needed = if from == TargetState::Initial && self.quick_start {
                    1
                } else {
                    thresholds.healthy
                };
                if from != TargetState::Healthy && self.successes >= needed {
                    self.state = TargetState::Healthy;
                    self.reason = None;
                    self.description = None;
                }
            }
            Err(failure) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if from == TargetState::Unhealthy {
                    // Keep saying why it is still down.
                    self.set_failure(failure);
                } else if self.failures >= thresholds.unhealthy {
                    self.state = TargetState::Unhealthy;
                    self.set_failure(failure);
                }
            }
        }
        (self.state != from).then_some(Transition {
            from,
            to: self.state,
        })
    }

    fn set_failure(&mut self, failure: &Failure) {
        self.reason = Some(failure.reason());
        self.description = Some(failure.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        healthy: 3,
        unhealthy: 2,
    };

    fn ok() -> ProbeResult {
        ProbeResult {
            outcome: Ok(()),
            latency: Duration::from_millis(1),
        }
    }

    fn fail(f: Failure) -> ProbeResult {
        ProbeResult {
            outcome: Err(f),
            latency: Duration::from_millis(2),
        }
    }

    fn run(h: &mut Health, results: &[ProbeResult]) -> Vec<Option<TargetState>> {
        results
            .iter()
            .map(|r| h.observe(r, T).map(|t| t.to))
            .collect()
    }

    #[test]
    fn a_new_target_needs_the_healthy_threshold() {
        let mut h = Health::new(false);
        assert!(!h.in_service_while_initial());
        assert_eq!(
            run(&mut h, &[ok(), ok(), ok()]),
            [None, None, Some(TargetState::Healthy)]
        );
        assert_eq!(h.reason, None);
    }

    #[test]
    fn a_start_up_target_is_healthy_after_one_success() {
        let mut h = Health::new(true);
        assert!(h.in_service_while_initial());
        assert_eq!(run(&mut h, &[ok()]), [Some(TargetState::Healthy)]);
    }

    #[test]
    fn failures_in_a_row_make_it_unhealthy_with_the_last_reason() {
        let mut h = Health::new(true);
        run(&mut h, &[ok()]);
        assert_eq!(
            run(
                &mut h,
                &[
                    fail(Failure::Refused),
                    fail(Failure::ResponseCodeMismatch(500))
                ]
            ),
            [None, Some(TargetState::Unhealthy)]
        );
        assert_eq!(h.reason, Some("Target.ResponseCodeMismatch"));
        assert_eq!(run(&mut h, &[fail(Failure::Timeout)]), [None]);
        assert_eq!(h.reason, Some("Target.Timeout"));
        assert_eq!(
            run(&mut h, &[ok(), ok(), ok()]),
            [None, None, Some(TargetState::Healthy)]
        );
    }

    #[test]
    fn an_initial_target_that_fails_turns_unhealthy() {
        let mut h = Health::new(false);
        assert_eq!(
            run(&mut h, &[fail(Failure::Timeout), fail(Failure::Timeout)]),
            [None, Some(TargetState::Unhealthy)]
        );
    }

    #[test]
    fn flapping_faster_than_the_thresholds_never_changes_state() {
        for start_healthy in [true, false] {
            let mut h = Health::new(true);
            if start_healthy {
                run(&mut h, &[ok()]);
            } else {
                run(&mut h, &[fail(Failure::Refused), fail(Failure::Refused)]);
            }
            let before = h.state;
            for _ in 0..50 {
                assert_eq!(h.observe(&ok(), T), None);
                assert_eq!(h.observe(&fail(Failure::Refused), T), None);
            }
            assert_eq!(h.state, before);
        }
    }
}
