//! The local control socket: one JSON request per line, one JSON response per line.
//!
//! The CLI's `targets`, `groups`, `stats`, `flows` and `detach` commands are clients of this socket. The socket
//! file is created with mode 0600: whoever can use it can reprogram the load balancer.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::watch,
};

use crate::{
    config::{Config, HealthCheck},
    dataplane::Dataplane,
    neighbor, node,
    overrides::{Overrides, TargetOverride},
    state::{State, StateError},
};

/// A request to the running agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Register a target in a group; `port` defaults to the group's.
    TargetsAdd {
        group: String,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
    },
    /// Deregister a target from a group.
    TargetsRemove {
        group: String,
        address: IpAddr,
        port: Option<u16>,
    },
    /// Change a registered target's weight.
    TargetsWeight {
        group: String,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
    },
    /// List targets, of one group or all.
    TargetsList { group: Option<String> },
    /// Every target group's settings, health check included.
    Groups,
    /// Replace a group's health check (fields and defaults as in the config file).
    HealthCheckSet {
        group: String,
        health_check: HealthCheck,
    },
    /// Counters of listeners, targets and data-plane verdicts.
    Stats,
    /// The connection table.
    Flows,
    /// Read the config file again and apply what changed.
    Reload,
    /// What runs, where, and whether it is healthy.
    Status,
    /// The API's changes on top of the config file.
    OverridesList,
    /// Drop the API's changes (of one group, or all) and go back to the file.
    OverridesClear { group: Option<String> },
    /// Detach the XDP program and stop the agent.
    Detach,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; `result` depends on the request.
    Ok { result: serde_json::Value },
    /// Refused or failed; nothing was changed.
    Error { message: String },
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No agent listens on the socket.
    #[error("cannot reach the agent at {path} (is `lb-agent run` running? see --socket)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or the answer was not JSON.
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not a response.
    #[error("the agent's answer is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The agent refused the request.
    #[error("{0}")]
    Refused(String),
    /// Another agent already serves this socket.
    #[error("another agent is already running on {0}; stop it or use another --socket")]
    InUse(PathBuf),
}

/// The agent's mutable parts, shared by the control socket's connections.
pub struct Agent {
    pub dataplane: Dataplane,
    pub state: State,
    /// Where the running config came from; none: nothing to reload.
    pub source: Option<ConfigSource>,
    /// The API's changes on top of the file (saved in `source.state_file`).
    pub overrides: Overrides,
    /// When the agent started.
    pub started: std::time::SystemTime,
}

/// The config file the agent runs, and the interface whose addresses are the default
/// full-NAT sources.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub iface: String,
    /// Where the API's changes are kept (`Overrides`).
    pub state_file: PathBuf,
}

/// The config the agent runs: the file at `path` with `overrides` applied, checked whole.
pub fn effective_config(path: &Path, overrides: &Overrides) -> Result<Config, String> {
    let file = Config::load(path).map_err(|e| e.to_string())?;
    with_overrides(&file, overrides)
}

/// `file` with `overrides` applied, checked whole.
pub fn with_overrides(file: &Config, overrides: &Overrides) -> Result<Config, String> {
    let (config, skipped) = overrides.apply_to(file);
    for what in skipped {
        tracing::warn!(what, "an API change no longer applies to the file: skipped");
    }
    let problems = config.problems();
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        return Err(format!(
            "the file with the API's changes (`lb-agent overrides list`) is invalid:\n{}",
            lines.join("\n")
        ));
    }
    Ok(config)
}

fn lock(agent: &Mutex<Agent>) -> std::sync::MutexGuard<'_, Agent> {
    match agent.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Reads the config file again and applies the difference to the running agent: what
