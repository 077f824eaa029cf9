//! Lifecycle hooks: an instance launching waits in `Pending:Wait`, one terminating in
//! `Terminating:Wait`, until every hook of that transition is completed (`complete` with
//! CONTINUE or ABANDON) or times out (its default result); `record-heartbeat` restarts a
//! hook's timeout, never past the global timeout.
//!
//! AWS: User Guide "Amazon EC2 Auto Scaling lifecycle hooks":
//! - States `Pending` -> `Pending:Wait` -> `Pending:Proceed` -> `InService` and `Terminating` ->
//!   `Terminating:Wait` -> `Terminating:Proceed` -> `Terminated`.
//! - Heartbeat timeout 30 to 7200 s, default 3600 s; default result ABANDON (API reference
//!   `PutLifecycleHook`); "The maximum amount of time that you can keep an instance in a wait
//!   state is 48 hours or 100 times the heartbeat timeout, whichever is smaller."
//! - A heartbeat "extends the timeout period by the timeout value": the new deadline is the
//!   heartbeat's time plus the heartbeat timeout.
//! - Launching, CONTINUE puts the instance in service, ABANDON terminates it. Terminating,
//!   both let it terminate, but "ABANDON stops any remaining actions, such as other lifecycle
//!   hooks, and CONTINUE allows any other lifecycle hooks to complete".
//! - API reference `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat`: an instance
//!   not waiting on that hook is an error ("No active Lifecycle Action found").

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

/// A hook's heartbeat timeout when none is given (AWS: 3600 s).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The shortest heartbeat timeout AWS accepts.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest heartbeat timeout AWS accepts.
pub const MAX_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(7200);
/// The longest an instance may wait, whatever the heartbeats (AWS: 48 hours).
pub const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// Errors in hooks' definitions (configuration) and in `complete` / `record-heartbeat`
/// requests (client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// A heartbeat timeout outside AWS's range.
    #[error("lifecycle hook {hook}: heartbeat timeout {timeout:?} is outside 30 s to 7200 s")]
    HeartbeatTimeoutOutOfRange { hook: String, timeout: Duration },
    /// Two hooks of a group with one name.
    #[error("lifecycle hook {hook} is defined twice")]
    DuplicateHook { hook: String },
    /// A request names a hook the group does not have.
    #[error("no lifecycle hook named {hook} in this group")]
    UnknownHook { hook: String },
    /// A request names an instance the group does not have.
    #[error("no instance {instance} in this group")]
    UnknownInstance { instance: String },
    /// The instance is not waiting on that hook (AWS's wording).
    #[error(
        "No active Lifecycle Action found with instance ID {instance} (hook {hook}; it is {state})"
    )]
    NoActiveLifecycleAction {
        instance: String,
        hook: String,
        state: LifecycleState,
    },
    /// A lifecycle step asked of an instance in a state that does not allow it.
    #[error("instance {instance} is {state}: it cannot {action}")]
    WrongState {
        instance: String,
        state: LifecycleState,
        action: &'static str,
    },
    /// A result that is neither CONTINUE nor ABANDON.
    #[error("lifecycle action result {result:?}: accepted are CONTINUE and ABANDON")]
    UnknownResult { result: String },
}

/// The transition a hook pauses, and how a lifecycle action ends: the config's.
pub use crate::config::{LifecycleActionResult, LifecycleTransition};

impl FromStr for LifecycleActionResult {
    type Err = LifecycleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "CONTINUE" => Ok(Self::Continue),
            "ABANDON" => Ok(Self::Abandon),
            _ => Err(LifecycleError::UnknownResult {
                result: s.to_owned(),
            }),
        }
    }
}

