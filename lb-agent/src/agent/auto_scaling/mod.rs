//! The auto scaling groups at work: a task that keeps each group of the config at its desired
//! capacity. Once a second it asks the providers which instances run, reads the targets'
//! health and draining from the writer's snapshot, lets each `scaling::group::Group` decide,
//! and carries out what it says: launches and terminations on the provider (on blocking
//! threads, reported back as events, so a slow launch holds up nothing), registrations and
//! deregistrations through the writer (the API's own `targets add` and `targets remove`, so
//! they are kept in the state file and drained like any target's).
//!
//! The API's `asg` requests come here: reads from the views published after each step,
//! changes as commands answered in order with the steps. What a restart must not lose (sizes
//! set at run time, instances, history) is kept in `NAME.scaling.json` (`saved`); a restarted
//! agent adopts the instances still running instead of launching new ones.

mod hooks;
mod launch;
pub mod metrics;
mod policies;
mod requests;
mod saved;
mod views;

pub use requests::{Command, ScalingHandle};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use super::{Handle, instance_links};
use crate::{
    config::{AutoScalingGroup, Config, HealthCheckType, ProviderKind},
    health::TargetState,
    protocol::{
        Answer, Request,
        scaling::{ActivityView, AsgView},
    },
    proxy::{balance::InFlight, metrics::ProxyMetrics},
    scaling::{
        addressing,
        capacity::{CapacityChange, Cause, Cooldown, GroupCapacity},
        controller::Controller,
        group::{Action, Group, Observation, Phase, ScalingProcess},
        provider::{
            InstanceRecord, InstanceStatus, Provider,
            exec::{ExecConfig, ExecProvider},
            local::{LocalConfig, LocalProvider},
        },
        termination::LaunchSource,
    },
};
pub use saved::Saved;

/// How often the groups look at their instances.
const STEP_EVERY: Duration = Duration::from_secs(1);

/// How long an `exec` hook may take to answer.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after a failed terminate it is tried again.
const STOP_RETRY: Duration = Duration::from_secs(10);

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the groups' state is kept (`None`: nowhere, for tests).
    pub saved: Option<PathBuf>,
    /// The `local` provider's settings.
    pub local: LocalConfig,
    /// The writer, which attaches the data plane to each `local` instance's veth (so that
    /// L4 listeners reach instances) and detaches it once the instance is gone; none: no
    /// XDP on instance veths (tests).
    pub writer: Option<mpsc::UnboundedSender<super::Change>>,
    /// The L7 proxy's counters: requests per target for the policies.
    pub proxy_metrics: Option<Arc<ProxyMetrics>>,
    /// The L7 proxy's requests in progress per target: a draining instance stops only once
    /// none is left (or its deregistration delay is over).
    pub in_flight: Option<Arc<InFlight>>,
}

/// What the groups look like after the last step.
#[derive(Debug, Default)]
pub struct Views {
    pub groups: Vec<AsgView>,
    pub activities: BTreeMap<String, Vec<ActivityView>>,
}

/// A background provider call's outcome.
enum Event {
    Launched {
        group: String,
        /// The id the launch was given.
        instance: String,
        source: LaunchSource,
        address: IpAddr,
        result: Result<Box<InstanceRecord>, String>,
    },
    Stopped {
        group: String,
        instance: String,
        result: Result<(), String>,
    },
}

/// One group as the engine runs it.
struct Running {
    config: AutoScalingGroup,
    group: Group,
    provider: Arc<dyn Provider>,
    records: BTreeMap<String, InstanceRecord>,
    /// Instances whose terminate runs now, or failed and waits to be tried again (until).
    stopping: HashMap<String, Option<Duration>>,
    /// Instances a target group reported unhealthy, as EC2 Auto Scaling shows them.
    unhealthy: BTreeSet<String>,
    /// Ends `honor_cooldown` set-desired requests wait for.
    cooldown: Cooldown,
    /// Removed from the config: scaled to 0, then forgotten.
    deleting: bool,
    /// Its alarms, policies and scheduled actions at work (none if they cannot be built:
    /// the config's checks refuse that first).
    controller: Option<Controller>,
    /// What the controller was built from, to rebuild it only when that changes.
    controller_source: String,
}

