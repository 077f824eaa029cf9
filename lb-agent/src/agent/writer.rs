//! The one writer: a thread that owns the `State` and the data plane's maps and applies every
//! change in the order it arrives on its channel: API writes, reloads, health-check results and
//! the lifecycle clock (draining, slow start), and the data plane's attachments to the veths
//! of `local` instances (`agent::instance_links`). After each change it publishes a
//! `Snapshot` that readers use without ever waiting for it.
//!
//! Every change is checked as the whole config it produces (the file, the API's overrides and
//! this change) before anything is applied or saved, and an `If-Match` version is compared in
//! the same step as the write it guards.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::{Config, Listener, ListenerProtocol, Rule, problem_text},
    dataplane::{DataplaneError, Detach, InstanceAttached, InstanceLinks, InstanceVeth, Maps},
    health::probe::ProbeResult,
    overrides::{Overrides, TargetOverride},
    protocol::{
        Answer, ApiError, Changes, Detached, HealthCheckSet, Request, RuleAdded, RuleMoved,
        RuleRemoved, TargetDeregistered, TargetRegistered, WeightChanged, rules::find_listener,
    },
    state::{CheckSpec, Ids, State, StateError},
};

/// The config file a writer runs, and where its side files go.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Where the API's changes are kept (`Overrides`).
    pub state_file: PathBuf,
    /// Where the data-plane ids are kept (`Ids`).
    pub ids_file: PathBuf,
}

/// What readers see: the state as of the last change, and what it was built from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: State,
    /// Grows with every change (API write, reload): writes may name the version they saw.
    pub version: u64,
    pub overrides: Overrides,
    pub source: Option<ConfigSource>,
    /// The config in force: the file with the overrides (the proxy's rules and settings).
    pub config: Arc<Config>,
}

/// A change for the writer.
pub enum Change {
    /// A write request from the API (`Request::writes`), with the version it is based on.
    Request {
        request: Request,
        if_match: Option<u64>,
        reply: oneshot::Sender<Result<Answer, ApiError>>,
    },
    /// A health check's result.
    CheckResult {
        spec: CheckSpec,
        result: ProbeResult,
    },
    /// Time passed: end draining, move slow starts along.
    Tick,
    /// Attach the data plane to a new instance's veth (`InstanceLinks::attach_instance`).
    AttachInstanceLink {
        veth: InstanceVeth,
        reply: InstanceLinkReply<InstanceAttached>,
    },
    /// Detach it from an instance's veth, by LB end (`InstanceLinks::detach_instance`).
    DetachInstanceLink {
        lb_interface: String,
        reply: InstanceLinkReply<bool>,
    },
    /// Detach it from every instance veth but these, by LB end
    /// (`InstanceLinks::retain_instances`).
    RetainInstanceLinks {
        keep: Vec<String>,
        reply: InstanceLinkReply<Vec<String>>,
    },
}

/// Where the writer answers an instance-link change: a channel a blocking caller (the
/// provider's link hook) can wait on with a timeout. A caller that gave up is no error.
pub type InstanceLinkReply<T> = std::sync::mpsc::SyncSender<Result<T, DataplaneError>>;

/// The full-NAT source addresses a config gets on a node.
pub type SnatAddresses = Box<dyn Fn(&Config) -> Result<Vec<IpAddr>, String> + Send>;

/// What the writer needs from the node, apart from the maps: kept behind functions so that
/// the writer runs in tests without a network.
pub struct Node {
    /// The full-NAT source addresses a config gets on this node.
    pub snat_addresses: SnatAddresses,
    /// Makes the kernel resolve and keep the next hops of these targets.
    pub resolve_next_hops: Box<dyn Fn(Vec<IpAddr>) + Send>,
}

impl Node {
    /// A node whose full-NAT sources are the config's, and that resolves nothing.
    pub fn fixed() -> Self {
        Self {
            snat_addresses: Box::new(|config| Ok(config.agent.snat_addresses.clone())),
            resolve_next_hops: Box::new(|_| {}),
        }
    }
}

/// The writer: owner of the state and the maps.
pub struct Writer<M> {
    state: State,
    maps: M,
    /// The config file as last read (without overrides).
    file: Config,
    source: Option<ConfigSource>,
    overrides: Overrides,
    /// `file` with `overrides`: the config in force.
    config: Arc<Config>,
    version: u64,
    node: Node,
    ids: Ids,
    snapshots: watch::Sender<Arc<Snapshot>>,
}