/// changed (a line each), or why nothing did (every error of the file at once).
pub fn reload(agent: &Mutex<Agent>) -> Result<Vec<String>, String> {
    let (source, overrides) = {
        let guard = lock(agent);
        let source = guard
            .source
            .clone()
            .ok_or("this agent runs no config file")?;
        (source, guard.overrides.clone())
    };
    let config = effective_config(&source.path, &overrides)?;
    let addresses = node::addresses().map_err(|e| format!("{e:#}"))?;
    let snat = node::snat_addresses(&config, &addresses, &source.iface);
    // Outside the lock (it runs `ip`): new targets' next hops are resolved before they serve.
    for group in &config.target_groups {
        for target in &group.targets {
            if let Err(e) = neighbor::keep_resolved(target.address) {
                tracing::warn!(target = %target.address, error = %e, "cannot keep the target's next hop resolved");
            }
        }
    }
    let mut guard = lock(agent);
    let Agent {
        dataplane, state, ..
    } = &mut *guard;
    let changes = state
        .reload(dataplane, &config, &snat)
        .map_err(|e| e.to_string())?;
    tracing::info!(config = %source.path.display(), changes = ?changes, "reloaded");
    Ok(changes)
}

/// Sends one request and waits for its answer (client side, blocking).
pub fn request(socket: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    match serde_json::from_str(&answer)? {
        Response::Ok { result } => Ok(result),
        Response::Error { message } => Err(ControlError::Refused(message)),
    }
}

/// Binds the control socket: refuses if another agent answers on it, replaces a stale file.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ControlError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves requests until `shutdown` turns true; a `Detach` request turns it true itself.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    agent: Arc<Mutex<Agent>>,
    shutdown: watch::Sender<bool>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "control socket unusable");
            let _ = shutdown.send(true);
            return;
        }
    };
    let mut stop = shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let agent = agent.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = tokio::io::BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let (response, detach) = match serde_json::from_str::<Request>(&line) {
                            Ok(request) => {
                                let detach = matches!(request, Request::Detach);
                                let agent = agent.clone();
                                let response = tokio::task::spawn_blocking(move || handle(&agent, request))
                                    .await
                                    .unwrap_or_else(|e| Response::Error { message: format!("internal error: {e}") });
                                (response, detach)
                            }
                            Err(e) => (Response::Error { message: format!("bad request: {e}") }, false),
                        };
                        let mut out = serde_json::to_string(&response).unwrap_or_default();
                        out.push('\n');
                        if write.write_all(out.as_bytes()).await.is_err() {
                            break;
                        }
                        if detach && matches!(response, Response::Ok { .. }) {
                            let _ = shutdown.send(true);
                        }
                    }
                });
            }
        }
    }
}

