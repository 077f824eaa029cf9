//! What the data plane should be doing, and the map writes that make it so.
//!
//! `State` owns the ids (listeners, target groups, backends) and each group's registered
//! targets with their health and lifecycle. Which targets receive new flows follows from
//! those: a change builds a new Maglev table into the group's idle slot, then flips the
//! group's active slot in one map write: new flows see the old table or the new one, never a
//! mix, and established flows keep their backend through the connection table.
//!
//! In service (in the table) are a group's targets that are not draining, have a weight above
//! 0 and pass its checks: healthy, or still `initial` when the agent started with them (a
//! target added later waits for `healthy_threshold` successes). With none in service, a
//! `fail_open` group (the default) puts every registered, non-draining target with a weight
//! in the table. A group without checks has every target in service.

mod encode;
mod group;
mod ids;
mod reload;
#[cfg(test)]
mod tests;
mod views;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{GroupInfo, MAX_BACKENDS, Settings};

pub use encode::addr_of;
use encode::{
    backend_of, desired_targets, family_of, flags_of, group_family, hash_seed_for, settings_for,
};
pub use group::CheckSpec;
use group::{GroupCheck, GroupState, ListenerState, TargetEntry};
pub use ids::Ids;

use crate::{
    config::{Config, HealthCheck, MAX_WEIGHT, ProtocolVersion, TargetGroup, duration_text},
    dataplane::{DataplaneError, Maps},
    health::{Health, TargetState, Transition, probe::ProbeResult},
    maglev::{MaglevError, MaglevTable, MaglevTarget},
};

/// Errors applying a change.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The kernel refused a map write.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The request names a target group that does not exist.
    #[error("no target group named `{0}`")]
    NoGroup(String),
    /// The target is already registered in that group.
    #[error("target {target} is already registered in group `{group}`")]
    Duplicate { group: String, target: SocketAddr },
    /// The target is not registered in that group.
    #[error("target {target} is not registered in group `{group}`")]
    NoTarget { group: String, target: SocketAddr },
    /// No port was given and the group has no default port.
    #[error("target {0} has no port and group `{1}` has no default port")]
    NoPort(IpAddr, String),
    /// The target's address family differs from the group's listeners (no NAT46/64).
    #[error("target {target} is IPv{got} but group `{group}` serves IPv{want} listeners")]
    Family {
        group: String,
        target: SocketAddr,
        got: u8,
        want: u8,
    },
    /// A weight outside 0..=`MAX_WEIGHT`.
    #[error("weight {0} is out of range 0..={MAX_WEIGHT}")]
    Weight(u32),
    /// The Maglev table could not be built.
    #[error("building the Maglev table: {0}")]
    Maglev(#[from] MaglevError),
    /// Too many distinct backends.
    #[error("no free backend id (at most {MAX_BACKENDS} backends)")]
    BackendsFull,
    /// A group's health check cannot be run as configured.
    #[error("target group `{group}`: health check: {message}")]
    HealthCheck { group: String, message: String },
    /// The change cannot be applied to the running data plane.
    #[error("needs a restart with `lb-agent detach` first: {0}")]
    NeedsRestart(String),
    /// No full-NAT source address for a family a listener uses.
    #[error(
        "no IPv{0} full-NAT source address: set agent.snat_addresses or give the interface one"
    )]
    NoSnatAddress(u8),
}

type Result<T> = std::result::Result<T, StateError>;

/// `weight` if it is one a target may have.
fn check_weight(weight: u32) -> Result<u32> {
    if weight > MAX_WEIGHT {
        return Err(StateError::Weight(weight));
    }
    Ok(weight)
}

/// Weights are scaled by this in the Maglev table, so a slow-starting target can hold a
/// small fraction of its weight (scaling every weight alike changes no table).
const WEIGHT_SCALE: u32 = 100;

/// How often draining targets' live flows are counted (a walk of the connection table).
const DRAIN_SCAN_EVERY: Duration = Duration::from_secs(5);

/// Steps a slow start's ramp takes: each one rebuilds the group's table.
const SLOW_START_STEPS: u32 = 20;

/// The agent's view of what runs.
#[derive(Debug, Clone, Default)]
pub struct State {
    groups: BTreeMap<String, GroupState>,
    listeners: Vec<ListenerState>,
    next_registration: u64,
    /// The last `GroupCheck::generation` handed out.
    check_generation: u64,
    /// The data-plane settings written.
    settings: Settings,
    /// When draining targets' flows are looked at next.
    next_drain_scan: Option<Instant>,
    transitions: BTreeMap<String, u64>,
    /// Backend ids an adopted data plane's flows carry for targets not registered yet: kept
    /// for them while the state is built (`apply`).
    reserved_backend_ids: BTreeSet<u32>,
}

