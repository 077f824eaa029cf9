//! A target group as the agent runs it: its registered targets with their health and
//! lifecycle, its health check, and the plan (which targets, at which weights) its Maglev
//! table is built from. Pure: no map is touched here.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{SLOW_START_STEPS, WEIGHT_SCALE};
use crate::{
    config::{GroupProtocol, HealthCheck, ListenerProtocol, ProtocolVersion},
    health::{Health, TargetState, Thresholds, probe::Probe, reason},
};

/// A registered target of a group.
#[derive(Debug, Clone)]
pub(super) struct TargetEntry {
    pub(super) address: SocketAddr,
    pub(super) weight: u32,
    /// This registration's id in the data plane (per group and target: health, draining and
    /// counters are per group).
    pub(super) backend_id: u32,
    /// Tells this registration from an earlier one of the same address.
    pub(super) registration: u64,
    pub(super) health: Health,
    /// Deregistered: leaves for good at this instant.
    pub(super) draining_until: Option<Instant>,
    /// Turned healthy at this instant and is ramping up its weight.
    pub(super) slow_start_since: Option<Instant>,
}

/// A group's health check as the agent runs it.
#[derive(Debug, Clone)]
pub(super) struct GroupCheck {
    pub(super) probe: Arc<Probe>,
    pub(super) interval: Duration,
    pub(super) thresholds: Thresholds,
    /// Changes whenever the check is replaced, so running checks restart with the new one.
    pub(super) generation: u64,
}

impl GroupCheck {
    /// The check `config` describes, run in the group's HTTP `version` (gRPC groups: with
    /// AWS's gRPC path and matcher where unset); an error naming what is wrong with it.
    pub(super) fn new(
        config: &HealthCheck,
        version: ProtocolVersion,
        generation: u64,
    ) -> std::result::Result<Self, String> {
        let config = &config.clone().for_version(version);
        let problems = config.problems(version);
        if !problems.is_empty() {
            return Err(crate::config::problem_text(problems, "; "));
        }
        Ok(Self {
            probe: Arc::new(Probe::new(config, version)?),
            interval: config.interval,
            thresholds: Thresholds {
                healthy: config.healthy_threshold,
                unhealthy: config.unhealthy_threshold,
            },
            generation,
        })
    }
}

#[derive(Debug, Clone)]
pub(super) struct GroupState {
    pub(super) id: u32,
    pub(super) protocol: GroupProtocol,
    /// The HTTP version its targets speak (http and https groups; `http1` for the others): its
    /// HTTP health checks speak it too.
    pub(super) protocol_version: ProtocolVersion,
    pub(super) port: Option<u16>,
    pub(super) flags: u32,
    /// Address family of the listeners that forward here; none: no listener does (unused).
    pub(super) family: Option<u8>,
    pub(super) targets: Vec<TargetEntry>,
    pub(super) active_slot: u32,
    /// The check as configured (`enabled = false` included); none: the group's default.
    pub(super) health_check: Option<HealthCheck>,
    /// The check that runs; none: targets are not checked.
    pub(super) check: Option<GroupCheck>,
    pub(super) deregistration_delay: Duration,
    pub(super) terminate_on_unhealthy: bool,
    pub(super) fail_open: bool,
    pub(super) slow_start: Duration,
    /// What the active table was built from: (backend id, scaled weight); `None` before the
    /// first build.
    pub(super) published: Option<Vec<(u32, u32)>>,
    /// The active table holds every target because none is in service.
    pub(super) failing_open: bool,
    /// Tables published so far (each one a rebuild and a flip).
    pub(super) table_version: u64,
}

impl GroupState {
    /// Whether the target passes this group's checks (ignoring weight and draining).
    pub(super) fn passes(&self, t: &TargetEntry) -> bool {
        if self.check.is_none() || self.family.is_none() {
            // Not checked: checks disabled, or no listener uses the group.
            return true;
        }
        match t.health.state {
            TargetState::Healthy => true,
            TargetState::Initial => t.health.in_service_while_initial(),
            _ => false,
        }
    }

    /// Puts `check` in force, configured as `configured`. Targets of a group that was not
    /// checked were in service unchecked: they stay so (`initial`) until their first check.
    pub(super) fn install_check(
        &mut self,
        check: Option<GroupCheck>,
        configured: Option<HealthCheck>,
    ) {
        if check.is_some() && self.check.is_none() {
            for t in &mut self.targets {
                t.health = Health::new(true);
            }
        }
        self.check = check;
        self.health_check = configured;
    }