impl<M: Maps + Detach + InstanceLinks> Writer<M> {
    /// A writer of `state` (built from `file` with `overrides`) on `maps`; and the receiver of
    /// its snapshots.
    pub fn new(
        state: State,
        maps: M,
        file: Config,
        source: Option<ConfigSource>,
        overrides: Overrides,
        node: Node,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let ids = state.ids();
        let config = Arc::new(in_force(&file, &overrides));
        let snapshot = Arc::new(Snapshot {
            state: state.clone(),
            version: 1,
            overrides: overrides.clone(),
            source: source.clone(),
            config: config.clone(),
        });
        let (snapshots, receiver) = watch::channel(snapshot);
        let writer = Self {
            state,
            maps,
            file,
            source,
            overrides,
            config,
            version: 1,
            node,
            ids,
            snapshots,
        };
        writer.save_ids();
        (writer, receiver)
    }

    /// Applies changes until every sender is gone; gives the maps back.
    pub fn run(mut self, mut changes: mpsc::UnboundedReceiver<Change>) -> M {
        while let Some(change) = changes.blocking_recv() {
            self.apply(change, Instant::now());
        }
        self.maps
    }

    /// Applies one change at `now`, then publishes what it made.
    pub fn apply(&mut self, change: Change, now: Instant) {
        match change {
            Change::Request {
                request,
                if_match,
                reply,
            } => {
                let answer = self.write(request, if_match, now);
                // Published before the answer goes: a read the asker sends next sees its
                // change (saving the ids first takes an fsync's time).
                self.publish();
                // The asker may have gone (a client that hung up): the change stands.
                let _ = reply.send(answer);
                return;
            }
            Change::CheckResult { spec, result } => {
                if let Err(e) = self.state.record_check(&mut self.maps, &spec, &result, now) {
                    tracing::error!(error = %e, "applying a health check result failed");
                }
            }
            Change::Tick => {
                if let Err(e) = self.state.tick(&mut self.maps, now) {
                    tracing::error!(error = %e, "target lifecycle step failed");
                }
            }
            // The state does not change: nothing new to publish.
            Change::AttachInstanceLink { veth, reply } => {
                let _ = reply.send(self.maps.attach_instance(&veth));
                return;
            }
            Change::DetachInstanceLink {
                lb_interface,
                reply,
            } => {
                let _ = reply.send(self.maps.detach_instance(&lb_interface));
                return;
            }
            Change::RetainInstanceLinks { keep, reply } => {
                let _ = reply.send(self.maps.retain_instances(&keep));
                return;
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        let ids = self.state.ids();
        if ids != self.ids {
            self.ids = ids;
            self.save_ids();
        }
        self.snapshots.send_replace(Arc::new(Snapshot {
            state: self.state.clone(),
            version: self.version,
            overrides: self.overrides.clone(),
            source: self.source.clone(),
            config: self.config.clone(),
        }));
    }

    fn save_ids(&self) {
        if let Some(source) = &self.source
            && let Err(e) = self.ids.save(&source.ids_file)
        {
            tracing::warn!(error = %e, "a restart that adopts the data plane may misattribute flows");
        }
    }

    /// One write request: refused if stale (`if_match`), else applied whole or not at all.
    fn write(
        &mut self,
        request: Request,
        if_match: Option<u64>,
        now: Instant,
    ) -> Result<Answer, ApiError> {
        if let Some(seen) = if_match
            && seen != self.version
        {
            return Err(ApiError::new(
                412,
                format!(
                    "stale: this change was based on version {seen}, the agent is at version {}; read again and retry",
                    self.version
                ),
            ));
        }
        let answer = self.write_request(request, now)?;
        self.version += 1;
        Ok(answer)
    }

    fn write_request(&mut self, request: Request, now: Instant) -> Result<Answer, ApiError> {
        match request {
            Request::TargetsAdd {
                group,
                address,
                port,
                weight,
            } => {
                let change = TargetOverride::Registered { weight };
                let (target, ()) = self.target_change(
                    &group,
                    address,
                    port,
                    change,
                    |state, maps, node, target| {
                        // Before the target goes live, so its first flows find the next hop.
                        (node.resolve_next_hops)(vec![address]);
                        state.add_target(maps, &group, target, weight, now)
                    },
                )?;
                tracing::info!(group, %target, weight, "target registered");
                Ok(Answer::TargetRegistered(TargetRegistered {
                    group,
                    target,
                    weight,
                }))
            }
            Request::TargetsRemove {
                group,
                address,
                port,
            } => {
                let change = TargetOverride::Deregistered;
                let (target, delay) =
                    self.target_change(&group, address, port, change, |state, maps, _, target| {
                        state.remove_target(maps, &group, target, now)
                    })?;
                Ok(Answer::TargetDeregistered(TargetDeregistered {
                    group,
                    target,
                    draining_seconds: delay.as_secs_f64(),
                }))
            }
            Request::TargetsWeight {
                group,
                address,
                port,
                weight,
            } => {
                let change = TargetOverride::Registered { weight };
                let (target, previous_weight) =
                    self.target_change(&group, address, port, change, |state, maps, _, target| {
                        state.set_weight(maps, &group, target, weight, now)
                    })?;
                Ok(Answer::WeightChanged(WeightChanged {
                    group,
                    target,
                    weight,
                    previous_weight,
                }))
            }
            Request::HealthCheckSet {
                group,
                health_check,
            } => {
                let mut overrides = self.overrides.clone();
                overrides.set_health_check(&group, health_check.clone());
                self.check_whole(&overrides)?;
                self.state
                    .set_health_check(&mut self.maps, &group, health_check.clone(), now)
                    .map_err(refusal)?;
                self.keep(overrides)?;
                Ok(Answer::HealthCheckSet(HealthCheckSet {
                    group,
                    health_check,
                }))
            }
            Request::Reload => {
                let file = self.read_file()?;
                let changes = self.reload(file, self.overrides.clone(), now)?;
                Ok(Answer::Changes(changes))
            }
            Request::OverridesClear { group, listener } => {
                let mut overrides = self.overrides.clone();
                overrides.clear(group.as_deref(), listener.as_deref());
                let changes = self.reload(self.file.clone(), overrides, now)?;
                Ok(Answer::Changes(changes))
            }
            Request::RulesAdd { listener, rule } => {
                let l = rules_listener(&self.config, &listener)?;
                priority_free(l, rule.priority)?;
                let mut overrides = self.overrides.clone();
                overrides.set_rule(&self.file, &listener, rule.priority, Some((*rule).clone()));
                self.rule_change(overrides, now)?;
                tracing::info!(listener, priority = rule.priority, "rule added");
                Ok(Answer::RuleAdded(RuleAdded {
                    listener,
                    rule: *rule,
                }))
            }
            Request::RulesRemove { listener, priority } => {
                let rule = rule_at(&self.config, &listener, priority)?;
                let mut overrides = self.overrides.clone();
                overrides.set_rule(&self.file, &listener, priority, None);
                self.rule_change(overrides, now)?;
                tracing::info!(listener, priority, "rule removed");
                Ok(Answer::RuleRemoved(RuleRemoved { listener, rule }))
            }
            Request::RulesSetPriority {
                listener,
                priority,
                new_priority,
            } => {
                let rule = rule_at(&self.config, &listener, priority)?;
                if new_priority != priority {
                    priority_free(rules_listener(&self.config, &listener)?, new_priority)?;
                    let mut overrides = self.overrides.clone();
                    overrides.set_rule(&self.file, &listener, priority, None);
                    let moved = Rule {
                        priority: new_priority,
                        ..rule
                    };
                    overrides.set_rule(&self.file, &listener, new_priority, Some(moved));
                    self.rule_change(overrides, now)?;
                    tracing::info!(listener, priority, new_priority, "rule moved");
                }
                Ok(Answer::RuleMoved(RuleMoved {
                    listener,
                    priority: new_priority,
                    previous_priority: priority,
                }))
            }
            Request::ConfigApply { text } => {
                let path = self.source_path()?;
                let file = Config::parse(&text, &path.display().to_string())
                    .map_err(|errors| ApiError::new(422, errors.to_string()))?;
                let old = std::fs::read_to_string(&path)
                    .map_err(|e| ApiError::new(500, format!("reading {}: {e}", path.display())))?;
                let changes = self
                    .reload(file, self.overrides.clone(), now)
                    .map_err(|e| {
                        ApiError::new(
                            e.status,
                            format!("not applied (the old file stays): {}", e.message),
                        )
                    })?;
                if let Err(e) = replace_file(&path, &text) {
                    // The new config runs but is not on disk: put the old one back in force.
                    let message =
                        format!("writing {}: {e}; the old config is back", path.display());
                    let back = Config::parse(&old, &path.display().to_string())
                        .map_err(|errors| ApiError::new(500, errors.to_string()))
                        .and_then(|old| self.reload(old, self.overrides.clone(), now));
                    if let Err(again) = back {
                        tracing::error!(error = %again, "putting the old config back failed");
                    }
                    return Err(ApiError::new(500, message));
                }
                Ok(Answer::Changes(changes))
            }
            Request::Detach => {
                self.maps
                    .detach()
                    .map_err(|e| ApiError::new(500, e.to_string()))?;
                tracing::info!("detached on request");
                Ok(Answer::Detached(Detached { detached: true }))
            }
            read => Err(ApiError::new(
                500,
                format!("internal error: {:?} is a read, not a change", read.kind()),
            )),
        }
    }

    /// A change to one target of `group` (port defaulted to the group's): checked as the
    /// whole config it makes, applied by `apply`, then kept in the overrides. The target and
    /// what `apply` returned.
    fn target_change<T>(
        &mut self,
        group: &str,
        address: IpAddr,
        port: Option<u16>,
        change: TargetOverride,
        apply: impl FnOnce(&mut State, &mut M, &Node, SocketAddr) -> Result<T, StateError>,
    ) -> Result<(SocketAddr, T), ApiError> {
        let target = self
            .state
            .resolve_target(group, address, port)
            .map_err(refusal)?;
        let mut overrides = self.overrides.clone();
        overrides.set_target(group, target, change);
        self.check_whole(&overrides)?;
        let done = apply(&mut self.state, &mut self.maps, &self.node, target).map_err(refusal)?;
        self.keep(overrides)?;
        Ok((target, done))
    }

    /// A change to rules: the whole config it makes is checked, and the state moved to it (a
    /// rule may forward to a group no listener used before, whose targets are then checked),
    /// before the overrides are kept.
    fn rule_change(&mut self, overrides: Overrides, now: Instant) -> Result<(), ApiError> {
        self.reload(self.file.clone(), overrides, now).map(|_| ())
    }

    /// The config the file and `overrides` make, if valid as a whole (422 if not).
    fn check_whole(&self, overrides: &Overrides) -> Result<Config, ApiError> {
        with_overrides(&self.file, overrides).map_err(|message| ApiError::new(422, message))
    }

    /// Makes `overrides` the ones in force and saves them.
    fn keep(&mut self, overrides: Overrides) -> Result<(), ApiError> {
        self.overrides = overrides;
        self.config = Arc::new(in_force(&self.file, &self.overrides));
        match &self.source {
            Some(source) => self.overrides.save(&source.state_file).map_err(|e| {
                ApiError::new(
                    500,
                    format!("{e} (the change is in force, but a restart loses it)"),
                )
            }),
            None => Ok(()),
        }
    }

    fn source_path(&self) -> Result<PathBuf, ApiError> {
        self.source
            .as_ref()
            .map(|s| s.path.clone())
            .ok_or_else(|| ApiError::new(404, "this agent runs no config file"))
    }

    fn read_file(&self) -> Result<Config, ApiError> {
        let path = self.source_path()?;
        Config::load(&path).map_err(|errors| ApiError::new(422, errors.to_string()))
    }

    /// Moves the running state to `file` with `overrides`; both are kept if it worked.
    fn reload(
        &mut self,
        file: Config,
        overrides: Overrides,
        now: Instant,
    ) -> Result<Changes, ApiError> {
        let config = with_overrides(&file, &overrides).map_err(|m| ApiError::new(422, m))?;
        let immutable = self.config.immutable_changes(&config);
        if !immutable.is_empty() {
            return Err(ApiError::new(422, problem_text(immutable, "\n")));
        }
        let snat = (self.node.snat_addresses)(&config).map_err(|m| ApiError::new(500, m))?;
        // As at start: the file check cannot see the interface's own addresses.
        let clashes = config.listeners_on_snat_ports(&snat);
        if !clashes.is_empty() {
            return Err(ApiError::new(422, clashes.join("; ")));
        }
        // New targets' next hops are resolved before they serve.
        (self.node.resolve_next_hops)(config.target_addresses().collect());
        let changes = self
            .state
            .reload(&mut self.maps, &config, &snat, now)
            .map_err(|e| ApiError::new(422, e.to_string()))?;
        self.file = file;
        self.keep(overrides)?;
        tracing::info!(changes = ?changes, "reloaded");
        Ok(Changes { changes })
    }
}

/// The listener named `name` in `config`, if it takes rules (404 if there is none, 422 if it
/// is not an http or https listener).
fn rules_listener<'c>(config: &'c Config, name: &str) -> Result<&'c Listener, ApiError> {
    let l = find_listener(config, name)?;
    if !matches!(l.protocol, ListenerProtocol::Http | ListenerProtocol::Https) {
        return Err(ApiError::new(
            422,
            format!(
                "listener `{name}` is a {} listener: rules are for http and https listeners",
                l.protocol.as_str()
            ),
        ));
    }
    Ok(l)
}