/// An instance's lifecycle state, AWS's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleState {
    /// Launching.
    Pending,
    /// Launched, waiting on launch hooks.
    PendingWait,
    /// Launch hooks done: being put in service.
    PendingProceed,
    /// Serving.
    InService,
    /// Leaving.
    Terminating,
    /// Waiting on terminate hooks.
    TerminatingWait,
    /// Terminate hooks done: being terminated.
    TerminatingProceed,
    /// Gone.
    Terminated,
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::PendingWait => "Pending:Wait",
            Self::PendingProceed => "Pending:Proceed",
            Self::InService => "InService",
            Self::Terminating => "Terminating",
            Self::TerminatingWait => "Terminating:Wait",
            Self::TerminatingProceed => "Terminating:Proceed",
            Self::Terminated => "Terminated",
        })
    }
}

/// A lifecycle hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleHook {
    name: String,
    transition: LifecycleTransition,
    heartbeat_timeout: Duration,
    default_result: LifecycleActionResult,
}

impl LifecycleHook {
    /// A hook; no heartbeat timeout means 3600 s and no default result means ABANDON (AWS's
    /// defaults); a timeout outside 30 s to 7200 s is refused.
    pub fn new(
        name: impl Into<String>,
        transition: LifecycleTransition,
        heartbeat_timeout: Option<Duration>,
        default_result: Option<LifecycleActionResult>,
    ) -> Result<Self, LifecycleError> {
        let name = name.into();
        let heartbeat_timeout = heartbeat_timeout.unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT);
        if !(MIN_HEARTBEAT_TIMEOUT..=MAX_HEARTBEAT_TIMEOUT).contains(&heartbeat_timeout) {
            return Err(LifecycleError::HeartbeatTimeoutOutOfRange {
                hook: name,
                timeout: heartbeat_timeout,
            });
        }
        Ok(Self {
            name,
            transition,
            heartbeat_timeout,
            default_result: default_result.unwrap_or(LifecycleActionResult::Abandon),
        })
    }

    /// The hook's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The transition it pauses.
    pub fn transition(&self) -> LifecycleTransition {
        self.transition
    }

    /// Its heartbeat timeout.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// The result taken when it times out.
    pub fn default_result(&self) -> LifecycleActionResult {
        self.default_result
    }

    /// The longest an instance waits on it: 100 heartbeat timeouts or 48 hours, the smaller.
    pub fn global_timeout(&self) -> Duration {
        (self.heartbeat_timeout * 100).min(MAX_GLOBAL_TIMEOUT)
    }
}

/// What the group does next for an instance, once its hooks have settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Every launch hook continued (or there were none): the instance is `Pending:Proceed`;
    /// register it and put it in service.
    LaunchProceeds,
    /// A launch hook ended with ABANDON: the instance is `Terminating`; terminate (and
    /// replace) it.
    LaunchAbandoned { hook: String },
    /// The terminate hooks are done, or one abandoned the rest: the instance is
    /// `Terminating:Proceed`; terminate it.
    TerminationProceeds,
}

/// How one hook's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// `complete` was called with this result.
    Completed(LifecycleActionResult),
    /// The heartbeat or global timeout passed: the hook's default result.
    TimedOut(LifecycleActionResult),
}

impl WaitEnd {
    fn result(self) -> LifecycleActionResult {
        match self {
            Self::Completed(result) | Self::TimedOut(result) => result,
        }
    }
}

/// One hook an instance waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookWait {
    hook: LifecycleHook,
    started_at: Duration,
    heartbeat_deadline: Duration,
    end: Option<WaitEnd>,
}

impl HookWait {
    fn new(hook: LifecycleHook, now: Duration) -> Self {
        let heartbeat_deadline = now.saturating_add(hook.heartbeat_timeout);
        Self {
            hook,
            started_at: now,
            heartbeat_deadline,
            end: None,
        }
    }

    /// The hook's name.
    pub fn hook(&self) -> &str {
        &self.hook.name
    }

    /// When the wait times out unless a heartbeat or a completion comes first: the heartbeat
    /// deadline, never past the global timeout.
    pub fn deadline(&self) -> Duration {
        let global = self.started_at.saturating_add(self.hook.global_timeout());
        self.heartbeat_deadline.min(global)
    }

    /// How it ended, if it has.
    pub fn end(&self) -> Option<WaitEnd> {
        self.end
    }
}

