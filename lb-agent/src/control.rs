//! What the agent can be asked to do (`Request`), how it does it (`handle`), and the CLI's
//! side of asking (`request`, over the HTTP API on the control socket: see `api`). The socket
//! file is created with mode 0600: whoever can use it can reprogram the load balancer.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use serde::Serialize;

use crate::{
    config::{Config, HealthCheck},
    dataplane::Dataplane,
    neighbor, node,
    overrides::{Overrides, TargetOverride},
    state::{State, StateError},
};

/// A request to the running agent (the API's routes map to these: `api::route`).
#[derive(Debug, Clone, PartialEq)]
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
    /// The connection table (its first `limit` entries).
    Flows { limit: Option<usize> },
    /// Read the config file again and apply what changed.
    Reload,
    /// What runs, where, and whether it is healthy.
    Status,
    /// The API's changes on top of the config file.
    OverridesList,
    /// Drop the API's changes (of one group, or all) and go back to the file.
    OverridesClear { group: Option<String> },
    /// The listeners with their counters.
    Listeners,
    /// The config file's text, its path, and the config in force (file and overrides).
    ConfigGet,
    /// Check a config text without applying it: every error, with line and field.
    ConfigValidate { text: String },
    /// Replace the config file with `text` and apply it; nothing changes if it is invalid
    /// or cannot be applied.
    ConfigApply { text: String },
    /// Detach the XDP program and stop the agent.
    Detach,
}

/// The agent's answer.
#[derive(Debug, Clone)]
pub enum Response {
    /// Done; `result` depends on the request.
    Ok { result: serde_json::Value },
    /// Refused or failed (`status`: the HTTP status that says how); nothing was changed.
    Error { status: u16, message: String },
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
    /// Grows with every change (API write, reload): writes may name the version they saw.
    pub version: u64,
}

/// The agent's state version.
pub fn version(agent: &Mutex<Agent>) -> u64 {
    lock(agent).version
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
    neighbor::keep_all_resolved_blocking(config.target_addresses());
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

/// Sends one request over the HTTP API on the control socket and waits for its answer
/// (client side, blocking); the answer's JSON.
pub fn request(socket: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
    let (method, path, body) = crate::api::http_of(request);
    let (status, body) = http(socket, method, &path, body.as_deref())?;
    let value: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)?
    };
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(ControlError::Refused(
            value["error"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_owned),
        ))
    }
}

/// `GET path` on the control socket; the body as text (e.g. `/metrics`).
pub fn get_text(socket: &Path, path: &str) -> Result<String, ControlError> {
    let (status, body) = http(socket, "GET", path, None)?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(ControlError::Refused(format!("HTTP {status}: {text}")))
    }
}

/// One HTTP/1.1 exchange on the unix socket: status and body.
fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), ControlError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: lb-agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let malformed = || ControlError::Io(std::io::Error::other("the agent's answer is not HTTP"));
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    let mut body = answer[end + 4..].to_vec();
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        body = dechunk(&body).ok_or_else(malformed)?;
    }
    Ok((status, body))
}

/// The payload of a chunked body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
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

fn ok(value: impl Serialize) -> Response {
    match serde_json::to_value(value) {
        Ok(result) => Response::Ok { result },
        Err(e) => Response::Error {
            status: 500,
            message: e.to_string(),
        },
    }
}

/// The HTTP status for a refused change.
fn status_of(e: &StateError) -> u16 {
    match e {
        StateError::NoGroup(_) | StateError::NoTarget { .. } => 404,
        StateError::Duplicate { .. } | StateError::NeedsRestart(_) | StateError::BackendsFull => {
            409
        }
        StateError::NoPort(..)
        | StateError::Family { .. }
        | StateError::Weight(_)
        | StateError::HealthCheck { .. }
        | StateError::NoSnatAddress(_) => 422,
        _ => 500,
    }
}

/// Whether a request changes anything.
fn writes(request: &Request) -> bool {
    matches!(
        request,
        Request::TargetsAdd { .. }
            | Request::TargetsRemove { .. }
            | Request::TargetsWeight { .. }
            | Request::HealthCheckSet { .. }
            | Request::OverridesClear { .. }
            | Request::ConfigApply { .. }
            | Request::Reload
            | Request::Detach
    )
}

/// Does what `request` asks. A write that names the version it was based on (`if_match`) is
/// refused if the agent has changed since; a write that succeeds moves the version on.
pub fn handle(agent: &Mutex<Agent>, request: Request, if_match: Option<u64>) -> Response {
    let write = writes(&request);
    if write && let Some(seen) = if_match {
        let now = version(agent);
        if seen != now {
            return Response::Error {
                status: 412,
                message: format!(
                    "stale: this change was based on version {seen}, the agent is at version {now}; read again and retry"
                ),
            };
        }
    }
    let response = handle_request(agent, request);
    if write && matches!(response, Response::Ok { .. }) {
        lock(agent).version += 1;
    }
    response
}