/// The engine: every group, the providers, the events of background calls.
pub struct Engine {
    agent: Handle,
    options: Options,
    config: Arc<Config>,
    local: Option<Arc<LocalProvider>>,
    exec: BTreeMap<PathBuf, Arc<ExecProvider>>,
    groups: BTreeMap<String, Running>,
    /// Addresses of launches under way.
    reserved: HashSet<IpAddr>,
    /// The providers' last word on each instance.
    statuses: HashMap<String, InstanceStatus>,
    events: mpsc::UnboundedSender<Event>,
    /// Taken by `run`.
    received: Option<(
        mpsc::UnboundedReceiver<Event>,
        mpsc::UnboundedReceiver<Command>,
    )>,
    views: watch::Sender<Arc<Views>>,
    last_saved: Option<Saved>,
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    crate::scaling::provider::unix_now()
}

fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl Engine {
    /// An engine for the config `agent` runs, adopting the instances `options.saved` keeps;
    /// and the API's handle on it. Errors if a provider cannot be set up or the kept state
    /// cannot be read.
    pub async fn start(agent: Handle, options: Options) -> Result<(Engine, ScalingHandle), String> {
        let config = agent.snapshot().config.clone();
        let (views, views_rx) = watch::channel(Arc::new(Views::default()));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let mut engine = Engine {
            agent,
            options,
            config: config.clone(),
            local: None,
            exec: BTreeMap::new(),
            groups: BTreeMap::new(),
            reserved: HashSet::new(),
            statuses: HashMap::new(),
            events,
            received: Some((events_rx, commands_rx)),
            views,
            last_saved: None,
        };
        let saved = match &engine.options.saved {
            Some(path) => Saved::load(path).map_err(|e| e.to_string())?,
            None => Saved::default(),
        };
        for group in &config.auto_scaling_groups {
            engine
                .add_group(group.clone(), saved.groups.get(&group.name))
                .await?;
        }
        // Groups kept but gone from the config: their instances are terminated.
        for (name, kept) in &saved.groups {
            if !engine.groups.contains_key(name) && !kept.instances.is_empty() {
                tracing::warn!(
                    group = name,
                    "an auto scaling group the config no longer has still has instances: terminating them"
                );
                let mut orphan = saved_group_config(name, kept);
                orphan.provider = if kept.instances.iter().any(|i| {
                    matches!(
                        i.record.detail,
                        crate::scaling::provider::ProviderDetail::Exec { .. }
                    )
                }) {
                    ProviderKind::Exec
                } else {
                    ProviderKind::Local
                };
                engine.add_group(orphan, Some(kept)).await?;
                if let Some(running) = engine.groups.get_mut(name) {
                    running.deleting = true;
                }
            }
        }
        engine.adopt_links().await;
        engine.publish();
        let handle = ScalingHandle {
            commands,
            views: views_rx,
        };
        Ok((engine, handle))
    }

    /// Runs the groups until `shutdown`; instances keep running after it (a restarted agent
    /// adopts them).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let Some((mut events, mut commands)) = self.received.take() else {
            return;
        };
        let mut snapshots = self.agent.snapshots.clone();
        let mut tick = tokio::time::interval(STEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.scale().await;
                    self.step().await;
                }
                Some(event) = events.recv() => {
                    self.event(event);
                    // A launch or a stop moves the group on: look again now, not at the tick.
                    self.step().await;
                }
                Some(Command::Request { request, reply }) = commands.recv() => {
                    let answer = self.request(request).await;
                    let _ = reply.send(answer);
                    self.step().await;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { break; }
                    let config = snapshots.borrow_and_update().config.clone();
                    if !Arc::ptr_eq(&config, &self.config) {
                        self.reconfigure(config).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
            self.publish();
            self.save();
        }
        self.save();
    }

    /// The provider a group of `group`'s kind runs on (made at first use).
    fn provider(&mut self, group: &AutoScalingGroup) -> Result<Arc<dyn Provider>, String> {
        Ok(match group.provider {
            ProviderKind::Local => {
                if self.local.is_none() {
                    let mut provider = LocalProvider::new(self.options.local.clone())
                        .map_err(|e| format!("the local provider: {e}"))?;
                    if let Some(writer) = &self.options.writer {
                        provider =
                            provider.with_link_hook(instance_links::link_hook(writer.clone()));
                    }
                    self.local = Some(Arc::new(provider));
                }
                self.local
                    .clone()
                    .map(|p| p as Arc<dyn Provider>)
                    .ok_or("no local provider")?
            }
            ProviderKind::Exec => {
                let hook = group.exec_hook.clone().ok_or_else(|| {
                    format!("group {}: provider exec names no exec_hook", group.name)
                })?;
                self.exec
                    .entry(hook.clone())
                    .or_insert_with(|| {
                        Arc::new(ExecProvider::new(ExecConfig {
                            hook: vec![hook.display().to_string()],
                            timeout: EXEC_TIMEOUT,
                        }))
                    })
                    .clone()
            }
        })
    }

    /// Starts running `config`'s group: its kept sizes and history, its kept instances
    /// adopted (and those the local provider still has a record of, should the agent have
    /// stopped between a launch and keeping it).
    async fn add_group(
        &mut self,
        config: AutoScalingGroup,
        kept: Option<&saved::SavedGroup>,
    ) -> Result<(), String> {
        let provider = self.provider(&config)?;
        let settings = launch::settings(&config, &self.config);
        let file_capacity =
            launch::capacity(&config).map_err(|e| format!("group {}: {e}", config.name))?;
        let file_sizes = (config.min_size, config.desired_capacity, config.max_size);
        let capacity = match kept {
            Some(k) if k.config_sizes == file_sizes => {
                GroupCapacity::new(k.min_size, k.desired_capacity, k.max_size)
                    .unwrap_or(file_capacity)
            }
            _ => file_capacity,
        };
        let mut group = Group::new(settings, capacity);
        group.set_suspended(&config.suspended_processes, true);
        let mut records = BTreeMap::new();
        if let Some(k) = kept {
            group = group.with_activities(saved::activity_log(
                &config.name,
                &k.activities,
                k.next_activity_id,
            ));
            // Suspended through the API before the restart, the config's own suspensions
            // (applied above) kept too.
            let kept_suspended: Vec<ScalingProcess> = k
                .suspended
                .iter()
                .filter_map(|p| serde_json::from_value(serde_json::Value::String(p.clone())).ok())
                .collect();
            group.set_suspended(&kept_suspended, true);
            if let Some(refresh) = &k.refresh {
                group.resume_refresh(refresh.refresh());
            }
            for instance in &k.instances {
                records.insert(instance.record.instance_id.clone(), instance.record.clone());
                group.adopt(instance.instance());
            }
        }
        if let Some(local) = &self.local
            && config.provider == ProviderKind::Local
        {
            let on_disk = local.saved_records().map_err(|e| e.to_string())?;
            for record in on_disk.into_iter().filter(|r| r.group == config.name) {
                if records.contains_key(&record.instance_id) {
                    continue;
                }
                tracing::info!(
                    group = config.name,
                    instance = record.instance_id,
                    "adopting an instance launched just before the agent stopped"
                );
                let kept = saved::SavedInstance {
                    record: record.clone(),
                    phase: "pending".into(),
                    protected_from_scale_in: config.new_instances_protected_from_scale_in,
                    from_launch_configuration: config.launch_template.is_none(),
                };
                group.adopt(kept.instance());
                records.insert(record.instance_id.clone(), record);
            }
        }
        group.end_orphaned_activities(now());
        if !records.is_empty() {
            let list: Vec<InstanceRecord> = records.values().cloned().collect();
            let adopter = provider.clone();
            let adopted = blocking(move || adopter.adopt(&list))
                .await
                .map_err(|e| format!("group {}: adopting its instances: {e}", config.name))?;
            tracing::info!(
                group = config.name,
                instances = adopted.len(),
                running = adopted.iter().filter(|s| s.running).count(),
                "adopted the group's instances"
            );
            for status in adopted {
                self.statuses.insert(status.instance_id.clone(), status);
            }
        }
        let name = config.name.clone();
        self.groups.insert(
            config.name.clone(),
            Running {
                config,
                group,
                provider,
                records,
                stopping: HashMap::new(),
                unhealthy: BTreeSet::new(),
                cooldown: Cooldown::none(),
                deleting: false,
                controller: None,
                controller_source: String::new(),
            },
        );
        self.rebuild_controller(&name);
        Ok(())
    }

    /// (Re)builds group `name`'s controller if its alarms, policies or scheduled actions
    /// changed (a rebuild starts their history afresh).
    fn rebuild_controller(&mut self, name: &str) {
        let Some(running) = self.groups.get_mut(name) else {
            return;
        };
        let config = &running.config;
        let source = format!(
            "{:?}",
            (&config.policies, &config.alarms, &config.scheduled_actions)
        );
        if running.controller.is_some() && source == running.controller_source {
            return;
        }
        running.controller = match Controller::new(config) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(group = name, error = %e, "the group's scaling policies cannot run");
                None
            }
        };
        running.controller_source = source;
    }

    /// Takes over the data plane's links on the veths of the adopted `local` instances (an
    /// earlier agent pinned them), attaches where none was pinned, and drops the links of
    /// instances gone.
    async fn adopt_links(&self) {
        let Some(writer) = self.options.writer.clone() else {
            return;
        };
        let records: Vec<InstanceRecord> = self
            .groups
            .values()
            .filter(|r| r.config.provider == ProviderKind::Local)
            .flat_map(|r| r.records.values().cloned())
            .collect();
        let adopted = blocking(move || {
            instance_links::adopt(&writer, &records, instance_links::WRITER_TIMEOUT)
        })
        .await;
        match adopted {
            Ok(links) => {
                for (id, e) in &links.failed {
                    tracing::warn!(instance = id, error = %e, "an adopted instance's veth has no XDP: it gets no L4 traffic");
                }
                if !links.attached.is_empty() || !links.dropped.is_empty() {
                    tracing::info!(attached = ?links.attached, dropped = ?links.dropped, "took over the instances' veth links");
                }
            }
            Err(e) => tracing::warn!(error = %e, "taking over the instances' veth links failed"),
        }
    }

    /// A new config (reload, API): groups added start, removed ones scale to 0 and go, the
    /// others take the new settings, and new sizes if the file's changed.
    async fn reconfigure(&mut self, config: Arc<Config>) {
        let old = std::mem::replace(&mut self.config, config.clone());
        for group in &config.auto_scaling_groups {
            let Some(running) = self.groups.get_mut(&group.name) else {
                if let Err(e) = self.add_group(group.clone(), None).await {
                    tracing::error!(group = group.name, error = %e, "could not start the auto scaling group");
                }
                continue;
            };
            running.group.set_settings(launch::settings(group, &config));
            // The file's suspensions changed: those it no longer names resume, new ones
            // are suspended (suspensions made through the API stay otherwise).
            if let Some(before) = old
                .auto_scaling_groups
                .iter()
                .find(|g| g.name == group.name)
            {
                let resumed: Vec<ScalingProcess> = before
                    .suspended_processes
                    .iter()
                    .filter(|p| !group.suspended_processes.contains(p))
                    .copied()
                    .collect();
                running.group.set_suspended(&resumed, false);
            }
            running
                .group
                .set_suspended(&group.suspended_processes, true);
            running.deleting = false;
            let before = old
                .auto_scaling_groups
                .iter()
                .find(|g| g.name == group.name);
            let sizes_changed = before.is_none_or(|b| {
                (b.min_size, b.desired_capacity, b.max_size)
                    != (group.min_size, group.desired_capacity, group.max_size)
            });
            if sizes_changed && let Ok(capacity) = launch::capacity(group) {
                let change = CapacityChange {
                    from: running.group.capacity().desired(),
                    to: capacity.desired(),
                    cause: Cause::UserUpdate {
                        min: capacity.min(),
                        max: capacity.max(),
                        desired: capacity.desired(),
                    },
                };
                running.group.change_capacity(capacity, &change, now());
            }
            let provider_changed = (running.config.provider, &running.config.exec_hook)
                != (group.provider, &group.exec_hook);
            let has_instances = !running.group.instances().is_empty();
            running.config = group.clone();
            if provider_changed {
                if has_instances {
                    // Its instances run where they were launched: the old provider keeps
                    // looking after them.
                    tracing::error!(
                        group = group.name,
                        "the group's provider changed while it has instances: set its capacity to 0 first; the old provider still runs its instances"
                    );
                } else {
                    match self.provider(group) {
                        Ok(provider) => {
                            if let Some(running) = self.groups.get_mut(&group.name) {
                                running.provider = provider;
                            }
                        }
                        Err(e) => {
                            tracing::error!(group = group.name, error = %e, "the group's new provider cannot run");
                        }
                    }
                }
            }
            self.rebuild_controller(&group.name);
        }
        for (name, running) in &mut self.groups {
            if !config.auto_scaling_groups.iter().any(|g| &g.name == name) && !running.deleting {
                tracing::info!(
                    group = name,
                    "auto scaling group removed from the config: terminating its instances"
                );
                running.deleting = true;
                if let Ok(zero) = GroupCapacity::new(0, 0, 0) {
                    let change = CapacityChange {
                        from: running.group.capacity().desired(),
                        to: 0,
                        cause: Cause::UserUpdate {
                            min: 0,
                            max: 0,
                            desired: 0,
                        },
                    };
                    running.group.change_capacity(zero, &change, now());
                }
            }
        }
    }

    /// Once a tick, before the step: each group's controller is fed its instances' readings
    /// and says whether the capacity changes (alarms, policies, scheduled actions).
    async fn scale(&mut self) {
        let now = now();
        let mut targets = HashMap::new();
        if self
            .groups
            .values()
            .any(|r| r.controller.is_some() && policies::reads_data_plane(&r.config))
        {
            match self
                .agent
                .call(Request::TargetsList { group: None }, None)
                .await
            {
                Ok(Answer::Targets(list)) => {
                    targets = list
                        .into_iter()
                        .map(|t| ((t.group.clone(), t.address), t))
                        .collect();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading the targets' counters failed"),
            }
        }
        let config = self.config.clone();
        for (name, running) in &mut self.groups {
            let Some(controller) = running.controller.as_mut() else {
                continue;
            };
            let samples = policies::samples(
                &running.group,
                &self.statuses,
                |i| registrations(&config, &running.config, i.address, &i.launched_from),
                self.options.proxy_metrics.as_deref(),
                &targets,
            );
            controller.record(now, &samples);
            let state = policies::group_state(&running.group);
            for decision in controller.decide(now, &state) {
                tracing::info!(group = name, cause = %decision.change, "scaling");
                running
                    .group
                    .change_capacity(decision.capacity, &decision.change, now);
            }
        }
    }

    /// One look at every group, and what it decides done.
    async fn step(&mut self) {
        let taken_at = now();
        // One describe per provider; a provider that cannot answer leaves its groups alone
        // this time (rather than taking every instance for dead).
        let mut answered: HashSet<usize> = HashSet::new();
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        for running in self.groups.values() {
            let key = provider_key(&running.provider);
            if !providers.iter().any(|p| provider_key(p) == key) {
                providers.push(running.provider.clone());
            }
        }
        for provider in providers {
            let key = provider_key(&provider);
            match blocking(move || provider.describe()).await {
                Ok(statuses) => {
                    answered.insert(key);
                    for status in statuses {
                        self.statuses.insert(status.instance_id.clone(), status);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a provider's describe failed: its groups wait");
                }
            }
        }
        let snapshot = self.agent.snapshot();
        let targets = snapshot.state.target_states();
        let now = now();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let Some(running) = self.groups.get_mut(&name) else {
                continue;
            };
            if !answered.contains(&provider_key(&running.provider)) {
                continue;
            }
            let mut seen = Observation {
                taken_at,
                ..Observation::default()
            };
            running.unhealthy.clear();
            for instance in running.group.instances() {
                if self.statuses.get(&instance.id).is_some_and(|s| s.running) {
                    seen.running.insert(instance.id.clone());
                }
                let registrations = registrations(
                    &self.config,
                    &running.config,
                    instance.address,
                    &instance.launched_from,
                );
                let states: Vec<Option<&TargetState>> = registrations
                    .iter()
                    .map(|(tg, address)| targets.get(tg).and_then(|t| t.get(address)))
                    .collect();
                if states.contains(&Some(&TargetState::Unhealthy)) {
                    seen.unhealthy_in_target_groups.insert(instance.id.clone());
                    running.unhealthy.insert(instance.id.clone());
                }
                // ELB health: an instance is ready to take an old one's place once every
                // target group finds it healthy (EC2 health: once it runs, as AWS).
                if running.config.health_check_type == HealthCheckType::Elb
                    && !states
                        .iter()
                        .all(|s| matches!(s, Some(TargetState::Healthy | TargetState::Unavailable)))
                {
                    seen.not_ready.insert(instance.id.clone());
                }
                // Drained: gone from every target group (the writer ends a target's draining
                // once no flow is left, or at the delay), and no request of the proxy's in
                // progress on it (the proxy's requests are no flows of the data plane).
                let requests = |(tg, address): &(String, SocketAddr)| {
                    self.options
                        .in_flight
                        .as_ref()
                        .map_or(0, |f| f.requests(tg, *address))
                };
                if matches!(instance.phase, Phase::Draining { .. })
                    && states.iter().all(Option::is_none)
                    && registrations.iter().all(|r| requests(r) == 0)
                {
                    seen.drained.insert(instance.id.clone());
                }
            }
            let actions = running.group.step(now, &seen);
            for action in actions {
                self.act(&name, action).await;
            }
            // Stopping instances with no terminate under way (one failed before, or the agent
            // restarted meanwhile) are stopped again once due.
            let retry: Vec<String> = self.groups.get(&name).map_or_else(Vec::new, |r| {
                r.group
                    .instances()
                    .iter()
                    .filter(|i| i.phase == Phase::Stopping)
                    .filter(|i| match r.stopping.get(&i.id) {
                        None => true,
                        Some(Some(at)) => now >= *at,
                        Some(None) => false,
                    })
                    .map(|i| i.id.clone())
                    .collect()
            });
            for instance in retry {
                self.act(&name, Action::Stop { instance }).await;
            }
        }
        // A removed group goes once it has no instance left.
        self.groups.retain(|_, r| {
            !(r.deleting && r.group.instances().is_empty() && r.group.current_capacity() == 0)
        });
    }

    /// Carries out one of a group's actions.
    async fn act(&mut self, name: &str, action: Action) {
        let Some(running) = self.groups.get_mut(name) else {
            return;
        };
        match action {
            Action::Launch { count } => {
                for _ in 0..count {
                    self.launch(name);
                }
            }
            Action::Register { instance } => {
                let Some(i) = running.group.instances().iter().find(|i| i.id == instance) else {
                    return;
                };
                for (group, target) in
                    registrations(&self.config, &running.config, i.address, &i.launched_from)
                {
                    let request = Request::TargetsAdd {
                        group: group.clone(),
                        address: target.ip(),
                        port: Some(target.port()),
                        weight: 1,
                    };
                    match self.agent.call(request, None).await {
                        Ok(_) => {
                            tracing::info!(group = name, instance, target_group = group, %target, "instance registered")
                        }
                        Err(e) => {
                            tracing::error!(group = name, instance, target_group = group, %target, error = %e, "registering the instance failed")
                        }
                    }
                }
            }
            Action::Deregister { instance } => {
                let Some(i) = running.group.instances().iter().find(|i| i.id == instance) else {
                    return;
                };
                for (group, target) in
                    registrations(&self.config, &running.config, i.address, &i.launched_from)
                {
                    let request = Request::TargetsRemove {
                        group: group.clone(),
                        address: target.ip(),
                        port: Some(target.port()),
                    };
                    match self.agent.call(request, None).await {
                        Ok(_) => {
                            tracing::info!(group = name, instance, target_group = group, %target, "instance deregistered: draining")
                        }
                        // Never registered (it failed before), or already gone.
                        Err(e) => {
                            tracing::debug!(group = name, instance, target_group = group, error = %e, "deregistering the instance")
                        }
                    }
                }
            }
            Action::HookWaiting {
                instance,
                transition,
            } => {
                let address = running
                    .group
                    .instances()
                    .iter()
                    .find(|i| i.id == instance)
                    .map(|i| i.address.to_string())
                    .unwrap_or_default();
                for hook in running
                    .config
                    .lifecycle_hooks
                    .iter()
                    .filter(|h| h.transition == transition)
                {
                    tracing::info!(
                        group = name,
                        instance,
                        hook = hook.name,
                        "waiting on a lifecycle hook"
                    );
                    if let Some(command) = &hook.command {
                        hooks::run(command, name, &hook.name, transition, &instance, &address);
                    }
                }
            }
            Action::Stop { instance } => {
                let stop_timeout = running
                    .group
                    .instances()
                    .iter()
                    .find(|i| i.id == instance)
                    .and_then(|i| definition(&self.config, &running.config, &i.launched_from))
                    .map_or(Duration::from_secs(30), |d| d.stop_timeout);
                running.stopping.insert(instance.clone(), None);
                let provider = running.provider.clone();
                let events = self.events.clone();
                let group = name.to_owned();
                let writer = (running.config.provider == ProviderKind::Local)
                    .then(|| self.options.writer.clone())
                    .flatten();
                tokio::spawn(async move {
                    let id = instance.clone();
                    let result = blocking(move || {
                        provider.terminate(&id, stop_timeout)?;
                        // After the instance is gone, not before: the replies of flows still
                        // draining pass the LB end's program until then.
                        if let Some(writer) = writer
                            && let Err(e) = instance_links::detach(
                                &writer,
                                &id,
                                instance_links::WRITER_TIMEOUT,
                            )
                        {
                            tracing::warn!(instance = id, error = %e, "detaching from the instance's veth failed");
                        }
                        Ok::<(), crate::scaling::provider::ProviderError>(())
                    })
                    .await;
                    let _ = events.send(Event::Stopped {
                        group,
                        instance,
                        result,
                    });
                });
            }
        }
    }

    /// Starts one launch of group `name` on a blocking thread.
    fn launch(&mut self, name: &str) {
        let Some(running) = self.groups.get(name) else {
            return;
        };
        let now = now();
        let resolved = launch::resolve(&running.config, &self.config)
            .map(|(source, definition)| (source, definition.clone()));
        let (source, definition) = match resolved {
            Ok(r) => r,
            Err(why) => {
                if let Some(running) = self.groups.get_mut(name) {
                    running.group.launch_failed(None, &why, now);
                }
                return;
            }
        };
        let address = match launch::subnet(&running.config, &definition) {
            Some(subnet) => {
                let mut taken: HashSet<IpAddr> = self.reserved.clone();
                for r in self.groups.values() {
                    taken.extend(r.group.instances().iter().map(|i| i.address));
                }
                match addressing::free_address(&subnet, &taken) {
                    Some(a) => a,
                    None => {
                        if let Some(running) = self.groups.get_mut(name) {
                            running.group.launch_failed(
                                None,
                                &format!("no free address left in {subnet}"),
                                now,
                            );
                        }
                        return;
                    }
                }
            }
            // An exec hook that chooses addresses itself.
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let id = addressing::new_instance_id(random_u128());
        let spec = launch::instance_spec(
            &running.config,
            &self.config,
            &source,
            &definition,
            &id,
            address,
        );
        self.reserved.insert(address);
        let provider = running.provider.clone();
        let events = self.events.clone();
        let group = name.to_owned();
        tracing::info!(group, instance = id, %address, "launching an instance");
        if let Some(running) = self.groups.get_mut(name) {
            running.group.launch_begun(&id, now);
        }
        tokio::spawn(async move {
            let result = blocking(move || provider.launch(&spec).map(Box::new)).await;
            let _ = events.send(Event::Launched {
                group,
                instance: id,
                source,
                address,
                result,
            });
        });
    }

    /// A background call ended.
    fn event(&mut self, event: Event) {
        let now = now();
        match event {
            Event::Launched {
                group,
                instance,
                source,
                address,
                result,
            } => {
                self.reserved.remove(&address);
                let Some(running) = self.groups.get_mut(&group) else {
                    return;
                };
                match result {
                    Ok(record) => {
                        tracing::info!(group, instance = record.instance_id, address = %record.address, "instance launched");
                        running
                            .group
                            .launched(&record.instance_id, record.address, source, now);
                        running.records.insert(record.instance_id.clone(), *record);
                    }
                    Err(why) => {
                        tracing::error!(group, error = %why, "launching an instance failed");
                        running.group.launch_failed(Some(&instance), &why, now);
                    }
                }
            }
            Event::Stopped {
                group,
                instance,
                result,
            } => {
                let Some(running) = self.groups.get_mut(&group) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        tracing::info!(group, instance, "instance terminated");
                        running.group.stopped(&instance, now);
                        running.records.remove(&instance);
                        running.stopping.remove(&instance);
                        self.statuses.remove(&instance);
                    }
                    Err(why) => {
                        tracing::error!(group, instance, error = %why, "terminating the instance failed: trying again");
                        running.stopping.insert(instance, Some(now + STOP_RETRY));
                    }
                }
            }
        }
    }
}

