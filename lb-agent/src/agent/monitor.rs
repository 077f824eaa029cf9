//! Runs every target's health checks and the time-driven parts of the target lifecycle.
//!
//! One task per registration checks its target every `interval`; tasks start at a random
//! offset within the interval (targets the agent started with) or within a second (targets
//! added later), so a thousand targets do not fire at once, and at most
//! `MAX_CONCURRENT_CHECKS` checks are in flight. Results go to the writer, which moves states
//! and tables. A reconcile loop tells the writer the time (draining ends, slow starts move
//! along), starts tasks for new registrations and stops those of registrations that are gone.

use std::{collections::HashMap, hash::BuildHasher as _, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, sync::watch, task::JoinHandle};

use super::{Change, Handle};
use crate::state::CheckSpec;

/// Checks in flight at once, over all targets.
pub const MAX_CONCURRENT_CHECKS: usize = 128;

/// How often registrations are reconciled and draining and slow start move on.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

/// Runs until `stop` turns true.
pub async fn run(agent: Handle, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS));
    let seed = std::collections::hash_map::RandomState::new();
    // Keyed by (group, registration, check generation): a replaced check restarts its tasks.
    let mut tasks: HashMap<(String, u64, u64), JoinHandle<()>> = HashMap::new();
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = reconcile.tick() => {}
        }
        if !agent.send(Change::Tick) {
            break;
        }
        agent.watch_replies();
        let specs = agent.snapshot().state.checks();
        tasks.retain(|key, task| {
            let wanted = specs
                .iter()
                .any(|s| s.group == key.0 && s.registration == key.1 && s.generation == key.2);
            if !wanted {
                task.abort();
            }
            wanted && !task.is_finished()
        });
        for spec in specs {
            let key = (spec.group.clone(), spec.registration, spec.generation);
            if tasks.contains_key(&key) {
                continue;
            }
            let hash = seed.hash_one((&spec.group, spec.target, spec.registration));
            let offset = spec.first_within.mul_f64(hash as f64 / u64::MAX as f64);
            let task = tokio::spawn(check_loop(agent.clone(), spec, permits.clone(), offset));
            tasks.insert(key, task);
        }
    }
    for task in tasks.values() {
        task.abort();
    }
}

/// Checks one registration every `interval`, from `offset` on.
async fn check_loop(agent: Handle, spec: CheckSpec, permits: Arc<Semaphore>, offset: Duration) {
    let start = tokio::time::Instant::now() + offset;
    let mut ticker = tokio::time::interval_at(start, spec.interval);
    // A check that waited for a permit does not make the next ones bunch up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let spec = Arc::new(spec);
    loop {
        ticker.tick().await;
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            spec.probe.check(spec.target).await
        };
        let change = Change::CheckResult {
            spec: CheckSpec::clone(&spec),
            result,
        };
        if !agent.send(change) {
            return;
        }
    }
}
