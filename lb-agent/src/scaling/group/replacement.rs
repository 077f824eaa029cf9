//! Replacing instances marked for it (failing `ELB` checks, past `max_instance_lifetime`, an
//! instance refresh's batch) within the instance maintenance policy: how many may go now and
//! how many replacements may be launched ahead of them (`scaling::maintenance`), and the
//! back-off after failed launches.

use std::time::Duration;

use super::{Action, Group, Observation, OutOfService, Phase, ScalingProcess};
use crate::scaling::maintenance::{self, InstanceMaintenancePolicy};

impl Group {
    /// Marks `id` for replacement (once).
    pub(super) fn mark_for_replacement(&mut self, id: &str, why: OutOfService) {
        if !self.marked.iter().any(|(m, _)| m == id) {
            self.marked.push((id.to_owned(), why));
        }
    }

    /// The instances marked for replacement that may be replaced now, in the order marked:
    /// those of a refresh, and the others unless health replacements are suspended.
    pub(super) fn replaceable(&self, replaces_unhealthy: bool) -> Vec<(String, OutOfService)> {
        self.marked
            .iter()
            .filter(|(_, why)| replaces_unhealthy || *why == OutOfService::InstanceRefresh)
            .cloned()
            .collect()
    }

    /// The bounds replacements keep to: while a refresh runs, its own (AWS: a refresh's
    /// preferences override the policy, which gives their defaults); else the group's
    /// policy, if any.
    fn replacement_policy(&self) -> Option<InstanceMaintenancePolicy> {
        match &self.refresh {
            Some(r) if r.is_in_progress() => Some(InstanceMaintenancePolicy::for_refresh(
                r.min_healthy_percentage,
                r.max_healthy_percentage,
            )),
            _ => self.settings.maintenance_policy,
        }
    }

    /// Takes out of service the marked instances the policy lets go now; the capacity
    /// launches may fill to (the desired capacity, plus replacements launched ahead).
    pub(super) fn replace_marked(
        &mut self,
        now: Duration,
        seen: &Observation,
        replaces_unhealthy: bool,
        actions: &mut Vec<Action>,
    ) -> u32 {
        let desired = self.capacity.desired();
        if self.suspended.contains(&ScalingProcess::Terminate) {
            return desired;
        }
        let policy = self.replacement_policy();
        let marked = self.replaceable(replaces_unhealthy);
        let is_marked = |id: &str| self.marked.iter().any(|(m, _)| m == id);
        // In service and ready: marked instances count until they go (AWS keeps them in
        // the group's capacity); others once their target groups find them healthy.
        let in_service = self
            .instances
            .iter()
            .filter(|i| {
                i.phase == Phase::InService && (is_marked(&i.id) || !seen.not_ready.contains(&i.id))
            })
            .count();
        let on_the_way = self
            .instances
            .iter()
            .filter(|i| {
                matches!(i.phase, Phase::Pending | Phase::PendingWait)
                    || (i.phase == Phase::InService
                        && !is_marked(&i.id)
                        && seen.not_ready.contains(&i.id))
            })
            .count();
        let room = maintenance::replacement_room(
            policy,
            desired,
            count(marked.len()),
            count(in_service),
            self.current_capacity(),
            self.launching == 0 && on_the_way == 0,
        );
        let going: Vec<(String, OutOfService)> = marked
            .into_iter()
            .take(room.terminations as usize)
            .collect();
        for (id, why) in &going {
            self.take_out_of_service(id, why, now, actions);
        }
        let left = count(self.replaceable(replaces_unhealthy).len());
        maintenance::fill_to(policy, desired, left)
    }

    /// One more failed launch: the next waits longer. How long.
    pub(super) fn launch_back_off(&mut self, now: Duration) -> Duration {
        self.launch_failures = self.launch_failures.saturating_add(1);
        self.last_launch_failure = now;
        let wait = maintenance::launch_backoff(self.launch_failures);
        self.next_launch_at = now + wait;
        wait
    }

    /// When launches may start again after failures (none: no back-off).
    pub fn launches_wait_until(&self) -> Option<Duration> {
        (!maintenance::launch_backoff(self.launch_failures).is_zero())
            .then_some(self.next_launch_at)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