/// The definition an instance was launched from, if the config still has it.
fn definition<'a>(
    config: &'a Config,
    group: &AutoScalingGroup,
    source: &LaunchSource,
) -> Option<&'a crate::config::InstanceDefinition> {
    match source {
        LaunchSource::LaunchTemplate { name, version } => config
            .launch_templates
            .iter()
            .find(|t| &t.name == name)?
            .version(*version),
        LaunchSource::LaunchConfiguration { name } => config
            .launch_configurations
            .iter()
            .find(|c| &c.name == name)
            .map(|c| &c.definition),
    }
    .or_else(|| launch::resolve(group, config).ok().map(|(_, d)| d))
}

/// Where an instance at `address` is registered: each target group of its group, on the
/// port `launch::registration_port` says.
fn registrations(
    config: &Config,
    group: &AutoScalingGroup,
    address: IpAddr,
    source: &LaunchSource,
) -> Vec<(String, SocketAddr)> {
    let Some(definition) = definition(config, group, source) else {
        return Vec::new();
    };
    launch::target_groups(group, config)
        .filter_map(|tg| {
            let port = launch::registration_port(tg, definition)?;
            Some((tg.name.clone(), SocketAddr::new(address, port)))
        })
        .collect()
}

/// A kept group the config no longer has, as a config good enough to terminate its
/// instances: sizes 0.
fn saved_group_config(name: &str, _kept: &saved::SavedGroup) -> AutoScalingGroup {
    AutoScalingGroup {
        name: name.to_owned(),
        ..AutoScalingGroup::default()
    }
}

/// Runs `work` (a provider's or the writer's blocking call) on a blocking thread; its error, or
/// the thread's, as text.
async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Tells providers apart (groups share one provider per kind and hook).
fn provider_key(provider: &Arc<dyn Provider>) -> usize {
    Arc::as_ptr(provider).cast::<()>() as usize
}

/// 128 random bits, for an instance id.
fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // Unique enough without the system's randomness: the time and a counter.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return now().as_nanos() ^ (u128::from(count) << 64);
    }
    u128::from_le_bytes(bytes)
}
