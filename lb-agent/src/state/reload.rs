//! Applying a changed config to the running state: only the difference is written (a group
//! whose targets did not change keeps its table), and a reload that fails half way puts back
//! what ran before.

use super::*;

impl State {
    /// Moves the running state to `config` (full-NAT sources `snat`); returns what changed,
    /// a line each. Registered targets the file no longer lists drain as on `targets remove`;
    /// new ones wait for their checks as on `targets add`. On error nothing is left changed.
    pub fn reload(
        &mut self,
        dp: &mut impl Maps,
        config: &Config,
        snat: &[IpAddr],
        now: Instant,
    ) -> Result<Vec<String>> {
        if config.agent.maglev_table_size != dp.maglev_size() {
            return Err(StateError::NeedsRestart(format!(
                "agent.maglev_table_size changes from {} to {}",
                dp.maglev_size(),
                config.agent.maglev_table_size
            )));
        }
        if config.target_groups.len() > dp.group_capacity() as usize {
            return Err(StateError::NeedsRestart(format!(
                "{} target groups, the running data plane holds {}",
                config.target_groups.len(),
                dp.group_capacity()
            )));
        }
        self.atomically(dp, |state, dp| state.reload_steps(dp, config, snat, now))
    }

    fn reload_steps(
        &mut self,
        dp: &mut impl Maps,
        config: &Config,
        snat: &[IpAddr],
        now: Instant,
    ) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        // No seed in the file: the one in force stays (flows placed with it keep their place).
        let seed = config
            .agent
            .flow_hash_seed
            .unwrap_or(self.settings.hash_seed);
        let settings = settings_for(config, snat, dp.maglev_size(), seed)?;
        if settings != self.settings {
            dp.set_settings(&settings)?;
            self.settings = settings;
            changes.push("agent: data-plane settings (snat addresses, port range, timeouts or flow hash seed)".to_owned());
        }
        for group in &config.target_groups {
            let family = group_family(config, &group.name);
            match self.groups.get(&group.name) {
                Some(g) if g.protocol == group.protocol => {
                    self.update_group(dp, group, family, now, &mut changes)?;
                }
                old => {
                    if old.is_some() {
                        // A new protocol is a new group under the old name.
                        self.remove_group(dp, &group.name)?;
                        changes.push(format!("group {}: removed (new protocol)", group.name));
                    }
                    let id = self.free_group_id(dp.group_capacity())?;
                    let active_slot = dp.group(id).map_or(0, |g| g.active_slot);
                    let state = self.new_group(id, group, family, active_slot)?;
                    self.groups.insert(group.name.clone(), state);
                    let targets = desired_targets(group)?;
                    for &(address, weight) in &targets {
                        // As at start-up: in service while the first checks run.
                        self.register(dp, &group.name, address, weight, true, None)?;
                    }
                    self.publish(dp, &group.name, now)?;
                    changes.push(format!(
                        "group {}: added with {} targets",
                        group.name,
                        targets.len()
                    ));
                }
            }
        }
        let previous: BTreeMap<String, u32> = self
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.id))
            .collect();
        let listeners = self.listener_states(config, &previous);
        for l in &listeners {
            match self.listeners.iter().find(|old| old.name == l.name) {
                None => changes.push(format!("listener {}: added ({})", l.name, l.address)),
                Some(old)
                    if old.address != l.address
                        || old.protocol != l.protocol
                        || old.group != l.group =>
                {
                    changes.push(format!("listener {}: changed", l.name));
                }
                Some(_) => {}
            }
        }
        for old in &self.listeners {
            if !listeners.iter().any(|l| l.name == old.name) {
                changes.push(format!("listener {}: removed", old.name));
            }
        }
        self.write_listeners(dp, listeners, true)?;
        let gone: Vec<String> = self
            .groups
            .keys()
            .filter(|name| !config.target_groups.iter().any(|g| &&g.name == name))
            .cloned()
            .collect();
        for name in gone {
            self.remove_group(dp, &name)?;
            changes.push(format!("group {name}: removed"));
        }
        Ok(changes)
    }

    /// Brings an existing group to `group`: settings, check, targets; then one publish
    /// (which writes nothing if its table did not change).
    fn update_group(
        &mut self,
        dp: &mut impl Maps,
        group: &TargetGroup,
        family: Option<u8>,
        now: Instant,
        changes: &mut Vec<String>,
    ) -> Result<()> {
        let name = group.name.as_str();
        let mut note = |what: String| changes.push(format!("group {name}: {what}"));
        let version = group.l7().protocol_version;
        let running = self.group(name)?;
        // A new protocol version changes what the check speaks, even with the same settings.
        if running.health_check != group.health_check || running.protocol_version != version {
            let check = self.check_for(name, group.effective_health_check(), version)?;
            let g = self.group_mut(name)?;
            g.protocol_version = version;
            g.install_check(check, group.health_check.clone());
            note("health check replaced".to_owned());
        }
        let g = self.group_mut(name)?;
        g.family = family;
        let flags = flags_of(group);
        for (changed, what) in [
            (g.port != group.port, "port"),
            (g.flags != flags, "stickiness"),
            (
                g.deregistration_delay != group.deregistration_delay,
                "deregistration_delay",
            ),
            (
                g.terminate_on_unhealthy != group.terminate_on_unhealthy,
                "terminate_on_unhealthy",
            ),
            (g.fail_open != group.fail_open, "fail_open"),
            (g.slow_start != group.slow_start, "slow_start"),
        ] {
            if changed {
                note(format!("{what} changed"));
            }
        }
        (g.port, g.flags) = (group.port, flags);
        g.deregistration_delay = group.deregistration_delay;
        g.terminate_on_unhealthy = group.terminate_on_unhealthy;
        g.fail_open = group.fail_open;
        g.slow_start = group.slow_start;
        let delay = g.deregistration_delay;

        let desired = desired_targets(group)?;
        let mut returned = Vec::new();
        for &(address, weight) in &desired {
            let weight = check_weight(weight)?;
            let g = self.group_mut(name)?;
            match g.targets.iter_mut().find(|t| t.address == address) {
                None => {
                    self.register(dp, name, address, weight, false, None)?;
                    note(format!("target {address} registered (weight {weight})"));
                }
                Some(t) if t.draining_until.is_some() => {
                    (t.draining_until, t.weight) = (None, weight);
                    returned.push((address, t.health.state));
                    note(format!(
                        "target {address} registered again: draining stopped"
                    ));
                }
                Some(t) if t.weight != weight => {
                    note(format!("target {address} weight {} -> {weight}", t.weight));
                    t.weight = weight;
                }
                Some(_) => {}
            }
        }
        let g = self.group_mut(name)?;
        let mut leaving = Vec::new();
        for t in &mut g.targets {
            if t.draining_until.is_none() && !desired.iter().any(|&(a, _)| a == t.address) {
                t.draining_until = Some(now + delay);
                t.slow_start_since = None;
                leaving.push((t.address, t.health.state));
            }
        }
        for (address, _) in &leaving {
            note(format!(
                "target {address} deregistered: draining for {}",
                duration_text(delay)
            ));
        }
        self.publish(dp, name, now)?;
        for (address, to) in returned {
            self.count(
                name,
                address,
                TargetState::Draining,
                to,
                "re-registered by reload: draining stopped",
            );
        }
        for &(address, from) in &leaving {
            self.count(
                name,
                address,
                from,
                TargetState::Draining,
                "deregistered by reload: draining",
            );
        }
        if delay.is_zero() {
            for (address, _) in leaving {
                self.finish_draining(dp, name, address, "no deregistration delay")?;
            }
        }
        Ok(())
    }

    /// The smallest group id no group uses.
    fn free_group_id(&self, capacity: u32) -> Result<u32> {
        (0..capacity)
            .find(|id| !self.groups.values().any(|g| g.id == *id))
            .ok_or_else(|| {
                StateError::NeedsRestart(format!(
                    "more than the {capacity} target groups the running data plane holds"
                ))
            })
    }

    /// Forgets a group: its targets' flows are cut and their ids freed, its table emptied.
    fn remove_group(&mut self, dp: &mut impl Maps, name: &str) -> Result<()> {
        let Some(g) = self.groups.remove(name) else {
            return Ok(());
        };
        dp.set_group(
            g.id,
            &GroupInfo {
                active_slot: 0,
                flags: 0,
            },
        )?;
        dp.write_maglev(g.id, 0, &vec![0; dp.maglev_size() as usize])?;
        for t in g.targets {
            let purged = dp.purge_backend(t.backend_id)?;
            tracing::info!(group = name, target = %t.address, purged_flows = purged, "target removed with its group");
        }
        Ok(())
    }

    /// Writes everything this state holds into the maps again: settings, backends, the
    /// tables it had published, listeners (after a failed change).
    pub(super) fn rewrite(&mut self, dp: &mut impl Maps) -> Result<()> {
        dp.set_settings(&self.settings)?;
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = self.group(&name)?;
            for t in &g.targets {
                dp.set_backend(t.backend_id, &backend_of(t.address))?;
            }
            if let Some(plan) = g.published.clone() {
                self.write_table(dp, &name, plan)?;
            }
        }
        let listeners = self.listeners.clone();
        self.write_listeners(dp, listeners, true)
    }
}