fn ok(value: impl Serialize) -> Response {
    match serde_json::to_value(value) {
        Ok(result) => Response::Ok { result },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

fn handle(agent: &Mutex<Agent>, request: Request) -> Response {
    if let Request::TargetsAdd { address, .. } = &request {
        // Before the target goes live (so its first flows find the next hop's MAC), and
        // outside the lock (it runs `ip`).
        if let Err(e) = neighbor::keep_resolved(*address) {
            tracing::warn!(target = %address, error = %e, "cannot keep the target's next hop resolved");
        }
    }
    if let Request::Reload = request {
        return match reload(agent) {
            Ok(changes) => ok(serde_json::json!({ "changes": changes })),
            Err(message) => Response::Error { message },
        };
    }
    if let Request::OverridesClear { group } = &request {
        {
            let mut guard = lock(agent);
            guard.overrides.clear(group.as_deref());
            if let Err(e) = save_overrides(&guard) {
                return Response::Error { message: e };
            }
        }
        return match reload(agent) {
            Ok(changes) => ok(serde_json::json!({ "changes": changes })),
            Err(message) => Response::Error { message },
        };
    }
    let mut guard = lock(agent);
    let mut record: Option<Kept> = None;
    let Agent {
        dataplane, state, ..
    } = &mut *guard;
    let result = match request {
        Request::TargetsAdd {
            group,
            address,
            port,
            weight,
        } => state
            .resolve_target(&group, address, port)
            .and_then(|target| {
                state.add_target(dataplane, &group, target, weight)?;
                tracing::info!(group, %target, weight, "target registered");
                record = Some(Kept::Target(group.clone(), target, TargetOverride::Registered { weight }));
                Ok(serde_json::json!({ "group": group, "target": target, "weight": weight }))
            }),
        Request::TargetsRemove {
            group,
            address,
            port,
        } => state
            .resolve_target(&group, address, port)
            .and_then(|target| {
                let delay = state.remove_target(dataplane, &group, target)?;
                record = Some(Kept::Target(group.clone(), target, TargetOverride::Deregistered));
                Ok(serde_json::json!({
                    "group": group,
                    "target": target,
                    "draining_seconds": delay.as_secs_f64(),
                }))
            }),
        Request::TargetsWeight {
            group,
            address,
            port,
            weight,
        } => state
            .resolve_target(&group, address, port)
            .and_then(|target| {
                let before = state.set_weight(dataplane, &group, target, weight)?;
                record = Some(Kept::Target(group.clone(), target, TargetOverride::Registered { weight }));
                Ok(serde_json::json!({ "group": group, "target": target, "weight": weight, "previous_weight": before }))
            }),
        Request::TargetsList { group } => state
            .targets(dataplane, group.as_deref())
            .map(|t| serde_json::json!(t)),
        Request::Groups => Ok(serde_json::json!(state.groups())),
        Request::HealthCheckSet {
            group,
            health_check,
        } => state
            .set_health_check(dataplane, &group, health_check.clone())
            .map(|()| {
                record = Some(Kept::HealthCheck(group.clone(), health_check.clone()));
                serde_json::json!({ "group": group, "health_check": health_check })
            }),
        Request::Stats => state.stats(dataplane).map(|s| serde_json::json!(s)),
        Request::Flows => state.flows(dataplane).map(|f| serde_json::json!(f)),
        // Answered above, before the lock is taken (reloading resolves next hops first).
        Request::Reload | Request::OverridesClear { .. } => Ok(serde_json::Value::Null),
        Request::OverridesList => Ok(serde_json::json!(guard.overrides)),
        Request::Status => status(&guard),
        Request::Detach => match dataplane.detach() {
            Ok(()) => {
                tracing::info!("detached on request");
                Ok(serde_json::json!({ "detached": true }))
            }
            Err(e) => Err(e.into()),
        },
    };
    let value = match result {
        Ok(value) => value,
        Err(e) => {
            return Response::Error {
                message: e.to_string(),
            };
        }
    };
    if let Some(kept) = record {
        match kept {
            Kept::Target(group, address, change) => {
                guard.overrides.set_target(&group, address, change)
            }
            Kept::HealthCheck(group, check) => guard.overrides.set_health_check(&group, check),
        }
        if let Err(message) = save_overrides(&guard) {
            return Response::Error {
                message: format!("{message} (the change is in force, but a restart loses it)"),
            };
        }
    }
    ok(value)
}

/// A change made through the API, to keep in the state file.
enum Kept {
    Target(String, SocketAddr, TargetOverride),
    HealthCheck(String, HealthCheck),
}

/// Writes the overrides to the state file.
fn save_overrides(agent: &Agent) -> Result<(), String> {
    match &agent.source {
        Some(source) => agent
            .overrides
            .save(&source.state_file)
            .map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// What `lb-agent status` shows.
fn status(agent: &Agent) -> Result<serde_json::Value, StateError> {
    let groups = agent.state.groups();
    let stats = agent.state.stats(&agent.dataplane)?;
    let uptime = agent.started.elapsed().unwrap_or_default().as_secs();
    Ok(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": uptime,
        "config": agent.source.as_ref().map(|s| s.path.display().to_string()),
        "state_file": agent.source.as_ref().map(|s| s.state_file.display().to_string()),
        "overrides": agent.overrides.len(),
        "pin_dir": agent.dataplane.pin_dir().map(|p| p.display().to_string()),
        "adopted": agent.dataplane.adopted(),
        "interfaces": agent.dataplane.attachments().map(|(iface, mode)| serde_json::json!({ "name": iface, "mode": mode })).collect::<Vec<_>>(),
        "listeners": stats.listeners,
        "groups": groups,
        "flows": stats.flows,
        "health_transitions": stats.health_transitions,
    }))
}