fn handle_request(agent: &Mutex<Agent>, request: Request) -> Response {
    match &request {
        Request::ConfigGet => return config_get(agent),
        Request::ConfigValidate { text } => return ok(config_validate(agent, text)),
        Request::ConfigApply { text } => return config_apply(agent, text),
        _ => {}
    }
    if let Request::TargetsAdd { address, .. } = &request {
        // Before the target goes live (so its first flows find the next hop's MAC), and
        // outside the lock (it runs `ip`).
        neighbor::keep_all_resolved_blocking([*address]);
    }
    if let Request::Reload = request {
        return match reload(agent) {
            Ok(changes) => ok(serde_json::json!({ "changes": changes })),
            Err(message) => Response::Error {
                status: 422,
                message,
            },
        };
    }
    if let Request::OverridesClear { group } = &request {
        {
            let mut guard = lock(agent);
            guard.overrides.clear(group.as_deref());
            if let Err(message) = save_overrides(&guard) {
                return Response::Error {
                    status: 500,
                    message,
                };
            }
        }
        return match reload(agent) {
            Ok(changes) => ok(serde_json::json!({ "changes": changes })),
            Err(message) => Response::Error {
                status: 422,
                message,
            },
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
        Request::Flows { limit } => state.flows(dataplane).map(|mut f| {
            f.truncate(limit.unwrap_or(usize::MAX));
            serde_json::json!(f)
        }),
        // Answered above, before the lock is taken (reloading resolves next hops first).
        Request::Reload
        | Request::OverridesClear { .. }
        | Request::ConfigGet
        | Request::ConfigValidate { .. }
        | Request::ConfigApply { .. } => Ok(serde_json::Value::Null),
        Request::Listeners => state
            .stats(dataplane)
            .map(|s| serde_json::json!(s.listeners)),
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
                status: status_of(&e),
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
                status: 500,
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

/// The config file: path, text, and where the API's changes to it are kept.
fn config_get(agent: &Mutex<Agent>) -> Response {
    let guard = lock(agent);
    let Some(source) = &guard.source else {
        return Response::Error {
            status: 404,
            message: "this agent runs no config file".into(),
        };
    };
    match std::fs::read_to_string(&source.path) {
        Ok(text) => ok(serde_json::json!({
            "path": source.path.display().to_string(),
            "text": text,
            "state_file": source.state_file.display().to_string(),
            "overrides": guard.overrides.len(),
        })),
        Err(e) => Response::Error {
            status: 500,
            message: format!("reading {}: {e}", source.path.display()),
        },
    }
}

/// Every error of a config text, with line, column and field.
fn config_validate(agent: &Mutex<Agent>, text: &str) -> serde_json::Value {
    let name = lock(agent)
        .source
        .as_ref()
        .map_or_else(|| "config".to_owned(), |s| s.path.display().to_string());
    match Config::parse(text, &name) {
        Ok(_) => serde_json::json!({ "valid": true, "errors": [] }),
        Err(errors) => serde_json::json!({
            "valid": false,
            "errors": errors.0.iter().map(|e| serde_json::json!({
                "line": e.line,
                "column": e.column,
                "field": e.field,
                "message": e.message,
            })).collect::<Vec<_>>(),
        }),
    }
}

/// Replaces the config file with `text` and applies it; on any error the old file is put
/// back and nothing changes.
fn config_apply(agent: &Mutex<Agent>, text: &str) -> Response {
    let Some(path) = lock(agent).source.as_ref().map(|s| s.path.clone()) else {
        return Response::Error {
            status: 404,
            message: "this agent runs no config file".into(),
        };
    };
    if let Err(errors) = Config::parse(text, &path.display().to_string()) {
        return Response::Error {
            status: 422,
            message: errors.to_string(),
        };
    }
    let old = match std::fs::read_to_string(&path) {
        Ok(old) => old,
        Err(e) => {
            return Response::Error {
                status: 500,
                message: format!("reading {}: {e}", path.display()),
            };
        }
    };
    let write = |text: &str| -> std::io::Result<()> {
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write(text) {
        return Response::Error {
            status: 500,
            message: format!("writing {}: {e}", path.display()),
        };
    }
    match reload(agent) {
        Ok(changes) => ok(serde_json::json!({ "changes": changes })),
        Err(message) => {
            let restored = match write(&old) {
                Ok(()) => "the old file is back".to_owned(),
                Err(e) => format!("putting the old file back failed too: {e}"),
            };
            Response::Error {
                status: 422,
                message: format!("not applied ({restored}): {message}"),
            }
        }
    }
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
        "active_flows": stats.active_flows,
        "health_transitions": stats.health_transitions,
    }))
}