/// One instance's way through its lifecycle hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLifecycle {
    instance_id: String,
    state: LifecycleState,
    waits: Vec<HookWait>,
}

impl InstanceLifecycle {
    /// An instance just launched at `now`: `Pending:Wait` on `hooks`' launch hooks, or
    /// straight to `Pending:Proceed` when there are none.
    pub fn launch(
        instance_id: impl Into<String>,
        hooks: &[LifecycleHook],
        now: Duration,
    ) -> (Self, Option<LifecycleEvent>) {
        let mut lifecycle = Self {
            instance_id: instance_id.into(),
            state: LifecycleState::Pending,
            waits: Vec::new(),
        };
        let event = lifecycle.enter_wait(LifecycleTransition::Launching, hooks, now);
        (lifecycle, event)
    }

    /// An instance already in service (adopted, or launched before hooks were added).
    pub fn in_service(instance_id: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.into(),
            state: LifecycleState::InService,
            waits: Vec::new(),
        }
    }

    /// The instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Its state.
    pub fn state(&self) -> LifecycleState {
        self.state
    }

    /// The hooks it waits on (in a wait state) with their deadlines.
    pub fn waits(&self) -> &[HookWait] {
        &self.waits
    }

    /// The earliest time a wait times out, if it is waiting: when to call [`Self::expire`].
    pub fn next_deadline(&self) -> Option<Duration> {
        self.waits
            .iter()
            .filter(|w| w.end.is_none())
            .map(HookWait::deadline)
            .min()
    }

    /// The instance starts terminating at `now` (scale-in, health replacement, abandoned
    /// launch, or a user's request): `Terminating:Wait` on the terminate hooks, or straight to
    /// `Terminating:Proceed`. Refused once it is already past `Terminating`.
    pub fn begin_termination(
        &mut self,
        hooks: &[LifecycleHook],
        now: Duration,
    ) -> Result<Option<LifecycleEvent>, LifecycleError> {
        match self.state {
            LifecycleState::TerminatingWait
            | LifecycleState::TerminatingProceed
            | LifecycleState::Terminated => Err(self.wrong_state("begin terminating")),
            _ => {
                self.state = LifecycleState::Terminating;
                Ok(self.enter_wait(LifecycleTransition::Terminating, hooks, now))
            }
        }
    }

    /// `complete-lifecycle-action`: the hook's wait ends with `result`.
    pub fn complete(
        &mut self,
        hook: &str,
        result: LifecycleActionResult,
    ) -> Result<Option<LifecycleEvent>, LifecycleError> {
        let wait = self.active_wait(hook)?;
        wait.end = Some(WaitEnd::Completed(result));
        Ok(self.settle())
    }

    /// `record-lifecycle-action-heartbeat`: the hook's timeout restarts at `now`, bounded by
    /// its global timeout. Returns the new deadline.
    pub fn record_heartbeat(
        &mut self,
        hook: &str,
        now: Duration,
    ) -> Result<Duration, LifecycleError> {
        let wait = self.active_wait(hook)?;
        wait.heartbeat_deadline = now.saturating_add(wait.hook.heartbeat_timeout);
        Ok(wait.deadline())
    }

    /// Ends, with their default result, the waits whose deadline has passed at `now`.
    pub fn expire(&mut self, now: Duration) -> Option<LifecycleEvent> {
        let mut expired = false;
        for wait in self.waits.iter_mut().filter(|w| w.end.is_none()) {
            if now >= wait.deadline() {
                wait.end = Some(WaitEnd::TimedOut(wait.hook.default_result));
                expired = true;
            }
        }
        if expired { self.settle() } else { None }
    }

    /// The group has put the instance in service (from `Pending:Proceed`).
    pub fn mark_in_service(&mut self) -> Result<(), LifecycleError> {
        if self.state != LifecycleState::PendingProceed {
            return Err(self.wrong_state("be put in service"));
        }
        self.state = LifecycleState::InService;
        Ok(())
    }

    /// The group has terminated the instance (from `Terminating:Proceed`).
    pub fn mark_terminated(&mut self) -> Result<(), LifecycleError> {
        if self.state != LifecycleState::TerminatingProceed {
            return Err(self.wrong_state("be marked terminated"));
        }
        self.state = LifecycleState::Terminated;
        Ok(())
    }

    /// Starts waiting on `hooks` of `transition`, or moves on when there are none.
    fn enter_wait(
        &mut self,
        transition: LifecycleTransition,
        hooks: &[LifecycleHook],
        now: Duration,
    ) -> Option<LifecycleEvent> {
        self.waits = hooks
            .iter()
            .filter(|h| h.transition == transition)
            .map(|h| HookWait::new(h.clone(), now))
            .collect();
        self.state = match transition {
            LifecycleTransition::Launching => LifecycleState::PendingWait,
            LifecycleTransition::Terminating => LifecycleState::TerminatingWait,
        };
        self.settle()
    }

    /// The wait on `hook` still open, or AWS's "No active Lifecycle Action found".
    fn active_wait(&mut self, hook: &str) -> Result<&mut HookWait, LifecycleError> {
        let (instance, state) = (self.instance_id.clone(), self.state);
        self.waits
            .iter_mut()
            .find(|w| w.hook.name == hook && w.end.is_none())
            .ok_or_else(|| LifecycleError::NoActiveLifecycleAction {
                instance,
                hook: hook.to_owned(),
                state,
            })
    }

    /// Moves on once the waits decide it: any ABANDON ends the wait at once (a launch is
    /// terminated, a termination skips the other hooks); otherwise every hook must have
    /// continued.
    fn settle(&mut self) -> Option<LifecycleEvent> {
        let abandoned = self
            .waits
            .iter()
            .find(|w| w.end.map(WaitEnd::result) == Some(LifecycleActionResult::Abandon))
            .map(|w| w.hook.name.clone());
        let all_done = self.waits.iter().all(|w| w.end.is_some());
        let event = match (self.state, abandoned) {
            (LifecycleState::PendingWait, Some(hook)) => {
                self.state = LifecycleState::Terminating;
                LifecycleEvent::LaunchAbandoned { hook }
            }
            (LifecycleState::PendingWait, None) if all_done => {
                self.state = LifecycleState::PendingProceed;
                LifecycleEvent::LaunchProceeds
            }
            (LifecycleState::TerminatingWait, Some(_)) => {
                self.state = LifecycleState::TerminatingProceed;
                LifecycleEvent::TerminationProceeds
            }
            (LifecycleState::TerminatingWait, None) if all_done => {
                self.state = LifecycleState::TerminatingProceed;
                LifecycleEvent::TerminationProceeds
            }
            _ => return None,
        };
        // The remaining hooks are cancelled (ABANDON) or all ended: nothing to wait on.
        self.waits.clear();
        Some(event)
    }

    fn wrong_state(&self, action: &'static str) -> LifecycleError {
        LifecycleError::WrongState {
            instance: self.instance_id.clone(),
            state: self.state,
            action,
        }
    }
}