    /// Whether a target can take new flows at all: registered (not draining), with a weight.
    pub(super) fn eligible(t: &TargetEntry) -> bool {
        t.draining_until.is_none() && t.weight > 0
    }

    /// The weight a target in service has now (scaled), with its slow start's ramp.
    pub(super) fn scaled_weight(&self, t: &TargetEntry, now: Instant) -> u32 {
        let full = t.weight * WEIGHT_SCALE;
        match t.slow_start_since {
            Some(since) if !self.slow_start.is_zero() => {
                let done = now.saturating_duration_since(since).as_secs_f64()
                    / self.slow_start.as_secs_f64();
                // In steps, so a ramp rebuilds the table SLOW_START_STEPS times, not per tick.
                let step =
                    (done * f64::from(SLOW_START_STEPS)).floor() / f64::from(SLOW_START_STEPS);
                if step >= 1.0 {
                    full
                } else {
                    ((f64::from(full) * step) as u32).max(1)
                }
            }
            _ => full,
        }
    }

    /// Each target's scaled weight in the table now, in target order, and whether the group
    /// fails open (no target in service, so every eligible one is in the table).
    pub(super) fn plan(&self, now: Instant) -> (Vec<(u32, u32)>, bool) {
        let serving: Vec<(u32, u32)> = self
            .targets
            .iter()
            .map(|t| {
                let weight = if Self::eligible(t) && self.passes(t) {
                    self.scaled_weight(t, now)
                } else {
                    0
                };
                (t.backend_id, weight)
            })
            .collect();
        if serving.iter().any(|&(_, w)| w > 0) || !self.fail_open {
            return (serving, false);
        }
        let all: Vec<(u32, u32)> = self
            .targets
            .iter()
            .map(|t| {
                let weight = if Self::eligible(t) {
                    t.weight * WEIGHT_SCALE
                } else {
                    0
                };
                (t.backend_id, weight)
            })
            .collect();
        let failing_open = all.iter().any(|&(_, w)| w > 0);
        (all, failing_open)
    }

    /// The weight a target has in the active table (scaled), 0 if none.
    pub(super) fn published_weight(&self, backend_id: u32) -> u32 {
        self.published
            .iter()
            .flatten()
            .find(|&&(id, _)| id == backend_id)
            .map_or(0, |&(_, w)| w)
    }

    /// The state `targets list` shows.
    pub(super) fn shown_state(&self, t: &TargetEntry) -> (TargetState, Option<&'static str>) {
        if t.draining_until.is_some() {
            (
                TargetState::Draining,
                Some(reason::DEREGISTRATION_IN_PROGRESS),
            )
        } else if self.family.is_none() {
            (TargetState::Unused, Some(reason::NOT_IN_USE))
        } else if self.check.is_none() {
            (
                TargetState::Unavailable,
                Some(reason::HEALTH_CHECK_DISABLED),
            )
        } else {
            (t.health.state, t.health.reason)
        }
    }
}

/// One health check the monitor should be running.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub group: String,
    pub target: SocketAddr,
    pub registration: u64,
    pub probe: Arc<Probe>,
    /// The group check's generation: a result of a replaced check is ignored.
    pub generation: u64,
    pub interval: Duration,
    /// The first check comes at a random time within this (spreads start-up's checks).
    pub first_within: Duration,
}

#[derive(Debug, Clone)]
pub(super) struct ListenerState {
    pub(super) id: u32,
    pub(super) name: String,
    /// The group its default action forwards to; none for an L7 listener that does not
    /// forward to exactly one group (its rules choose).
    pub(super) group: Option<String>,
    pub(super) address: SocketAddr,
    pub(super) protocol: ListenerProtocol,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::probe::{Failure, ProbeResult};

    /// `HealthCheck::default()`'s.
    const T: Thresholds = Thresholds {
        healthy: 5,
        unhealthy: 2,
    };

    fn group(fail_open: bool, slow_start: Duration) -> GroupState {
        GroupState {
            id: 0,
            protocol: GroupProtocol::Tcp,
            protocol_version: ProtocolVersion::Http1,
            port: Some(80),
            flags: 0,
            family: Some(4),
            targets: Vec::new(),
            active_slot: 0,
            health_check: None,
            check: Some(
                GroupCheck::new(&HealthCheck::default(), ProtocolVersion::Http1, 1).unwrap(),
            ),
            deregistration_delay: Duration::from_secs(300),
            terminate_on_unhealthy: false,
            fail_open,
            slow_start,
            published: None,
            failing_open: false,
            table_version: 0,
        }
    }