impl State {
    /// Programs the data plane from a validated config: settings, backends, Maglev tables,
    /// groups, then listeners last, so no listener is visible before its group is complete.
    ///
    /// `ids` are those an earlier agent gave (`State::ids`), for maps adopted from its pins:
    /// groups, listeners and targets get the ids their flows and counters carry. A target the
    /// earlier agent had and the config no longer lists drains (its group's delay), as on a
    /// reload; one whose group is gone has its flows cut.
    pub fn apply(
        config: &Config,
        snat: &[IpAddr],
        dp: &mut impl Maps,
        ids: &Ids,
        now: Instant,
    ) -> Result<State> {
        let settings = settings_for(config, snat, dp.maglev_size(), hash_seed_for(config, dp))?;
        let mut state = State {
            settings,
            reserved_backend_ids: ids.backend_ids().collect(),
            ..State::default()
        };
        let group_ids = ids.group_ids_for(config, dp.group_capacity());
        for (group, &id) in config.target_groups.iter().zip(&group_ids) {
            // Adopted maps: the table in force stays until the first publish flips.
            let active_slot = dp.group(id).map_or(0, |g| g.active_slot);
            let g = state.new_group(id, group, group_family(config, &group.name), active_slot)?;
            state.groups.insert(group.name.clone(), g);
        }
        dp.set_settings(&settings)?;
        for group in &config.target_groups {
            let known = ids.backends.get(&group.name);
            for (address, weight) in desired_targets(group)? {
                let id = known.and_then(|k| k.get(&address).copied());
                // Started with: in service while its first checks run.
                state.register(dp, &group.name, address, weight, true, id)?;
            }
            // Known to the earlier agent, no longer in the file: drain as a reload would.
            for (&address, &id) in known.into_iter().flatten() {
                if state
                    .group(&group.name)?
                    .targets
                    .iter()
                    .any(|t| t.address == address)
                {
                    continue;
                }
                state.register(dp, &group.name, address, 0, true, Some(id))?;
                let g = state.group_mut(&group.name)?;
                let delay = g.deregistration_delay;
                if let Some(t) = g.targets.iter_mut().find(|t| t.address == address) {
                    t.draining_until = Some(now + delay);
                }
                tracing::info!(group = group.name, target = %address, "adopted flows of a target the config no longer lists: draining");
            }
            state.publish(dp, &group.name, now)?;
        }
        for (group, targets) in &ids.backends {
            if config.target_groups.iter().any(|g| &g.name == group) {
                continue;
            }
            for (address, &id) in targets {
                let purged = dp.purge_backend(id)?;
                tracing::info!(group, target = %address, purged_flows = purged, "adopted flows of a group the config no longer has: cut");
            }
        }
        state.reserved_backend_ids.clear();
        let listeners = state.listener_states(config, &ids.listeners);
        state.write_listeners(dp, listeners, dp.adopted())?;
        Ok(state)
    }