/// A group's hooks and its instances' lifecycles: the `complete` and `record-heartbeat` verbs
/// by instance id and hook name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupLifecycle {
    hooks: Vec<LifecycleHook>,
    instances: BTreeMap<String, InstanceLifecycle>,
}

impl GroupLifecycle {
    /// A group with `hooks` (names unique) and no instances yet.
    pub fn new(hooks: Vec<LifecycleHook>) -> Result<Self, LifecycleError> {
        for (at, hook) in hooks.iter().enumerate() {
            if hooks[..at].iter().any(|h| h.name == hook.name) {
                return Err(LifecycleError::DuplicateHook {
                    hook: hook.name.clone(),
                });
            }
        }
        Ok(Self {
            hooks,
            instances: BTreeMap::new(),
        })
    }

    /// The group's hooks.
    pub fn hooks(&self) -> &[LifecycleHook] {
        &self.hooks
    }

    /// An instance's lifecycle.
    pub fn instance(&self, instance_id: &str) -> Option<&InstanceLifecycle> {
        self.instances.get(instance_id)
    }

    /// Instances and their lifecycles, by id.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceLifecycle> {
        self.instances.values()
    }

    /// A new instance launched at `now` (see [`InstanceLifecycle::launch`]).
    pub fn launch(&mut self, instance_id: &str, now: Duration) -> Option<LifecycleEvent> {
        let (lifecycle, event) = InstanceLifecycle::launch(instance_id, &self.hooks, now);
        self.instances.insert(instance_id.to_owned(), lifecycle);
        event
    }

    /// An instance already in service joins the group (adopted after a restart).
    pub fn adopt_in_service(&mut self, instance_id: &str) {
        self.instances.insert(
            instance_id.to_owned(),
            InstanceLifecycle::in_service(instance_id),
        );
    }

    /// The instance starts terminating at `now` (see [`InstanceLifecycle::begin_termination`]).
    pub fn begin_termination(
        &mut self,
        instance_id: &str,
        now: Duration,
    ) -> Result<Option<LifecycleEvent>, LifecycleError> {
        let hooks = &self.hooks;
        Self::lookup(&mut self.instances, instance_id)?.begin_termination(hooks, now)
    }

    /// `complete-lifecycle-action` for `instance_id` on `hook`.
    pub fn complete(
        &mut self,
        instance_id: &str,
        hook: &str,
        result: LifecycleActionResult,
    ) -> Result<Option<LifecycleEvent>, LifecycleError> {
        self.known_hook(hook)?;
        Self::lookup(&mut self.instances, instance_id)?.complete(hook, result)
    }

    /// `record-lifecycle-action-heartbeat` for `instance_id` on `hook` at `now`; the new
    /// deadline.
    pub fn record_heartbeat(
        &mut self,
        instance_id: &str,
        hook: &str,
        now: Duration,
    ) -> Result<Duration, LifecycleError> {
        self.known_hook(hook)?;
        Self::lookup(&mut self.instances, instance_id)?.record_heartbeat(hook, now)
    }

    /// Times out every wait whose deadline has passed at `now`; the events, by instance.
    pub fn expire(&mut self, now: Duration) -> Vec<(String, LifecycleEvent)> {
        self.instances
            .values_mut()
            .filter_map(|i| i.expire(now).map(|e| (i.instance_id.clone(), e)))
            .collect()
    }

    /// The earliest deadline of any wait: when to call [`Self::expire`] next.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.instances
            .values()
            .filter_map(InstanceLifecycle::next_deadline)
            .min()
    }

    /// The instance is gone: its lifecycle is forgotten.
    pub fn forget(&mut self, instance_id: &str) {
        self.instances.remove(instance_id);
    }

    /// The group has put the instance in service.
    pub fn mark_in_service(&mut self, instance_id: &str) -> Result<(), LifecycleError> {
        Self::lookup(&mut self.instances, instance_id)?.mark_in_service()
    }

    /// The group has terminated the instance: it leaves the group.
    pub fn mark_terminated(&mut self, instance_id: &str) -> Result<(), LifecycleError> {
        Self::lookup(&mut self.instances, instance_id)?.mark_terminated()?;
        self.instances.remove(instance_id);
        Ok(())
    }

    fn known_hook(&self, hook: &str) -> Result<(), LifecycleError> {
        if self.hooks.iter().any(|h| h.name == hook) {
            Ok(())
        } else {
            Err(LifecycleError::UnknownHook {
                hook: hook.to_owned(),
            })
        }
    }

    fn lookup<'a>(
        instances: &'a mut BTreeMap<String, InstanceLifecycle>,
        instance_id: &str,
    ) -> Result<&'a mut InstanceLifecycle, LifecycleError> {
        instances
            .get_mut(instance_id)
            .ok_or_else(|| LifecycleError::UnknownInstance {
                instance: instance_id.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests;