    fn target(id: u32, weight: u32, state: TargetState) -> TargetEntry {
        let mut health = Health::new(false);
        let result = |ok: bool| ProbeResult {
            outcome: if ok { Ok(()) } else { Err(Failure::Refused) },
            latency: Duration::ZERO,
        };
        for _ in 0..5 {
            match state {
                TargetState::Healthy => health.observe(&result(true), T),
                TargetState::Unhealthy => health.observe(&result(false), T),
                _ => None,
            };
        }
        assert_eq!(health.state, state);
        TargetEntry {
            address: SocketAddr::from(([198, 18, 0, 20 + id as u8], 8080)),
            weight,
            backend_id: id,
            registration: u64::from(id),
            health,
            draining_until: None,
            slow_start_since: None,
        }
    }

    #[test]
    fn only_healthy_weighted_registered_targets_are_in_the_table() {
        let mut g = group(true, Duration::ZERO);
        let mut draining = target(4, 1, TargetState::Healthy);
        draining.draining_until = Some(Instant::now() + Duration::from_secs(10));
        g.targets = vec![
            target(1, 2, TargetState::Healthy),
            target(2, 1, TargetState::Unhealthy),
            target(3, 0, TargetState::Healthy),
            draining,
            target(5, 1, TargetState::Initial),
        ];
        let (plan, failing_open) = g.plan(Instant::now());
        assert_eq!(plan, [(1, 200), (2, 0), (3, 0), (4, 0), (5, 0)]);
        assert!(!failing_open);
        // A target the agent started with serves while its first checks run.
        g.targets[4].health = Health::new(true);
        assert_eq!(g.plan(Instant::now()).0[4], (5, 100));
    }

    #[test]
    fn with_no_target_in_service_the_group_fails_open_to_every_registered_one() {
        let mut g = group(true, Duration::ZERO);
        let mut draining = target(3, 1, TargetState::Healthy);
        draining.draining_until = Some(Instant::now() + Duration::from_secs(10));
        g.targets = vec![
            target(1, 1, TargetState::Unhealthy),
            target(2, 3, TargetState::Unhealthy),
            draining,
            target(4, 0, TargetState::Unhealthy),
        ];
        let (plan, failing_open) = g.plan(Instant::now());
        assert_eq!(plan, [(1, 100), (2, 300), (3, 0), (4, 0)]);
        assert!(failing_open);
        g.fail_open = false;
        let (plan, failing_open) = g.plan(Instant::now());
        assert!(plan.iter().all(|&(_, w)| w == 0), "{plan:?}");
        assert!(!failing_open);
    }

    #[test]
    fn slow_start_ramps_the_weight_in_steps_up_to_the_full_weight() {
        let slow = Duration::from_secs(100);
        let mut g = group(true, slow);
        let now = Instant::now() + Duration::from_secs(1000);
        let mut t = target(1, 2, TargetState::Healthy);
        let at = |t: &mut TargetEntry, done: f64| {
            t.slow_start_since = Some(now - slow.mul_f64(done));
        };
        at(&mut t, 0.0);
        assert_eq!(
            g.scaled_weight(&t, now),
            1,
            "a ramp starts at the least weight"
        );
        at(&mut t, 0.26);
        assert_eq!(
            g.scaled_weight(&t, now),
            50,
            "a quarter of 200, in 5% steps"
        );
        at(&mut t, 0.999);
        assert_eq!(g.scaled_weight(&t, now), 190);
        at(&mut t, 1.5);
        assert_eq!(g.scaled_weight(&t, now), 200);
        g.slow_start = Duration::ZERO;
        at(&mut t, 0.0);
        assert_eq!(g.scaled_weight(&t, now), 200, "no ramp without slow_start");
    }

    #[test]
    fn shown_state_says_why_a_target_is_out() {
        let mut g = group(true, Duration::ZERO);
        let mut t = target(1, 1, TargetState::Unhealthy);
        assert_eq!(
            g.shown_state(&t),
            (TargetState::Unhealthy, Some("Target.FailedHealthChecks"))
        );
        t.draining_until = Some(Instant::now());
        assert_eq!(
            g.shown_state(&t),
            (
                TargetState::Draining,
                Some("Target.DeregistrationInProgress")
            )
        );
        t.draining_until = None;
        g.check = None;
        assert_eq!(
            g.shown_state(&t),
            (TargetState::Unavailable, Some("Target.HealthCheckDisabled"))
        );
        g.family = None;
        assert_eq!(
            g.shown_state(&t),
            (TargetState::Unused, Some("Target.NotInUse"))
        );
    }
}