    /// The ids this state gives groups, listeners and targets in the data plane.
    pub fn ids(&self) -> Ids {
        Ids {
            groups: self.groups.iter().map(|(n, g)| (n.clone(), g.id)).collect(),
            listeners: self
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.id))
                .collect(),
            backends: self
                .groups
                .iter()
                .map(|(n, g)| {
                    let targets = g
                        .targets
                        .iter()
                        .map(|t| (t.address, t.backend_id))
                        .collect();
                    (n.clone(), targets)
                })
                .collect(),
        }
    }

    /// Runs `change`; if it fails, the state is put back as it was and written again, so
    /// nothing is left half-applied (a failed write may have left an idle table or a backend
    /// entry behind, which the rewrite makes consistent again).
    fn atomically<M: Maps, T>(
        &mut self,
        dp: &mut M,
        change: impl FnOnce(&mut Self, &mut M) -> Result<T>,
    ) -> Result<T> {
        let before = self.clone();
        let result = change(self, dp);
        if result.is_err() {
            *self = before;
            if let Err(e) = self.rewrite(dp) {
                tracing::error!(error = %e, "putting back the state before a failed change failed too");
            }
        }
        result
    }

    /// A group's state as `group` configures it, without targets.
    fn new_group(
        &mut self,
        id: u32,
        group: &TargetGroup,
        family: Option<u8>,
        active_slot: u32,
    ) -> Result<GroupState> {
        let protocol_version = group.l7().protocol_version;
        let check = self.check_for(
            &group.name,
            group.effective_health_check(),
            protocol_version,
        )?;
        Ok(GroupState {
            id,
            protocol: group.protocol,
            protocol_version,
            port: group.port,
            flags: flags_of(group),
            family,
            targets: Vec::new(),
            active_slot,
            health_check: group.health_check.clone(),
            check,
            deregistration_delay: group.deregistration_delay,
            terminate_on_unhealthy: group.terminate_on_unhealthy,
            fail_open: group.fail_open,
            slow_start: group.slow_start,
            published: None,
            failing_open: false,
            table_version: 0,
        })
    }

    /// The running check for `effective` on a group speaking `version` (a new generation),
    /// or none.
    fn check_for(
        &mut self,
        group: &str,
        effective: Option<HealthCheck>,
        version: ProtocolVersion,
    ) -> Result<Option<GroupCheck>> {
        effective
            .map(|hc| GroupCheck::new(&hc, version, self.check_generation + 1))
            .transpose()
            .map_err(|message| StateError::HealthCheck {
                group: group.to_owned(),
                message,
            })
            .inspect(|check| {
                if check.is_some() {
                    self.check_generation += 1;
                }
            })
    }

    /// Registers a target in a group (without publishing the group's table), with the
    /// backend id `known_id` if it is free.
    fn register(
        &mut self,
        dp: &mut impl Maps,
        group_name: &str,
        address: SocketAddr,
        weight: u32,
        started_with: bool,
        known_id: Option<u32>,
    ) -> Result<()> {
        let weight = check_weight(weight)?;
        let group = self.group(group_name)?;
        if group.targets.iter().any(|t| t.address == address) {
            return Err(StateError::Duplicate {
                group: group_name.to_owned(),
                target: address,
            });
        }
        if let Some(want) = group.family {
            let got = family_of(address.ip());
            if got != want {
                return Err(StateError::Family {
                    group: group_name.to_owned(),
                    target: address,
                    got,
                    want,
                });
            }
        }
        let backend_id = self.free_backend_id(known_id)?;
        dp.set_backend(backend_id, &backend_of(address))?;
        self.next_registration += 1;
        let registration = self.next_registration;
        let group = self.group_mut(group_name)?;
        group.targets.push(TargetEntry {
            address,
            weight,
            backend_id,
            registration,
            health: Health::new(started_with),
            draining_until: None,
            slow_start_since: None,
        });
        Ok(())
    }

    fn group(&self, name: &str) -> Result<&GroupState> {
        self.groups
            .get(name)
            .ok_or_else(|| StateError::NoGroup(name.to_owned()))
    }

    fn group_mut(&mut self, name: &str) -> Result<&mut GroupState> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| StateError::NoGroup(name.to_owned()))
    }

    /// A backend id no registration uses: `preferred` if it is such, else the smallest (0
    /// means "no backend" to the data plane).
    fn free_backend_id(&self, preferred: Option<u32>) -> Result<u32> {
        let used: BTreeSet<u32> = self
            .groups
            .values()
            .flat_map(|g| g.targets.iter().map(|t| t.backend_id))
            .collect();
        if let Some(id) =
            preferred.filter(|id| (1..MAX_BACKENDS).contains(id) && !used.contains(id))
        {
            return Ok(id);
        }
        (1..MAX_BACKENDS)
            .find(|id| !used.contains(id) && !self.reserved_backend_ids.contains(id))
            .ok_or(StateError::BackendsFull)
    }

    /// Builds the group's table into its idle slot and flips the active slot, unless the
    /// table would be the one already active.
    fn publish(&mut self, dp: &mut impl Maps, group_name: &str, now: Instant) -> Result<()> {
        let group = self.group_mut(group_name)?;
        let (plan, failing_open) = group.plan(now);
        if group.published.as_ref() == Some(&plan) {
            group.failing_open = failing_open;
            return Ok(());
        }
        self.write_table(dp, group_name, plan)?;
        let group = self.group_mut(group_name)?;
        if failing_open != group.failing_open {
            if failing_open {
                tracing::warn!(
                    group = group_name,
                    "no target in service: failing open to every registered target"
                );
            } else {
                tracing::info!(
                    group = group_name,
                    "targets in service again: no longer failing open"
                );
            }
        }
        group.failing_open = failing_open;
        Ok(())
    }

    /// Builds the table of `plan` ((backend id, scaled weight) per target, in target order)
    /// into the group's idle slot and flips the active slot to it.
    fn write_table(
        &mut self,
        dp: &mut impl Maps,
        group_name: &str,
        plan: Vec<(u32, u32)>,
    ) -> Result<()> {
        let group = self.group_mut(group_name)?;
        let size = dp.maglev_size();
        let table: Vec<u32> = if plan.iter().all(|&(_, w)| w == 0) {
            // No target may receive new flows: an empty table (0 = no backend) drops them.
            vec![0; size as usize]
        } else {
            let keys: Vec<String> = group
                .targets
                .iter()
                .map(|t| t.address.to_string())
                .collect();
            let targets: Vec<MaglevTarget<'_>> = keys
                .iter()
                .zip(&plan)
                .map(|(key, &(_, weight))| MaglevTarget {
                    key: key.as_bytes(),
                    weight,
                })
                .collect();
            let built = MaglevTable::build(&targets, size)?;
            built.slots().iter().map(|&i| plan[i as usize].0).collect()
        };
        let idle = 1 - group.active_slot;
        dp.write_maglev(group.id, idle, &table)?;
        dp.set_group(
            group.id,
            &GroupInfo {
                active_slot: idle,
                flags: group.flags,
            },
        )?;
        group.active_slot = idle;
        group.table_version += 1;
        group.published = Some(plan);
        Ok(())
    }

    /// The port a target given without one gets: the group's default port.
    pub fn resolve_target(
        &self,
        group_name: &str,
        ip: IpAddr,
        port: Option<u16>,
    ) -> Result<SocketAddr> {
        let group = self.group(group_name)?;
        let port = port
            .or(group.port)
            .ok_or_else(|| StateError::NoPort(ip, group_name.to_owned()))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// Registers a target live. A new target gets new flows once it passes its group's
    /// checks (at once in a group without checks); a draining one returns to service with its
    /// health as checked meanwhile, and the weight given.
    pub fn add_target(
        &mut self,
        dp: &mut impl Maps,
        group: &str,
        address: SocketAddr,
        weight: u32,
        now: Instant,
    ) -> Result<()> {
        let weight = check_weight(weight)?;
        self.atomically(dp, |state, dp| {
            let g = state.group_mut(group)?;
            if let Some(t) = g
                .targets
                .iter_mut()
                .find(|t| t.address == address && t.draining_until.is_some())
            {
                t.weight = weight;
                t.draining_until = None;
                state.publish(dp, group, now)?;
                let to = state.checked_state(group, address)?;
                state.count(
                    group,
                    address,
                    TargetState::Draining,
                    to,
                    "re-registered: draining stopped",
                );
                return Ok(());
            }
            state.register(dp, group, address, weight, false, None)?;
            state.publish(dp, group, now)
        })
    }

    /// Changes a registered target's weight live (0: no new flows; established ones stay);
    /// the weight it had.
    pub fn set_weight(
        &mut self,
        dp: &mut impl Maps,
        group: &str,
        address: SocketAddr,
        weight: u32,
        now: Instant,
    ) -> Result<u32> {
        let weight = check_weight(weight)?;
        let before = self.atomically(dp, |state, dp| {
            let t = state.registered_mut(group, address)?;
            let before = std::mem::replace(&mut t.weight, weight);
            state.publish(dp, group, now)?;
            Ok(before)
        })?;
        tracing::info!(group, target = %address, from = before, to = weight, "target weight changed");
        Ok(before)
    }

    /// Deregisters a target live: it gets no new flows at once; its established flows stay
    /// for the group's deregistration delay (draining), then are cut and the target is gone.
    /// Returns how long it drains.
    pub fn remove_target(
        &mut self,
        dp: &mut impl Maps,
        group: &str,
        address: SocketAddr,
        now: Instant,
    ) -> Result<Duration> {
        self.atomically(dp, |state, dp| {
            let delay = state.group(group)?.deregistration_delay;
            let t = state.registered_mut(group, address)?;
            t.draining_until = Some(now + delay);
            t.slow_start_since = None;
            state.publish(dp, group, now)?;
            let from = state.checked_state(group, address)?;
            state.count(
                group,
                address,
                from,
                TargetState::Draining,
                "deregistered: draining",
            );
            if delay.is_zero() {
                state.finish_draining(dp, group, address, "no deregistration delay")?;
            }
            Ok(delay)
        })
    }

    /// A registered (not draining) target of a group.
    fn registered_mut(&mut self, group: &str, address: SocketAddr) -> Result<&mut TargetEntry> {
        self.group_mut(group)?
            .targets
            .iter_mut()
            .find(|t| t.address == address && t.draining_until.is_none())
            .ok_or_else(|| StateError::NoTarget {
                group: group.to_owned(),
                target: address,
            })
    }

    /// A registered target's checked state (`initial`, `healthy` or `unhealthy`).
    fn checked_state(&self, group: &str, address: SocketAddr) -> Result<TargetState> {
        Ok(self
            .group(group)?
            .targets
            .iter()
            .find(|t| t.address == address)
            .map_or(TargetState::Initial, |t| t.health.state))
    }

    /// Ends a draining target: cuts its remaining flows and forgets it.
    fn finish_draining(
        &mut self,
        dp: &mut impl Maps,
        group: &str,
        address: SocketAddr,
        why: &str,
    ) -> Result<()> {
        let backend_id = self
            .group(group)?
            .targets
            .iter()
            .find(|t| t.address == address)
            .map(|t| t.backend_id)
            .ok_or_else(|| StateError::NoTarget {
                group: group.to_owned(),
                target: address,
            })?;
        // Out of the table already: purge before the id is free (a reuse must find no flows).
        let purged = dp.purge_backend(backend_id)?;
        self.take(group, address)?;
        self.tally("draining", "removed");
        tracing::info!(group, target = %address, purged_flows = purged, from = "draining", to = "removed", "target deregistered: {why}");
        Ok(())
    }

    /// Takes a registration out of its group (its backend id is free again).
    fn take(&mut self, group_name: &str, address: SocketAddr) -> Result<TargetEntry> {
        let group = self.group_mut(group_name)?;
        let index = group
            .targets
            .iter()
            .position(|t| t.address == address)
            .ok_or_else(|| StateError::NoTarget {
                group: group_name.to_owned(),
                target: address,
            })?;
        let entry = group.targets.remove(index);
        // The table was built from target order; the next publish rebuilds it.
        group.published = None;
        Ok(entry)
    }

    /// Counts and logs a state change.
    fn count(
        &mut self,
        group: &str,
        target: SocketAddr,
        from: TargetState,
        to: TargetState,
        why: &str,
    ) {
        self.tally(from.as_str(), to.as_str());
        tracing::info!(group, target = %target, from = from.as_str(), to = to.as_str(), "{why}");
    }

    /// Counts a state change (`stats`: `health_transitions`).
    fn tally(&mut self, from: &str, to: &str) {
        *self.transitions.entry(format!("{from}->{to}")).or_insert(0) += 1;
    }

    /// The health checks to run now: one per registration in a group that has a check and
    /// a listener (draining targets too: re-registered, they return with a current health).
    pub fn checks(&self) -> Vec<CheckSpec> {
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            let (Some(check), Some(_)) = (&g.check, g.family) else {
                continue;
            };
            for t in &g.targets {
                out.push(CheckSpec {
                    group: name.clone(),
                    target: t.address,
                    registration: t.registration,
                    probe: check.probe.clone(),
                    generation: check.generation,
                    interval: check.interval,
                    // A target added live is checked soon; those of start-up spread out.
                    first_within: if t.health.in_service_while_initial() {
                        check.interval
                    } else {
                        check.interval.min(Duration::from_secs(1))
                    },
                });
            }
        }
        out
    }

    /// Feeds a health check's result; moves the target's state and the group's table, and
    /// cuts the target's flows when it turns unhealthy in a `terminate_on_unhealthy` group.
    /// A result for a registration that is gone is ignored.
    pub fn record_check(
        &mut self,
        dp: &mut impl Maps,
        spec: &CheckSpec,
        result: &ProbeResult,
        now: Instant,
    ) -> Result<()> {
        let Some(g) = self.groups.get_mut(&spec.group) else {
            return Ok(());
        };
        let Some(thresholds) = g
            .check
            .as_ref()
            .filter(|c| c.generation == spec.generation)
            .map(|c| c.thresholds)
        else {
            return Ok(());
        };
        let others_serving = g
            .targets
            .iter()
            .any(|t| t.registration != spec.registration && GroupState::eligible(t) && g.passes(t));
        let slow_start = g.slow_start;
        let Some(t) = g
            .targets
            .iter_mut()
            .find(|t| t.registration == spec.registration)
        else {
            return Ok(());
        };
        let quick = t.health.in_service_while_initial();
        let Some(Transition { from, to }) = t.health.observe(result, thresholds) else {
            return Ok(());
        };
        // AWS's rule: slow start only for a target that was out of service and joins others.
        if to == TargetState::Healthy
            && !slow_start.is_zero()
            && others_serving
            && !(from == TargetState::Initial && quick)
        {
            t.slow_start_since = Some(now);
        }
        if to == TargetState::Unhealthy {
            t.slow_start_since = None;
        }
        let (backend_id, description) = (t.backend_id, t.health.description.clone());
        let reason = t.health.reason;
        self.tally(from.as_str(), to.as_str());
        tracing::info!(
            group = spec.group,
            target = %spec.target,
            from = from.as_str(),
            to = to.as_str(),
            reason = reason.unwrap_or(""),
            description = description.as_deref().unwrap_or(""),
            "target health changed"
        );
        self.publish(dp, &spec.group, now)?;
        let g = self.group(&spec.group)?;
        if to == TargetState::Unhealthy
            && g.terminate_on_unhealthy
            && g.published_weight(backend_id) == 0
        {
            let purged = dp.purge_backend(backend_id)?;
            tracing::info!(group = spec.group, target = %spec.target, purged_flows = purged, "terminate_on_unhealthy: established flows cut");
        }
        Ok(())
    }

    /// Time-driven lifecycle: ends draining whose delay is over, moves slow starts along.
    pub fn tick(&mut self, dp: &mut impl Maps, now: Instant) -> Result<()> {
        self.end_idle_draining(dp, now)?;
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = self.group(&name)?;
            let done: Vec<SocketAddr> = g
                .targets
                .iter()
                .filter(|t| t.draining_until.is_some_and(|until| until <= now))
                .map(|t| t.address)
                .collect();
            let ramping = g.targets.iter().any(|t| t.slow_start_since.is_some());
            for address in done {
                self.finish_draining(dp, &name, address, "deregistration delay over")?;
            }
            if ramping {
                let slow_start = self.group(&name)?.slow_start;
                let g = self.group_mut(&name)?;
                for t in &mut g.targets {
                    if t.slow_start_since
                        .is_some_and(|since| now.saturating_duration_since(since) >= slow_start)
                    {
                        t.slow_start_since = None;
                        tracing::info!(group = name, target = %t.address, "slow start over: full weight");
                    }
                }
            }
            self.publish(dp, &name, now)?;
        }
        Ok(())
    }

    /// Ends the draining of targets with no live flow left (as AWS does), looking at the
    /// connection table at most every `DRAIN_SCAN_EVERY` while some target drains.
    fn end_idle_draining(&mut self, dp: &mut impl Maps, now: Instant) -> Result<()> {
        let draining: Vec<(String, SocketAddr, u32)> = self
            .groups
            .iter()
            .flat_map(|(name, g)| {
                g.targets
                    .iter()
                    .filter(|t| t.draining_until.is_some_and(|until| until > now))
                    .map(|t| (name.clone(), t.address, t.backend_id))
            })
            .collect();
        if draining.is_empty() || self.next_drain_scan.is_some_and(|at| at > now) {
            return Ok(());
        }
        self.next_drain_scan = Some(now + DRAIN_SCAN_EVERY);
        let live = self.backends_with_open_flows(dp)?;
        for (group, address, backend_id) in draining {
            if !live.contains(&backend_id) {
                self.finish_draining(dp, &group, address, "no live flow left")?;
            }
        }
        Ok(())
    }

    /// Replaces a group's health check (`enabled = false`: stops checking). Checks restart
    /// with the new settings; states are kept, except that targets of a group that was not
    /// checked start `initial` and in service until their first check. Nothing changes if
    /// the check is invalid or the table cannot be rebuilt.
    pub fn set_health_check(
        &mut self,
        dp: &mut impl Maps,
        group: &str,
        health_check: HealthCheck,
        now: Instant,
    ) -> Result<()> {
        self.atomically(dp, |state, dp| {
            let version = state.group(group)?.protocol_version;
            let check = state.check_for(
                group,
                health_check.enabled.then(|| health_check.clone()),
                version,
            )?;
            state
                .group_mut(group)?
                .install_check(check, Some(health_check.clone()));
            state.publish(dp, group, now)
        })?;
        tracing::info!(
            group,
            enabled = health_check.enabled,
            protocol = health_check.protocol.as_str(),
            port = health_check.port,
            interval = %duration_text(health_check.interval),
            "health check replaced"
        );
        Ok(())
    }
}