/// 422 if `listener` has a rule at `priority` (priorities are unique in a listener).
fn priority_free(listener: &Listener, priority: u32) -> Result<(), ApiError> {
    if listener.rules.iter().any(|r| r.priority == priority) {
        return Err(ApiError::new(
            422,
            format!(
                "listener `{}` has a rule at priority {priority} already: remove it or move it \
                 first (`lb-agent rules set-priority`), or choose another priority",
                listener.name
            ),
        ));
    }
    Ok(())
}

/// The rule at `priority` of listener `name` in `config` (404 if there is none).
fn rule_at(config: &Config, name: &str, priority: u32) -> Result<Rule, ApiError> {
    let l = find_listener(config, name)?;
    l.rules
        .iter()
        .find(|r| r.priority == priority)
        .cloned()
        .ok_or_else(|| {
            let mut priorities: Vec<u32> = l.rules.iter().map(|r| r.priority).collect();
            priorities.sort_unstable();
            let known: Vec<String> = priorities.iter().map(u32::to_string).collect();
            ApiError::new(
                404,
                format!(
                    "listener `{name}` has no rule at priority {priority} (its rules: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
}

/// `file` with `overrides` applied, checked whole.
pub fn with_overrides(file: &Config, overrides: &Overrides) -> Result<Config, String> {
    let (config, skipped) = overrides.apply_to(file);
    for what in skipped {
        tracing::warn!(what, "an API change no longer applies to the file: skipped");
    }
    let mut problems = config.problems();
    problems.extend(crate::proxy::problems(&config));
    problems.extend(crate::scaling::problems(&config));
    if !problems.is_empty() {
        return Err(format!(
            "the config with the API's changes (`lb-agent overrides list`) would be invalid:\n{}",
            problem_text(problems, "\n")
        ));
    }
    Ok(config)
}

/// The config `file` and `overrides` make; the file alone if they do not make a valid one
/// (a change is checked whole before it is kept, so this is the file at start-up only).
fn in_force(file: &Config, overrides: &Overrides) -> Config {
    with_overrides(file, overrides).unwrap_or_else(|_| file.clone())
}

/// Replaces the config file durably, keeping its mode and owner.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    crate::json_file::replace(path, text.as_bytes())
}

/// The API's answer to a refused change.
fn refusal(e: StateError) -> ApiError {
    let status = match &e {
        StateError::NoGroup(_) | StateError::NoTarget { .. } => 404,
        StateError::Duplicate { .. } | StateError::NeedsRestart(_) | StateError::BackendsFull => {
            409
        }
        StateError::NoPort(..)
        | StateError::Family { .. }
        | StateError::Weight(_)
        | StateError::HealthCheck { .. }
        | StateError::NoSnatAddress(_) => 422,
        StateError::Dataplane(_) | StateError::Maglev(_) => 500,
    };
    ApiError::new(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::memory::MemoryMaps;

    const CONFIG: &str = r#"
[agent]
snat_addresses = ["198.18.0.1"]
maglev_table_size = 251

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }]

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "web" }
"#;

    /// An http listener `site` with a rule at 10; groups `web`, `api` and `spare` (used by
    /// no listener), and a tcp listener `raw`.
    const RULES_CONFIG: &str = r#"
[agent]
snat_addresses = ["198.18.0.1"]
maglev_table_size = 251

[[target_group]]
name = "web"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.21" }]

[[target_group]]
name = "api"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.22" }]

[[target_group]]
name = "spare"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.23" }]

[[target_group]]
name = "raw"
protocol = "tcp"
port = 9000
targets = [{ address = "198.18.0.24" }]

[[listener]]
name = "site"
address = "198.18.1.100"
port = 80
protocol = "http"
default_action = { forward = "web" }
[[listener.rule]]
priority = 10
conditions = { host = ["api.example.com"] }
action = { forward = "api" }

[[listener]]
name = "raw"
address = "198.18.1.100"
port = 9000
protocol = "tcp"
default_action = { forward = "raw" }
"#;

    /// A writer of `CONFIG` on in-memory maps, its config file and state file in `dir`.
    fn writer(dir: &Path) -> Writer<MemoryMaps> {
        writer_of(dir, CONFIG)
    }

    /// A writer of `text` on in-memory maps, its config file and state file in `dir`.
    fn writer_of(dir: &Path, text: &str) -> Writer<MemoryMaps> {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, text).unwrap();
        let file = Config::load(&path).unwrap();
        let mut maps = MemoryMaps::new(251, 4);
        let snat = file.agent.snat_addresses.clone();
        let state = State::apply(&file, &snat, &mut maps, &Ids::default(), Instant::now()).unwrap();
        let source = ConfigSource {
            state_file: Overrides::path_beside(&path),
            ids_file: Ids::path_beside(&Overrides::path_beside(&path)),
            path,
        };
        let (writer, _) = Writer::new(
            state,
            maps,
            file,
            Some(source),
            Overrides::default(),
            Node::fixed(),
        );
        writer
    }

    fn send(
        writer: &mut Writer<MemoryMaps>,
        request: Request,
        if_match: Option<u64>,
    ) -> Result<Answer, ApiError> {
        let (reply, mut answer) = oneshot::channel();
        writer.apply(
            Change::Request {
                request,
                if_match,
                reply,
            },
            Instant::now(),
        );
        answer.try_recv().expect("the writer answers at once")
    }

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lb-writer-{name}-{}", std::process::id()))
    }

    #[test]
    fn a_change_that_makes_the_config_invalid_is_refused_with_422_and_not_kept() {
        let dir = scratch("invalid");
        let mut writer = writer(&dir);
        let refused = send(
            &mut writer,
            Request::TargetsAdd {
                group: "web".into(),
                address: "0.0.0.0".parse().unwrap(),
                port: None,
                weight: 1,
            },
            None,
        )
        .unwrap_err();
        assert_eq!(refused.status, 422, "{}", refused.message);
        assert!(refused.message.contains("0.0.0.0"), "{}", refused.message);
        assert!(writer.overrides.is_empty());
        assert_eq!(
            writer
                .state
                .backend_id("web", "0.0.0.0:8080".parse().unwrap()),
            None
        );
        // A restart reads the file and the state file again: it still starts.
        let source = writer.source.clone().unwrap();
        let overrides = Overrides::load(&source.state_file).unwrap();
        with_overrides(&Config::load(&source.path).unwrap(), &overrides).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_valid_change_is_applied_kept_and_moves_the_version() {
        let dir = scratch("valid");
        let mut writer = writer(&dir);
        let target = "198.18.0.22:8080".parse().unwrap();
        let added = send(
            &mut writer,
            Request::TargetsAdd {
                group: "web".into(),
                address: "198.18.0.22".parse().unwrap(),
                port: None,
                weight: 2,
            },
            Some(1),
        );
        assert!(
            matches!(added, Ok(Answer::TargetRegistered(_))),
            "{added:?}"
        );
        assert_eq!(writer.version, 2);
        assert!(writer.state.backend_id("web", target).is_some());
        let kept = Overrides::load(&writer.source.clone().unwrap().state_file).unwrap();
        assert_eq!(
            kept.targets["web"][&target],
            TargetOverride::Registered { weight: 2 }
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_config_whose_listener_takes_a_snat_port_of_the_interface_address_is_refused() {
        let dir = scratch("snat-clash");
        let mut writer = writer(&dir);
        // The node's own address, the full-NAT source of a config that names none.
        writer.node.snat_addresses = Box::new(|config| {
            Ok(if config.agent.snat_addresses.is_empty() {
                vec!["198.18.0.1".parse().unwrap()]
            } else {
                config.agent.snat_addresses.clone()
            })
        });
        let text = CONFIG
            .replace(r#"snat_addresses = ["198.18.0.1"]"#, "")
            .replace(
                "address = \"198.18.1.100\"\nport = 80",
                "address = \"198.18.0.1\"\nport = 20080",
            );
        assert!(text.contains("port = 20080"), "{text}");
        let refused = send(&mut writer, Request::ConfigApply { text }, None).unwrap_err();
        assert_eq!(refused.status, 422, "{}", refused.message);
        for part in ["listener `web`", "198.18.0.1 port 20080", "[1024, 32767]"] {
            assert!(refused.message.contains(part), "{}", refused.message);
        }
        let file = std::fs::read_to_string(dir.join("lb.toml")).unwrap();
        assert_eq!(file, CONFIG, "the old file stays");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_write_based_on_an_older_version_is_refused_with_412() {
        let dir = scratch("stale");
        let mut writer = writer(&dir);
        let remove = Request::TargetsRemove {
            group: "web".into(),
            address: "198.18.0.21".parse().unwrap(),
            port: None,
        };
        writer.version = 5;
        let stale = send(&mut writer, remove.clone(), Some(4)).unwrap_err();
        assert_eq!(stale.status, 412);
        assert_eq!(writer.version, 5, "a refused write moved the version");
        assert!(send(&mut writer, remove, Some(5)).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn rule(priority: u32, path: &str, forward: &str) -> Box<Rule> {
        serde_json::from_value(serde_json::json!({
            "priority": priority,
            "conditions": { "path": [path] },
            "action": { "forward": forward },
        }))
        .unwrap()
    }

    /// The priorities of `site`'s rules in the config in force, sorted.
    fn priorities(writer: &Writer<MemoryMaps>) -> Vec<u32> {
        let mut p: Vec<u32> = writer.config.listeners[0]
            .rules
            .iter()
            .map(|r| r.priority)
            .collect();
        p.sort_unstable();
        p
    }

    #[test]
    fn refused_rule_changes_leave_the_version_the_config_and_the_state_file_as_they_were() {
        let dir = scratch("rules-refused");
        let mut writer = writer_of(&dir, RULES_CONFIG);
        let state_file = writer.source.clone().unwrap().state_file;
        // Something kept already: the state file must stay as it is, not just absent.
        send(
            &mut writer,
            Request::RulesAdd {
                listener: "site".into(),
                rule: rule(30, "/kept/*", "web"),
            },
            None,
        )
        .unwrap();
        let kept = std::fs::read(&state_file).unwrap();
        let version = writer.version;
        let add = |rule| Request::RulesAdd {
            listener: "site".into(),
            rule,
        };
        let refusals = [
            (
                add(rule(20, "/x/*", "nope")),
                422,
                "no target group named `nope`",
            ),
            (add(rule(10, "/x/*", "web")), 422, "priority 10 already"),
            (add(rule(0, "/x/*", "web")), 422, "out of range 1..=50000"),
            (
                add(rule(50_001, "/x/*", "web")),
                422,
                "out of range 1..=50000",
            ),
            (add(rule(20, "/x/*", "raw")), 422, "`raw` is a tcp group"),
            (
                Request::RulesAdd {
                    listener: "raw".into(),
                    rule: rule(20, "/x/*", "web"),
                },
                422,
                "rules are for http and https listeners",
            ),
            (
                Request::RulesAdd {
                    listener: "nope".into(),
                    rule: rule(20, "/x/*", "web"),
                },
                404,
                "listeners: site, raw",
            ),
            (
                Request::RulesRemove {
                    listener: "site".into(),
                    priority: 11,
                },
                404,
                "its rules: 10, 30",
            ),
            (
                Request::RulesSetPriority {
                    listener: "site".into(),
                    priority: 10,
                    new_priority: 30,
                },
                422,
                "priority 30 already",
            ),
            (
                Request::RulesSetPriority {
                    listener: "site".into(),
                    priority: 10,
                    new_priority: 60_000,
                },
                422,
                "out of range",
            ),
        ];
        for (request, status, says) in refusals {
            let what = format!("{request:?}");
            let refused = send(&mut writer, request, None).unwrap_err();
            assert_eq!(refused.status, status, "{what}: {}", refused.message);
            assert!(
                refused.message.contains(says),
                "{what}: {}",
                refused.message
            );
            assert_eq!(writer.version, version, "{what} moved the version");
            assert_eq!(priorities(&writer), [10, 30], "{what}");
            assert_eq!(std::fs::read(&state_file).unwrap(), kept, "{what}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rules_are_added_moved_and_removed_through_overrides_kept_in_the_state_file() {
        let dir = scratch("rules-kept");
        let mut writer = writer_of(&dir, RULES_CONFIG);
        let state_file = writer.source.clone().unwrap().state_file;
        let spare_in_use = |w: &Writer<MemoryMaps>| {
            w.state
                .groups()
                .iter()
                .find(|g| g.name == "spare")
                .unwrap()
                .in_use
        };
        assert!(!spare_in_use(&writer));
        let added = send(
            &mut writer,
            Request::RulesAdd {
                listener: "site".into(),
                rule: rule(30, "/spare/*", "spare"),
            },
            Some(1),
        );
        assert!(matches!(added, Ok(Answer::RuleAdded(_))), "{added:?}");
        assert_eq!(priorities(&writer), [10, 30]);
        // The state follows: the group a rule now forwards to is in use.
        assert!(spare_in_use(&writer));
        let moved = send(
            &mut writer,
            Request::RulesSetPriority {
                listener: "site".into(),
                priority: 10,
                new_priority: 5,
            },
            Some(2),
        );
        assert!(matches!(moved, Ok(Answer::RuleMoved(_))), "{moved:?}");
        let removed = send(
            &mut writer,
            Request::RulesRemove {
                listener: "site".into(),
                priority: 30,
            },
            Some(3),
        );
        assert!(matches!(removed, Ok(Answer::RuleRemoved(_))), "{removed:?}");
        assert_eq!(writer.version, 4);
        assert_eq!(priorities(&writer), [5]);
        assert!(!spare_in_use(&writer));
        // The file's 10 is removed and its rule set at 5; the API's 30 left nothing behind.
        let kept = Overrides::load(&state_file).unwrap();
        let site = &kept.rules["site"];
        assert_eq!(site.keys().copied().collect::<Vec<_>>(), [5, 10]);
        assert_eq!(site[&10], crate::overrides::RuleOverride::Removed);
        // What a restart runs: the file with the state file.
        let again = with_overrides(&Config::load(&dir.join("lb.toml")).unwrap(), &kept).unwrap();
        assert_eq!(again.listeners[0].rules.len(), 1);
        assert_eq!(again.listeners[0].rules[0].priority, 5);
        assert_eq!(
            again.listeners[0].rules[0].conditions.host,
            ["api.example.com"]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_reload_that_edits_a_launch_template_version_is_refused_whole() {
        let dir = scratch("template-edit");
        let template = "\n[[launch_template]]\nname = \"t\"\n[[launch_template.version]]\n\
                        command = [\"/srv/web\"]\n";
        let mut writer = writer_of(&dir, &format!("{RULES_CONFIG}{template}"));
        let version = writer.version;
        // Edited in place, with another change beside it: nothing is applied.
        let edited = format!("{RULES_CONFIG}{template}").replace("/srv/web\"", "/srv/web2\"");
        let edited = edited.replace("api.example.com", "api.example.org");
        std::fs::write(dir.join("lb.toml"), edited).unwrap();
        let refused = send(&mut writer, Request::Reload, None).unwrap_err();
        assert_eq!(refused.status, 422);
        assert!(
            refused
                .message
                .contains("version 1 of launch template `t` changed"),
            "{}",
            refused.message
        );
        assert_eq!(writer.version, version);
        assert_eq!(
            writer.config.listeners[0].rules[0].conditions.host,
            ["api.example.com"]
        );
        // As a new version: applied.
        let added = format!(
            "{RULES_CONFIG}{template}[[launch_template.version]]\ncommand = [\"/srv/web2\"]\n"
        );
        std::fs::write(dir.join("lb.toml"), added).unwrap();
        send(&mut writer, Request::Reload, None).unwrap();
        assert_eq!(writer.config.launch_templates[0].versions.len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_reload_takes_the_rules_changed_in_the_file_under_the_apis() {
        let dir = scratch("rules-reload");
        let mut writer = writer_of(&dir, RULES_CONFIG);
        send(
            &mut writer,
            Request::RulesAdd {
                listener: "site".into(),
                rule: rule(30, "/api-added/*", "web"),
            },
            None,
        )
        .unwrap();
        let text = RULES_CONFIG.replace(
            "conditions = { host = [\"api.example.com\"] }",
            "conditions = { host = [\"api.example.org\"] }",
        );
        assert_ne!(text, RULES_CONFIG);
        std::fs::write(dir.join("lb.toml"), text).unwrap();
        send(&mut writer, Request::Reload, None).unwrap();
        let rules = &writer.config.listeners[0].rules;
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].conditions.host, ["api.example.org"]);
        assert_eq!(rules[1].priority, 30);
        let _ = std::fs::remove_dir_all(dir);
    }
}
